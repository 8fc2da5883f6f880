//! The process side of the real binary: SIGHUP reloads the config without
//! dropping open connections (and keeps the old config when the new one is
//! invalid); SIGTERM drains in-flight requests, reports not-ready while it
//! does, and exits 0; under systemd (`NOTIFY_SOCKET`) each of these is
//! announced, by the one process systemd started. Rolling restarts of
//! workers fail no request; a connection may hold no more than
//! `max_header_bytes` of head, and no more than `max_connections` are
//! served at once.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::support::host;
use crate::support::http::{Http, Reply};
use crate::support::load::{ChurnLoad, Reuse};
use crate::support::process::Floodgate;
use crate::support::procfs::{self, running};
use crate::support::raw::{RawConn, RawReply};
use crate::support::upstream::Upstream;

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
) -> (Floodgate, tokio::task::JoinHandle<Reply>) {
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

/// systemd's side of `Type=notify`: the datagram socket floodgate is told of
/// in `NOTIFY_SOCKET`, either a path or an abstract name.
struct Systemd {
    socket: UnixDatagram,
    /// The value of `NOTIFY_SOCKET`.
    name: String,
    _dir: TempDir,
}

impl Systemd {
    fn listen(abstract_name: bool) -> Self {
        let dir = host::temp_dir("notify");
        let path = dir.path().join("notify.sock");
        let (socket, name) = if abstract_name {
            use std::os::linux::net::SocketAddrExt;
            // Short: an abstract name has at most 107 bytes.
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = format!("floodgate-test-{}-{n}", std::process::id());
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
            (UnixDatagram::bind_addr(&addr).unwrap(), format!("@{name}"))
        } else {
            (
                UnixDatagram::bind(&path).unwrap(),
                path.display().to_string(),
            )
        };
        Systemd {
            socket,
            name,
            _dir: dir,
        }
    }

    /// The next message, if one comes within `within`.
    fn next(&self, within: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 1024];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// SIGHUP to `fg`: the next message must say `RELOADING=1` with a
    /// `MONOTONIC_USEC` taken between the signal and its arrival, then
    /// `READY=1` must follow.
    fn expect_reload(&self, fg: &Floodgate) {
        let before = monotonic_usec();
        fg.signal("HUP");
        let message = self.expect("RELOADING", fg);
        let after = monotonic_usec();
        let stamp: u64 = message
            .lines()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {message:?}"));
        assert!(
            (before..=after).contains(&stamp),
            "MONOTONIC_USEC={stamp}, not within {before}..={after}"
        );
        self.expect("READY", fg);
    }

    /// SIGTERM to `fg`: `STOPPING=1`, exit 0, and nothing said after.
    fn expect_stop(&self, fg: &mut Floodgate) {
        fg.signal("TERM");
        self.expect("STOPPING", fg);
        assert_eq!(fg.wait_exit(Duration::from_secs(30)), Some(0));
        assert_eq!(self.next(Duration::from_millis(200)), None);
    }

    /// The next message, which must come within 30 s and say `state=1`.
    fn expect(&self, state: &str, fg: &Floodgate) -> String {
        let message = self
            .next(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("systemd was not told {state}=1:\n{}", fg.log()));
        assert!(
            message.lines().any(|l| l == format!("{state}=1")),
            "expected {state}=1, got {message:?}"
        );
        message
    }
}

/// CLOCK_MONOTONIC in µs, as systemd reads it.
fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(now.tv_sec).unwrap() * 1_000_000 + u64::try_from(now.tv_nsec).unwrap() / 1_000
}

/// One process: `READY=1` (with its own pid) once it serves; `RELOADING=1`
/// then `READY=1` around a SIGHUP, the new limit in force by then;
/// `STOPPING=1` on SIGTERM; nothing else.
#[test]
fn systemd_is_told_when_a_process_serves_reloads_and_stops() {
    let systemd = Systemd::listen(true);
    let mut fg = Floodgate::start_with(&config(2), &[("NOTIFY_SOCKET", systemd.name.as_str())]);
    let ready = systemd.expect("READY", &fg);
    assert!(
        ready.lines().any(|l| l == format!("MAINPID={}", fg.pid())),
        "{ready:?}"
    );
    let mut conn = RawConn::connect(fg.addr);
    let r = get(&mut conn, "a");
    assert_eq!((r.status, quota(&r)), (200, 2));

    fg.rewrite_config(&config(6));
    systemd.expect_reload(&fg);
    let r = get(&mut conn, "a");
    assert_eq!(
        (r.status, quota(&r)),
        (200, 6),
        "the reload was announced before it applied"
    );

    systemd.expect_stop(&mut fg);
}

