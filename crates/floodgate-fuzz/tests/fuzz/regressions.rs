//! Replays every input file kept under `regressions/<target>/`: inputs the
//! coverage-guided engine wrote (a crash, once fixed, or a queue entry
//! worth keeping), read as the target grammar's choices exactly as
//! `floodgate-fuzz-afl` read them. `fuzz/README.md` says how a crash gets
//! here.
//!
//! A file means what the grammar makes of it today: a change to a
//! target's generator can turn it into another input. So a fixed bug also
//! gets a reproducer in `found_bugs` that names its input outright; the
//! file guards the fix while the generator stays as it is, at no cost.

use std::path::{Path, PathBuf};

use floodgate_fuzz::Target;

/// The files under `regressions/<target>/`, sorted; none when the folder
/// does not exist.
fn inputs(target: Target) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("regressions")
        .join(target.name());
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.expect("a readable directory entry").path())
            .filter(|p| p.is_file())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    files.sort();
    files
}

/// Runs every kept input of `target`; panics listing each that fails.
fn replay_all(target: Target) {
    let files = inputs(target);
    if files.is_empty() {
        return;
    }
    let mut runner = target.start(None);
    let failures: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let data = std::fs::read(file).expect("a readable input file");
            runner
                .run_choices(&data)
                .err()
                .map(|failure| format!("{}: {failure}", file.display()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} kept {target} inputs fail:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn config_regressions() {
    replay_all(Target::Config);
}

#[test]
fn identity_regressions() {
    replay_all(Target::Identity);
}

#[test]
fn api_regressions() {
    replay_all(Target::Api);
}

#[test]
fn lua_regressions() {
    replay_all(Target::Lua);
}
