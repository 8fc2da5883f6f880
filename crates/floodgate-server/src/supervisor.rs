//! `floodgate serve --workers N`: what PM2's cluster mode gives Node apps,
//! without Node.
//!
//! The supervisor binds the listeners once and starts N worker processes
//! (this same binary) that inherit them, so every worker accepts from one
//! kernel queue. It restarts a worker that dies, with exponential backoff,
//! and gives up on a crash loop. SIGHUP re-validates the config and replaces
//! the workers one at a time, each new worker serving before the old one
//! drains; SIGTERM or SIGINT drains every worker and exits 0.
//!
//! A worker tells the supervisor it serves by printing [`READY_LINE`] on its
//! standard output (its logs go to standard error), and that it no longer
//! accepts connections, once told to drain, by printing
//! [`STOPPED_ACCEPTING_LINE`]: a rolling restart replaces the next worker
//! (or, after the last, tells systemd it is done) only then. Workers stop
//! with their supervisor, even one killed with SIGKILL (see
//! [`announce_ready`]).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::{self, Overrides, Settings};
use crate::{listen, notify};

/// What a worker prints on standard output once it serves.
pub const READY_LINE: &str = "floodgate-worker-ready";
/// What a worker prints once it no longer accepts connections (draining).
pub const STOPPED_ACCEPTING_LINE: &str = "floodgate-worker-stopped-accepting";
/// The environment variable that marks a process as a worker (its slot number).
pub const WORKER_ENV: &str = "FLOODGATE_WORKER";

/// How long a new worker may take to serve.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a rolling restart waits for a retired worker to stop accepting.
const STOP_ACCEPTING_TIMEOUT: Duration = Duration::from_secs(5);
/// Crashes this close together count towards a crash loop.
const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// This many crashes of one slot within `CRASH_WINDOW` is a crash loop.
const CRASH_LIMIT: usize = 5;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Called by a single process once it serves: a worker tells its
/// supervisor; a process on its own tells systemd, if systemd started it.
///
/// A worker also asks to be sent SIGTERM when its supervisor dies, however
/// it dies: left running, it would go on serving the old config with
/// nobody to restart or stop it, and hold the listening socket, so a new
/// supervisor could not bind the port. It then drains like on any SIGTERM.
/// A supervisor that died before that request shows as a failed write of
/// the ready line (nobody reads the pipe any more): the worker ends itself
/// the same way.
pub fn announce_ready() {
    if is_worker() {
        follow_supervisor();
        if !tell_supervisor(READY_LINE) {
            tracing::warn!("the supervisor is gone: stopping");
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::TERM,
            );
        }
    } else {
        notify::ready("serving");
    }
}

/// SIGTERM to this process when its parent, the supervisor, dies.
#[cfg(target_os = "linux")]
fn follow_supervisor() {
    let term = Some(rustix::process::Signal::TERM);
    if let Err(e) = rustix::process::set_parent_process_death_signal(term) {
        tracing::warn!(error = %e, "cannot ask to be stopped with the supervisor");
    }
}

#[cfg(not(target_os = "linux"))]
fn follow_supervisor() {}

/// Called once the gateway no longer accepts connections: a worker tells
/// its supervisor, which then knows new connections go to the others.
pub fn announce_stopped_accepting() {
    if is_worker() {
        // A supervisor that no longer listens has nothing to wait for.
        let _ = tell_supervisor(STOPPED_ACCEPTING_LINE);
    }
}

/// Whether this process is a worker of a supervisor.
pub fn is_worker() -> bool {
    std::env::var_os(WORKER_ENV).is_some()
}

/// Writes `line` to the supervisor; false when it could not be written.
fn tell_supervisor(line: &str) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}

/// What happened to a worker.
#[derive(Debug)]
enum Event {
    Ready {
        slot: usize,
        generation: u64,
    },
    StoppedAccepting {
        slot: usize,
        generation: u64,
    },
    Exited {
        slot: usize,
        generation: u64,
        code: Option<i32>,
    },
}

