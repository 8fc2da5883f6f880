//! A short pass of every fuzz target, so `cargo test` (and CI) runs them on
//! every change. Fixed seeds: a failure here prints the input seed that
//! `floodgate-fuzz replay <target> --seed` runs again. The long runs are
//! the coverage-guided engine's (`fuzz/run.sh`).

use floodgate_fuzz::{Target, run};

#[test]
fn config_parser_short_pass() {
    run(Target::Config, 3_000, 0xF100_D6A7E);
}

#[test]
fn identity_and_keys_short_pass() {
    run(Target::Identity, 3_000, 0xF100_D6A7E);
}

#[test]
fn json_api_short_pass() {
    run(Target::Api, 2_000, 0xF100_D6A7E);
}

#[test]
fn lua_scripts_against_memory_short_pass() {
    run(Target::Lua, 2_000, 0xF100_D6A7E);
}
