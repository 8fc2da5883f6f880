//! Fixed window: one counter per window aligned to the Unix epoch.
//!
//! Any aligned window admits at most `limit`; an interval of length `window`
//! that straddles a boundary can admit up to `2 * limit`.

use crate::decision::Decision;
use crate::policy::Policy;

/// A fixed window counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    /// Start of the window `count` belongs to (µs since the epoch).
    pub window_start: u64,
    /// Cost admitted in that window.
    pub count: u64,
}

/// The window and count that apply at `now`. A state from a later window (the
/// clock went backwards) is kept, so a clock step never resets a count.
fn current(state: &State, policy: &Policy, now: u64) -> (u64, u64) {
    let start = now - now % policy.window_us();
    if state.window_start >= start {
        (state.window_start, state.count)
    } else {
        (start, 0)
    }
}

/// Decides whether `cost` fits at `now`.
pub fn decide(state: &State, policy: &Policy, now: u64, cost: u64) -> Decision {
    let (start, count) = current(state, policy, now);
    let limit = policy.limit();
    let reset_after = (start + policy.window_us()).saturating_sub(now);
    let allowed = count + cost <= limit;
    let used = if allowed { count + cost } else { count };
    Decision::new(
        allowed,
        limit,
        limit.saturating_sub(used),
        if used == 0 { 0 } else { reset_after },
        reset_after,
    )
}

/// Records an admitted `cost` at `now`.
pub fn commit(state: &mut State, policy: &Policy, now: u64, cost: u64) {
    let (start, count) = current(state, policy, now);
    *state = State {
        window_start: start,
        // A charge (Store::charge) may go past the limit; past twice the
        // limit it changes nothing a decision can see, and the count stays
        // small enough for Lua's doubles.
        count: (count + cost).min(2 * policy.limit()),
    };
}

/// When this state stops mattering.
pub fn expires_at(state: &State, policy: &Policy) -> u64 {
    state.window_start + policy.window_us()
}

#[cfg(test)]
mod tests;