/// One running worker process.
struct Worker {
    generation: u64,
    pid: Option<u32>,
    ready: bool,
}

struct Supervisor {
    exe: PathBuf,
    config: Option<PathBuf>,
    overrides: Overrides,
    listen_fd: i32,
    admin_fd: Option<i32>,
    events_tx: mpsc::UnboundedSender<Event>,
    next_generation: u64,
    /// Per slot: the current worker.
    slots: Vec<Option<Worker>>,
    /// Workers asked to drain (their exit is not a crash), with their slot.
    retiring: Vec<(usize, Worker)>,
    crashes: Vec<Vec<Instant>>,
    drain_timeout: Duration,
}

/// Runs `workers` worker processes sharing the listeners until SIGTERM/SIGINT.
pub fn run(workers: u16, config_path: Option<PathBuf>, overrides: Overrides) -> anyhow::Result<()> {
    let settings = load(config_path.as_ref(), &overrides)?;
    let main = listen::bind(settings.server.listen, settings.server.reuse_port)?;
    let admin = settings
        .admin
        .listen
        .map(|a| listen::bind(a, settings.server.reuse_port))
        .transpose()?;
    let listen_fd = listen::share_with_children(&main)?;
    let admin_fd = admin
        .as_ref()
        .map(listen::share_with_children)
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let mut sup = Supervisor {
        exe: std::env::current_exe().context("cannot find the floodgate executable")?,
        config: config_path,
        overrides,
        listen_fd,
        admin_fd,
        events_tx,
        next_generation: 0,
        slots: (0..workers).map(|_| None).collect(),
        retiring: Vec::new(),
        crashes: vec![Vec::new(); usize::from(workers)],
        drain_timeout: settings.server.drain_timeout,
    };
    if settings.store.backend == crate::config::Backend::Memory && workers > 1 {
        tracing::warn!(
            "backend = \"memory\": each worker keeps its own counters, so a client may get up to {workers}x a rule's limit; use backend = \"redis\" for one shared limit"
        );
    }
    tracing::info!(workers, listen = %settings.server.listen, "supervisor starting workers");
    let result = runtime.block_on(sup.run(events_rx));
    // The listeners stay open until every worker has exited.
    drop((main, admin));
    result
}

fn load(path: Option<&PathBuf>, overrides: &Overrides) -> anyhow::Result<Settings> {
    Ok(match path {
        Some(p) => config::load(p, overrides)?,
        None => config::demo(overrides),
    })
}

impl Supervisor {
    async fn run(&mut self, mut events: mpsc::UnboundedReceiver<Event>) -> anyhow::Result<()> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;

