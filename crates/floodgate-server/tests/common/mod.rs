//! Support for the server's integration tests: the real `floodgate` binary on
//! free ports, a small real upstream, an HTTP client, a raw HTTP/1.1
//! connection for bytes no client library would send, Redis process
//! control, and a steady load of many clients that records every request.
//!
//! Every `Floodgate` writes its stderr to a log file; when it is dropped the
//! log is checked: "panicked" (a panic anywhere in the server fails the
//! test that ran it), terminal colour codes (stderr is a file here, so none
//! may be written), and every JSON line parsed by a strict parser that
//! refuses a key written twice. The log is printed when the test itself is
//! failing.
#![allow(
    dead_code,
    unused_imports,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used
)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub use floodgate_testkit::{RedisServer, free_port, send_signal, shared_redis_url, unique_prefix};

/// The admin token every test instance runs with (`FLOODGATE_ADMIN_TOKEN`).
pub const TOKEN: &str = "test-admin-token";

/// `Authorization: Bearer <TOKEN>`.
pub const AUTH: (&str, &str) = ("authorization", "Bearer test-admin-token");

/// A running `floodgate serve`, killed on drop.
pub struct Floodgate {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    log_path: PathBuf,
    _dir: tempdir::Dir,
}

pub mod nginx;

pub mod tempdir {
    use std::path::{Path, PathBuf};

