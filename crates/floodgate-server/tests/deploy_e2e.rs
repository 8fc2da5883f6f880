//! End to end through the shipped deploy files: Redis, floodgate instances,
//! nginx in front, and load from many clients while instances are reloaded
//! and killed.
//!
//! - `pm2_behind_nginx`: 4 instances started by PM2 from
//!   `deploy/ecosystem.config.js`, behind nginx configured from
//!   `deploy/nginx.conf`; phases: steady load, `pm2 reload`, `kill -9` of one
//!   instance.
//! - `workers_behind_nginx`: `floodgate serve --workers 4` behind the same
//!   nginx config; phases: steady load, SIGHUP rolling restart, `kill -9` of
//!   one worker, then SIGTERM (exit 0, no worker left).
//!
//! Every phase uses fresh API keys, one per simulated client, under a
//! `sliding_log` rule whose window (1 h) outlasts the phase, so "exactly
//! LIMIT admitted per client" is checkable. Each phase prints what it saw.
//!
//! nginx and PM2 must be installed: `scripts/test.sh` installs them and sets
//! `FLOODGATE_TEST_NGINX` and `FLOODGATE_TEST_PM2`; without them these tests
//! fail and say how to install them. Everything runs on loopback, on ports
//! picked at run time, in temporary directories, and is stopped at the end,
//! also when a test fails.
#![allow(clippy::unwrap_used)] // a failed setup step is a test failure

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::tempdir::Dir;
use common::{
    Http, Pm2Process, Upstream, free_port, parse_pm2_jlist, send_signal, unique_prefix, wait_for,
};
use floodgate_testkit::RedisServer;

/// Simulated clients, each with its own API key and connections.
const CLIENTS: usize = 50;
/// The rule's limit per client and window.
const LIMIT: u64 = 20;
/// Requests each client sends at least, per phase: twice its limit.
const MIN_REQUESTS: u64 = 2 * LIMIT;
/// A client's pause between two requests, so admissions are spread over
/// about LIMIT * PACE and a disruption lands among them.
const PACE: Duration = Duration::from_millis(100);
/// Bound on one phase, whatever happens.
const PHASE_DEADLINE: Duration = Duration::from_secs(45);
/// Bound on anything the test waits for (a restart, a port, a log line).
const WAIT: Duration = Duration::from_secs(30);
/// The rule every phase is checked against.
const RULE: &str = "deploy-per-key";
const INSTANCES: usize = 4;
const ADMIN_TOKEN: &str = "deploy-e2e-token";

