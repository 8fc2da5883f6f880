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

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use floodgate_testkit::{RedisServer, free_port, send_signal, unique_prefix};

use crate::support::host::{self, consecutive_free_ports, loopback, repo_root};
use crate::support::http::Http;
use crate::support::logs::{LogsOnFailure, assert_log_lines_clean, count_in, tail};
use crate::support::machine;
use crate::support::nginx::Nginx;
use crate::support::pm2::{self, Pm2, Pm2Daemon, pids};
use crate::support::process::ProcessGroup;
use crate::support::procfs::live_children;
use crate::support::raw::RawConn;
use crate::support::upstream::Upstream;
use crate::support::wait::wait_for;

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

#[test]
fn pm2_behind_nginx_keeps_limits_exact_through_reload_and_kill() {
    // Each test loads both cores fully: it runs alone.
    let _alone = machine::alone();
    let pm2_bin = pm2::binary();
    let dir = host::temp_dir("deploy-pm2");
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
    let ecosystem = repo_root().join("deploy/ecosystem.config.js");
    pm2.run_ok(&["start", &ecosystem.display().to_string()]);
    for (addr, admin) in backends.iter().zip(&admins) {
        wait_until_ready(*addr, *admin);
    }
    let first = pm2.instances();
    assert_eq!(first.len(), INSTANCES, "pm2 jlist: {first:?}");
    eprintln!("pm2 started {INSTANCES} instances: {first:?}");

    let nginx = Nginx::start_deployed(&dir.path().join("nginx"), &backends);
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
    for i in 0..INSTANCES {
        assert_log_lines_clean(&log_dir.join(format!("floodgate-{i}.log")));
    }
}

#[test]
fn workers_behind_nginx_keep_limits_exact_through_sighup_and_kill() {
    let _alone = machine::alone();
    let dir = host::temp_dir("deploy-workers");
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
    // JSON, and no NO_COLOR: the supervisor's and every worker's lines are
    // held to the strict parse and to "no colour codes in a file" below.
    cmd.args([
        "--log-format",
        "json",
        "serve",
        "--workers",
        &INSTANCES.to_string(),
        "--config",
    ])
    .arg(&config)
    .env("FLOODGATE_ADMIN_TOKEN", ADMIN_TOKEN)
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
    let nginx = Nginx::start_deployed(&dir.path().join("nginx"), &[listen]);
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
    assert_log_lines_clean(&log);
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
    let mut request =
        "GET /api/xff-check HTTP/1.1\r\nHost: floodgate\r\nX-Api-Key: xff-check\r\nConnection: close\r\n"
            .to_owned();
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let mut conn = RawConn::connect_from(from, to);
    conn.set_read_timeout(WAIT);
    conn.roundtrip(request.as_bytes())
        .unwrap_or_else(|e| panic!("no HTTP answer from nginx: {e}"))
        .status
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

/// Waits until `addr` accepts connections and `admin`'s /readyz says 200.
fn wait_until_ready(addr: SocketAddr, admin: SocketAddr) {
    wait_for(WAIT, &format!("floodgate on {addr} to be ready"), || {
        TcpStream::connect(addr).ok()?;
        let mut conn = RawConn::try_connect(admin).ok()?;
        conn.set_read_timeout(Duration::from_secs(2));
        let reply = conn.get("/readyz", &["Connection: close"]).ok()?;
        (reply.status == 200).then_some(())
    });
}
