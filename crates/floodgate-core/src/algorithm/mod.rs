//! The four algorithms as pure functions of `(state, policy, now, cost)`.
//!
//! Each algorithm module has `decide` (what would happen, no mutation),
//! `commit` (record an admitted cost) and `expires_at` (after which the state
//! is the same as no state). Splitting decide from commit lets a store check
//! several rules and commit only when every one of them admits.
//!
//! Times are microseconds since the Unix epoch. The Redis store runs the same
//! arithmetic in Lua, line for line: `crates/floodgate-redis/src/lua/limits.lua`
//! (`decide`, `commit`, `evaluate` and one `*_decide` per algorithm), which
//! `scripts.rs` prepends to `check.lua` and `peek.lua`. The conformance tests
//! (`crates/floodgate-redis/tests/redis/conformance.rs`) demand identical
//! decisions from both.

pub mod fixed_window;
pub mod gcra;
pub mod sliding_log;
pub mod sliding_window;

use std::time::Duration;

use crate::decision::Decision;
use crate::policy::{Algorithm, Policy};

/// The counting state of one key under one algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitState {
    /// See [`fixed_window`].
    FixedWindow(fixed_window::State),
    /// See [`sliding_window`].
    SlidingWindow(sliding_window::State),
    /// See [`sliding_log`].
    SlidingLog(sliding_log::State),
    /// See [`gcra`].
    TokenBucket(gcra::State),
}

impl LimitState {
    /// The empty state of `algorithm`.
    pub fn fresh(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::FixedWindow => LimitState::FixedWindow(Default::default()),
            Algorithm::SlidingWindow => LimitState::SlidingWindow(Default::default()),
            Algorithm::SlidingLog => LimitState::SlidingLog(Default::default()),
            Algorithm::TokenBucket => LimitState::TokenBucket(Default::default()),
        }
    }

    /// The algorithm this state belongs to.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            LimitState::FixedWindow(_) => Algorithm::FixedWindow,
            LimitState::SlidingWindow(_) => Algorithm::SlidingWindow,
            LimitState::SlidingLog(_) => Algorithm::SlidingLog,
            LimitState::TokenBucket(_) => Algorithm::TokenBucket,
        }
    }

    /// Decides whether `cost` fits at `now`, without changing anything.
    ///
    /// A state of another algorithm than the policy's (a reload changed the
    /// rule) counts as empty.
    pub fn decide(&self, policy: &Policy, now: u64, cost: u64) -> Decision {
        let fresh;
        let state = if self.algorithm() == policy.algorithm() {
            self
        } else {
            fresh = LimitState::fresh(policy.algorithm());
            &fresh
        };
        match state {
            LimitState::FixedWindow(s) => fixed_window::decide(s, policy, now, cost),
            LimitState::SlidingWindow(s) => sliding_window::decide(s, policy, now, cost),
            LimitState::SlidingLog(s) => sliding_log::decide(s, policy, now, cost),
            LimitState::TokenBucket(s) => gcra::decide(s, policy, now, cost),
        }
    }

    /// Records an admitted `cost` at `now`.
    pub fn commit(&mut self, policy: &Policy, now: u64, cost: u64) {
        if self.algorithm() != policy.algorithm() {
            *self = LimitState::fresh(policy.algorithm());
        }
        match self {
            LimitState::FixedWindow(s) => fixed_window::commit(s, policy, now, cost),
            LimitState::SlidingWindow(s) => sliding_window::commit(s, policy, now, cost),
            LimitState::SlidingLog(s) => sliding_log::commit(s, policy, now, cost),
            LimitState::TokenBucket(s) => gcra::commit(s, policy, now, cost),
        }
    }

    /// Decides `cost` at `now` and, when it is admitted and `charge` is
    /// set, records it: [`decide`](Self::decide) then
    /// [`commit`](Self::commit), with the algorithm matched once. A state
    /// of another algorithm counts as empty, and is replaced only when
    /// something is recorded.
    #[inline(always)]
    pub fn take(&mut self, policy: &Policy, now: u64, cost: u64, charge: bool) -> Decision {
        match (&mut *self, policy.algorithm()) {
            (LimitState::TokenBucket(s), Algorithm::TokenBucket) => {
                let d = gcra::decide(s, policy, now, cost);
                if d.allowed && charge {
                    gcra::commit(s, policy, now, cost);
                }
                d
            }
            (LimitState::FixedWindow(s), Algorithm::FixedWindow) => {
                let d = fixed_window::decide(s, policy, now, cost);
                if d.allowed && charge {
                    fixed_window::commit(s, policy, now, cost);
                }
                d
            }
            (LimitState::SlidingWindow(s), Algorithm::SlidingWindow) => {
                let d = sliding_window::decide(s, policy, now, cost);
                if d.allowed && charge {
                    sliding_window::commit(s, policy, now, cost);
                }
                d
            }
            (LimitState::SlidingLog(s), Algorithm::SlidingLog) => {
                let d = sliding_log::decide(s, policy, now, cost);
                if d.allowed && charge {
                    sliding_log::commit(s, policy, now, cost);
                }
                d
            }
            _ => self.take_foreign(policy, now, cost, charge),
        }
    }

    /// [`take`](Self::take) on a state of another algorithm than the
    /// policy's (a reload changed the rule): rare, kept out of line.
    #[cold]
    #[inline(never)]
    fn take_foreign(&mut self, policy: &Policy, now: u64, cost: u64, charge: bool) -> Decision {
        let d = self.decide(policy, now, cost);
        if d.allowed && charge {
            self.commit(policy, now, cost);
        }
        d
    }

    /// Gives back `cost` units admitted under a maximum delay whose request
    /// never went ahead (see [`gcra::refund`]). Only a token bucket holds
    /// places in its future; for the other algorithms this does nothing.
    pub fn refund(&mut self, policy: &Policy, now: u64, cost: u64) {
        if let LimitState::TokenBucket(s) = self
            && policy.algorithm() == Algorithm::TokenBucket
        {
            gcra::refund(s, policy, now, cost);
        }
    }

    /// The time (µs) after which this state is the same as an empty one.
    pub fn expires_at(&self, policy: &Policy) -> u64 {
        match self {
            LimitState::FixedWindow(s) => fixed_window::expires_at(s, policy),
            LimitState::SlidingWindow(s) => sliding_window::expires_at(s, policy),
            LimitState::SlidingLog(s) => sliding_log::expires_at(s, policy),
            LimitState::TokenBucket(s) => gcra::expires_at(s, policy),
        }
    }
}

