//! The gateway end to end: the real binary in front of a real upstream, on
//! the memory store and on a real Redis.
//!
//! - every algorithm, keyed per IP and per header: requests up to the limit
//!   reach the upstream intact with RateLimit headers; the next gets a 429
//!   with Retry-After, RateLimit headers and a problem+json body naming the
//!   rule, and never reaches the upstream;
//! - the proxy keeps bodies and end-to-end headers, appends X-Forwarded-For,
//!   drops hop-by-hop headers, and answers 502 when the upstream is down;
//! - two processes on one Redis, requests alternating: the limit holds exactly;
//! - penalty blocks (`block_for`) outlast the window, then lift.

use std::time::{Duration, Instant};

use floodgate_testkit::{free_port, unique_prefix};

use crate::support::http::{Http, Reply};
use crate::support::process::{Floodgate, store_section};
use crate::support::raw::RawConn;
use crate::support::upstream::Upstream;
use crate::support::wait::{avoid_window_boundary, eventually};

const ALGORITHMS: [&str; 4] = [
    "fixed_window",
    "sliding_window",
    "sliding_log",
    "token_bucket",
];
const LIMIT: u64 = 3;

/// One rule per algorithm and key kind, each on its own path prefix:
/// `/<algorithm>/ip/` keyed by client IP, `/<algorithm>/hdr/` by `x-api-key`.
fn algorithms_config(upstream: &str, store: &str) -> String {
    let mut config = format!(
        "[server]\nlisten = \"{{listen}}\"\nupstream = \"{upstream}\"\ntrusted_proxies = []\n\
         {store}\n[admin]\nlisten = \"{{admin}}\"\n"
    );
    for algorithm in ALGORITHMS {
        for (kind, key) in [("ip", "ip"), ("hdr", "header:x-api-key")] {
            config.push_str(&format!(
                "\n[[rule]]\nname = \"{algorithm}-{kind}\"\nmatch = {{ path_prefix = \"/{algorithm}/{kind}/\" }}\n\
                 key = \"{key}\"\nalgorithm = \"{algorithm}\"\nlimit = {LIMIT}\nwindow = \"1h\"\n"
            ));
        }
    }
    config
}

/// Asserts `r` is the gateway's 429 for `rule`, with a Retry-After of at
/// most `max_wait` seconds.
fn assert_limited(r: &Reply, rule: &str, limit: u64, window_secs: u64, max_wait: u64) {
    assert_eq!(r.status, 429, "{rule}: {}", r.text());
    let retry_after = r.retry_after().expect("a 429 carries Retry-After");
    assert!(
        (1..=max_wait).contains(&retry_after),
        "{rule}: Retry-After {retry_after}"
    );
    assert_eq!(
        r.ratelimit_policy(rule),
        Some((limit, window_secs)),
        "{rule}: RateLimit-Policy {:?}",
        r.header("ratelimit-policy")
    );
    let (remaining, t) = r
        .ratelimit(rule)
        .unwrap_or_else(|| panic!("{rule}: no RateLimit item: {:?}", r.header("ratelimit")));
    assert_eq!(remaining, 0, "{rule}");
    assert_eq!(t, retry_after, "{rule}: RateLimit t matches Retry-After");
    let problem = r.problem();
    assert_eq!(problem["violated-policies"], serde_json::json!([rule]));
    assert!(
        problem["detail"].as_str().unwrap().contains(rule),
        "{problem}"
    );
}

