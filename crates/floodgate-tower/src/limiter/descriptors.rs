//! Deciding the descriptors of an Envoy rate limit request (RLS v3): the
//! same access lists, blocks, rules, overrides, `on_error`, shadow mode
//! and metrics as a request through the gateway, every descriptor of a
//! request in one store call.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use floodgate_core::{Decision, Policy, Store};
use http::HeaderMap;

use super::{
    CompiledRule, Limiter, OnError, Overridden, check_of, penalty_decision, policy_and_label,
};
use crate::descriptor::Descriptor;
use crate::observer::Outcome;
use crate::verdict::{ForbiddenReason, RuleDecision};

/// What the limiter decided about a request's descriptors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DescriptorVerdict {
    /// One status per descriptor, in the request's order.
    Decided(Vec<DescriptorStatus>),
    /// The client is on the allow list: no rule applies.
    Bypassed,
    /// The client is on the deny list or blocked: every descriptor is
    /// refused.
    Forbidden {
        /// Which entry or block.
        reason: ForbiddenReason,
    },
    /// The store could not decide and `on_error` is `deny` (or `local`
    /// with the fallback failing too).
    Unavailable,
}

/// What one descriptor got.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DescriptorStatus {
    /// Whether it is admitted: no enforcing rule refused it.
    pub allowed: bool,
    /// The decision the answer describes: the refusing rule's (the longest
    /// wait), else the one with the least left, shadow rules included;
    /// `None` when no rule decides the descriptor or the store could not
    /// and `on_error = "allow"` let it through.
    pub decision: Option<RuleDecision>,
    /// A shadow rule that would have refused it.
    pub shadow_limited: Option<RuleDecision>,
}

/// One (descriptor, rule) pair to decide.
struct Pair<'s> {
    descriptor: usize,
    rule: &'s CompiledRule,
    key: String,
    overridden: Option<Arc<Overridden>>,
    cost: u64,
}