/// The two tests each load 2 cores fully: run them one after the other.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn pm2_behind_nginx_keeps_limits_exact_through_reload_and_kill() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (nginx_bin, pm2_bin) = (nginx_binary(), pm2_binary());
    let dir = Dir::new("deploy-pm2");
    let mut logs = LogsOnFailure::default();
    let redis = RedisServer::start();
    let rt = runtime();
    let upstream = rt.block_on(Upstream::start());

    // Instance i: port base + i, admin port base + INSTANCES + i.
    let base = consecutive_free_ports(2 * INSTANCES);
    let admin_base = base + INSTANCES as u16;
    let backends: Vec<SocketAddr> = (0..INSTANCES).map(|i| loopback(base + i as u16)).collect();
    let admins: Vec<SocketAddr> = (0..INSTANCES)
        .map(|i| loopback(admin_base + i as u16))
        .collect();
    let config = dir.path().join("floodgate.toml");
    std::fs::write(
        &config,
        floodgate_config(
            // Every instance gets --listen and FLOODGATE_ADMIN_LISTEN from
            // the ecosystem file; these are never bound.
            loopback(1),
            loopback(1),
            &upstream.url(),
            &redis.url(),
        ),
    )
    .unwrap();

    let log_dir = dir.path().join("pm2-logs");
    for i in 0..INSTANCES {
        logs.watch(log_dir.join(format!("floodgate-{i}.log")));
    }
    let pm2 = Pm2::new(
        &pm2_bin,
        dir.path().join("pm2-home"),
        &[
            ("FLOODGATE_INSTANCES", INSTANCES.to_string()),
            ("FLOODGATE_BASE_PORT", base.to_string()),
            ("FLOODGATE_ADMIN_BASE_PORT", admin_base.to_string()),
            ("FLOODGATE_BIN", env!("CARGO_BIN_EXE_floodgate").to_owned()),
            ("FLOODGATE_CONFIG", config.display().to_string()),
            ("FLOODGATE_LOG_DIR", log_dir.display().to_string()),
            ("FLOODGATE_DRAIN_TIMEOUT_MS", "5000".to_owned()),
            ("FLOODGATE_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
            // Not the host's /etc/floodgate/floodgate.env, if it has one.
            (
                "FLOODGATE_ENV_FILE",
                dir.path().join("no-floodgate.env").display().to_string(),
            ),
        ],
    );
    logs.watch(pm2.home.join("pm2.log"));
    let daemon = Pm2Daemon(pm2.clone());
    pm2.run_ok(&["start", &repo_file("deploy/ecosystem.config.js")]);
    for (addr, admin) in backends.iter().zip(&admins) {
        wait_until_ready(*addr, *admin);
    }
    let first = pm2.instances();
    assert_eq!(first.len(), INSTANCES, "pm2 jlist: {first:?}");
    eprintln!("pm2 started {INSTANCES} instances: {first:?}");

    let nginx = Nginx::start(&nginx_bin, &dir.path().join("nginx"), &backends);
    logs.watch(nginx.error_log());
    let url = format!("http://{}/api/items", nginx.addr);

    check_forwarded_for(nginx.addr);

    let steady = rt.block_on(load_phase("pm2-steady", &url, None));
    steady.assert_exact(admins[0], &rt);

    let reload = {
        let pm2 = pm2.clone();
        move || {
            let before = pm2.instances();
            let started = Instant::now();
            // The command docs/DEPLOY.md gives: one instance at a time.
            pm2.run_ok(&["reload", "floodgate", "--parallel", "1"]);
            let after = wait_for(WAIT, "every instance to be replaced and online", || {
                let now = pm2.instances();
                let replaced = now.len() == INSTANCES
                    && now
                        .iter()
                        .all(|p| p.online && before.iter().all(|b| b.pid != p.pid));
                replaced.then_some(now)
            });
            format!(
                "pm2 reload floodgate --parallel 1 took {} ms; pids {:?} -> {:?}",
                started.elapsed().as_millis(),
                pids(&before),
                pids(&after)
            )
        }
    };
    let reloaded = rt.block_on(load_phase("pm2-reload", &url, Some(Box::new(reload))));
    reloaded.assert_no_errors();
    reloaded.assert_exact(admins[0], &rt);

    let kill = {
        let pm2 = pm2.clone();
        let victim_addr = backends[1];
        move || {
            let victim = pm2
                .instances()
                .into_iter()
                .find(|p| p.name == "floodgate-1")
                .expect("floodgate-1 in pm2 jlist");
            let started = Instant::now();
            send_signal(victim.pid, "KILL");
            let back = wait_for(WAIT, "PM2 to restart floodgate-1", || {
                pm2.instances()
                    .into_iter()
                    .find(|p| p.name == "floodgate-1" && p.online && p.pid != victim.pid)
                    .filter(|_| TcpStream::connect(victim_addr).is_ok())
            });
            assert!(
                back.restarts > victim.restarts,
                "PM2's restart count of floodgate-1 did not grow: {victim:?} -> {back:?}"
            );
            format!(
                "kill -9 floodgate-1 (pid {}); PM2 restarted it as pid {} (restarts {} -> {}), serving after {} ms",
                victim.pid,
                back.pid,
                victim.restarts,
                back.restarts,
                started.elapsed().as_millis()
            )
        }
    };
    let killed = rt.block_on(load_phase("pm2-kill-9", &url, Some(Box::new(kill))));
    // nginx retried what the dead instance dropped on the others.
    killed.assert_no_errors();
    killed.assert_never_over_limit_and_store_exact(admins[0], &rt);

    drop(nginx);
    drop(daemon);
}

