//! Token bucket as the generic cell rate algorithm (GCRA): the whole state is
//! one "theoretical arrival time". One unit is emitted every
//! `window / limit` (rounded up); at most `burst` units can be taken at once.
//! Over any interval of length `t` it admits at most `burst + t / interval`.

use crate::decision::Decision;
use crate::policy::Policy;

/// The theoretical arrival time (µs since the epoch); 0 for a full bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    /// When the bucket will be full again if nothing more is taken.
    pub tat: u64,
}

/// Decides whether `cost` fits at `now`.
pub fn decide(state: &State, policy: &Policy, now: u64, cost: u64) -> Decision {
    let t = policy.emission_interval_us();
    let tau = t * policy.burst();
    let tat = state.tat.max(now);
    let new_tat = tat + t * cost;
    let allow_at = new_tat.saturating_sub(tau);
    let allowed = allow_at <= now;
    let (horizon, retry) = if allowed {
        (new_tat, 0)
    } else {
        (tat, allow_at - now)
    };
    let remaining = (now + tau).saturating_sub(horizon) / t;
    Decision::new(allowed, policy.limit(), remaining, horizon - now, retry)
}

/// Records an admitted `cost` at `now`.
pub fn commit(state: &mut State, policy: &Policy, now: u64, cost: u64) {
    state.tat = state.tat.max(now) + policy.emission_interval_us() * cost;
}

/// When this state stops mattering.
pub fn expires_at(state: &State, _policy: &Policy) -> u64 {
    state.tat
}

#[cfg(test)]
mod tests;
