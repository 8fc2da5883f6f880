//! Tests of [`sliding_log`](super) through [`LimitState`], as a store drives it.
//!
//! In a file of their own: they use `algorithm/mod.rs` (`LimitState`,
//! `test_support`), which uses `sliding_log.rs`, so inside `sliding_log.rs` they would
//! make the two files import each other.

use std::collections::VecDeque;

use super::State;
use crate::algorithm::LimitState;
use crate::algorithm::test_support::*;
use crate::policy::Algorithm::SlidingLog;

fn entries(s: &LimitState) -> Vec<u64> {
    let LimitState::SlidingLog(State { entries }) = s else {
        panic!("algorithm changed")
    };
    entries.iter().copied().collect()
}

#[test]
fn refuses_until_the_oldest_entry_leaves_the_window() {
    let p = policy(SlidingLog, 3, 10);
    let mut s = LimitState::fresh(SlidingLog);
    assert_admitted(take(&mut s, &p, T, 1), 2, 10 * SEC);
    assert_admitted(take(&mut s, &p, T + SEC, 1), 1, 10 * SEC);
    assert_admitted(take(&mut s, &p, T + 2 * SEC, 1), 0, 10 * SEC);
    // The entry at T counts during [T, T + 10 s).
    assert_refused(take(&mut s, &p, T + 3 * SEC, 1), 0, 7 * SEC, 9 * SEC);
    assert_refused(take(&mut s, &p, T + 10 * SEC - 1, 1), 0, 1, 2 * SEC + 1);
    assert_admitted(take(&mut s, &p, T + 10 * SEC, 1), 0, 10 * SEC);
    assert_eq!(entries(&s), [T + SEC, T + 2 * SEC, T + 10 * SEC]);
}

#[test]
fn a_cost_waits_for_as_many_entries_to_expire() {
    let p = policy(SlidingLog, 3, 10);
    let mut s = LimitState::fresh(SlidingLog);
    for i in 0..3 {
        take(&mut s, &p, T + i * SEC, 1);
    }
    // Two units need the two oldest entries (T, T + 1 s) gone.
    assert_refused(take(&mut s, &p, T + 3 * SEC, 2), 0, 8 * SEC, 9 * SEC);
    assert_refused(take(&mut s, &p, T + 11 * SEC - 1, 2), 1, 1, SEC + 1);
    assert_admitted(take(&mut s, &p, T + 11 * SEC, 2), 0, 10 * SEC);
    // One entry per unit, and the expired ones are gone.
    assert_eq!(entries(&s), [T + 2 * SEC, T + 11 * SEC, T + 11 * SEC]);
}

#[test]
fn a_clock_stepping_back_stamps_with_the_newest_time() {
    let p = policy(SlidingLog, 3, 10);
    let mut s = LimitState::fresh(SlidingLog);
    take(&mut s, &p, T + 5 * SEC, 2);
    // Five seconds earlier both entries still count.
    assert_admitted(take(&mut s, &p, T, 1), 0, 15 * SEC);
    assert_eq!(entries(&s), [T + 5 * SEC; 3]);
    assert_refused(take(&mut s, &p, T, 1), 0, 15 * SEC, 15 * SEC);
    let state = State {
        entries: VecDeque::from(entries(&s)),
    };
    assert_eq!(super::expires_at(&state, &p), T + 15 * SEC);
}

#[test]
fn an_empty_log_has_nothing_to_reset() {
    let p = policy(SlidingLog, 3, 10);
    assert_admitted(LimitState::fresh(SlidingLog).decide(&p, T, 0), 3, 0);
    assert_eq!(super::expires_at(&State::default(), &p), 0);
}
