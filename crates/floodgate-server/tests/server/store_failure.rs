//! `on_error` with a real Redis that stops answering mid-test: frozen
//! (SIGSTOP: connections hang), then killed (connections refused), then
//! restarted on the same port.
//!
//! `allow` admits, `deny` answers 503, `local` keeps limiting in process;
//! no request waits longer than the store timeout plus a margin; once Redis
//! is back, limiting is shared between instances again.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use floodgate_testkit::{RedisServer, send_signal};

use crate::support::http::{Http, Reply, alternating, bounded_get, statuses};
use crate::support::process::{AUTH, Floodgate};
use crate::support::wait::eventually;

/// The store timeout every instance runs with.
const TIMEOUT: Duration = Duration::from_millis(100);
/// A bound on hangs, not a benchmark: generous for a loaded 2-core machine.
const HANG_BOUND: Duration = Duration::from_millis(100 + 500);

fn config(redis: &RedisServer, prefix: &str, on_error: &str) -> String {
    format!(
        "[server]\nlisten = \"{{listen}}\"\n\
         [store]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"\ntimeout = \"{}ms\"\non_error = \"{on_error}\"\n\
         [admin]\nlisten = \"{{admin}}\"\n\
         [[rule]]\nname = \"per-client\"\nkey = \"header:x-client\"\nalgorithm = \"sliding_log\"\nlimit = 3\nwindow = \"1h\"\n",
        redis.url(),
        TIMEOUT.as_millis()
    )
}

/// One decision API call, bounded the same way.
async fn timed_check(http: &Http, fg: &Floodgate, key: &str) -> Reply {
    let started = Instant::now();
    let r = http.check(fg, "per-client", key, 1).await;
    let took = started.elapsed();
    assert!(
        took <= HANG_BOUND,
        "a check waited {took:?} (store timeout {TIMEOUT:?})"
    );
    r
}

