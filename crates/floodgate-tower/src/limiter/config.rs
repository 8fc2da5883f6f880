//! What a [`Limiter`](super::Limiter) enforces, and the checks that keep a
//! bad configuration from ever being enforced.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use floodgate_core::DEFAULT_MAX_KEYS;

use crate::identity::ClientIpConfig;
use crate::path::EncodedSlashes;
use crate::rule::Rule;
use crate::target::Target;

/// The longest rule name accepted, in bytes.
pub const MAX_RULE_NAME_LEN: usize = 64;

/// The longest `max_delay`: a held request keeps its connection open.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// What to do with a request when the store cannot decide it (an error, or
/// no answer within the timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Admit it, unlimited: availability over protection.
    #[default]
    Allow,
    /// Refuse it: the layer answers 503.
    Deny,
    /// Decide it on an in-process memory store while the store is down
    /// (limits then hold per instance rather than across instances).
    Local,
}

impl OnError {
    /// The configuration name: `allow`, `deny` or `local`.
    pub const fn as_str(self) -> &'static str {
        match self {
            OnError::Allow => "allow",
            OnError::Deny => "deny",
            OnError::Local => "local",
        }
    }
}

impl fmt::Display for OnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `on_error` is not `allow`, `deny` or `local`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown on_error {0:?} (expected allow, deny or local)")]
pub struct UnknownOnError(pub String);

impl FromStr for OnError {
    type Err = UnknownOnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(OnError::Allow),
            "deny" => Ok(OnError::Deny),
            "local" => Ok(OnError::Local),
            _ => Err(UnknownOnError(s.to_owned())),
        }
    }
}

/// Clients let through or turned away before any rule is checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessLists {
    /// Never limited, never blocked (health checkers, internal networks).
    /// Checked first.
    pub allow: Vec<Target>,
    /// Always refused with 403.
    pub deny: Vec<Target>,
}

/// Everything a [`Limiter`](super::Limiter) enforces. Swapped as a whole by
/// [`Limiter::reload`](super::Limiter::reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimiterConfig {
    /// Every rule a request matches is checked; any enforcing one can refuse.
    pub rules: Vec<Rule>,
    /// Allow and deny lists.
    pub access: AccessLists,
    /// How the client address is found.
    pub client_ip: ClientIpConfig,
    /// What happens when the store fails.
    pub on_error: OnError,
    /// The longest any store call may take; slower counts as a failure.
    pub timeout: Duration,
    /// With [`OnError::Local`]: the most keys the in-process fallback holds.
    /// Read when the limiter is built; a reload keeps the first value.
    pub local_max_keys: usize,
    /// What a path with `%2F` or `%5C` gets (see [`crate::path`]).
    pub encoded_slashes: EncodedSlashes,
}

