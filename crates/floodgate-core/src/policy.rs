//! What a limit is: an algorithm, a quota, a window, and an optional penalty.
//!
//! A [`Policy`] can only be built through [`Policy::new`] and its `with_*`
//! methods, which reject values that would make the limiter misbehave (a zero
//! limit, a zero window, numbers too large to compute exactly in Redis' Lua).

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::micros_of;

/// The largest limit or burst accepted: far above any real quota, and small
/// enough that every count stays exact in a Lua double (< 2^53).
pub const MAX_LIMIT: u64 = 1_000_000_000_000;

/// The largest sliding-log limit: the log keeps one timestamp per admitted
/// unit, so this bounds a key's state at about 800 KB.
pub const MAX_LOG_LIMIT: u64 = 100_000;

/// The shortest window accepted.
pub const MIN_WINDOW: Duration = Duration::from_millis(1);

/// The longest window (and penalty block) accepted: one year.
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 3600);

/// The most steps a block ladder may have.
pub const MAX_BLOCK_STEPS: usize = 16;

/// How a limit is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// One counter per aligned window. Cheap; allows up to twice the limit
    /// across a window boundary.
    FixedWindow,
    /// The current window's counter plus the previous one weighted by how much
    /// of it still overlaps the sliding window. Cheap, approximate; see
    /// [`crate::algorithm::sliding_window`] for the error bound.
    SlidingWindow,
    /// One timestamp per admitted unit. Exact; O(limit) memory per key.
    SlidingLog,
    /// The generic cell rate algorithm: a token bucket stored as one timestamp.
    TokenBucket,
}

impl Algorithm {
    /// Every algorithm, in a fixed order.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::SlidingLog,
        Algorithm::TokenBucket,
    ];

    /// The configuration name: `fixed_window`, `sliding_window`, `sliding_log`, `token_bucket`.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::TokenBucket => "token_bucket",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| PolicyError::UnknownAlgorithm(s.to_owned()))
    }
}

/// Why a policy could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The algorithm name is not one of the four.
    #[error(
        "unknown algorithm {0:?} (expected fixed_window, sliding_window, sliding_log or token_bucket)"
    )]
    UnknownAlgorithm(String),
    /// `limit` is zero or too large.
    #[error("limit must be between 1 and {MAX_LIMIT}, got {0}")]
    Limit(u64),
    /// A sliding log's limit is above [`MAX_LOG_LIMIT`].
    #[error(
        "sliding_log keeps one timestamp per unit, so its limit must be at most {MAX_LOG_LIMIT}, got {0} (use sliding_window or token_bucket for larger limits)"
    )]
    LogLimit(u64),
    /// `burst` is zero or too large.
    #[error("burst must be between 1 and {MAX_LIMIT}, got {0}")]
    Burst(u64),
    /// `burst` was given for an algorithm other than token_bucket.
    #[error("burst only applies to token_bucket, not {0}")]
    BurstNotSupported(Algorithm),
    /// The window is shorter than 1 ms or longer than a year.
    #[error("window must be between 1ms and 366d, got {0:?}")]
    Window(Duration),
    /// The penalty block is zero or longer than a year.
    #[error("block_for must be between 1ms and 366d, got {0:?}")]
    BlockFor(Duration),
    /// A block ladder has no steps or more than [`MAX_BLOCK_STEPS`].
    #[error("a block_for ladder has 1 to {MAX_BLOCK_STEPS} steps, got {0}")]
    BlockSteps(usize),
    /// A maximum delay was given for an algorithm other than token_bucket.
    #[error("a delay holds a place in the bucket's future, which only token_bucket keeps, not {0}")]
    DelayNotSupported(Algorithm),
    /// The maximum delay is zero or longer than a year.
    #[error("max_delay must be between 1ms and 366d, got {0:?}")]
    MaxDelay(Duration),
    /// Batched consistency was asked of an algorithm that does not take it.
    #[error(
        "consistency = \"batched\" takes fixed_window, sliding_window or token_bucket, not {0}: a sliding log is kept for exactness, which local budgets give up"
    )]
    BatchedNotSupported(Algorithm),
    /// Batched consistency together with a maximum delay.
    #[error(
        "consistency = \"batched\" cannot hold requests (on_limit = \"delay\"): a held request's place in the bucket is decided by the store at once"
    )]
    BatchedWithDelay,
    /// A block ladder step is shorter than the one before it.
    #[error(
        "a block_for ladder escalates: step {step} ({}) is shorter than the step before it ({})",
        crate::duration::format_duration(*.this),
        crate::duration::format_duration(*.before)
    )]
    BlockLadderDescends {
        /// The step's place, from 1.
        step: usize,
        /// Its length.
        this: Duration,
        /// The length of the step before it.
        before: Duration,
    },
    /// A full token bucket would take too long to drain to represent exactly.
    #[error("burst {burst} at {limit} per {window:?} spans more than 10 years")]
    BurstSpan {
        /// The requested burst.
        burst: u64,
        /// The requested limit.
        limit: u64,
        /// The requested window.
        window: Duration,
    },
}

