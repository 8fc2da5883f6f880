//! `floodgate-fuzz`: the seeded pass of the fuzz targets, and the replay of
//! one input, by its seed or from a crash file the coverage-guided engine
//! wrote. The long runs are the engine's (`floodgate-fuzz-afl`, see
//! `fuzz/README.md`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use floodgate_fuzz::{Target, fuzz_target};

/// Runs floodgate's fuzz targets on seeded inputs, or replays one input.
#[derive(Debug, Parser)]
#[command(name = "floodgate-fuzz")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs targets on inputs from a seed and prints, per target, the
    /// inputs run, the failures (panics or broken invariants) and the time
    /// taken; exits 1 when any input failed. What `cargo test` runs.
    Pass {
        /// The targets to run; every one when none is given.
        #[arg(value_enum)]
        targets: Vec<Target>,
        /// Inputs per target (store operations, for `lua`).
        #[arg(long, default_value = "10000", value_parser = number)]
        iterations: u64,
        /// The run's seed (decimal or 0x-hex); a fresh one, printed, when
        /// not given, so any run can be repeated.
        #[arg(long, value_parser = number)]
        seed: Option<u64>,
    },
    /// Runs one input again and prints its failure, with the input in
    /// full: by the seed a pass reported, or from files the engine wrote
    /// (`target/fuzz/<target>/out/default/crashes/id:…`). Exits 1 when any input fails.
    Replay {
        /// The target the input belongs to.
        #[arg(value_enum)]
        target: Target,
        /// The input seed a failing pass printed.
        #[arg(long, value_parser = number, conflicts_with = "files", required_unless_present = "files")]
        seed: Option<u64>,
        /// Input files from the engine (its queue, crashes or hangs).
        files: Vec<PathBuf>,
        /// For `lua`: use this redis-server (its database is emptied)
        /// instead of starting one.
        #[arg(long)]
        redis_url: Option<String>,
    },
}

/// A decimal or `0x`-prefixed hex number, `_` allowed as a separator.
fn number(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => text.replace('_', "").parse(),
    };
    parsed.map_err(|e| format!("{text:?} is not a number: {e}"))
}

/// The targets and what each covers, for `--help`: from the targets' own
/// documentation, so the list cannot fall behind.
fn targets_help() -> String {
    let mut help = String::from("Targets:\n");
    for target in Target::value_variants() {
        let about = target
            .to_possible_value()
            .and_then(|v| v.get_help().map(ToString::to_string))
            .unwrap_or_default();
        help.push_str(&format!("  {:<10}{about}\n", target.name()));
    }
    help.push_str("\nLong coverage-guided runs: fuzz/run.sh <target> (see fuzz/README.md).");
    help
}

// The report goes to stdout: it is this program's output.
#[allow(clippy::print_stdout)]
fn main() -> ExitCode {
    let matches = Cli::command().after_help(targets_help()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Failures are reported with their input and how to replay it; the
    // default hook would add a backtrace per failing input.
    std::panic::set_hook(Box::new(|info| {
        if let Some(at) = info.location() {
            eprintln!("panicked at {at}");
        }
    }));
    match cli.command {
        Command::Pass {
            targets,
            iterations,
            seed,
        } => pass(targets, iterations, seed),
        Command::Replay {
            target,
            seed,
            files,
            redis_url,
        } => replay(target, seed, &files, redis_url.as_deref()),
    }
}

#[allow(clippy::print_stdout)]
fn pass(mut targets: Vec<Target>, iterations: u64, seed: Option<u64>) -> ExitCode {
    if targets.is_empty() {
        targets = Target::ALL.to_vec();
    }
    let seed = seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let mut failed = false;
    println!(
        "{:<9} {:>11} {:>9} {:>7} {:>9} {:>11}   seed {seed:#018x}",
        "target", "iterations", "cases", "panics", "seconds", "inputs/s"
    );
    for target in targets {
        let report = fuzz_target(target, iterations, seed);
        let seconds = report.elapsed.as_secs_f64();
        println!(
            "{:<9} {:>11} {:>9} {:>7} {:>9.1} {:>11.0}",
            report.target,
            report.iterations,
            report.cases,
            report.failures.len(),
            seconds,
            report.iterations as f64 / seconds.max(1e-9)
        );
        for f in &report.failures {
            if let Some(input_seed) = f.input_seed {
                println!("  replay: floodgate-fuzz replay {target} --seed {input_seed:#018x}");
            }
        }
        failed |= !report.failures.is_empty();
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[allow(clippy::print_stdout)]
fn replay(
    target: Target,
    seed: Option<u64>,
    files: &[PathBuf],
    redis_url: Option<&str>,
) -> ExitCode {
    let mut runner = target.start(redis_url);
    let mut failed = false;
    let mut report = |what: String, outcome| match outcome {
        Ok(_) => println!("{target} {what}: passes"),
        Err(failure) => {
            println!("{target} {what}: {failure}");
            failed = true;
        }
    };
    if let Some(seed) = seed {
        report(format!("input {seed:#018x}"), runner.run_seeded(seed));
    }
    for file in files {
        match std::fs::read(file) {
            Ok(data) => report(file.display().to_string(), runner.run_choices(&data)),
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                return ExitCode::from(2);
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["floodgate-fuzz", "pass", "config", "lua", "--seed", "0x1f"])
                .expect("parses");
        assert!(matches!(
            cli.command,
            Command::Pass { ref targets, seed: Some(0x1f), iterations: 10_000 }
                if *targets == [Target::Config, Target::Lua]
        ));
        assert!(Cli::try_parse_from(["floodgate-fuzz", "replay", "api"]).is_err());
        assert!(
            Cli::try_parse_from(["floodgate-fuzz", "replay", "api", "--seed", "1", "crash"])
                .is_err()
        );
    }
}
