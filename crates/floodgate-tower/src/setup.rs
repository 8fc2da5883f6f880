//! A limiter in a few chained calls, in the vocabulary of floodgate's config
//! file: [`Rule::sliding_window`] and its siblings start a [`RuleBuilder`],
//! [`LimiterConfig::builder`] collects rules and access lists, and
//! [`ConfigBuilder::build`] checks everything at once, every problem named
//! with its rule and field, as `check-config` does.
//!
//! ```
//! use floodgate_core::MemoryStore;
//! use floodgate_tower::{LimiterConfig, OnError, Rule};
//!
//! let limiter = LimiterConfig::builder()
//!     .rule(Rule::sliding_window("api", 100, "1m").key("ip").path_prefix("/api/"))
//!     .rule(Rule::token_bucket("per-key", 10, "1s").burst(20).key("header:x-api-key"))
//!     .deny("ip:203.0.113.0/24")
//!     .on_error(OnError::Local)
//!     .build(MemoryStore::new(100_000))?;
//! # let _ = limiter;
//! # Ok::<(), floodgate_tower::ConfigError>(())
//! ```
//!
//! The same with tower-governor: a `GovernorConfigBuilder` with
//! `per_second`, `burst_size` and a key extractor makes one limit, keyed one
//! way, on one process; a second limit, a path condition or an allow list is
//! another layer or code of your own. Here each is one call, and the same
//! rules hold across instances on a shared store.

use std::time::Duration;

use floodgate_core::duration::parse_duration;
use floodgate_core::{Algorithm, Policy, Store};
use http::Method;
use http::header::HeaderName;
use ipnet::IpNet;

use crate::limiter::{ConfigError, ConfigProblem, Limiter, LimiterConfig, OnError};
use crate::rule::{AppKey, KeyPart, KeySpec, RequestMatch, Rule, StatusSet};
use crate::target::Target;

/// A duration as a config file writes it (`"250ms"`, `"10s"`, `"1m"`,
/// `"1h"`, `"1d"`), or a [`Duration`].
pub trait IntoDuration {
    /// The duration, or why the text is not one.
    fn into_duration(self) -> Result<Duration, String>;
}

impl IntoDuration for Duration {
    fn into_duration(self) -> Result<Duration, String> {
        Ok(self)
    }
}

impl IntoDuration for &str {
    fn into_duration(self) -> Result<Duration, String> {
        parse_duration(self)
    }
}

impl IntoDuration for String {
    fn into_duration(self) -> Result<Duration, String> {
        parse_duration(&self)
    }
}

/// A rule being written: checked when the configuration is built, so that
/// every mistake is reported at once.
#[derive(Debug)]
pub struct RuleBuilder {
    name: String,
    algorithm: Algorithm,
    limit: u64,
    window: Result<Duration, String>,
    burst: Option<u64>,
    block_for: Vec<Result<Duration, String>>,
    key: Result<KeySpec, String>,
    matcher: RequestMatch,
    bad_methods: Vec<String>,
    cost: u64,
    shadow: bool,
    count_status: Option<Result<StatusSet, String>>,
    cost_header: Option<Result<HeaderName, String>>,
    batched: bool,
}

impl Rule {
    /// A `fixed_window` rule: `limit` per `window`, counted in windows that
    /// start on multiples of `window`. Keyed by `ip` unless told otherwise.
    pub fn fixed_window(name: &str, limit: u64, window: impl IntoDuration) -> RuleBuilder {
        RuleBuilder::new(name, Algorithm::FixedWindow, limit, window)
    }

    /// A `sliding_window` rule: `limit` per `window`, the previous window
    /// weighted by how much of it the current one still covers.
    pub fn sliding_window(name: &str, limit: u64, window: impl IntoDuration) -> RuleBuilder {
        RuleBuilder::new(name, Algorithm::SlidingWindow, limit, window)
    }