/// A penalty block and the offences that led to it, in one word: the end
/// of the block (µs, below 2^56, the year 4253) and how many offences in a
/// row it answers (up to 255), for block ladders.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Penalty(u64);

impl Penalty {
    const UNTIL_BITS: u32 = 56;
    const UNTIL_MASK: u64 = (1 << Self::UNTIL_BITS) - 1;

    /// No block, no offence remembered.
    pub const NONE: Penalty = Penalty(0);

    /// The most offences counted; more count as this many.
    pub const MAX_OFFENCES: u32 = 255;

    /// A block ending at `until` (µs) for the `offences`th offence in a row.
    pub fn new(until: u64, offences: u32) -> Self {
        let offences = u64::from(offences.min(Self::MAX_OFFENCES));
        Penalty((offences << Self::UNTIL_BITS) | until.min(Self::UNTIL_MASK))
    }

    /// When the block ends (µs); 0 for none.
    pub fn until(self) -> u64 {
        self.0 & Self::UNTIL_MASK
    }

    /// How many offences in a row the block answers; 0 for none.
    pub fn offences(self) -> u32 {
        // At most 255: the shift leaves 8 bits.
        (self.0 >> Self::UNTIL_BITS) as u32
    }

    /// Which offence in a row going over the limit at `now` is under
    /// `policy`: the next one while the last is remembered (until its
    /// block's end plus [`Policy::block_memory_us`]), else the first.
    pub fn next_offence(self, policy: &Policy, now: u64) -> u32 {
        let last = self.offences();
        if last > 0 && now < self.until().saturating_add(policy.block_memory_us()) {
            (last + 1).min(Self::MAX_OFFENCES)
        } else {
            1
        }
    }

    /// Until when this penalty matters (µs): its block's end, plus how long
    /// its offence is remembered after.
    pub fn expires_at(self, policy: &Policy) -> u64 {
        if self.offences() == 0 {
            return self.until();
        }
        self.until().saturating_add(policy.block_memory_us())
    }
}

