//! The local copy of the store's blocks, so a blocked client is refused
//! without a store round trip.
//!
//! Manual blocks are refreshed from the store by
//! [`Limiter::sync_blocks`](super::Limiter::sync_blocks), which replaces the
//! whole set; so a block or an unblock made on any instance sharing the store
//! shows here at the next sync. Penalty blocks are also learnt from this
//! instance's own decisions the moment a rule starts one. A block or an
//! unblock made through this instance applies here at once, and a sync
//! whose list was read before it does not undo it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use floodgate_core::{Block, BlockSource, Timestamp};
use http::HeaderMap;
use parking_lot::{Mutex, RwLock};

use crate::target::Target;
use crate::target_set::TargetSet;

/// Penalty blocks cached at most; past this, new ones are left to the store
/// (which still refuses them, one round trip each), so a flood of distinct
/// keys cannot grow this cache without bound.
pub(crate) const MAX_CACHED_PENALTIES: usize = 100_000;

#[derive(Default)]
struct Penalties {
    /// rule name → key → end of the block.
    by_rule: HashMap<String, HashMap<String, Timestamp>>,
    len: usize,
}

impl Penalties {
    fn prune(&mut self, now: Timestamp) {
        for keys in self.by_rule.values_mut() {
            keys.retain(|_, until| *until > now);
        }
        self.by_rule.retain(|_, keys| !keys.is_empty());
        self.len = self.by_rule.values().map(HashMap::len).sum();
    }
}

/// Blocks known to this instance.
#[derive(Default)]
pub(crate) struct BlockCache {
    /// Manual blocks: target → end of the block. Swapped whole.
    manual: ArcSwap<TargetSet<Timestamp>>,
    penalties: RwLock<Penalties>,
    /// Blocks and unblocks made through this instance so far: a sync
    /// replaces the cache only if none came while it read the store.
    changes: Mutex<u64>,
}

impl BlockCache {
    /// The manual block in force on a request from `ip` with `headers`.
    pub(crate) fn manual_block(
        &self,
        ip: Option<IpAddr>,
        headers: &HeaderMap,
        now: Timestamp,
    ) -> Option<Target> {
        let manual = self.manual.load();
        manual
            .find(ip, headers, |until| *until > now)
            .map(|(target, _)| target.clone())
    }

    /// How long the penalty block of `rule` on `key` still lasts, if any.
    pub(crate) fn penalty(&self, rule: &str, key: &str, now: Timestamp) -> Option<Duration> {
        let penalties = self.penalties.read();
        if penalties.len == 0 {
            return None;
        }
        let until = *penalties.by_rule.get(rule)?.get(key)?;
        (until > now).then(|| until.saturating_since(now))
    }

    /// Remembers that `rule` blocks `key` until `until`.
    pub(crate) fn add_penalty(&self, rule: &str, key: &str, until: Timestamp, now: Timestamp) {
        let mut penalties = self.penalties.write();
        if penalties.len >= MAX_CACHED_PENALTIES {
            penalties.prune(now);
            if penalties.len >= MAX_CACHED_PENALTIES {
                return;
            }
        }
        let keys = penalties.by_rule.entry(rule.to_owned()).or_default();
        if keys.insert(key.to_owned(), until).is_none() {
            penalties.len += 1;
        }
    }

    /// Adds a manual block (made through this instance).
    pub(crate) fn add_manual(&self, target: Target, until: Timestamp) {
        let mut changes = self.changes.lock();
        self.manual.rcu(|set| {
            let mut set = TargetSet::clone(set);
            set.insert(target.clone(), until);
            set
        });
        *changes += 1;
    }

    /// Forgets every block of `target`, manual or penalty.
    pub(crate) fn remove(&self, target: &str) {
        let mut changes = self.changes.lock();
        *changes += 1;
        if let Ok(parsed) = target.parse::<Target>() {
            self.manual.rcu(|set| {
                let mut set = TargetSet::clone(set);
                set.remove(&parsed);
                set
            });
        }
        let mut penalties = self.penalties.write();
        let mut removed = 0;
        for keys in penalties.by_rule.values_mut() {
            removed += usize::from(keys.remove(target).is_some());
        }
        penalties.len -= removed;
    }

    /// How many blocks and unblocks were made through this instance so
    /// far: read it before reading the store's list for
    /// [`replace`](Self::replace).
    pub(crate) fn changes(&self) -> u64 {
        *self.changes.lock()
    }

