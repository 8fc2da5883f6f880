//! Rules charged on the answer, through the real binary and a real
//! upstream: `count_status` (failed logins: only the failures count, on
//! every instance sharing Redis) and `cost_header` (the upstream names the
//! cost; the header never reaches the client; a missing one charges the
//! rule's cost and is counted), and the decision API's two steps (ask
//! without charging, then `POST /v1/charge`).

use floodgate_testkit::unique_prefix;

use crate::support::http::Http;
use crate::support::process::{Floodgate, store_section};
use crate::support::upstream::Upstream;

/// The gateway in front of `upstream`, on memory or on Redis under `prefix`.
fn config(upstream: &str, prefix: Option<&str>) -> String {
    let store = store_section(prefix);
    format!(
        r#"[server]
listen = "{{listen}}"
upstream = "{upstream}"
{store}
[admin]
listen = "{{admin}}"

[[rule]]
name = "login-failures"
match = {{ path_prefix = "/login" }}
key = "header:x-user"
algorithm = "sliding_window"
limit = 3
window = "1h"
count_status = [401, "5xx"]

[[rule]]
name = "tokens"
match = {{ path_prefix = "/cost" }}
key = "header:x-user"
algorithm = "token_bucket"
limit = 10
window = "1h"
cost_header = "x-ratelimit-cost"
"#
    )
}

/// A login attempt as `user` on `fg`; its status.
async fn login(http: &Http, fg: &Floodgate, user: &str, password: &str) -> u16 {
    http.send(
        "POST",
        &fg.url("/login"),
        &[("x-user", user), ("x-password", password)],
        Some("{}"),
    )
    .await
    .unwrap()
    .status
}

