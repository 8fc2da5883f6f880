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
//! second, the ratio RLS / JSON per turn, and the median over turns (with
//! the turns' lowest and highest ratio); then the server's CPU per
//! decision, and the callers' own (this process's).
//!
//! The callers share the machine with the server, so a costlier client
//! slows its way down: both ways use clients as thin as their protocol
//! allows (h2's client for RLS, as Envoy's own is thin; hyper's HTTP/1.1
//! connections for JSON), or, with `FLOODGATE_BENCH_CLIENTS=stock`, tonic's
//! generated client and hyper-util's pooled client.
//! Redis: `$FLOODGATE_BENCH_REDIS_URL` when set, else a private
//! `redis-server` started for the run.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs
)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use tonic::transport::Channel;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

mod common;
use common::{CALLERS, KEYS, Server, TOKEN, address, bench_main, calls_for, cpu, start, timed};

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

/// The request of call `i`: one descriptor, one client address.
fn rls_request(i: u64) -> RateLimitRequest {
    RateLimitRequest {
        domain: "edge".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "remote_address".into(),
                value: address(i % KEYS),
            }],
            ..RateLimitDescriptor::default()
        }],
        hits_addend: 1,
    }
}

/// The body of `POST /v1/check` for call `i`.
fn json_body(i: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"rule":"edge-per-client","key":"{}","cost":1}}"#,
        address(i % KEYS)
    ))
}

/// The callers' clients, one kind of each way.
enum Callers {
    /// Clients as thin as the protocols allow, as a proxy's are: h2's
    /// client on the RLS connections (the request's headers and its one
    /// data frame, the answer read whole), and one hyper HTTP/1.1
    /// connection per JSON caller.
    Lean {
        rls: Vec<h2::client::SendRequest<Bytes>>,
        rls_uri: http::Uri,
        json: Vec<tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>,
        json_host: http::HeaderValue,
    },
    /// tonic's generated client over its `Channel`, and hyper-util's
    /// pooled client: `FLOODGATE_BENCH_CLIENTS=stock`.
    Stock {
        rls: Vec<Channel>,
        json: Box<HttpClient>,
        json_uri: http::Uri,
    },
}

impl Callers {
    async fn connect(server: &Server) -> Arc<Self> {
        let stock = std::env::var("FLOODGATE_BENCH_CLIENTS").is_ok_and(|v| v == "stock");
        let json_uri: http::Uri = format!("http://{}/v1/check", server.http).parse().unwrap();
        if stock {
            let mut rls = Vec::new();
            for _ in 0..rls_connections() {
                rls.push(
                    Channel::from_shared(format!("http://{}", server.grpc))
                        .unwrap()
                        .connect()
                        .await
                        .unwrap(),
                );
            }
            let json = Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(CALLERS)
                .build_http();
            return Arc::new(Callers::Stock {
                rls,
                json: Box::new(json),
                json_uri,
            });
        }
        let mut rls = Vec::new();
        for _ in 0..rls_connections() {
            let tcp = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let (send, connection) = h2::client::Builder::new()
                .initial_window_size(1 << 20)
                .initial_connection_window_size(1 << 20)
                .handshake::<_, Bytes>(tcp)
                .await
                .unwrap();
            tokio::spawn(async move {
                let _ = connection.await;
            });
            rls.push(send);
        }
        let mut json = Vec::new();
        for _ in 0..CALLERS {
            let tcp = tokio::net::TcpStream::connect(server.http).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let (send, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(async move {
                let _ = connection.await;
            });
            json.push(tokio::sync::Mutex::new(send));
        }
        Arc::new(Callers::Lean {
            rls,
            rls_uri: format!(
                "http://{}/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
                server.grpc
            )
            .parse()
            .unwrap(),
            json,
            json_host: server.http.to_string().parse().unwrap(),
        })
    }

    fn describe(&self) -> &'static str {
        match self {
            Callers::Lean { .. } => {
                "callers: h2's client (RLS), hyper's HTTP/1.1 connections (JSON)"
            }
            Callers::Stock { .. } => {
                "callers: tonic's generated client (RLS), hyper-util's pooled client (JSON)"
            }
        }
    }
}

/// Decisions made through RLS during `ROUND`.
async fn rls_round(callers: &Arc<Callers>) -> u64 {
    let callers = callers.clone();
    calls_for(CALLERS, ROUND, move |c, i| {
        let callers = callers.clone();
        async move {
            let r = match &*callers {
                Callers::Stock { rls, .. } => {
                    let mut client = RateLimitServiceClient::new(rls[c % rls.len()].clone());
                    client
                        .should_rate_limit(rls_request(i))
                        .await
                        .unwrap()
                        .into_inner()
                }
                Callers::Lean { rls, rls_uri, .. } => {
                    lean_rls_call(rls[c % rls.len()].clone(), rls_uri.clone(), i).await
                }
            };
            assert_eq!(r.overall_code, 1, "not OK: {r:?}");
        }
    })
    .await
}

