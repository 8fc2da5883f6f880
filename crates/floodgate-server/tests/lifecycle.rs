//! The process side of the real binary: SIGHUP reloads the config without
//! dropping open connections (and keeps the old config when the new one is
//! invalid); SIGTERM drains in-flight requests, reports not-ready while it
//! does, and exits 0.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Floodgate, Http, RawConn, RawReply, Upstream};

fn config(limit: u64) -> String {
    format!(
        "[server]\nlisten = \"{{listen}}\"\n[admin]\nlisten = \"{{admin}}\"\n\
         [[rule]]\nname = \"per-key\"\nkey = \"header:x-api-key\"\nalgorithm = \"sliding_log\"\nlimit = {limit}\nwindow = \"1h\"\n"
    )
}

/// `RateLimit-Policy: "per-key";q=<quota>;w=3600` → quota.
fn quota(r: &RawReply) -> u64 {
    let policy = r.header("ratelimit-policy").unwrap_or_else(|| {
        panic!("no RateLimit-Policy: {} {:?}", r.status, r.headers);
    });
    policy
        .split(';')
        .find_map(|p| p.strip_prefix("q="))
        .and_then(|q| q.parse().ok())
        .unwrap_or_else(|| panic!("no quota in {policy:?}"))
}

fn get(conn: &mut RawConn, key: &str) -> RawReply {
    conn.get("/api/hello", &[&format!("X-Api-Key: {key}")])
        .unwrap_or_else(|e| panic!("the kept-alive connection failed: {e}"))
}

#[test]
fn sighup_applies_a_new_limit_on_open_connections_and_keeps_the_old_config_when_invalid() {
    let fg = Floodgate::start(&config(2));
    let mut first = RawConn::connect(fg.addr);
    let mut second = RawConn::connect(fg.addr);
    let r = get(&mut first, "a");
    assert_eq!((r.status, quota(&r)), (200, 2));
    assert_eq!(get(&mut second, "a").status, 200);
    assert_eq!(get(&mut first, "a").status, 429);

    fg.rewrite_config(&config(5));
    fg.signal("HUP");
    assert!(
        fg.wait_for_log("config reloaded", Duration::from_secs(10)),
        "{}",
        fg.log()
    );
    // Same connections, new limit; counters carry over.
    let r = get(&mut first, "a");
    assert_eq!((r.status, quota(&r)), (200, 5), "{}", r.text());
    let mut statuses = Vec::new();
    for i in 0..6 {
        let conn = if i % 2 == 0 { &mut first } else { &mut second };
        statuses.push(get(conn, "b").status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);

    // Access lists are reloaded too.
    assert_eq!(get(&mut first, "evil").status, 200);
    fg.rewrite_config(&format!(
        "{}\n[access]\ndeny = [\"header:x-api-key:evil\"]\n",
        config(5)
    ));
    fg.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while fg.log().matches("config reloaded").count() < 2 {
        assert!(Instant::now() < deadline, "no second reload:\n{}", fg.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get(&mut first, "evil").status, 403);

    // An invalid config is refused as a whole: the limit stays 5.
    for (n, invalid) in [
        config(0),
        config(3).replace("sliding_log", "leaky_bucket"),
        "[[rule]\nbroken".to_owned(),
    ]
    .iter()
    .enumerate()
    {
        fg.rewrite_config(invalid);
        fg.signal("HUP");
        let refusals = |log: &str| log.matches("config reload refused").count();
        let deadline = Instant::now() + Duration::from_secs(10);
        while refusals(&fg.log()) <= n {
            assert!(
                Instant::now() < deadline,
                "no refusal logged:\n{}",
                fg.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let r = get(&mut second, "c");
        assert_eq!((r.status, quota(&r)), (200, 5), "after invalid config #{n}");
    }
    assert!(
        fg.log().contains("limit: must be at least 1"),
        "{}",
        fg.log()
    );
    let mut fg = fg;
    assert!(fg.is_running());
}

/// An instance in front of a real upstream, with a slow request in flight
/// (1.5 s) when SIGTERM arrives.
async fn terminate_during_a_slow_request(
    http: &Http,
    upstream: &Upstream,
) -> (Floodgate, tokio::task::JoinHandle<common::Reply>) {
    let fg = Floodgate::launch(format!(
        "[server]\nlisten = \"{{listen}}\"\nupstream = \"{}\"\ndrain_timeout = \"10s\"\n\
         [admin]\nlisten = \"{{admin}}\"\n",
        upstream.url()
    ))
    .await;
    assert_eq!(http.get(&fg.admin_url("/readyz"), &[]).await.status, 200);
    let slow_url = fg.url("/slow?ms=1500");
    let in_flight = tokio::spawn({
        let http = http.clone();
        async move { http.get(&slow_url, &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    fg.signal("TERM");
    assert!(
        fg.wait_for_log("shutting down", Duration::from_secs(5)),
        "{}",
        fg.log()
    );
    (fg, in_flight)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_slow_request_finish_then_exits_0() {
    let upstream = Upstream::start().await;
    let http = Http::new();
    let (fg, in_flight) = terminate_during_a_slow_request(&http, &upstream).await;
    // The request in flight finishes, answered by the upstream.
    let slow = in_flight.await.unwrap();
    assert_eq!(slow.status, 200, "{}", slow.text());
    assert_eq!(slow.text(), "slow done");
    let (code, fg) = tokio::task::spawn_blocking(move || {
        let mut fg = fg;
        (fg.wait_exit(Duration::from_secs(10)), fg)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{}", fg.log());
    assert!(fg.log().contains("drained"), "{}", fg.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_while_draining() {
    let upstream = Upstream::start().await;
    let http = Http::new();
    let (fg, in_flight) = terminate_during_a_slow_request(&http, &upstream).await;
    // A balancer polls /readyz during the drain to take the instance out.
    let r = http.send("GET", &fg.admin_url("/readyz"), &[], None).await;
    let status = r.as_ref().map(|r| r.status);
    in_flight.await.unwrap();
    assert_eq!(
        status,
        Ok(503),
        "/readyz must answer 503 (not refuse the connection) while requests drain: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_announces_itself_and_turns_200s_into_429s() {
    let fg = tokio::task::spawn_blocking(Floodgate::start_demo)
        .await
        .unwrap();
    let log = fg.log();
    assert!(
        log.contains(&format!("http://{}", fg.addr)),
        "the demo says where it listens:\n{log}"
    );
    assert!(
        log.contains("curl") && log.contains(&format!("{}/api/hello", fg.addr)),
        "the demo prints a curl loop:\n{log}"
    );
    let http = Http::new();
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(http.get(&fg.url("/api/hello"), &[]).await.status);
    }
    assert_eq!(
        statuses,
        [[200; 10].as_slice(), [429; 2].as_slice()].concat(),
        "10 requests per 10 s per IP"
    );
    // Loopback is a trusted proxy by default (nginx on the same host): a
    // request it forwards for another client counts for that client.
    let forwarded = http
        .get(&fg.url("/api/items"), &[("x-forwarded-for", "192.0.2.4")])
        .await;
    assert_eq!(forwarded.status, 200);
    assert_eq!(http.get(&fg.admin_url("/healthz"), &[]).await.status, 200);
}
