//! # floodgate-testkit
//!
//! Test support shared by floodgate's crates: ports chosen at run time and
//! throwaway `redis-server` processes. Not published.
//!
//! - [`free_port`]: a loopback TCP port nobody listens on right now.
//! - [`RedisServer`]: a private `redis-server` (no persistence, its own
//!   temporary directory) that tests may kill, freeze, stop and restart on
//!   the same port; killed when dropped. [`RedisServer::start_persistent`]
//!   keeps its data across restarts in an append-only file.
//! - [`shared_redis_url`]: one Redis for every test of a test binary that only
//!   needs "a Redis": `$FLOODGATE_TEST_REDIS_URL` when set (`scripts/test.sh`
//!   starts one), else a server spawned on first use. Tests sharing it keep
//!   their keys apart with [`unique_prefix`].
//!
//! A missing `redis-server` is a test failure with instructions, never a skip.
//!
//! ```no_run
//! use floodgate_testkit::RedisServer;
//!
//! let mut redis = RedisServer::start();
//! let url = redis.url(); // redis://127.0.0.1:<port>/0
//! redis.kill(); // SIGKILL: the store under test sees a dead Redis
//! redis.restart(); // same port, empty data set
//! # let _ = url;
//! ```

pub mod topology;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The environment variable naming a Redis every test may share.
pub const SHARED_REDIS_URL_VAR: &str = "FLOODGATE_TEST_REDIS_URL";

/// How long a starting or stopping `redis-server` may take before the test fails.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// A TCP port on 127.0.0.1 that was free when this was called.
///
/// Another process may take it before the caller binds it; [`RedisServer::start`]
/// retries with a new port when that happens.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("binding 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("local address of a bound listener")
        .port()
}

