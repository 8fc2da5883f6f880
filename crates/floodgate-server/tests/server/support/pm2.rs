//! PM2: finding it, running `pm2` with a home of the test's own, reading
//! `pm2 jlist`, and stopping its daemon when the test ends.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rustix::process::Signal;

use super::host::find_program;
use super::process::signal_process;
use super::procfs::running;

/// pm2: `FLOODGATE_TEST_PM2`, else on `PATH`; a clear failure when there
/// is none.
pub(crate) fn binary() -> PathBuf {
    find_program("FLOODGATE_TEST_PM2", "pm2", &[]).unwrap_or_else(|| {
        panic!(
            "pm2 is not installed: this end-to-end test runs floodgate under PM2. \
             Run scripts/test.sh (it installs it), or `npm install -g pm2`, \
             or set FLOODGATE_TEST_PM2=/path/to/pm2"
        )
    })
}

/// One PM2 instance as `pm2 jlist` shows it.
#[derive(Debug, Clone)]
pub(crate) struct Pm2Process {
    pub(crate) name: String,
    pub(crate) pid: u32,
    pub(crate) online: bool,
    pub(crate) restarts: u64,
    /// Runs shorter than `min_uptime` in a row, as PM2 counts them.
    pub(crate) unstable_restarts: u64,
}

/// The instances in the output of `pm2 jlist` (which may start with PM2's
/// own messages, such as "Spawning PM2 daemon"); `None` if it holds no
/// JSON list.
pub(crate) fn parse_jlist(stdout: &str) -> Option<Vec<Pm2Process>> {
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

/// The pids of `list`.
pub(crate) fn pids(list: &[Pm2Process]) -> Vec<u32> {
    list.iter().map(|p| p.pid).collect()
}

/// The `pm2` command with this test's own PM2_HOME and environment.
#[derive(Clone)]
pub(crate) struct Pm2 {
    bin: PathBuf,
    pub(crate) home: PathBuf,
    env: Vec<(String, String)>,
}

impl Pm2 {
    pub(crate) fn new(bin: &Path, home: PathBuf, env: &[(&str, String)]) -> Self {
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

    pub(crate) fn run_ok(&self, args: &[&str]) -> String {
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
        parse_jlist(&String::from_utf8_lossy(&out.stdout))
    }

    pub(crate) fn instances(&self) -> Vec<Pm2Process> {
        self.try_instances()
            .unwrap_or_else(|| panic!("pm2 jlist failed or is not JSON"))
    }

    /// Whether this PM2_HOME's daemon runs (`pm2 jlist` would start one).
    fn daemon_running(&self) -> bool {
        std::fs::read_to_string(self.home.join("pm2.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .is_some_and(running)
    }
}

/// Runs `pm2 kill` on drop: every instance and the daemon stop, also when
/// the test fails.
pub(crate) struct Pm2Daemon(pub(crate) Pm2);

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
        for pid in pids.into_iter().filter(|p| *p > 0 && running(*p)) {
            signal_process(pid, Signal::KILL);
        }
    }
}
