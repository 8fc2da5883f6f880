//! `GET /admin/top` through the real binary: a known Zipf load of decisions
//! through two instances sharing Redis, then either instance lists the true
//! heaviest keys with counts within the documented bound (over N decisions
//! of a rule, each count short by at most N / 256); on the memory store the
//! instance's own counts; bad `n` 400, unknown rule 404, no token 401.

use std::collections::HashMap;
use std::time::Duration;

use floodgate_testkit::unique_prefix;
use futures_util::StreamExt;

use crate::support::http::Http;
use crate::support::process::{AUTH, Floodgate, store_section};

fn config(store: &str) -> String {
    format!(
        r#"[server]
listen = "{{listen}}"
{store}[admin]
listen = "{{admin}}"

[[rule]]
name = "api"
match = {{ path_prefix = "/api/" }}
key = "header:x-user"
algorithm = "fixed_window"
limit = 40
window = "1h"

[[rule]]
name = "login"
match = {{ path_prefix = "/login" }}
key = "ip"
limit = 5
window = "1h"
"#
    )
}

/// A Zipf(`s`) sample of `n` draws over keys `u0 .. u<keys-1>` (rank 1 the
/// heaviest), from a fixed seed: the same load on every run.
fn zipf_load(n: usize, keys: usize, s: f64) -> Vec<String> {
    let weights: Vec<f64> = (1..=keys).map(|k| (k as f64).powf(-s)).collect();
    let total: f64 = weights.iter().sum();
    let cumulative: Vec<f64> = weights
        .iter()
        .scan(0.0, |acc, w| {
            *acc += w / total;
            Some(*acc)
        })
        .collect();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            // xorshift64*: enough for a test load.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let u = (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
            let rank = cumulative.partition_point(|&c| c < u).min(keys - 1);
            format!("u{rank}")
        })
        .collect()
}

/// `/admin/top` on `fg`: its status and body.
async fn top(http: &Http, fg: &Floodgate, query: &str) -> (u16, serde_json::Value) {
    let r = http
        .get(&fg.admin_url(&format!("/admin/top{query}")), &[AUTH])
        .await;
    let body = if r.status == 200 {
        r.json()
    } else {
        r.problem()
    };
    (r.status, body)
}

