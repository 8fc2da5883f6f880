//! Property tests of the four algorithms against simple reference models,
//! driven by random sequences of (time advance, cost).
//!
//! Each run plays the sequence the way a store does (decide, then commit what
//! was admitted) and then checks the admitted history against the bound the
//! algorithm promises. Every refusal is also checked for an honest
//! `retry_after`, and every decision for an honest `remaining`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use floodgate_core::algorithm::{KeyState, LimitState};
use floodgate_core::{Algorithm, Decision, Policy};
use proptest::prelude::*;

/// A start time aligned to every window generated here.
const T0: u64 = 1_700_000_000_000_000;

/// One check: the clock moves by `advance` µs, then `cost` units are asked for.
#[derive(Debug, Clone, Copy)]
struct Step {
    advance: i64,
    cost: u64,
}

/// A policy, a start time and the steps to play against it.
#[derive(Debug, Clone)]
struct Scenario {
    policy: Policy,
    start: u64,
    steps: Vec<Step>,
}

/// Small limits and windows of 1 to 20 ms, so that random advances cross
/// windows, land on boundaries and pile up bursts in the same microsecond.
/// `backwards` lets the clock step back now and then.
fn scenario(algorithm: Algorithm, backwards: bool) -> impl Strategy<Value = Scenario> {
    (1..=12u64, 1..=20u64, 1..=16u64, any::<bool>())
        .prop_flat_map(move |(limit, window_ms, burst, custom_burst)| {
            let mut policy =
                Policy::new(algorithm, limit, Duration::from_millis(window_ms)).unwrap();
            if algorithm == Algorithm::TokenBucket && custom_burst {
                policy = policy.with_burst(burst).unwrap();
            }
            let w = policy.window_us();
            let spacing = w / limit;
            let forward = prop_oneof![
                3 => Just(0i64),
                3 => 0..=20i64,
                4 => 0..=(2 * spacing) as i64,
                1 => 0..=(3 * w) as i64,
            ];
            let advance = if backwards {
                prop_oneof![6 => forward, 1 => -(2 * w as i64)..0].boxed()
            } else {
                forward.boxed()
            };
            let cost = prop_oneof![3 => Just(1u64), 1 => 1..=policy.capacity()];
            let steps = prop::collection::vec(
                (advance, cost).prop_map(|(advance, cost)| Step { advance, cost }),
                1..120,
            );
            (Just(policy), 0..w, steps)
        })
        .prop_map(|(policy, offset, steps)| Scenario {
            policy,
            start: T0 + offset,
            steps,
        })
}

/// µs in a duration known to fit.
fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap()
}

/// Whether the algorithm's `retry_after` is exact to the microsecond (the
/// sliding window's may be one microsecond late: its decay point is found in
/// floating point and rounded up).
fn exact_retry(algorithm: Algorithm) -> bool {
    algorithm != Algorithm::SlidingWindow
}

/// Checks what a decision says about the future against the state it was
/// made on: retrying at `now + retry_after` succeeds (and not earlier, within
/// the algorithm's precision), and `remaining` is exactly what fits now.
fn check_promises(state: &LimitState, p: &Policy, now: u64, cost: u64, d: &Decision) {
    if let Some(retry) = d.retry_after {
        let retry = us(retry);
        assert!(
            state.decide(p, now + retry, cost).allowed,
            "retry_after {retry} µs at {now} for cost {cost} is not honest: {state:?}"
        );
        let slack = if exact_retry(p.algorithm()) { 1 } else { 2 };
        if retry >= slack {
            assert!(
                !state.decide(p, now + retry - slack, cost).allowed,
                "cost {cost} fits {slack} µs before retry_after {retry} µs at {now}: {state:?}"
            );
        }
    }
}

/// `remaining` after a decision (taken on `state`, already committed if
/// admitted) is exactly the largest cost that fits now.
fn check_remaining(state: &LimitState, p: &Policy, now: u64, d: &Decision) {
    if d.remaining > 0 {
        assert!(
            state.decide(p, now, d.remaining).allowed,
            "remaining {} does not fit at {now}: {state:?}",
            d.remaining
        );
    }
    if d.remaining < p.capacity() {
        assert!(
            !state.decide(p, now, d.remaining + 1).allowed,
            "more than remaining {} fits at {now}: {state:?}",
            d.remaining
        );
    }
}

/// Plays `s` on a fresh state, checking every decision's promises and asking
/// `reference` (given the history admitted so far) whether it would admit.
/// Returns the admitted (time, cost) pairs.
fn play(
    s: &Scenario,
    mut reference: impl FnMut(&[(u64, u64)], u64, u64) -> Option<bool>,
) -> Vec<(u64, u64)> {
    let p = &s.policy;
    let mut state = LimitState::fresh(p.algorithm());
    let mut now = s.start;
    let mut admitted = Vec::new();
    for step in &s.steps {
        now = now.checked_add_signed(step.advance).unwrap();
        let d = state.decide(p, now, step.cost);
        assert_eq!(d.allowed, d.retry_after.is_none(), "{d:?}");
        check_promises(&state, p, now, step.cost, &d);
        if let Some(expected) = reference(&admitted, now, step.cost) {
            assert_eq!(
                d.allowed, expected,
                "at {now}, cost {}: the reference model disagrees after {admitted:?}",
                step.cost
            );
        }
        if d.allowed {
            state.commit(p, now, step.cost);
            admitted.push((now, step.cost));
        }
        check_remaining(&state, p, now, &d);
    }
    admitted
}