impl Default for LimiterConfig {
    /// No rules, no lists, no trusted proxies, `on_error = allow`, 50 ms,
    /// encoded slashes kept.
    fn default() -> Self {
        LimiterConfig {
            rules: Vec::new(),
            access: AccessLists::default(),
            client_ip: ClientIpConfig::default(),
            on_error: OnError::Allow,
            timeout: Duration::from_millis(50),
            local_max_keys: DEFAULT_MAX_KEYS,
            encoded_slashes: EncodedSlashes::Keep,
        }
    }
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The rule it is about, if any.
    pub rule: Option<String>,
    /// The field, as named in the configuration file (`cost`, `name`,
    /// `ipv6_prefix`).
    pub field: &'static str,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Some(rule) => write!(f, "rule {rule:?}: {}: {}", self.field, self.message),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// At least one.
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl LimiterConfig {
    /// Checks everything that the types do not, and reports every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |rule: Option<&str>, field, message: String| {
            problems.push(ConfigProblem {
                rule: rule.map(str::to_owned),
                field,
                message,
            })
        };
        let mut names = HashSet::new();
        for rule in &self.rules {
            let name = rule.name.as_str();
            if let Err(why) = check_rule_name(name) {
                problem(Some(name), "name", why.to_owned());
            }
            if !names.insert(name) {
                problem(Some(name), "name", "another rule has the same name".into());
            }
            if let crate::rule::OnLimit::Delay { max } = rule.on_limit {
                if rule.policy.algorithm() != floodgate_core::Algorithm::TokenBucket {
                    problem(
                        Some(name),
                        "on_limit",
                        format!(
                            "\"delay\" needs algorithm = \"token_bucket\", not {}: a held request takes its place in the bucket's future when it arrives, so it knows its wait exactly and a burst leaves at the rate in order; windows only count the past, so held requests could only guess and retry together",
                            rule.policy.algorithm()
                        ),
                    );
                }
                if rule.shadow {
                    problem(
                        Some(name),
                        "on_limit",
                        "a shadow rule never refuses, so it never delays".into(),
                    );
                }
                if rule.charges_on_answer() {
                    problem(
                        Some(name),
                        "on_limit",
                        "a rule charged on the answer (count_status, cost_header) takes no place when it is checked, so it has none to wait for".into(),
                    );
                }
                if max.is_zero() || max > MAX_DELAY {
                    problem(
                        Some(name),
                        "max_delay",
                        format!("must be between 1ms and 60s, got {max:?}"),
                    );
                }
            }
            if rule.concurrency.is_some()
                && (!rule.overrides.is_empty() || rule.charges_on_answer() || rule.shadow)
            {
                problem(
                    Some(name),
                    "algorithm",
                    "a concurrency limit takes no overrides, count_status, cost_header or shadow"
                        .into(),
                );
            }
            if rule.descriptor.is_some() {
                if rule.concurrency.is_some() || rule.charges_on_answer() {
                    problem(
                        Some(name),
                        "descriptor",
                        "a rule deciding Envoy descriptors cannot be a concurrency limit or be charged on the answer (count_status, cost_header): the rate limit service hears of a request once, before it runs, and never of its end or its answer".into(),
                    );
                }
                if rule.matcher != crate::rule::RequestMatch::default() {
                    problem(
                        Some(name),
                        "descriptor",
                        "a rule deciding Envoy descriptors takes no match: it decides descriptors, not requests".into(),
                    );
                }
            }
            for o in &rule.overrides {
                match o.policy(&rule.policy) {
                    Err(e) => problem(Some(name), "override", format!("key {:?}: {e}", o.key)),
                    Ok(p) if p.capacity() < rule.cost => problem(
                        Some(name),
                        "override",
                        format!(
                            "key {:?}: holds {} at most, less than the rule's cost {}",
                            o.key,
                            p.capacity(),
                            rule.cost
                        ),
                    ),
                    Ok(_) if o.key.is_empty() => {
                        problem(Some(name), "override", "a key must not be empty".into())
                    }
                    Ok(_) => {}
                }
            }
            let capacity = rule.policy.capacity();
            if rule.cost == 0 || rule.cost > capacity {
                problem(
                    Some(name),
                    "cost",
                    format!(
                        "must be between 1 and the rule's capacity {capacity}, got {}",
                        rule.cost
                    ),
                );
            }
        }
        let prefix = self.client_ip.ipv6_prefix;
        if !(1..=128).contains(&prefix) {
            problem(
                None,
                "ipv6_prefix",
                format!("must be between 1 and 128, got {prefix}"),
            );
        }
        if self.timeout.is_zero() {
            problem(None, "timeout", "must be longer than zero".into());
        }
        if self.local_max_keys == 0 {
            problem(None, "max_keys", "must be at least 1".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// The one rule for rule names, in the layer and in the server's config
/// alike: 1 to [`MAX_RULE_NAME_LEN`] letters, digits, `-`, `_` or `.`.
/// Names appear in response headers, problem bodies, metric labels, admin
/// URLs, logs and Redis keys; this alphabet needs quoting or escaping in
/// none of them.
pub fn check_rule_name(name: &str) -> Result<(), &'static str> {
    let valid = !name.is_empty()
        && name.len() <= MAX_RULE_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err("must be 1-64 characters of letters, digits, '-', '_' or '.'")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use floodgate_core::{Algorithm, Policy};

    fn rule(name: &str, cost: u64) -> Rule {
        let policy = Policy::new(Algorithm::FixedWindow, 10, Duration::from_secs(1)).unwrap();
        Rule::new(name, "ip".parse().unwrap(), policy).with_cost(cost)
    }

    #[test]
    fn default_is_valid() {
        assert_eq!(LimiterConfig::default().validate(), Ok(()));
    }

    #[test]
    fn reports_every_problem_with_rule_and_field() {
        let mut config = LimiterConfig {
            rules: vec![
                rule("api", 1),
                rule("api", 0),
                rule("", 1),
                rule("has space", 11),
                rule("a/b", 1),
            ],
            timeout: Duration::ZERO,
            local_max_keys: 0,
            ..LimiterConfig::default()
        };
        config.client_ip.ipv6_prefix = 129;
        let err = config.validate().unwrap_err();
        let lines: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![
                "rule \"api\": name: another rule has the same name",
                "rule \"api\": cost: must be between 1 and the rule's capacity 10, got 0",
                "rule \"\": name: must be 1-64 characters of letters, digits, '-', '_' or '.'",
                "rule \"has space\": name: must be 1-64 characters of letters, digits, '-', '_' or '.'",
                "rule \"has space\": cost: must be between 1 and the rule's capacity 10, got 11",
                "rule \"a/b\": name: must be 1-64 characters of letters, digits, '-', '_' or '.'",
                "ipv6_prefix: must be between 1 and 128, got 129",
                "timeout: must be longer than zero",
                "max_keys: must be at least 1",
            ]
        );
        assert_eq!(err.to_string().lines().count(), 9);
    }

    #[test]
    fn on_error_names() {
        for e in [OnError::Allow, OnError::Deny, OnError::Local] {
            assert_eq!(e.as_str().parse::<OnError>(), Ok(e));
        }
        assert!("fail".parse::<OnError>().is_err());
    }
}