/// One call through h2's client: the request's headers, its message in one
/// data frame that ends the stream; the answer's message and trailer.
async fn lean_rls_call(
    send: h2::client::SendRequest<Bytes>,
    uri: http::Uri,
    i: u64,
) -> RateLimitResponse {
    let message = rls_request(i);
    let mut body = bytes::BytesMut::with_capacity(5 + message.encoded_len());
    body.extend_from_slice(&[0]);
    body.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
    message.encode_raw(&mut body);
    let mut send = send.ready().await.unwrap();
    let request = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(())
        .unwrap();
    let (response, mut stream) = send.send_request(request, false).unwrap();
    stream.send_data(body.freeze(), true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut answer = bytes::BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        answer.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap().unwrap();
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    RateLimitResponse::decode(&answer[5..]).unwrap()
}

/// Decisions made through `POST /v1/check` during `ROUND`.
async fn json_round(callers: &Arc<Callers>) -> u64 {
    let callers = callers.clone();
    calls_for(CALLERS, ROUND, move |c, i| {
        let callers = callers.clone();
        async move {
            let body = match &*callers {
                Callers::Stock { json, json_uri, .. } => {
                    let request = json_request(json_uri.clone(), i);
                    let r = json.request(request).await.unwrap();
                    assert_eq!(r.status(), 200);
                    r.into_body().collect().await.unwrap().to_bytes()
                }
                Callers::Lean {
                    json, json_host, ..
                } => {
                    let mut request = json_request(http::Uri::from_static("/v1/check"), i);
                    request
                        .headers_mut()
                        .insert(http::header::HOST, json_host.clone());
                    let mut send = json[c].lock().await;
                    send.ready().await.unwrap();
                    let r = send.send_request(request).await.unwrap();
                    assert_eq!(r.status(), 200);
                    r.into_body().collect().await.unwrap().to_bytes()
                }
            };
            assert!(body.starts_with(br#"{"allowed":true"#), "{body:?}");
        }
    })
    .await
}

fn json_request(uri: http::Uri, i: u64) -> http::Request<Full<Bytes>> {
    http::Request::post(uri)
        .header("content-type", "application/json")
        .body(Full::new(json_body(i)))
        .unwrap()
}

async fn measure(label: &str, server: &Server) {
    let callers = Callers::connect(server).await;
    println!("{label:<7} {}", callers.describe());
    // Warm both: connections open, keys in the store.
    rls_round(&callers).await;
    json_round(&callers).await;
    let pid = server.child.id();
    // Each turn: [rate, server CPU, callers' CPU] for RLS, then for JSON.
    let mut rows: Vec<[f64; 6]> = Vec::new();
    for turn in 0..TURNS {
        // Alternate which goes first.
        let (r, j) = if turn % 2 == 0 {
            let r = callers_timed(pid, rls_round(&callers)).await;
            (r, callers_timed(pid, json_round(&callers)).await)
        } else {
            let j = callers_timed(pid, json_round(&callers)).await;
            (callers_timed(pid, rls_round(&callers)).await, j)
        };
        rows.push([r[0], r[1], r[2], j[0], j[1], j[2]]);
    }
    let median = |f: &dyn Fn(&[f64; 6]) -> f64| {
        floodgate_testkit::paired::median(rows.iter().map(f).collect())
    };
    let spread = |f: &dyn Fn(&[f64; 6]) -> f64| {
        let all: Vec<f64> = rows.iter().map(f).collect();
        let min = all.iter().copied().fold(f64::INFINITY, f64::min);
        let max = all.iter().copied().fold(0.0, f64::max);
        format!("{min:.2}-{max:.2}")
    };
    println!(
        "{label:<7} RLS {:>7.0}/s {:>5.1} us CPU   JSON {:>7.0}/s {:>5.1} us CPU   RLS/JSON: rate {:.2}x ({}), server CPU per decision {:.2}x ({})",
        median(&|r| r[0]),
        median(&|r| r[1]),
        median(&|r| r[3]),
        median(&|r| r[4]),
        median(&|r| r[0] / r[3]),
        spread(&|r| r[0] / r[3]),
        median(&|r| r[1] / r[4]),
        spread(&|r| r[1] / r[4]),
    );
    println!(
        "{:<7} callers' own CPU per decision: RLS {:.1} us, JSON {:.1} us ({:.2}x)",
        "",
        median(&|r| r[2]),
        median(&|r| r[5]),
        median(&|r| r[2] / r[5]),
    );
}

/// A round's decisions per second, the server's CPU per decision and the
/// callers' (this process's) CPU per decision, in microseconds.
async fn callers_timed<F: std::future::Future<Output = u64>>(pid: u32, round: F) -> [f64; 3] {
    let before = cpu(std::process::id());
    let mut done = 0;
    let r = timed(pid, async {
        done = round.await;
        done
    })
    .await;
    let used = cpu(std::process::id()).saturating_sub(before);
    [r.rate, r.cpu_us, used.as_secs_f64() * 1e6 / done as f64]
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