/// `--workers 2`: the supervisor alone speaks to systemd: one `READY=1`
/// with its pid, once both workers serve (not one per worker), and after a
/// SIGHUP `READY=1` only when every worker was replaced by one on the new
/// config.
#[test]
fn with_workers_only_the_supervisor_tells_systemd() {
    let systemd = Systemd::listen(false);
    let mut fg = Floodgate::start_with_args(
        &config(2),
        &["--workers", "2"],
        &[("NOTIFY_SOCKET", systemd.name.as_str())],
    );
    let ready = systemd.expect("READY", &fg);
    assert!(
        ready.lines().any(|l| l == format!("MAINPID={}", fg.pid()))
            && ready.contains("STATUS=serving with 2 workers"),
        "{ready:?}"
    );
    assert!(fg.log().contains("all workers serving"), "{}", fg.log());
    assert_eq!(
        systemd.next(Duration::from_millis(500)),
        None,
        "a worker spoke to systemd"
    );

    fg.rewrite_config(&config(6));
    systemd.expect_reload(&fg);
    // Every worker now runs the new config: new connections, whichever
    // worker accepts them, see the new limit.
    for key in ["b", "c", "d", "e"] {
        let mut conn = RawConn::connect(fg.addr);
        let r = get(&mut conn, key);
        assert_eq!(
            (r.status, quota(&r)),
            (200, 6),
            "the rolling restart was announced before it ended"
        );
    }

    systemd.expect_stop(&mut fg);
}

