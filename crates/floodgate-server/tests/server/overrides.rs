//! Per-key overrides through the real binary: `[[rule.override]]` in the
//! file, and `PUT/GET/DELETE /admin/rules/<rule>/overrides/<key>` put on one
//! instance and obeyed by another sharing Redis within a second, visible in
//! the key's counters, the RateLimit headers and the metrics; bad requests
//! get clear answers.

use std::time::{Duration, Instant};

use floodgate_testkit::unique_prefix;

use crate::support::http::Http;
use crate::support::process::{AUTH, Floodgate, store_section};
use crate::support::wait::eventually;

fn config(prefix: &str) -> String {
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
limit = 2
window = "1h"

[[rule.override]]
key = "header:x-user:partner"
limit = 5
"#,
        store = store_section(Some(prefix))
    )
}

/// Requests of `user` on `fg` until one is refused; how many were admitted
/// (at most 20), and the `RateLimit-Policy` of the first.
async fn admitted(http: &Http, fg: &Floodgate, user: &str) -> (u32, Option<String>) {
    let mut policy = None;
    for n in 0..20 {
        let r = http.get(&fg.url("/api/hello"), &[("x-user", user)]).await;
        if policy.is_none() {
            policy = r.header("ratelimit-policy").map(str::to_owned);
        }
        if r.status == 429 {
            return (n, policy);
        }
        assert_eq!(r.status, 200, "{}", r.text());
    }
    (20, policy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_put_on_one_instance_is_obeyed_by_another_within_a_second() {
    let prefix = unique_prefix("overrides");
    let on_redis = config(&prefix);
    let (a, b) = tokio::join!(Floodgate::launch(&on_redis), Floodgate::launch(&on_redis));
    let http = Http::new();

    // The file's override, on both instances; other keys have the rule's 2.
    assert_eq!(
        admitted(&http, &a, "partner").await,
        (5, Some(r#""api";q=5;w=3600"#.into()))
    );
    assert_eq!(
        admitted(&http, &b, "someone").await,
        (2, Some(r#""api";q=2;w=3600"#.into()))
    );

    // Put on a, obeyed on b within a second.
    let put = http
        .send(
            "PUT",
            &a.admin_url("/admin/rules/api/overrides/header:x-user:big"),
            &[AUTH, ("content-type", "application/json")],
            Some(r#"{"limit": 4, "window": "1h"}"#),
        )
        .await
        .unwrap();
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(put.json()["limit"], 4);
    assert_eq!(put.json()["source"], "store");
    let put_at = Instant::now();
    let seen = eventually(Duration::from_secs(3), || async {
        let r = http
            .get(
                &b.admin_url("/admin/rules/api/keys/header:x-user:big"),
                &[AUTH],
            )
            .await;
        r.json()["override"]["limit"] == 4
    })
    .await;
    let took = put_at.elapsed();
    assert!(seen, "instance b never saw the override");
    assert!(
        took < Duration::from_millis(1500),
        "b saw the override after {took:?}"
    );
    assert_eq!(
        admitted(&http, &b, "big").await,
        (4, Some(r#""api";q=4;w=3600"#.into()))
    );
    let counters = http
        .get(
            &a.admin_url("/admin/rules/api/keys/header:x-user:big"),
            &[AUTH],
        )
        .await
        .json();
    assert_eq!(
        (counters["limit"].clone(), counters["remaining"].clone()),
        (4.into(), 0.into()),
        "{counters}"
    );

    // Listed with the file's, by key; counted in the metrics by rule.
    let list = http
        .get(&b.admin_url("/admin/rules/api/overrides"), &[AUTH])
        .await
        .json();
    let keys: Vec<(String, String)> = list["overrides"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["key"].as_str().unwrap().to_owned(),
                o["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("header:x-user:big".into(), "store".into()),
            ("header:x-user:partner".into(), "file".into())
        ]
    );
    let metrics = http.get(&b.admin_url("/metrics"), &[]).await.text();
    assert!(
        metrics.contains("floodgate_overrides{rule=\"api\"} 1"),
        "{metrics}"
    );

    // Removed on b, gone on a within a second; the rule's limit is back.
    let gone = http
        .delete(
            &b.admin_url("/admin/rules/api/overrides/header:x-user:big"),
            &[AUTH],
        )
        .await;
    assert_eq!(gone.status, 204, "{}", gone.text());
    let again = http
        .delete(
            &b.admin_url("/admin/rules/api/overrides/header:x-user:big"),
            &[AUTH],
        )
        .await;
    assert_eq!(again.status, 404);
    let lifted = eventually(Duration::from_secs(3), || async {
        let r = http
            .get(
                &a.admin_url("/admin/rules/api/overrides/header:x-user:big"),
                &[AUTH],
            )
            .await;
        r.status == 404
    })
    .await;
    assert!(lifted, "instance a kept the removed override");
    let counters = http
        .get(
            &a.admin_url("/admin/rules/api/keys/header:x-user:big"),
            &[AUTH],
        )
        .await
        .json();
    assert_eq!(counters["limit"], 2, "{counters}");
    assert_eq!(counters["override"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_expire_and_bad_ones_are_refused_clearly() {
    let fg = Floodgate::launch(&config(&unique_prefix("overrides-bad"))).await;
    let http = Http::new();
    let put = async |path: &str, body: &str| {
        http.send(
            "PUT",
            &fg.admin_url(path),
            &[AUTH, ("content-type", "application/json")],
            Some(body),
        )
        .await
        .unwrap()
    };
    let brief = put(
        "/admin/rules/api/overrides/header:x-user:brief",
        r#"{"limit": 9, "ttl": "1s"}"#,
    )
    .await;
    assert_eq!(brief.status, 200, "{}", brief.text());
    assert!(brief.json()["expires"].is_string());
    assert_eq!(admitted(&http, &fg, "brief").await.0, 9);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = http
        .get(
            &fg.admin_url("/admin/rules/api/overrides/header:x-user:brief"),
            &[AUTH],
        )
        .await;
    assert_eq!(r.status, 404, "expired, yet still there: {}", r.text());

    let cases: [(&str, &str, u16, &str); 7] = [
        (
            "/admin/rules/nope/overrides/k",
            r#"{"limit": 3}"#,
            404,
            "no rule named",
        ),
        (
            "/admin/rules/api/overrides/k",
            r#"{"limit": 0}"#,
            422,
            "limit",
        ),
        (
            "/admin/rules/api/overrides/k",
            r#"{"limit": 3, "window": "1x"}"#,
            400,
            "window",
        ),
        (
            "/admin/rules/api/overrides/k",
            r#"{"limit": 3, "burst": 5}"#,
            422,
            "burst",
        ),
        (
            "/admin/rules/api/overrides/k",
            r#"{"limit": 3, "colour": "red"}"#,
            400,
            "colour",
        ),
        (
            "/admin/rules/api/overrides/k",
            r#"{"limit": "many"}"#,
            400,
            "limit",
        ),
        (
            "/admin/rules/api/overrides/k",
            r#"{"limit": 3, "ttl": "0s"}"#,
            400,
            "ttl",
        ),
    ];
    for (path, body, status, says) in cases {
        let r = put(path, body).await;
        assert_eq!(r.status, status, "{path} {body}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert!(r.text().contains(says), "{path} {body}: {}", r.text());
    }
    // Without the token: 401, nothing put.
    let r = http
        .send(
            "PUT",
            &fg.admin_url("/admin/rules/api/overrides/k"),
            &[("content-type", "application/json")],
            Some(r#"{"limit": 3}"#),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let list = http
        .get(&fg.admin_url("/admin/rules/api/overrides"), &[AUTH])
        .await
        .json();
    assert_eq!(
        list["overrides"].as_array().unwrap().len(),
        1,
        "only the file's: {list}"
    );
}
