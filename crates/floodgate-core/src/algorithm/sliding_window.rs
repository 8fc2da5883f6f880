//! Sliding window counter: the current aligned window's count plus the previous
//! window's count weighted by the share of it the sliding window still covers.
//!
//! It assumes the previous window's requests were spread evenly. Its error
//! bound, checked by `tests/core/algorithm_properties.rs`:
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
    // Charges may go past the limit; at most twice it is kept (as
    // fixed_window does).
    s.current = (s.current + cost).min(2 * policy.limit());
    *state = s;
}

/// When this state stops mattering.
pub fn expires_at(state: &State, policy: &Policy) -> u64 {
    state.window_start + 2 * policy.window_us()
}

#[cfg(test)]
mod tests;