    /// A `sliding_log` rule: exactly `limit` per any `window`.
    pub fn sliding_log(name: &str, limit: u64, window: impl IntoDuration) -> RuleBuilder {
        RuleBuilder::new(name, Algorithm::SlidingLog, limit, window)
    }

    /// A `token_bucket` rule (GCRA): refills at `limit` per `window`, holds
    /// at most [`burst`](RuleBuilder::burst) (default: `limit`).
    pub fn token_bucket(name: &str, limit: u64, window: impl IntoDuration) -> RuleBuilder {
        RuleBuilder::new(name, Algorithm::TokenBucket, limit, window)
    }
}

impl RuleBuilder {
    fn new(name: &str, algorithm: Algorithm, limit: u64, window: impl IntoDuration) -> Self {
        RuleBuilder {
            name: name.to_owned(),
            algorithm,
            limit,
            window: window.into_duration(),
            burst: None,
            block_for: Vec::new(),
            key: Ok(KeySpec::from(KeyPart::Ip)),
            matcher: RequestMatch::default(),
            bad_methods: Vec::new(),
            cost: 1,
            shadow: false,
            count_status: None,
            cost_header: None,
            batched: false,
        }
    }

    /// The key, as a config file writes it: `"ip"`, `"header:<name>"`,
    /// `"path"`, `"method"` or `"global"`.
    pub fn key(self, key: &str) -> Self {
        self.key_parts([key])
    }