        // Start every worker; refuse to run if they cannot start.
        for slot in 0..self.slots.len() {
            self.spawn(slot)?;
        }
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        while self
            .slots
            .iter()
            .any(|w| w.as_ref().is_some_and(|w| !w.ready))
        {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Event::Ready { slot, generation })) => self.mark_ready(slot, generation),
                Ok(Some(Event::StoppedAccepting { .. })) => {}
                Ok(Some(Event::Exited { slot, code, .. })) => {
                    self.stop_all().await;
                    anyhow::bail!(
                        "worker {slot} exited with {code:?} before it served: workers cannot start"
                    );
                }
                Ok(None) | Err(_) => {
                    self.stop_all().await;
                    anyhow::bail!("workers did not start serving within {START_TIMEOUT:?}");
                }
            }
        }
        tracing::info!(workers = self.slots.len(), "all workers serving");
        let serving = format!("serving with {} workers", self.slots.len());
        notify::ready(&serving);

        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    notify::reloading();
                    if let Err(e) = self.rolling_restart(&mut events).await {
                        tracing::error!("rolling restart stopped: {e:#}");
                    }
                    notify::ready(&serving);
                }
                Some(event) = events.recv() => {
                    if let Err(e) = self.handle(event).await {
                        tracing::error!("{e:#}");
                        self.stop_all().await;
                        return Err(e);
                    }
                }
            }
        }
        tracing::info!("supervisor stopping: draining every worker");
        notify::stopping();
        self.stop_all().await;
        Ok(())
    }

    fn spawn(&mut self, slot: usize) -> anyhow::Result<()> {
        self.next_generation += 1;
        let generation = self.next_generation;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("serve");
        if let Some(path) = &self.config {
            cmd.arg("--config").arg(path);
        }
        if let Some(listen) = self.overrides.listen {
            cmd.arg("--listen").arg(listen.to_string());
        }
        cmd.env(WORKER_ENV, slot.to_string())
            .env(listen::LISTEN_FD_ENV, self.listen_fd.to_string())
            .env_remove(listen::ADMIN_FD_ENV)
            // Only the supervisor speaks to systemd.
            .env_remove(notify::SOCKET_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(false);
        if let Some(fd) = self.admin_fd {
            cmd.env(listen::ADMIN_FD_ENV, fd.to_string());
        }
        let mut child = cmd.spawn().context("cannot start a worker")?;
        let pid = child.id();
        tracing::info!(slot, pid, "worker started");
        let tx = self.events_tx.clone();
        let stdout = child.stdout.take();
        tokio::spawn(async move {
            if let Some(stdout) = stdout {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let event = match line.trim() {
                        READY_LINE => Event::Ready { slot, generation },
                        STOPPED_ACCEPTING_LINE => Event::StoppedAccepting { slot, generation },
                        _ => continue,
                    };
                    let _ = tx.send(event);
                }
            }
            let code = wait(&mut child).await;
            let _ = tx.send(Event::Exited {
                slot,
                generation,
                code,
            });
        });
        self.slots[slot] = Some(Worker {
            generation,
            pid,
            ready: false,
        });
        Ok(())
    }

    fn mark_ready(&mut self, slot: usize, generation: u64) {
        if let Some(w) = self.slots[slot]
            .as_mut()
            .filter(|w| w.generation == generation)
        {
            w.ready = true;
            tracing::info!(slot, pid = w.pid, "worker serving");
        }
    }

    /// Handles an event outside a rolling restart.
    async fn handle(&mut self, event: Event) -> anyhow::Result<()> {
        match event {
            Event::Ready { slot, generation } => self.mark_ready(slot, generation),
            Event::StoppedAccepting { .. } => {}
            Event::Exited {
                slot,
                generation,
                code,
            } => {
                if self.forget_retired(slot, generation) {
                    return Ok(());
                }
                let current = self.slots[slot]
                    .as_ref()
                    .is_some_and(|w| w.generation == generation);
                if !current {
                    return Ok(());
                }
                self.slots[slot] = None;
                let now = Instant::now();
                let crashes = &mut self.crashes[slot];
                crashes.retain(|t| now.duration_since(*t) < CRASH_WINDOW);
                crashes.push(now);
                if crashes.len() >= CRASH_LIMIT {
                    anyhow::bail!(
                        "worker {slot} crashed {} times within {CRASH_WINDOW:?} (last exit {code:?}): crash loop, giving up",
                        crashes.len()
                    );
                }
                let backoff = BACKOFF_START
                    .saturating_mul(1 << (crashes.len() - 1))
                    .min(BACKOFF_MAX);
                tracing::warn!(slot, ?code, ?backoff, "worker died; restarting");
                tokio::time::sleep(backoff).await;
                self.spawn(slot)?;
            }
        }
        Ok(())
    }

    fn forget_retired(&mut self, slot: usize, generation: u64) -> bool {
        let before = self.retiring.len();
        self.retiring
            .retain(|(s, w)| !(*s == slot && w.generation == generation));
        before != self.retiring.len()
    }

    /// Replaces every worker, one at a time: the new one serves before the
    /// old one is asked to drain.
    async fn rolling_restart(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Event>,
    ) -> anyhow::Result<()> {
        if let Err(e) = load(self.config.as_ref(), &self.overrides) {
            anyhow::bail!("SIGHUP: the config is invalid, keeping the running workers: {e}");
        }
        tracing::info!("SIGHUP: rolling restart");
        for slot in 0..self.slots.len() {
            let old = self.slots[slot].take();
            self.spawn(slot)?;
            let generation = self.next_generation;
            let deadline = tokio::time::Instant::now() + START_TIMEOUT;
            let served = loop {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Some(Event::Ready {
                        slot: s,
                        generation: g,
                    })) if s == slot && g == generation => {
                        self.mark_ready(s, g);
                        break true;
                    }
                    Ok(Some(Event::Exited {
                        slot: s,
                        generation: g,
                        code,
                    })) if s == slot && g == generation => {
                        tracing::error!(slot, ?code, "new worker exited before serving");
                        break false;
                    }
                    Ok(Some(other)) => {
                        if let Event::Exited {
                            slot: s,
                            generation: g,
                            ..
                        } = &other
                            && old.as_ref().is_some_and(|w| w.generation == *g)
                            && *s == slot
                        {
                            continue;
                        }
                        self.handle(other).await?;
                    }
                    Ok(None) | Err(_) => break false,
                }
            };
            if !served {
                // Keep the old worker of this slot and stop here.
                if let Some(new) = self.slots[slot].take() {
                    terminate(new.pid);
                    self.retiring.push((slot, new));
                }
                self.slots[slot] = old;
                anyhow::bail!("worker {slot}'s replacement did not start serving");
            }
            if let Some(old) = old {
                terminate(old.pid);
                let generation = old.generation;
                self.retiring.push((slot, old));
                self.until_stopped_accepting(events, slot, generation)
                    .await?;
            }
        }
        tracing::info!("rolling restart done");
        Ok(())
    }

    /// Waits until the retired worker `generation` of `slot` no longer
    /// accepts connections (it says so, or exits), at most
    /// [`STOP_ACCEPTING_TIMEOUT`]; other events are handled meanwhile. When
    /// the restart is over, new connections then reach new workers only.
    async fn until_stopped_accepting(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Event>,
        slot: usize,
        generation: u64,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + STOP_ACCEPTING_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Event::StoppedAccepting {
                    slot: s,
                    generation: g,
                })) if s == slot && g == generation => return Ok(()),
                Ok(Some(Event::Exited {
                    slot: s,
                    generation: g,
                    ..
                })) if s == slot && g == generation => {
                    self.forget_retired(s, g);
                    return Ok(());
                }
                Ok(Some(other)) => self.handle(other).await?,
                Ok(None) => return Ok(()),
                Err(_) => {
                    tracing::warn!(
                        slot,
                        "the old worker still accepts connections {STOP_ACCEPTING_TIMEOUT:?} after SIGTERM; going on"
                    );
                    return Ok(());
                }
            }
        }
    }

    /// SIGTERM to every worker; waits for them to drain (SIGKILL after the
    /// drain timeout plus a margin).
    async fn stop_all(&mut self) {
        let mut pids: Vec<u32> = self
            .slots
            .iter_mut()
            .filter_map(|w| w.take())
            .chain(self.retiring.drain(..).map(|(_, w)| w))
            .filter_map(|w| w.pid)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        for pid in &pids {
            terminate(Some(*pid));
        }
        let deadline = Instant::now() + self.drain_timeout + Duration::from_secs(5);
        while Instant::now() < deadline && pids.iter().any(|p| alive(*p)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for pid in pids.iter().filter(|p| alive(**p)) {
            tracing::warn!(pid, "worker did not drain in time; killing it");
            signal_pid(*pid, "KILL");
        }
    }
}

async fn wait(child: &mut Child) -> Option<i32> {
    child.wait().await.ok().and_then(|s| s.code())
}

fn terminate(pid: Option<u32>) {
    if let Some(pid) = pid {
        signal_pid(pid, "TERM");
    }
}

/// Sends a signal with kill(1): the standard library has no portable kill
/// other than SIGKILL, and this keeps the supervisor free of unsafe code.
fn signal_pid(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether a process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
