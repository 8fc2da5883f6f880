//! `floodgate serve --workers N`: a supervisor of N worker processes.

use std::path::PathBuf;

use crate::config::Overrides;

/// Runs `workers` worker processes sharing one listening socket.
pub fn run(workers: u16, config: Option<PathBuf>, overrides: Overrides) -> anyhow::Result<()> {
    let _ = (workers, config, overrides);
    anyhow::bail!("--workers is not available yet")
}