#[test]
fn workers_behind_nginx_keep_limits_exact_through_sighup_and_kill() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let nginx_bin = nginx_binary();
    let dir = Dir::new("deploy-workers");
    let mut logs = LogsOnFailure::default();
    let redis = RedisServer::start();
    let rt = runtime();
    let upstream = rt.block_on(Upstream::start());

    let listen = loopback(free_port());
    let admin = loopback(free_port());
    let config = dir.path().join("floodgate.toml");
    std::fs::write(
        &config,
        floodgate_config(listen, admin, &upstream.url(), &redis.url()),
    )
    .unwrap();
    let log = dir.path().join("supervisor.log");
    logs.watch(log.clone());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_floodgate"));
    cmd.args(["serve", "--workers", &INSTANCES.to_string(), "--config"])
        .arg(&config)
        .env("FLOODGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("NO_COLOR", "1")
        .env_remove("FLOODGATE_REDIS_URL")
        .env_remove("FLOODGATE_CONFIG")
        .env_remove("FLOODGATE_ADMIN_LISTEN");
    let mut supervisor = ProcessGroup::spawn(cmd, &log);
    let sup_pid = supervisor.pid();
    wait_for(WAIT, "the supervisor's \"all workers serving\"", || {
        supervisor.assert_running();
        (count_in(&log, "all workers serving") >= 1).then_some(())
    });
    wait_until_ready(listen, admin);
    let first = live_children(sup_pid);
    assert_eq!(first.len(), INSTANCES, "workers of {sup_pid}: {first:?}");
    eprintln!("floodgate serve --workers {INSTANCES}: supervisor {sup_pid}, workers {first:?}");

    // One shared socket, so one upstream server, as deploy/nginx.conf says.
    let nginx = Nginx::start(&nginx_bin, &dir.path().join("nginx"), &[listen]);
    logs.watch(nginx.error_log());
    let url = format!("http://{}/api/items", nginx.addr);

    let steady = rt.block_on(load_phase("workers-steady", &url, None));
    steady.assert_exact(admin, &rt);

    let hup = {
        let log = log.clone();
        move || {
            let before = live_children(sup_pid);
            let done_before = count_in(&log, "rolling restart done");
            let started = Instant::now();
            send_signal(sup_pid, "HUP");
            wait_for(WAIT, "the supervisor's \"rolling restart done\"", || {
                (count_in(&log, "rolling restart done") > done_before).then_some(())
            });
            let took = started.elapsed();
            let after = wait_for(WAIT, "the old workers to drain and exit", || {
                let now = live_children(sup_pid);
                (now.len() == INSTANCES && now.is_disjoint(&before)).then_some(now)
            });
            format!(
                "SIGHUP: rolling restart done after {} ms; workers {before:?} -> {after:?}",
                took.as_millis()
            )
        }
    };
    let hupped = rt.block_on(load_phase("workers-sighup", &url, Some(Box::new(hup))));
    hupped.assert_no_errors();
    hupped.assert_exact(admin, &rt);

    let kill = {
        let log = log.clone();
        move || {
            let before = live_children(sup_pid);
            let victim = *before.iter().next().expect("a worker");
            let serving_before = count_in(&log, "worker serving");
            let started = Instant::now();
            send_signal(victim, "KILL");
            let after = wait_for(WAIT, "the supervisor to replace the killed worker", || {
                let now = live_children(sup_pid);
                (now.len() == INSTANCES
                    && !now.contains(&victim)
                    && count_in(&log, "worker serving") > serving_before)
                    .then_some(now)
            });
            format!(
                "kill -9 worker {victim}; the supervisor replaced it, serving after {} ms; workers {after:?}",
                started.elapsed().as_millis()
            )
        }
    };
    let killed = rt.block_on(load_phase("workers-kill-9", &url, Some(Box::new(kill))));
    // nginx retries a request that failed on a kept-alive connection, but
    // with one upstream server it has no other server to retry a request
    // that failed on a new connection: such a request, in flight on the
    // killed worker, is lost. At most one per client.
    killed.assert_errors_at_most(CLIENTS as u64);
    killed.assert_never_over_limit_and_store_exact(admin, &rt);

    drop(nginx);
    send_signal(sup_pid, "TERM");
    let code = supervisor.wait_exit(WAIT);
    assert_eq!(
        code,
        Some(0),
        "the supervisor must exit 0 after SIGTERM\n{}",
        tail(&log, 40)
    );
    let left = supervisor.members();
    assert!(left.is_empty(), "processes left after SIGTERM: {left:?}");
}

// ---------------------------------------------------------------------------
// Load and what it saw.

