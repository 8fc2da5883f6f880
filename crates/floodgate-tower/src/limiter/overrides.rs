//! The local copy of the store's per-key overrides, so an overridden key is
//! decided by its own limit without an extra store round trip.
//!
//! [`Limiter::sync_overrides`](super::Limiter::sync_overrides) follows the
//! store's change log from the last change it saw, a page at a time: an
//! override put or removed on any instance sharing the store applies here
//! at the next sync (every 500 ms with the block sync). One put or removed
//! through this instance applies here at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use floodgate_core::{KeyOverride, OverrideChanges, Timestamp};
use parking_lot::RwLock;

/// Changes read from the store per call.
pub(crate) const SYNC_PAGE: usize = 10_000;

#[derive(Default)]
struct Index {
    /// The number of the last change applied.
    version: u64,
    /// rule name → key → override.
    by_rule: HashMap<String, HashMap<String, KeyOverride>>,
}

/// Per-key overrides known to this instance.
#[derive(Default)]
pub(crate) struct OverrideCache {
    index: RwLock<Index>,
    /// Whether any override is cached: while none is, a check takes no lock.
    any: AtomicBool,
}

impl OverrideCache {
    /// The override of (rule, key) in force at `now`.
    pub(crate) fn get(&self, rule: &str, key: &str, now: Timestamp) -> Option<KeyOverride> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let index = self.index.read();
        let o = index.by_rule.get(rule)?.get(key)?;
        o.in_force(now).then(|| o.clone())
    }

    /// The number of the last change applied: where the next sync starts.
    pub(crate) fn version(&self) -> u64 {
        self.index.read().version
    }

    /// Applies a page of changes read from the store; returns the number of
    /// overrides cached per rule that changed, for the metrics.
    pub(crate) fn apply(&self, page: OverrideChanges) -> Vec<(String, usize)> {
        let mut index = self.index.write();
        let mut touched: Vec<String> = Vec::new();
        if page.reset {
            touched.extend(index.by_rule.keys().cloned());
            index.by_rule.clear();
            index.version = 0;
        } else {
            for change in page.changes {
                if !touched.contains(&change.rule) {
                    touched.push(change.rule.clone());
                }
                match change.now {
                    Some(o) => {
                        index
                            .by_rule
                            .entry(change.rule)
                            .or_default()
                            .insert(change.key, o);
                    }
                    None => {
                        if let Some(keys) = index.by_rule.get_mut(&change.rule) {
                            keys.remove(&change.key);
                            if keys.is_empty() {
                                index.by_rule.remove(&change.rule);
                            }
                        }
                    }
                }
            }
            index.version = index.version.max(page.version);
        }
        self.any.store(!index.by_rule.is_empty(), Ordering::Relaxed);
        touched
            .into_iter()
            .map(|rule| {
                let n = index.by_rule.get(&rule).map_or(0, HashMap::len);
                (rule, n)
            })
            .collect()
    }

    /// Puts `o` in force here at once (made through this instance).
    pub(crate) fn put(&self, o: KeyOverride) -> usize {
        let mut index = self.index.write();
        let keys = index.by_rule.entry(o.rule.clone()).or_default();
        keys.insert(o.key.clone(), o);
        let n = keys.len();
        self.any.store(true, Ordering::Relaxed);
        n
    }

    /// Removes the override of (rule, key) here at once.
    pub(crate) fn remove(&self, rule: &str, key: &str) -> usize {
        let mut index = self.index.write();
        let mut n = 0;
        if let Some(keys) = index.by_rule.get_mut(rule) {
            keys.remove(key);
            n = keys.len();
            if keys.is_empty() {
                index.by_rule.remove(rule);
            }
        }
        self.any.store(!index.by_rule.is_empty(), Ordering::Relaxed);
        n
    }

    /// Every override of `rule` in force at `now`, by key.
    pub(crate) fn of_rule(&self, rule: &str, now: Timestamp) -> Vec<KeyOverride> {
        let index = self.index.read();
        let mut list: Vec<KeyOverride> = index
            .by_rule
            .get(rule)
            .map(|keys| keys.values().filter(|o| o.in_force(now)).cloned().collect())
            .unwrap_or_default();
        list.sort_by(|a, b| a.key.cmp(&b.key));
        list
    }
}
