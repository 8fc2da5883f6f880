//! Runs a target on one input, from a seed or from the engine's bytes, and
//! the seeded pass over many: one `catch_unwind` per input, each failure
//! reported with what reproduces it.
//!
//! The long runs are the coverage-guided engine's (`src/bin/afl.rs`), which
//! calls [`AnyTarget::check_choices`] and lets a panic abort the process, as
//! AFL++ expects of a crash. [`fuzz`] is the seeded pass `cargo test` runs:
//! fixed seeds, a few thousand inputs, every failure replayable by its seed.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use crate::rng::{Rng, input_seed};

/// After this many failures a run stops: one bug usually fails thousands of
/// inputs, and the first few reports say everything.
pub const MAX_FAILURES: usize = 10;

/// Something to fuzz: generates an input from an [`Rng`] (seeded, or the
/// engine's bytes) and panics when the code under test crashes or breaks an
/// invariant on it.
pub trait FuzzTarget {
    /// One generated input.
    type Input;

    /// The name the command line and reports use.
    fn name(&self) -> &'static str;

    /// A new input, entirely determined by `rng`'s seed or bytes.
    fn generate(&mut self, rng: &mut Rng) -> Self::Input;

    /// Runs the code under test on `input`; panics on a crash or a broken
    /// invariant, with a message saying which.
    fn check(&mut self, input: &Self::Input);

    /// How the input is printed in a failure report: hex for byte strings,
    /// so it can be pasted into a regression test exactly.
    fn describe(&self, input: &Self::Input) -> String;

    /// How many inputs `input` counts as. A target that batches several
    /// operations into one generated case (the Lua target) counts each.
    fn weight(&self, _input: &Self::Input) -> u64 {
        1
    }
}

/// One input the target failed on.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The input's own seed (`floodgate-fuzz replay <target> --seed <seed>`),
    /// or `None` for an input read from the engine's bytes (a file).
    pub input_seed: Option<u64>,
    /// The panic message.
    pub message: String,
    /// The input, as [`FuzzTarget::describe`] prints it.
    pub input: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.input_seed {
            Some(seed) => write!(f, "input seed {seed:#018x}")?,
            None => f.write_str("input from the engine's bytes")?,
        }
        write!(f, "\n  panic: {}\n  input: {}", self.message, self.input)
    }
}

/// What one run of one target did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The target's name.
    pub target: &'static str,
    /// The run's seed.
    pub seed: u64,
    /// Inputs run (operations, for a batching target).
    pub iterations: u64,
    /// Generated cases (equal to `iterations` unless the target batches).
    pub cases: u64,
    /// Every input that panicked or broke an invariant (at most
    /// [`MAX_FAILURES`]; the run stops there).
    pub failures: Vec<Failure>,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
}

impl Report {
    /// Panics listing every failure, if there was any.
    pub fn assert_clean(&self) {
        if !self.failures.is_empty() {
            let list: Vec<String> = self.failures.iter().map(ToString::to_string).collect();
            panic!(
                "fuzz target {} (seed {:#x}): {} failing input(s) in {} iterations\n{}",
                self.target,
                self.seed,
                self.failures.len(),
                self.iterations,
                list.join("\n")
            );
        }
    }
}

/// A target as the runners use it, whichever it is: [`FuzzTarget`] without
/// its input type, so [`crate::Target::start`] can return any of them.
pub trait AnyTarget {
    /// The target's name.
    fn name(&self) -> &'static str;

    /// Generates the input of `input_seed` and runs it, catching a panic:
    /// the input's weight, or the failure.
    fn run_seeded(&mut self, input_seed: u64) -> Result<u64, Failure>;

    /// Generates the input that `data` (the engine's bytes, a crash file)
    /// chooses and runs it, catching a panic.
    fn run_choices(&mut self, data: &[u8]) -> Result<u64, Failure>;

    /// What the engine runs: the input `data` chooses, a panic left to
    /// propagate (the engine's hook turns it into an abort, a crash).
    fn check_choices(&mut self, data: &[u8]);
}

