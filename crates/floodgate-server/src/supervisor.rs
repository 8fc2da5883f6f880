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
//! A worker tells the supervisor it serves, and that it no longer accepts
//! connections once told to drain, by the lines of [`crate::worker`]: a
//! rolling restart replaces the next worker (or, after the last, tells
//! systemd it is done) only then. Workers stop with their supervisor, even
//! one killed with SIGKILL (see [`crate::worker::announce_ready`]). A SIGHUP
//! whose file would take a protection away from the running workers (see
//! [`crate::state::reload_refusals`]) replaces none of them.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::{self, Overrides, Settings};
use crate::state::reload_refusals;
use crate::worker::{READY_LINE, STOPPED_ACCEPTING_LINE, WORKER_ENV};
use crate::{listen, notify};
use floodgate_core::duration::format_duration;

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
    /// `--log-format`, passed on to every worker.
    log_format: &'static str,
    /// The settings the workers run with: a SIGHUP's file is weighed
    /// against these.
    settings: Settings,
    /// Where the shared admin listener is bound.
    admin_addr: Option<std::net::SocketAddr>,
    listen_fd: i32,
    admin_fd: Option<i32>,
    /// The shared gRPC listener's fd, passed to every worker.
    grpc_fd: Option<i32>,
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
/// `log_format` (`text` or `json`) is the workers' `--log-format`.
pub fn run(
    workers: u16,
    config_path: Option<PathBuf>,
    overrides: Overrides,
    log_format: &'static str,
) -> anyhow::Result<()> {
    let settings = load(config_path.as_ref(), &overrides)?;
    let main = listen::bind(settings.server.listen, settings.server.reuse_port)?;
    let admin = settings
        .admin
        .listen
        .map(|a| listen::bind(a, settings.server.reuse_port))
        .transpose()?;
    let grpc = settings
        .grpc
        .listen
        .map(|a| listen::bind(a, settings.server.reuse_port))
        .transpose()?;
    let admin_addr = admin.as_ref().map(|a| a.local_addr()).transpose()?;
    let listen_fd = listen::share_with_children(&main)?;
    let admin_fd = admin
        .as_ref()
        .map(listen::share_with_children)
        .transpose()?;
    let grpc_fd = grpc.as_ref().map(listen::share_with_children).transpose()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let mut sup = Supervisor {
        exe: std::env::current_exe().context("cannot find the floodgate executable")?,
        config: config_path,
        overrides,
        log_format,
        settings: settings.clone(),
        admin_addr,
        listen_fd,
        admin_fd,
        grpc_fd,
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
    drop((main, admin, grpc));
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
                    self.stop_all(&mut events).await;
                    anyhow::bail!(
                        "worker {slot} exited ({}) before it served: workers cannot start",
                        exit_text(code)
                    );
                }
                Ok(None) | Err(_) => {
                    self.stop_all(&mut events).await;
                    anyhow::bail!(
                        "workers did not start serving within {}",
                        format_duration(START_TIMEOUT)
                    );
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
                        self.stop_all(&mut events).await;
                        return Err(e);
                    }
                }
            }
        }
        tracing::info!("supervisor stopping: draining every worker");
        notify::stopping();
        self.stop_all(&mut events).await;
        Ok(())
    }

    fn spawn(&mut self, slot: usize) -> anyhow::Result<()> {
        self.next_generation += 1;
        let generation = self.next_generation;
        let mut cmd = Command::new(&self.exe);
        cmd.args(["--log-format", self.log_format, "serve"]);
        if let Some(path) = &self.config {
            cmd.arg("--config").arg(path);
        }
        if let Some(listen) = self.overrides.listen {
            cmd.arg("--listen").arg(listen.to_string());
        }
        // The workers share the host's cores: each runs a share of them,
        // not one thread per core each (N workers of one thread per core
        // each would put N threads on every core). TOKIO_WORKER_THREADS,
        // when the operator sets it, wins.
        if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            cmd.env(
                "TOKIO_WORKER_THREADS",
                (cores / self.slots.len().max(1)).max(1).to_string(),
            );
        }
        cmd.env(WORKER_ENV, slot.to_string())
            .env(listen::LISTEN_FD_ENV, self.listen_fd.to_string())
            .env_remove(listen::ADMIN_FD_ENV)
            .env_remove(listen::GRPC_FD_ENV)
            // Only the supervisor speaks to systemd.
            .env_remove(notify::SOCKET_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(false);
        if let Some(fd) = self.admin_fd {
            cmd.env(listen::ADMIN_FD_ENV, fd.to_string());
        }
        if let Some(fd) = self.grpc_fd {
            cmd.env(listen::GRPC_FD_ENV, fd.to_string());
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
                        "worker {slot} crashed {} times within {} (last: {}): crash loop, giving up",
                        crashes.len(),
                        format_duration(CRASH_WINDOW),
                        exit_text(code)
                    );
                }
                let backoff = BACKOFF_START
                    .saturating_mul(1 << (crashes.len() - 1))
                    .min(BACKOFF_MAX);
                tracing::warn!(
                    slot,
                    exit = %exit_text(code),
                    backoff = %format_duration(backoff),
                    "worker died; restarting"
                );
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
        let new = match load(self.config.as_ref(), &self.overrides) {
            Ok(new) => new,
            Err(e) => {
                anyhow::bail!("SIGHUP: the config is invalid, keeping the running workers: {e}")
            }
        };
        let refusals = reload_refusals(&self.settings, &new, self.admin_addr);
        if !refusals.is_empty() {
            anyhow::bail!(
                "SIGHUP: config reload refused, keeping the running workers: {}",
                refusals.join("; ")
            );
        }
        self.settings = new;
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
                        tracing::error!(slot, exit = %exit_text(code), "new worker exited before serving");
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
                        "the old worker still accepts connections {} after SIGTERM; going on",
                        format_duration(STOP_ACCEPTING_TIMEOUT)
                    );
                    return Ok(());
                }
            }
        }
    }

    /// SIGTERM to every worker; waits for their exits (SIGKILL after the
    /// drain timeout plus a margin, then a last wait for those).
    async fn stop_all(&mut self, events: &mut mpsc::UnboundedReceiver<Event>) {
        let mut running: Vec<(usize, Worker)> = self
            .slots
            .iter_mut()
            .enumerate()
            .filter_map(|(slot, w)| Some((slot, w.take()?)))
            .chain(self.retiring.drain(..))
            .collect();
        for (_, worker) in &running {
            terminate(worker.pid);
        }
        let deadline = tokio::time::Instant::now() + self.drain_timeout + Duration::from_secs(5);
        until_exited(events, &mut running, deadline).await;
        for (_, worker) in &running {
            if let Some(pid) = worker.pid {
                tracing::warn!(pid, "worker did not drain in time; killing it");
                signal_pid(pid, rustix::process::Signal::KILL);
            }
        }
        until_exited(
            events,
            &mut running,
            tokio::time::Instant::now() + Duration::from_secs(5),
        )
        .await;
    }
}

