//! `on_limit = "delay"` through the real binary, on memory and on Redis: a
//! burst over a token bucket is held and let through at the rate, none
//! refused; what would wait past `max_delay` is refused at once; a client
//! that leaves while held gives its place back.

use std::time::{Duration, Instant};

use floodgate_testkit::unique_prefix;

use crate::support::http::Http;
use crate::support::process::{AUTH, Floodgate, store_section};
use crate::support::wait::eventually;

fn config(store: &str) -> String {
    format!(
        r#"[server]
listen = "{{listen}}"
{store}
[admin]
listen = "{{admin}}"

[[rule]]
name = "paced"
match = {{ path_prefix = "/api/" }}
key = "header:x-user"
algorithm = "token_bucket"
limit = 5
window = "1s"
burst = 1
on_limit = "delay"
max_delay = "2s"
"#
    )
}

/// Six requests at once, each on a connection of its own: every one is
/// admitted, the last about a second after the first.
async fn six_at_once(fg: &Floodgate, user: &str) {
    let started = Instant::now();
    let requests = (0..6).map(|_| async {
        let r = Http::new()
            .get(&fg.url("/api/hello"), &[("x-user", user)])
            .await;
        (r.status, started.elapsed())
    });
    let mut answers = futures_join_all(requests).await;
    answers.sort_by_key(|(_, at)| *at);
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [200; 6], "{answers:?}");
    let (first, last) = (answers[0].1, answers[5].1);
    assert!(
        first < Duration::from_millis(300),
        "the first waited {first:?}"
    );
    assert!(
        (Duration::from_millis(750)..Duration::from_millis(1700)).contains(&last),
        "5 per second from a burst of 1: the sixth came at {last:?}: {answers:?}"
    );
}

/// Runs every future of `fs` at once; their outputs in order.
async fn futures_join_all<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    futures_util::future::join_all(fs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_held_and_paced_not_refused_on_memory_and_redis() {
    let redis = store_section(Some(&unique_prefix("delay")));
    let (memory, on_redis) = (config(&store_section(None)), config(&redis));
    let (memory, redis) = tokio::join!(Floodgate::launch(&memory), Floodgate::launch(&on_redis));
    tokio::join!(six_at_once(&memory, "ann"), six_at_once(&redis, "ann"));

    // Twenty at once: those whose turn is more than 2 s away are refused at
    // once, the rest are let through in turn.
    let http = Http::new();
    let started = Instant::now();
    let answers = futures_join_all((0..20).map(|_| async {
        let r = http
            .get(&memory.url("/api/hello"), &[("x-user", "bob")])
            .await;
        (r.status, started.elapsed(), r.retry_after())
    }))
    .await;
    let admitted = answers.iter().filter(|(s, ..)| *s == 200).count();
    assert!(
        (10..=12).contains(&admitted),
        "about 2 s worth at 5/s, plus the burst: {answers:?}"
    );
    for (status, at, retry) in &answers {
        if *status == 429 {
            assert!(
                *at < Duration::from_millis(500),
                "a refusal was held: {answers:?}"
            );
            assert!(retry.is_some());
        }
    }
    let metrics = http.get(&memory.admin_url("/metrics"), &[]).await.text();
    assert!(
        metrics.contains("floodgate_delayed_total{rule=\"paced\",result=\"admitted\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_held_gives_its_place_back() {
    // One request per 2 s: a held request's place is 2 s after the first.
    let slow = config(&store_section(None))
        .replace("limit = 5\nwindow = \"1s\"", "limit = 1\nwindow = \"2s\"")
        .replace("max_delay = \"2s\"", "max_delay = \"5s\"");
    let fg = Floodgate::launch(&slow).await;
    let http = Http::new();
    assert_eq!(
        http.get(&fg.url("/api/hello"), &[("x-user", "cy")])
            .await
            .status,
        200
    );
    let mut held = tokio::net::TcpStream::connect(fg.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut held,
        b"GET /api/hello HTTP/1.1\r\nhost: x\r\nx-user: cy\r\n\r\n",
    )
    .await
    .unwrap();
    let gauge = async |value: &str| {
        let metrics = http.get(&fg.admin_url("/metrics"), &[]).await.text();
        metrics
            .lines()
            .any(|l| l == format!("floodgate_held {value}"))
    };
    assert!(
        eventually(Duration::from_secs(1), || gauge("1")).await,
        "the request was not held"
    );
    // Held, the bucket is full until 4 s from now.
    let key = "/admin/rules/paced/keys/header:x-user:cy";
    let before = http.get(&fg.admin_url(key), &[AUTH]).await.json();
    assert!(
        before["reset_after_ms"].as_u64().unwrap() > 3_000,
        "{before}"
    );
    drop(held);
    assert!(
        eventually(Duration::from_secs(1), || gauge("0")).await,
        "the place was not taken back when the client left"
    );
    // Given back: full only until 2 s after the first request.
    let given_back = eventually(Duration::from_secs(1), || async {
        let after = http.get(&fg.admin_url(key), &[AUTH]).await.json();
        after["reset_after_ms"].as_u64().unwrap() <= 2_000
    })
    .await;
    assert!(given_back, "the held request's place was not given back");
    let metrics = http.get(&fg.admin_url("/metrics"), &[]).await.text();
    assert!(
        metrics.contains("floodgate_delayed_total{rule=\"paced\",result=\"refused\"} 1"),
        "{metrics}"
    );
}