    /// A directory removed on drop.
    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new(label: &str) -> Self {
            let path = floodgate_testkit::unique_temp_path(&format!("test-{label}"));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Floodgate {
    /// Starts the binary with `config` (TOML) with `{listen}` and `{admin}`
    /// replaced by free loopback addresses; waits until both listen.
    pub fn start(config: &str) -> Self {
        Self::start_with(config, &[])
    }

    /// [`Floodgate::start`] with extra environment variables.
    pub fn start_with(config: &str, env: &[(&str, &str)]) -> Self {
        Self::start_on("127.0.0.1", config, env)
    }

    /// [`Floodgate::start`] with the main listener on `host` (`127.0.0.1`
    /// or `[::1]`).
    pub fn start_on(host: &str, config: &str, env: &[(&str, &str)]) -> Self {
        Self::start_serving(host, config, &[], env)
    }

    /// [`Floodgate::start_with`] with more arguments after `serve --config
    /// FILE` (`--workers 2`).
    pub fn start_with_args(config: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_serving("127.0.0.1", config, args, env)
    }

    fn start_serving(host: &str, config: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::on_free_ports(|| {
            let addr: SocketAddr = format!("{host}:{}", free_port()).parse().unwrap();
            let admin = free_addr();
            let dir = tempdir::Dir::new("server");
            let config_path = dir.path().join("floodgate.toml");
            std::fs::write(&config_path, fill(config, addr, admin)).unwrap();
            // JSON logs, so every line is held to the strict parse on drop;
            // the demo (below) logs as text, held to "no colour codes".
            let mut args: Vec<std::ffi::OsString> = vec![
                "serve".into(),
                "--log-format".into(),
                "json".into(),
                "--config".into(),
                config_path.clone().into(),
            ];
            args.extend(extra.iter().map(Into::into));
            Self::spawn(&args, addr, admin, dir, config_path, env)
        })
    }

    /// `floodgate serve --listen <free address>` without a config: the
    /// built-in demo, its admin listener moved by `FLOODGATE_ADMIN_LISTEN`.
    pub fn start_demo() -> Self {
        Self::on_free_ports(|| {
            let (addr, admin) = (free_addr(), free_addr());
            let dir = tempdir::Dir::new("demo");
            let config_path = dir.path().join("none.toml");
            let args = ["serve".into(), "--listen".into(), addr.to_string().into()];
            let admin_text = admin.to_string();
            let env = [("FLOODGATE_ADMIN_LISTEN", admin_text.as_str())];
            Self::spawn(&args, addr, admin, dir, config_path, &env)
        })
    }

    /// Runs `start` (which picks free ports) again, up to five times, while
    /// the process exits because another process took a port between
    /// [`free_port`] and the bind.
    fn on_free_ports(start: impl Fn() -> Result<Self, String>) -> Self {
        let mut last = String::new();
        for _ in 0..5 {
            match start() {
                Ok(fg) => return fg,
                Err(log) if log.contains("Address already in use") => last = log,
                Err(log) => panic!("floodgate exited early:\n{log}"),
            }
        }
        panic!("floodgate found no free port in five tries:\n{last}");
    }

    /// Starts the binary; `Err` with its log when it exits before listening.
    fn spawn(
        args: &[std::ffi::OsString],
        addr: SocketAddr,
        admin: SocketAddr,
        dir: tempdir::Dir,
        config_path: PathBuf,
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        let log_path = dir.path().join("stderr.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_floodgate"));
        cmd.args(args)
            .env("FLOODGATE_ADMIN_TOKEN", TOKEN)
            // FLOODGATE_TEST_LOG=debug in the test's environment for more.
            .env(
                "FLOODGATE_LOG",
                std::env::var("FLOODGATE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("FLOODGATE_REDIS_URL")
            .env_remove("FLOODGATE_CONFIG")
            .env_remove("FLOODGATE_ADMIN_LISTEN")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn floodgate");
        let mut fg = Floodgate {
            child,
            addr,
            admin,
            config_path,
            log_path,
            _dir: dir,
        };
        match fg.wait_ready() {
            Ok(()) => Ok(fg),
            Err(e) => {
                let log = fg.log();
                // Nothing to check in the log of a process that never served.
                let _ = std::fs::remove_file(&fg.log_path);
                Err(format!("{e}\n{log}"))
            }
        }
    }

    /// [`Floodgate::start`] from async code, without blocking a runtime worker.
    pub async fn launch(config: impl Into<String>) -> Self {
        Self::launch_on("127.0.0.1", config).await
    }

    /// [`Floodgate::start_on`] from async code.
    pub async fn launch_on(host: &'static str, config: impl Into<String>) -> Self {
        let config = config.into();
        tokio::task::spawn_blocking(move || Floodgate::start_on(host, &config, &[]))
            .await
            .unwrap()
    }

    /// Waits until both listeners accept; `Err` when the process exited.
    /// The deadline is generous: a CI machine's two cores can be busy with
    /// a dozen other processes while a test binary starts several instances.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exit {status}"));
            }
            if TcpStream::connect(self.admin).is_ok() && TcpStream::connect(self.addr).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let proc_dir = format!("/proc/{}", self.child.id());
        let state = std::fs::read_to_string(format!("{proc_dir}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("State:"))
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let wchan = std::fs::read_to_string(format!("{proc_dir}/wchan")).unwrap_or_default();
        panic!(
            "floodgate did not start listening on {} and {} within 60s ({state}, waiting in {wchan:?})\n{}",
            self.addr,
            self.admin,
            self.log()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; false after `within`.
    pub fn wait_for_log(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Resident memory, from /proc/<pid>/status.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{}/status", self.pid()))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn signal(&self, sig: &str) {
        send_signal(self.child.id(), sig);
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Rewrites the config file (same listen/admin addresses), atomically.
    pub fn rewrite_config(&self, config: &str) {
        let text = fill(config, self.addr, self.admin);
        let tmp = self.config_path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f.sync_all().unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("floodgate did not exit within {within:?}\n{}", self.log());
    }
}

/// A loopback address with a port nobody listens on right now.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

fn fill(config: &str, addr: SocketAddr, admin: SocketAddr) -> String {
    config
        .replace("{listen}", &addr.to_string())
        .replace("{admin}", &admin.to_string())
        .replace("{admin_port}", &admin.port().to_string())
}

impl Drop for Floodgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self.log();
        if std::thread::panicking() {
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- floodgate {} stderr (last 60 lines) ---\n{}",
                self.addr,
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        } else if log.contains("panicked") {
            panic!("floodgate {} panicked:\n{log}", self.addr);
        } else if let Err(e) = check_log_lines(&log) {
            panic!("floodgate {} wrote a bad log line: {e}\n{log}", self.addr);
        }
    }
}

/// What every log a floodgate process writes to a file must hold to: no
/// terminal escape codes, and JSON lines that are objects with each key
/// once (log pipelines keep one of two same-named keys, or reject the line).
pub fn check_log_lines(log: &str) -> Result<(), String> {
    for line in log.lines() {
        if line.contains('\u{1b}') {
            return Err(format!("terminal escape code in {line:?}"));
        }
        if line.starts_with('{') {
            serde_json::from_str::<StrictJson>(line).map_err(|e| format!("{e} in {line}"))?;
        }
    }
    Ok(())
}

/// Any JSON value, refused when an object names a key twice (serde_json's
/// own `Value` keeps the last one silently).
pub struct StrictJson;

impl<'de> serde::Deserialize<'de> for StrictJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = StrictJson;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<StrictJson, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("key {key:?} twice")));
            }
            map.next_value::<StrictJson>()?;
        }
        Ok(StrictJson)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<StrictJson, A::Error> {
        while seq.next_element::<StrictJson>()?.is_some() {}
        Ok(StrictJson)
    }

    fn visit_bool<E>(self, _: bool) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }
    fn visit_i64<E>(self, _: i64) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }
    fn visit_u64<E>(self, _: u64) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }
    fn visit_f64<E>(self, _: f64) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }
    fn visit_str<E>(self, _: &str) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }
    fn visit_unit<E>(self) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }
}