fn field(entry: &serde_json::Value, name: &str) -> u64 {
    entry[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} in {entry}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_redis_list_the_true_heaviest_keys_within_the_bound() {
    let prefix = unique_prefix("top");
    let on_redis = config(&store_section(Some(&prefix)));
    let (a, b) = tokio::join!(Floodgate::launch(&on_redis), Floodgate::launch(&on_redis));
    let http = Http::new();

    // 6 000 decisions over 3 000 keys, alternately through a and b: more
    // distinct keys than an instance's 512 counters a minute, so the
    // summaries evict and the bound is exercised.
    let load = zipf_load(6_000, 3_000, 1.1);
    let n = load.len() as u64;
    let replies: Vec<(String, bool)> = futures_util::stream::iter(load.iter().enumerate())
        .map(|(i, key)| {
            let (http, fg) = (&http, if i % 2 == 0 { &a } else { &b });
            async move {
                let r = http
                    .check(fg, "api", &format!("header:x-user:{key}"), 1)
                    .await;
                assert_eq!(r.status, 200, "{}", r.text());
                (key.clone(), r.json()["allowed"] == true)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;

    // The truth: (admitted, refused) per key, as the shared Redis decided.
    let mut truth: HashMap<String, (u64, u64)> = HashMap::new();
    for (key, allowed) in &replies {
        let t = truth.entry(format!("header:x-user:{key}")).or_default();
        if *allowed {
            t.0 += 1;
        } else {
            t.1 += 1;
        }
    }
    let mut heaviest: Vec<(&String, u64)> = truth.iter().map(|(k, (a, r))| (k, a + r)).collect();
    heaviest.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(y.0)));
    let bound = n / 256;

    for fg in [&a, &b] {
        // Each instance publishes every 5 s: wait until this one's answer
        // holds the other's counts too (the heaviest key complete).
        let (top_key, top_count) = heaviest[0];
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let listed = loop {
            let (status, body) = top(&http, fg, "?rule=api&n=20").await;
            assert_eq!(status, 200, "{body}");
            let first = &body[0];
            if first["key"] == top_key.as_str()
                && field(first, "admitted") + field(first, "refused") + field(first, "error")
                    >= top_count
            {
                break body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the heaviest key {top_key} ({top_count}) never complete: {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };

        let entries = listed.as_array().unwrap();
        assert_eq!(entries.len(), 20);
        let mut last_counted = u64::MAX;
        for e in entries {
            assert_eq!(e["rule"], "api");
            let key = e["key"].as_str().unwrap();
            let (ta, tr) = truth[key];
            let (admitted, refused, error) =
                (field(e, "admitted"), field(e, "refused"), field(e, "error"));
            assert!(
                admitted <= ta && refused <= tr,
                "{e} over the truth ({ta}, {tr})"
            );
            assert!(
                admitted + refused + error >= ta + tr,
                "{e} misses more than its error: {}",
                ta + tr
            );
            assert!(error <= bound, "{e}: error over N/256 = {bound}");
            assert!(
                admitted + refused <= last_counted,
                "not heaviest first: {listed}"
            );
            last_counted = admitted + refused;
        }
        // Every key truly heavier than the last listed by more than the
        // bound is listed.
        for (key, count) in &heaviest {
            if *count > last_counted + bound {
                assert!(
                    entries.iter().any(|e| e["key"] == key.as_str()),
                    "{key} ({count}) missing from {listed}"
                );
            }
        }
    }

    // Every rule: login has no decisions, so only api's keys.
    let (status, all) = top(&http, &a, "?n=3").await;
    assert_eq!(status, 200);
    assert_eq!(all.as_array().unwrap().len(), 3);
    assert_eq!(all[0]["key"], heaviest[0].0.as_str());
}

#[tokio::test]
async fn a_memory_instance_lists_its_own_counts_and_refuses_bad_queries() {
    let fg = Floodgate::launch(config(&store_section(None))).await;
    let http = Http::new();
    for (key, times) in [("alice", 50), ("bob", 3)] {
        for _ in 0..times {
            let r = http.get(&fg.url("/api/hello"), &[("x-user", key)]).await;
            assert!(r.status == 200 || r.status == 429, "{}", r.text());
        }
    }
    for _ in 0..7 {
        http.get(&fg.url("/login"), &[]).await;
    }

    // Read at once: this instance's own counts are current, not the last
    // published.
    let (status, body) = top(&http, &fg, "").await;
    assert_eq!(status, 200, "{body}");
    let rows: Vec<(String, String, u64, u64, u64)> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["rule"].as_str().unwrap().to_owned(),
                e["key"].as_str().unwrap().to_owned(),
                field(e, "admitted"),
                field(e, "refused"),
                field(e, "error"),
            )
        })
        .collect();
    let row = |rule: &str, key: &str, a, r| (rule.to_owned(), key.to_owned(), a, r, 0);
    assert_eq!(
        rows,
        [
            row("api", "header:x-user:alice", 40, 10),
            row("login", "ip:127.0.0.1", 5, 2),
            row("api", "header:x-user:bob", 3, 0),
        ]
    );
    let (_, login) = top(&http, &fg, "?rule=login&n=1").await;
    assert_eq!(login.as_array().unwrap().len(), 1);
    assert_eq!(login[0]["key"], "ip:127.0.0.1");
    let (_, one) = top(&http, &fg, "?n=1").await;
    assert_eq!(one[0]["key"], "header:x-user:alice");

    for query in ["?n=0", "?n=1001", "?n=ten", "?n=-1", "?rule=api&top=3"] {
        let (status, problem) = top(&http, &fg, query).await;
        assert_eq!(status, 400, "{query}: {problem}");
        assert!(problem["detail"].as_str().is_some(), "{problem}");
    }
    let (status, problem) = top(&http, &fg, "?rule=nope").await;
    assert_eq!(status, 404);
    assert!(
        problem["detail"].as_str().unwrap().contains("nope"),
        "{problem}"
    );
    let r = http.get(&fg.admin_url("/admin/top"), &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
}
