//! # floodgate-fuzz
//!
//! Structured fuzzing of everything in floodgate that reads outside input,
//! on the stable toolchain (cargo-fuzz needs nightly). Each target builds
//! inputs from the format's own grammar with a seeded [`rng::Rng`], often
//! mutates them byte by byte ([`mutate`]) so parsers are reached deep rather
//! than refused at the first byte, and checks invariants beyond "no panic":
//!
//! | target | code under test |
//! |---|---|
//! | `config` | [`targets::config`]: the config parser behind `check-config` |
//! | `identity` | [`targets::identity`]: client identity behind proxies, rule keys |
//! | `api` | [`targets::json_api`]: the decision and admin APIs' JSON, via the real routers |
//! | `lua` | [`targets::lua`]: the Redis store's scripts, compared with the memory store |
//!
//! Every input runs under its own `catch_unwind`; a failure is reported
//! with the input's seed, which `floodgate-fuzz <target> --replay <seed>`
//! runs again, and the input itself (hex for byte strings).
//!
//! ```
//! use floodgate_fuzz::{Target, run};
//!
//! // What `floodgate-fuzz config --iterations 200 --seed 7` does; panics on
//! // any failing input.
//! run(Target::Config, 200, 7);
//! ```
//!
//! `fuzz/run.sh` runs every target for a million inputs.

pub mod harness;
pub mod mutate;
pub mod rng;
pub mod targets;

use std::fmt;
use std::str::FromStr;

use harness::{Failure, FuzzTarget, Report, fuzz, run_one};

/// The fuzz targets by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `config`: [`targets::config`].
    Config,
    /// `identity`: [`targets::identity`].
    Identity,
    /// `api`: [`targets::json_api`].
    Api,
    /// `lua`: [`targets::lua`] (starts a `redis-server`).
    Lua,
}

impl Target {
    /// Every target, in the order `all` runs them.
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
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Not one of the targets' names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTarget(pub String);

impl fmt::Display for UnknownTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown target {:?} (expected config, identity, api, lua or all)",
            self.0
        )
    }
}

impl std::error::Error for UnknownTarget {}

impl FromStr for Target {
    type Err = UnknownTarget;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Target::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| UnknownTarget(s.to_owned()))
    }
}

/// Runs `target` for `iterations` inputs from `seed` and returns what
/// happened; failures are also printed to stderr as they occur.
pub fn fuzz_target(target: Target, iterations: u64, seed: u64) -> Report {
    match target {
        Target::Config => fuzz(&mut targets::config::ConfigTarget, iterations, seed),
        Target::Identity => fuzz(
            &mut targets::identity::IdentityTarget::new(),
            iterations,
            seed,
        ),
        Target::Api => fuzz(
            &mut targets::json_api::JsonApiTarget::new(),
            iterations,
            seed,
        ),
        Target::Lua => fuzz(&mut targets::lua::LuaTarget::new(), iterations, seed),
    }
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
    fn one<T: FuzzTarget>(mut t: T, seed: u64) -> Result<u64, Failure> {
        run_one(&mut t, seed)
    }
    match target {
        Target::Config => one(targets::config::ConfigTarget, input_seed),
        Target::Identity => one(targets::identity::IdentityTarget::new(), input_seed),
        Target::Api => one(targets::json_api::JsonApiTarget::new(), input_seed),
        Target::Lua => one(targets::lua::LuaTarget::new(), input_seed),
    }
}