/// The pid of the redis-server at `addr`, from `INFO server`.
pub fn redis_pid(addr: SocketAddr) -> u32 {
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

/// Connections waiting in the accept queue of the IPv4 socket listening on
/// `addr` (from /proc/net/tcp, whose `rx_queue` of a listening socket is
/// its backlog); `None` when nothing listens there.
pub fn accept_queue(addr: SocketAddr) -> Option<u32> {
    let SocketAddr::V4(v4) = addr else {
        panic!("accept_queue reads /proc/net/tcp: IPv4 only, not {addr}");
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(v4.ip().octets()),
        v4.port()
    );
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        // sl, local_address, rem_address, st (0A: listening), tx_queue:rx_queue
        .find(|f| f.len() > 4 && f[1] == local && f[3] == "0A")
        .and_then(|f| f[4].split_once(':').map(|(_, rx)| rx.to_owned()))
        .and_then(|rx| u32::from_str_radix(&rx, 16).ok())
}

/// Waits, polling every 50 ms, until `probe` returns true; false after `within`.
pub async fn eventually<F, Fut>(within: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if probe().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Epoch-aligned windows (fixed and sliding window) reset at multiples of
/// their length: when the current one ends within `margin`, waits it out, so
/// a test counting to a limit never straddles a boundary.
pub async fn avoid_window_boundary(window: Duration, margin: Duration) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = Duration::from_micros(
        u64::try_from(now.as_micros() % window.as_micros()).unwrap_or_default(),
    );
    let left = window.saturating_sub(into);
    if left < margin {
        tokio::time::sleep(left + Duration::from_millis(50)).await;
    }
}

/// A gateway `GET /api/hello` as client `key` (header `x-client`), failing
/// the test if it took longer than `bound`: whatever the store does, a
/// request must not hang.
pub async fn bounded_get(http: &Http, fg: &Floodgate, key: &str, bound: Duration) -> Reply {
    let started = Instant::now();
    let r = http.get(&fg.url("/api/hello"), &[("x-client", key)]).await;
    let took = started.elapsed();
    assert!(took <= bound, "a request waited {took:?} (bound {bound:?})");
    r
}

/// `n` [`bounded_get`]s for `key` on `fg`: their statuses.
pub async fn statuses(
    http: &Http,
    fg: &Floodgate,
    key: &str,
    n: usize,
    bound: Duration,
) -> Vec<u16> {
    alternating(http, fg, fg, key, n, bound).await
}

/// `n` [`bounded_get`]s for `key` alternating between `a` and `b`, starting
/// with `a`: their statuses. Under a shared limit of L, exactly L are 200.
pub async fn alternating(
    http: &Http,
    a: &Floodgate,
    b: &Floodgate,
    key: &str,
    n: usize,
    bound: Duration,
) -> Vec<u16> {
    let mut out = Vec::new();
    for i in 0..n {
        let fg = if i % 2 == 0 { a } else { b };
        out.push(bounded_get(http, fg, key, bound).await.status);
    }
    out
}

/// One request of a [`Load`].
#[derive(Debug, Clone)]
pub struct Sample {
    /// The index of the client that sent it, in the order given to
    /// [`Load::start`].
    pub client: usize,
    /// When it was sent, from the start of the load.
    pub sent: Duration,
    /// When its answer was complete (or it failed), from the start of the load.
    pub done: Duration,
    /// The status; 0 when no answer came: a connection error, or no answer
    /// within [`Load::REQUEST_LIMIT`].
    pub status: u16,
    /// Whether the answer was `application/problem+json`.
    pub problem: bool,
    /// Whether the answer carried `Retry-After`.
    pub retry_after: bool,
}

impl Sample {
    pub fn latency(&self) -> Duration {
        self.done.saturating_sub(self.sent)
    }
}

/// A steady gateway load: one task per client, each sending `GET path` with
/// its own key in a header to its own instance, one request at a time with
/// a pause between them, until [`Load::stop`]. Every request is recorded.
pub struct Load {
    origin: Instant,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

/// One client of a [`Load`].
#[derive(Debug, Clone)]
pub struct LoadClient {
    /// The instance it sends to: `http://host:port`.
    pub base: String,
    /// The header carrying its identity, and its value.
    pub header: (String, String),
}

impl Load {
    /// How long a request may take before it is recorded as unanswered and
    /// given up: far beyond any bound a test asserts.
    pub const REQUEST_LIMIT: Duration = Duration::from_secs(10);

    /// Starts `clients`, each sending `GET path` then pausing `pause`.
    pub fn start(clients: Vec<LoadClient>, path: &str, pause: Duration) -> Self {
        let origin = Instant::now();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let http = Http::new();
        let tasks = clients
            .into_iter()
            .enumerate()
            .map(|(client, c)| {
                let (http, stop) = (http.clone(), stop.clone());
                let url = format!("{}{path}", c.base);
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let sent = origin.elapsed();
                        let headers = [(c.header.0.as_str(), c.header.1.as_str())];
                        let answer = tokio::time::timeout(
                            Self::REQUEST_LIMIT,
                            http.send("GET", &url, &headers, None),
                        )
                        .await;
                        let done = origin.elapsed();
                        let (status, problem, retry_after) = match answer {
                            Ok(Ok(r)) => (
                                r.status,
                                r.header("content-type") == Some("application/problem+json"),
                                r.retry_after().is_some(),
                            ),
                            _ => (0, false, false),
                        };
                        samples.push(Sample {
                            client,
                            sent,
                            done,
                            status,
                            problem,
                            retry_after,
                        });
                        tokio::time::sleep(pause).await;
                    }
                    samples
                })
            })
            .collect();
        Load {
            origin,
            stop,
            tasks,
        }
    }

    /// The instant the load started; [`Sample`] times count from it.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// Now, as a [`Sample`] time.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Stops every client after its request in flight; every request made,
    /// ordered by the time its answer came.
    pub async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.unwrap());
        }
        all.sort_by_key(|s| s.done);
        all
    }
}

