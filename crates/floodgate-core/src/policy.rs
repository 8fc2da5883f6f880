//! What a limit is: an algorithm, a quota, a window, and an optional penalty.
//!
//! A [`Policy`] can only be built through [`Policy::new`] and its `with_*`
//! methods, which reject values that would make the limiter misbehave (a zero
//! limit, a zero window, numbers too large to compute exactly in Redis' Lua).

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;
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
    block_for_us: Option<u64>,
    /// `window_us / limit` rounded up, computed once: the token bucket needs
    /// it on every check and a division is not free.
    emission_interval_us: u64,
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
            emission_interval_us: micros_of(window).div_ceil(limit.get()).max(1),
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
    pub fn with_block_for(mut self, block_for: Duration) -> Result<Self, PolicyError> {
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&block_for) {
            return Err(PolicyError::BlockFor(block_for));
        }
        self.block_for_us = Some(micros_of(block_for));
        Ok(self)
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

    /// The penalty block length, if any.
    pub fn block_for(&self) -> Option<Duration> {
        self.block_for_us.map(Duration::from_micros)
    }

    /// The penalty block length in microseconds, if any.
    pub fn block_for_us(&self) -> Option<u64> {
        self.block_for_us
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
}