/// What one client saw.
#[derive(Debug, Default, Clone)]
struct Counts {
    sent: u64,
    /// 2xx: passed the limit and answered by the upstream.
    admitted: u64,
    /// 429.
    refused: u64,
    /// 5xx (from nginx or floodgate).
    server_errors: u64,
    /// Any other status.
    other: u64,
    /// No HTTP answer at all.
    conn_errors: u64,
    /// Admitted while the disruption was under way.
    admitted_during: u64,
    first_error: Option<String>,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.sent += o.sent;
        self.admitted += o.admitted;
        self.refused += o.refused;
        self.server_errors += o.server_errors;
        self.other += o.other;
        self.conn_errors += o.conn_errors;
        self.admitted_during += o.admitted_during;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
    }

    fn errors(&self) -> u64 {
        self.server_errors + self.other + self.conn_errors
    }
}

type Disruption = Box<dyn FnOnce() -> String + Send>;

/// One phase's result.
struct Phase {
    name: String,
    clients: Vec<(String, Counts)>,
    total: Counts,
    disruption: Option<String>,
}

/// Runs CLIENTS clients against `url`, each sending at least MIN_REQUESTS
/// requests PACE apart. Once a quarter of all admissions are used up,
/// `disruption` runs (on a blocking thread); the clients go on until it has
/// finished. Prints the counts.
async fn load_phase(name: &str, url: &str, disruption: Option<Disruption>) -> Phase {
    let prefix = unique_prefix(name);
    let keys: Vec<String> = (0..CLIENTS).map(|i| format!("{prefix}-{i:02}")).collect();
    let admitted = Arc::new(AtomicU64::new(0));
    let started = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(disruption.is_none()));
    let deadline = Instant::now() + PHASE_DEADLINE;

    let mut tasks = Vec::new();
    for key in &keys {
        let (key, url) = (key.clone(), url.to_owned());
        let (admitted, started, done) = (admitted.clone(), started.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let http = Http::new();
            let mut c = Counts::default();
            while (c.sent < MIN_REQUESTS || !done.load(Ordering::SeqCst))
                && Instant::now() < deadline
            {
                let during = started.load(Ordering::SeqCst) && !done.load(Ordering::SeqCst);
                c.sent += 1;
                match http.send("GET", &url, &[("x-api-key", &key)], None).await {
                    Ok(r) if (200..300).contains(&r.status) => {
                        c.admitted += 1;
                        admitted.fetch_add(1, Ordering::SeqCst);
                        if during {
                            c.admitted_during += 1;
                        }
                    }
                    Ok(r) if r.status == 429 => c.refused += 1,
                    Ok(r) => {
                        if r.status >= 500 {
                            c.server_errors += 1;
                        } else {
                            c.other += 1;
                        }
                        c.first_error
                            .get_or_insert_with(|| format!("{}: {}", r.status, r.text()));
                    }
                    Err(e) => {
                        c.conn_errors += 1;
                        c.first_error.get_or_insert(e);
                    }
                }
                tokio::time::sleep(PACE).await;
            }
            (key, c)
        }));
    }

    let disruption = match disruption {
        None => None,
        Some(run) => {
            let quarter = (CLIENTS as u64 * LIMIT) / 4;
            while admitted.load(Ordering::SeqCst) < quarter && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            started.store(true, Ordering::SeqCst);
            let outcome = tokio::task::spawn_blocking(run).await;
            done.store(true, Ordering::SeqCst);
            match outcome {
                Ok(text) => Some(text),
                // The disruption's own assertion failed: fail with its message.
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
    };

    let mut clients = Vec::new();
    let mut total = Counts::default();
    for task in tasks {
        let (key, c) = task.await.expect("client task");
        total.add(&c);
        clients.push((key, c));
    }
    let phase = Phase {
        name: name.to_owned(),
        clients,
        total,
        disruption,
    };
    eprintln!("{}", phase.summary());
    assert!(
        Instant::now() < deadline,
        "{}: did not finish within {PHASE_DEADLINE:?}",
        phase.summary()
    );
    phase
}

impl Phase {
    fn summary(&self) -> String {
        let t = &self.total;
        let mut s = format!(
            "[deploy-e2e] phase {}: {} clients, {} requests: {} admitted, {} refused (429), {} 5xx, {} other, {} connection errors; {} admitted while the disruption ran",
            self.name,
            self.clients.len(),
            t.sent,
            t.admitted,
            t.refused,
            t.server_errors,
            t.other,
            t.conn_errors,
            t.admitted_during
        );
        if let Some(d) = &self.disruption {
            s.push_str(&format!("\n[deploy-e2e]   disruption: {d}"));
        }
        if let Some(e) = &t.first_error {
            s.push_str(&format!("\n[deploy-e2e]   first error: {e}"));
        }
        s
    }

    fn assert_no_errors(&self) {
        assert_eq!(
            self.total.errors(),
            0,
            "requests failed instead of being admitted or refused\n{}",
            self.summary()
        );
    }

    fn assert_errors_at_most(&self, bound: u64) {
        assert!(
            self.total.errors() <= bound,
            "more than {bound} requests failed\n{}",
            self.summary()
        );
    }

    /// Every client admitted exactly LIMIT times, and the store agrees.
    fn assert_exact(&self, admin: SocketAddr, rt: &tokio::runtime::Runtime) {
        let wrong: Vec<String> = self
            .clients
            .iter()
            .filter(|(_, c)| c.admitted != LIMIT)
            .map(|(k, c)| format!("{k}: {} admitted", c.admitted))
            .collect();
        assert!(
            wrong.is_empty(),
            "clients not admitted exactly {LIMIT} times: {wrong:?}\n{}",
            self.summary()
        );
        self.assert_store_exhausted(admin, rt);
    }

    /// After a `kill -9`: no client above LIMIT, and the store holds exactly
    /// LIMIT for each. A request the killed process had already counted but
    /// not answered is retried by nginx and refused, so a client may see one
    /// admission fewer than the store counted; at most one per request in
    /// flight when the process died (CLIENTS).
    fn assert_never_over_limit_and_store_exact(
        &self,
        admin: SocketAddr,
        rt: &tokio::runtime::Runtime,
    ) {
        let over: Vec<String> = self
            .clients
            .iter()
            .filter(|(_, c)| c.admitted > LIMIT)
            .map(|(k, c)| format!("{k}: {} admitted", c.admitted))
            .collect();
        assert!(
            over.is_empty(),
            "clients admitted more than {LIMIT} times: {over:?}\n{}",
            self.summary()
        );
        let lost: u64 = self.clients.iter().map(|(_, c)| LIMIT - c.admitted).sum();
        eprintln!(
            "[deploy-e2e]   {}: admissions counted by the killed process but never answered: {lost}",
            self.name
        );
        assert!(
            lost <= CLIENTS as u64,
            "{lost} admissions lost, more than the {CLIENTS} requests that can be in flight\n{}",
            self.summary()
        );
        self.assert_store_exhausted(admin, rt);
    }

    /// Each client's counter in Redis is full: LIMIT recorded, none left.
    fn assert_store_exhausted(&self, admin: SocketAddr, rt: &tokio::runtime::Runtime) {
        let http = Http::new();
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let mut wrong = Vec::new();
        for (key, _) in &self.clients {
            let url = format!("http://{admin}/admin/rules/{RULE}/keys/header:x-api-key:{key}");
            let reply = rt
                .block_on(http.send("GET", &url, &[("authorization", &auth)], None))
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
            assert_eq!(reply.status, 200, "GET {url}: {}", reply.text());
            let body = reply.json();
            if body["remaining"] != 0 || body["limit"] != LIMIT {
                wrong.push(format!("{key}: {body}"));
            }
        }
        assert!(
            wrong.is_empty(),
            "the store does not hold exactly {LIMIT} for these clients: {wrong:?}\n{}",
            self.summary()
        );
    }
}

// ---------------------------------------------------------------------------
// The pieces: config, nginx, PM2, processes.

fn floodgate_config(listen: SocketAddr, admin: SocketAddr, upstream: &str, redis: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
upstream = "{upstream}"
# nginx connects from 127.0.0.1; the test's other clients come from 127.0.0.2/3.
trusted_proxies = ["127.0.0.1/32"]
drain_timeout = "5s"

[store]
backend = "redis"
url = "{redis}"
# Generous: debug builds on two busy cores. A store error must not pass for
# a decision, so it refuses (and shows up as a wrong count).
timeout = "2s"
on_error = "deny"

[admin]
listen = "{admin}"

[access]
# Reached only if nginx passes the client's address and floodgate believes it.
deny = ["ip:127.0.0.2"]

[[rule]]
name = "{RULE}"
match = {{ path_prefix = "/api/" }}
key = "header:x-api-key"
algorithm = "sliding_log"
limit = {LIMIT}
window = "1h"
"#
    )
}