impl<S: Store + Clone> Limiter<S> {
    /// Decides the `descriptors` of an Envoy rate limit request in
    /// `domain`, from the client `client` (its `remote_address` entry):
    /// every rule whose [`descriptor`](crate::Rule::descriptor) matches a
    /// descriptor decides it, with the descriptor's cost, in one store call
    /// for the whole request. Rules with `on_limit = "delay"` are decided
    /// without their delay (a refusal is the answer), as in the decision
    /// API.
    pub async fn check_descriptors(
        &self,
        domain: &str,
        descriptors: &[Descriptor<'_>],
        client: Option<IpAddr>,
    ) -> DescriptorVerdict {
        let snapshot = self.shared.snapshot.load_full();
        let no_headers = HeaderMap::new();
        if snapshot.allow.find(client, &no_headers, |_| true).is_some() {
            self.observe(None, Outcome::Bypassed);
            return DescriptorVerdict::Bypassed;
        }
        if let Some((target, ())) = snapshot.deny.find(client, &no_headers, |_| true) {
            self.observe(None, Outcome::Denied);
            return DescriptorVerdict::Forbidden {
                reason: ForbiddenReason::DenyList {
                    target: target.clone(),
                },
            };
        }
        let now = self.shared.clock.now();
        if let Some(target) = self.shared.blocks.manual_block(client, &no_headers, now) {
            self.observe(None, Outcome::Blocked);
            return DescriptorVerdict::Forbidden {
                reason: ForbiddenReason::Blocked { target },
            };
        }

        let mut pairs: Vec<Pair<'_>> = Vec::new();
        for (i, d) in descriptors.iter().enumerate() {
            for rule in &snapshot.rules {
                let Some(m) = &rule.rule.descriptor else {
                    continue;
                };
                if m.domain() != domain {
                    continue;
                }
                let Some(key) = m.key_of(&d.entries) else {
                    continue;
                };
                let key = key.into_owned();
                let overridden = self.overridden(rule, &key, now);
                pairs.push(Pair {
                    descriptor: i,
                    rule,
                    key,
                    overridden,
                    cost: d.cost.max(1),
                });
            }
        }
        // A delaying rule's policy without its delay, owned here so the
        // checks can borrow it.
        let undelayed: Vec<Option<Policy>> = pairs
            .iter()
            .map(|p| {
                let (policy, _) = policy_and_label(p.rule, p.overridden.as_deref());
                (policy.max_delay_us() > 0).then(|| policy.clone().without_max_delay())
            })
            .collect();
        let mut decisions: Vec<Option<Decision>> = vec![None; pairs.len()];
        let mut checks = Vec::new();
        let mut checked = Vec::new();
        for (j, p) in pairs.iter().enumerate() {
            let (policy, _) = policy_and_label(p.rule, p.overridden.as_deref());
            let policy = undelayed[j].as_ref().unwrap_or(policy);
            if p.cost > policy.capacity() {
                // More than the rule ever admits at once: refused, nothing
                // counted.
                p.rule.tally(&p.key, false);
                self.observe(Some(p.rule.name()), Outcome::Limited);
                decisions[j] = Some(Decision {
                    allowed: false,
                    limit: policy.limit(),
                    remaining: 0,
                    reset_after: Duration::ZERO,
                    retry_after: None,
                    blocked: false,
                    delay: Duration::ZERO,
                });
                continue;
            }
            if !p.rule.rule.shadow
                && let Some(left) = self.shared.blocks.penalty(p.rule.name(), &p.key, now)
            {
                p.rule.tally(&p.key, false);
                self.observe(Some(p.rule.name()), Outcome::Blocked);
                decisions[j] = Some(penalty_decision(policy, left));
                continue;
            }
            let mut check = check_of(p.rule, p.overridden.as_deref(), &p.key, p.cost);
            check.policy = policy;
            checks.push(check);
            checked.push(j);
        }
        if !checks.is_empty() {
            match self.decide(&snapshot.config, &checks).await {
                Some(got) => {
                    for (&j, d) in checked.iter().zip(got) {
                        self.record(pairs[j].rule, &pairs[j].key, &d);
                        decisions[j] = Some(d);
                    }
                }
                None => {
                    for &j in &checked {
                        self.observe(Some(pairs[j].rule.name()), Outcome::Error);
                    }
                    match snapshot.config.on_error {
                        // Let through: those descriptors without a decision.
                        OnError::Allow => {}
                        OnError::Deny | OnError::Local => return DescriptorVerdict::Unavailable,
                    }
                }
            }
        }
        drop(checks);

        let mut statuses = vec![
            DescriptorStatus {
                allowed: true,
                ..DescriptorStatus::default()
            };
            descriptors.len()
        ];
        for (p, d) in pairs.iter().zip(decisions) {
            let Some(mut d) = d else { continue };
            let (_, label) = policy_and_label(p.rule, p.overridden.as_deref());
            let status = &mut statuses[p.descriptor];
            if !d.allowed && p.rule.rule.shadow {
                status
                    .shadow_limited
                    .get_or_insert_with(|| RuleDecision::labelled(label, d));
                d.allowed = true;
                d.retry_after = None;
            }
            let replaces = match &status.decision {
                None => true,
                Some(current) => {
                    let c = current.decision();
                    if d.allowed {
                        status.allowed && d.remaining < c.remaining
                    } else {
                        status.allowed || d.retry_after > c.retry_after
                    }
                }
            };
            if replaces {
                status.decision = Some(RuleDecision::labelled(label, d));
            }
            status.allowed &= d.allowed;
        }
        DescriptorVerdict::Decided(statuses)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use std::time::Duration;

    use floodgate_core::{Algorithm, MemoryStore, Policy};

    use super::*;
    use crate::descriptor::DescriptorMatch;
    use crate::limiter::{AccessLists, LimiterConfig};
    use crate::rule::{KeySpec, Rule};

    fn rule(name: &str, limit: u64, entries: &[&str]) -> Rule {
        let policy = Policy::new(Algorithm::FixedWindow, limit, Duration::from_secs(60)).unwrap();
        Rule::new(name, KeySpec::parse_list(["global"]).unwrap(), policy)
            .with_descriptor(DescriptorMatch::new("edge", entries.iter().copied()).unwrap())
    }

    fn limiter(rules: Vec<Rule>, access: AccessLists) -> Limiter<MemoryStore> {
        let config = LimiterConfig {
            rules,
            access,
            ..LimiterConfig::default()
        };
        Limiter::new(config, MemoryStore::new(1000)).unwrap()
    }

    fn one<'a>(entries: &[(&'a str, &'a str)], cost: u64) -> Descriptor<'a> {
        Descriptor {
            entries: entries.to_vec(),
            cost,
        }
    }

    fn statuses(v: DescriptorVerdict) -> Vec<DescriptorStatus> {
        match v {
            DescriptorVerdict::Decided(s) => s,
            other => panic!("not decided: {other:?}"),
        }
    }

    #[tokio::test]
    async fn each_descriptor_gets_its_rules_status_in_order() {
        let limiter = limiter(
            vec![
                rule("per-client", 2, &["remote_address"]),
                rule("slow-path", 10, &["generic_key=slow", "user"]),
            ],
            AccessLists::default(),
        );
        let ip = Some("192.0.2.1".parse().unwrap());
        let request = [
            one(&[("remote_address", "192.0.2.1")], 0),
            one(&[("generic_key", "fast"), ("user", "a")], 1),
            one(&[("generic_key", "slow"), ("user", "a")], 4),
        ];
        let first = statuses(limiter.check_descriptors("edge", &request, ip).await);
        assert_eq!(first.len(), 3);
        assert!(first.iter().all(|s| s.allowed));
        let d = first[0].decision.as_ref().unwrap();
        assert_eq!((d.rule(), d.decision().remaining), ("per-client", 1));
        assert_eq!(
            first[1].decision, None,
            "no rule decides a fast generic_key"
        );
        let d = first[2].decision.as_ref().unwrap();
        assert_eq!((d.rule(), d.decision().remaining), ("slow-path", 6));

        let second = statuses(limiter.check_descriptors("edge", &request, ip).await);
        assert!(second[0].allowed);
        let third = statuses(limiter.check_descriptors("edge", &request, ip).await);
        assert!(!third[0].allowed, "the third request is over a limit of 2");
        assert!(!third[2].allowed, "4 + 4 + 4 is over 10");
        // Another domain is not decided.
        let other = statuses(limiter.check_descriptors("other", &request, ip).await);
        assert!(other.iter().all(|s| s.allowed && s.decision.is_none()));
    }

    #[tokio::test]
    async fn shadow_rules_admit_and_access_lists_apply_to_the_client() {
        let limiter = limiter(
            vec![rule("watch", 1, &["remote_address"]).with_shadow(true)],
            AccessLists {
                allow: vec!["ip:10.0.0.0/8".parse().unwrap()],
                deny: vec!["ip:203.0.113.7".parse().unwrap()],
            },
        );
        let request = [one(&[("remote_address", "192.0.2.1")], 1)];
        let ip = Some("192.0.2.1".parse().unwrap());
        limiter.check_descriptors("edge", &request, ip).await;
        let s = statuses(limiter.check_descriptors("edge", &request, ip).await);
        assert!(s[0].allowed);
        assert_eq!(
            s[0].shadow_limited.as_ref().map(|d| d.rule()),
            Some("watch")
        );
        assert_eq!(
            limiter
                .check_descriptors("edge", &request, Some("10.1.2.3".parse().unwrap()))
                .await,
            DescriptorVerdict::Bypassed
        );
        assert!(matches!(
            limiter
                .check_descriptors("edge", &request, Some("203.0.113.7".parse().unwrap()))
                .await,
            DescriptorVerdict::Forbidden { .. }
        ));
    }
}