/// Guards the drain that dropped requests: hyper's graceful shutdown closed
/// a connection accepted just before a worker drained, before its first
/// request was read, and its client got a reset (about 1 request in 40,000
/// with a new connection per request during rolling restarts). 20 rolling
/// restarts of 4 workers, under clients that open a connection per request
/// and clients that keep theirs alive: not one request may fail.
#[test]
fn twenty_rolling_restarts_under_load_fail_no_request() {
    const RESTARTS: usize = 20;
    let mut supervisor = Terminating(Floodgate::start_with_args(
        "[server]\nlisten = \"{listen}\"\n[admin]\nlisten = \"{admin}\"\n",
        &["--workers", "4"],
        &[],
    ));
    let fg = &supervisor.0;
    assert!(
        fg.wait_for_log("all workers serving", Duration::from_secs(30)),
        "{}",
        fg.log()
    );
    let pause = Duration::from_millis(2);
    let fresh = ChurnLoad::start(
        fg.addr,
        "/api/hello",
        8,
        Reuse::NewConnectionPerRequest,
        pause,
    );
    let kept = ChurnLoad::start(fg.addr, "/api/hello", 8, Reuse::KeepAlive, pause);
    std::thread::sleep(Duration::from_millis(300));
    let restarts_done = |fg: &Floodgate| fg.log().matches("rolling restart done").count();
    for n in 1..=RESTARTS {
        fg.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(30);
        while restarts_done(fg) < n {
            assert!(
                Instant::now() < deadline,
                "rolling restart {n} did not end within 30 s:\n{}",
                fg.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Requests after the last restart reach only new workers.
    std::thread::sleep(Duration::from_millis(300));
    let (fresh, kept) = (fresh.stop(), kept.stop());
    eprintln!(
        "{RESTARTS} rolling restarts: new connection per request {} ok, {} failed; kept alive {} ok, {} failed, {} told to close",
        fresh.ok, fresh.failed, kept.ok, kept.failed, kept.told_to_close
    );

    let log = fg.log();
    assert_eq!(
        (restarts_done(fg), worker_pids(&log).len()),
        (RESTARTS, 4 + 4 * RESTARTS),
        "every restart replaces all 4 workers with new processes:\n{log}"
    );
    assert_eq!(fresh.failed, 0, "{:?}", fresh.failures);
    assert_eq!(kept.failed, 0, "{:?}", kept.failures);
    // Enough traffic that every drain met connections, and the kept-alive
    // clients were moved off draining workers (not just never drained).
    assert!(
        fresh.ok >= 1_000 && kept.ok >= 1_000,
        "too little load to tell: {fresh:?} {kept:?}"
    );
    assert!(
        kept.told_to_close >= RESTARTS as u64,
        "kept-alive connections were not drained: {kept:?}"
    );
    let fg = &mut supervisor.0;
    fg.signal("TERM");
    assert_eq!(
        fg.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        fg.log()
    );
}

/// The worker processes a supervisor's JSON log says it started.
fn worker_pids(log: &str) -> std::collections::HashSet<u32> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == "worker started")
        .filter_map(|l| u32::try_from(l["pid"].as_u64()?).ok())
        .collect()
}

/// A supervisor killed with SIGKILL cannot stop its workers; they stop
/// themselves. Left running, they served on with nobody supervising them,
/// and held the port: a new `floodgate serve` could not bind it.
#[test]
fn workers_stop_when_their_supervisor_is_killed() {
    let mut fg = Floodgate::start_with_args(&config(5), &["--workers", "2"], &[]);
    assert!(
        fg.wait_for_log("all workers serving", Duration::from_secs(30)),
        "{}",
        fg.log()
    );
    let workers = worker_pids(&fg.log());
    assert_eq!(workers.len(), 2, "{}", fg.log());
    fg.child.kill().unwrap();
    fg.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while workers.iter().any(|pid| running(*pid)) {
        assert!(
            Instant::now() < deadline,
            "workers {workers:?} still run 30 s after their supervisor was killed:\n{}",
            fg.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        std::net::TcpListener::bind(fg.addr).is_ok(),
        "the port is still held"
    );
}

/// A supervisor sent SIGTERM when dropped, also when its test fails: its
/// workers drain and exit with it, where the harness's SIGKILL of the
/// supervisor alone would leave them running.
struct Terminating(Floodgate);

impl Drop for Terminating {
    fn drop(&mut self) {
        if self.0.is_running() {
            self.0.signal("TERM");
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.0.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// SIGTERM to one process with three connections open: the request in
/// flight on one is answered, and so is the first request of one accepted
/// just before (it arrives after the drain began: hyper's graceful
/// shutdown closed such a connection under it); both answers say
/// `Connection: close`, and the connection idle between requests is
/// closed (not reset). Then the process exits 0.
#[test]
fn sigterm_answers_the_request_in_flight_and_a_new_connections_first_then_closes_all() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let upstream = runtime.block_on(Upstream::start());
    let mut fg = Floodgate::start(&format!(
        "[server]\nlisten = \"{{listen}}\"\nupstream = \"{}\"\n[admin]\nlisten = \"{{admin}}\"\n",
        upstream.url()
    ));
    let mut idle = RawConn::connect(fg.addr);
    assert_eq!(idle.get("/before", &[]).unwrap().status, 200);
    let in_flight = std::thread::spawn({
        let addr = fg.addr;
        move || RawConn::connect(addr).get("/slow?ms=1500", &[])
    });
    let mut fresh = RawConn::connect(fg.addr);
    // Accepted: out of the listening socket's queue.
    let deadline = Instant::now() + Duration::from_secs(10);
    while procfs::accept_queue(fg.addr) != Some(0) {
        assert!(Instant::now() < deadline, "the connection was not accepted");
        std::thread::sleep(Duration::from_millis(10));
    }

    fg.signal("TERM");
    // The drain has begun once the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(fg.addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting:\n{}", fg.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let first = fresh.get("/after", &[]);
    let first = first.unwrap_or_else(|e| {
        panic!("the first request of a connection accepted before the drain failed: {e}")
    });
    assert_eq!(
        (first.status, first.header("connection")),
        (200, Some("close"))
    );
    let slow = in_flight.join().unwrap().unwrap();
    assert_eq!(
        (slow.status, slow.text().as_str(), slow.header("connection")),
        (200, "slow done", Some("close"))
    );
    for (name, conn) in [("answered", &mut fresh), ("idle", &mut idle)] {
        let end = conn.read_reply().map(|r| r.status);
        assert_eq!(
            end,
            Err("connection closed by the server".to_owned()),
            "the {name} connection"
        );
    }
    assert_eq!(
        fg.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        fg.log()
    );
}

fn limits_config(extra: &str) -> String {
    format!(
        "[server]\nlisten = \"{{listen}}\"\nheader_timeout = \"30s\"\n{extra}\n[admin]\nlisten = \"{{admin}}\"\n"
    )
}

/// `GET /api/hello` with one header of `value_len` bytes: its answer, read
/// while the request is still being written (a server refusing a large
/// head need not read all of it).
fn get_with_header(fg: &Floodgate, value_len: usize) -> RawReply {
    let mut conn = RawConn::connect(fg.addr);
    let request = format!(
        "GET /api/hello HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(value_len)
    );
    conn.pipeline(vec![request.into_bytes()])
        .map(|mut replies| replies.remove(0))
        .unwrap_or_else(|e| panic!("a {value_len}-byte header got no answer: {e}"))
}

/// Before, a 500 KB head was read whole and forwarded.
#[test]
fn a_head_over_max_header_bytes_is_refused_431_with_a_problem() {
    let fg = Floodgate::start(&limits_config(""));
    assert_eq!(get_with_header(&fg, 30_000).status, 200);
    for len in [70_000, 500_000] {
        let r = get_with_header(&fg, len);
        assert_eq!(r.status, 431, "{len}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert_eq!(r.header("connection"), Some("close"));
        let problem: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(problem["status"], 431, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains("65536 bytes"),
            "{problem}"
        );
    }

    // A smaller bound, in front of an upstream.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let upstream = runtime.block_on(Upstream::start());
    let small = Floodgate::start(&limits_config(&format!(
        "max_header_bytes = \"16KiB\"\nupstream = \"{}\"",
        upstream.url()
    )));
    assert_eq!(get_with_header(&small, 12_000).status, 200);
    let r = get_with_header(&small, 20_000);
    assert_eq!(
        (r.status, r.header("content-type")),
        (431, Some("application/problem+json")),
        "{}",
        r.text()
    );
    // The upstream's own 431 to a large (allowed) head is passed on as it
    // is, and the connection stays open for the next request.
    let mut conn = RawConn::connect(small.addr);
    let big = format!("X-Big: {}", "a".repeat(12_000));
    let r = conn.get("/status/431", &[&big]).unwrap();
    assert_eq!((r.status, r.text().as_str()), (431, "as asked"));
    assert_eq!(conn.get("/status/200", &[&big]).unwrap().status, 200);
}

/// Past `max_connections` a new connection waits in the backlog, unserved,
/// until one closes; then it is served. The gateway counts the times it
/// stopped accepting.
#[test]
fn past_max_connections_a_connection_waits_until_one_closes() {
    let fg = Floodgate::start(&limits_config("max_connections = 3"));
    let mut open: Vec<RawConn> = (0..3).map(|_| RawConn::connect(fg.addr)).collect();
    for conn in &mut open {
        assert_eq!(get(conn, "a").status, 200);
    }
    let mut waiting = RawConn::connect(fg.addr);
    waiting.set_read_timeout(Duration::from_secs(1));
    let unserved = waiting.get("/api/hello", &["X-Api-Key: b"]);
    assert!(
        unserved.is_err(),
        "a 4th connection was served at max_connections = 3: {unserved:?}"
    );
    // Closing one lets it in: its request, sent already, is answered.
    drop(open.pop());
    waiting.set_read_timeout(Duration::from_secs(10));
    let served = waiting.read_reply();
    assert_eq!(served.map(|r| r.status), Ok(200));

    let metrics = Http::new();
    let text = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async { metrics.get(&fg.admin_url("/metrics"), &[]).await.text() });
    let reached: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("floodgate_connection_limit_reached_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no floodgate_connection_limit_reached_total in\n{text}"));
    assert!(reached >= 1, "{text}");
}

/// `--workers 2`: each worker's runtime gets its share of the cores
/// (`TOKIO_WORKER_THREADS` = cores / 2, at least 1), not a thread per core.
#[test]
fn workers_share_the_cores() {
    let fg = Floodgate::start_with_args(&config(5), &["--workers", "2"], &[]);
    assert!(
        fg.wait_for_log("all workers serving", Duration::from_secs(30)),
        "{}",
        fg.log()
    );
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    // An operator's own setting (inherited from this test's environment)
    // wins.
    let expected = format!(
        "TOKIO_WORKER_THREADS={}",
        std::env::var("TOKIO_WORKER_THREADS").unwrap_or_else(|_| (cores / 2).max(1).to_string())
    );
    let workers = procfs::live_children(fg.pid());
    assert_eq!(workers.len(), 2, "{workers:?}");
    for pid in workers {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        assert!(
            vars.contains(&expected.as_bytes()),
            "worker {pid} runs without {expected}"
        );
    }
}