/// A response as the tests see it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The problem+json body; fails unless the content type says so.
    pub fn problem(&self) -> serde_json::Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "status {} body {}",
            self.status,
            self.text()
        );
        let body = self.json();
        assert_eq!(body["status"], self.status, "{body}");
        body
    }

    /// The `r` (remaining) and `t` parameters of the `RateLimit` item of `rule`.
    pub fn ratelimit(&self, rule: &str) -> Option<(u64, u64)> {
        let item = self.sf_item("ratelimit", rule)?;
        Some((sf_param(item, "r")?, sf_param(item, "t")?))
    }

    /// The `q` (quota) and `w` (window) parameters of the `RateLimit-Policy`
    /// item of `rule`.
    pub fn ratelimit_policy(&self, rule: &str) -> Option<(u64, u64)> {
        let item = self.sf_item("ratelimit-policy", rule)?;
        Some((sf_param(item, "q")?, sf_param(item, "w")?))
    }

    /// The item of Structured Field list `field` named `"<rule>"`.
    fn sf_item(&self, field: &str, rule: &str) -> Option<&str> {
        self.headers
            .get_all(field)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find(|i| i.starts_with(&format!("\"{rule}\";")))
    }

    pub fn retry_after(&self) -> Option<u64> {
        self.header("retry-after").and_then(|v| v.parse().ok())
    }
}