/// The X-Forwarded-For that deploy/nginx.conf sets, and the trusted_proxies
/// that match it: floodgate sees the client nginx saw, and a client cannot
/// pick its identity by sending the header itself.
fn check_forwarded_for(nginx: SocketAddr) {
    let denied = raw_get_from("127.0.0.2".parse().unwrap(), nginx, &[]);
    assert_eq!(
        denied, 403,
        "a client at 127.0.0.2 (denied by [access]) must be refused through nginx"
    );
    let spoofed = raw_get_from(
        "127.0.0.3".parse().unwrap(),
        nginx,
        &["X-Forwarded-For: 127.0.0.2"],
    );
    assert_eq!(
        spoofed, 200,
        "a client at 127.0.0.3 claiming to be 127.0.0.2 must be judged as itself"
    );
    eprintln!(
        "[deploy-e2e] X-Forwarded-For through nginx: client 127.0.0.2 -> {denied}, 127.0.0.3 claiming 127.0.0.2 -> {spoofed}"
    );
}

/// GET /api/xff-check from source address `from`; the status code.
fn raw_get_from(from: IpAddr, to: SocketAddr, headers: &[&str]) -> u16 {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(from, 0).into())
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    socket.connect(&to.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut request =
        "GET /api/xff-check HTTP/1.1\r\nHost: floodgate\r\nX-Api-Key: xff-check\r\nConnection: close\r\n"
            .to_owned();
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status from nginx: {reply:?}"))
}

