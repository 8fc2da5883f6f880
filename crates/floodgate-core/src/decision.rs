//! The answer to "may this go ahead?".

use std::time::Duration;

/// The outcome of one check. A refusal is a value, not an error: `Err` is kept
/// for "the limiter could not decide".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the cost was admitted.
    pub allowed: bool,
    /// The policy's limit (cost units per window).
    pub limit: u64,
    /// Cost units that could still be admitted right now, after this check.
    pub remaining: u64,
    /// Time until the key's quota is entirely restored (zero when it already is).
    pub reset_after: Duration,
    /// When refused: the earliest time a retry with the same cost can succeed.
    pub retry_after: Option<Duration>,
    /// Refused because a penalty block (the policy's `block_for`) is in force.
    pub blocked: bool,
    /// Admitted under a policy with a maximum delay
    /// ([`Policy::with_max_delay`](crate::Policy::with_max_delay)): how long
    /// to hold the request before it goes ahead (its place in the bucket is
    /// that far in the future). Zero otherwise.
    pub delay: Duration,
}

impl Decision {
    /// A decision with `allowed` as given: the shape the pure algorithms
    /// return. Built field by field, without a branch: a decision built in
    /// one of two ways and then copied made the memory store's hot path
    /// wait on the copy (the flags, written a byte at a time, read back in
    /// one word).
    #[inline(always)]
    pub(crate) fn new(
        allowed: bool,
        limit: u64,
        remaining: u64,
        reset_after_us: u64,
        retry_after_us: u64,
    ) -> Self {
        Decision {
            allowed,
            limit,
            remaining,
            reset_after: Duration::from_micros(reset_after_us),
            retry_after: (!allowed).then(|| Duration::from_micros(retry_after_us)),
            blocked: false,
            delay: Duration::ZERO,
        }
    }
}
