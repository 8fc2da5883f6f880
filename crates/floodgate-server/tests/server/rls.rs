//! The Envoy rate limit service (RLS v3) on `[grpc] listen`, asked by a
//! tonic client built from the `envoy-types` crate's generated types, as
//! Envoy's `envoy.filters.http.ratelimit` filter asks it: limits shared by
//! two instances on one Redis, `hits_addend` at both levels, `key=value`
//! entries, descriptors and domains no rule decides, shadow rules, blocks
//! on `remote_address`, a store that is down under each `on_error`, reload
//! on SIGHUP, gRPC health checking, and malformed requests. (Reflection
//! and a client the project did not generate: tests/rls_grpcio.py.)

use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, rate_limit::Unit};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use tonic::transport::Channel;

use crate::support::host::free_addr;
use crate::support::http::Http;
use crate::support::process::{AUTH, Floodgate, store_section};
use crate::support::wait::eventually;

const RULES: &str = "\
[[rule]]
name = \"per-client\"
algorithm = \"fixed_window\"
limit = 3
window = \"1m\"
descriptor = { domain = \"edge\", entries = [\"remote_address\"] }

[[rule]]
name = \"slow-path\"
algorithm = \"sliding_window\"
limit = 10
window = \"10s\"
descriptor = { domain = \"edge\", entries = [\"generic_key=slow\", \"user\"] }

[[rule]]
name = \"watch\"
algorithm = \"fixed_window\"
limit = 1
window = \"1h\"
shadow = true
descriptor = { domain = \"edge\", entries = [\"watched\"] }
";

/// A config with `rules`, `store`, and a gRPC listener (its address picked
/// at start: `Floodgate::grpc`).
fn config(store: &str, rules: &str) -> String {
    format!(
        "[server]\nlisten = \"{{listen}}\"\n{store}\n[admin]\nlisten = \"{{admin}}\"\n[grpc]\nlisten = \"{{grpc}}\"\n{rules}"
    )
}

async fn client(addr: std::net::SocketAddr) -> RateLimitServiceClient<Channel> {
    crate::support::grpc::rls_client(addr).await
}

fn descriptor(entries: &[(&str, &str)], hits: Option<u64>) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(key, value)| Entry {
                key: (*key).to_owned(),
                value: (*value).to_owned(),
            })
            .collect(),
        hits_addend: hits.map(|value| UInt64Value { value }),
        ..RateLimitDescriptor::default()
    }
}

fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>, hits: u32) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors,
        hits_addend: hits,
    }
}

async fn ask(
    client: &mut RateLimitServiceClient<Channel>,
    request: RateLimitRequest,
) -> RateLimitResponse {
    client
        .should_rate_limit(request)
        .await
        .unwrap()
        .into_inner()
}

fn header<'a>(r: &'a RateLimitResponse, name: &str) -> Option<&'a str> {
    r.response_headers_to_add
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

