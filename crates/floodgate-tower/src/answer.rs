//! Rules charged on the answer: which statuses count (`count_status`) and
//! what the answer says a request cost (`cost_header`).
//!
//! Such a rule is checked before the request goes ahead, as a
//! [probe](floodgate_core::Check::probe): refused if the key is already
//! over the limit, charged nothing. Once the answer is known the request is
//! charged, if its status counts, with the rule's cost or the cost the
//! answer names ([`Limiter::charge_answer`](crate::Limiter::charge_answer)).

use std::fmt;

use http::header::HeaderName;
use http::{HeaderMap, StatusCode};

/// Which answer statuses a rule charges: codes (`401`) and classes (`4xx`).
///
/// ```
/// use floodgate_tower::rule::StatusSet;
/// use http::StatusCode;
///
/// let failures: StatusSet = "401, 403, 5xx".parse()?;
/// assert!(failures.contains(StatusCode::FORBIDDEN));
/// assert!(failures.contains(StatusCode::BAD_GATEWAY));
/// assert!(!failures.contains(StatusCode::OK));
/// assert_eq!(failures.to_string(), "401, 403, 5xx");
/// # Ok::<(), floodgate_tower::rule::StatusSetError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct StatusSet {
    /// Single codes, sorted, no repeats.
    codes: Vec<u16>,
    /// Bit `n` set: every `nxx` status (n in 1..=5).
    classes: u8,
}

/// A status or class a [`StatusSet`] cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusSetError {
    /// Not a status code from 100 to 599, nor a class `1xx` to `5xx`.
    #[error("{0:?} is not a status code (100-599) or a class (\"1xx\" to \"5xx\")")]
    Invalid(String),
    /// No status at all.
    #[error("an empty list: name the statuses to count, e.g. [401, 403] or [\"4xx\"]")]
    Empty,
}

impl StatusSet {
    /// The set of `items`: codes (`"401"`) and classes (`"4xx"`).
    pub fn new<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, StatusSetError> {
        let mut set = StatusSet::default();
        for item in items {
            set.add(item)?;
        }
        if set.is_empty() {
            return Err(StatusSetError::Empty);
        }
        Ok(set)
    }

    /// Adds a code (`"401"`) or a class (`"4xx"`).
    fn add(&mut self, item: &str) -> Result<(), StatusSetError> {
        let invalid = || StatusSetError::Invalid(item.to_owned());
        let item = item.trim();
        match item.as_bytes() {
            [d @ b'1'..=b'5', x1, x2]
                if x1.eq_ignore_ascii_case(&b'x') && x2.eq_ignore_ascii_case(&b'x') =>
            {
                self.classes |= 1 << (d - b'0');
            }
            [b'1'..=b'5', b'0'..=b'9', b'0'..=b'9'] => {
                let code: u16 = item.parse().map_err(|_| invalid())?;
                if let Err(at) = self.codes.binary_search(&code) {
                    self.codes.insert(at, code);
                }
            }
            _ => return Err(invalid()),
        }
        Ok(())
    }

    /// Whether the set holds nothing.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty() && self.classes == 0
    }

    /// Whether `status` is in the set.
    pub fn contains(&self, status: StatusCode) -> bool {
        let code = status.as_u16();
        let class = code / 100;
        (class < 8 && self.classes & (1 << class) != 0) || self.codes.binary_search(&code).is_ok()
    }
}

impl std::str::FromStr for StatusSet {
    type Err = StatusSetError;

    /// A comma-separated list: `"401, 403, 5xx"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StatusSet::new(s.split(','))
    }
}

impl fmt::Display for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            let s = if first { "" } else { ", " };
            first = false;
            f.write_str(s)
        };
        for code in &self.codes {
            sep(f)?;
            write!(f, "{code}")?;
        }
        for class in 1..=5u8 {
            if self.classes & (1 << class) != 0 {
                sep(f)?;
                write!(f, "{class}xx")?;
            }
        }
        Ok(())
    }
}

/// Why the cost an answer named could not be charged as named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CostFallback {
    /// The answer had no cost header: the rule's `cost` was charged.
    Missing,
    /// The header was not one whole number, or came more than once: the
    /// rule's `cost` was charged.
    Malformed,
    /// More than the rule holds: what it holds was charged.
    TooLarge,
}

impl CostFallback {
    /// Every fallback, in the order of [`CostFallback::index`].
    pub const ALL: [CostFallback; 3] = [
        CostFallback::Missing,
        CostFallback::Malformed,
        CostFallback::TooLarge,
    ];

    /// The place of this fallback in [`CostFallback::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// A label: `missing`, `malformed` or `too_large`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CostFallback::Missing => "missing",
            CostFallback::Malformed => "malformed",
            CostFallback::TooLarge => "too_large",
        }
    }
}

/// The cost an answer's `name` header gives, for a rule costing `cost` that
/// holds at most `capacity`: the number it names (0 charges nothing), or
/// the rule's cost when it is missing or malformed, at most `capacity`;
/// with the reason when it is not the number named.
pub(crate) fn answer_cost(
    headers: &HeaderMap,
    name: &HeaderName,
    cost: u64,
    capacity: u64,
) -> (u64, Option<CostFallback>) {
    let mut values = headers.get_all(name).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        let reason = if headers.contains_key(name) {
            CostFallback::Malformed
        } else {
            CostFallback::Missing
        };
        return (cost, Some(reason));
    };
    let text = value.to_str().unwrap_or("").trim();
    let named = (!text.is_empty() && text.len() <= 20 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse::<u64>().ok())
        .flatten();
    match named {
        None => (cost, Some(CostFallback::Malformed)),
        Some(n) if n > capacity => (capacity, Some(CostFallback::TooLarge)),
        Some(n) => (n, None),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderValue;

    #[test]
    fn statuses_and_classes() {
        let set = StatusSet::new(["401", "403", "5XX", "401"]).unwrap();
        assert_eq!(set.to_string(), "401, 403, 5xx");
        for (code, inside) in [
            (401, true),
            (403, true),
            (500, true),
            (599, true),
            (400, false),
            (200, false),
            (404, false),
        ] {
            assert_eq!(
                set.contains(StatusCode::from_u16(code).unwrap()),
                inside,
                "{code}"
            );
        }
        for bad in ["600", "099", "4x", "4xxx", "abc", "", "6xx", "40 1"] {
            assert_eq!(
                StatusSet::new([bad]),
                Err(StatusSetError::Invalid(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert_eq!(StatusSet::new([]), Err(StatusSetError::Empty));
    }

    #[test]
    fn the_cost_an_answer_names() {
        let name = HeaderName::from_static("x-ratelimit-cost");
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(&name, HeaderValue::from_str(v).unwrap());
            }
            answer_cost(&h, &name, 2, 1000)
        };
        assert_eq!(with(&["17"]), (17, None));
        assert_eq!(with(&[" 0 "]), (0, None));
        assert_eq!(with(&[]), (2, Some(CostFallback::Missing)));
        for bad in ["-3", "1.5", "", "12abc", "99999999999999999999999"] {
            assert_eq!(with(&[bad]), (2, Some(CostFallback::Malformed)), "{bad:?}");
        }
        assert_eq!(with(&["3", "4"]), (2, Some(CostFallback::Malformed)));
        assert_eq!(with(&["5000"]), (1000, Some(CostFallback::TooLarge)));
    }
}