/// A key prefix no other test (in this or any concurrent test process) uses,
/// so tests can share one Redis without seeing each other's keys.
///
/// `label` should name the test; it must not contain `{`, `}`, `*`, `?` or
/// `[` so the prefix stays usable as a hash-tag-free, glob-safe key prefix.
pub fn unique_prefix(label: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "fgtest:{label}:{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The URL of a Redis that any test may use, with its own [`unique_prefix`].
///
/// `$FLOODGATE_TEST_REDIS_URL` when set and non-empty; otherwise a
/// `redis-server` started on first use, shared by the rest of this test
/// binary and killed shortly after the binary exits.
pub fn shared_redis_url() -> String {
    static SHARED: OnceLock<String> = OnceLock::new();
    SHARED
        .get_or_init(|| match std::env::var(SHARED_REDIS_URL_VAR) {
            Ok(url) if !url.trim().is_empty() => url,
            _ => {
                let server = RedisServer::start();
                server.kill_when_process_exits();
                let url = server.url();
                // Lives as long as the process; the watchdog cleans up after it.
                std::mem::forget(server);
                url
            }
        })
        .clone()
}

/// A `redis-server` process of this test's own, on a free loopback port, with
/// a temporary working directory and, unless started with
/// [`RedisServer::start_persistent`], persistence off. Killed (and its
/// directory removed) when dropped.
#[derive(Debug)]
pub struct RedisServer {
    /// The port it listens on; kept across [`RedisServer::restart`] so clients
    /// can reconnect to the same address.
    port: u16,
    /// Its working directory (log file, and the append-only file of a
    /// persistent server); kept across restarts, removed on drop.
    dir: PathBuf,
    /// Whether every write goes to an append-only file, fsynced before the
    /// reply, so that a restarted server has the data back.
    persistent: bool,
    /// The running process, or `None` after `kill`/`stop`.
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    ///
    /// # Panics
    /// When `redis-server` is not installed (with instructions to install it)
    /// or does not come up within a few seconds (with its log).
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// [`RedisServer::start`] with AOF persistence (`appendonly yes`,
    /// `appendfsync always`): every write acknowledged to a client is in the
    /// append-only file, and a server restarted with
    /// [`RedisServer::restart`], even after [`RedisServer::kill`], loads it
    /// back. Its directory is on tmpfs where there is one (see
    /// `memory_backed_dir`).
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    pub fn start_persistent() -> Self {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> Self {
        ensure_redis_server_installed();
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut server = RedisServer {
                port,
                dir: if persistent {
                    memory_backed_dir(port)
                } else {
                    temp_dir(port)
                },
                persistent,
                child: None,
            };
            match server.spawn() {
                Ok(()) => return server,
                // Most likely another process took the port first: try another.
                Err(e) => last_error = e,
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address, 127.0.0.1:port.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Freezes the process (SIGSTOP): connections stay open but nothing is
    /// answered, as with a server stuck in a long command or swapped out.
    ///
    /// # Panics
    /// When the server is not running or the signal cannot be sent.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a [`RedisServer::pause`]d process run again (SIGCONT); it then
    /// answers everything that was sent to it meanwhile.
    ///
    /// # Panics
    /// As [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("SIG{name} to a redis-server that is not running"));
        send_signal(pid, name);
    }

    /// Sends one command on a connection of its own and returns the reply:
    /// simple strings, integers and bulk strings as their text, arrays as
    /// their elements one per line, a nil as an empty string; an error reply
    /// (or no reply within 5 s) as `Err`.
    ///
    /// The connection is a normal client, but `CLIENT KILL` skips the
    /// connection that sends it, so `command(&["CLIENT", "KILL", "TYPE",
    /// "normal"])` drops every other client and answers how many.
    pub fn command(&self, args: &[&str]) -> Result<String, String> {
        let mut conn = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(1))
            .map_err(|e| format!("connecting to {}: {e}", self.addr()))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        conn.write_all(&request).map_err(|e| e.to_string())?;
        read_reply(&mut std::io::BufReader::new(conn))
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the process with SIGKILL (no shutdown, open connections are
    /// reset) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process cleanly (`SHUTDOWN NOSAVE`), killing it if it does
    /// not exit within a few seconds.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(mut conn) = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(1)) {
            let _ = conn.write_all(b"SHUTDOWN NOSAVE\r\n");
        }
        let deadline = Instant::now() + START_DEADLINE;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops the server if it runs, then starts a new one on the same port
    /// and working directory and waits for `PING`. The data set is empty,
    /// unless the server is [persistent](RedisServer::start_persistent):
    /// then it is what the append-only file holds.
    ///
    /// # Panics
    /// When the new server does not come up.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("redis-server did not restart on port {}: {e}", self.port);
        }
    }

    /// Starts the process on `self.port` and waits until it answers PING.
    fn spawn(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        let log = self.dir.join("redis.log");
        let appendonly = if self.persistent { "yes" } else { "no" };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", appendonly])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if ping(self.addr()) {
                return Ok(());
            }
            if !self.is_running() || Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "no PONG on port {}; log:\n{}",
                    self.port,
                    read_tail(&log)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Has a detached shell kill this server and remove its directory once
    /// the current process has exited: for a server that is never dropped.
    fn kill_when_process_exits(&self) {
        let Some(child) = &self.child else {
            return;
        };
        let script = r#"while kill -0 "$0" 2>/dev/null; do sleep 0.2; done; kill -9 "$1" 2>/dev/null; rm -rf "$2""#;
        let spawned = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(std::process::id().to_string())
            .arg(child.id().to_string())
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Err(e) = spawned {
            panic!("starting the watchdog of the shared redis-server: {e}");
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Fails the test, with instructions, when `redis-server` cannot be run.
fn ensure_redis_server_installed() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "redis-server is not installed or not on PATH. floodgate's tests run \
             against a real Redis: install it (Debian/Ubuntu: `apt-get install \
             redis-server`), or run `scripts/test.sh`, which installs it, or point \
             {SHARED_REDIS_URL_VAR} at a running Redis for the tests that share one."
        );
    });
}

/// Reads one RESP reply (see [`RedisServer::command`]).
fn read_reply(reader: &mut impl std::io::BufRead) -> Result<String, String> {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("reading a reply: {e}"))?;
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at_checked(1).ok_or("the connection closed")?;
    let number = || {
        rest.parse::<i64>()
            .map_err(|_| format!("bad length in reply {line:?}"))
    };
    match kind {
        "+" | ":" => Ok(rest.to_owned()),
        "-" => Err(rest.to_owned()),
        "$" => {
            let Ok(len) = usize::try_from(number()?) else {
                return Ok(String::new());
            };
            let mut data = vec![0; len + 2];
            reader
                .read_exact(&mut data)
                .map_err(|e| format!("reading a bulk reply: {e}"))?;
            data.truncate(len);
            Ok(String::from_utf8_lossy(&data).into_owned())
        }
        "*" => {
            let count = usize::try_from(number()?).unwrap_or(0);
            let items = (0..count)
                .map(|_| read_reply(reader))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(items.join("\n"))
        }
        _ => Err(format!("unexpected reply {line:?}")),
    }
}

