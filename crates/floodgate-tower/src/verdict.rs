//! The answer to "may this request go ahead?", before it is turned into HTTP.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use floodgate_core::Decision;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::headers::{self, RATELIMIT, RATELIMIT_POLICY, ceil_secs, retry_after_secs};
use crate::path::PathError;
use crate::target::Target;

/// A rule as its RateLimit fields name it: what stays the same from one
/// request to the next, written once per rule.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RuleLabel {
    name: Box<str>,
    window: Duration,
    /// The name as a Structured Field String, e.g. `"api"`.
    quoted: Box<str>,
    /// The `RateLimit-Policy` item, e.g. `"api";q=100;w=60`.
    policy: Option<HeaderValue>,
}

impl RuleLabel {
    /// The rule's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The label of rule `name`, `limit` units per `window`.
    pub(crate) fn new(name: &str, limit: u64, window: Duration) -> Self {
        let quoted = headers::sf_string(name);
        let policy = headers::policy_item(&quoted, limit, window);
        RuleLabel {
            name: name.into(),
            window,
            quoted: quoted.into(),
            policy,
        }
    }
}

/// One rule's decision about one request, with what the RateLimit headers
/// need to describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleDecision {
    label: Arc<RuleLabel>,
    decision: Decision,
}

impl RuleDecision {
    /// `decision` of the rule `rule`, whose window is `window` (for
    /// `RateLimit-Policy`'s `w`; its quota `q` is `decision.limit`).
    pub fn new(rule: &str, window: Duration, decision: Decision) -> Self {
        RuleDecision {
            label: Arc::new(RuleLabel::new(rule, decision.limit, window)),
            decision,
        }
    }

    /// `decision` of the rule `label` names (its limit as `decision.limit`).
    pub(crate) fn labelled(label: &Arc<RuleLabel>, decision: Decision) -> Self {
        RuleDecision {
            label: Arc::clone(label),
            decision,
        }
    }

    /// The rule's name.
    pub fn rule(&self) -> &str {
        self.label.name()
    }

    /// The rule's window.
    pub fn window(&self) -> Duration {
        self.label.window
    }

    /// What the rule decided.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// The rule's name as a Structured Field String.
    pub(crate) fn quoted_rule(&self) -> &str {
        &self.label.quoted
    }

    /// The rule's `RateLimit-Policy` item, e.g. `"api";q=100;w=60`
    /// (always there: `None` only if it could not be a header value).
    pub fn policy_item(&self) -> Option<&HeaderValue> {
        self.label.policy.as_ref()
    }

    /// The rule's `RateLimit` item, e.g. `"api";r=42;t=17`: `t` is the
    /// Retry-After delay when refused, else the time until the quota is
    /// whole again (see [`crate::headers`]).
    pub fn ratelimit_value(&self) -> String {
        let decision = &self.decision;
        let t = match decision.retry_after {
            Some(wait) if !decision.allowed => retry_after_secs(wait),
            _ => ceil_secs(decision.reset_after),
        };
        headers::ratelimit_item(self.quoted_rule(), decision.remaining, t)
    }

    /// Adds `RateLimit-Policy` and `RateLimit` for this decision to
    /// `headers` (appended, so an upstream's own RateLimit items are kept).
    pub fn insert_rate_limit_headers(&self, headers: &mut HeaderMap) {
        if let Some(policy) = self.policy_item() {
            headers.append(RATELIMIT_POLICY, policy.clone());
        }
        if let Ok(value) = HeaderValue::try_from(self.ratelimit_value()) {
            headers.append(RATELIMIT, value);
        }
    }
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
    /// The request cannot be judged fairly as sent: 400, before any list
    /// or rule is consulted.
    BadRequest(BadRequestReason),
}

/// Why a request is refused as malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadRequestReason {
    /// Its path has no canonical form.
    Path(PathError),
    /// A header that names the client (a rule's key, an access-list
    /// entry) came more than once: which one counts would be the client's
    /// choice, and the servers behind floodgate may read another line than
    /// the limiter did.
    RepeatedHeader(HeaderName),
}

impl fmt::Display for BadRequestReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadRequestReason::Path(e) => e.fmt(f),
            BadRequestReason::RepeatedHeader(name) => {
                write!(f, "the {name} header was sent more than once; send it once")
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::insert_retry_after;
    use http::header::RETRY_AFTER;

    fn rd(rule: &str, window: Duration, decision: Decision) -> RuleDecision {
        RuleDecision::new(rule, window, decision)
    }

    fn decision(allowed: bool, remaining: u64, reset_ms: u64, retry_ms: Option<u64>) -> Decision {
        Decision {
            allowed,
            limit: 100,
            remaining,
            reset_after: Duration::from_millis(reset_ms),
            retry_after: retry_ms.map(Duration::from_millis),
            blocked: false,
            delay: std::time::Duration::ZERO,
        }
    }

    #[test]
    fn field_values() {
        let allowed = rd(
            "api",
            Duration::from_secs(60),
            decision(true, 42, 16_500, None),
        );
        assert_eq!(
            allowed.policy_item().expect("a valid item"),
            r#""api";q=100;w=60"#
        );
        assert_eq!(allowed.ratelimit_value(), r#""api";r=42;t=17"#);
        let refused = rd(
            "api",
            Duration::from_millis(250),
            decision(false, 0, 60_000, Some(2_100)),
        );
        assert_eq!(
            refused.policy_item().expect("a valid item"),
            r#""api";q=100;w=1"#,
            "sub-second windows round up"
        );
        assert_eq!(
            refused.ratelimit_value(),
            r#""api";r=0;t=3"#,
            "t matches Retry-After"
        );
        let odd = rd(
            "a\"b\\c\u{e9}",
            Duration::from_secs(1),
            decision(true, 1, 0, None),
        );
        assert_eq!(odd.ratelimit_value(), r#""a\"b\\c";r=1;t=0"#);
    }

    #[test]
    fn inserts_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(RATELIMIT, HeaderValue::from_static(r#""upstream";r=5"#));
        let d = rd(
            "api",
            Duration::from_secs(10),
            decision(false, 0, 10_000, Some(9_000)),
        );
        d.insert_rate_limit_headers(&mut headers);
        insert_retry_after(&mut headers, d.decision().retry_after.unwrap_or_default());
        let ratelimit: Vec<_> = headers.get_all(RATELIMIT).iter().collect();
        assert_eq!(ratelimit.len(), 2);
        assert_eq!(ratelimit[1], r#""api";r=0;t=9"#);
        assert_eq!(headers[RATELIMIT_POLICY], r#""api";q=100;w=10"#);
        assert_eq!(headers[RETRY_AFTER], "9");
    }
}
