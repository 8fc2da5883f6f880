//! Tests of [`sliding_window`](super) through [`LimitState`], as a store drives it.
//!
//! In a file of their own: they use `algorithm/mod.rs` (`LimitState`,
//! `test_support`), which uses `sliding_window.rs`, so inside `sliding_window.rs` they would
//! make the two files import each other.

use super::State;
use crate::algorithm::LimitState;
use crate::algorithm::test_support::*;
use crate::policy::Algorithm::SlidingWindow;

#[test]
fn the_current_window_counts_in_full() {
    let p = policy(SlidingWindow, 10, 10);
    let mut s = LimitState::fresh(SlidingWindow);
    for k in 1..=10 {
        assert_admitted(take(&mut s, &p, T + SEC, 1), 10 - k, 19 * SEC);
    }
    // Full for this window: wait for the boundary, then for the previous
    // window's weight (10 × (1 - e/w)) to drop below 10.
    assert_refused(take(&mut s, &p, T + SEC, 1), 0, 9 * SEC + 1, 19 * SEC);
    assert_refused(take(&mut s, &p, T + 10 * SEC, 1), 0, 1, 10 * SEC);
    assert_admitted(take(&mut s, &p, T + 10 * SEC + 1, 1), 0, 20 * SEC - 1);
}

#[test]
fn the_previous_window_counts_by_its_remaining_overlap() {
    let p = policy(SlidingWindow, 10, 10);
    let mut s = LimitState::fresh(SlidingWindow);
    take(&mut s, &p, T, 10);
    // 2.5 s into the next window: floor(10 × 0.75) = 7 still count.
    let now = T + 12 * SEC + SEC / 2;
    // 4 units fit once the weight is at most 6: from 3 s + 1 µs in.
    assert_refused(take(&mut s, &p, now, 4), 3, 500_001, 7 * SEC + SEC / 2);
    assert!(!take(&mut s, &p, now + 500_000, 4).allowed);
    assert_admitted(take(&mut s, &p, now + 500_001, 4), 0, 17 * SEC - 1);
    assert_eq!(
        s,
        LimitState::SlidingWindow(State {
            window_start: T + 10 * SEC,
            previous: 10,
            current: 4
        })
    );
}

#[test]
fn two_windows_later_nothing_counts() {
    let p = policy(SlidingWindow, 10, 10);
    let mut s = LimitState::fresh(SlidingWindow);
    assert_admitted(s.decide(&p, T, 0), 10, 0);
    take(&mut s, &p, T, 10);
    assert_admitted(take(&mut s, &p, T + 20 * SEC, 1), 9, 20 * SEC);
    let LimitState::SlidingWindow(state) = s else {
        panic!("algorithm changed")
    };
    assert_eq!(super::expires_at(&state, &p), T + 40 * SEC);
}

#[test]
fn a_clock_stepping_back_keeps_the_later_windows() {
    let p = policy(SlidingWindow, 10, 10);
    let mut s = LimitState::fresh(SlidingWindow);
    take(&mut s, &p, T + 9 * SEC, 10);
    // Halfway into the next window half the previous one still counts.
    assert_admitted(take(&mut s, &p, T + 15 * SEC, 5), 0, 15 * SEC);
    // Back before that window began: nothing has decayed yet, and nothing
    // was forgotten. Guards a fixed bug: the retry was measured from `now`
    // as if it were in the later window (5 s + 1 µs, which lands 4 s into
    // it, where 6 units of the previous window still count).
    let d = take(&mut s, &p, T + 9 * SEC, 1);
    assert_refused(d, 0, 6 * SEC + 1, 21 * SEC);
    assert!(!take(&mut s, &p, T + 15 * SEC, 1).allowed);
    assert_admitted(take(&mut s, &p, T + 15 * SEC + 1, 1), 0, 15 * SEC - 1);
}

/// The bound stated in the module doc is reached: the previous window's
/// whole quota in its last microsecond, then the current window's whole
/// quota once the weight has floored to zero, all within `window`.
#[test]
fn twice_the_limit_fits_in_one_window_length_across_a_boundary() {
    let p = policy(SlidingWindow, 3, 10);
    let mut s = LimitState::fresh(SlidingWindow);
    assert!(take(&mut s, &p, T + 10 * SEC - 1, 3).allowed);
    // floor(3 × 2 / 10^7) = 0 two microseconds before the next boundary.
    assert!(take(&mut s, &p, T + 20 * SEC - 2, 3).allowed);
}