impl<T: FuzzTarget> AnyTarget for T {
    fn name(&self) -> &'static str {
        FuzzTarget::name(self)
    }

    fn run_seeded(&mut self, input_seed: u64) -> Result<u64, Failure> {
        run_guarded(self, &mut Rng::new(input_seed), Some(input_seed))
    }

    fn run_choices(&mut self, data: &[u8]) -> Result<u64, Failure> {
        run_guarded(self, &mut Rng::from_choices(data), None)
    }

    fn check_choices(&mut self, data: &[u8]) {
        let input = self.generate(&mut Rng::from_choices(data));
        self.check(&input);
    }
}

/// Runs `target` on inputs derived from `seed` until `iterations` inputs
/// have run or [`MAX_FAILURES`] have failed. Never panics itself: failures
/// are printed to stderr as they happen and returned in the report.
pub fn fuzz(target: &mut dyn AnyTarget, iterations: u64, seed: u64) -> Report {
    let start = Instant::now();
    let mut report = Report {
        target: target.name(),
        seed,
        iterations: 0,
        cases: 0,
        failures: Vec::new(),
        elapsed: Duration::ZERO,
    };
    while report.iterations < iterations && report.failures.len() < MAX_FAILURES {
        let input_seed = input_seed(seed, report.cases);
        report.cases += 1;
        match target.run_seeded(input_seed) {
            Ok(weight) => report.iterations += weight,
            Err(failure) => {
                eprintln!("FAIL {}: {failure}", report.target);
                report.iterations += 1;
                report.failures.push(failure);
            }
        }
    }
    report.elapsed = start.elapsed();
    report
}

/// Generates an input from `rng` and runs it, each step under its own
/// `catch_unwind`; its weight, or the failure.
fn run_guarded<T: FuzzTarget + ?Sized>(
    target: &mut T,
    rng: &mut Rng,
    input_seed: Option<u64>,
) -> Result<u64, Failure> {
    let input = match catch_unwind(AssertUnwindSafe(|| target.generate(rng))) {
        Ok(input) => input,
        Err(payload) => {
            return Err(Failure {
                input_seed,
                message: format!("the generator panicked: {}", panic_message(&*payload)),
                input: String::new(),
            });
        }
    };
    match catch_unwind(AssertUnwindSafe(|| target.check(&input))) {
        Ok(()) => Ok(target.weight(&input)),
        Err(payload) => Err(Failure {
            input_seed,
            message: panic_message(&*payload),
            input: target.describe(&input),
        }),
    }
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".to_owned())
}

/// At most `max` characters of `text`, marking the cut.
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}… ({} bytes in all)", &text[..cut], text.len()),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails on every input whose first draw is even.
    struct EvenFails;

    impl FuzzTarget for EvenFails {
        type Input = u64;

        fn name(&self) -> &'static str {
            "even-fails"
        }

        fn generate(&mut self, rng: &mut Rng) -> u64 {
            rng.next_u64()
        }

        fn check(&mut self, input: &u64) {
            assert!(input % 2 == 1, "{input} is even");
        }

        fn describe(&self, input: &u64) -> String {
            input.to_string()
        }
    }

    #[test]
    fn failures_are_caught_reported_and_replayable() {
        let report = fuzz(&mut EvenFails, 1_000, 3);
        assert_eq!(report.failures.len(), MAX_FAILURES);
        let failure = &report.failures[0];
        assert!(failure.message.contains("is even"), "{failure}");
        let seed = failure.input_seed.expect("a seeded failure");
        let again = EvenFails.run_seeded(seed).expect_err("replays");
        assert_eq!(again.input, failure.input);
        // Engine bytes choose the input: eight zero bytes draw 0, even.
        let from_bytes = EvenFails.run_choices(&[0; 8]).expect_err("0 is even");
        assert_eq!(from_bytes.input_seed, None);
        assert_eq!(from_bytes.input, "0");
        assert!(EvenFails.run_choices(&[0, 0, 0, 0, 0, 0, 0, 1]).is_ok());
        let caught = catch_unwind(|| report.assert_clean());
        assert!(caught.is_err());
    }

    #[test]
    fn clip_marks_the_cut() {
        assert_eq!(clip("abc", 5), "abc");
        assert_eq!(clip("abcdef", 2), "ab… (6 bytes in all)");
    }
}
