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
}

/// When this state stops mattering.
pub fn expires_at(state: &State, policy: &Policy) -> u64 {
    state.entries.back().map_or(0, |&t| t + policy.window_us())
}

#[cfg(test)]
mod tests {
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
}
