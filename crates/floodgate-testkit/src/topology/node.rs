//! One `redis-server` process of a set-up (a data node or a Sentinel), and
//! the pieces every set-up shares: start-up on a free port with retries,
//! waiting for readiness, signals, commands over the `redis` crate.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::{Client, FromRedisValue};
use tempfile::TempDir;

use crate::command;
use crate::process::{read_tail, send_signal, work_dir};
use crate::server::ensure_redis_server_installed;
use crate::unique::free_port;

/// How long a set-up may take to come up before the test fails.
pub(crate) const SETUP_DEADLINE: Duration = Duration::from_secs(30);

/// Every node listens on loopback only and keeps nothing on disk.
const LOOPBACK_NO_PERSISTENCE: [&str; 6] =
    ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];

/// One `redis-server` process (a data node or a Sentinel) of a set-up.
#[derive(Debug)]
pub(crate) struct Node {
    /// Its (TLS, for a TLS node) port.
    pub(crate) port: u16,
    /// The process.
    pub(crate) child: Child,
    /// Working directory and log; removed on drop, after the process is
    /// killed.
    dir: TempDir,
}

impl Node {
    /// Starts `redis-server <args>` in `dir` with its log there; does not
    /// wait for it.
    fn spawn(port: u16, dir: TempDir, args: &[OsString]) -> Node {
        ensure_redis_server_installed();
        let child = Command::new("redis-server")
            .args(args)
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(dir.path().join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning redis-server: {e}"));
        Node { port, child, dir }
    }

    /// Starts a node on a free port and waits until `up` holds. `make` gives
    /// the arguments for a port and a fresh working directory. A free port
    /// can be taken (by another test's server, or as the local port of any
    /// outgoing connection) between being picked and being bound; when the
    /// process exits before it is up, another port is tried, up to 5 in all.
    pub(crate) fn launch(
        what: &str,
        make: impl Fn(u16, &Path) -> Vec<OsString>,
        mut up: impl FnMut(&Node) -> bool,
    ) -> Node {
        let mut logs = Vec::new();
        for _ in 0..5 {
            let port = free_port();
            let dir = work_dir(&format!("redis-{port}"), false);
            let args = make(port, dir.path());
            let mut node = Node::spawn(port, dir, &args);
            let deadline = Instant::now() + SETUP_DEADLINE;
            loop {
                if up(&node) {
                    return node;
                }
                if !matches!(node.child.try_wait(), Ok(None)) {
                    logs.push(format!("port {port}:\n{}", node.log_tail()));
                    break;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "{what} on port {port} did not come up; log:\n{}",
                        node.log_tail()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!(
            "{what} exited before coming up on 5 ports; logs:\n{}",
            logs.join("\n---\n")
        );
    }

    /// Launches a plain data node (no persistence, loopback only, plus
    /// `extra(port)`) and waits until it answers `PING`.
    pub(crate) fn data(what: &str, extra: impl Fn(u16) -> Vec<String>) -> Node {
        Node::launch(
            what,
            |port, _| {
                let mut args = data_args(port, false);
                args.extend(extra(port).into_iter().map(OsString::from));
                args
            },
            |n| command::ping(&n.client()),
        )
    }

    /// A client of its plain-TCP port.
    pub(crate) fn client(&self) -> Client {
        command::client(&format!("redis://127.0.0.1:{}", self.port))
    }

    /// `args` sent to it over plain TCP; the reply as `T`.
    pub(crate) fn query<T: FromRedisValue>(&self, args: &[&str]) -> Result<T, String> {
        command::query(&self.client(), args)
    }

    /// [`Node::query`], panicking on failure.
    pub(crate) fn must<T: FromRedisValue>(&self, args: &[&str]) -> T {
        self.query(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until `ready` holds, failing with the log when the process
    /// exits or the deadline passes.
    pub(crate) fn wait(&mut self, what: &str, mut ready: impl FnMut(&Node) -> bool) {
        let deadline = Instant::now() + SETUP_DEADLINE;
        loop {
            if ready(self) {
                return;
            }
            if !matches!(self.child.try_wait(), Ok(None)) || Instant::now() >= deadline {
                panic!(
                    "{what} on port {} did not come up; log:\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes the process (SIGSTOP): its connections stay open and nothing
    /// is answered. Dropping the node still kills it.
    pub(crate) fn pause(&self) {
        send_signal(self.child.id(), "STOP");
    }

    /// Lets a paused process run again (SIGCONT).
    pub(crate) fn resume(&self) {
        send_signal(self.child.id(), "CONT");
    }

    /// The end of its log, for failure messages.
    pub(crate) fn log_tail(&self) -> String {
        read_tail(&self.dir.path().join("redis.log"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Before the directory goes (the `TempDir` field, dropped next).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `args` as process arguments.
pub(crate) fn os_args(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// The arguments every data node starts with on `port` (plain TCP) or, with
/// `tls`, `--port 0 --tls-port <port>`: loopback only, nothing on disk.
pub(crate) fn data_args(port: u16, tls: bool) -> Vec<OsString> {
    let mut args = if tls {
        os_args(&["--port", "0", "--tls-port", &port.to_string()])
    } else {
        os_args(&["--port", &port.to_string()])
    };
    args.extend(os_args(&LOOPBACK_NO_PERSISTENCE));
    args
}