/// Sends LIMIT + 1 requests for the rule `<algorithm>-<kind>` and checks
/// every answer. Returns how many reached the upstream.
async fn exhaust_one_rule(http: &Http, fg: &Floodgate, algorithm: &str, kind: &str) -> u64 {
    let rule = format!("{algorithm}-{kind}");
    let url = fg.url(&format!("/{algorithm}/{kind}/items?q=1"));
    let key_header = ("x-api-key", "alice");
    for i in 1..=LIMIT {
        let body = format!("{{\"n\":{i},\"rule\":\"{rule}\"}}");
        let r = http
            .send(
                "POST",
                &url,
                &[
                    key_header,
                    ("content-type", "application/json"),
                    ("x-custom", "kept as is"),
                ],
                Some(&body),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{rule} request {i}: {}", r.text());
        assert_eq!(r.header("x-upstream"), Some("echo"), "{rule}");
        let echo = r.json();
        assert_eq!(echo["method"], "POST");
        assert_eq!(echo["uri"], format!("/{algorithm}/{kind}/items?q=1"));
        assert_eq!(echo["body"], body, "{rule}: body intact");
        assert_eq!(echo["headers"]["x-custom"], "kept as is");
        assert_eq!(echo["headers"]["content-type"], "application/json");
        assert_eq!(echo["headers"]["x-api-key"], "alice");
        assert_eq!(r.ratelimit_policy(&rule), Some((LIMIT, 3600)), "{rule}");
        let (remaining, _) = r.ratelimit(&rule).unwrap();
        assert_eq!(remaining, LIMIT - i, "{rule} request {i}");
    }
    let refused = http
        .send("POST", &url, &[key_header], Some("over"))
        .await
        .unwrap();
    assert_limited(&refused, &rule, LIMIT, 3600, 3600);

    if kind == "hdr" {
        // Another key has its own counter; no key: the rule does not apply.
        let bob = http.get(&url, &[("x-api-key", "bob")]).await;
        assert_eq!(bob.status, 200, "{rule}: bob");
        assert_eq!(bob.ratelimit(&rule).map(|r| r.0), Some(LIMIT - 1));
        let keyless = http.get(&url, &[]).await;
        assert_eq!(keyless.status, 200, "{rule}: no x-api-key");
        assert_eq!(
            keyless.header("ratelimit"),
            None,
            "{rule}: rule not applied"
        );
        return LIMIT + 2;
    }
    LIMIT
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_limits_per_ip_and_per_header_on_memory_and_redis() {
    let upstream = Upstream::start().await;
    let memory = Floodgate::launch(&algorithms_config(&upstream.url(), &store_section(None))).await;
    let prefix = unique_prefix("gateway-algorithms");
    let redis = Floodgate::launch(&algorithms_config(
        &upstream.url(),
        &store_section(Some(&prefix)),
    ))
    .await;
    avoid_window_boundary(Duration::from_secs(3600), Duration::from_secs(30)).await;
    let http = Http::new();
    let mut forwarded = 0;
    for fg in [&memory, &redis] {
        for algorithm in ALGORITHMS {
            for kind in ["ip", "hdr"] {
                forwarded += exhaust_one_rule(&http, fg, algorithm, kind).await;
            }
        }
    }
    assert_eq!(
        upstream.hits(),
        forwarded,
        "exactly the admitted requests reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_keeps_end_to_end_headers_appends_forwarded_for_and_drops_hop_by_hop() {
    let upstream = Upstream::start().await;
    let fg = Floodgate::launch(&format!(
        "[server]\nlisten = \"{{listen}}\"\nupstream = \"{}\"\ntrusted_proxies = []\n[admin]\nlisten = \"{{admin}}\"\n\
         [[rule]]\nname = \"generous\"\nkey = \"ip\"\nlimit = 1000\nwindow = \"1m\"\n",
        upstream.url()
    ))
    .await;
    let http = Http::new();
    let big_body = "0123456789abcdef".repeat(64 * 1024); // 1 MiB, streamed through
    let r = http
        .send(
            "PUT",
            &fg.url("/some/path?a=1&b=two"),
            &[
                ("x-forwarded-for", "192.0.2.1"),
                ("x-custom", "value, with; punctuation"),
                ("connection", "keep-alive, x-drop-me"),
                ("x-drop-me", "named by Connection"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("proxy-authorization", "Basic c2VjcmV0"),
                ("authorization", "Bearer end-to-end"),
            ],
            Some(&big_body),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-upstream"),
        Some("echo"),
        "response headers kept"
    );
    assert!(r.ratelimit("generous").is_some());
    let echo = r.json();
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["uri"], "/some/path?a=1&b=two");
    assert!(echo["body"] == big_body.as_str(), "1 MiB body intact");
    let headers = &echo["headers"];
    assert_eq!(headers["x-custom"], "value, with; punctuation");
    assert_eq!(headers["authorization"], "Bearer end-to-end");
    assert_eq!(
        headers["x-forwarded-for"], "192.0.2.1, 127.0.0.1",
        "the peer is appended to the chain"
    );
    assert!(headers.get("x-forwarded-host").is_some(), "{headers}");
    for hop in ["x-drop-me", "keep-alive", "te", "proxy-authorization"] {
        assert!(headers.get(hop).is_none(), "{hop} reached the upstream");
    }
    if let Some(connection) = headers.get("connection") {
        assert!(
            !connection.as_str().unwrap_or("").contains("x-drop-me"),
            "{connection}"
        );
    }

    // Without a forwarding header the peer starts the chain; upstream
    // statuses pass through.
    let r = http.get(&fg.url("/plain"), &[]).await;
    assert_eq!(r.json()["headers"]["x-forwarded-for"], "127.0.0.1");
    let teapot = http.get(&fg.url("/status/418"), &[]).await;
    assert_eq!(teapot.status, 418);
    assert_eq!(teapot.text(), "as asked");

    // A chunked upload is streamed through and arrives whole.
    let addr = fg.addr;
    let chunked = tokio::task::spawn_blocking(move || {
        RawConn::connect(addr).roundtrip(
            b"POST /upload HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\
              Connection: close\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n",
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(chunked.status, 200, "{}", chunked.text());
    let echo: serde_json::Value = serde_json::from_slice(&chunked.body).unwrap();
    assert_eq!(echo["body"], "hello, world");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_forwarded_for_lines_are_all_kept_when_appending() {
    // RFC 9110 §5.3: two field lines are one comma-joined value; a proxy that
    // appends must not drop the second line. Guards a fixed bug: the proxy
    // read only the first line and replaced the header with it.
    let upstream = Upstream::start().await;
    let fg = Floodgate::launch(&format!(
        "[server]\nlisten = \"{{listen}}\"\nupstream = \"{}\"\n[admin]\nlisten = \"{{admin}}\"\n",
        upstream.url()
    ))
    .await;
    let mut conn = RawConn::connect(fg.addr);
    let r = tokio::task::spawn_blocking(move || {
        conn.get(
            "/chain",
            &[
                "X-Forwarded-For: 192.0.2.1",
                "X-Forwarded-For: 198.51.100.2",
                "Connection: close",
            ],
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let echo: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        echo["headers"]["x-forwarded-for"],
        "192.0.2.1, 198.51.100.2, 127.0.0.1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_base_path_is_kept_and_a_slow_upstream_is_a_504_problem() {
    let upstream = Upstream::start().await;
    let fg = Floodgate::launch(format!(
        "[server]\nlisten = \"{{listen}}\"\nupstream = \"{}/base/\"\nupstream_timeout = \"300ms\"\n\
         [admin]\nlisten = \"{{admin}}\"\n",
        upstream.url()
    ))
    .await;
    let http = Http::new();
    let r = http.get(&fg.url("/x/y?z=1"), &[]).await;
    assert_eq!(r.json()["uri"], "/base/x/y?z=1");
    let base = Floodgate::launch(format!(
        "[server]\nlisten = \"{{listen}}\"\nupstream = \"{}\"\nupstream_timeout = \"300ms\"\n\
         [admin]\nlisten = \"{{admin}}\"\n",
        upstream.url()
    ))
    .await;
    let slow = http.get(&base.url("/slow?ms=3000"), &[]).await;
    assert_eq!(slow.status, 504, "{}", slow.text());
    slow.problem();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_a_502_problem() {
    let dead = free_port();
    let fg = Floodgate::launch(&format!(
        "[server]\nlisten = \"{{listen}}\"\nupstream = \"http://127.0.0.1:{dead}\"\n[admin]\nlisten = \"{{admin}}\"\n"
    ))
    .await;
    let r = Http::new().get(&fg.url("/anything"), &[]).await;
    assert_eq!(r.status, 502);
    r.problem();
}

/// Two instances on one Redis prefix, one rule per algorithm keyed by IP and
/// the same rules through the decision API.
fn shared_config(upstream: &str, prefix: &str) -> String {
    let mut config = format!(
        "[server]\nlisten = \"{{listen}}\"\nupstream = \"{upstream}\"\ntrusted_proxies = []\n\
         {}\n[admin]\nlisten = \"{{admin}}\"\n",
        store_section(Some(prefix))
    );
    for algorithm in ALGORITHMS {
        config.push_str(&format!(
            "\n[[rule]]\nname = \"{algorithm}\"\nmatch = {{ path_prefix = \"/{algorithm}/\" }}\n\
             key = \"ip\"\nalgorithm = \"{algorithm}\"\nlimit = 5\nwindow = \"1h\"\n"
        ));
    }
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_hold_the_limit_exactly() {
    let upstream = Upstream::start().await;
    let prefix = unique_prefix("gateway-shared");
    let config = shared_config(&upstream.url(), &prefix);
    let (a, b) = tokio::join!(Floodgate::launch(&config), Floodgate::launch(&config));
    avoid_window_boundary(Duration::from_secs(3600), Duration::from_secs(30)).await;
    let http = Http::new();
    for algorithm in ALGORITHMS {
        // Through the gateway.
        let mut statuses = Vec::new();
        for i in 0..12 {
            let fg = if i % 2 == 0 { &a } else { &b };
            let r = http.get(&fg.url(&format!("/{algorithm}/x")), &[]).await;
            statuses.push(r.status);
        }
        assert_eq!(
            statuses,
            [[200; 5].as_slice(), [429; 7].as_slice()].concat(),
            "{algorithm} through the gateway, alternating instances"
        );
        // Through the decision API, on a key of its own.
        let mut allowed = Vec::new();
        for i in 0..12 {
            let fg = if i % 2 == 0 { &a } else { &b };
            let r = http.check(fg, algorithm, "shared-key", 1).await;
            assert_eq!(r.status, 200, "{}", r.text());
            allowed.push(r.json()["allowed"].as_bool().unwrap());
        }
        assert_eq!(
            allowed,
            [[true; 5].as_slice(), [false; 7].as_slice()].concat(),
            "{algorithm} through the decision API, alternating instances"
        );
    }
    assert_eq!(upstream.hits(), 4 * 5);
}

/// A rule that blocks for 4 s once 2 requests per second are exceeded.
fn penalty_config(store: &str) -> String {
    format!(
        "[server]\nlisten = \"{{listen}}\"\n{store}\n[admin]\nlisten = \"{{admin}}\"\n\
         [[rule]]\nname = \"strict\"\nmatch = {{ path_prefix = \"/api/\" }}\nkey = \"ip\"\n\
         algorithm = \"sliding_log\"\nlimit = 2\nwindow = \"1s\"\nblock_for = \"4s\"\n"
    )
}

/// Goes over the limit on `first`, then checks that `others` (every
/// instance, `first` included) refuse past the window, and admit again once
/// the block is over.
async fn penalty_outlasts_the_window(first: &Floodgate, others: &[&Floodgate]) {
    let http = Http::new();
    let url = |fg: &Floodgate| fg.url("/api/hello");
    let mut over_at = None;
    for _ in 0..20 {
        let r = http.get(&url(first), &[]).await;
        if r.status == 429 {
            over_at = Some(Instant::now());
            // The block starts now: Retry-After is block_for, not the window.
            assert_limited(&r, "strict", 2, 1, 4);
            assert!(r.retry_after().unwrap() >= 3, "{:?}", r.headers);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let over_at = over_at.expect("never went over a limit of 2 per second");

    // Well past the 1 s window, still refused: by the block, on every instance.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for fg in others {
        let r = http.get(&url(fg), &[]).await;
        assert_eq!(
            r.status,
            429,
            "blocked after the window reset: {}",
            r.text()
        );
        let retry_after = r.retry_after().unwrap();
        assert!(
            (1..=4).contains(&retry_after),
            "Retry-After {retry_after} points at the end of the block"
        );
        assert!(r.problem()["detail"].as_str().unwrap().contains("strict"));
    }
    // After the block: admitted again, everywhere.
    let until = over_at + Duration::from_secs(4);
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    for fg in others {
        let admitted = eventually(Duration::from_secs(5), || async {
            http.get(&url(fg), &[]).await.status == 200
        })
        .await;
        assert!(admitted, "still refused long after block_for ended");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn penalty_block_outlasts_the_window_then_lifts_on_memory_and_across_redis_instances() {
    let memory_config = penalty_config(&store_section(None));
    let redis_config = penalty_config(&store_section(Some(&unique_prefix("gateway-penalty"))));
    let (memory, a, b) = tokio::join!(
        Floodgate::launch(&memory_config),
        Floodgate::launch(&redis_config),
        Floodgate::launch(&redis_config)
    );
    let (memory_instances, redis_instances) = ([&memory], [&b, &a]);
    tokio::join!(
        penalty_outlasts_the_window(&memory, &memory_instances),
        penalty_outlasts_the_window(&a, &redis_instances),
    );
}

/// A block ladder of 2 s then 5 s on 2 requests per second.
fn ladder_config(store: &str) -> String {
    format!(
        "[server]\nlisten = \"{{listen}}\"\n{store}\n[admin]\nlisten = \"{{admin}}\"\n\
         [[rule]]\nname = \"ladder\"\nkey = \"ip\"\n\
         algorithm = \"sliding_log\"\nlimit = 2\nwindow = \"1s\"\nblock_for = [\"2s\", \"5s\"]\n"
    )
}

/// Goes over the ladder's limit on `fg` until refused; returns the
/// refusal's Retry-After.
async fn offend(http: &Http, fg: &Floodgate) -> u64 {
    for _ in 0..10 {
        let r = http.get(&fg.url("/api/hello"), &[]).await;
        if r.status == 429 {
            assert_eq!(
                r.problem()["violated-policies"],
                serde_json::json!(["ladder"])
            );
            return r.retry_after().expect("a 429 carries Retry-After");
        }
        assert_eq!(r.status, 200, "{}", r.text());
    }
    panic!("never went over a limit of 2 per second");
}

/// The first offence on one instance is blocked for the first step; the
/// second, on another instance once the first block ended, for the second.
async fn ladder_climbs(first: &Floodgate, second: &Floodgate) {
    let http = Http::new();
    let retry = offend(&http, first).await;
    assert_eq!(retry, 2, "the first offence gets the first step");
    let blocked = http.get(&second.url("/api/hello"), &[]).await;
    assert_eq!(blocked.status, 429, "the block holds on every instance");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let retry = offend(&http, second).await;
    assert!(
        (4..=5).contains(&retry),
        "the second offence, remembered, gets the second step: Retry-After {retry}"
    );
    // The block's listing names its step.
    let listed = http
        .get(
            &first.admin_url("/admin/blocks"),
            &[crate::support::process::AUTH],
        )
        .await
        .json();
    let reasons: Vec<&str> = listed["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["source"] == "ladder")
        .filter_map(|b| b["reason"].as_str())
        .collect();
    assert_eq!(
        reasons,
        ["over the limit of rule ladder (offence 2 in a row)"],
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_ladder_climbs_on_the_second_offence_on_memory_and_across_redis_instances() {
    let memory_config = ladder_config(&store_section(None));
    let redis_config = ladder_config(&store_section(Some(&unique_prefix("gateway-ladder"))));
    let (memory, a, b) = tokio::join!(
        Floodgate::launch(&memory_config),
        Floodgate::launch(&redis_config),
        Floodgate::launch(&redis_config)
    );
    tokio::join!(ladder_climbs(&memory, &memory), ladder_climbs(&a, &b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_matching_several_rules_is_refused_by_the_tightest_and_consumes_nothing() {
    let rules = "[[rule]]\nname = \"wide\"\nkey = \"ip\"\nalgorithm = \"sliding_log\"\nlimit = 5\nwindow = \"1h\"\n\
                 [[rule]]\nname = \"narrow\"\nmatch = { path_prefix = \"/api/\", methods = [\"POST\"] }\n\
                 key = \"ip\"\nalgorithm = \"token_bucket\"\nlimit = 2\nwindow = \"1h\"\n";
    let memory =
        format!("[server]\nlisten = \"{{listen}}\"\n[admin]\nlisten = \"{{admin}}\"\n{rules}");
    let redis = format!(
        "[server]\nlisten = \"{{listen}}\"\n{}\n[admin]\nlisten = \"{{admin}}\"\n{rules}",
        store_section(Some(&unique_prefix("gateway-several")))
    );
    let (memory, redis) = tokio::join!(Floodgate::launch(memory), Floodgate::launch(redis));
    let http = Http::new();
    for fg in [&memory, &redis] {
        let echo_url = fg.url("/api/echo");
        let post = || http.send("POST", &echo_url, &[], Some("x"));
        let first = post().await.unwrap();
        assert_eq!(first.status, 200);
        // The headers name the rule closest to refusing.
        // One of two tokens left, the bucket full again in half the window.
        assert_eq!(first.ratelimit("narrow"), Some((1, 1800)));
        assert_eq!(first.ratelimit("wide"), None);
        assert_eq!(post().await.unwrap().status, 200);
        let refused = post().await.unwrap();
        assert_limited(&refused, "narrow", 2, 3600, 3600);
        // GETs match only "wide", which the refused POST did not consume.
        let get = http.get(&fg.url("/api/hello"), &[]).await;
        assert_eq!(get.status, 200);
        assert_eq!(
            get.ratelimit("wide").map(|r| r.0),
            Some(2),
            "5 - 2 admitted POSTs - this GET; the refused POST took nothing"
        );
    }
}
