//! The admin listener of the real binary: bearer token, blocks (also across
//! instances sharing a Redis), rule counters, /metrics, /healthz, /readyz.

use std::time::{Duration, Instant};

use floodgate_testkit::{shared_redis_url, unique_prefix};

use crate::support::http::Http;
use crate::support::process::{AUTH, Floodgate, TOKEN};
use crate::support::wait::eventually;

/// 3 requests per hour per IP on /api/hello, and per `x-api-key` on /api/items.
fn config(store: &str) -> String {
    config_with_limit(store, 3)
}

fn config_with_limit(store: &str, limit: u64) -> String {
    format!(
        "[server]\nlisten = \"{{listen}}\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n{store}\n\
         [admin]\nlisten = \"{{admin}}\"\n\
         [[rule]]\nname = \"api\"\nmatch = {{ path_prefix = \"/api/hello\" }}\nkey = \"ip\"\n\
         algorithm = \"sliding_log\"\nlimit = {limit}\nwindow = \"1h\"\n\
         [[rule]]\nname = \"keyed\"\nmatch = {{ path_prefix = \"/api/items\" }}\nkey = \"header:x-api-key\"\n\
         algorithm = \"token_bucket\"\nlimit = {limit}\nwindow = \"1h\"\n"
    )
}

fn redis_store(prefix: &str) -> String {
    format!(
        "[store]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"\ntimeout = \"2s\"\n",
        shared_redis_url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_need_the_bearer_token() {
    let fg = Floodgate::launch(&config("")).await;
    let http = Http::new();
    let block = r#"{"target": "ip:192.0.2.1", "ttl": "1m"}"#;
    for auth in [
        None,
        Some("Bearer wrong-token"),
        Some("Bearer test-admin-toke"),
        Some("Bearer test-admin-token-and-more"),
        Some("bearer"),
        Some("Basic dGVzdC1hZG1pbi10b2tlbg=="),
        Some(TOKEN),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        for (method, path, body) in [
            ("GET", "/admin/blocks", None),
            ("POST", "/admin/blocks", Some(block)),
            ("DELETE", "/admin/blocks/ip:192.0.2.1", None),
            ("GET", "/admin/rules/api/keys/ip:127.0.0.1", None),
            ("DELETE", "/admin/rules/api/keys/ip:127.0.0.1", None),
            ("GET", "/admin/rules/no-such-rule/keys/x", None),
        ] {
            let r = http
                .send(method, &fg.admin_url(path), &headers, body)
                .await
                .unwrap();
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}: {}", r.text());
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
            r.problem();
        }
    }
    let blocks = http.get(&fg.admin_url("/admin/blocks"), &[AUTH]).await;
    assert_eq!(blocks.status, 200);
    assert_eq!(
        blocks.json()["blocks"],
        serde_json::json!([]),
        "no request without the token changed anything"
    );
    // Probes and metrics are open.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            http.get(&fg.admin_url(path), &[]).await.status,
            200,
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_requests_are_400_or_404_naming_the_problem() {
    let fg = Floodgate::launch(&config("")).await;
    let http = Http::new();
    let url = fg.admin_url("/admin/blocks");
    for (body, names) in [
        ("{\"target\": ", "invalid JSON"),
        ("not json at all", "invalid JSON"),
        (r#"{"target": "ip:192.0.2.1"}"#, "ttl"),
        (r#"{"ttl": "1m"}"#, "target"),
        (
            r#"{"target": "ip:192.0.2.1", "ttl": "1m", "colour": "red"}"#,
            "colour",
        ),
        // A fixed bug: serde's type error did not name the field.
        (
            r#"{"target": "ip:192.0.2.1", "ttl": 60}"#,
            "ttl must be a string",
        ),
        (r#"{"target": "ip:192.0.2.1", "ttl": "ten minutes"}"#, "ttl"),
        (r#"{"target": "ip:192.0.2.1", "ttl": "0s"}"#, "ttl"),
        (r#"{"target": "192.0.2.1", "ttl": "1m"}"#, "target"),
        (r#"{"target": "ip:300.0.0.1", "ttl": "1m"}"#, "300.0.0.1"),
        (
            r#"{"target": "ip:10.0.0.0/33", "ttl": "1m"}"#,
            "10.0.0.0/33",
        ),
    ] {
        let r = http.post_json(&url, &[AUTH], body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let detail = r.problem()["detail"].as_str().unwrap().to_owned();
        assert!(
            detail.contains(names),
            "{body}: {detail:?} should name {names}"
        );
    }

    for (method, path) in [
        ("GET", "/admin/rules/no-such-rule/keys/ip:127.0.0.1"),
        ("DELETE", "/admin/rules/no-such-rule/keys/ip:127.0.0.1"),
    ] {
        let r = http
            .send(method, &fg.admin_url(path), &[AUTH], None)
            .await
            .unwrap();
        assert_eq!(r.status, 404, "{method} {path}");
        assert!(
            r.problem()["detail"]
                .as_str()
                .unwrap()
                .contains("no-such-rule")
        );
    }
    let r = http
        .delete(&fg.admin_url("/admin/blocks/ip:192.0.2.200"), &[AUTH])
        .await;
    assert_eq!(r.status, 404, "lifting a block that is not there");
    r.problem();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_counters_can_be_read_and_reset() {
    let fg = Floodgate::launch(&config("")).await;
    let http = Http::new();
    let key_url = |rule: &str, key: &str| fg.admin_url(&format!("/admin/rules/{rule}/keys/{key}"));

    let fresh = http.get(&key_url("api", "ip:127.0.0.1"), &[AUTH]).await;
    assert_eq!(fresh.status, 200);
    let fresh = fresh.json();
    assert_eq!(fresh["rule"], "api");
    assert_eq!(fresh["key"], "ip:127.0.0.1");
    assert_eq!(fresh["limit"], 3);
    assert_eq!(fresh["remaining"], 3);

    for _ in 0..2 {
        assert_eq!(http.get(&fg.url("/api/hello"), &[]).await.status, 200);
    }
    let used = http
        .get(&key_url("api", "ip:127.0.0.1"), &[AUTH])
        .await
        .json();
    assert_eq!(used["remaining"], 1, "{used}");
    assert_eq!(used["allowed"], true, "peeking does not consume: {used}");
    assert_eq!(
        http.get(&key_url("api", "ip:127.0.0.1"), &[AUTH])
            .await
            .json()["remaining"],
        1
    );
    for _ in 0..2 {
        http.get(&fg.url("/api/hello"), &[]).await;
    }
    let spent = http
        .get(&key_url("api", "ip:127.0.0.1"), &[AUTH])
        .await
        .json();
    assert_eq!(spent["remaining"], 0);
    assert_eq!(spent["allowed"], false);
    assert!(spent["retry_after_ms"].as_u64().unwrap() > 0, "{spent}");

    let reset = http.delete(&key_url("api", "ip:127.0.0.1"), &[AUTH]).await;
    assert_eq!(reset.status, 204, "{}", reset.text());
    assert_eq!(
        http.get(&key_url("api", "ip:127.0.0.1"), &[AUTH])
            .await
            .json()["remaining"],
        3
    );
    assert_eq!(
        http.get(&fg.url("/api/hello"), &[]).await.status,
        200,
        "admitted again after the reset"
    );

    // Header keys, with characters that must be percent-encoded in the path.
    for _ in 0..3 {
        let r = http
            .get(&fg.url("/api/items"), &[("x-api-key", "a b/c%d")])
            .await;
        assert_eq!(r.status, 200);
    }
    let encoded = "header:x-api-key:a%20b%2Fc%25d";
    let spent = http.get(&key_url("keyed", encoded), &[AUTH]).await;
    assert_eq!(spent.status, 200, "{}", spent.text());
    assert_eq!(spent.json()["key"], "header:x-api-key:a b/c%d");
    assert_eq!(spent.json()["remaining"], 0);
    assert_eq!(
        http.delete(&key_url("keyed", encoded), &[AUTH])
            .await
            .status,
        204
    );
    let r = http
        .get(&fg.url("/api/items"), &[("x-api-key", "a b/c%d")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.ratelimit("keyed").map(|x| x.0), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_are_listed_enforced_and_lifted() {
    let fg = Floodgate::launch(&config("")).await;
    let http = Http::new();
    let blocks_url = fg.admin_url("/admin/blocks");
    for (target, ttl, reason) in [
        ("ip:192.0.2.7", "10m", "scraping"),
        ("ip:198.51.100.0/24", "1h", "a bad network"),
        ("ip:2001:db8:bad::/48", "1d", ""),
        ("header:x-api-key:stolen", "30s", "leaked key"),
    ] {
        let r = http
            .post_json(
                &blocks_url,
                &[AUTH],
                &serde_json::json!({"target": target, "ttl": ttl, "reason": reason}).to_string(),
            )
            .await;
        assert_eq!(r.status, 201, "{target}: {}", r.text());
        let block = r.json();
        assert_eq!(block["target"], target);
        assert_eq!(block["source"], "manual");
        assert_eq!(block["reason"], reason);
        assert!(block["until"].as_str().unwrap().ends_with('Z'), "{block}");
    }
    let listed = http.get(&blocks_url, &[AUTH]).await.json();
    let mut targets: Vec<&str> = listed["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["target"].as_str().unwrap())
        .collect();
    targets.sort_unstable();
    assert_eq!(
        targets,
        [
            "header:x-api-key:stolen",
            "ip:192.0.2.7",
            "ip:198.51.100.0/24",
            "ip:2001:db8:bad::/48"
        ]
    );
    for b in listed["blocks"].as_array().unwrap() {
        for field in ["target", "until", "reason", "source"] {
            assert!(b.get(field).is_some(), "{field} missing from {b}");
        }
    }

    let get = |xff: &'static str, key: Option<&'static str>| {
        let http = http.clone();
        let url = fg.url("/api/hello");
        async move {
            let mut headers = vec![("x-forwarded-for", xff)];
            headers.extend(key.map(|k| ("x-api-key", k)));
            http.get(&url, &headers).await
        }
    };
    for (xff, key) in [
        ("192.0.2.7", None),
        ("198.51.100.99", None),
        ("2001:db8:bad:7::1", None),
        ("192.0.2.8", Some("stolen")),
    ] {
        let r = get(xff, key).await;
        assert_eq!(r.status, 403, "{xff} {key:?}: {}", r.text());
        assert!(
            r.problem()["detail"]
                .as_str()
                .unwrap()
                .contains("is blocked")
        );
    }
    assert_eq!(get("192.0.2.8", None).await.status, 200, "a neighbour");

    // Lifting: targets are URL-encoded in the path.
    for encoded in [
        "ip%3A192.0.2.7",
        "ip:198.51.100.0%2F24",
        "ip%3A2001%3Adb8%3Abad%3A%3A%2F48",
        "header%3Ax-api-key%3Astolen",
    ] {
        let r = http
            .delete(&fg.admin_url(&format!("/admin/blocks/{encoded}")), &[AUTH])
            .await;
        assert_eq!(r.status, 204, "{encoded}: {}", r.text());
    }
    for (xff, key) in [
        ("192.0.2.7", None),
        ("198.51.100.99", None),
        ("2001:db8:bad:7::1", None),
        ("192.0.2.9", Some("stolen")),
    ] {
        assert_eq!(get(xff, key).await.status, 200, "{xff} {key:?} unblocked");
    }
    assert_eq!(
        http.get(&blocks_url, &[AUTH]).await.json()["blocks"],
        serde_json::json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_made_on_one_instance_applies_on_another_within_a_second() {
    let prefix = unique_prefix("admin-blocks");
    // A limit polling cannot reach: only the block may refuse.
    let config = config_with_limit(&redis_store(&prefix), 1000);
    let (a, b) = tokio::join!(Floodgate::launch(&config), Floodgate::launch(&config));
    let http = Http::new();
    let client = [("x-forwarded-for", "203.0.113.50")];
    let neighbour = [("x-forwarded-for", "203.0.113.51")];
    assert_eq!(http.get(&b.url("/api/hello"), &client).await.status, 200);

    let made = http
        .post_json(
            &a.admin_url("/admin/blocks"),
            &[AUTH],
            r#"{"target": "ip:203.0.113.50", "ttl": "10m", "reason": "abuse"}"#,
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text());
    let made_at = Instant::now();
    assert_eq!(
        http.get(&a.url("/api/hello"), &client).await.status,
        403,
        "at once on the instance that made it"
    );
    // 1 s is the documented bound; the margin covers polling and a loaded machine.
    let refused_on_b = eventually(Duration::from_millis(1500), || async {
        http.get(&b.url("/api/hello"), &client).await.status == 403
    })
    .await;
    assert!(
        refused_on_b,
        "instance B still admits the client {:?} after the block",
        made_at.elapsed()
    );
    assert_eq!(http.get(&b.url("/api/hello"), &neighbour).await.status, 200);
    let listed_on_b = http
        .get(&b.admin_url("/admin/blocks"), &[AUTH])
        .await
        .json();
    assert_eq!(listed_on_b["blocks"][0]["target"], "ip:203.0.113.50");
    assert_eq!(listed_on_b["blocks"][0]["reason"], "abuse");
    assert_eq!(listed_on_b["blocks"][0]["source"], "manual");

    let lifted = http
        .delete(&a.admin_url("/admin/blocks/ip%3A203.0.113.50"), &[AUTH])
        .await;
    assert_eq!(lifted.status, 204);
    let admitted_on_b = eventually(Duration::from_millis(1500), || async {
        http.get(&b.url("/api/hello"), &client).await.status == 200
    })
    .await;
    assert!(admitted_on_b, "instance B still refuses after the unblock");
    assert_eq!(http.get(&a.url("/api/hello"), &client).await.status, 200);

    let metrics = http.get(&b.admin_url("/metrics"), &[]).await.text();
    assert!(
        metrics.contains("floodgate_decisions_total{rule=\"\",outcome=\"blocked\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_decisions_by_rule_and_outcome_and_probes_answer() {
    let fg = Floodgate::launch(&config("")).await;
    let http = Http::new();
    assert_eq!(http.get(&fg.admin_url("/healthz"), &[]).await.status, 200);
    assert_eq!(http.get(&fg.admin_url("/readyz"), &[]).await.status, 200);
    for _ in 0..5 {
        http.get(&fg.url("/api/hello"), &[]).await;
    }
    for _ in 0..4 {
        http.get(&fg.url("/api/items"), &[("x-api-key", "k")]).await;
    }
    let r = http.get(&fg.admin_url("/metrics"), &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type").unwrap().contains("text"),
        "{:?}",
        r.header("content-type")
    );
    let text = r.text();
    for line in [
        "floodgate_decisions_total{rule=\"api\",outcome=\"allowed\"} 3",
        "floodgate_decisions_total{rule=\"api\",outcome=\"limited\"} 2",
        "floodgate_decisions_total{rule=\"keyed\",outcome=\"allowed\"} 3",
        "floodgate_decisions_total{rule=\"keyed\",outcome=\"limited\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
    for family in [
        "floodgate_store_call_duration_seconds",
        // A fixed bug: no series at all until the first store error.
        "floodgate_store_errors_total{call=\"check\"} 0",
        "floodgate_active_blocks",
    ] {
        assert!(text.contains(family), "{family} missing from\n{text}");
    }
    let unknown = http.get(&fg.admin_url("/nope"), &[]).await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn penalty_blocks_are_listed_under_their_rule_and_lifted_by_a_reset() {
    let fg = Floodgate::launch(
        "[server]\nlisten = \"{listen}\"\n[admin]\nlisten = \"{admin}\"\n\
         [[rule]]\nname = \"strict\"\nkey = \"ip\"\nalgorithm = \"sliding_log\"\nlimit = 2\nwindow = \"1h\"\nblock_for = \"10m\"\n",
    )
    .await;
    let http = Http::new();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(http.get(&fg.url("/api/hello"), &[]).await.status);
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    let listed = http
        .get(&fg.admin_url("/admin/blocks"), &[AUTH])
        .await
        .json();
    assert_eq!(listed["blocks"][0]["target"], "ip:127.0.0.1", "{listed}");
    assert_eq!(listed["blocks"][0]["source"], "strict", "{listed}");
    let key_url = fg.admin_url("/admin/rules/strict/keys/ip:127.0.0.1");
    let counters = http.get(&key_url, &[AUTH]).await.json();
    assert_eq!(counters["blocked"], true, "{counters}");
    let left = counters["retry_after_ms"].as_u64().unwrap();
    assert!(
        left > 3_000_000,
        "the 1 h window outlasts the 10 min block: {left}"
    );

    // A reset clears the counter and the penalty at once.
    assert_eq!(http.delete(&key_url, &[AUTH]).await.status, 204);
    assert_eq!(http.get(&fg.url("/api/hello"), &[]).await.status, 200);
    assert_eq!(http.get(&key_url, &[AUTH]).await.json()["blocked"], false);
}