    /// A composite key, as a config file writes it: `["header:x-api-key",
    /// "path"]`.
    pub fn key_parts<'a>(mut self, parts: impl IntoIterator<Item = &'a str>) -> Self {
        self.key = KeySpec::parse_list(parts).map_err(|e| e.to_string());
        self
    }

    /// A key the application forms (the authenticated user, the tenant).
    pub fn app_key(mut self, key: AppKey) -> Self {
        self.key = Ok(KeySpec::from(key));
        self
    }

    /// Only requests whose canonical path starts with `prefix`.
    pub fn path_prefix(mut self, prefix: &str) -> Self {
        self.matcher.path_prefix = Some(prefix.to_owned());
        self
    }

    /// Only requests with one of these methods (`"GET"` also matches
    /// `HEAD`).
    pub fn methods<'a>(mut self, methods: impl IntoIterator<Item = &'a str>) -> Self {
        let mut parsed = Vec::new();
        for m in methods {
            match m.parse::<Method>() {
                Ok(method) => parsed.push(method),
                Err(_) => self.bad_methods.push(m.to_owned()),
            }
        }
        self.matcher.methods = Some(parsed);
        self
    }

    /// `token_bucket` only: the most it holds (default: `limit`).
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Once a key goes over the limit, refuse it for this long.
    pub fn block_for(mut self, block_for: impl IntoDuration) -> Self {
        self.block_for = vec![block_for.into_duration()];
        self
    }

    /// Once a key goes over the limit, refuse it for the nth step at its nth
    /// offence in a row (the last step repeats); an offence is remembered
    /// for the last step's length after its block ends. See
    /// [`Policy::with_block_ladder`].
    ///
    /// ```
    /// use floodgate_tower::Rule;
    ///
    /// let login = Rule::fixed_window("login", 5, "1m").block_ladder(["1m", "10m", "1h", "1d"]);
    /// ```
    pub fn block_ladder<D: IntoDuration>(mut self, steps: impl IntoIterator<Item = D>) -> Self {
        self.block_for = steps.into_iter().map(IntoDuration::into_duration).collect();
        if self.block_for.is_empty() {
            self.block_for
                .push(Err("a block ladder needs at least one step".to_owned()));
        }
        self
    }

    /// What each request costs (default 1).
    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = cost;
        self
    }

    /// Count, log and send headers, but never refuse.
    pub fn shadow(mut self) -> Self {
        self.shadow = true;
        self
    }

    /// Charge only answers with these statuses (`"401, 403"`, classes
    /// such as `"5xx"`): the request is checked before it goes ahead and
    /// charged once its answer's status is known (see
    /// [`Rule::with_count_status`]).
    ///
    /// ```
    /// use floodgate_tower::Rule;
    ///
    /// let login = Rule::sliding_window("login-failures", 3, "15m")
    ///     .key("header:x-user")
    ///     .count_status("401, 403");
    /// ```
    pub fn count_status(mut self, statuses: &str) -> Self {
        self.count_status = Some(
            statuses
                .parse()
                .map_err(|e: crate::rule::StatusSetError| e.to_string()),
        );
        self
    }

    /// Charge the cost the answer names in this header (see
    /// [`Rule::with_cost_header`]).
    pub fn cost_header(mut self, header: &str) -> Self {
        self.cost_header = Some(
            HeaderName::try_from(header)
                .map_err(|_| format!("{header:?} is not an HTTP header name")),
        );
        self
    }

    /// Batched consistency (`consistency = "batched"`): on a Redis store,
    /// each instance admits from slices of the key's quota it leases from
    /// Redis, instead of asking Redis about every request. Never over the
    /// limit for the window algorithms; see
    /// [`Policy::with_batched`](floodgate_core::Policy::with_batched) and
    /// `floodgate_redis::RedisStore` for the bounds. Not for sliding logs,
    /// shadow rules, or rules charged on the answer.
    ///
    /// ```
    /// use floodgate_tower::{LimiterConfig, Rule};
    ///
    /// let config = LimiterConfig::builder()
    ///     .rule(Rule::sliding_window("api", 1000, "1m").batched())
    ///     .config()?;
    /// assert!(config.rules[0].policy.is_batched());
    /// # Ok::<(), floodgate_tower::ConfigError>(())
    /// ```
    pub fn batched(mut self) -> Self {
        self.batched = true;
        self
    }

    /// The rule, or every problem found, each naming its field.
    fn build(self) -> Result<Rule, Vec<ConfigProblem>> {
        let batched = self.batched;
        let mut problems = Vec::new();
        let mut problem = |field: &'static str, message: String| {
            problems.push(ConfigProblem {
                rule: Some(self.name.clone()),
                field,
                message,
            });
        };
        let window = self.window.map_err(|e| problem("window", e)).ok();
        let mut block_for = Vec::with_capacity(self.block_for.len());
        for step in self.block_for {
            match step {
                Ok(d) => block_for.push(d),
                Err(e) => problem("block_for", e),
            }
        }
        let key = self.key.map_err(|e| problem("key", e)).ok();
        let count_status = self
            .count_status
            .map(|c| c.map_err(|e| problem("count_status", e)).ok());
        let cost_header = self
            .cost_header
            .map(|c| c.map_err(|e| problem("cost_header", e)).ok());
        for m in &self.bad_methods {
            problem("methods", format!("{m:?} is not an HTTP method"));
        }
        if self.burst.is_some() && self.algorithm != Algorithm::TokenBucket {
            problem(
                "burst",
                format!(
                    "only token_bucket rules have a burst, not {}",
                    self.algorithm
                ),
            );
        }
        let policy = window.and_then(|window| {
            let policy = Policy::new(self.algorithm, self.limit, window)
                .and_then(|p| match self.burst {
                    Some(burst) if self.algorithm == Algorithm::TokenBucket => p.with_burst(burst),
                    _ => Ok(p),
                })
                .and_then(|p| match block_for.as_slice() {
                    [] => Ok(p),
                    steps => p.with_block_ladder(steps),
                })
                .and_then(|p| if batched { p.with_batched() } else { Ok(p) });
            policy.map_err(|e| problem("policy", e.to_string())).ok()
        });
        if batched && (self.shadow || count_status.is_some() || cost_header.is_some()) {
            problem(
                "consistency",
                "batched applies to rules charged when a request arrives and refused when over: not to shadow rules or rules charged on the answer".to_owned(),
            );
        }
        match (policy, key) {
            (Some(policy), Some(key)) if problems.is_empty() => {
                let mut rule = Rule::new(self.name, key, policy)
                    .with_match(self.matcher)
                    .with_cost(self.cost)
                    .with_shadow(self.shadow);
                if let Some(Some(statuses)) = count_status {
                    rule = rule.with_count_status(statuses);
                }
                if let Some(Some(header)) = cost_header {
                    rule = rule.with_cost_header(header);
                }
                Ok(rule)
            }
            _ => Err(problems),
        }
    }
}

