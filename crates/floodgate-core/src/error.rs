//! Why the limiter could not decide.

use std::time::Duration;

/// A check could not be decided. Refusals are [`crate::Decision`]s, not errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cost is larger than the policy can ever admit at once; retrying
    /// will never help.
    #[error("cost {cost} can never be admitted by rule {rule:?}: it holds at most {capacity}")]
    InsufficientCapacity {
        /// The rule checked.
        rule: String,
        /// The cost asked for.
        cost: u64,
        /// The most the rule admits at once.
        capacity: u64,
    },
    /// A cost of zero was asked for.
    #[error("cost must be at least 1 (rule {rule:?})")]
    ZeroCost {
        /// The rule checked.
        rule: String,
    },
    /// One batch named the same (rule, key) twice.
    #[error("rule {rule:?} and key {key:?} appear twice in one batch")]
    DuplicateCheck {
        /// The rule named twice.
        rule: String,
        /// The key named twice.
        key: String,
    },
    /// The store failed; see [`StoreError`] for whether a retry may help.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    /// Whether the same call may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Store(e) if e.is_retryable())
    }
}

/// What kind of store failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The call took longer than the store's timeout.
    Timeout,
    /// The connection was refused, reset or closed.
    ConnectionDropped,
    /// The store rejected the call (script error, wrong type, bad reply).
    Script,
    /// Anything else (authentication, configuration, I/O).
    Other,
}

/// A failure of the store behind the limiter.
#[derive(Debug, thiserror::Error)]
#[error("store {kind}: {message}")]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl std::fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreErrorKind::Timeout => "timeout",
            StoreErrorKind::ConnectionDropped => "connection dropped",
            StoreErrorKind::Script => "script error",
            StoreErrorKind::Other => "error",
        })
    }
}

impl StoreError {
    /// A store error of `kind` with a message.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A store error caused by `source`.
    pub fn with_source(
        kind: StoreErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// A timeout after `after`.
    pub fn timeout(after: Duration) -> Self {
        StoreError::new(
            StoreErrorKind::Timeout,
            format!("no answer within {after:?}"),
        )
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The call did not finish within the timeout.
    pub fn is_timeout(&self) -> bool {
        self.kind == StoreErrorKind::Timeout
    }

    /// The connection to the store was lost or could not be made.
    pub fn is_connection_dropped(&self) -> bool {
        self.kind == StoreErrorKind::ConnectionDropped
    }

    /// Whether the same call may succeed later (timeouts and connection
    /// losses may; script errors will not).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            StoreErrorKind::Timeout | StoreErrorKind::ConnectionDropped
        )
    }
}