/// nginx, found or a clear failure.
fn nginx_binary() -> PathBuf {
    find_tool("FLOODGATE_TEST_NGINX", "nginx", &["/usr/sbin/nginx"]).unwrap_or_else(|| {
        panic!(
            "nginx is not installed: these end-to-end tests run floodgate behind nginx. \
             Run scripts/test.sh (it installs it), or `apt-get install nginx`, \
             or set FLOODGATE_TEST_NGINX=/path/to/nginx"
        )
    })
}

/// pm2, found or a clear failure.
fn pm2_binary() -> PathBuf {
    find_tool("FLOODGATE_TEST_PM2", "pm2", &[]).unwrap_or_else(|| {
        panic!(
            "pm2 is not installed: this end-to-end test runs floodgate under PM2. \
             Run scripts/test.sh (it installs it), or `npm install -g pm2`, \
             or set FLOODGATE_TEST_PM2=/path/to/pm2"
        )
    })
}

fn find_tool(var: &str, name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{var}={} does not exist", path.display());
        return Some(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// nginx with deploy/nginx.conf as its site, on a free port, with its pid
/// file, logs and temporary files under `dir`; stopped on drop.
struct Nginx {
    addr: SocketAddr,
    dir: PathBuf,
    _process: ProcessGroup,
}

impl Nginx {
    fn start(bin: &Path, dir: &Path, backends: &[SocketAddr]) -> Self {
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let addr = loopback(free_port());
        let template = std::fs::read_to_string(repo_file("deploy/nginx.conf")).unwrap();
        std::fs::write(
            dir.join("floodgate.conf"),
            site_config(&template, backends, addr, dir),
        )
        .unwrap();
        let d = dir.display();
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "worker_processes 1;\n\
                 pid {d}/nginx.pid;\n\
                 error_log {d}/error.log info;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n\
                 \x20   client_body_temp_path {d}/tmp/body;\n\
                 \x20   proxy_temp_path {d}/tmp/proxy;\n\
                 \x20   fastcgi_temp_path {d}/tmp/fastcgi;\n\
                 \x20   uwsgi_temp_path {d}/tmp/uwsgi;\n\
                 \x20   scgi_temp_path {d}/tmp/scgi;\n\
                 \x20   include {d}/floodgate.conf;\n\
                 }}\n"
            ),
        )
        .unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"]);
        let mut process = ProcessGroup::spawn(cmd, &dir.join("stderr.log"));
        wait_for(WAIT, "nginx to listen", || {
            if !process.running() {
                panic!(
                    "nginx exited at start:\n{}\n{}",
                    tail(&dir.join("stderr.log"), 20),
                    tail(&dir.join("error.log"), 20)
                );
            }
            TcpStream::connect(addr).ok()
        });
        eprintln!("[deploy-e2e] nginx on {addr} -> {backends:?}");
        Nginx {
            addr,
            dir: dir.to_owned(),
            _process: process,
        }
    }

    fn error_log(&self) -> PathBuf {
        self.dir.join("error.log")
    }
}

