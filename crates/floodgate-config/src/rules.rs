//! `[[rule]]`: what each rule matches, how it keys requests, its algorithm
//! and limits.

use std::collections::HashMap;
use std::time::Duration;

use floodgate_core::{Algorithm, KeyOverride, Policy};
use floodgate_tower::{DescriptorMatch, KeySpec, RequestMatch, Rule, StatusSet};
use http::Method;
use http::header::HeaderName;
use serde::Deserialize;

use floodgate_core::duration::parse_duration;

use super::problems::{Problems, Unknown};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawRule {
    name: Option<String>,
    #[serde(rename = "match")]
    matcher: Option<RawMatch>,
    key: Option<OneOrMany>,
    algorithm: Option<String>,
    limit: Option<i64>,
    window: Option<String>,
    burst: Option<i64>,
    cost: Option<i64>,
    block_for: Option<OneOrMany>,
    shadow: bool,
    count_status: Option<Vec<StatusItem>>,
    cost_header: Option<String>,
    #[serde(rename = "override")]
    overrides: Vec<RawOverride>,
    on_limit: Option<String>,
    max_delay: Option<String>,
    lease: Option<String>,
    descriptor: Option<RawDescriptor>,
    consistency: Option<String>,
    #[serde(flatten)]
    unknown: Unknown,
}

/// `descriptor = { domain, entries }`: the Envoy rate limit descriptors a
/// rule decides.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawDescriptor {
    domain: Option<String>,
    entries: Option<Vec<String>>,
    #[serde(flatten)]
    unknown: Unknown,
}

/// `[[rule.override]]`: a per-key limit fixed in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawOverride {
    key: Option<String>,
    limit: Option<i64>,
    window: Option<String>,
    burst: Option<i64>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawMatch {
    path_prefix: Option<String>,
    methods: Option<Vec<String>>,
    #[serde(flatten)]
    unknown: Unknown,
}

