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

/// Decides whether `cost` fits at `now`, or (under a maximum delay) will
/// within it: then admitted with the wait as [`Decision::delay`], and a
/// refusal's retry is when a request would be admitted with the longest
/// wait.
pub fn decide(state: &State, policy: &Policy, now: u64, cost: u64) -> Decision {
    let t = policy.emission_interval_us();
    let tau = t * policy.burst();
    let slack = policy.max_delay_us();
    let tat = state.tat.max(now);
    let new_tat = tat + t * cost;
    let allow_at = new_tat.saturating_sub(tau);
    let allowed = allow_at <= now + slack;
    let (horizon, retry) = if allowed {
        (new_tat, 0)
    } else {
        (tat, allow_at - now - slack)
    };
    let room = (now + tau).saturating_sub(horizon);
    // No division when less than a unit is left (every refusal of a full
    // bucket): a 64-bit division is the slowest step here.
    let remaining = if room < t { 0 } else { room / t };
    let delay = if allowed {
        allow_at.saturating_sub(now)
    } else {
        0
    };
    Decision {
        delay: std::time::Duration::from_micros(delay),
        ..Decision::new(allowed, policy.limit(), remaining, horizon - now, retry)
    }
}

/// Gives back `cost` units a check admitted at a time in the future and that
/// never went ahead (its client left while held): the bucket's place moves
/// back, never before `now`.
pub fn refund(state: &mut State, policy: &Policy, now: u64, cost: u64) {
    state.tat = state
        .tat
        .saturating_sub(policy.emission_interval_us() * cost)
        .max(now);
}

/// Records an admitted `cost` at `now`.
pub fn commit(state: &mut State, policy: &Policy, now: u64, cost: u64) {
    let t = policy.emission_interval_us();
    // Charges (Store::charge) may push the bucket into debt; at most a year
    // of it is kept, so the time stays exact in Lua's doubles.
    let ceiling = now + t * policy.burst() + policy.max_delay_us() + MAX_DEBT_US;
    state.tat = (state.tat.max(now) + t * cost).min(ceiling);
}

/// The most debt charges can put a bucket into: 366 days.
pub const MAX_DEBT_US: u64 = 366 * 24 * 3600 * 1_000_000;

/// When this state stops mattering.
pub fn expires_at(state: &State, _policy: &Policy) -> u64 {
    state.tat
}

#[cfg(test)]
mod tests;
