//! `floodgate-fuzz-afl <target>`: one fuzz target as an AFL++ persistent
//! harness (afl.rs), for the coverage-guided long runs. The engine's input
//! bytes are the target grammar's choices ([`Rng::from_choices`]); a panic
//! (a crash or a broken invariant) aborts, and AFL++ keeps the input under
//! `crashes/`, which `floodgate-fuzz replay <target> <file>` explains.
//!
//! Built only by `cargo afl build --features afl` (it links AFL++'s
//! runtime), so the workspace builds and tests without cargo-afl. Run it
//! through `fuzz/run.sh <target>`, or see `fuzz/README.md`.
//!
//! [`Rng::from_choices`]: floodgate_fuzz::rng::Rng::from_choices

use std::panic::AssertUnwindSafe;

use clap::Parser;
use floodgate_fuzz::Target;
use floodgate_fuzz::harness::{AnyTarget, fuzz};

/// Runs one fuzz target under AFL++ (started by `cargo afl fuzz`).
#[derive(Debug, Parser)]
#[command(name = "floodgate-fuzz-afl")]
struct Args {
    /// The target to fuzz.
    #[arg(value_enum)]
    target: Target,
    /// For `lua`: the redis-server to use (its database is emptied before
    /// every case). Required there: a server the fuzzed process started
    /// would be orphaned by every crash and timeout.
    #[arg(long, required_if_eq("target", "lua"))]
    redis_url: Option<String>,
    /// Instead of serving AFL++, run the seeded pass for this many inputs
    /// and exit: under `afl-showmap`, the edges blind generation reaches,
    /// to set against what the engine's corpus reaches.
    #[arg(long, value_name = "INPUTS")]
    seeded_pass: Option<u64>,
    /// The seeded pass's seed.
    #[arg(long, default_value_t = 0, requires = "seeded_pass")]
    seed: u64,
}

fn main() {
    let args = Args::parse();
    if let Some(inputs) = args.seeded_pass {
        let mut target = args.target.start(args.redis_url.as_deref());
        let report = fuzz(&mut *target, inputs, args.seed);
        eprintln!(
            "{}: {} inputs in {:.1} s, {} failing",
            report.target,
            report.iterations,
            report.elapsed.as_secs_f64(),
            report.failures.len()
        );
        return;
    }
    // The target is set up on the first input, in the process AFL++ forked
    // from its fork server: runtimes and Redis connections are not shared
    // across forks. It then lives for the whole persistent loop.
    let mut target: AssertUnwindSafe<Option<Box<dyn AnyTarget>>> = AssertUnwindSafe(None);
    afl::fuzz!(|data: &[u8]| {
        target
            .get_or_insert_with(|| args.target.start(args.redis_url.as_deref()))
            .check_choices(data);
    });
}
