//! How to reach Redis and how to name and time what is stored there.

use std::sync::Arc;
use std::time::Duration;

use floodgate_core::Clock;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "floodgate";

/// The default bound on one store call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// The default bound on establishing a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The default extra life of every key beyond the moment its state stops
/// mattering.
pub const DEFAULT_TTL_MARGIN: Duration = Duration::from_secs(1);

/// Where a [`crate::RedisStore`] takes "now" from.
#[derive(Debug, Clone, Default)]
pub enum TimeSource {
    /// Redis' own clock (`TIME`, read inside each script). Every instance
    /// sharing the Redis decides on the same time, however wrong its local
    /// clock is. The default.
    #[default]
    Server,
    /// A local clock, sent with each call: a [`floodgate_core::ManualClock`]
    /// in tests. Keys still expire on Redis' clock, so with a clock that does
    /// not follow real time, set a [`RedisConfig::ttl_margin`] longer than the
    /// test runs.
    Clock(Arc<dyn Clock>),
}

/// The configuration of a [`crate::RedisStore`].
///
/// ```
/// use floodgate_redis::{RedisConfig, TimeSource};
/// use std::time::Duration;
///
/// let config = RedisConfig::new("redis://127.0.0.1:6379/0")
///     .with_prefix("myapp")
///     .with_timeout(Duration::from_millis(20));
/// assert_eq!(config.prefix, "myapp");
/// assert!(matches!(config.time_source, TimeSource::Server));
/// config.validate()?;
/// # Ok::<(), floodgate_redis::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db` (or `redis+unix:///path`).
    pub url: String,
    /// First part of every key, so several deployments can share a Redis
    /// (default `floodgate`). Must not contain `{` or `}`: those would take
    /// over the keys' cluster hash tag.
    pub prefix: String,
    /// A store call (including reconnecting and reloading a script) slower
    /// than this fails with a timeout error instead of holding up the
    /// request (default 50 ms).
    pub timeout: Duration,
    /// Bound on each attempt to (re)connect, which happens in the background
    /// (default 1 s).
    pub connect_timeout: Duration,
    /// Where "now" comes from (default: Redis' clock).
    pub time_source: TimeSource,
    /// Every key lives this much longer than its state matters (default 1 s).
    /// Keys expire on Redis' millisecond clock while decisions use
    /// microseconds; the margin absorbs the rounding and any drift between
    /// the time source and Redis' clock. A key kept after its state expired
    /// reads as empty, so the margin never changes a decision.
    pub ttl_margin: Duration,
}

impl RedisConfig {
    /// The defaults for a Redis at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            time_source: TimeSource::Server,
            ttl_margin: DEFAULT_TTL_MARGIN,
        }
    }

    /// Sets [`RedisConfig::prefix`].
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets [`RedisConfig::timeout`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`RedisConfig::connect_timeout`].
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`RedisConfig::time_source`].
    pub fn with_time_source(mut self, time_source: TimeSource) -> Self {
        self.time_source = time_source;
        self
    }

    /// Takes "now" from `clock` instead of Redis (see [`TimeSource::Clock`]).
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        self.with_time_source(TimeSource::Clock(clock))
    }

    /// Sets [`RedisConfig::ttl_margin`].
    pub fn with_ttl_margin(mut self, margin: Duration) -> Self {
        self.ttl_margin = margin;
        self
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(ConfigError::Prefix(self.prefix.clone()));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::Timeout("timeout"));
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::Timeout("connect_timeout"));
        }
        redis::Client::open(self.url.as_str()).map_err(|e| ConfigError::Url {
            url: redact(&self.url),
            source: e,
        })?;
        Ok(())
    }
}

/// Why a [`RedisConfig`] cannot be used (or a store not built from it).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The URL does not parse.
    #[error("invalid Redis url {url:?}: {source}")]
    Url {
        /// The URL, password removed.
        url: String,
        /// What the redis client said.
        #[source]
        source: redis::RedisError,
    },
    /// The prefix is empty or contains `{` or `}`.
    #[error("invalid key prefix {0:?}: it must be non-empty and contain no '{{' or '}}'")]
    Prefix(String),
    /// A timeout is zero.
    #[error("{0} must be longer than zero")]
    Timeout(&'static str),
    /// The store was built outside a Tokio runtime, which its connection
    /// needs to run on.
    #[error("a Redis store must be created within a Tokio runtime")]
    NoRuntime,
}

/// `url` with any password replaced by `***`, for error messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_fields() {
        let ok = RedisConfig::new("redis://127.0.0.1:6379/0");
        assert!(ok.validate().is_ok());
        assert!(matches!(
            ok.clone().with_prefix("a{b").validate(),
            Err(ConfigError::Prefix(_))
        ));
        assert!(matches!(
            ok.clone().with_prefix("").validate(),
            Err(ConfigError::Prefix(_))
        ));
        assert!(matches!(
            ok.clone().with_timeout(Duration::ZERO).validate(),
            Err(ConfigError::Timeout("timeout"))
        ));
        assert!(matches!(
            RedisConfig::new("http://x").validate(),
            Err(ConfigError::Url { .. })
        ));
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }
}