/// Failed logins on `instances` (alternating): only failures count, 3 per
/// user, then 429 for that user alone, even with the right password.
async fn failed_logins(instances: &[&Floodgate]) {
    let http = Http::new();
    let fg = |i: usize| instances[i % instances.len()];
    // Successes are free: ten in a row, then three failures still go through.
    for i in 0..10 {
        assert_eq!(
            login(&http, fg(i), "carol", "right").await,
            200,
            "success {i}"
        );
    }
    for i in 0..3 {
        assert_eq!(
            login(&http, fg(i), "alice", "wrong").await,
            401,
            "failure {i}"
        );
    }
    for i in 0..3 {
        assert_eq!(
            login(&http, fg(i), "alice", "right").await,
            429,
            "alice is locked after 3 failures, whatever she sends"
        );
    }
    // Another user is untouched; carol's successes were never charged.
    assert_eq!(login(&http, fg(0), "bob", "right").await, 200);
    for i in 0..3 {
        assert_eq!(
            login(&http, fg(i), "carol", "wrong").await,
            401,
            "carol's failure {i}"
        );
    }
    assert_eq!(login(&http, fg(1), "carol", "wrong").await, 429);
    // The refusal names the rule and says when to come back.
    let r = http
        .send(
            "POST",
            &fg(0).url("/login"),
            &[("x-user", "alice")],
            Some("{}"),
        )
        .await
        .unwrap();
    assert_eq!(
        r.problem()["violated-policies"],
        serde_json::json!(["login-failures"])
    );
    assert!(r.retry_after().unwrap() > 60, "{:?}", r.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_failed_logins_count_on_memory_and_across_redis_instances() {
    let upstream = Upstream::start().await;
    let prefix = unique_prefix("answers-login");
    let (on_memory, on_redis) = (
        config(&upstream.url(), None),
        config(&upstream.url(), Some(&prefix)),
    );
    let (memory, a, b) = tokio::join!(
        Floodgate::launch(&on_memory),
        Floodgate::launch(&on_redis),
        Floodgate::launch(&on_redis),
    );
    let (one, two) = ([&memory], [&a, &b]);
    tokio::join!(failed_logins(&one), failed_logins(&two));
    // The shared counter holds alice's three failures.
    let http = Http::new();
    let counters = http
        .counters(&a, "login-failures", "header:x-user:alice")
        .await;
    assert!(
        counters.to_string().contains("\"remaining\":0"),
        "{counters}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_names_the_cost_and_the_client_never_sees_it() {
    let upstream = Upstream::start().await;
    let fg = Floodgate::launch(&config(&upstream.url(), None)).await;
    let http = Http::new();
    let spend = async |query: &str| {
        http.get(&fg.url(&format!("/cost{query}")), &[("x-user", "dave")])
            .await
    };
    // 10 tokens: 4 + 4 admitted; the third is admitted (2 left) and its 4
    // take the key past the limit; the fourth is refused.
    for i in 0..3 {
        let r = spend("?units=4").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert!(
            r.header("x-ratelimit-cost").is_none(),
            "the cost header leaked: {:?}",
            r.headers
        );
    }
    let refused = spend("?units=4").await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    let after = http.counters(&fg, "tokens", "header:x-user:dave").await;
    assert!(after.to_string().contains("\"remaining\":0"), "{after}");

    // A missing, malformed or too large cost: the rule's cost (1), or what
    // it holds (10), each counted by reason.
    for query in ["", "?units=lots", "?units=99999"] {
        let r = http
            .get(&fg.url(&format!("/cost{query}")), &[("x-user", "erin")])
            .await;
        assert_eq!(r.status, 200, "{query}: {}", r.text());
    }
    let metrics = http.get(&fg.admin_url("/metrics"), &[]).await.text();
    for reason in ["missing", "malformed", "too_large"] {
        let line = format!(
            "floodgate_cost_header_fallbacks_total{{rule=\"tokens\",reason=\"{reason}\"}} 1"
        );
        assert!(metrics.contains(&line), "no {line:?} in:\n{metrics}");
    }
    // 4 + 4 + 4 for dave, 1 + 1 + 10 for erin.
    assert!(
        metrics.contains("floodgate_charged_units_total{rule=\"tokens\"} 24"),
        "{metrics}"
    );
    // Zero charges nothing.
    let free = http
        .get(&fg.url("/cost?units=0"), &[("x-user", "frank")])
        .await;
    assert_eq!(free.status, 200);
    let counters = http.counters(&fg, "tokens", "header:x-user:frank").await;
    assert!(
        counters.to_string().contains("\"remaining\":10"),
        "{counters}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_api_asks_then_charges_in_two_calls() {
    let upstream = Upstream::start().await;
    let fg = Floodgate::launch(&config(&upstream.url(), None)).await;
    let http = Http::new();
    let post = async |path: &str, body: serde_json::Value| {
        http.post_json(&fg.url(path), &[], &body.to_string()).await
    };
    // A rule charged on the answer is only asked by default.
    for _ in 0..5 {
        let r = post(
            "/v1/check",
            serde_json::json!({"rule": "login-failures", "key": "grace"}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["allowed"], true);
        assert_eq!(r.json()["remaining"], 2);
    }
    for left in [2, 1, 0] {
        let r = post(
            "/v1/charge",
            serde_json::json!({"rule": "login-failures", "key": "grace"}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["remaining"], left);
    }
    let r = post(
        "/v1/check",
        serde_json::json!({"rule": "login-failures", "key": "grace"}),
    )
    .await;
    assert_eq!(r.json()["allowed"], false, "{}", r.text());
    assert!(r.json()["retry_after_ms"].as_u64().unwrap() > 0);
    // A charge past the limit is still recorded.
    let r = post(
        "/v1/charge",
        serde_json::json!({"rule": "login-failures", "key": "grace", "cost": 2}),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["allowed"].clone()),
        (200, serde_json::json!(false))
    );
    // "charge": true charges at once, even on such a rule.
    let r = post(
        "/v1/check",
        serde_json::json!({"rule": "login-failures", "key": "heidi", "charge": true}),
    )
    .await;
    assert_eq!(r.json()["remaining"], 2);
    let r = post(
        "/v1/check",
        serde_json::json!({"rule": "login-failures", "key": "heidi", "charge": false}),
    )
    .await;
    assert_eq!(r.json()["remaining"], 1, "the first call charged");
    // Bad charges: unknown rule 404, zero or too large a cost 422, unknown
    // fields 400.
    let cases = [
        (serde_json::json!({"rule": "nope", "key": "k"}), 404),
        (
            serde_json::json!({"rule": "tokens", "key": "k", "cost": 0}),
            422,
        ),
        (
            serde_json::json!({"rule": "tokens", "key": "k", "cost": 11}),
            422,
        ),
        (
            serde_json::json!({"rule": "tokens", "key": "k", "charge": true}),
            400,
        ),
        (serde_json::json!({"rule": "tokens", "key": ""}), 400),
    ];
    for (body, status) in cases {
        let r = post("/v1/charge", body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    }
}
