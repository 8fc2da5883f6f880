//! The protocol between `floodgate serve --workers N`'s supervisor and its
//! workers, which both sides read: the environment variable that makes a
//! process a worker, and the lines a worker prints on standard output (its
//! logs go to standard error) to say it serves and that it no longer
//! accepts connections.

/// What a worker prints on standard output once it serves.
pub const READY_LINE: &str = "floodgate-worker-ready";
/// What a worker prints once it no longer accepts connections (draining).
pub const STOPPED_ACCEPTING_LINE: &str = "floodgate-worker-stopped-accepting";
/// The environment variable that marks a process as a worker (its slot number).
pub const WORKER_ENV: &str = "FLOODGATE_WORKER";

/// Whether this process is a worker of a supervisor.
pub fn is_worker() -> bool {
    std::env::var_os(WORKER_ENV).is_some()
}

/// Called by a worker once it serves: tells the supervisor, and asks to be
/// sent SIGTERM when the supervisor dies, however it dies. Left running, a
/// worker would go on serving the old config with nobody to restart or
/// stop it, and hold the listening socket, so a new supervisor could not
/// bind the port; it then drains like on any SIGTERM. A supervisor that
/// died before that request shows as a failed write of the ready line
/// (nobody reads the pipe any more): the worker ends itself the same way.
pub fn announce_ready() {
    follow_supervisor();
    if !tell_supervisor(READY_LINE) {
        tracing::warn!("the supervisor is gone: stopping");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::TERM);
    }
}

/// Called once the gateway no longer accepts connections: a worker tells
/// its supervisor, which then knows new connections go to the others.
pub fn announce_stopped_accepting() {
    if is_worker() {
        // A supervisor that no longer listens has nothing to wait for.
        let _ = tell_supervisor(STOPPED_ACCEPTING_LINE);
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

/// Writes `line` to the supervisor; false when it could not be written.
fn tell_supervisor(line: &str) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}