/// Cost admitted at times in `[from, until)`.
fn admitted_in(admitted: &[(u64, u64)], from: u64, until: u64) -> u64 {
    admitted
        .iter()
        .filter(|&&(t, _)| from <= t && t < until)
        .map(|&(_, c)| c)
        .sum()
}

/// The most cost admitted in any interval of length `w` (the busiest such
/// interval starts at an admission).
fn busiest_interval(admitted: &[(u64, u64)], w: u64) -> u64 {
    admitted
        .iter()
        .map(|&(t, _)| admitted_in(admitted, t, t + w))
        .max()
        .unwrap_or(0)
}

/// The most cost admitted in any window aligned to the epoch.
fn busiest_aligned_window(admitted: &[(u64, u64)], w: u64) -> u64 {
    admitted
        .iter()
        .map(|&(t, _)| admitted_in(admitted, t - t % w, t - t % w + w))
        .max()
        .unwrap_or(0)
}

proptest! {
    /// Exact: never more than `limit` in any interval of length `window`, and
    /// admits exactly when an exact log of admissions would.
    #[test]
    fn sliding_log_is_an_exact_log(s in scenario(Algorithm::SlidingLog, false)) {
        let (limit, w) = (s.policy.limit(), s.policy.window_us());
        let admitted = play(&s, |log, now, cost| {
            let live = admitted_in(log, (now + 1).saturating_sub(w), now + 1);
            Some(live + cost <= limit)
        });
        prop_assert!(busiest_interval(&admitted, w) <= limit);
    }

    /// Never more than `limit` per aligned window, and admits exactly when the
    /// window's count leaves room.
    #[test]
    fn fixed_window_counts_each_aligned_window(s in scenario(Algorithm::FixedWindow, false)) {
        let (limit, w) = (s.policy.limit(), s.policy.window_us());
        let admitted = play(&s, |log, now, cost| {
            Some(admitted_in(log, now - now % w, now - now % w + w) + cost <= limit)
        });
        prop_assert!(busiest_aligned_window(&admitted, w) <= limit);
    }

    /// Never more than `limit` per aligned window; at most `2 * limit` in any
    /// interval of length `window` (the bound in the module doc; it once said
    /// "fewer than", which this test refuted with limit 1: one unit at the end
    /// of a window, one just after the boundary).
    #[test]
    fn sliding_window_stays_within_its_error_bound(s in scenario(Algorithm::SlidingWindow, false)) {
        let (limit, w) = (s.policy.limit(), s.policy.window_us());
        let admitted = play(&s, |_, _, _| None);
        prop_assert!(busiest_aligned_window(&admitted, w) <= limit);
        prop_assert!(busiest_interval(&admitted, w) <= 2 * limit);
    }

    /// Never more than `burst + floor(t / emission_interval)` in any closed
    /// interval of length `t`, and admits exactly when a token bucket holding
    /// at most `burst` tokens, refilled one token per interval, has the cost.
    #[test]
    fn token_bucket_is_a_token_bucket(s in scenario(Algorithm::TokenBucket, false)) {
        let (burst, t) = (s.policy.burst(), s.policy.emission_interval_us());
        // Tokens counted in µs of refill: full is burst × t.
        let mut level = burst * t;
        let mut last = s.start;
        let admitted = play(&s, |_, now, cost| {
            level = (level + (now - last)).min(burst * t);
            last = now;
            let fits = level >= cost * t;
            if fits {
                level -= cost * t;
            }
            Some(fits)
        });
        for (i, &(a, _)) in admitted.iter().enumerate() {
            let mut total = 0;
            for &(b, cost) in &admitted[i..] {
                total += cost;
                prop_assert!(
                    total <= burst + (b - a) / t,
                    "{total} admitted in [{a}, {b}]: {admitted:?}"
                );
            }
        }
    }

    /// With the clock stepping back now and then, every refusal's retry_after
    /// stays honest and quota only ever comes back as time moves forward: a
    /// stepped-back clock never finds more room than a later one would.
    #[test]
    fn a_clock_stepping_back_never_frees_quota(
        s in prop::sample::select(Algorithm::ALL.to_vec())
            .prop_flat_map(|a| scenario(a, true)),
    ) {
        let p = &s.policy;
        let mut state = LimitState::fresh(p.algorithm());
        let mut now = s.start;
        for step in &s.steps {
            now = now.checked_add_signed(step.advance).unwrap();
            let d = state.decide(p, now, step.cost);
            check_promises(&state, p, now, step.cost, &d);
            let later = now + p.window_us() / 3 + 1;
            let room_now = state.decide(p, now, 0).remaining;
            let room_later = state.decide(p, later, 0).remaining;
            prop_assert!(room_later >= room_now, "{room_now} then {room_later}: {state:?}");
            let admits_later = state.decide(p, later, step.cost).allowed;
            prop_assert!(admits_later || !d.allowed, "admitted at {now}, not at {later}: {state:?}");
            if d.allowed {
                state.commit(p, now, step.cost);
            }
        }
    }

    /// A penalty refuses for exactly `block_for` after a refusal, consumes no
    /// quota while it lasts, and its retry_after is honest; shadow checks
    /// never start one.
    #[test]
    fn penalties_block_for_block_for(
        s in prop::sample::select(Algorithm::ALL.to_vec())
            .prop_flat_map(|a| scenario(a, false)),
        block_ms in 1..=40u64,
        shadows in prop::collection::vec(prop::bool::weighted(0.2), 120),
    ) {
        let p = s.policy.clone().with_block_for(Duration::from_millis(block_ms)).unwrap();
        let block = p.block_for_us().unwrap();
        let mut state = KeyState::fresh(&p);
        let mut blocked_until = 0;
        let mut now = s.start;
        for (step, &shadow) in s.steps.iter().zip(&shadows) {
            now = now.checked_add_signed(step.advance).unwrap();
            let eval = state.evaluate(&p, now, step.cost, shadow);
            let d = eval.decision;
            let before = state.clone();
            if now < blocked_until {
                prop_assert!(!d.allowed && d.blocked && eval.block_until.is_none(), "{eval:?}");
                prop_assert_eq!(d.retry_after.map(us).map(|r| r >= blocked_until - now), Some(true));
            } else {
                let counter = state.limit.decide(&p, now, step.cost);
                prop_assert_eq!(d.allowed, counter.allowed);
                let starts = !counter.allowed && !shadow;
                prop_assert_eq!(eval.block_until, starts.then_some(now + block));
                prop_assert_eq!(d.blocked, starts);
                if starts {
                    blocked_until = now + block;
                }
            }
            state.apply(&p, now, step.cost, &eval, d.allowed);
            if !d.allowed {
                prop_assert_eq!(&state.limit, &before.limit, "a refusal consumed quota");
                let retry = us(d.retry_after.unwrap());
                let again = state.evaluate(&p, now + retry, step.cost, shadow);
                prop_assert!(
                    again.decision.allowed,
                    "retry_after {} µs at {} refused again: {:?} after {:?}",
                    retry, now, again, eval
                );
            }
        }
    }
    /// A block ladder: every block started is the step of its offence (the
    /// last step repeating), an offence climbs the ladder exactly while the
    /// one before is remembered (until its block's end plus the last step),
    /// else starts over; the key's state lives at least as long as that
    /// memory, and a block is never started while one is in force.
    #[test]
    fn a_ladder_climbs_while_remembered_and_starts_over_when_forgotten(
        s in prop::sample::select(Algorithm::ALL.to_vec())
            .prop_flat_map(|a| scenario(a, false)),
        mut steps_ms in prop::collection::vec(1..=30u64, 2..=5),
        shadows in prop::collection::vec(prop::bool::weighted(0.1), 120),
    ) {
        steps_ms.sort_unstable();
        let ladder: Vec<Duration> = steps_ms.iter().map(|&ms| Duration::from_millis(ms)).collect();
        let p = s.policy.clone().with_block_ladder(&ladder).unwrap();
        let steps_us: Vec<u64> = steps_ms.iter().map(|ms| ms * 1000).collect();
        let memory = *steps_us.last().unwrap();
        let mut state = KeyState::fresh(&p);
        // The model: the last block's end and its offence number.
        let (mut until, mut offence) = (0u64, 0u32);
        let mut now = s.start;
        for (step, &shadow) in s.steps.iter().zip(&shadows) {
            now = now.checked_add_signed(step.advance).unwrap();
            let eval = state.evaluate(&p, now, step.cost, shadow);
            if now < until {
                prop_assert!(eval.block_until.is_none() && eval.decision.blocked);
            } else if let Some(end) = eval.block_until {
                let expected = if offence > 0 && now < until + memory { offence + 1 } else { 1 };
                prop_assert_eq!(eval.offence, expected);
                let at = (expected as usize).min(steps_us.len()) - 1;
                prop_assert_eq!(end, now + steps_us[at], "offence {}", expected);
                prop_assert_eq!(eval.decision.retry_after.map(|r| r >= Duration::from_micros(steps_us[at])), Some(true));
                until = end;
                offence = expected;
            }
            state.apply(&p, now, step.cost, &eval, eval.decision.allowed);
            if offence > 0 {
                prop_assert!(state.expires_at(&p) >= until + memory, "an offence forgotten early");
            }
        }
    }
}