/// deploy/nginx.conf with the test's addresses: its `server 127.0.0.1:...`
/// lines become one per backend (same parameters), its `listen` lines one on
/// `listen`, and its access log goes to `dir`.
fn site_config(template: &str, backends: &[SocketAddr], listen: SocketAddr, dir: &Path) -> String {
    let (mut servers, mut listens) = (false, false);
    let mut out = Vec::new();
    for line in template.lines() {
        let t = line.trim_start();
        if t.starts_with("server 127.0.0.1:") {
            if !servers {
                let params = t.split_whitespace().skip(2).collect::<Vec<_>>().join(" ");
                for b in backends {
                    out.push(format!("    server {b} {params}"));
                }
                servers = true;
            }
        } else if t.starts_with("listen ") {
            if !listens {
                out.push(format!("    listen {listen};"));
                listens = true;
            }
        } else if t.starts_with("access_log ") {
            out.push(format!("    access_log {}/access.log;", dir.display()));
        } else {
            out.push(line.to_owned());
        }
    }
    assert!(
        servers && listens,
        "deploy/nginx.conf has no `server 127.0.0.1:PORT ...;` or no `listen ...;` line for the test to replace"
    );
    out.join("\n")
}

fn pids(list: &[Pm2Process]) -> Vec<u32> {
    list.iter().map(|p| p.pid).collect()
}

/// The `pm2` command with this test's own PM2_HOME and environment.
#[derive(Clone)]
struct Pm2 {
    bin: PathBuf,
    home: PathBuf,
    env: Vec<(String, String)>,
}

