//! `RateLimit-Policy`, `RateLimit` and `Retry-After`.
//!
//! The RateLimit fields follow draft-ietf-httpapi-ratelimit-headers-11
//! (May 2026), §3 and §4: Structured Field lists of one item per policy, a
//! String naming the policy with Integer parameters:
//!
//! ```text
//! RateLimit-Policy: "api";q=100;w=60      quota 100 units per 60 s window
//! RateLimit: "api";r=42;t=17              42 units left, effective window 17 s
//! ```
//!
//! `t` is the time until the quota is fully restored on an admitted
//! request, and the Retry-After delay on a refused one (§6: Retry-After
//! should not point before the end of the effective window). Seconds are
//! always whole and rounded up, so a client that waits as told is never
//! early; `w` and `Retry-After` are at least 1.
//!
//! This module only encodes: names, seconds and numbers in, field values
//! out. What a rule's decision puts in them is `RuleDecision`'s business
//! (`verdict.rs`), so this module sits below it and imports nothing of it.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use crate::text::push_decimal;

/// `RateLimit-Policy`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// `RateLimit`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Whole seconds in `d`, rounded up.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The `Retry-After` value for a wait of `d`: whole seconds, rounded up,
/// at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    ceil_secs(d).max(1)
}

/// The `RateLimit-Policy` item of a rule named `quoted` (a Structured Field
/// String, see [`sf_string`]) with `limit` units per `window`, e.g.
/// `"api";q=100;w=60`.
/// `None` if it were not a valid header value, which printable ASCII (all
/// that `sf_string` keeps) always is.
pub(crate) fn policy_item(quoted: &str, limit: u64, window: Duration) -> Option<HeaderValue> {
    let value = sf_item(quoted, [("q", limit), ("w", ceil_secs(window).max(1))]);
    HeaderValue::try_from(value).ok()
}

/// The `RateLimit` item of a rule named `quoted` (a Structured Field
/// String, see [`sf_string`]) with `remaining` units left and `t` seconds
/// to go, e.g. `"api";r=42;t=17`.
pub(crate) fn ratelimit_item(quoted: &str, remaining: u64, t: u64) -> String {
    sf_item(quoted, [("r", remaining), ("t", t)])
}

/// A Structured Field item: a String already quoted, with two Integer
/// parameters, e.g. `"api";r=42;t=17`, in one buffer.
fn sf_item(quoted: &str, params: [(&str, u64); 2]) -> String {
    let mut out = String::with_capacity(quoted.len() + 32);
    out.push_str(quoted);
    for (name, value) in params {
        out.push(';');
        out.push_str(name);
        out.push('=');
        push_decimal(&mut out, value);
    }
    out
}

/// Sets `Retry-After` to a wait of `d` (see [`retry_after_secs`]).
pub fn insert_retry_after(headers: &mut HeaderMap, d: Duration) {
    headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(d)));
}

/// `s` as a Structured Field String (RFC 9651 §3.3.3): quoted, `"` and `\`
/// escaped, characters outside printable ASCII dropped (rule names are
/// validated, so only a programming error could bring one).
pub(crate) fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars().filter(|c| matches!(c, ' '..='~')) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1000)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_micros(16_000_001)), 17);
    }
}
