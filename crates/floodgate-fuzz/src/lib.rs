//! # floodgate-fuzz
//!
//! Fuzzing of everything in floodgate that reads outside input, on the
//! stable toolchain. Each target builds inputs from the format's own
//! grammar, drawing every choice from an [`rng::Rng`], and checks
//! invariants beyond "no panic" (its oracle). The same target runs two ways:
//!
//! - coverage-guided, for the long runs: AFL++ through afl.rs
//!   (`src/bin/afl.rs`, built by `cargo afl` with the `afl` feature), the
//!   engine's input bytes being the grammar's choices;
//! - seeded, in `cargo test`: a few thousand inputs from fixed seeds, and
//!   every crash file kept under `regressions/<target>/` replayed.
//!
//! `fuzz/README.md` says what each target covers and how to run and
//! replay.
//!
//! ## Modules
//!
//! - [`targets`]: the targets and their oracles, one module each:
//!   - [`targets::config`]: the config parser behind `check-config`;
//!   - [`targets::identity`]: client identity behind proxies, rule keys;
//!   - [`targets::json_api`]: the decision and admin APIs' JSON, via the
//!     real routers;
//!   - [`targets::lua`]: the Redis store's scripts, compared with the
//!     memory store.
//! - [`harness`]: the [`harness::FuzzTarget`] trait, running one input
//!   from a seed or from bytes, and the seeded pass.
//! - [`rng`]: the source of a generator's choices, a seed or the engine's
//!   bytes.
//! - [`mutate`]: byte-level damage a grammar applies to its own text
//!   (flips, cuts, repeats, the format's tokens), so parsers see malformed
//!   input; which damage, where, is itself a choice the engine steers.
//!
//! ```
//! use floodgate_fuzz::{Target, run};
//!
//! // What `floodgate-fuzz pass config --iterations 200 --seed 7` does;
//! // panics on any failing input.
//! run(Target::Config, 200, 7);
//! ```

pub mod harness;
pub mod mutate;
pub mod rng;
pub mod targets;

use std::fmt;

use harness::{AnyTarget, Failure, Report, fuzz};

/// The fuzz targets by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The config parser (`check-config`, `serve --config`) with env
    /// overrides.
    Config,
    /// Client identity from X-Forwarded-For / Forwarded / X-Real-IP
    /// behind trusted proxies, and the rule keys formed from requests.
    Identity,
    /// The decision API and the admin API's JSON, through the real axum
    /// routers.
    Api,
    /// The Redis store's Lua scripts against the memory store (needs
    /// redis-server).
    Lua,
}

impl Target {
    /// Every target, in the order `pass all` runs them.
    pub const ALL: [Target; 4] = [Target::Config, Target::Identity, Target::Api, Target::Lua];

    /// The command-line name.
    pub const fn name(self) -> &'static str {
        match self {
            Target::Config => "config",
            Target::Identity => "identity",
            Target::Api => "api",
            Target::Lua => "lua",
        }
    }

    /// The target, ready to run inputs. `lua` starts a `redis-server` of
    /// its own, or, given `redis_url`, empties and uses that one.
    ///
    /// # Panics
    /// When the target cannot be set up (no `redis-server` for `lua`).
    pub fn start(self, redis_url: Option<&str>) -> Box<dyn AnyTarget> {
        match self {
            Target::Config => Box::new(targets::config::ConfigTarget),
            Target::Identity => Box::new(targets::identity::IdentityTarget::new()),
            Target::Api => Box::new(targets::json_api::JsonApiTarget::new()),
            Target::Lua => match redis_url {
                Some(url) => Box::new(targets::lua::LuaTarget::connect(url)),
                None => Box::new(targets::lua::LuaTarget::new()),
            },
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Runs `target` for `iterations` inputs from `seed` and returns what
/// happened; failures are also printed to stderr as they occur.
pub fn fuzz_target(target: Target, iterations: u64, seed: u64) -> Report {
    fuzz(&mut *target.start(None), iterations, seed)
}

/// Runs `target` for `iterations` inputs from `seed`.
///
/// # Panics
/// When any input crashed the code under test or broke an invariant; the
/// message lists each with its replay seed and the input.
pub fn run(target: Target, iterations: u64, seed: u64) {
    fuzz_target(target, iterations, seed).assert_clean();
}

/// Runs the one input of `input_seed` (from a failure report) again: its
/// weight, or the failure.
pub fn replay(target: Target, input_seed: u64) -> Result<u64, Failure> {
    target.start(None).run_seeded(input_seed)
}