/// Waits until every worker of `running` has exited, as its wait task
/// reports, or `deadline`; the exited ones are removed.
async fn until_exited(
    events: &mut mpsc::UnboundedReceiver<Event>,
    running: &mut Vec<(usize, Worker)>,
    deadline: tokio::time::Instant,
) {
    while !running.is_empty() {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Exited {
                slot, generation, ..
            })) => running.retain(|(s, w)| !(*s == slot && w.generation == generation)),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

/// A worker's exit, in words.
fn exit_text(code: Option<i32>) -> String {
    code.map_or_else(
        || "killed by a signal".to_owned(),
        |c| format!("exit code {c}"),
    )
}

async fn wait(child: &mut Child) -> Option<i32> {
    child.wait().await.ok().and_then(|s| s.code())
}

fn terminate(pid: Option<u32>) {
    if let Some(pid) = pid {
        signal_pid(pid, rustix::process::Signal::TERM);
    }
}

/// Sends `signal` to the worker `pid`. A worker that has exited already has
/// nothing to be told.
fn signal_pid(pid: u32, signal: rustix::process::Signal) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid
        && let Err(e) = rustix::process::kill_process(pid, signal)
        && e != rustix::io::Errno::SRCH
    {
        tracing::warn!(pid = pid.as_raw_nonzero().get(), error = %e, "cannot signal a worker");
    }
}
