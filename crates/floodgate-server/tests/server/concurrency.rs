//! `algorithm = "concurrency"` through the real binary, two instances on
//! one Redis, a real upstream: requests in flight are limited across both
//! (the rest refused at once), slots come back when answers end, and the
//! slots of an instance killed with SIGKILL come back within their lease.

use std::time::{Duration, Instant};

use floodgate_testkit::unique_prefix;

use crate::support::http::Http;
use crate::support::process::{Floodgate, store_section};
use crate::support::upstream::Upstream;
use crate::support::wait::eventually;

fn config(upstream: &str, prefix: &str) -> String {
    format!(
        r#"[server]
listen = "{{listen}}"
upstream = "{upstream}"
{store}[admin]
listen = "{{admin}}"

[[rule]]
name = "in-flight"
key = "header:x-user"
algorithm = "concurrency"
limit = 2
lease = "2s"
"#,
        store = store_section(Some(prefix))
    )
}

async fn slow(http: &Http, fg: &Floodgate, ms: u64) -> (u16, Duration) {
    let started = Instant::now();
    let r = http
        .get(&fg.url(&format!("/slow?ms={ms}")), &[("x-user", "ann")])
        .await;
    (r.status, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_limited_across_instances_and_come_back() {
    let upstream = Upstream::start().await;
    let on_redis = config(&upstream.url(), &unique_prefix("concurrency"));
    let (a, b) = tokio::join!(Floodgate::launch(&on_redis), Floodgate::launch(&on_redis));
    let http = Http::new();
    // Four slow requests at once, two on each instance: two go ahead, two
    // are refused at once.
    let (r1, r2, r3, r4) = tokio::join!(
        slow(&http, &a, 1500),
        slow(&http, &b, 1500),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            slow(&http, &a, 1500).await
        },
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            slow(&http, &b, 1500).await
        },
    );
    assert_eq!((r1.0, r2.0), (200, 200), "{r1:?} {r2:?}");
    for (status, took) in [r3, r4] {
        assert_eq!(status, 429, "a third request in flight went ahead");
        assert!(
            took < Duration::from_millis(500),
            "a refusal waited {took:?}"
        );
    }
    // The answers are over: both slots are back, at once.
    let (r5, r6) = tokio::join!(slow(&http, &b, 10), slow(&http, &a, 10));
    assert_eq!((r5.0, r6.0), (200, 200));
    // The decision API cannot hold a slot: a clear 422, nothing taken.
    let r = http
        .post_json(
            &a.url("/v1/check"),
            &[],
            r#"{"rule": "in-flight", "key": "ann"}"#,
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("requests in flight"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slots_of_a_killed_instance_come_back_within_their_lease() {
    let upstream = Upstream::start().await;
    let on_redis = config(&upstream.url(), &unique_prefix("concurrency-kill"));
    let (a, b) = tokio::join!(Floodgate::launch(&on_redis), Floodgate::launch(&on_redis));
    let http = Http::new();
    // Two long requests through a, holding both slots (and renewing them).
    let held = tokio::spawn({
        let (url_a, url_b) = (a.url("/slow?ms=20000"), a.url("/slow?ms=20000"));
        async move {
            let http = Http::new();
            let (x, y) = tokio::join!(
                http.send("GET", &url_a, &[("x-user", "ann")], None),
                http.send("GET", &url_b, &[("x-user", "ann")], None),
            );
            (x.map(|r| r.status), y.map(|r| r.status))
        }
    });
    // Let them take their slots before anyone else asks.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        slow(&http, &b, 10).await.0,
        429,
        "the two long requests do not hold both slots"
    );
    // Held past a lease (renewed): still full.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(slow(&http, &b, 10).await.0, 429, "a renewed slot lapsed");
    a.signal("KILL");
    let killed = Instant::now();
    let back = eventually(Duration::from_secs(5), || async {
        slow(&http, &b, 10).await.0 == 200
    })
    .await;
    let took = killed.elapsed();
    assert!(back, "the killed instance's slots never came back");
    assert!(
        took <= Duration::from_millis(3000),
        "slots came back after {took:?}, past the 2 s lease"
    );
    // The long requests lost their instance: neither answered.
    let (x, y) = held.await.unwrap();
    assert!(x.is_err() && y.is_err(), "{x:?} {y:?}");
}