/// One entry of `count_status`: a code (`401`) or a class (`"4xx"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StatusItem {
    Code(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

pub(super) fn validate_rules(raw: Vec<RawRule>, p: &mut Problems) -> Vec<Rule> {
    // Where each name first appears, and how often: a rule whose name is
    // shared is also named by its position, so its problems point at one rule.
    let mut first_of: HashMap<String, (usize, usize)> = HashMap::new();
    for (i, r) in raw.iter().enumerate() {
        if let Some(n) = &r.name {
            first_of.entry(n.clone()).or_insert((i, 0)).1 += 1;
        }
    }
    let mut rules = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let at = match &r.name {
            Some(n) if first_of.get(n).is_some_and(|(_, count)| *count > 1) => {
                format!("rule {n:?} (#{})", i + 1)
            }
            Some(n) => format!("rule {n:?}"),
            None => format!("rule #{}", i + 1),
        };
        let before = p.0.len();
        p.unknown(
            &at,
            &r.unknown,
            &[
                "name",
                "match",
                "key",
                "algorithm",
                "limit",
                "window",
                "burst",
                "cost",
                "block_for",
                "shadow",
                "count_status",
                "cost_header",
                "override",
                "on_limit",
                "max_delay",
                "lease",
                "descriptor",
                "consistency",
            ],
        );
        let batched = match r.consistency.as_deref() {
            None | Some("exact") => false,
            Some("batched") => {
                validate_batched(&r, &at, p);
                true
            }
            Some(other) => {
                p.add(
                    format!("{at} consistency"),
                    format!("{other:?} is not \"exact\" or \"batched\""),
                );
                false
            }
        };
        let descriptor = validate_descriptor(&r, &at, p);
        let name = match r.name {
            Some(n) if floodgate_tower::check_rule_name(&n).is_ok() => n,
            Some(n) => {
                p.add(
                    format!("{at} name"),
                    format!("{n:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"),
                );
                n
            }
            None => {
                p.add(
                    format!("{at} name"),
                    "missing (every rule needs a unique name)",
                );
                String::new()
            }
        };
        if let Some((first, _)) = first_of.get(&name).filter(|(first, _)| *first != i) {
            p.add(
                format!("{at} name"),
                format!(
                    "duplicate rule name: rule #{} has it too (names must be unique)",
                    first + 1
                ),
            );
        }
        let matcher = validate_match(r.matcher, &at, p);
        let key = match r.key {
            None => KeySpec::parse_list(["ip"]),
            Some(OneOrMany::One(k)) => KeySpec::parse_list([k.as_str()]),
            Some(OneOrMany::Many(ks)) if ks.is_empty() => {
                p.add(
                    format!("{at} key"),
                    "an empty list (use \"global\" for one shared key)",
                );
                KeySpec::parse_list(["global"])
            }
            Some(OneOrMany::Many(ks)) => KeySpec::parse_list(ks.iter().map(String::as_str)),
        };
        let key = key
            .map_err(|e| p.add(format!("{at} key"), e.to_string()))
            .ok();
        if r.algorithm.as_deref() == Some("concurrency") {
            // Requests in flight, not a rate: its own keys.
            let mut stray = Vec::new();
            for (set, field) in [
                (r.window.is_some(), "window"),
                (r.burst.is_some(), "burst"),
                (r.block_for.is_some(), "block_for"),
                (r.count_status.is_some(), "count_status"),
                (r.cost_header.is_some(), "cost_header"),
                (r.on_limit.is_some(), "on_limit"),
                (r.max_delay.is_some(), "max_delay"),
                (!r.overrides.is_empty(), "override"),
                (r.shadow, "shadow"),
                (r.cost.is_some_and(|c| c != 1), "cost"),
                (r.descriptor.is_some(), "descriptor"),
                (r.consistency.as_deref() == Some("batched"), "consistency"),
            ] {
                if set {
                    stray.push(field);
                }
            }
            for field in stray {
                p.add(
                    format!("{at} {field}"),
                    "does not apply to algorithm = \"concurrency\" (limit = requests in flight at once, lease = how long a slot outlives a crashed instance)",
                );
            }
            let limit = match r.limit {
                Some(l) if l >= 1 => Some(l as u64),
                Some(l) => {
                    p.add(
                        format!("{at} limit"),
                        format!("must be at least 1, got {l}"),
                    );
                    None
                }
                None => {
                    p.add(
                        format!("{at} limit"),
                        "missing (requests in flight at once)",
                    );
                    None
                }
            };
            let lease = match r.lease.as_deref().map(parse_duration) {
                None => Some(DEFAULT_LEASE),
                Some(Ok(d))
                    if (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&d) =>
                {
                    Some(d)
                }
                Some(Ok(d)) => {
                    p.add(
                        format!("{at} lease"),
                        format!("must be between 1s and 1h, got {d:?}"),
                    );
                    None
                }
                Some(Err(e)) => {
                    p.add(format!("{at} lease"), e);
                    None
                }
            };
            if p.0.len() == before
                && let (Some(key), Some(limit), Some(lease)) = (key, limit, lease)
            {
                match Rule::concurrency(name, key, limit, lease) {
                    Ok(rule) => rules.push(rule.with_match(matcher)),
                    Err(e) => p.add(format!("{at} limit"), e.to_string()),
                }
            }
            continue;
        }
        if r.lease.is_some() {
            p.add(
                format!("{at} lease"),
                "only applies to algorithm = \"concurrency\"",
            );
        }
        let algorithm = match r.algorithm.as_deref() {
            None => Some(Algorithm::SlidingWindow),
            Some(text) => text
                .parse::<Algorithm>()
                .map_err(|_| {
                    p.add(
                        format!("{at} algorithm"),
                        format!("unknown algorithm {text:?} (expected fixed_window, sliding_window, sliding_log, token_bucket or concurrency)"),
                    )
                })
                .ok(),
        };
        let limit = match r.limit {
            None => {
                p.add(
                    format!("{at} limit"),
                    "missing (requests, in cost units, per window)",
                );
                None
            }
            Some(l) if l < 1 => {
                p.add(
                    format!("{at} limit"),
                    format!("must be at least 1, got {l}"),
                );
                None
            }
            Some(l) => Some(l as u64),
        };
        let window = match r.window.as_deref().map(parse_duration) {
            None => {
                p.add(format!("{at} window"), "missing (e.g. window = \"1m\")");
                None
            }
            Some(Err(e)) => {
                p.add(format!("{at} window"), e);
                None
            }
            Some(Ok(w)) => Some(w),
        };
        let block_for = validate_block_for(r.block_for, &at, p);
        let delay = validate_on_limit(r.on_limit.as_deref(), r.max_delay.as_deref(), &at, p);
        let count_status = r.count_status.map(|items| {
            let texts: Vec<String> = items
                .into_iter()
                .map(|item| match item {
                    StatusItem::Code(code) => code.to_string(),
                    StatusItem::Text(text) => text,
                })
                .collect();
            StatusSet::new(texts.iter().map(String::as_str))
                .map_err(|e| p.add(format!("{at} count_status"), e.to_string()))
        });
        let cost_header = r.cost_header.map(|name| {
            HeaderName::try_from(name.as_str()).map_err(|_| {
                p.add(
                    format!("{at} cost_header"),
                    format!("{name:?} is not an HTTP header name"),
                )
            })
        });
        let cost = r.cost.unwrap_or(1);
        if cost < 1 {
            p.add(
                format!("{at} cost"),
                format!("must be at least 1, got {cost}"),
            );
        }
        let policy = match (algorithm, limit, window) {
            (Some(a), Some(l), Some(w)) => build_policy(a, l, w, r.burst, block_for, &at, p),
            _ => None,
        };
        let policy = match policy {
            Some(policy) if batched => policy
                .with_batched()
                .map_err(|e| p.add(format!("{at} consistency"), e.to_string()))
                .ok(),
            policy => policy,
        };
        if let Some(policy) = &policy
            && cost >= 1
            && cost as u64 > policy.capacity()
        {
            p.add(
                format!("{at} cost"),
                format!(
                    "{cost} is more than the rule can ever admit at once ({})",
                    policy.capacity()
                ),
            );
        }
        if p.0.len() == before
            && let (Some(key), Some(policy)) = (key, policy)
        {
            let mut rule = Rule::new(name, key, policy)
                .with_match(matcher)
                .with_cost(cost as u64)
                .with_shadow(r.shadow);
            if let Some(Ok(statuses)) = count_status {
                rule = rule.with_count_status(statuses);
            }
            if let Some(Ok(header)) = cost_header {
                rule = rule.with_cost_header(header);
            }
            if let Some(m) = descriptor {
                rule = rule.with_descriptor(m);
            }
            if let Some(Some(max)) = delay {
                rule = rule.with_delay(max);
                // The limiter's own checks of a delaying rule, as problems
                // of this file.
                let config = floodgate_tower::LimiterConfig {
                    rules: vec![rule.clone()],
                    ..floodgate_tower::LimiterConfig::default()
                };
                if let Err(e) = config.validate() {
                    for problem in e
                        .problems
                        .iter()
                        .filter(|q| matches!(q.field, "on_limit" | "max_delay"))
                    {
                        p.add(format!("{at} {}", problem.field), problem.message.clone());
                    }
                }
            }
            let mut seen: Vec<String> = Vec::new();
            let mut bad = false;
            for (i, raw) in r.overrides.into_iter().enumerate() {
                let at = format!("{at} override #{}", i + 1);
                match validate_override(raw, &rule, &at, p) {
                    Some(o) if seen.contains(&o.key) => {
                        p.add(
                            format!("{at} key"),
                            format!("{:?} has another override in this rule", o.key),
                        );
                        bad = true;
                    }
                    Some(o) => {
                        seen.push(o.key.clone());
                        rule = rule.with_override(o);
                    }
                    None => bad = true,
                }
            }
            if !bad {
                rules.push(rule);
            }
        }
    }
    rules
}

