//! Runs a target over generated inputs, one `catch_unwind` per input, and
//! reports each failure with the seed that reproduces it.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use crate::rng::{Rng, input_seed};

/// After this many failures a run stops: one bug usually fails thousands of
/// inputs, and the first few reports say everything.
pub const MAX_FAILURES: usize = 10;

/// Something to fuzz: generates an input from a seeded [`Rng`] and panics
/// when the code under test crashes or breaks an invariant on it.
pub trait FuzzTarget {
    /// One generated input.
    type Input;

    /// The name the command line and reports use.
    fn name(&self) -> &'static str;

    /// A new input, entirely determined by `rng`'s seed.
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
    /// The input's own seed: `floodgate-fuzz <target> --replay <seed>`.
    pub input_seed: u64,
    /// The panic message.
    pub message: String,
    /// The input, as [`FuzzTarget::describe`] prints it.
    pub input: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "input seed {:#018x}\n  panic: {}\n  input: {}",
            self.input_seed, self.message, self.input
        )
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

/// Runs `target` on inputs derived from `seed` until `iterations` inputs
/// have run or [`MAX_FAILURES`] have failed. Never panics itself: failures
/// are printed to stderr as they happen and returned in the report.
pub fn fuzz<T: FuzzTarget>(target: &mut T, iterations: u64, seed: u64) -> Report {
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
        match run_one(target, input_seed) {
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

/// Generates and runs the one input of `input_seed`; its weight, or the
/// failure.
pub fn run_one<T: FuzzTarget>(target: &mut T, input_seed: u64) -> Result<u64, Failure> {
    let mut rng = Rng::new(input_seed);
    let input = match catch_unwind(AssertUnwindSafe(|| target.generate(&mut rng))) {
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
        let again = run_one(&mut EvenFails, failure.input_seed).expect_err("replays");
        assert_eq!(again.input, failure.input);
        let caught = catch_unwind(|| report.assert_clean());
        assert!(caught.is_err());
    }

    #[test]
    fn clip_marks_the_cut() {
        assert_eq!(clip("abc", 5), "abc");
        assert_eq!(clip("abcdef", 2), "ab… (6 bytes in all)");
    }
}