/// Everything stored for one (rule, key): the counter and a penalty block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    /// The algorithm's counting state.
    pub limit: LimitState,
    /// The penalty block, if one was ever started and still matters.
    pub penalty: Penalty,
}

/// What one check found, before anything is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evaluation {
    /// The decision to report.
    pub decision: Decision,
    /// This check goes over the limit and starts a penalty block ending at
    /// this time (µs). Never set for shadow checks.
    pub block_until: Option<u64>,
    /// Which offence in a row the started block answers (0 when none
    /// starts): its step on the policy's ladder.
    pub offence: u32,
}

impl KeyState {
    /// The empty state for `policy`.
    pub fn fresh(policy: &Policy) -> Self {
        KeyState {
            limit: LimitState::fresh(policy.algorithm()),
            penalty: Penalty::NONE,
        }
    }

    /// Refused until this time (µs); 0 when never blocked.
    pub fn blocked_until(&self) -> u64 {
        self.penalty.until()
    }

    /// Decides a check of `cost` at `now`, penalty blocks included.
    ///
    /// A key under a penalty block is refused whatever its counter says (a
    /// blocked client consumes no quota). A non-shadow refusal on a policy
    /// with `block_for` starts a block: the step of the policy's ladder for
    /// this offence (see [`Policy::with_block_ladder`]).
    ///
    /// A refusal's `retry_after` covers both the block and the counter: a
    /// block shorter than the counter's own wait must not send the client
    /// back early, where it would be refused again and blocked anew.
    pub fn evaluate(&self, policy: &Policy, now: u64, cost: u64, shadow: bool) -> Evaluation {
        let mut decision = self.limit.decide(policy, now, cost);
        let blocked_until = self.penalty.until();
        if blocked_until > now {
            let left = Duration::from_micros(blocked_until - now);
            let counter_retry = decision.retry_after.unwrap_or(Duration::ZERO);
            // Quota is whole again once both the block and the counter (with
            // nothing taken now) are clear.
            let counter_reset = if decision.allowed {
                self.limit.decide(policy, now, 0).reset_after
            } else {
                decision.reset_after
            };
            decision.allowed = false;
            decision.remaining = 0;
            decision.retry_after = Some(left.max(counter_retry));
            decision.reset_after = left.max(counter_reset);
            decision.blocked = true;
            decision.delay = Duration::ZERO;
            return Evaluation {
                decision,
                block_until: None,
                offence: 0,
            };
        }
        if decision.allowed || shadow || policy.block_for_us().is_none() {
            return Evaluation {
                decision,
                block_until: None,
                offence: 0,
            };
        }
        let offence = self.penalty.next_offence(policy, now);
        let block = policy.block_step_us(offence).unwrap_or(0);
        let block_len = Duration::from_micros(block);
        decision.remaining = 0;
        decision.retry_after = decision.retry_after.max(Some(block_len));
        decision.reset_after = decision.reset_after.max(block_len);
        decision.blocked = true;
        Evaluation {
            decision,
            block_until: Some(now + block),
            offence,
        }
    }

    /// Decides a check that is a request of its own (no other rule can veto
    /// it) and records the outcome: the same as [`evaluate`](Self::evaluate)
    /// then [`apply`](Self::apply) with `admit` set to `charge`, in one pass
    /// on the path where no penalty is in force or starts. Sets `changed`
    /// when the state changed (and leaves it alone when not).
    #[inline(always)]
    pub fn check(
        &mut self,
        policy: &Policy,
        now: u64,
        cost: u64,
        shadow: bool,
        charge: bool,
        changed: &mut bool,
    ) -> Decision {
        if self.penalty.until() > now {
            return self.check_blocked(policy, now, cost);
        }
        let decision = self.limit.take(policy, now, cost, charge);
        if decision.allowed || shadow || policy.block_for_us().is_none() {
            if decision.allowed && charge {
                *changed = true;
            }
            return decision;
        }
        *changed = true;
        self.start_penalty(policy, now, cost)
    }

    /// [`check`](Self::check) under a penalty block: refused, nothing changes.
    #[cold]
    #[inline(never)]
    fn check_blocked(&self, policy: &Policy, now: u64, cost: u64) -> Decision {
        self.evaluate(policy, now, cost, false).decision
    }