/// What `consistency = "batched"` excludes: a budget is leased for
/// requests charged when they arrive and refused when over, so not for
/// rules charged on the answer, rules that hold requests, or shadow rules
/// (which refuse nothing). The algorithm is checked with the policy.
fn validate_batched(r: &RawRule, at: &str, p: &mut Problems) {
    for (set, field, why) in [
        (
            r.count_status.is_some(),
            "count_status",
            "a batched rule charges requests when they arrive, not their answers",
        ),
        (
            r.cost_header.is_some(),
            "cost_header",
            "a batched rule charges requests when they arrive, not their answers",
        ),
        (
            r.on_limit.as_deref() == Some("delay"),
            "on_limit",
            "a batched rule cannot hold requests: a held request's place is decided by the store at once",
        ),
        (
            r.shadow,
            "shadow",
            "a shadow rule refuses nothing, so it has no quota to lease: use consistency = \"exact\" while trying it",
        ),
    ] {
        if set {
            p.add(
                format!("{at} {field}"),
                format!("does not go with consistency = \"batched\": {why}"),
            );
        }
    }
}

/// A rule's `descriptor`, checked with what it excludes: `match` and `key`
/// (the descriptor says what it decides and its values make the key), and
/// what the rate limit service never learns (`count_status`,
/// `cost_header`: the answer).
fn validate_descriptor(r: &RawRule, at: &str, p: &mut Problems) -> Option<DescriptorMatch> {
    let raw = r.descriptor.as_ref()?;
    let at = format!("{at} descriptor");
    p.unknown(&at, &raw.unknown, &["domain", "entries"]);
    for (set, field, why) in [
        (
            r.matcher.is_some(),
            "match",
            "it decides Envoy descriptors, not requests",
        ),
        (
            r.key.is_some(),
            "key",
            "the descriptor's entry values are the key",
        ),
        (
            r.count_status.is_some(),
            "count_status",
            "the rate limit service never sees the answer",
        ),
        (
            r.cost_header.is_some(),
            "cost_header",
            "the rate limit service never sees the answer",
        ),
    ] {
        if set {
            p.add(
                at.clone(),
                format!("a rule with a descriptor takes no {field}: {why}"),
            );
        }
    }
    let Some(domain) = raw.domain.as_deref() else {
        p.add(
            format!("{at}.domain"),
            "missing (the domain Envoy's filter sends, e.g. \"edge\")",
        );
        return None;
    };
    let Some(entries) = raw.entries.as_ref() else {
        p.add(
            format!("{at}.entries"),
            "missing (the descriptor's entry keys in order, e.g. [\"remote_address\"])",
        );
        return None;
    };
    DescriptorMatch::new(domain, entries.iter().map(String::as_str))
        .map_err(|e| p.add(at.clone(), e.to_string()))
        .ok()
}

