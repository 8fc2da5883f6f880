//! Per-key overrides: a limit in force for one key of one rule instead of
//! the rule's own, set at run time and kept in the store, so that every
//! instance sharing the store applies it.
//!
//! Instances keep a copy and follow the store's changes with
//! [`Store::override_changes`](crate::Store::override_changes): every put
//! and removal gets the next number of a per-store sequence, and a reader
//! asks for what changed after the last number it saw, a page at a time.
//! An override that was never used costs nothing in the counters: it is
//! one entry in the overrides, no more.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use crate::clock::Timestamp;
use crate::policy::{Policy, PolicyError};

/// Expired overrides a put or a removal drops on its way, at most.
pub const PURGE_PER_WRITE: usize = 100;

/// A per-key limit in force instead of its rule's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOverride {
    /// The rule it overrides.
    pub rule: String,
    /// The key it applies to, as the rule forms it (`ip:203.0.113.7`).
    pub key: String,
    /// Cost units per window.
    pub limit: u64,
    /// The window; `None`: the rule's.
    pub window: Option<Duration>,
    /// Token bucket capacity; `None`: the override's limit, as for a rule
    /// without `burst`.
    pub burst: Option<u64>,
    /// When it stops applying; `None`: never.
    pub expires: Option<Timestamp>,
}

impl KeyOverride {
    /// The policy it puts in force instead of `rule`'s: the rule's
    /// algorithm, penalty and consistency with this limit, window and burst.
    pub fn policy(&self, rule: &Policy) -> Result<Policy, PolicyError> {
        let window = self.window.unwrap_or_else(|| rule.window());
        let mut policy = Policy::new(rule.algorithm(), self.limit, window)?;
        if let Some(burst) = self.burst {
            policy = policy.with_burst(burst)?;
        }
        let steps: Vec<Duration> = rule
            .block_steps_us()
            .iter()
            .map(|&us| Duration::from_micros(us))
            .collect();
        if !steps.is_empty() {
            policy = policy.with_block_ladder(&steps)?;
        }
        if rule.max_delay_us() > 0 {
            policy = policy.with_max_delay(Duration::from_micros(rule.max_delay_us()))?;
        }
        if rule.is_batched() {
            policy = policy.with_batched()?;
        }
        Ok(policy)
    }

    /// Whether it applies at `now`.
    pub fn in_force(&self, now: Timestamp) -> bool {
        self.expires.is_none_or(|until| until > now)
    }
}

/// One (rule, key) whose override changed, and what it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideChange {
    /// The rule.
    pub rule: String,
    /// The key.
    pub key: String,
    /// The override now in force; `None`: removed (or expired and dropped).
    pub now: Option<KeyOverride>,
}

/// A page of changes, in the order they were made.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OverrideChanges {
    /// The number of the last change listed: where the next call starts.
    pub version: u64,
    /// Which life of the change log this is: set when the store first
    /// records a change (its clock then, in µs), 0 before. A reader that
    /// sees it change (the store was emptied or replaced, and its numbers
    /// started again) drops its copy and reads again from 0.
    pub epoch: u64,
    /// The store no longer knows the changes after the `since` given (it
    /// was emptied or replaced): drop every copy and read again from 0.
    pub reset: bool,
    /// What changed, oldest first; one entry per (rule, key), with its
    /// latest state.
    pub changes: Vec<OverrideChange>,
    /// More changes follow: call again from `version`.
    pub more: bool,
}

/// The overrides of a [`MemoryStore`](crate::MemoryStore), as the Redis
/// store keeps them: a map, a change log by sequence number, and an index
/// by expiry.
#[derive(Debug, Default)]
pub(crate) struct OverrideBook {
    seq: u64,
    /// See [`OverrideChanges::epoch`].
    epoch: u64,
    /// (rule, key) → (its last change's number, the override, if any).
    by_key: HashMap<(String, String), (u64, Option<KeyOverride>)>,
    /// Change number → (rule, key).
    log: BTreeMap<u64, (String, String)>,
    /// (expiry µs, field, rule, key) of every override that expires; the
    /// field (`<key length>:<key><rule>`, the Redis store's) orders
    /// overrides expiring at the same time as Redis does.
    expiry: BTreeSet<(u64, String, String, String)>,
}

impl OverrideBook {
    /// Records that (rule, key) is now `now`; returns the change's number.
    fn record(&mut self, rule: &str, key: &str, now: Option<KeyOverride>) -> u64 {
        self.seq += 1;
        let id = (rule.to_owned(), key.to_owned());
        let entry = |until: Timestamp| {
            let field = format!("{}:{key}{rule}", key.len());
            (until.as_micros(), field, rule.to_owned(), key.to_owned())
        };
        if let Some((old_seq, old)) = self.by_key.get(&id) {
            self.log.remove(old_seq);
            if let Some(until) = old.as_ref().and_then(|o| o.expires) {
                self.expiry.remove(&entry(until));
            }
        }
        if let Some(until) = now.as_ref().and_then(|o| o.expires) {
            self.expiry.insert(entry(until));
        }
        self.log.insert(self.seq, id.clone());
        self.by_key.insert(id, (self.seq, now));
        self.seq
    }

    /// Drops up to [`PURGE_PER_WRITE`] overrides expired at `now`, each a
    /// change of its own.
    fn purge(&mut self, now: u64) {
        let expired: Vec<(u64, String, String, String)> = self
            .expiry
            .iter()
            .take_while(|(until, ..)| *until <= now)
            .take(PURGE_PER_WRITE)
            .cloned()
            .collect();
        for (_, _, rule, key) in expired {
            self.record(&rule, &key, None);
        }
    }

    /// Puts `o` in force (replacing any override of its rule and key).
    pub(crate) fn put(&mut self, o: KeyOverride, now: u64) {
        self.start_epoch(now);
        let (rule, key) = (o.rule.clone(), o.key.clone());
        self.record(&rule, &key, Some(o));
        self.purge(now);
    }

    /// Removes the override of (rule, key); whether there was one.
    pub(crate) fn remove(&mut self, rule: &str, key: &str, now: u64) -> bool {
        self.start_epoch(now);
        let id = (rule.to_owned(), key.to_owned());
        let existed = self.by_key.get(&id).is_some_and(|(_, o)| o.is_some());
        if existed {
            self.record(rule, key, None);
        }
        self.purge(now);
        existed
    }

    /// Sets the epoch at the first write.
    fn start_epoch(&mut self, now: u64) {
        if self.epoch == 0 {
            self.epoch = now.max(1);
        }
    }

    /// Up to `max` changes after `since`.
    pub(crate) fn changes(&self, since: u64, max: usize) -> OverrideChanges {
        if since > self.seq {
            return OverrideChanges {
                version: 0,
                epoch: self.epoch,
                reset: true,
                changes: Vec::new(),
                more: true,
            };
        }
        let mut out = OverrideChanges {
            version: since,
            epoch: self.epoch,
            ..OverrideChanges::default()
        };
        for (&seq, (rule, key)) in self.log.range(since + 1..).take(max.max(1)) {
            let now = self
                .by_key
                .get(&(rule.clone(), key.clone()))
                .and_then(|(_, o)| o.clone());
            out.changes.push(OverrideChange {
                rule: rule.clone(),
                key: key.clone(),
                now,
            });
            out.version = seq;
        }
        out.more = out.version < self.seq;
        out
    }
}