fn sf_param(item: &str, name: &str) -> Option<u64> {
    item.split(';')
        .skip(1)
        .find_map(|p| p.trim().strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
}

/// An HTTP/1.1 client with keep-alive.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    pub fn new() -> Self {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Reply, String> {
        let mut req = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
            .map_err(|e| e.to_string())?;
        let res = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", url, headers, None)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    pub async fn delete(&self, url: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("DELETE", url, headers, None)
            .await
            .unwrap_or_else(|e| panic!("DELETE {url}: {e}"))
    }

    pub async fn post_json(&self, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut h = headers.to_vec();
        h.push(("content-type", "application/json"));
        self.send("POST", url, &h, Some(body))
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"))
    }

    /// `GET /admin/rules/<rule>/keys/<key>` on `fg`: the counters of one key.
    pub async fn counters(&self, fg: &Floodgate, rule: &str, key: &str) -> serde_json::Value {
        let r = self
            .get(
                &fg.admin_url(&format!("/admin/rules/{rule}/keys/{key}")),
                &[AUTH],
            )
            .await;
        assert_eq!(r.status, 200, "{rule} {key}: {}", r.text());
        r.json()
    }

    /// `POST /v1/check` on `fg`.
    pub async fn check(&self, fg: &Floodgate, rule: &str, key: &str, cost: u64) -> Reply {
        let body = serde_json::json!({ "rule": rule, "key": key, "cost": cost }).to_string();
        self.post_json(&fg.url("/v1/check"), &[], &body).await
    }
}

/// One HTTP/1.1 connection written to byte by byte, for requests no client
/// library would send (non-UTF-8 header values) and for proving that one
/// keep-alive connection survives something.
pub struct RawConn {
    stream: TcpStream,
    /// Bytes read past the end of the last response.
    pending: Vec<u8>,
}

