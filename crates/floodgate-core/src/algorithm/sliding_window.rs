//! Sliding window counter: the current aligned window's count plus the previous
//! window's count weighted by the share of it the sliding window still covers.
//!
//! It assumes the previous window's requests were spread evenly. Its error
//! bound, checked by `tests/algorithm_properties.rs`:
//! - an aligned window never admits more than `limit`;
//! - any interval of length `window` admits at most `2 * limit`, and whenever
//!   `2 * limit` is less than the window in µs that bound is reached: the
//!   previous window's whole quota in its last microsecond, then the current
//!   window's whole quota two microseconds before its end, where the floored
//!   weight of the previous window is already zero.
//!
//! The weighting is done in `f64`, in the same order of operations as the Lua
//! script, so the memory and Redis stores decide identically.

use crate::decision::Decision;
use crate::policy::Policy;

/// Two adjacent window counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    /// Start of the current window (µs since the epoch).
    pub window_start: u64,
    /// Cost admitted in the window before `window_start`.
    pub previous: u64,
    /// Cost admitted since `window_start`.
    pub current: u64,
}

/// The state rolled forward to the window containing `now`.
fn roll(state: &State, policy: &Policy, now: u64) -> State {
    let w = policy.window_us();
    let start = now - now % w;
    if state.window_start >= start {
        *state
    } else if state.window_start + w == start {
        State {
            window_start: start,
            previous: state.current,
            current: 0,
        }
    } else {
        State {
            window_start: start,
            ..State::default()
        }
    }
}

/// The previous window's weighted contribution at `elapsed` µs into the current one.
fn weighted(previous: u64, window: u64, elapsed: u64) -> u64 {
    let weight = (window - elapsed.min(window)) as f64 / window as f64;
    (previous as f64 * weight).floor() as u64
}

/// Microseconds into a window at which `weighted(previous, ..) <= budget` first holds.
fn decay_point(previous: u64, window: u64, budget: u64) -> u64 {
    if weighted(previous, window, 0) <= budget {
        return 0;
    }
    let point = window as f64 - (budget + 1) as f64 * window as f64 / previous as f64;
    (point.ceil() as u64 + 1).min(window)
}

/// Decides whether `cost` fits at `now`.
pub fn decide(state: &State, policy: &Policy, now: u64, cost: u64) -> Decision {
    let w = policy.window_us();
    let limit = policy.limit();
    let s = roll(state, policy, now);
    let elapsed = now.saturating_sub(s.window_start);
    let count = weighted(s.previous, w, elapsed) + s.current;
    let allowed = count + cost <= limit;
    let used = if allowed { count + cost } else { count };
    let current = if allowed { s.current + cost } else { s.current };
    let to_boundary = (s.window_start + w).saturating_sub(now);
    let reset_after = if current > 0 {
        to_boundary + w
    } else if s.previous > 0 {
        to_boundary
    } else {
        0
    };
    let retry_after = if allowed {
        0
    } else if s.current + cost <= limit {
        // From the window's start, not from `now`: after the clock stepped
        // back, `now` can lie before `window_start`, where nothing decays.
        (s.window_start + decay_point(s.previous, w, limit - s.current - cost)).saturating_sub(now)
    } else {
        to_boundary + decay_point(s.current, w, limit - cost)
    };
    Decision::new(
        allowed,
        limit,
        limit.saturating_sub(used),
        reset_after,
        retry_after.max(1),
    )
}

/// Records an admitted `cost` at `now`.
pub fn commit(state: &mut State, policy: &Policy, now: u64, cost: u64) {
    let mut s = roll(state, policy, now);
    s.current += cost;
    *state = s;
}

/// When this state stops mattering.
pub fn expires_at(state: &State, policy: &Policy) -> u64 {
    state.window_start + 2 * policy.window_us()
}

#[cfg(test)]
mod tests {
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
}
