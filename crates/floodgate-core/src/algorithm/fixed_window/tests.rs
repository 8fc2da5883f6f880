//! Tests of [`fixed_window`](super) through [`LimitState`], as a store drives it.
//!
//! In a file of their own: they use `algorithm/mod.rs` (`LimitState`,
//! `test_support`), which uses `fixed_window.rs`, so inside `fixed_window.rs` they would
//! make the two files import each other.

use super::State;
use crate::algorithm::LimitState;
use crate::algorithm::test_support::*;
use crate::policy::Algorithm::FixedWindow;

#[test]
fn counts_down_then_refuses_until_the_window_ends() {
    let p = policy(FixedWindow, 3, 10);
    let mut s = LimitState::fresh(FixedWindow);
    let now = T + 2 * SEC;
    assert_admitted(take(&mut s, &p, now, 1), 2, 8 * SEC);
    assert_admitted(take(&mut s, &p, now, 1), 1, 8 * SEC);
    assert_admitted(take(&mut s, &p, now, 1), 0, 8 * SEC);
    assert_refused(take(&mut s, &p, now, 1), 0, 8 * SEC, 8 * SEC);
    // One microsecond before the boundary: still this window.
    assert_refused(take(&mut s, &p, T + 10 * SEC - 1, 1), 0, 1, 1);
    // At the boundary: a fresh window.
    assert_admitted(take(&mut s, &p, T + 10 * SEC, 1), 2, 10 * SEC);
}

#[test]
fn weighted_costs_fill_the_window() {
    let p = policy(FixedWindow, 10, 10);
    let mut s = LimitState::fresh(FixedWindow);
    assert_admitted(take(&mut s, &p, T, 4), 6, 10 * SEC);
    assert_admitted(take(&mut s, &p, T, 4), 2, 10 * SEC);
    // A refused cost reports what is left for smaller ones.
    assert_refused(take(&mut s, &p, T + SEC, 4), 2, 9 * SEC, 9 * SEC);
    assert_admitted(take(&mut s, &p, T + SEC, 2), 0, 9 * SEC);
    assert_eq!(
        s,
        LimitState::FixedWindow(State {
            window_start: T,
            count: 10
        })
    );
}

#[test]
fn a_clock_stepping_back_keeps_the_later_count() {
    let p = policy(FixedWindow, 2, 10);
    let mut s = LimitState::fresh(FixedWindow);
    take(&mut s, &p, T + 10 * SEC + 1, 2);
    // Back into the previous window: the count of the later one still holds,
    // and the retry waits for the end of that later window.
    assert_refused(take(&mut s, &p, T + 5 * SEC, 1), 0, 15 * SEC, 15 * SEC);
    let LimitState::FixedWindow(state) = s else {
        panic!("algorithm changed")
    };
    assert_eq!(state.window_start, T + 10 * SEC);
    assert_eq!(super::expires_at(&state, &p), T + 20 * SEC);
}

#[test]
fn an_untouched_quota_has_nothing_to_reset() {
    let p = policy(FixedWindow, 5, 10);
    let d = LimitState::fresh(FixedWindow).decide(&p, T + SEC, 0);
    assert_admitted(d, 5, 0);
    // A count from an earlier window is no count at all.
    let old = LimitState::FixedWindow(State {
        window_start: T - 10 * SEC,
        count: 5,
    });
    assert_admitted(old.decide(&p, T, 5), 0, 10 * SEC);
}