/// A response read off a [`RawConn`].
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl RawConn {
    pub fn connect(addr: SocketAddr) -> Self {
        Self::try_connect(addr).unwrap()
    }

    /// [`RawConn::connect`], the failure returned.
    pub fn try_connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(RawConn {
            stream,
            pending: Vec::new(),
        })
    }

    /// Bounds how long a read waits (10 s from `connect`).
    pub fn set_read_timeout(&self, within: Duration) {
        self.stream.set_read_timeout(Some(within)).unwrap();
    }

    /// Writes `request` as is and reads one response; `Err` when the server
    /// closed the connection (or timed out) instead of answering.
    pub fn roundtrip(&mut self, request: &[u8]) -> Result<RawReply, String> {
        self.stream
            .write_all(request)
            .map_err(|e| format!("write: {e}"))?;
        self.read_response()
    }

    /// `GET path` with the given extra header lines, keeping the connection open.
    pub fn get(&mut self, path: &str, extra: &[&str]) -> Result<RawReply, String> {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
        for line in extra {
            req.push_str(line);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        self.roundtrip(req.as_bytes())
    }

    /// Writes every request at once (HTTP/1.1 pipelining, from a second
    /// thread so neither side's buffers can fill up and stall the other)
    /// and reads one response per request, in order.
    pub fn pipeline(&mut self, requests: Vec<Vec<u8>>) -> Result<Vec<RawReply>, String> {
        let n = requests.len();
        let mut writer = self.stream.try_clone().map_err(|e| e.to_string())?;
        let writing = std::thread::spawn(move || -> std::io::Result<()> {
            let mut batch = Vec::with_capacity(64 * 1024);
            for request in requests {
                batch.extend_from_slice(&request);
                if batch.len() >= 32 * 1024 {
                    writer.write_all(&batch)?;
                    batch.clear();
                }
            }
            writer.write_all(&batch)
        });
        let replies = (0..n)
            .map(|_| self.read_response())
            .collect::<Result<Vec<_>, _>>();
        writing
            .join()
            .map_err(|_| "the writer thread panicked".to_owned())?
            .map_err(|e| format!("write: {e}"))?;
        replies
    }

    fn fill(&mut self) -> Result<(), String> {
        let mut buf = [0u8; 16 * 1024];
        let n = self
            .stream
            .read(&mut buf)
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed by the server".into());
        }
        self.pending.extend_from_slice(&buf[..n]);
        Ok(())
    }

    /// Reads one response to a request written before.
    pub fn read_reply(&mut self) -> Result<RawReply, String> {
        self.read_response()
    }

    fn read_response(&mut self) -> Result<RawReply, String> {
        let head_end = loop {
            if let Some(i) = find(&self.pending, b"\r\n\r\n") {
                break i;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.pending[..head_end]).into_owned();
        self.pending.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let body = if let Some(len) = get("content-length") {
            let len: usize = len.parse().map_err(|_| "bad content-length")?;
            while self.pending.len() < len {
                self.fill()?;
            }
            self.pending.drain(..len).collect()
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.pending, b"\r\n") {
                        break i;
                    }
                    self.fill()?;
                };
                let size_text = String::from_utf8_lossy(&self.pending[..line_end]).into_owned();
                let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                    .map_err(|_| format!("bad chunk size {size_text:?}"))?;
                self.pending.drain(..line_end + 2);
                while self.pending.len() < size + 2 {
                    self.fill()?;
                }
                body.extend(self.pending.drain(..size));
                self.pending.drain(..2);
                if size == 0 {
                    break body;
                }
            }
        } else if status == 204 || status == 304 || status < 200 {
            Vec::new()
        } else {
            // Delimited by the end of the connection.
            loop {
                if self.fill().is_err() {
                    break std::mem::take(&mut self.pending);
                }
            }
        };
        Ok(RawReply {
            status,
            headers,
            body,
        })
    }
}

/// How the clients of a [`ChurnLoad`] use connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Connect, send one request, read the answer, close: like
    /// `requests.get` or `curl` in a loop.
    NewConnectionPerRequest,
    /// Keep one connection for request after request; open a new one only
    /// after an answer that says `Connection: close`. Nothing else is
    /// forgiven: a connection that closes without that, under a request,
    /// is a failed request.
    KeepAlive,
}

/// What the clients of a [`ChurnLoad`] saw.
#[derive(Debug, Default)]
pub struct ChurnCount {
    /// Requests answered 200.
    pub ok: u64,
    /// Requests that failed: no connection, an error writing or reading,
    /// no answer within 10 s, or a status other than 200.
    pub failed: u64,
    /// The first few failures, described.
    pub failures: Vec<String>,
    /// Answers that said `Connection: close`.
    pub told_to_close: u64,
}

