//! `floodgate-fuzz <config|identity|api|lua|all> [--iterations N] [--seed S]`
//! runs fuzz targets and prints, per target, the inputs run, the failures
//! (panics or broken invariants) and the time taken; it exits 1 when any
//! input failed. `floodgate-fuzz <target> --replay SEED` runs the one input
//! a failure report named.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use floodgate_fuzz::{Target, fuzz_target, replay};

const USAGE: &str = "usage: floodgate-fuzz <config|identity|api|lua|all> [--iterations N] [--seed S]\n       floodgate-fuzz <config|identity|api|lua> --replay SEED\n(numbers in decimal or 0x-prefixed hex)";

/// What the command line asked for.
struct Args {
    targets: Vec<Target>,
    iterations: u64,
    seed: u64,
    replay: Option<u64>,
}

fn number(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => text.replace('_', "").parse(),
    };
    parsed.map_err(|e| format!("{text:?} is not a number: {e}"))
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let which = argv.next().ok_or("no target given")?;
    let targets = if which == "all" {
        Target::ALL.to_vec()
    } else {
        vec![which.parse::<Target>().map_err(|e| e.to_string())?]
    };
    let mut args = Args {
        targets,
        iterations: 10_000,
        // A fresh seed per run unless one is given; it is printed, so any
        // run can be repeated exactly.
        seed: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        replay: None,
    };
    while let Some(flag) = argv.next() {
        let value = argv.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--iterations" => args.iterations = number(&value)?,
            "--seed" => args.seed = number(&value)?,
            "--replay" => args.replay = Some(number(&value)?),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if args.replay.is_some() && args.targets.len() != 1 {
        return Err("--replay needs one target".into());
    }
    Ok(args)
}

// The report goes to stdout: it is this program's output.
#[allow(clippy::print_stdout)]
fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Failures are reported with their input and replay seed; the default
    // hook would add a backtrace per failing input.
    std::panic::set_hook(Box::new(|info| {
        if let Some(at) = info.location() {
            eprintln!("panicked at {at}");
        }
    }));
    if let Some(seed) = args.replay {
        let target = args.targets[0];
        return match replay(target, seed) {
            Ok(_) => {
                println!("{target} input {seed:#018x}: passes");
                ExitCode::SUCCESS
            }
            Err(failure) => {
                println!("{target} {failure}");
                ExitCode::FAILURE
            }
        };
    }
    let mut failed = false;
    println!(
        "{:<9} {:>11} {:>9} {:>7} {:>9}   seed {:#018x}",
        "target", "iterations", "cases", "panics", "seconds", args.seed
    );
    for target in args.targets {
        let report = fuzz_target(target, args.iterations, args.seed);
        println!(
            "{:<9} {:>11} {:>9} {:>7} {:>9.1}",
            report.target,
            report.iterations,
            report.cases,
            report.failures.len(),
            report.elapsed.as_secs_f64()
        );
        for f in &report.failures {
            println!(
                "  replay: floodgate-fuzz {target} --replay {:#018x}",
                f.input_seed
            );
        }
        failed |= !report.failures.is_empty();
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