    /// [`check`](Self::check) refused on a policy with a penalty: nothing
    /// was recorded, so the evaluation sees the same state, and starts the
    /// block.
    #[cold]
    #[inline(never)]
    fn start_penalty(&mut self, policy: &Policy, now: u64, cost: u64) -> Decision {
        let eval = self.evaluate(policy, now, cost, false);
        self.apply(policy, now, cost, &eval, false);
        eval.decision
    }

    /// Records the outcome of `evaluate`: commits the cost when `admit`, and
    /// starts the penalty block the evaluation asked for.
    pub fn apply(&mut self, policy: &Policy, now: u64, cost: u64, eval: &Evaluation, admit: bool) {
        if admit && eval.decision.allowed {
            self.limit.commit(policy, now, cost);
        }
        if let Some(until) = eval.block_until {
            // Offences are only counted where a ladder climbs on them.
            let offences = if policy.block_memory_us() > 0 {
                eval.offence
            } else {
                0
            };
            self.penalty = Penalty::new(until, offences);
        }
    }

    /// The time (µs) after which this state is the same as an empty one.
    pub fn expires_at(&self, policy: &Policy) -> u64 {
        self.limit
            .expires_at(policy)
            .max(self.penalty.expires_at(policy))
    }
}

/// Shared by the algorithm unit tests: fixed times, policies, and a
/// decide-then-commit step as a store performs it.
#[cfg(test)]
pub(crate) mod test_support {
    use std::time::Duration;

    use super::LimitState;
    use crate::decision::Decision;
    use crate::policy::{Algorithm, Policy};

    /// A time aligned to every window the tests use (a multiple of 10 s).
    pub(crate) const T: u64 = 1_700_000_000_000_000;
    /// One second in µs.
    pub(crate) const SEC: u64 = 1_000_000;

    /// `limit` per `window_s` seconds.
    pub(crate) fn policy(algorithm: Algorithm, limit: u64, window_s: u64) -> Policy {
        Policy::new(algorithm, limit, Duration::from_secs(window_s)).expect("valid policy")
    }

    /// `n` µs as a duration.
    pub(crate) fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// Decides `cost` at `now` and commits it when admitted.
    pub(crate) fn take(state: &mut LimitState, policy: &Policy, now: u64, cost: u64) -> Decision {
        let d = state.decide(policy, now, cost);
        if d.allowed {
            state.commit(policy, now, cost);
        }
        d
    }

    /// Asserts `d` admitted with `remaining` left and quota restored after `reset_us`.
    #[track_caller]
    pub(crate) fn assert_admitted(d: Decision, remaining: u64, reset_us: u64) {
        assert!(d.allowed, "expected admission, got {d:?}");
        assert_eq!(
            (d.remaining, d.reset_after, d.retry_after),
            (remaining, us(reset_us), None),
            "{d:?}"
        );
    }