/// A validated rate limit.
///
/// ```
/// use floodgate_core::{Algorithm, Policy};
/// use std::time::Duration;
///
/// let p = Policy::new(Algorithm::TokenBucket, 100, Duration::from_secs(60))?
///     .with_burst(20)?
///     .with_block_for(Duration::from_secs(900))?;
/// assert_eq!(p.capacity(), 20);
/// # Ok::<(), floodgate_core::PolicyError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Policy {
    algorithm: Algorithm,
    limit: NonZeroU64,
    window_us: u64,
    burst: NonZeroU64,
    /// The first (or only) penalty step.
    block_for_us: Option<u64>,
    /// Every penalty step (µs), when there are more than one.
    block_ladder: Option<Arc<[u64]>>,
    /// Token bucket: how far in the future a request may take its place
    /// (µs), held until then; 0 for none.
    max_delay_us: u64,
    /// `window_us / limit` rounded up, computed once: the token bucket needs
    /// it on every check and a division is not free.
    emission_interval_us: u64,
    /// Decided from budgets leased from a shared store (see
    /// [`Policy::with_batched`]).
    batched: bool,
}

impl Policy {
    /// `limit` cost units per `window`, counted by `algorithm`.
    pub fn new(algorithm: Algorithm, limit: u64, window: Duration) -> Result<Self, PolicyError> {
        let limit = NonZeroU64::new(limit)
            .filter(|l| l.get() <= MAX_LIMIT)
            .ok_or(PolicyError::Limit(limit))?;
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&window) {
            return Err(PolicyError::Window(window));
        }
        if algorithm == Algorithm::SlidingLog && limit.get() > MAX_LOG_LIMIT {
            return Err(PolicyError::LogLimit(limit.get()));
        }
        Ok(Policy {
            algorithm,
            limit,
            window_us: micros_of(window),
            burst: limit,
            block_for_us: None,
            block_ladder: None,
            max_delay_us: 0,
            emission_interval_us: micros_of(window).div_ceil(limit.get()).max(1),
            batched: false,
        })
    }

    /// Token bucket only: hold at most `burst` units (default: `limit`).
    pub fn with_burst(mut self, burst: u64) -> Result<Self, PolicyError> {
        if self.algorithm != Algorithm::TokenBucket {
            return Err(PolicyError::BurstNotSupported(self.algorithm));
        }
        self.burst = NonZeroU64::new(burst)
            .filter(|b| b.get() <= MAX_LIMIT)
            .ok_or(PolicyError::Burst(burst))?;
        const TEN_YEARS_US: u128 = 10 * 366 * 24 * 3600 * 1_000_000;
        if u128::from(self.emission_interval_us()) * u128::from(burst) > TEN_YEARS_US {
            return Err(PolicyError::BurstSpan {
                burst,
                limit: self.limit.get(),
                window: self.window(),
            });
        }
        Ok(self)
    }

    /// Once a key goes over the limit, refuse it for `block_for`.
    pub fn with_block_for(self, block_for: Duration) -> Result<Self, PolicyError> {
        self.with_block_ladder(&[block_for])
    }

    /// Once a key goes over the limit, refuse it for the nth step of
    /// `steps` at its nth offence in a row; the last step repeats.
    ///
    /// An offence is remembered from its block's end for as long as the last
    /// step lasts: a key that goes over the limit again within that time
    /// moves one step up the ladder, a key that stays clean that long
    /// starts again at the first step. A ladder of one step is
    /// [`Policy::with_block_for`]: every offence gets that step.
    ///
    /// Steps must not get shorter, and there are at most
    /// [`MAX_BLOCK_STEPS`].
    ///
    /// ```
    /// use floodgate_core::{Algorithm, Policy};
    /// use std::time::Duration;
    ///
    /// let minute = Duration::from_secs(60);
    /// let p = Policy::new(Algorithm::SlidingWindow, 5, minute)?
    ///     .with_block_ladder(&[minute, 10 * minute, 60 * minute])?;
    /// assert_eq!(p.block_step(1), Some(minute));
    /// assert_eq!(p.block_step(7), Some(60 * minute));
    /// # Ok::<(), floodgate_core::PolicyError>(())
    /// ```
    pub fn with_block_ladder(mut self, steps: &[Duration]) -> Result<Self, PolicyError> {
        if steps.is_empty() || steps.len() > MAX_BLOCK_STEPS {
            return Err(PolicyError::BlockSteps(steps.len()));
        }
        for (i, &step) in steps.iter().enumerate() {
            if !(MIN_WINDOW..=MAX_WINDOW).contains(&step) {
                return Err(PolicyError::BlockFor(step));
            }
            if i > 0 && step < steps[i - 1] {
                return Err(PolicyError::BlockLadderDescends {
                    step: i + 1,
                    this: step,
                    before: steps[i - 1],
                });
            }
        }
        let us: Vec<u64> = steps.iter().map(|&d| micros_of(d)).collect();
        self.block_for_us = Some(us[0]);
        self.block_ladder = (us.len() > 1).then(|| us.into());
        Ok(self)
    }

    /// Token bucket only: a request that does not fit now but will within
    /// `max_delay` is admitted with a [`Decision::delay`](crate::Decision::delay)
    /// (its place in the bucket taken now, in the future), instead of being
    /// refused. The bucket then admits as nginx's `limit_req` with
    /// `burst`/`delay` does: a burst is spread out at the rate, not refused.
    pub fn with_max_delay(mut self, max_delay: Duration) -> Result<Self, PolicyError> {
        if self.algorithm != Algorithm::TokenBucket {
            return Err(PolicyError::DelayNotSupported(self.algorithm));
        }
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&max_delay) {
            return Err(PolicyError::MaxDelay(max_delay));
        }
        if self.batched {
            return Err(PolicyError::BatchedWithDelay);
        }
        self.max_delay_us = micros_of(max_delay);
        Ok(self)
    }

    /// Batched consistency (`consistency = "batched"`): a store shared by
    /// several instances (Redis) lets each instance lease a slice of a key's
    /// remaining quota in one call and admit from it locally until it is
    /// spent, instead of making one call per decision. Fixed and sliding
    /// windows never admit more than the limit; a token bucket may admit
    /// up to one slice more over any span. What may be lost is quota left
    /// in slices that lapse unused. The bounds are stated in
    /// `floodgate_redis`'s documentation of batched consistency. A store
    /// that is already local and exact (the memory store) decides such a
    /// policy as any other.
    ///
    /// Not for sliding logs (kept for exactness) nor with a maximum delay.
    ///
    /// ```
    /// use floodgate_core::{Algorithm, Policy};
    /// use std::time::Duration;
    ///
    /// let p = Policy::new(Algorithm::SlidingWindow, 400, Duration::from_secs(60))?.with_batched()?;
    /// assert!(p.is_batched());
    /// assert!(Policy::new(Algorithm::SlidingLog, 10, Duration::from_secs(1))?.with_batched().is_err());
    /// # Ok::<(), floodgate_core::PolicyError>(())
    /// ```
    pub fn with_batched(mut self) -> Result<Self, PolicyError> {
        if self.algorithm == Algorithm::SlidingLog {
            return Err(PolicyError::BatchedNotSupported(self.algorithm));
        }
        if self.max_delay_us > 0 {
            return Err(PolicyError::BatchedWithDelay);
        }
        self.batched = true;
        Ok(self)
    }

    /// Whether the policy is decided from leased budgets
    /// ([`Policy::with_batched`]).
    pub fn is_batched(&self) -> bool {
        self.batched
    }

    /// The most units one lease of a batched policy takes: a sixteenth of
    /// what the policy can ever hold at once, at least 1.
    pub fn batch_max(&self) -> u64 {
        (self.capacity() / 16).max(1)
    }

    /// The same policy without a maximum delay: what a caller that cannot
    /// hold a request (the decision API) decides by.
    pub fn without_max_delay(mut self) -> Self {
        self.max_delay_us = 0;
        self
    }

    /// The maximum delay in microseconds; 0 for none.
    pub fn max_delay_us(&self) -> u64 {
        self.max_delay_us
    }

    /// The counting algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Cost units admitted per window.
    pub fn limit(&self) -> u64 {
        self.limit.get()
    }

    /// The window length.
    pub fn window(&self) -> Duration {
        Duration::from_micros(self.window_us)
    }

    /// The window length in microseconds.
    pub fn window_us(&self) -> u64 {
        self.window_us
    }

    /// Token bucket capacity (equals `limit` for the other algorithms).
    pub fn burst(&self) -> u64 {
        self.burst.get()
    }

    /// The penalty block length (a ladder's first step), if any.
    pub fn block_for(&self) -> Option<Duration> {
        self.block_for_us.map(Duration::from_micros)
    }

    /// The penalty block length (a ladder's first step) in microseconds, if any.
    pub fn block_for_us(&self) -> Option<u64> {
        self.block_for_us
    }

    /// Every penalty step in microseconds: empty without a penalty, one step
    /// for a plain `block_for`.
    pub fn block_steps_us(&self) -> &[u64] {
        match (&self.block_ladder, &self.block_for_us) {
            (Some(ladder), _) => ladder,
            (None, Some(one)) => std::slice::from_ref(one),
            (None, None) => &[],
        }
    }

    /// The block the `offence`th offence in a row gets (counted from 1; the
    /// last step repeats), if the policy has a penalty.
    pub fn block_step(&self, offence: u32) -> Option<Duration> {
        self.block_step_us(offence).map(Duration::from_micros)
    }

    /// [`Policy::block_step`] in microseconds.
    pub fn block_step_us(&self, offence: u32) -> Option<u64> {
        let steps = self.block_steps_us();
        let at = (offence.max(1) as usize).min(steps.len());
        steps.get(at.checked_sub(1)?).copied()
    }

    /// How long after a penalty block ends its offence is remembered (µs):
    /// a ladder's last step; 0 for a single step, where nothing escalates.
    pub fn block_memory_us(&self) -> u64 {
        match &self.block_ladder {
            Some(ladder) => ladder.last().copied().unwrap_or(0),
            None => 0,
        }
    }

    /// The largest cost a single check can ever be admitted with.
    pub fn capacity(&self) -> u64 {
        match self.algorithm {
            Algorithm::TokenBucket => self.burst.get(),
            _ => self.limit.get(),
        }
    }

    /// Token bucket: microseconds per cost unit, rounded up so the bucket
    /// never refills faster than `limit` per `window`.
    pub fn emission_interval_us(&self) -> u64 {
        self.emission_interval_us
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_algorithm_name() {
        for a in Algorithm::ALL {
            assert_eq!(a.name().parse::<Algorithm>(), Ok(a));
        }
        assert!(matches!(
            "leaky".parse::<Algorithm>(),
            Err(PolicyError::UnknownAlgorithm(_))
        ));
    }

    #[test]
    fn rejects_bad_values() {
        let w = Duration::from_secs(1);
        assert_eq!(
            Policy::new(Algorithm::FixedWindow, 0, w),
            Err(PolicyError::Limit(0))
        );
        assert_eq!(
            Policy::new(Algorithm::FixedWindow, MAX_LIMIT + 1, w),
            Err(PolicyError::Limit(MAX_LIMIT + 1))
        );
        assert!(matches!(
            Policy::new(Algorithm::FixedWindow, 1, Duration::from_micros(999)),
            Err(PolicyError::Window(_))
        ));
        assert!(matches!(
            Policy::new(
                Algorithm::FixedWindow,
                1,
                MAX_WINDOW + Duration::from_secs(1)
            ),
            Err(PolicyError::Window(_))
        ));
        let fw = Policy::new(Algorithm::FixedWindow, 5, w).unwrap();
        assert_eq!(
            fw.clone().with_burst(3),
            Err(PolicyError::BurstNotSupported(Algorithm::FixedWindow))
        );
        assert!(matches!(
            fw.with_block_for(Duration::ZERO),
            Err(PolicyError::BlockFor(_))
        ));
        let tb = Policy::new(Algorithm::TokenBucket, 1, MAX_WINDOW).unwrap();
        assert!(matches!(
            tb.with_burst(100),
            Err(PolicyError::BurstSpan { .. })
        ));
    }

    #[test]
    fn sliding_log_limit_is_bounded() {
        let w = Duration::from_secs(1);
        assert!(Policy::new(Algorithm::SlidingLog, MAX_LOG_LIMIT, w).is_ok());
        assert_eq!(
            Policy::new(Algorithm::SlidingLog, MAX_LOG_LIMIT + 1, w),
            Err(PolicyError::LogLimit(MAX_LOG_LIMIT + 1))
        );
        assert!(Policy::new(Algorithm::SlidingWindow, MAX_LOG_LIMIT + 1, w).is_ok());
    }

    #[test]
    fn emission_interval_rounds_up() {
        let p = Policy::new(Algorithm::TokenBucket, 3, Duration::from_secs(1)).unwrap();
        assert_eq!(p.emission_interval_us(), 333_334);
        assert_eq!(p.capacity(), 3);
    }
    #[test]
    fn a_block_ladder_escalates_within_bounds() {
        let p = Policy::new(Algorithm::FixedWindow, 1, Duration::from_secs(1)).unwrap();
        let s = Duration::from_secs;
        assert_eq!(
            p.clone().with_block_ladder(&[]),
            Err(PolicyError::BlockSteps(0))
        );
        assert_eq!(
            p.clone().with_block_ladder(&[s(1); MAX_BLOCK_STEPS + 1]),
            Err(PolicyError::BlockSteps(MAX_BLOCK_STEPS + 1))
        );
        assert_eq!(
            p.clone().with_block_ladder(&[s(60), s(600), s(300)]),
            Err(PolicyError::BlockLadderDescends {
                step: 3,
                this: s(300),
                before: s(600)
            })
        );
        assert_eq!(
            p.clone().with_block_ladder(&[s(60), Duration::ZERO]),
            Err(PolicyError::BlockFor(Duration::ZERO))
        );
        let ladder = p
            .clone()
            .with_block_ladder(&[s(60), s(60), s(600)])
            .unwrap();
        assert_eq!(
            ladder.block_steps_us(),
            [60_000_000, 60_000_000, 600_000_000]
        );
        assert_eq!(ladder.block_for(), Some(s(60)));
        assert_eq!(
            (
                ladder.block_step(0),
                ladder.block_step(3),
                ladder.block_step(99)
            ),
            (Some(s(60)), Some(s(600)), Some(s(600)))
        );
        assert_eq!(ladder.block_memory_us(), 600_000_000);
        // One step is a plain block_for: nothing to remember.
        let one = p.clone().with_block_ladder(&[s(60)]).unwrap();
        assert_eq!(one, p.clone().with_block_for(s(60)).unwrap());
        assert_eq!(one.block_memory_us(), 0);
        assert_eq!(p.block_steps_us(), [] as [u64; 0]);
        assert_eq!(p.block_step(1), None);
    }
}
