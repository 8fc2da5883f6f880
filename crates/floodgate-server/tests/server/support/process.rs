//! The processes the tests start: the real `floodgate` binary, and any
//! program run in a process group of its own.
//!
//! Every [`Floodgate`] writes its stderr to a log file; when it is dropped the
//! log is checked: "panicked" (a panic anywhere in the server fails the
//! test that ran it), and [`check_log_lines`]. The log is printed when the
//! test itself is failing.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use floodgate_testkit::{free_port, send_signal};
use rustix::process::{Pid, Signal};
use tempfile::TempDir;

use super::host::{self, free_addr};
use super::logs::check_log_lines;
use super::wait::wait_for;
use super::{machine, procfs};

/// The admin token every test instance runs with (`FLOODGATE_ADMIN_TOKEN`).
pub(crate) const TOKEN: &str = "test-admin-token";

/// `Authorization: Bearer <TOKEN>`.
pub(crate) const AUTH: (&str, &str) = ("authorization", "Bearer test-admin-token");

/// A running `floodgate serve`, killed on drop.
pub(crate) struct Floodgate {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) admin: SocketAddr,
    /// The gRPC listener's address, for a config that says `{grpc}`.
    pub(crate) grpc: SocketAddr,
    pub(crate) config_path: PathBuf,
    log_path: PathBuf,
    _dir: TempDir,
    /// Its share of the machine, for as long as it runs.
    _machine: machine::Share,
}

impl Floodgate {
    /// Starts the binary with `config` (TOML) with `{listen}` and `{admin}`
    /// replaced by free loopback addresses; waits until both listen.
    pub(crate) fn start(config: &str) -> Self {
        Self::start_with(config, &[])
    }

    /// [`Floodgate::start`] with extra environment variables.
    pub(crate) fn start_with(config: &str, env: &[(&str, &str)]) -> Self {
        Self::start_on("127.0.0.1", config, env)
    }

    /// [`Floodgate::start`] with the main listener on `host` (`127.0.0.1`
    /// or `[::1]`).
    pub(crate) fn start_on(host: &str, config: &str, env: &[(&str, &str)]) -> Self {
        Self::start_serving(host, config, &[], env)
    }

    /// [`Floodgate::start_with`] with more arguments after `serve --config
    /// FILE` (`--workers 2`).
    pub(crate) fn start_with_args(config: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_serving("127.0.0.1", config, args, env)
    }

    fn start_serving(host: &str, config: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::on_free_ports(|| {
            let addr: SocketAddr = format!("{host}:{}", free_port()).parse().unwrap();
            let admin = free_addr();
            let grpc = free_addr();
            let dir = host::temp_dir("server");
            let config_path = dir.path().join("floodgate.toml");
            std::fs::write(&config_path, fill(config, addr, admin, grpc)).unwrap();
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
            Self::spawn(&args, [addr, admin, grpc], dir, config_path, env)
        })
    }

