//! Decisions per second through the Envoy rate limit service (RLS v3, gRPC)
//! against the JSON decision API (`POST /v1/check`), on one floodgate
//! process, same rule, same run; memory store, then Redis.
//!
//! ```text
//! bench/rls.sh
//! cargo bench -p floodgate-server --bench rls
//! ```
//!
//! The floodgate binary cargo built for the bench serves both. 64 callers
//! each way: RLS callers share 4 HTTP/2 connections, as an Envoy with 4
//! worker threads does; JSON callers each keep an HTTP/1.1 connection
//! alive. Each caller asks about one of 10 000 client addresses in turn, on
//! a rule far from its limit. The two ways run in turns of `ROUND` each,
//! alternating, `TURNS` times; the figure is each turn's decisions per
//! second, the ratio RLS / JSON per turn, and the median over turns.
//! Redis: `$FLOODGATE_BENCH_REDIS_URL` when set, else a private
//! `redis-server` started for the run.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs
)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tonic::transport::Channel;

mod common;
use common::{CALLERS, KEYS, Server, TOKEN, address, bench_main, calls_for, start, timed};

/// RLS connections, unless `FLOODGATE_BENCH_RLS_CONNECTIONS` says otherwise.
const RLS_CONNECTIONS: usize = 4;
const ROUND: Duration = Duration::from_millis(1500);
const TURNS: usize = 9;

const RULE: &str = "\
[[rule]]
name = \"edge-per-client\"
algorithm = \"sliding_window\"
limit = 1000000000
window = \"1m\"
descriptor = { domain = \"edge\", entries = [\"remote_address\"] }
";

/// Decisions made through RLS during `ROUND`.
async fn rls_round(channels: &[Channel]) -> u64 {
    let clients: Vec<_> = channels
        .iter()
        .map(|c| RateLimitServiceClient::new(c.clone()))
        .collect();
    calls_for(CALLERS, ROUND, move |c, i| {
        let mut client = clients[c % clients.len()].clone();
        async move {
            let request = RateLimitRequest {
                domain: "edge".into(),
                descriptors: vec![RateLimitDescriptor {
                    entries: vec![Entry {
                        key: "remote_address".into(),
                        value: address(i % KEYS),
                    }],
                    ..RateLimitDescriptor::default()
                }],
                hits_addend: 1,
            };
            let r = client
                .should_rate_limit(request)
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.overall_code, 1, "not OK: {r:?}");
        }
    })
    .await
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// Decisions made through `POST /v1/check` during `ROUND`.
async fn json_round(client: &HttpClient, addr: SocketAddr) -> u64 {
    let url: http::Uri = format!("http://{addr}/v1/check").parse().unwrap();
    let client = client.clone();
    calls_for(CALLERS, ROUND, move |_, i| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let body = format!(
                r#"{{"rule":"edge-per-client","key":"{}","cost":1}}"#,
                address(i % KEYS)
            );
            let request = http::Request::post(url)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let r = client.request(request).await.unwrap();
            assert_eq!(r.status(), 200);
            let body = r.into_body().collect().await.unwrap().to_bytes();
            assert!(body.starts_with(br#"{"allowed":true"#), "{body:?}");
        }
    })
    .await
}

async fn measure(label: &str, server: &Server) {
    let mut channels = Vec::new();
    for _ in 0..rls_connections() {
        channels.push(
            Channel::from_shared(format!("http://{}", server.grpc))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CALLERS)
        .build_http();
    // Warm both: connections open, keys in the store.
    rls_round(&channels).await;
    json_round(&client, server.http).await;
    let pid = server.child.id();
    let mut rows: Vec<[f64; 4]> = Vec::new();
    for turn in 0..TURNS {
        // Alternate which goes first.
        let (r, j) = if turn % 2 == 0 {
            let r = timed(pid, rls_round(&channels)).await;
            (r, timed(pid, json_round(&client, server.http)).await)
        } else {
            let j = timed(pid, json_round(&client, server.http)).await;
            (timed(pid, rls_round(&channels)).await, j)
        };
        rows.push([r.rate, j.rate, r.cpu_us, j.cpu_us]);
    }
    let median = |f: &dyn Fn(&[f64; 4]) -> f64| {
        floodgate_testkit::paired::median(rows.iter().map(f).collect())
    };
    println!(
        "{label:<7} RLS {:>7.0}/s {:>5.1} us CPU   JSON {:>7.0}/s {:>5.1} us CPU   RLS/JSON: rate {:.2}x, server CPU per decision {:.2}x",
        median(&|r| r[0]),
        median(&|r| r[2]),
        median(&|r| r[1]),
        median(&|r| r[3]),
        median(&|r| r[0] / r[1]),
        median(&|r| r[2] / r[3]),
    );
}

fn rls_connections() -> usize {
    std::env::var("FLOODGATE_BENCH_RLS_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=CALLERS).contains(n))
        .unwrap_or(RLS_CONNECTIONS)
}

fn main() {
    bench_main("rls", "bench/rls.sh", || async {
        println!(
            "decisions per second, {CALLERS} callers each way, median of {TURNS} turns of {ROUND:?}; RLS over {} HTTP/2 connections, JSON over {CALLERS} keep-alive HTTP/1.1 connections",
            rls_connections()
        );
        let memory = start(&format!("[store]\nbackend = \"memory\"\n{RULE}"), TOKEN);
        measure("memory", &memory).await;
        drop(memory);
        let (_redis, url) = floodgate_testkit::bench_redis();
        let redis = start(
            &format!(
                "[store]\nbackend = \"redis\"\nurl = \"{url}\"\nprefix = \"fgbench-rls-{}\"\ntimeout = \"2s\"\n{RULE}",
                std::process::id()
            ),
            TOKEN,
        );
        measure("redis", &redis).await;
    });
}