    /// How many manual and penalty blocks are cached.
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.manual.load().len(), self.penalties.read().len)
    }

    /// Replaces everything with the store's view, read when
    /// [`changes`](Self::changes) said `changes`; returns how many manual and
    /// penalty blocks are now cached. `None`, leaving the cache as it is,
    /// when a block or an unblock was made through this instance since: the
    /// list may predate it (the next sync's will not).
    pub(crate) fn replace(
        &self,
        blocks: &[Block],
        now: Timestamp,
        changes: u64,
    ) -> Option<(usize, usize)> {
        let current = self.changes.lock();
        if *current != changes {
            return None;
        }
        let mut manual = TargetSet::default();
        let mut penalties = Penalties::default();
        for block in blocks.iter().filter(|b| b.until > now) {
            match &block.source {
                BlockSource::Manual => match block.target.parse::<Target>() {
                    Ok(target) => manual.insert(target, block.until),
                    Err(e) => {
                        tracing::debug!(block = %block.target, error = %e, "manual block on an unknown target kind; not cached");
                    }
                },
                BlockSource::Rule(rule) => {
                    if penalties.len >= MAX_CACHED_PENALTIES {
                        continue;
                    }
                    let keys = penalties.by_rule.entry(rule.clone()).or_default();
                    if keys.insert(block.target.clone(), block.until).is_none() {
                        penalties.len += 1;
                    }
                }
            }
        }
        let counts = (manual.len(), penalties.len);
        self.manual.store(Arc::new(manual));
        *self.penalties.write() = penalties;
        drop(current);
        Some(counts)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn at(s: u64) -> Timestamp {
        Timestamp::from_micros(s * 1_000_000)
    }

    fn block(target: &str, until: Timestamp, source: BlockSource) -> Block {
        Block {
            target: target.into(),
            until,
            reason: "test".into(),
            source,
        }
    }

    #[test]
    fn manual_blocks_expire_and_are_replaced() {
        let cache = BlockCache::default();
        let ip = Some("192.0.2.7".parse().unwrap());
        let none = HeaderMap::new();
        cache.add_manual("ip:192.0.2.0/24".parse().unwrap(), at(10));
        assert_eq!(
            cache.manual_block(ip, &none, at(5)),
            Some("ip:192.0.2.0/24".parse().unwrap())
        );
        assert_eq!(cache.manual_block(ip, &none, at(10)), None, "expired");
        assert!(cache.replace(&[], at(5), cache.changes()).is_some());
        assert_eq!(
            cache.manual_block(ip, &none, at(5)),
            None,
            "unblocked elsewhere"
        );
    }

    #[test]
    fn penalties_are_per_rule_and_key() {
        let cache = BlockCache::default();
        cache.add_penalty("api", "ip:192.0.2.7", at(20), at(0));
        assert_eq!(
            cache.penalty("api", "ip:192.0.2.7", at(5)),
            Some(Duration::from_secs(15))
        );
        assert_eq!(cache.penalty("other", "ip:192.0.2.7", at(5)), None);
        assert_eq!(cache.penalty("api", "ip:192.0.2.8", at(5)), None);
        assert_eq!(cache.penalty("api", "ip:192.0.2.7", at(20)), None);
        cache.remove("ip:192.0.2.7");
        assert_eq!(cache.penalty("api", "ip:192.0.2.7", at(5)), None);
    }

    #[test]
    fn replace_reads_both_kinds_and_skips_the_expired() {
        let cache = BlockCache::default();
        let counts = cache.replace(
            &[
                block("ip:192.0.2.7", at(10), BlockSource::Manual),
                block("header:x-api-key:k", at(10), BlockSource::Manual),
                block("not a target", at(10), BlockSource::Manual),
                block("ip:198.51.100.1", at(1), BlockSource::Manual),
                block(
                    "ip:203.0.113.1|path:/x",
                    at(10),
                    BlockSource::Rule("api".into()),
                ),
            ],
            at(2),
            cache.changes(),
        );
        assert_eq!(counts, Some((2, 1)));
        assert_eq!(cache.counts(), (2, 1));
        assert!(
            cache
                .penalty("api", "ip:203.0.113.1|path:/x", at(2))
                .is_some()
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", "k".parse().unwrap());
        assert!(cache.manual_block(None, &headers, at(2)).is_some());
    }

    #[test]
    fn a_sync_read_before_a_local_change_does_not_undo_it() {
        let cache = BlockCache::default();
        let ip = Some("192.0.2.7".parse().unwrap());
        let none = HeaderMap::new();
        let target: Target = "ip:192.0.2.7".parse().unwrap();

        // The store's list is read, then a block is made here, then the
        // list (without it) comes back.
        let read_at = cache.changes();
        cache.add_manual(target.clone(), at(100));
        assert_eq!(cache.replace(&[], at(5), read_at), None);
        assert_eq!(cache.manual_block(ip, &none, at(5)), Some(target.clone()));
        // The next sync's list has it.
        let listed = [block("ip:192.0.2.7", at(100), BlockSource::Manual)];
        assert_eq!(cache.replace(&listed, at(6), cache.changes()), Some((1, 0)));

        // Likewise an unblock: a list read before it does not bring the
        // block back.
        let read_at = cache.changes();
        cache.remove("ip:192.0.2.7");
        assert_eq!(cache.replace(&listed, at(7), read_at), None);
        assert_eq!(cache.manual_block(ip, &none, at(7)), None);
        assert_eq!(cache.replace(&[], at(8), cache.changes()), Some((0, 0)));
    }

    #[test]
    fn penalty_cache_is_bounded() {
        let cache = BlockCache::default();
        for i in 0..MAX_CACHED_PENALTIES + 10 {
            cache.add_penalty("api", &format!("k{i}"), at(100), at(0));
        }
        assert_eq!(cache.penalties.read().len, MAX_CACHED_PENALTIES);
        // Once old entries expire, room is made again.
        cache.add_penalty("api", "late", at(300), at(200));
        assert_eq!(
            cache.penalty("api", "late", at(200)),
            Some(Duration::from_secs(100))
        );
        assert_eq!(cache.penalties.read().len, 1);
    }
}