fn build_policy(
    algorithm: Algorithm,
    limit: u64,
    window: Duration,
    burst: Option<i64>,
    block_for: Option<Vec<Duration>>,
    at: &str,
    p: &mut Problems,
) -> Option<Policy> {
    let mut policy = Policy::new(algorithm, limit, window)
        .map_err(|e| {
            let field = if matches!(e, floodgate_core::PolicyError::Window(_)) {
                "window"
            } else {
                "limit"
            };
            p.add(format!("{at} {field}"), e.to_string());
        })
        .ok()?;
    if let Some(b) = burst {
        if b < 1 {
            p.add(
                format!("{at} burst"),
                format!("must be at least 1, got {b}"),
            );
            return None;
        }
        policy = policy
            .with_burst(b as u64)
            .map_err(|e| p.add(format!("{at} burst"), e.to_string()))
            .ok()?;
    }
    if let Some(steps) = block_for {
        policy = policy
            .with_block_ladder(&steps)
            .map_err(|e| p.add(format!("{at} block_for"), e.to_string()))
            .ok()?;
    }
    Some(policy)
}

/// The default `lease` of a concurrency limit.
const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The default `max_delay`.
const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(500);

/// `on_limit` and `max_delay`: `None` for "reject" (the default),
/// `Some(Some(max))` for "delay", `Some(None)` after a problem.
fn validate_on_limit(
    on_limit: Option<&str>,
    max_delay: Option<&str>,
    at: &str,
    p: &mut Problems,
) -> Option<Option<Duration>> {
    match on_limit {
        None | Some("reject") => {
            if max_delay.is_some() {
                p.add(
                    format!("{at} max_delay"),
                    "only applies with on_limit = \"delay\"",
                );
                return Some(None);
            }
            None
        }
        Some("delay") => match max_delay.map(parse_duration) {
            None => Some(Some(DEFAULT_MAX_DELAY)),
            Some(Ok(d)) => Some(Some(d)),
            Some(Err(e)) => {
                p.add(format!("{at} max_delay"), e);
                Some(None)
            }
        },
        Some(other) => {
            p.add(
                format!("{at} on_limit"),
                format!("{other:?} is not \"reject\" or \"delay\""),
            );
            Some(None)
        }
    }
}

