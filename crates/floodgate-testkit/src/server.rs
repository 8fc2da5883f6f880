//! [`RedisServer`]: a `redis-server` of one test's own; [`shared_redis_url`]:
//! one Redis for every test that only needs "a Redis".

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use redis::Client;
use tempfile::TempDir;

use crate::command;
use crate::process::{read_tail, send_signal, work_dir};
use crate::unique::free_port;

/// The environment variable naming a Redis every test may share.
pub const SHARED_REDIS_URL_VAR: &str = "FLOODGATE_TEST_REDIS_URL";

/// How long a starting or stopping `redis-server` may take before the test fails.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// The URL of a Redis that any test may use, with its own
/// [`crate::unique_prefix`].
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
    dir: TempDir,
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
    /// `process::work_dir`).
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
                dir: work_dir(&format!("redis-{port}"), persistent),
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

    /// A client of this server.
    fn client(&self) -> Client {
        command::client(&self.url())
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
        command::query_text(&self.client(), args)
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
        // The server closes the connection instead of answering: the
        // error says nothing.
        let _ = command::query::<redis::Value>(&self.client(), &["SHUTDOWN", "NOSAVE"]);
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
        let log = self.dir.path().join("redis.log");
        let appendonly = if self.persistent { "yes" } else { "no" };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", appendonly])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning redis-server: {e}"))?;
        self.child = Some(child);
        let client = self.client();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if command::ping(&client) {
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
            .arg(self.dir.path())
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
        // Before the directory goes (the `TempDir` field, dropped next).
        self.kill();
    }
}

/// Fails the test, with instructions, when `redis-server` cannot be run.
pub(crate) fn ensure_redis_server_installed() {
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

/// The Redis a benchmark runs against: `$FLOODGATE_BENCH_REDIS_URL` when
/// set, else a private server started for the run (killed when the
/// returned handle drops).
pub fn bench_redis() -> (Option<RedisServer>, String) {
    match std::env::var("FLOODGATE_BENCH_REDIS_URL") {
        Ok(url) if !url.is_empty() => (None, url),
        _ => {
            let server = RedisServer::start();
            let url = server.url();
            (Some(server), url)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a Redis answers `PING` at `url`.
    fn ping(url: &str) -> bool {
        command::ping(&command::client(url))
    }

    #[test]
    fn server_starts_answers_and_restarts_on_the_same_port() {
        let mut server = RedisServer::start();
        let port = server.port();
        assert!(ping(&server.url()));
        server.kill();
        assert!(!server.is_running());
        assert!(!ping(&server.url()));
        server.restart();
        assert_eq!(server.port(), port);
        assert!(ping(&server.url()));
        server.stop();
        assert!(!ping(&server.url()));
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
        assert!(!ping(&server.url()), "a frozen server answered PING");
        server.resume();
        assert!(ping(&server.url()));
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
    fn shared_url_answers() {
        let url = shared_redis_url();
        assert!(ping(&url), "no PONG from {url}");
    }
}