/// Whether a Redis answers PING at `addr`.
fn ping(addr: SocketAddr) -> bool {
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    if conn.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    conn.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// Sends signal `name` (`STOP`, `CONT`, `HUP`, ...) to process `pid` with
/// kill(1).
///
/// # Panics
/// When kill cannot run or fails.
pub fn send_signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap_or_else(|e| panic!("running kill -{name} {pid}: {e}"));
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// A path under the system temp directory that no other call returns, in
/// this process or in any other running one: the process id and a
/// per-process counter make it unique (a port number does not: the kernel
/// may hand the same free port to two threads one after the other).
pub fn unique_temp_path(label: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "floodgate-{label}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A fresh directory for one server.
fn temp_dir(port: u16) -> PathBuf {
    unique_temp_path(&format!("redis-{port}"))
}

/// A fresh directory for a persistent server: under `/dev/shm` when there is
/// one. On a disk that other builds keep busy, one `fsync` of the append-only
/// file can take seconds and stall the whole server; on tmpfs it is
/// immediate. A killed process loses nothing either way (what it wrote is in
/// the page cache): only a power cut tells a disk from tmpfs, and no test
/// cuts the power.
fn memory_backed_dir(port: u16) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let dir = temp_dir(port);
    match dir.file_name() {
        Some(name) if shm.is_dir() => shm.join(name),
        _ => dir,
    }
}

/// The last lines of a log file, for failure messages.
fn read_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_starts_answers_and_restarts_on_the_same_port() {
        let mut server = RedisServer::start();
        let port = server.port();
        assert!(ping(server.addr()));
        server.kill();
        assert!(!server.is_running());
        assert!(!ping(server.addr()));
        server.restart();
        assert_eq!(server.port(), port);
        assert!(ping(server.addr()));
        server.stop();
        assert!(!ping(server.addr()));
    }

    #[test]
    fn a_persistent_server_keeps_its_data_through_kill_and_restart() {
        let mut server = RedisServer::start_persistent();
        assert_eq!(server.command(&["SET", "k", "v"]), Ok("OK".to_owned()));
        assert_eq!(server.command(&["INCRBY", "n", "42"]), Ok("42".to_owned()));
        server.kill();
        server.restart();
        assert_eq!(server.command(&["GET", "k"]), Ok("v".to_owned()));
        assert_eq!(server.command(&["GET", "n"]), Ok("42".to_owned()));
        assert_eq!(server.command(&["GET", "none"]), Ok(String::new()));
        assert!(server.command(&["NO-SUCH-COMMAND"]).is_err());

        let mut plain = RedisServer::start();
        assert_eq!(plain.command(&["SET", "k", "v"]), Ok("OK".to_owned()));
        plain.kill();
        plain.restart();
        assert_eq!(plain.command(&["EXISTS", "k"]), Ok("0".to_owned()));
    }

    #[test]
    fn a_paused_server_answers_nothing_until_resumed() {
        let server = RedisServer::start();
        let pid = server.pid().expect("a running server has a pid");
        assert!(pid > 0);
        server.pause();
        assert!(!ping(server.addr()), "a frozen server answered PING");
        server.resume();
        assert!(ping(server.addr()));
        assert_eq!(
            server.command(&["RPUSH", "l", "a", "b"]),
            Ok("2".to_owned())
        );
        assert_eq!(
            server.command(&["LRANGE", "l", "0", "-1"]),
            Ok("a\nb".to_owned())
        );
    }

    #[test]
    fn unique_prefixes_differ() {
        assert_ne!(unique_prefix("a"), unique_prefix("a"));
    }

    #[test]
    fn shared_url_answers() {
        let url = shared_redis_url();
        let addr = url
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .expect("host:port in the url");
        let addr = std::net::ToSocketAddrs::to_socket_addrs(addr)
            .expect("the shared url names a reachable host")
            .next()
            .expect("the shared url's host resolves");
        assert!(ping(addr), "no PONG from {url}");
    }
}