fn client_of(ip: &str) -> RateLimitDescriptor {
    descriptor(&[("remote_address", ip)], None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_share_the_limit_and_answer_as_envoy_expects() {
    let prefix = format!("rls-shared-{}", std::process::id());
    let a = Floodgate::launch(config(&store_section(Some(&prefix)), RULES)).await;
    let b = Floodgate::launch(config(&store_section(Some(&prefix)), RULES)).await;
    let mut clients = [client(a.grpc).await, client(b.grpc).await];

    // One client address, asked alternately through both instances.
    for (i, left) in [2u32, 1, 0].into_iter().enumerate() {
        let r = ask(
            &mut clients[i % 2],
            request("edge", vec![client_of("192.0.2.10")], 0),
        )
        .await;
        assert_eq!(r.overall_code, Code::Ok as i32, "request {i}: {r:?}");
        let s = &r.statuses[0];
        assert_eq!(s.code, Code::Ok as i32);
        assert_eq!(s.limit_remaining, left);
        let limit = s
            .current_limit
            .as_ref()
            .expect("a one-minute window is a unit");
        assert_eq!(
            (limit.name.as_str(), limit.requests_per_unit, limit.unit),
            ("per-client", 3, Unit::Minute as i32)
        );
        let reset = s
            .duration_until_reset
            .as_ref()
            .expect("duration_until_reset");
        assert!((0..=60).contains(&reset.seconds), "{reset:?}");
        assert!(
            header(&r, "ratelimit").is_some_and(|v| v.contains(&format!("r={left}"))),
            "{r:?}"
        );
    }
    let r = ask(
        &mut clients[1],
        request("edge", vec![client_of("192.0.2.10")], 0),
    )
    .await;
    assert_eq!(r.overall_code, Code::OverLimit as i32, "{r:?}");
    assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(r.statuses[0].limit_remaining, 0);
    assert!(
        header(&r, "retry-after")
            .is_some_and(|v| v.parse::<u64>().is_ok_and(|s| (1..=60).contains(&s)))
    );
    assert_eq!(
        header(&r, "ratelimit-policy"),
        Some(r#""per-client";q=3;w=60"#)
    );
    assert_eq!(header(&r, "x-floodgate-status"), Some("429"));
    assert_eq!(header(&r, "content-type"), Some("application/problem+json"));
    let body: serde_json::Value = serde_json::from_slice(&r.raw_body).expect("raw_body is JSON");
    assert_eq!(body["status"], 429);
    assert!(
        body["detail"].as_str().unwrap().contains("per-client"),
        "{body}"
    );

    // Another client is counted apart.
    let r = ask(
        &mut clients[0],
        request("edge", vec![client_of("192.0.2.11")], 0),
    )
    .await;
    assert_eq!(r.overall_code, Code::Ok as i32);

    // Several descriptors in one request: one status each, in order; the
    // one no rule decides is OK without a limit; one over its limit makes
    // the whole request OVER_LIMIT.
    let r = ask(
        &mut clients[0],
        request(
            "edge",
            vec![
                descriptor(&[("generic_key", "slow"), ("user", "alice")], None),
                descriptor(&[("generic_key", "fast"), ("user", "alice")], None),
                client_of("192.0.2.10"),
            ],
            0,
        ),
    )
    .await;
    assert_eq!(r.statuses.len(), 3);
    assert_eq!(r.statuses[0].code, Code::Ok as i32);
    assert_eq!(r.statuses[0].limit_remaining, 9);
    assert!(
        r.statuses[0].current_limit.is_none(),
        "a 10 s window is not a unit the protocol has"
    );
    assert_eq!(r.statuses[1].code, Code::Ok as i32);
    assert_eq!(r.statuses[1].current_limit, None);
    assert_eq!(r.statuses[1].limit_remaining, 0);
    assert_eq!(r.statuses[2].code, Code::OverLimit as i32);
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_addend_is_the_cost_and_a_descriptors_own_wins() {
    let fg = Floodgate::launch(config(&store_section(None), RULES)).await;
    let mut c = client(fg.grpc).await;
    let slow = |user: &str, hits: Option<u64>| {
        descriptor(&[("generic_key", "slow"), ("user", user)], hits)
    };
    // Request-level 4.
    let r = ask(&mut c, request("edge", vec![slow("bob", None)], 4)).await;
    assert_eq!(r.statuses[0].limit_remaining, 6);
    // The descriptor's 5 wins over the request's 4.
    let r = ask(&mut c, request("edge", vec![slow("bob", Some(5))], 4)).await;
    assert_eq!(r.statuses[0].limit_remaining, 1);
    // 0 means 1, at both levels.
    let r = ask(&mut c, request("edge", vec![slow("bob", Some(0))], 0)).await;
    assert_eq!(r.statuses[0].limit_remaining, 0);
    // More than is left: refused, nothing counted; more than the limit
    // ever holds: refused too.
    let r = ask(&mut c, request("edge", vec![slow("carol", None)], 11)).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    let r = ask(&mut c, request("edge", vec![slow("carol", Some(10))], 0)).await;
    assert_eq!(
        r.overall_code,
        Code::Ok as i32,
        "the refusal counted nothing: {r:?}"
    );
    assert_eq!(r.statuses[0].limit_remaining, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_domains_and_descriptors_pass_and_shadow_rules_only_say_so() {
    let fg = Floodgate::launch(config(&store_section(None), RULES)).await;
    let mut c = client(fg.grpc).await;
    for _ in 0..5 {
        let r = ask(
            &mut c,
            request("elsewhere", vec![client_of("192.0.2.20")], 0),
        )
        .await;
        assert_eq!(r.overall_code, Code::Ok as i32);
        assert_eq!(r.statuses.len(), 1);
        assert_eq!(r.statuses[0].current_limit, None);
        assert!(r.response_headers_to_add.is_empty(), "{r:?}");
        let r = ask(
            &mut c,
            request("edge", vec![descriptor(&[("unheard_of", "x")], None)], 0),
        )
        .await;
        assert_eq!(r.overall_code, Code::Ok as i32);
    }
    // The shadow rule (limit 1 an hour) would refuse the second: OK, with
    // r=0 in its RateLimit header.
    let watched = || descriptor(&[("watched", "mallory")], None);
    let r = ask(&mut c, request("edge", vec![watched()], 0)).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    let r = ask(&mut c, request("edge", vec![watched()], 0)).await;
    assert_eq!(r.overall_code, Code::Ok as i32, "{r:?}");
    assert_eq!(r.statuses[0].code, Code::Ok as i32);
    assert!(
        header(&r, "ratelimit").is_some_and(|v| v.starts_with(r#""watch";r=0"#)),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_on_the_remote_address_refuses_every_descriptor_with_403() {
    let fg = Floodgate::launch(config(&store_section(None), RULES)).await;
    let mut c = client(fg.grpc).await;
    let http = Http::new();
    let r = http
        .post_json(
            &fg.admin_url("/admin/blocks"),
            &[AUTH],
            r#"{"target": "ip:198.51.100.7", "ttl": "1m", "reason": "scraping"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let both = || {
        request(
            "edge",
            vec![
                descriptor(&[("generic_key", "slow"), ("user", "eve")], None),
                client_of("198.51.100.7"),
            ],
            0,
        )
    };
    let r = ask(&mut c, both()).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32, "{r:?}");
    assert!(r.statuses.iter().all(|s| s.code == Code::OverLimit as i32));
    assert_eq!(header(&r, "x-floodgate-status"), Some("403"));
    let body: serde_json::Value = serde_json::from_slice(&r.raw_body).unwrap();
    assert_eq!(body["status"], 403);
    // Another address is not blocked.
    let r = ask(&mut c, request("edge", vec![client_of("198.51.100.8")], 0)).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    // Lifted: answered again.
    let r = http
        .delete(&fg.admin_url("/admin/blocks/ip%3A198.51.100.7"), &[AUTH])
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let lifted = eventually(Duration::from_secs(2), || {
        let mut c = c.clone();
        async move { ask(&mut c, both()).await.overall_code == Code::Ok as i32 }
    })
    .await;
    assert!(lifted, "still refused after the block was lifted");
}

/// Redis on a port nothing listens on.
fn dead_store(on_error: &str) -> String {
    let port = free_addr().port();
    format!(
        "[store]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:{port}/0\"\ntimeout = \"100ms\"\non_error = \"{on_error}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_down_is_unavailable_under_deny_and_ok_under_allow() {
    let deny = Floodgate::launch(config(&dead_store("deny"), RULES)).await;
    let allow = Floodgate::launch(config(&dead_store("allow"), RULES)).await;
    let local = Floodgate::launch(config(&dead_store("local"), RULES)).await;
    let grpc = [deny.grpc, allow.grpc, local.grpc];

    let started = std::time::Instant::now();
    let e = client(grpc[0])
        .await
        .should_rate_limit(request("edge", vec![client_of("192.0.2.30")], 0))
        .await
        .expect_err("on_error = deny with the store down");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let r = ask(
        &mut client(grpc[1]).await,
        request("edge", vec![client_of("192.0.2.30")], 0),
    )
    .await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!(r.statuses[0].current_limit, None, "nothing is known: {r:?}");

    // local: decided by the instance's own memory, the limit still holds.
    let mut c = client(grpc[2]).await;
    let codes: Vec<i32> = {
        let mut codes = Vec::new();
        for _ in 0..4 {
            codes.push(
                ask(&mut c, request("edge", vec![client_of("192.0.2.30")], 0))
                    .await
                    .overall_code,
            );
        }
        codes
    };
    assert_eq!(
        codes,
        [Code::Ok, Code::Ok, Code::Ok, Code::OverLimit].map(|c| c as i32)
    );
    drop((deny, allow, local));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_descriptor_rules_health_answers_and_bad_requests_are_refused() {
    let fg = Floodgate::launch(config(&store_section(None), RULES)).await;
    let grpc = fg.grpc;
    let channel = Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "envoy.service.ratelimit.v3.RateLimitService"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }

    let mut c = RateLimitServiceClient::new(channel.clone());
    let r = ask(&mut c, request("edge", vec![client_of("192.0.2.40")], 0)).await;
    assert_eq!(
        r.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        3
    );

    fg.rewrite_config(&config(
        &store_section(None),
        &RULES.replace("limit = 3\nwindow = \"1m\"", "limit = 50\nwindow = \"1h\""),
    ));
    fg.signal("HUP");
    let reloaded = eventually(Duration::from_secs(5), || {
        let mut c = c.clone();
        async move {
            let r = ask(&mut c, request("edge", vec![client_of("192.0.2.41")], 0)).await;
            r.statuses[0]
                .current_limit
                .as_ref()
                .is_some_and(|l| l.requests_per_unit == 50 && l.unit == Unit::Hour as i32)
        }
    })
    .await;
    assert!(
        reloaded,
        "the new limit is not in force after SIGHUP\n{}",
        fg.log()
    );

    // Malformed requests are INVALID_ARGUMENT, never a panic.
    for bad in [
        request("", vec![client_of("192.0.2.42")], 0),
        request("edge", vec![], 0),
        request("edge", vec![descriptor(&[], None)], 0),
        request(
            "edge",
            (0..65).map(|_| client_of("192.0.2.42")).collect(),
            0,
        ),
    ] {
        let e = c.should_rate_limit(bad).await.expect_err("malformed");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    }
    let mut negative = descriptor(&[("remote_address", "192.0.2.42")], Some(1));
    negative.is_negative_hits = true;
    let e = c
        .should_rate_limit(request("edge", vec![negative], 0))
        .await
        .expect_err("is_negative_hits");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_rules_do_not_limit_requests_through_the_gateway() {
    let fg = Floodgate::launch(config(&store_section(None), RULES)).await;
    let http = Http::new();
    for _ in 0..6 {
        let r = http.get(&fg.url("/api/hello"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("ratelimit"), None);
    }
}

/// The same service asked by Python's grpcio, with message classes built
/// from Envoy's published schema (the descriptor set envoy-types ships),
/// health checking from grpcio-health-checking and reflection read by
/// grpcio-reflection: tests/server/rls_grpcio.py, run here against two
/// instances on one Redis and two whose Redis is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_speaks_to_the_service_from_envoys_published_schema() {
    let python = std::env::var("FLOODGATE_TEST_PYTHON").expect(
        "FLOODGATE_TEST_PYTHON must name a Python with grpcio, grpcio-reflection and \
         grpcio-health-checking (./scripts/test.sh makes one)",
    );
    let set = option_env!("FLOODGATE_ENVOY_DESCRIPTOR_SET")
        .filter(|p| !p.is_empty())
        .expect("the build found no envoy-types descriptor set (see build.rs's warning)");
    let prefix = format!("rls-grpcio-{}", std::process::id());
    let a = Floodgate::launch(config(&store_section(Some(&prefix)), RULES)).await;
    let b = Floodgate::launch(config(&store_section(Some(&prefix)), RULES)).await;
    let deny = Floodgate::launch(config(&dead_store("deny"), RULES)).await;
    let allow = Floodgate::launch(config(&dead_store("allow"), RULES)).await;
    let grpc = [a.grpc, b.grpc, deny.grpc, allow.grpc];
    let args = serde_json::json!({
        "descriptor_set": set,
        "shared": [grpc[0].to_string(), grpc[1].to_string()],
        "admin": format!("http://{}", a.admin),
        "token": crate::support::process::TOKEN,
        "deny": grpc[2].to_string(),
        "allow": grpc[3].to_string(),
    });
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/server/rls_grpcio.py");
    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(args.to_string())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "rls_grpcio.py failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    for step in [
        "shared_limit",
        "costs_entries_and_domains",
        "blocks",
        "store_down",
        "malformed",
        "health_and_reflection",
    ] {
        assert!(
            stdout.contains(&format!("ok {step}")),
            "{step} did not run:\n{stdout}"
        );
    }
    drop((a, b, deny, allow));
}

/// deploy/envoy.yaml parses as Envoy's Bootstrap against Envoy's published
/// schema, and every descriptor its routes send is decided by a rule of
/// deploy/envoy-floodgate.toml, which `check-config` accepts.
#[test]
fn the_shipped_envoy_config_fits_envoys_schema_and_floodgates_rules() {
    let root = crate::support::host::repo_root();
    let toml = std::fs::read_to_string(root.join("deploy/envoy-floodgate.toml")).unwrap();
    let (code, stdout, stderr) = crate::support::process::check_config(&toml);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("decides Envoy descriptors edge [remote_address]"),
        "{stdout}"
    );
    let python = std::env::var("FLOODGATE_TEST_PYTHON").expect(
        "FLOODGATE_TEST_PYTHON must name a Python with protobuf and PyYAML (./scripts/test.sh makes one)",
    );
    let set = option_env!("FLOODGATE_ENVOY_DESCRIPTOR_SET")
        .filter(|p| !p.is_empty())
        .expect("the build found no envoy-types descriptor set (see build.rs's warning)");
    let output = std::process::Command::new(&python)
        .arg(root.join("crates/floodgate-server/tests/server/envoy_config.py"))
        .arg(set)
        .arg(root.join("deploy/envoy.yaml"))
        .arg(root.join("deploy/envoy-floodgate.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.starts_with("ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `--workers 2`: the supervisor binds the gRPC listener once and every
/// worker answers on it; the limit is shared through Redis; after a SIGHUP
/// rolling restart the workers answer with the new rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_the_grpc_listener_and_a_rolling_restart_applies_new_rules() {
    let prefix = format!("rls-workers-{}", std::process::id());
    let file = config(&store_section(Some(&prefix)), RULES);
    let fg = tokio::task::spawn_blocking(move || {
        Floodgate::start_with_args(&file, &["--workers", "2"], &[])
    })
    .await
    .unwrap();
    let grpc = fg.grpc;
    assert!(
        fg.wait_for_log("all workers serving", Duration::from_secs(30)),
        "{}",
        fg.log()
    );
    // New connections land on either worker; the limit of 3 is shared.
    let mut codes = Vec::new();
    for _ in 0..5 {
        let r = ask(
            &mut client(grpc).await,
            request("edge", vec![client_of("192.0.2.70")], 0),
        )
        .await;
        codes.push(r.overall_code);
    }
    assert_eq!(
        codes,
        [
            Code::Ok,
            Code::Ok,
            Code::Ok,
            Code::OverLimit,
            Code::OverLimit
        ]
        .map(|c| c as i32)
    );
    fg.rewrite_config(&config(
        &store_section(Some(&prefix)),
        &RULES.replace("limit = 3\nwindow = \"1m\"", "limit = 7\nwindow = \"1h\""),
    ));
    fg.signal("HUP");
    let reloaded = eventually(Duration::from_secs(30), || async {
        // Several new connections: every worker must have the new rules.
        let mut all = true;
        for _ in 0..4 {
            let r = ask(
                &mut client(grpc).await,
                request("edge", vec![client_of("192.0.2.71")], 0),
            )
            .await;
            all &= r.statuses[0]
                .current_limit
                .as_ref()
                .is_some_and(|l| l.requests_per_unit == 7);
        }
        all
    })
    .await;
    assert!(reloaded, "not every worker has the new rules\n{}", fg.log());
}

/// SIGTERM while a call waits on a slow store: the call is answered, not
/// cut off, and no new connection is accepted meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_finishes_the_calls_in_flight() {
    let redis = floodgate_testkit::RedisServer::start();
    let store = format!(
        "[store]\nbackend = \"redis\"\nurl = \"{}\"\ntimeout = \"5s\"\non_error = \"deny\"\n",
        redis.url()
    );
    let mut fg = Floodgate::launch(config(&store, RULES)).await;
    let grpc = fg.grpc;
    let mut c = client(grpc).await;
    // Warm: the connection and the store's scripts.
    assert_eq!(
        ask(&mut c, request("edge", vec![client_of("192.0.2.80")], 0))
            .await
            .overall_code,
        Code::Ok as i32
    );
    redis.pause();
    let call = {
        let mut c = c.clone();
        tokio::spawn(async move {
            c.should_rate_limit(request("edge", vec![client_of("192.0.2.81")], 0))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    fg.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        std::net::TcpStream::connect(grpc).is_err(),
        "the gRPC listener still accepts during the drain"
    );
    redis.resume();
    let answer = call.await.unwrap().expect("the call in flight is answered");
    assert_eq!(answer.into_inner().overall_code, Code::Ok as i32);
    let code = tokio::task::spawn_blocking(move || fg.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

/// An HTTP/2 connection to the gRPC listener through h2's client, and the
/// server's bound on concurrent streams as the connection last saw it.
async fn raw_connection(
    addr: std::net::SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let streams = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = streams.clone();
    tokio::spawn(std::future::poll_fn(move |cx| {
        let polled = std::pin::Pin::new(&mut connection).poll(cx);
        seen.store(connection.max_concurrent_send_streams(), Ordering::Relaxed);
        polled.map(|_| ())
    }));
    (send, streams)
}

/// One call on `send`: `headers` beside the usual ones, then `frames` as
/// data frames, the last ending the stream (none: the stream stays open);
/// the gRPC status (from the trailers, or the head of a trailers-only
/// answer) and the message.
async fn raw_call(
    send: &h2::client::SendRequest<bytes::Bytes>,
    path: &str,
    headers: &[(&str, &str)],
    frames: Vec<Vec<u8>>,
) -> (String, Vec<u8>) {
    let mut send = send.clone().ready().await.unwrap();
    let mut request = http::Request::post(format!("http://floodgate{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, mut stream) = send.send_request(request.body(()).unwrap(), false).unwrap();
    let count = frames.len();
    for (i, frame) in frames.into_iter().enumerate() {
        stream.send_data(frame.into(), i + 1 == count).unwrap();
    }
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    if let Some(status) = response.headers().get("grpc-status") {
        return (status.to_str().unwrap().to_owned(), Vec::new());
    }
    let mut body = response.into_body();
    let mut message = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        message.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    let status = trailers["grpc-status"].to_str().unwrap().to_owned();
    (status, message)
}

/// `message` as a gRPC body: the flag (not compressed), the length, the
/// message.
fn framed(message: &[u8]) -> Vec<u8> {
    let mut body = vec![0];
    body.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    body.extend_from_slice(message);
    body
}

/// What the listener's own HTTP/2 server answers below the protocol: its
/// bound of 1 024 streams per connection, a message split over several
/// data frames, a call whose message does not come before the caller's
/// `grpc-timeout` (`CANCELLED`), a method the service lacks
/// (`UNIMPLEMENTED`), a compressed message (`UNIMPLEMENTED`), a message over
/// 64 KiB (`RESOURCE_EXHAUSTED`), a body that is not one message
/// (`INVALID_ARGUMENT`); and health checking beside it on the same
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http2_server_bounds_streams_and_calls_and_answers_broken_ones() {
    use prost::Message;
    let fg = Floodgate::launch(config(&store_section(None), RULES)).await;
    let (send, streams) = raw_connection(fg.grpc).await;
    const METHOD: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
    let message = request("edge", vec![client_of("192.0.2.90")], 0).encode_to_vec();

    // Split in three data frames: one message all the same.
    let whole = framed(&message);
    let (a, rest) = whole.split_at(3);
    let (b, c) = rest.split_at(rest.len() / 2);
    let (status, answer) = raw_call(&send, METHOD, &[], vec![a.into(), b.into(), c.into()]).await;
    assert_eq!(status, "0");
    let r = RateLimitResponse::decode(&answer[5..]).unwrap();
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!(r.statuses[0].limit_remaining, 2);
    assert_eq!(
        streams.load(std::sync::atomic::Ordering::Relaxed),
        1024,
        "the server's SETTINGS_MAX_CONCURRENT_STREAMS"
    );

    // The message never comes: cut off at the caller's deadline.
    let (status, _) = raw_call(&send, METHOD, &[("grpc-timeout", "200m")], vec![]).await;
    assert_eq!(status, "1", "CANCELLED");

    let other = "/envoy.service.ratelimit.v3.RateLimitService/Other";
    assert_eq!(
        raw_call(&send, other, &[], vec![framed(&message)]).await.0,
        "12"
    );
    let mut compressed = framed(&message);
    compressed[0] = 1;
    assert_eq!(raw_call(&send, METHOD, &[], vec![compressed]).await.0, "12");
    let (status, _) = raw_call(
        &send,
        METHOD,
        &[("grpc-encoding", "gzip")],
        vec![framed(&message)],
    )
    .await;
    assert_eq!(status, "12");
    let huge = framed(&vec![0; 70 * 1024]);
    assert_eq!(raw_call(&send, METHOD, &[], vec![huge]).await.0, "8");
    let mut two = framed(&message);
    two.extend_from_slice(&framed(&message));
    assert_eq!(raw_call(&send, METHOD, &[], vec![two]).await.0, "3");
    assert_eq!(raw_call(&send, METHOD, &[], vec![vec![0, 0]]).await.0, "3");
    assert_eq!(
        raw_call(&send, METHOD, &[], vec![b"junk".to_vec()]).await.0,
        "12"
    );
    let (status, _) = raw_call(&send, METHOD, &[], vec![framed(b"\xff\xff")]).await;
    assert_eq!(status, "3", "not a RateLimitRequest");

    // Health checking on the same connection.
    let health = tonic_health::pb::HealthCheckRequest {
        service: "envoy.service.ratelimit.v3.RateLimitService".to_owned(),
    };
    let (status, answer) = raw_call(
        &send,
        "/grpc.health.v1.Health/Check",
        &[],
        vec![framed(&health.encode_to_vec())],
    )
    .await;
    assert_eq!(status, "0");
    let r = tonic_health::pb::HealthCheckResponse::decode(&answer[5..]).unwrap();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // A service nobody serves.
    let (status, _) = raw_call(&send, "/nobody.Nothing/Call", &[], vec![framed(&[])]).await;
    assert_eq!(status, "12");
}

/// A caller that gives up on a call waiting on a slow store (Envoy's
/// filter does after its timeout) resets the stream: the call is dropped,
/// and the connection goes on answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_reset_while_it_waits_on_the_store_leaves_the_connection_serving() {
    use prost::Message;
    let redis = floodgate_testkit::RedisServer::start();
    let store = format!(
        "[store]\nbackend = \"redis\"\nurl = \"{}\"\ntimeout = \"5s\"\non_error = \"deny\"\n",
        redis.url()
    );
    let fg = Floodgate::launch(config(&store, RULES)).await;
    let (send, _) = raw_connection(fg.grpc).await;
    const METHOD: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
    let message = |ip: &str| framed(&request("edge", vec![client_of(ip)], 0).encode_to_vec());
    // Warm: the store's scripts loaded.
    assert_eq!(
        raw_call(&send, METHOD, &[], vec![message("192.0.2.95")])
            .await
            .0,
        "0"
    );

    redis.pause();
    let mut waiting = send.clone().ready().await.unwrap();
    let head = http::Request::post(format!("http://floodgate{METHOD}"))
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let (response, mut stream) = waiting.send_request(head, false).unwrap();
    stream
        .send_data(message("192.0.2.96").into(), true)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream.send_reset(h2::Reason::CANCEL);
    assert!(response.await.is_err(), "the reset call has no answer");
    redis.resume();

    let (status, answer) = raw_call(&send, METHOD, &[], vec![message("192.0.2.97")]).await;
    assert_eq!(status, "0");
    let r = RateLimitResponse::decode(&answer[5..]).unwrap();
    assert_eq!(r.overall_code, Code::Ok as i32);
}
