//! Sliding log: one timestamp per admitted cost unit. Exact: no interval of
//! length `window` ever holds more than `limit` units. Memory is O(limit) per key.

use std::collections::VecDeque;

use crate::decision::Decision;
use crate::policy::Policy;

/// Admission times, oldest first. An entry at `t` counts during `[t, t + window)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// One timestamp (µs since the epoch) per admitted cost unit, never decreasing.
    pub entries: VecDeque<u64>,
}

/// Index of the first entry still inside the window at `now`.
fn first_live(state: &State, policy: &Policy, now: u64) -> usize {
    let w = policy.window_us();
    state.entries.partition_point(|&t| t + w <= now)
}

/// Decides whether `cost` fits at `now`.
pub fn decide(state: &State, policy: &Policy, now: u64, cost: u64) -> Decision {
    let w = policy.window_us();
    let limit = policy.limit();
    let first = first_live(state, policy, now);
    let count = (state.entries.len() - first) as u64;
    let allowed = count + cost <= limit;
    let newest = state.entries.back().map_or(0, |&t| t.max(now));
    let (used, reset_after, retry_after) = if allowed {
        (count + cost, newest.max(now) + w - now, 0)
    } else {
        // The (count + cost - limit)-th live entry must expire first.
        let k = (count + cost - limit) as usize;
        let t = state.entries[first + k - 1];
        let reset = state
            .entries
            .back()
            .map_or(0, |&t| (t + w).saturating_sub(now));
        (count, reset, (t + w).saturating_sub(now))
    };
    Decision::new(
        allowed,
        limit,
        limit.saturating_sub(used),
        if used == 0 { 0 } else { reset_after },
        retry_after,
    )
}

/// Records an admitted `cost` at `now`, dropping expired entries.
pub fn commit(state: &mut State, policy: &Policy, now: u64, cost: u64) {
    let first = first_live(state, policy, now);
    state.entries.drain(..first);
    // Never let the log go backwards in time: a stepped-back clock stamps new
    // entries with the newest time seen, which keeps them longer, never shorter.
    let stamp = state.entries.back().map_or(now, |&t| t.max(now));
    state
        .entries
        .extend(std::iter::repeat_n(stamp, cost as usize));
    // Charges may go past the limit: at most twice it is kept, the newest,
    // so a log stays within its bound whatever is charged.
    let keep = 2 * policy.limit() as usize;
    if state.entries.len() > keep {
        let excess = state.entries.len() - keep;
        state.entries.drain(..excess);
    }
}

/// When this state stops mattering.
pub fn expires_at(state: &State, policy: &Policy) -> u64 {
    state.entries.back().map_or(0, |&t| t + policy.window_us())
}

#[cfg(test)]
mod tests;
