//! Child processes: signals to them, a working directory of their own, the
//! end of their log.

use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

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

/// A fresh working directory for a server, removed when dropped; under
/// `/dev/shm` when `memory_backed` and there is one. On a disk that other
/// builds keep busy, one `fsync` of an append-only file can take seconds
/// and stall the whole server; on tmpfs it is immediate. A killed process
/// loses nothing either way (what it wrote is in the page cache): only a
/// power cut tells a disk from tmpfs, and no test cuts the power.
pub(crate) fn work_dir(label: &str, memory_backed: bool) -> TempDir {
    let prefix = format!("floodgate-{label}-");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    let shm = Path::new("/dev/shm");
    let dir = if memory_backed && shm.is_dir() {
        builder.tempdir_in(shm)
    } else {
        builder.tempdir()
    };
    dir.unwrap_or_else(|e| panic!("creating a directory for {label}: {e}"))
}

/// The last lines of a log file, for failure messages.
pub(crate) fn read_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