/// What each mode must do while the store is down; `phase` keeps keys fresh.
async fn while_down(
    http: &Http,
    allow: &Floodgate,
    deny: &Floodgate,
    local_a: &Floodgate,
    local_b: &Floodgate,
    phase: &str,
) {
    let key = format!("{phase}-client");
    assert_eq!(
        statuses(http, allow, &key, 6, HANG_BOUND).await,
        [200; 6],
        "{phase}: on_error = allow admits, past the limit"
    );
    let check = timed_check(http, allow, &key).await;
    assert_eq!(check.status, 200);
    assert_eq!(check.json()["allowed"], true);

    for _ in 0..3 {
        let r = bounded_get(http, deny, &key, HANG_BOUND).await;
        assert_eq!(r.status, 503, "{phase}: on_error = deny: {}", r.text());
        assert!(r.retry_after().is_some());
        r.problem();
    }
    assert_eq!(timed_check(http, deny, &key).await.status, 503);

    // Each local instance limits on its own.
    for fg in [local_a, local_b] {
        assert_eq!(
            statuses(http, fg, &key, 5, HANG_BOUND).await,
            [200, 200, 200, 429, 429],
            "{phase}: on_error = local keeps limiting"
        );
        let check = timed_check(http, fg, &format!("{phase}-api")).await;
        assert_eq!(check.status, 200);
        assert_eq!(check.json()["remaining"], 2);
    }

    for fg in [allow, deny, local_a, local_b] {
        let ready = http.get(&fg.admin_url("/readyz"), &[]).await;
        assert_eq!(
            ready.status, 503,
            "{phase}: /readyz while the store is down"
        );
    }

    // The admin API cannot reach the store either: a prompt 503, no hang.
    for (method, path, body) in [
        ("GET", "/admin/blocks", None),
        (
            "POST",
            "/admin/blocks",
            Some(r#"{"target": "ip:192.0.2.1", "ttl": "1m"}"#),
        ),
        ("DELETE", "/admin/blocks/ip:192.0.2.1", None),
        ("GET", "/admin/rules/per-client/keys/k", None),
        ("DELETE", "/admin/rules/per-client/keys/k", None),
    ] {
        let started = Instant::now();
        let r = http
            .send(method, &allow.admin_url(path), &[AUTH], body)
            .await
            .unwrap();
        let took = started.elapsed();
        assert!(
            took <= HANG_BOUND,
            "{phase}: {method} {path} waited {took:?}"
        );
        assert_eq!(r.status, 503, "{phase}: {method} {path}: {}", r.text());
        r.problem();
    }
    let started = Instant::now();
    assert_eq!(
        http.get(&allow.admin_url("/metrics"), &[]).await.status,
        200
    );
    assert!(started.elapsed() <= HANG_BOUND, "{phase}: /metrics waited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_modes_hold_while_redis_is_down_and_shared_limiting_resumes() {
    let mut redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let (allow, deny, local_a, local_b) = tokio::join!(
        Floodgate::launch(config(&redis, "fgfail-allow", "allow")),
        Floodgate::launch(config(&redis, "fgfail-deny", "deny")),
        Floodgate::launch(config(&redis, "fgfail-local", "local")),
        Floodgate::launch(config(&redis, "fgfail-local", "local")),
    );
    let http = Http::new();

    // Up: limits shared through Redis.
    assert_eq!(
        statuses(&http, &allow, "up", 4, HANG_BOUND).await,
        [200, 200, 200, 429]
    );
    assert_eq!(
        statuses(&http, &deny, "up", 4, HANG_BOUND).await,
        [200, 200, 200, 429]
    );
    assert_eq!(
        alternating(&http, &local_a, &local_b, "up", 6, HANG_BOUND).await,
        [200, 200, 200, 429, 429, 429]
    );

    // Frozen: connections hang; the timeout must cut every request short.
    let pid = redis_pid(redis.addr());
    send_signal(pid, "STOP");
    while_down(&http, &allow, &deny, &local_a, &local_b, "frozen").await;

    // Killed while frozen (never answering in between): connections are
    // refused.
    redis.kill();
    while_down(&http, &allow, &deny, &local_a, &local_b, "killed").await;

    let metrics = http.get(&allow.admin_url("/metrics"), &[]).await.text();
    let errors: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("floodgate_store_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(errors > 0, "store errors are counted:\n{metrics}");
    assert!(
        metrics.contains("floodgate_decisions_total{rule=\"per-client\",outcome=\"error\"}"),
        "{metrics}"
    );
    for fg in [&allow, &deny, &local_a, &local_b] {
        let down_lines = fg.log().matches("store unreachable").count();
        assert_eq!(
            down_lines,
            1,
            "one log line per transition, not per request:\n{}",
            fg.log()
        );
    }

    // Back (empty, on the same port): every instance notices on its own.
    let _redis = tokio::task::spawn_blocking(move || {
        redis.restart();
        redis
    })
    .await
    .unwrap();
    for fg in [&allow, &deny, &local_a, &local_b] {
        let ready = eventually(Duration::from_secs(10), || async {
            http.get(&fg.admin_url("/readyz"), &[]).await.status == 200
        })
        .await;
        assert!(ready, "/readyz never recovered:\n{}", fg.log());
        assert!(fg.log().contains("store reachable again"), "{}", fg.log());
    }
    assert_eq!(
        statuses(&http, &allow, "back", 4, HANG_BOUND).await,
        [200, 200, 200, 429],
        "allow limits again"
    );
    assert_eq!(
        statuses(&http, &deny, "back", 4, HANG_BOUND).await,
        [200, 200, 200, 429],
        "deny answers again instead of 503"
    );
    assert_eq!(
        alternating(&http, &local_a, &local_b, "back", 6, HANG_BOUND).await,
        [200, 200, 200, 429, 429, 429],
        "the two local instances share one limit again"
    );
}

/// The pid of the redis-server at `addr`, from `INFO server`.
fn redis_pid(addr: SocketAddr) -> u32 {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(b"INFO server\r\n").unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while !text.contains("process_id:") || !text[text.find("process_id:").unwrap()..].contains('\n')
    {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "redis closed the connection during INFO");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let at = text.find("process_id:").unwrap() + "process_id:".len();
    text[at..].lines().next().unwrap().trim().parse().unwrap()
}