/// A [`LimiterConfig`] being written, from [`LimiterConfig::builder`].
#[derive(Debug, Default)]
pub struct ConfigBuilder {
    config: LimiterConfig,
    rules: Vec<RuleBuilder>,
    problems: Vec<ConfigProblem>,
}

impl LimiterConfig {
    /// Starts a configuration of chained calls; see [`crate::setup`].
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }
}

impl ConfigBuilder {
    /// Adds a rule. A request is checked against every rule it matches.
    pub fn rule(mut self, rule: RuleBuilder) -> Self {
        self.rules.push(rule);
        self
    }

    /// Lets clients naming this target (`"ip:10.0.0.0/8"`,
    /// `"header:x-api-key:internal"`) bypass every rule.
    pub fn allow(mut self, target: &str) -> Self {
        if let Some(t) = self.target("allow", target) {
            self.config.access.allow.push(t);
        }
        self
    }

    /// Refuses clients naming this target with 403.
    pub fn deny(mut self, target: &str) -> Self {
        if let Some(t) = self.target("deny", target) {
            self.config.access.deny.push(t);
        }
        self
    }

    /// Believes `X-Forwarded-For` and its kin from these peers
    /// (`"127.0.0.1/32"`, `"10.0.0.0/8"`, a bare address).
    pub fn trusted_proxies<'a>(mut self, proxies: impl IntoIterator<Item = &'a str>) -> Self {
        for text in proxies {
            let parsed = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => self.config.client_ip.trusted_proxies.push(net),
                Err(_) => self.problem(
                    "trusted_proxies",
                    format!("{text:?} is not an IP address or CIDR like \"10.0.0.0/8\""),
                ),
            }
        }
        self
    }

    /// What to do when the store cannot decide (default: allow).
    pub fn on_error(mut self, on_error: OnError) -> Self {
        self.config.on_error = on_error;
        self
    }

    /// The longest a store call may take (default 50 ms).
    pub fn timeout(mut self, timeout: impl IntoDuration) -> Self {
        match timeout.into_duration() {
            Ok(t) => self.config.timeout = t,
            Err(e) => self.problem("timeout", e),
        }
        self
    }

    /// The configuration, or every problem found in it.
    pub fn config(self) -> Result<LimiterConfig, ConfigError> {
        let mut config = self.config;
        let mut problems = self.problems;
        for rule in self.rules {
            match rule.build() {
                Ok(rule) => config.rules.push(rule),
                Err(found) => problems.extend(found),
            }
        }
        if let Err(e) = config.validate() {
            problems.extend(e.problems);
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// A limiter of this configuration over `store`, or every problem found.
    pub fn build<S: Store>(self, store: S) -> Result<Limiter<S>, ConfigError> {
        Limiter::new(self.config()?, store)
    }

    fn target(&mut self, list: &'static str, text: &str) -> Option<Target> {
        match text.parse::<Target>() {
            Ok(t) => Some(t),
            Err(e) => {
                self.problem(list, format!("{text:?}: {e}"));
                None
            }
        }
    }

    fn problem(&mut self, field: &'static str, message: String) {
        self.problems.push(ConfigProblem {
            rule: None,
            field,
            message,
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn chained_calls_make_the_rules_a_struct_would() {
        let built = LimiterConfig::builder()
            .rule(
                Rule::token_bucket("per-key", 10, "1s")
                    .burst(20)
                    .key_parts(["header:x-api-key", "path"])
                    .path_prefix("/api/")
                    .methods(["GET", "POST"])
                    .block_for("15m")
                    .cost(2),
            )
            .rule(Rule::sliding_log("writes", 5, Duration::from_secs(60)).shadow())
            .allow("ip:10.0.0.0/8")
            .deny("header:x-api-key:leaked")
            .trusted_proxies(["127.0.0.1/32", "::1"])
            .on_error(OnError::Local)
            .timeout("250ms")
            .config()
            .unwrap();
        let policy = Policy::new(Algorithm::TokenBucket, 10, Duration::from_secs(1))
            .unwrap()
            .with_burst(20)
            .unwrap()
            .with_block_for(Duration::from_secs(900))
            .unwrap();
        let by_hand = Rule::new(
            "per-key",
            KeySpec::parse_list(["header:x-api-key", "path"]).unwrap(),
            policy,
        )
        .with_match(RequestMatch {
            path_prefix: Some("/api/".into()),
            methods: Some(vec![Method::GET, Method::POST]),
        })
        .with_cost(2);
        assert_eq!(built.rules[0], by_hand);
        assert!(built.rules[1].shadow);
        assert_eq!(
            built.rules[1].key.to_string(),
            "ip",
            "ip unless told otherwise"
        );
        assert_eq!(built.access.allow, vec!["ip:10.0.0.0/8".parse().unwrap()]);
        assert_eq!(built.client_ip.trusted_proxies.len(), 2);
        assert_eq!(built.on_error, OnError::Local);
        assert_eq!(built.timeout, Duration::from_millis(250));
    }

    #[test]
    fn every_mistake_is_reported_at_once_with_its_rule_and_field() {
        let err = LimiterConfig::builder()
            .rule(Rule::sliding_window("api", 100, "1x").key("bogus"))
            .rule(
                Rule::sliding_window("zero", 0, "1m")
                    .burst(5)
                    .methods(["G ET"]),
            )
            .rule(Rule::fixed_window("api", 1, "1s").block_for("soon"))
            .deny("nonsense")
            .trusted_proxies(["somewhere"])
            .timeout("fast")
            .config()
            .unwrap_err();
        let found: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
        for expected in [
            "rule \"api\": window:",
            "rule \"api\": key:",
            "rule \"zero\": policy:",
            "rule \"zero\": burst: only token_bucket",
            "rule \"zero\": methods: \"G ET\"",
            "rule \"api\": block_for:",
            "deny: \"nonsense\"",
            "trusted_proxies: \"somewhere\"",
            "timeout:",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(expected)),
                "{expected:?} not among {found:#?}"
            );
        }
    }

    #[test]
    fn batched_rules_are_built_and_refused_where_they_cannot_apply() {
        let built = LimiterConfig::builder()
            .rule(Rule::token_bucket("api", 320, "1m").batched())
            .config()
            .unwrap();
        assert!(built.rules[0].policy.is_batched());
        assert_eq!(built.rules[0].policy.batch_max(), 20);
        let err = LimiterConfig::builder()
            .rule(Rule::sliding_log("log", 10, "1m").batched())
            .rule(Rule::sliding_window("quiet", 10, "1m").shadow().batched())
            .config()
            .unwrap_err();
        let found: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
        for expected in [
            "rule \"log\": policy: consistency = \"batched\" takes",
            "rule \"quiet\": consistency: batched applies",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(expected)),
                "{expected:?} not among {found:#?}"
            );
        }
    }

    #[test]
    fn duplicate_names_are_caught_by_the_same_checks_as_any_config() {
        let err = LimiterConfig::builder()
            .rule(Rule::sliding_window("api", 1, "1s"))
            .rule(Rule::sliding_window("api", 2, "1s"))
            .config()
            .unwrap_err();
        assert!(
            err.to_string().contains("another rule has the same name"),
            "{err}"
        );
    }
}