    /// Asserts `d` refused with `remaining` left, `retry_us` and `reset_us`.
    #[track_caller]
    pub(crate) fn assert_refused(d: Decision, remaining: u64, retry_us: u64, reset_us: u64) {
        assert!(!d.allowed, "expected refusal, got {d:?}");
        assert_eq!(
            (d.remaining, d.retry_after, d.reset_after),
            (remaining, Some(us(retry_us)), us(reset_us)),
            "{d:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::test_support::*;
    use super::{KeyState, LimitState, fixed_window};
    use crate::policy::Algorithm;

    #[test]
    fn a_state_of_another_algorithm_counts_as_empty() {
        let full = LimitState::FixedWindow(fixed_window::State {
            window_start: T,
            count: 10,
        });
        for algorithm in Algorithm::ALL {
            if algorithm == Algorithm::FixedWindow {
                continue;
            }
            let p = policy(algorithm, 10, 10);
            let mut s = full.clone();
            let d = take(&mut s, &p, T + SEC, 1);
            assert_eq!(d, LimitState::fresh(algorithm).decide(&p, T + SEC, 1));
            assert!(d.allowed && d.remaining == 9, "{algorithm}: {d:?}");
            // The commit replaced the foreign state.
            assert_eq!(s.algorithm(), algorithm);
        }
    }

    /// Runs `evaluate` + `apply` for a single-check request, as a store does.
    fn check(state: &mut KeyState, p: &crate::Policy, now: u64, shadow: bool) -> super::Evaluation {
        let eval = state.evaluate(p, now, 1, shadow);
        state.apply(p, now, 1, &eval, eval.decision.allowed || shadow);
        eval
    }

    /// `KeyState::check` (the memory store's single-check path) decides and
    /// records exactly as `evaluate` then `apply` do, whatever the algorithm,
    /// penalty, shadow or probe, and across a change of algorithm.
    #[test]
    fn check_is_evaluate_then_apply() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let policies: Vec<crate::Policy> = Algorithm::ALL
            .into_iter()
            .flat_map(|a| {
                let plain = policy(a, 3, 2);
                let block = plain
                    .clone()
                    .with_block_ladder(&[1, 3].map(Duration::from_secs))
                    .expect("valid ladder");
                let one = plain
                    .clone()
                    .with_block_for(Duration::from_secs(1))
                    .expect("valid block");
                [plain, block, one]
            })
            .collect();
        for _ in 0..200 {
            let mut fast = KeyState::fresh(&policies[0]);
            let mut slow = fast.clone();
            let mut now = T;
            for _ in 0..60 {
                let p = &policies[next(policies.len() as u64) as usize];
                now += next(4) * SEC / 4;
                let cost = 1 + next(2);
                let (shadow, charge) = (next(5) == 0, next(5) != 0);
                let mut changed = false;
                let decision = fast.check(p, now, cost, shadow, charge, &mut changed);
                let eval = slow.evaluate(p, now, cost, shadow);
                let before = slow.clone();
                if (eval.decision.allowed && charge) || eval.block_until.is_some() {
                    slow.apply(p, now, cost, &eval, true);
                }
                assert_eq!(decision, eval.decision);
                assert_eq!(fast, slow);
                assert_eq!(changed, fast != before || (eval.decision.allowed && charge));
            }
        }
    }

    #[test]
    fn a_penalty_refuses_for_block_for_without_consuming_quota() {
        let p = policy(Algorithm::FixedWindow, 2, 10)
            .with_block_for(Duration::from_secs(60))
            .expect("valid block");
        let mut s = KeyState::fresh(&p);
        assert!(check(&mut s, &p, T, false).decision.allowed);
        assert!(check(&mut s, &p, T, false).decision.allowed);

        let over = check(&mut s, &p, T + SEC, false);
        assert_eq!(over.block_until, Some(T + 61 * SEC));
        assert!(!over.decision.allowed && over.decision.blocked);
        assert_refused(over.decision, 0, 60 * SEC, 60 * SEC);
        assert_eq!(s.blocked_until(), T + 61 * SEC);

        // The window has long rolled over, but the block holds; the counter
        // stays as it was and the block is not extended.
        let counter = s.limit.clone();
        let during = check(&mut s, &p, T + 30 * SEC, false);
        assert_eq!(during.block_until, None);
        assert_refused(during.decision, 0, 31 * SEC, 31 * SEC);
        assert!(during.decision.blocked);
        assert_eq!(s.limit, counter);
        assert_eq!(s.expires_at(&p), T + 61 * SEC);

        let after = check(&mut s, &p, T + 61 * SEC, false);
        assert!(after.decision.allowed && !after.decision.blocked);
        assert_eq!(after.decision.remaining, 1);
    }

    /// Guards a fixed bug: a refusal under a block once said "retry after the
    /// block", even when the counter needed longer; the client came back
    /// early, was refused again and blocked anew.
    #[test]
    fn a_penalty_shorter_than_the_counters_wait_does_not_cut_the_retry() {
        let p = policy(Algorithm::SlidingLog, 1, 60)
            .with_block_for(Duration::from_secs(1))
            .expect("valid block");
        let mut s = KeyState::fresh(&p);
        assert!(check(&mut s, &p, T, false).decision.allowed);
        let over = check(&mut s, &p, T + SEC, false);
        assert_eq!(over.block_until, Some(T + 2 * SEC));
        assert_refused(over.decision, 0, 59 * SEC, 59 * SEC);
        let during = check(&mut s, &p, T + SEC + SEC / 2, false);
        assert_refused(during.decision, 0, 58 * SEC + SEC / 2, 58 * SEC + SEC / 2);
        assert!(during.decision.blocked);
        assert!(check(&mut s, &p, T + 60 * SEC, false).decision.allowed);
    }

    #[test]
    fn a_shadow_refusal_never_starts_a_penalty() {
        let p = policy(Algorithm::TokenBucket, 1, 10)
            .with_block_for(Duration::from_secs(60))
            .expect("valid block");
        let mut s = KeyState::fresh(&p);
        assert!(check(&mut s, &p, T, true).decision.allowed);
        let over = check(&mut s, &p, T, true);
        assert!(!over.decision.allowed && !over.decision.blocked);
        assert_eq!(over.block_until, None);
        assert_eq!(over.decision.retry_after, Some(us(10 * SEC)));
        assert_eq!(s.blocked_until(), 0);
    }
    #[test]
    fn a_ladder_climbs_repeats_its_last_step_and_forgets() {
        let p = policy(Algorithm::FixedWindow, 1, 10)
            .with_block_ladder(&[60, 600, 3600].map(Duration::from_secs))
            .expect("valid ladder");
        let mut s = KeyState::fresh(&p);
        // Offends at `at` (µs): one admitted, one refused; returns the block.
        let mut offend = |at: u64| {
            let mut now = at;
            loop {
                let eval = check(&mut s, &p, now, false);
                if let Some(until) = eval.block_until {
                    return (until - now) / SEC;
                }
                assert!(eval.decision.allowed, "refused without a block at {now}");
                now += 1;
            }
        };
        assert_eq!(offend(T), 60);
        // 30 s after the block ended: remembered.
        assert_eq!(offend(T + 90 * SEC), 600);
        assert_eq!(offend(T + 700 * SEC), 3600);
        assert_eq!(offend(T + 4400 * SEC), 3600);
        // A whole last step (1 h) clean after the block ended: forgotten.
        let ended = T + 4400 * SEC + 3600 * SEC;
        assert_eq!(offend(ended + 3600 * SEC), 60);
        // The state lives as long as the offence is remembered.
        assert!(s.expires_at(&p) >= ended + 3600 * SEC + 60 * SEC + 3600 * SEC);
    }

    #[test]
    fn a_plain_block_for_counts_no_offences() {
        let p = policy(Algorithm::FixedWindow, 1, 10)
            .with_block_for(Duration::from_secs(60))
            .expect("valid block");
        let mut s = KeyState::fresh(&p);
        check(&mut s, &p, T, false);
        let over = check(&mut s, &p, T, false);
        assert_eq!((over.block_until, over.offence), (Some(T + 60 * SEC), 1));
        assert_eq!(s.penalty.offences(), 0);
        assert_eq!(s.expires_at(&p), T + 60 * SEC);
    }
    #[test]
    fn a_token_bucket_with_a_max_delay_spreads_a_burst_and_refunds_places() {
        let p = policy(Algorithm::TokenBucket, 5, 1)
            .with_burst(1)
            .and_then(|p| p.with_max_delay(Duration::from_secs(1)))
            .expect("valid policy");
        let mut s = LimitState::fresh(Algorithm::TokenBucket);
        let waits: Vec<u64> = (0..6)
            .map(|_| {
                let d = take(&mut s, &p, T, 1);
                assert!(d.allowed, "{d:?}");
                d.delay.as_millis() as u64
            })
            .collect();
        assert_eq!(waits, [0, 200, 400, 600, 800, 1000]);
        // The seventh would wait 1.2 s: refused, told when a retry is held
        // no longer than the most.
        let over = take(&mut s, &p, T, 1);
        assert!(!over.allowed && over.delay.is_zero());
        assert_eq!(over.retry_after, Some(us(200_000)));
        // A held request that never went ahead gives its place back.
        s.refund(&p, T, 1);
        let again = take(&mut s, &p, T, 1);
        assert!(again.allowed);
        assert_eq!(again.delay, us(1_000_000));
        // Without a max delay nothing changes.
        let plain = policy(Algorithm::TokenBucket, 5, 1)
            .with_burst(1)
            .expect("valid");
        let mut s = LimitState::fresh(Algorithm::TokenBucket);
        assert!(take(&mut s, &plain, T, 1).allowed);
        let refused = take(&mut s, &plain, T, 1);
        assert!(!refused.allowed && refused.delay.is_zero());
        assert_eq!(refused.retry_after, Some(us(200_000)));
    }
}