impl Pm2 {
    fn new(bin: &Path, home: PathBuf, env: &[(&str, String)]) -> Self {
        std::fs::create_dir_all(&home).unwrap();
        Pm2 {
            bin: bin.to_owned(),
            home,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("PM2_HOME", &self.home)
            .env("NO_COLOR", "1")
            .env_remove("FLOODGATE_REDIS_URL")
            .env_remove("FLOODGATE_ADMIN_LISTEN")
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()))
    }

    fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "pm2 {args:?} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// `pm2 jlist`; `None` if it fails or is not JSON.
    fn try_instances(&self) -> Option<Vec<Pm2Process>> {
        let out = self.run(&["jlist"]);
        parse_pm2_jlist(&String::from_utf8_lossy(&out.stdout))
    }

    fn instances(&self) -> Vec<Pm2Process> {
        self.try_instances()
            .unwrap_or_else(|| panic!("pm2 jlist failed or is not JSON"))
    }

    /// Whether this PM2_HOME's daemon runs (`pm2 jlist` would start one).
    fn daemon_running(&self) -> bool {
        std::fs::read_to_string(self.home.join("pm2.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .is_some_and(alive)
    }
}

/// Runs `pm2 kill` on drop: every instance and the daemon stop, also when
/// the test fails.
struct Pm2Daemon(Pm2);

impl Drop for Pm2Daemon {
    fn drop(&mut self) {
        if !self.0.daemon_running() {
            return;
        }
        let pids = self.0.try_instances().map(|l| pids(&l)).unwrap_or_default();
        let out = self.0.run(&["kill"]);
        if !out.status.success() {
            eprintln!("pm2 kill failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        // Whatever survived (pm2 kill waits for its apps, so normally none).
        for pid in pids.into_iter().filter(|p| *p > 0 && alive(*p)) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// A process started in its own process group, so it and everything it
/// starts (nginx workers, floodgate workers) can be stopped together; its
/// stdout and stderr go to a file. Stopped (TERM, then KILL) on drop.
struct ProcessGroup {
    child: Child,
}

impl ProcessGroup {
    fn spawn(mut cmd: Command, log: &Path) -> Self {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(log).unwrap();
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        ProcessGroup { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("process {} exited: {status}", self.pid());
        }
    }

    /// Waits for the group leader to exit; its exit code.
    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let status = wait_for(within, "the process to exit", || {
            self.child.try_wait().ok().flatten()
        });
        status.code()
    }

    /// Live processes of the group.
    fn members(&self) -> Vec<u32> {
        processes()
            .into_iter()
            .filter(|p| p.pgid == self.pid())
            .map(|p| p.pid)
            .collect()
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let group = format!("-{}", self.pid());
        if !self.members().is_empty() {
            let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !self.members().is_empty() && Instant::now() < deadline {
                let _ = self.child.try_wait();
                std::thread::sleep(Duration::from_millis(50));
            }
            if !self.members().is_empty() {
                let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process as /proc shows it.
struct ProcInfo {
    pid: u32,
    ppid: u32,
    pgid: u32,
    /// The executable's name (at most 15 bytes).
    comm: String,
}

/// Every live (not zombie) process.
fn processes() -> Vec<ProcInfo> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // "pid (comm) state ppid pgrp ..."
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_owned();
            let mut fields = rest.split_whitespace();
            let state = fields.next()?;
            let ppid = fields.next()?.parse().ok()?;
            let pgid = fields.next()?.parse().ok()?;
            (state != "Z").then_some(ProcInfo {
                pid,
                ppid,
                pgid,
                comm,
            })
        })
        .collect()
}

/// The floodgate processes `parent` started (its workers; not the short-lived
/// `kill` commands it runs to signal them).
fn live_children(parent: u32) -> BTreeSet<u32> {
    processes()
        .into_iter()
        .filter(|p| p.ppid == parent && p.comm == "floodgate")
        .map(|p| p.pid)
        .collect()
}

fn alive(pid: u32) -> bool {
    processes().iter().any(|p| p.pid == pid)
}

// ---------------------------------------------------------------------------
// Small helpers.

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn repo_file(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    p.canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .display()
        .to_string()
}

/// The first of `n` consecutive free loopback ports.
fn consecutive_free_ports(n: usize) -> u16 {
    for _ in 0..100 {
        let first = free_port();
        let held: Vec<_> = (0..n as u16)
            .map_while(|i| {
                first
                    .checked_add(i)
                    .and_then(|p| std::net::TcpListener::bind(loopback(p)).ok())
            })
            .collect();
        if held.len() == n {
            return first;
        }
    }
    panic!("no {n} consecutive free ports on 127.0.0.1");
}

/// Waits until `addr` accepts connections and `admin`'s /readyz says 200.
fn wait_until_ready(addr: SocketAddr, admin: SocketAddr) {
    wait_for(WAIT, &format!("floodgate on {addr} to be ready"), || {
        TcpStream::connect(addr).ok()?;
        let mut s = TcpStream::connect(admin).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply.starts_with("HTTP/1.1 200").then_some(())
    });
}

fn count_in(file: &Path, needle: &str) -> usize {
    std::fs::read_to_string(file)
        .map(|t| t.matches(needle).count())
        .unwrap_or(0)
}

fn tail(file: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    format!(
        "--- {} (last {lines} lines)\n{}",
        file.display(),
        all[start..].join("\n")
    )
}

/// If the test is failing, prints each watched log's warnings and errors
/// (nginx's `[error]`, floodgate's `WARN`/`ERROR`) and its last lines.
#[derive(Default)]
struct LogsOnFailure(Vec<PathBuf>);

impl LogsOnFailure {
    fn watch(&mut self, file: PathBuf) {
        self.0.push(file);
    }
}

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for f in &self.0 {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            let problems: Vec<&str> = text
                .lines()
                .filter(|l| {
                    [
                        "[error]", "[crit]", "[alert]", "[warn]", "WARN", "ERROR", "panicked",
                    ]
                    .iter()
                    .any(|w| l.contains(w))
                })
                .collect();
            eprintln!(
                "--- {}: {} warning/error lines (first 40)\n{}",
                f.display(),
                problems.len(),
                problems[..problems.len().min(40)].join("\n")
            );
            eprintln!("{}", tail(f, 15));
        }
    }
}