/// One `[[rule.override]]` of `rule`: a valid policy for it, that admits the
/// rule's cost.
fn validate_override(
    raw: RawOverride,
    rule: &Rule,
    at: &str,
    p: &mut Problems,
) -> Option<KeyOverride> {
    p.unknown(at, &raw.unknown, &["key", "limit", "window", "burst"]);
    let key = match raw.key {
        Some(k) if !k.is_empty() => k,
        Some(_) => {
            p.add(format!("{at} key"), "must not be empty");
            return None;
        }
        None => {
            p.add(
                format!("{at} key"),
                "missing (the key as the rule forms it, e.g. \"ip:203.0.113.7\")",
            );
            return None;
        }
    };
    let Some(limit) = raw.limit else {
        p.add(format!("{at} limit"), "missing");
        return None;
    };
    if limit < 1 {
        p.add(
            format!("{at} limit"),
            format!("must be at least 1, got {limit}"),
        );
        return None;
    }
    let window = match raw.window.as_deref().map(parse_duration) {
        None => None,
        Some(Ok(w)) => Some(w),
        Some(Err(e)) => {
            p.add(format!("{at} window"), e);
            return None;
        }
    };
    let burst = match raw.burst {
        None => None,
        Some(b) if b >= 1 => Some(b as u64),
        Some(b) => {
            p.add(
                format!("{at} burst"),
                format!("must be at least 1, got {b}"),
            );
            return None;
        }
    };
    let o = KeyOverride {
        rule: rule.name.clone(),
        key,
        limit: limit as u64,
        window,
        burst,
        expires: None,
    };
    match o.policy(&rule.policy) {
        Err(e) => {
            p.add(at.to_owned(), e.to_string());
            None
        }
        Ok(policy) if policy.capacity() < rule.cost => {
            p.add(
                at.to_owned(),
                format!(
                    "holds {} at most, less than the rule's cost {}",
                    policy.capacity(),
                    rule.cost
                ),
            );
            None
        }
        Ok(_) => Some(o),
    }
}

/// `block_for`: one duration, or a ladder of them (`["1m", "10m", "1h"]`).
fn validate_block_for(raw: Option<OneOrMany>, at: &str, p: &mut Problems) -> Option<Vec<Duration>> {
    let texts = match raw? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    };
    let mut steps = Vec::with_capacity(texts.len());
    let mut bad = false;
    for (i, text) in texts.iter().enumerate() {
        match parse_duration(text) {
            Ok(d) => steps.push(d),
            Err(e) if texts.len() == 1 => {
                p.add(format!("{at} block_for"), e);
                bad = true;
            }
            Err(e) => {
                p.add(format!("{at} block_for[{i}]"), e);
                bad = true;
            }
        }
    }
    (!bad).then_some(steps)
}

fn validate_match(raw: Option<RawMatch>, at: &str, p: &mut Problems) -> RequestMatch {
    let Some(raw) = raw else {
        return RequestMatch::default();
    };
    p.unknown(
        &format!("{at} match"),
        &raw.unknown,
        &["path_prefix", "methods"],
    );
    if let Some(prefix) = &raw.path_prefix
        && !prefix.starts_with('/')
    {
        p.add(
            format!("{at} match.path_prefix"),
            format!("{prefix:?} must start with '/'"),
        );
    }
    let methods = raw.methods.map(|ms| {
        ms.iter()
            .filter_map(
                |m| match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(method) => Some(method),
                    Err(_) => {
                        p.add(
                            format!("{at} match.methods"),
                            format!("{m:?} is not an HTTP method"),
                        );
                        None
                    }
                },
            )
            .collect()
    });
    RequestMatch {
        path_prefix: raw.path_prefix,
        methods,
    }
}