    /// `floodgate serve --listen <free address>` without a config: the
    /// built-in demo, its admin listener moved by `FLOODGATE_ADMIN_LISTEN`.
    pub(crate) fn start_demo() -> Self {
        Self::on_free_ports(|| {
            let (addr, admin) = (free_addr(), free_addr());
            let dir = host::temp_dir("demo");
            let config_path = dir.path().join("none.toml");
            let args = ["serve".into(), "--listen".into(), addr.to_string().into()];
            let admin_text = admin.to_string();
            let env = [("FLOODGATE_ADMIN_LISTEN", admin_text.as_str())];
            Self::spawn(&args, [addr, admin, free_addr()], dir, config_path, &env)
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
        [addr, admin, grpc]: [SocketAddr; 3],
        dir: TempDir,
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
        // Taken before the process starts: a test that has the machine
        // alone may be running.
        let share = machine::share();
        let child = cmd.spawn().expect("spawn floodgate");
        let mut fg = Floodgate {
            child,
            addr,
            admin,
            grpc,
            config_path,
            log_path,
            _dir: dir,
            _machine: share,
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
    pub(crate) async fn launch(config: impl Into<String>) -> Self {
        Self::launch_on("127.0.0.1", config).await
    }

    /// [`Floodgate::start_on`] from async code.
    pub(crate) async fn launch_on(host: &'static str, config: impl Into<String>) -> Self {
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
            // Both addresses accepting is not enough: a port picked as free
            // may have been taken by another test's instance meanwhile, and
            // this one, failing to bind it, is about to exit. It says
            // "floodgate serving" once it has bound every listener.
            if TcpStream::connect(self.admin).is_ok()
                && TcpStream::connect(self.addr).is_ok()
                && (!logs_info() || self.log().contains("floodgate serving"))
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "floodgate did not start listening on {} and {} within 60s ({})\n{}",
            self.addr,
            self.admin,
            procfs::describe(self.pid()),
            self.log()
        );
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stderr so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; false after `within`.
    pub(crate) fn wait_for_log(&self, needle: &str, within: Duration) -> bool {
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
    pub(crate) fn rss_kib(&self) -> u64 {
        procfs::rss_kib(self.pid())
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub(crate) fn signal(&self, sig: &str) {
        send_signal(self.child.id(), sig);
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Rewrites the config file (same listen/admin addresses), atomically.
    pub(crate) fn rewrite_config(&self, config: &str) {
        let text = fill(config, self.addr, self.admin, self.grpc);
        let tmp = self.config_path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f.sync_all().unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// Waits for the process to exit; returns its exit code.
    pub(crate) fn wait_exit(&mut self, within: Duration) -> Option<i32> {
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

/// Whether instances log at info level (FLOODGATE_TEST_LOG can lower it).
fn logs_info() -> bool {
    std::env::var("FLOODGATE_TEST_LOG").map_or(true, |level| {
        ["info", "debug", "trace"]
            .iter()
            .any(|l| level.to_ascii_lowercase().contains(l))
    })
}

fn fill(config: &str, addr: SocketAddr, admin: SocketAddr, grpc: SocketAddr) -> String {
    config
        .replace("{listen}", &addr.to_string())
        .replace("{admin}", &admin.to_string())
        .replace("{grpc}", &grpc.to_string())
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

/// `floodgate check-config FILE` with `config` as the file: (exit code, stdout, stderr).
pub(crate) fn check_config(config: &str) -> (i32, String, String) {
    let dir = host::temp_dir("check");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, fill(config, free_addr(), free_addr(), free_addr())).unwrap();
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
pub(crate) fn serve_expecting_exit(config: &str) -> (i32, String) {
    let dir = host::temp_dir("serve");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, fill(config, free_addr(), free_addr(), free_addr())).unwrap();
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

/// A process started in its own process group, so it and everything it
/// starts (nginx workers, floodgate workers) can be stopped together; its
/// stdout and stderr go to a file. Stopped (TERM, then KILL) on drop.
pub(crate) struct ProcessGroup {
    child: Child,
}

impl ProcessGroup {
    pub(crate) fn spawn(mut cmd: Command, log: &Path) -> Self {
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

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub(crate) fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("process {} exited: {status}", self.pid());
        }
    }

    /// Waits for the group leader to exit; its exit code.
    pub(crate) fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let status = wait_for(within, "the process to exit", || {
            self.child.try_wait().ok().flatten()
        });
        status.code()
    }

    /// Live processes of the group.
    pub(crate) fn members(&self) -> Vec<u32> {
        procfs::processes()
            .into_iter()
            .filter(|p| p.pgid == self.pid())
            .map(|p| p.pid)
            .collect()
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if !self.members().is_empty() {
            signal_group(self.pid(), Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !self.members().is_empty() && Instant::now() < deadline {
                let _ = self.child.try_wait();
                std::thread::sleep(Duration::from_millis(50));
            }
            if !self.members().is_empty() {
                signal_group(self.pid(), Signal::KILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `signal` to process `pid`, if it is still there: for clean-ups,
/// which must not fail a test, so a failure is only printed.
pub(crate) fn signal_process(pid: u32, signal: Signal) {
    if let Some(p) = pid_of(pid)
        && let Err(e) = rustix::process::kill_process(p, signal)
        && e != rustix::io::Errno::SRCH
    {
        eprintln!("signal {signal:?} to process {pid}: {e}");
    }
}

/// [`signal_process`] for every process of group `pgid`.
fn signal_group(pgid: u32, signal: Signal) {
    if let Some(p) = pid_of(pgid)
        && let Err(e) = rustix::process::kill_process_group(p, signal)
        && e != rustix::io::Errno::SRCH
    {
        eprintln!("signal {signal:?} to process group {pgid}: {e}");
    }
}

fn pid_of(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().and_then(Pid::from_raw)
}

/// `[store]` for the memory store, or for the shared Redis under `prefix`
/// (a timeout of 2 s: a loaded machine does not turn calls into failures).
pub(crate) fn store_section(redis_prefix: Option<&str>) -> String {
    match redis_prefix {
        None => "[store]\nbackend = \"memory\"\n".to_owned(),
        Some(prefix) => format!(
            "[store]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"\ntimeout = \"2s\"\n",
            floodgate_testkit::shared_redis_url()
        ),
    }
}
