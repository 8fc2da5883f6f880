//! The decision API, `POST /v1/check`, through the real binary: the SPEC's
//! answer shape, costs, and the 400 / 404 / 422 answers. Also shadow rules,
//! which the decision API and the gateway report but never enforce.

use crate::support::http::Http;
use crate::support::process::Floodgate;

const CONFIG: &str = r#"
[server]
listen = "{listen}"
[admin]
listen = "{admin}"
[[rule]]
name = "api-per-client"
key = "ip"
match = { path_prefix = "/api/" }
algorithm = "sliding_log"
limit = 5
window = "1m"
[[rule]]
name = "shadowed"
match = { path_prefix = "/api/items" }
key = "ip"
algorithm = "fixed_window"
limit = 1
window = "1h"
shadow = true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_in_the_spec_shape_and_counts_costs() {
    let fg = Floodgate::launch(CONFIG).await;
    let http = Http::new();
    let r = http
        .post_json(
            &fg.url("/v1/check"),
            &[],
            r#"{"rule": "api-per-client", "key": "alice", "cost": 1}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let first = r.json();
    let mut fields: Vec<&String> = first.as_object().unwrap().keys().collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "allowed",
            "blocked",
            "limit",
            "remaining",
            "reset_after_ms",
            "retry_after_ms",
            "window_ms"
        ],
        "the SPEC's five, and blocked and window_ms"
    );
    assert_eq!(first["allowed"], true);
    assert_eq!(first["blocked"], false);
    assert_eq!(first["window_ms"], 60_000);
    assert_eq!(first["limit"], 5);
    assert_eq!(first["remaining"], 4);
    assert_eq!(first["retry_after_ms"], serde_json::Value::Null);
    let reset = first["reset_after_ms"].as_u64().unwrap();
    assert!((1..=60_000).contains(&reset), "reset_after_ms {reset}");

    // cost defaults to 1; a cost of 3 takes 3.
    let r = http
        .post_json(
            &fg.url("/v1/check"),
            &[],
            r#"{"rule": "api-per-client", "key": "alice"}"#,
        )
        .await;
    assert_eq!(r.json()["remaining"], 3);
    let r = http.check(&fg, "api-per-client", "alice", 3).await.json();
    assert_eq!(
        (r["allowed"].clone(), r["remaining"].clone()),
        (true.into(), 0.into())
    );
    let refused = http.check(&fg, "api-per-client", "alice", 1).await;
    assert_eq!(refused.status, 200, "a refusal is an answer, not an error");
    let refused = refused.json();
    assert_eq!(refused["allowed"], false);
    assert_eq!(refused["remaining"], 0);
    let retry = refused["retry_after_ms"].as_u64().unwrap();
    assert!((1..=60_000).contains(&retry), "retry_after_ms {retry}");

    // Keys are separate, and the decision API and the gateway share rules
    // but not keys: the gateway counts "ip:127.0.0.1".
    assert_eq!(
        http.check(&fg, "api-per-client", "bob", 1).await.json()["remaining"],
        4
    );
    let gateway = http.get(&fg.url("/api/hello"), &[]).await;
    assert_eq!(gateway.ratelimit("api-per-client").unwrap().0, 4);
    assert_eq!(
        http.check(&fg, "api-per-client", "ip:127.0.0.1", 1)
            .await
            .json()["remaining"],
        3,
        "the same key is the same counter"
    );

    // A key longer than the stored bound is hashed, consistently.
    let long = "k".repeat(10_000);
    let a = http.check(&fg, "api-per-client", &long, 1).await.json();
    let b = http.check(&fg, "api-per-client", &long, 1).await.json();
    assert_eq!(
        (a["remaining"].clone(), b["remaining"].clone()),
        (4.into(), 3.into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_problems_with_the_right_status() {
    let fg = Floodgate::launch(CONFIG).await;
    let http = Http::new();
    let url = fg.url("/v1/check");
    for (body, status, names) in [
        (r#"{"rule": "nope", "key": "a"}"#, 404, "nope"),
        (
            r#"{"rule": "api-per-client", "key": "a", "cost": 6}"#,
            422,
            "6",
        ),
        (
            r#"{"rule": "api-per-client", "key": "a", "cost": 1000000000000000}"#,
            422,
            "at most 5",
        ),
        (
            r#"{"rule": "api-per-client", "key": "a", "cost": 0}"#,
            422,
            "cost",
        ),
        (
            r#"{"rule": "api-per-client", "key": "a", "cost": -1}"#,
            400,
            "-1",
        ),
        (r#"{"rule": "api-per-client", "key": ""}"#, 400, "key"),
        (r#"{"rule": "api-per-client"}"#, 400, "key"),
        (r#"{"key": "a"}"#, 400, "rule"),
        (
            r#"{"rule": "api-per-client", "key": "a", "extra": 1}"#,
            400,
            "extra",
        ),
        (r#"{"rule": "api-per-client", "key": "#, 400, "JSON"),
        ("", 400, "JSON"),
        ("[1, 2, 3]", 400, "JSON"),
        (r#"{"rule": 5, "key": "a"}"#, 400, "JSON"),
    ] {
        let r = http.post_json(&url, &[], body).await;
        assert_eq!(r.status, status, "{body}: {}", r.text());
        let detail = r.problem()["detail"].as_str().unwrap().to_owned();
        assert!(
            detail.contains(names),
            "{body}: {detail:?} should name {names}"
        );
    }
    // Nothing was counted by the refused requests.
    assert_eq!(
        http.check(&fg, "api-per-client", "a", 1).await.json()["remaining"],
        4
    );
    let get = http.get(&url, &[]).await;
    assert_eq!(get.status, 405, "only POST: {}", get.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_rules_count_and_report_but_never_refuse() {
    let fg = Floodgate::launch(CONFIG).await;
    let http = Http::new();
    for i in 0..3u64 {
        let r = http.get(&fg.url("/api/items"), &[]).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        // The tightest rule's headers, shadow or not: what would happen.
        assert_eq!(r.ratelimit("shadowed").map(|x| x.0), Some(0), "request {i}");
        assert_eq!(r.ratelimit_policy("shadowed"), Some((1, 3600)));
    }
    for _ in 0..3 {
        let r = http.check(&fg, "shadowed", "k", 1).await.json();
        assert_eq!(r["allowed"], true, "{r}");
        assert_eq!(r["retry_after_ms"], serde_json::Value::Null, "{r}");
    }
    let metrics = http.get(&fg.admin_url("/metrics"), &[]).await.text();
    assert!(
        metrics
            .contains("floodgate_decisions_total{rule=\"shadowed\",outcome=\"shadow_limited\"} 4"),
        "2 gateway requests and 2 checks over the limit of 1:\n{metrics}"
    );
}
