//! Rate limit descriptors, as Envoy's rate limit service protocol (RLS v3)
//! sends them: a domain, then per descriptor a list of `(key, value)`
//! entries built by the proxy's rate limit actions (`remote_address`,
//! `request_headers`, `generic_key`, ...).
//!
//! A rule with a [`DescriptorMatch`] decides the descriptors of its domain
//! whose entry keys are its entries, in order. An entry written
//! `key=value` matches only that value; the values of the other entries
//! make the counter key, so `entries = ["remote_address"]` counts per
//! client address and `entries = ["generic_key=slow", "user"]` counts per
//! user, only in descriptors whose `generic_key` is `slow`.

use std::borrow::Cow;
use std::fmt;

use crate::rule::bounded_key;

/// The entry key whose value is the client's address: the `ip:` identity
/// access lists and manual blocks look at.
pub const REMOTE_ADDRESS: &str = "remote_address";

/// Which descriptors a rule decides (`descriptor = { domain, entries }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorMatch {
    domain: String,
    entries: Vec<EntryMatch>,
}

/// One entry of a [`DescriptorMatch`]: its key, and the one value it
/// matches if fixed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EntryMatch {
    key: String,
    value: Option<String>,
}

/// Why a `descriptor` is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorError(String);

impl fmt::Display for DescriptorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DescriptorError {}

impl DescriptorMatch {
    /// Descriptors of `domain` whose entry keys are `entries` in order;
    /// an entry `key=value` matches only that value.
    pub fn new<'a>(
        domain: &str,
        entries: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, DescriptorError> {
        if domain.is_empty() {
            return Err(DescriptorError("the domain must not be empty".into()));
        }
        let entries: Vec<EntryMatch> = entries
            .into_iter()
            .map(|text| {
                let (key, value) = match text.split_once('=') {
                    Some((key, value)) => (key, Some(value.to_owned())),
                    None => (text, None),
                };
                if key.is_empty() {
                    return Err(DescriptorError(format!(
                        "entry {text:?} has no key (write \"key\" or \"key=value\")"
                    )));
                }
                Ok(EntryMatch {
                    key: key.to_owned(),
                    value,
                })
            })
            .collect::<Result<_, _>>()?;
        if entries.is_empty() {
            return Err(DescriptorError(
                "entries must name at least one entry key".into(),
            ));
        }
        Ok(DescriptorMatch {
            domain: domain.to_owned(),
            entries,
        })
    }

    /// The domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The entries as written (`key` or `key=value`).
    pub fn entries(&self) -> impl Iterator<Item = String> + '_ {
        self.entries.iter().map(|e| match &e.value {
            Some(v) => format!("{}={v}", e.key),
            None => e.key.clone(),
        })
    }

    /// The counter key of a descriptor of this domain with `entries`, if
    /// this matches it: the values of the entries not fixed, joined by `|`
    /// (a `|` or `\` in a value escaped by `\`), each hashed when longer
    /// than [`MAX_KEY_PART_LEN`](crate::rule::MAX_KEY_PART_LEN); `global`
    /// when every entry is fixed.
    pub fn key_of<'a>(&self, entries: &[(&'a str, &'a str)]) -> Option<Cow<'a, str>> {
        if entries.len() != self.entries.len() {
            return None;
        }
        let mut parts = 0;
        let mut only: Option<&'a str> = None;
        for (want, &(key, value)) in self.entries.iter().zip(entries) {
            if want.key != key {
                return None;
            }
            match &want.value {
                Some(fixed) if fixed != value => return None,
                Some(_) => {}
                None => {
                    parts += 1;
                    only = Some(value);
                }
            }
        }
        Some(match (parts, only) {
            (0, _) => Cow::Borrowed("global"),
            (1, Some(value)) => bounded_key(value),
            _ => {
                let mut key = String::new();
                let variable = self
                    .entries
                    .iter()
                    .zip(entries)
                    .filter(|(want, _)| want.value.is_none());
                for (i, (_, (_, value))) in variable.enumerate() {
                    if i > 0 {
                        key.push('|');
                    }
                    for c in bounded_key(*value).chars() {
                        if c == '|' || c == '\\' {
                            key.push('\\');
                        }
                        key.push(c);
                    }
                }
                Cow::Owned(key)
            }
        })
    }
}

impl fmt::Display for DescriptorMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [", self.domain)?;
        for (i, e) in self.entries().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(&e)?;
        }
        f.write_str("]")
    }
}

/// One descriptor of a request, as the proxy sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor<'a> {
    /// Its entries, in order.
    pub entries: Vec<(&'a str, &'a str)>,
    /// What it costs (at least 1).
    pub cost: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn entries_match_in_order_and_fixed_values_only_their_value() {
        let m = DescriptorMatch::new("edge", ["generic_key=slow", "user"]).unwrap();
        assert_eq!(
            m.key_of(&[("generic_key", "slow"), ("user", "alice")])
                .as_deref(),
            Some("alice")
        );
        assert_eq!(
            m.key_of(&[("generic_key", "fast"), ("user", "alice")]),
            None
        );
        assert_eq!(
            m.key_of(&[("user", "alice"), ("generic_key", "slow")]),
            None
        );
        assert_eq!(m.key_of(&[("generic_key", "slow")]), None);
        let all_fixed = DescriptorMatch::new("edge", ["path=/login"]).unwrap();
        assert_eq!(
            all_fixed.key_of(&[("path", "/login")]).as_deref(),
            Some("global")
        );
    }

    #[test]
    fn several_values_make_one_unambiguous_key() {
        let m = DescriptorMatch::new("edge", ["a", "b"]).unwrap();
        let one = m.key_of(&[("a", "x|y"), ("b", "z")]).unwrap();
        let two = m.key_of(&[("a", "x"), ("b", "y|z")]).unwrap();
        assert_ne!(one, two);
        assert_eq!(one, "x\\|y|z");
        let long = "v".repeat(1000);
        let hashed = m.key_of(&[("a", &long), ("b", "z")]).unwrap();
        assert!(hashed.starts_with("sha256:"), "{hashed}");
    }

    #[test]
    fn bad_descriptors_are_refused() {
        assert!(DescriptorMatch::new("", ["a"]).is_err());
        assert!(DescriptorMatch::new("d", []).is_err());
        assert!(DescriptorMatch::new("d", ["=v"]).is_err());
        assert_eq!(
            DescriptorMatch::new("d", ["a", "b=c"]).unwrap().to_string(),
            "d [a, b=c]"
        );
    }
}