/// Clients on threads of their own, each sending `GET path` to `addr` one
/// request after another (with `pause` between them) until
/// [`ChurnLoad::stop`], and counting every outcome: for what happens to
/// connections while the server restarts.
pub struct ChurnLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<std::thread::JoinHandle<ChurnCount>>,
}

impl ChurnLoad {
    pub fn start(
        addr: SocketAddr,
        path: &str,
        clients: usize,
        reuse: Reuse,
        pause: Duration,
    ) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                let path = path.to_owned();
                std::thread::spawn(move || churn(addr, &path, reuse, pause, &stop))
            })
            .collect();
        ChurnLoad { stop, clients }
    }

    /// Stops every client after its request in flight: their counts, summed.
    pub fn stop(self) -> ChurnCount {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = ChurnCount::default();
        for client in self.clients {
            let count = client.join().unwrap();
            all.ok += count.ok;
            all.failed += count.failed;
            all.told_to_close += count.told_to_close;
            all.failures.extend(count.failures);
        }
        all.failures.truncate(10);
        all
    }
}

fn churn(
    addr: SocketAddr,
    path: &str,
    reuse: Reuse,
    pause: Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> ChurnCount {
    let mut count = ChurnCount::default();
    let mut kept: Option<RawConn> = None;
    let fail = |count: &mut ChurnCount, what: String| {
        count.failed += 1;
        if count.failures.len() < 10 {
            count.failures.push(what);
        }
    };
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut conn = match kept.take() {
            Some(conn) => conn,
            None => match RawConn::try_connect(addr) {
                Ok(conn) => conn,
                Err(e) => {
                    fail(&mut count, format!("connect: {e}"));
                    continue;
                }
            },
        };
        match conn.get(path, &[]) {
            Ok(reply) if reply.status == 200 => {
                count.ok += 1;
                let close = reply
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                count.told_to_close += u64::from(close);
                if reuse == Reuse::KeepAlive && !close {
                    kept = Some(conn);
                }
            }
            Ok(reply) => fail(
                &mut count,
                format!("status {}: {}", reply.status, reply.text()),
            ),
            Err(e) => fail(&mut count, e),
        }
        std::thread::sleep(pause);
    }
    count
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A small real upstream: echoes method, uri, headers and body as JSON (with
/// an `x-upstream: echo` response header), `/slow?ms=N` answers after N ms,
/// `/drip?chunks=N&ms=M` streams N lines `drip`, each after a pause of M ms,
/// `/status/<code>` answers with that status.
pub struct Upstream {
    pub addr: SocketAddr,
    /// Requests the echo route has answered.
    pub hits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// [`Upstream::start`] on a given address (a fixed port: the deploy
    /// walk's API on 127.0.0.1:3000, as deploy/floodgate.toml expects).
    pub async fn start_on(addr: SocketAddr) -> Self {
        use axum::body::Bytes as AxBytes;
        use axum::extract::{Path, Query, Request};
        use axum::routing::any;
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = hits.clone();
        let app = axum::Router::new()
            .route(
                "/slow",
                any(|Query(q): Query<HashMap<String, u64>>| async move {
                    tokio::time::sleep(Duration::from_millis(q.get("ms").copied().unwrap_or(500)))
                        .await;
                    "slow done"
                }),
            )
            .route(
                "/drip",
                any(|Query(q): Query<HashMap<String, u64>>| async move {
                    let (mut tx, body) = http_body_util::channel::Channel::<
                        AxBytes,
                        std::convert::Infallible,
                    >::new(1);
                    let chunks = q.get("chunks").copied().unwrap_or(3);
                    let pause = Duration::from_millis(q.get("ms").copied().unwrap_or(500));
                    tokio::spawn(async move {
                        for _ in 0..chunks {
                            tokio::time::sleep(pause).await;
                            if tx.send_data(AxBytes::from_static(b"drip\n")).await.is_err() {
                                break;
                            }
                        }
                    });
                    axum::body::Body::new(body)
                }),
            )
            .route(
                "/status/{code}",
                any(|Path(code): Path<u16>| async move {
                    (
                        http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::OK),
                        "as asked",
                    )
                }),
            )
            .fallback(any(move |req: Request| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let (parts, body) = req.into_parts();
                    let body: AxBytes = axum::body::to_bytes(body, 4 << 20)
                        .await
                        .unwrap_or_default();
                    // Repeated headers are joined the way a proxy must keep them.
                    let mut headers: HashMap<String, String> = HashMap::new();
                    for (k, v) in &parts.headers {
                        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                        headers
                            .entry(k.to_string())
                            .and_modify(|e| {
                                e.push_str(", ");
                                e.push_str(&v);
                            })
                            .or_insert(v);
                    }
                    (
                        [("x-upstream", "echo")],
                        axum::Json(serde_json::json!({
                            "method": parts.method.as_str(),
                            "uri": parts.uri.to_string(),
                            "headers": headers,
                            "body": String::from_utf8_lossy(&body),
                        })),
                    )
                }
            }));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("upstream: bind {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream { addr, hits, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// `floodgate check-config FILE` with `config` as the file: (exit code, stdout, stderr).
pub fn check_config(config: &str) -> (i32, String, String) {
    let dir = tempdir::Dir::new("check");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, fill(config, free_addr(), free_addr())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_floodgate"))
        .arg("check-config")
        .arg(&path)
        .env_remove("FLOODGATE_REDIS_URL")
        .env_remove("FLOODGATE_ADMIN_TOKEN")
        .env_remove("FLOODGATE_ADMIN_LISTEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `floodgate serve --config FILE` with `config` as the file, expected to
/// exit on its own within 10 s: (exit code, stderr).
pub fn serve_expecting_exit(config: &str) -> (i32, String) {
    let dir = tempdir::Dir::new("serve");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, fill(config, free_addr(), free_addr())).unwrap();
    let log_path = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_floodgate"))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .env_remove("FLOODGATE_REDIS_URL")
        .env_remove("FLOODGATE_ADMIN_TOKEN")
        .env_remove("FLOODGATE_ADMIN_LISTEN")
        .env_remove("FLOODGATE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "floodgate serve kept running with a config it should refuse:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(&log_path).unwrap_or_default(),
    )
}

/// Polls `probe` every 20 ms until it gives a value; fails after `within`.
pub fn wait_for<T>(within: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One PM2 instance as `pm2 jlist` shows it.
#[derive(Debug, Clone)]
pub struct Pm2Process {
    pub name: String,
    pub pid: u32,
    pub online: bool,
    pub restarts: u64,
    /// Runs shorter than `min_uptime` in a row, as PM2 counts them.
    pub unstable_restarts: u64,
}

/// The instances in the output of `pm2 jlist` (which may start with PM2's
/// own messages, such as "Spawning PM2 daemon"); `None` if it holds no
/// JSON list.
pub fn parse_pm2_jlist(stdout: &str) -> Option<Vec<Pm2Process>> {
    let list: serde_json::Value = serde_json::from_str(stdout[stdout.find('[')?..].trim()).ok()?;
    Some(
        list.as_array()?
            .iter()
            .map(|p| Pm2Process {
                name: p["name"].as_str().unwrap_or_default().to_owned(),
                pid: p["pid"].as_u64().unwrap_or(0) as u32,
                online: p["pm2_env"]["status"] == "online",
                restarts: p["pm2_env"]["restart_time"].as_u64().unwrap_or(0),
                unstable_restarts: p["pm2_env"]["unstable_restarts"].as_u64().unwrap_or(0),
            })
            .collect(),
    )
}
