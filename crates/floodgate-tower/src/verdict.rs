//! The answer to "may this request go ahead?", before it is turned into HTTP.

use std::sync::Arc;
use std::time::Duration;

use floodgate_core::Decision;

use crate::target::Target;

/// One rule's decision about one request, with what the RateLimit headers
/// need to describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleDecision {
    /// The rule's name.
    pub rule: Arc<str>,
    /// The rule's window (for `RateLimit-Policy`'s `w`).
    pub window: Duration,
    /// What the rule decided.
    pub decision: Decision,
}

/// What the limiter decided about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead. Carries the most restrictive matching rule's decision (the
    /// least remaining quota, shadow rules included) for the RateLimit
    /// headers; `None` when no rule applied, the client is on the allow list,
    /// or the store failed under `on_error = allow`.
    Allow(Option<RuleDecision>),
    /// Over a rule's limit or under its penalty block: 429. When several
    /// rules refuse, the one whose retry is furthest away.
    Limited(RuleDecision),
    /// On the deny list or manually blocked: 403.
    Forbidden {
        /// Which list or block.
        reason: ForbiddenReason,
    },
    /// The store could not decide and `on_error = deny`: 503.
    Unavailable,
}

/// Why a request is refused outright.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForbiddenReason {
    /// The `[access]` deny list names the client through this entry.
    DenyList {
        /// The matching entry.
        target: Target,
    },
    /// A manual block on this target is in force.
    Blocked {
        /// The blocked target.
        target: Target,
    },
}

impl Verdict {
    /// Whether the request goes ahead.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Verdict::Allow(_))
    }
}
