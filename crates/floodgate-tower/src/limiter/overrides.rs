//! The local copy of the store's per-key overrides, so an overridden key is
//! decided by its own limit without an extra store round trip.
//!
//! [`Limiter::sync_overrides`](super::Limiter::sync_overrides) follows the
//! store's change log from the last change it saw, a page at a time: an
//! override put or removed on any instance sharing the store applies here
//! at the next sync (every 500 ms with the block sync). One put or removed
//! through this instance applies here at once.
//!
//! Built for many overrides: an entry is its key and four numbers (about
//! 100 bytes with the table's share), and the policy it decides by is
//! compiled once per configuration, on first use, not per request. A key
//! without an override costs nothing while no override is cached, one
//! lookup in a small table while few are, and past [`FILTER_FROM`] one word
//! read from a 2 MiB filter of hashed (rule, key) pairs, with no lock: the
//! table itself (tens of MB for a million) is only searched for the few
//! keys whose bits are set. That word is rarely in the cache, so a caller
//! [probes](OverrideCache::probe) first, which starts fetching it, and
//! reads it after other work.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use floodgate_core::{KeyOverride, OverrideChanges, Timestamp};
use parking_lot::RwLock;

use super::Overridden;

/// Changes read from the store per call: a page must come back within the
/// store's timeout (50 ms by default).
pub(crate) const SYNC_PAGE: usize = 1_000;

/// Overrides cached before the bitmap filter is built.
pub(crate) const FILTER_FROM: usize = 4_096;

/// Words in the filter: 2^18 of 64 bits (2 MiB).
const FILTER_WORDS: usize = 1 << 18;

/// A blocked Bloom filter of the cached (rule, key) pairs: each pair sets
/// three bits of one word, so a check reads one word (one cache line). A
/// bit clear means no override. With a million overrides about 1% of the
/// keys without one find their three bits set and search the table (a
/// one-bit filter of the same size: 6%).
///
/// Bits are only ever set, except by a rebuild, which clears and refills
/// the words in place. A sequence number, odd while a rebuild runs, tells
/// a check that read during one to search the table instead (a seqlock):
/// checks take no lock and write nothing.
struct Filter {
    words: Box<[AtomicU64]>,
    /// Odd while a rebuild runs; bumped twice by each.
    seq: AtomicU64,
    /// Removals since it was last built.
    stale: AtomicUsize,
}

impl Filter {
    fn new() -> Self {
        Filter {
            words: (0..FILTER_WORDS).map(|_| AtomicU64::new(0)).collect(),
            seq: AtomicU64::new(0),
            stale: AtomicUsize::new(0),
        }
    }

    /// The word of (rule, key) and its three bits in it.
    fn bits(rule: &str, key: &str) -> (usize, u64) {
        use std::hash::BuildHasher;
        let h = foldhash::fast::FixedState::with_seed(0x666c_6f6f_6467_6174).hash_one((rule, key));
        let word = (h >> 46) as usize % FILTER_WORDS;
        let mask = (1 << (h & 63)) | (1 << ((h >> 6) & 63)) | (1 << ((h >> 12) & 63));
        (word, mask)
    }

    fn set(&self, rule: &str, key: &str) {
        let (word, mask) = Self::bits(rule, key);
        self.words[word].fetch_or(mask, Ordering::Relaxed);
    }

    /// False only if (rule, key) has no override.
    #[cfg(test)]
    fn may_hold(&self, rule: &str, key: &str) -> bool {
        let (word, mask) = Self::bits(rule, key);
        self.may_hold_bits(word, mask)
    }

    /// Whether the pair with these bits may have an override (false only
    /// if it has none).
    fn may_hold_bits(&self, word: usize, mask: u64) -> bool {
        let before = self.seq.load(Ordering::Acquire);
        let bits = self.words[word].load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        let after = self.seq.load(Ordering::Relaxed);
        before & 1 == 1 || before != after || bits & mask == mask
    }

    /// Clears the filter and sets the bits of `pairs`. Rebuilds are
    /// serialised by the caller (the index's write lock).
    fn rebuild<'a>(&self, pairs: impl Iterator<Item = (&'a str, &'a str)>) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        for word in &self.words {
            word.store(0, Ordering::Relaxed);
        }
        for (rule, key) in pairs {
            self.set(rule, key);
        }
        self.stale.store(0, Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }
}

/// What [`OverrideCache::probe`] found out about a (rule, key) pair.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Probe {
    /// No override cached at all.
    Nothing,
    /// Overrides cached, no filter yet: search the table.
    Table,
    /// The filter's word and bits for the pair.
    Filter { word: usize, mask: u64 },
}

/// Asks the CPU to fetch `word`'s cache line, without waiting for it.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn prefetch(word: &AtomicU64) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    // SAFETY: SSE is part of x86_64's baseline, and a prefetch is only a
    // hint: it reads nothing the program sees and cannot fault.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(word.as_ptr().cast::<i8>().cast_const()) }
}

/// Asks the CPU to fetch `word`'s cache line, without waiting for it.
#[cfg(not(target_arch = "x86_64"))]
fn prefetch(_word: &AtomicU64) {}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One override, as compact as it can be kept.
struct Entry {
    limit: u64,
    /// 0: the rule's.
    window_us: u64,
    /// 0: none.
    burst: u64,
    /// 0: never.
    expires_us: u64,
    /// The policy it decides by, compiled for a configuration.
    compiled: ArcSwapOption<Overridden>,
}

impl Entry {
    fn of(o: &KeyOverride) -> Self {
        Entry {
            limit: o.limit,
            window_us: o
                .window
                .map_or(0, |w| u64::try_from(w.as_micros()).unwrap_or(u64::MAX)),
            burst: o.burst.unwrap_or(0),
            expires_us: o.expires.map_or(0, Timestamp::as_micros),
            compiled: ArcSwapOption::empty(),
        }
    }

    fn in_force(&self, now: Timestamp) -> bool {
        self.expires_us == 0 || self.expires_us > now.as_micros()
    }

    fn to_override(&self, rule: &str, key: &str) -> KeyOverride {
        KeyOverride {
            rule: rule.to_owned(),
            key: key.to_owned(),
            limit: self.limit,
            window: (self.window_us > 0).then(|| Duration::from_micros(self.window_us)),
            burst: (self.burst > 0).then_some(self.burst),
            expires: (self.expires_us > 0).then(|| Timestamp::from_micros(self.expires_us)),
        }
    }
}

#[derive(Default)]
struct Index {
    /// The number of the last change applied.
    version: u64,
    /// The change log's epoch, once read (see `OverrideChanges::epoch`).
    epoch: Option<u64>,
    /// Overrides cached, over every rule.
    len: usize,
    /// rule name → key → override.
    by_rule: FastMap<Box<str>, FastMap<Box<str>, Entry>>,
}

impl Index {
    fn insert(&mut self, o: &KeyOverride) -> usize {
        let keys = self.by_rule.entry(o.rule.as_str().into()).or_default();
        if keys.insert(o.key.as_str().into(), Entry::of(o)).is_none() {
            self.len += 1;
        }
        keys.len()
    }

    fn remove(&mut self, rule: &str, key: &str) -> usize {
        let Some(keys) = self.by_rule.get_mut(rule) else {
            return 0;
        };
        if keys.remove(key).is_some() {
            self.len -= 1;
        }
        let n = keys.len();
        if n == 0 {
            self.by_rule.remove(rule);
        }
        n
    }

    fn count(&self, rule: &str) -> usize {
        self.by_rule.get(rule).map_or(0, |keys| keys.len())
    }
}

/// Per-key overrides known to this instance.
#[derive(Default)]
pub(crate) struct OverrideCache {
    index: RwLock<Index>,
    /// Whether any override is cached: while none is, a check takes no lock.
    any: AtomicBool,
    /// Past [`FILTER_FROM`] overrides: which (rule, key) pairs may have one.
    /// Made once, rebuilt in place.
    filter: OnceLock<Filter>,
    /// Puts and removals made through this instance so far: a page read
    /// while one was made may not have it, and is not applied.
    writes: AtomicU64,
}

impl OverrideCache {
    /// Where the filter answers for (rule, key), fetched into the cache
    /// now, to be read by [`get_probed`](Self::get_probed) later: with a
    /// million overrides the filter is megabytes, and its word for a key
    /// is usually not in the cache. A caller with other work to do first
    /// (finding the rule, reading the clock) hides the wait behind it.
    pub(crate) fn probe(&self, rule: &str, key: &str) -> Probe {
        if !self.any.load(Ordering::Relaxed) {
            return Probe::Nothing;
        }
        let Some(filter) = self.filter.get() else {
            return Probe::Table;
        };
        let (word, mask) = Filter::bits(rule, key);
        prefetch(&filter.words[word]);
        Probe::Filter { word, mask }
    }

    /// The policy (rule, key) is decided by at `now` under configuration
    /// `generation`, if it has an override in force, given the pair's
    /// [`probe`](Self::probe): compiled by `compile` the first time under
    /// that configuration, then shared.
    pub(crate) fn get_probed(
        &self,
        probe: Probe,
        rule: &str,
        key: &str,
        now: Timestamp,
        generation: u64,
        compile: impl FnOnce(&KeyOverride) -> Option<Overridden>,
    ) -> Option<Arc<Overridden>> {
        match probe {
            Probe::Nothing => return None,
            Probe::Table => {}
            Probe::Filter { word, mask } => {
                // The filter is made once and never dropped: the probe's
                // word is still its word.
                if !self.filter.get()?.may_hold_bits(word, mask) {
                    return None;
                }
            }
        }
        let index = self.index.read();
        let entry = index.by_rule.get(rule)?.get(key)?;
        if !entry.in_force(now) {
            return None;
        }
        if let Some(compiled) = entry.compiled.load_full()
            && compiled.generation == generation
        {
            return Some(compiled);
        }
        let compiled = Arc::new(compile(&entry.to_override(rule, key))?);
        entry.compiled.store(Some(Arc::clone(&compiled)));
        Some(compiled)
    }

    /// The override of (rule, key) in force at `now`, as put.
    pub(crate) fn override_of(&self, rule: &str, key: &str, now: Timestamp) -> Option<KeyOverride> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let index = self.index.read();
        let entry = index.by_rule.get(rule)?.get(key)?;
        entry.in_force(now).then(|| entry.to_override(rule, key))
    }

    /// After changes to `index` (write-locked): sets the filter's bits of
    /// what was `added`, builds the filter once there are enough overrides
    /// to need it, and rebuilds it once a quarter of its bits are stale.
    fn after_changes<'a>(
        &self,
        index: &Index,
        added: impl Iterator<Item = (&'a str, &'a str)>,
        removed: usize,
    ) {
        self.any.store(index.len > 0, Ordering::Relaxed);
        let rebuild = match self.filter.get() {
            None => index.len >= FILTER_FROM,
            Some(filter) => {
                filter.stale.fetch_add(removed, Ordering::Relaxed) + removed
                    > index.len / 4 + FILTER_FROM
            }
        };
        if rebuild {
            let filter = self.filter.get_or_init(Filter::new);
            filter.rebuild(
                index
                    .by_rule
                    .iter()
                    .flat_map(|(rule, keys)| keys.keys().map(move |key| (&**rule, &**key))),
            );
        } else if let Some(filter) = self.filter.get() {
            for (rule, key) in added {
                filter.set(rule, key);
            }
        }
    }

    /// Puts and removals made through this instance so far (see
    /// [`apply`](Self::apply)).
    pub(crate) fn writes(&self) -> u64 {
        self.writes.load(Ordering::Acquire)
    }

    /// The number of the last change applied: where the next sync starts.
    pub(crate) fn version(&self) -> u64 {
        self.index.read().version
    }

    /// Applies a page of changes read from the store; returns the number of
    /// overrides cached, per rule that changed, for the metrics, and
    /// whether the copy was dropped to be read again from the start (the
    /// store's log was emptied or replaced).
    ///
    /// A page read while this instance put or removed an override (the
    /// count of writes is not `writes_before` any more) may predate that
    /// write: it is dropped, the version stays, and the next sync reads the
    /// changes again, the write among them.
    pub(crate) fn apply(
        &self,
        page: OverrideChanges,
        writes_before: u64,
    ) -> (Vec<(String, usize)>, bool) {
        let mut index = self.index.write();
        if self.writes.load(Ordering::Acquire) != writes_before {
            return (Vec::new(), false);
        }
        let mut touched: Vec<String> = Vec::new();
        let mut removed = 0;
        let new_life = index.epoch.is_some_and(|known| known != page.epoch);
        index.epoch = Some(page.epoch);
        let restart = page.reset || new_life;
        if restart {
            touched.extend(index.by_rule.keys().map(|r| r.to_string()));
            removed = index.len;
            index.by_rule.clear();
            index.len = 0;
            index.version = 0;
        } else {
            for change in &page.changes {
                if !touched.contains(&change.rule) {
                    touched.push(change.rule.clone());
                }
                match &change.now {
                    Some(o) => {
                        index.insert(o);
                    }
                    None => {
                        index.remove(&change.rule, &change.key);
                        removed += 1;
                    }
                }
            }
            index.version = index.version.max(page.version);
        }
        let added = page
            .changes
            .iter()
            .filter(|c| c.now.is_some() && !restart)
            .map(|c| (c.rule.as_str(), c.key.as_str()));
        self.after_changes(&index, added, removed);
        let counts = touched
            .into_iter()
            .map(|rule| {
                let n = index.count(&rule);
                (rule, n)
            })
            .collect();
        (counts, restart)
    }

    /// Puts `o` in force here at once (made through this instance); the
    /// number of overrides of its rule now.
    pub(crate) fn put(&self, o: &KeyOverride) -> usize {
        let mut index = self.index.write();
        self.writes.fetch_add(1, Ordering::AcqRel);
        let n = index.insert(o);
        self.after_changes(
            &index,
            std::iter::once((o.rule.as_str(), o.key.as_str())),
            0,
        );
        n
    }

    /// Removes the override of (rule, key) here at once; the number of
    /// overrides of the rule left.
    pub(crate) fn remove(&self, rule: &str, key: &str) -> usize {
        let mut index = self.index.write();
        self.writes.fetch_add(1, Ordering::AcqRel);
        let n = index.remove(rule, key);
        self.after_changes(&index, std::iter::empty(), 1);
        n
    }

    /// Every override of `rule` in force at `now`, by key.
    pub(crate) fn of_rule(&self, rule: &str, now: Timestamp) -> Vec<KeyOverride> {
        let index = self.index.read();
        let mut list: Vec<KeyOverride> = index
            .by_rule
            .get(rule)
            .map(|keys| {
                keys.iter()
                    .filter(|(_, e)| e.in_force(now))
                    .map(|(key, e)| e.to_override(rule, key))
                    .collect()
            })
            .unwrap_or_default();
        list.sort_by(|a, b| a.key.cmp(&b.key));
        list
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use floodgate_core::{OverrideChange, Policy};

    fn o(rule: &str, key: &str, limit: u64) -> KeyOverride {
        KeyOverride {
            rule: rule.to_owned(),
            key: key.to_owned(),
            limit,
            window: None,
            burst: None,
            expires: None,
        }
    }

    fn compile(o: &KeyOverride) -> Option<Overridden> {
        let policy = Policy::new(
            floodgate_core::Algorithm::FixedWindow,
            o.limit,
            Duration::from_secs(1),
        )
        .ok()?;
        Some(Overridden {
            generation: 1,
            label: Arc::new(super::super::RuleLabel::new(
                &o.rule,
                policy.limit(),
                policy.window(),
            )),
            policy,
        })
    }

    fn limit_of(cache: &OverrideCache, rule: &str, key: &str) -> Option<u64> {
        let now = Timestamp::from_micros(1);
        cache
            .get_probed(cache.probe(rule, key), rule, key, now, 1, compile)
            .map(|c| c.policy.limit())
    }

    /// A million overrides in the filter: about 1% of other keys pass.
    #[test]
    fn the_filter_lets_few_keys_without_an_override_through() {
        let filter = Filter::new();
        for i in 0..1_000_000 {
            filter.set("r", &format!("o:{i}"));
        }
        let probes = 200_000;
        let through = (0..probes)
            .filter(|i| filter.may_hold("r", &format!("k:{i}")))
            .count();
        // About 1% at a million overrides; a one-bit filter of the same
        // size lets 6% through.
        assert!(through * 50 < probes, "{through} of {probes} let through");
        assert!((0..1_000_000).all(|i| filter.may_hold("r", &format!("o:{i}"))));
    }

    /// A check that reads while the filter is rebuilt in place never
    /// answers "no override" for a pair in it before and after.
    #[test]
    fn a_rebuild_never_hides_an_override_from_a_check() {
        let filter = Arc::new(Filter::new());
        let kept: Vec<String> = (0..64).map(|i| format!("kept:{i}")).collect();
        filter.rebuild(kept.iter().map(|k| ("r", k.as_str())));
        let stop = Arc::new(AtomicBool::new(false));
        let checker = {
            let (filter, stop, kept) = (Arc::clone(&filter), Arc::clone(&stop), kept.clone());
            std::thread::spawn(move || {
                let mut checks = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for key in &kept {
                        assert!(filter.may_hold("r", key), "{key} hidden during a rebuild");
                        checks += 1;
                    }
                }
                checks
            })
        };
        for round in 0..200 {
            let churn: Vec<String> = (0..5_000).map(|i| format!("churn:{round}:{i}")).collect();
            filter.rebuild(kept.iter().chain(&churn).map(|k| ("r", k.as_str())));
        }
        stop.store(true, Ordering::Relaxed);
        assert!(checker.join().expect("the checker panicked") > 0);
        assert_eq!(filter.seq.load(Ordering::Relaxed), 2 * 201);
    }

    /// Past FILTER_FROM overrides the filter answers for keys without one;
    /// it never hides one that exists, before or after removals rebuild it.
    #[test]
    fn the_filter_never_hides_an_override() {
        let cache = OverrideCache::default();
        let n = 3 * FILTER_FROM;
        let changes = (0..n)
            .map(|i| OverrideChange {
                rule: "r".into(),
                key: format!("k{i}"),
                now: Some(o("r", &format!("k{i}"), 1 + i as u64)),
            })
            .collect();
        cache.apply(
            OverrideChanges {
                version: n as u64,
                epoch: 7,
                reset: false,
                changes,
                more: false,
            },
            cache.writes(),
        );
        assert!(cache.filter.get().is_some(), "no filter past {FILTER_FROM}");
        for i in 0..n {
            assert_eq!(limit_of(&cache, "r", &format!("k{i}")), Some(1 + i as u64));
        }
        assert_eq!(limit_of(&cache, "r", "absent"), None);
        assert_eq!(limit_of(&cache, "other", "k1"), None);
        // Remove all but 100: the filter is rebuilt; what is left is found.
        for i in 100..n {
            cache.remove("r", &format!("k{i}"));
        }
        for i in 0..n {
            let expected = (i < 100).then_some(1 + i as u64);
            assert_eq!(limit_of(&cache, "r", &format!("k{i}")), expected, "k{i}");
        }
        // One put later, without a sync: found too.
        cache.put(&o("r", "late", 77));
        assert_eq!(limit_of(&cache, "r", "late"), Some(77));

        // The store's log starts a new life (emptied, replaced): the copy
        // is dropped and read again from the start.
        let (_, restarted) = cache.apply(
            OverrideChanges {
                version: 3,
                epoch: 8,
                ..OverrideChanges::default()
            },
            cache.writes(),
        );
        assert!(restarted);
        assert_eq!(cache.version(), 0);
        assert_eq!(limit_of(&cache, "r", "late"), None);
        assert_eq!(limit_of(&cache, "r", "k1"), None);
    }

    /// What a probe says at each size, and a probe taken before the filter
    /// was rebuilt still reads the right bits after.
    #[test]
    fn a_probe_reads_the_filter_as_it_is_when_read() {
        let cache = OverrideCache::default();
        let now = Timestamp::from_micros(1);
        assert!(matches!(cache.probe("r", "k1"), Probe::Nothing));
        cache.put(&o("r", "k1", 5));
        assert!(matches!(cache.probe("r", "k1"), Probe::Table));
        for i in 2..=2 * FILTER_FROM {
            cache.put(&o("r", &format!("k{i}"), 5));
        }
        let kept = cache.probe("r", "k1");
        let gone = cache.probe("r", "k2");
        assert!(matches!(kept, Probe::Filter { .. }));
        // Most removed: the filter is cleared and refilled in place.
        let seq = cache.filter.get().map(|f| f.seq.load(Ordering::Relaxed));
        for i in 2..=2 * FILTER_FROM {
            cache.remove("r", &format!("k{i}"));
        }
        let rebuilt = cache.filter.get().map(|f| f.seq.load(Ordering::Relaxed));
        assert_ne!(seq, rebuilt, "the removals did not rebuild the filter");
        let found = cache.get_probed(kept, "r", "k1", now, 1, compile);
        assert_eq!(found.map(|c| c.policy.limit()), Some(5));
        assert!(cache.get_probed(gone, "r", "k2", now, 1, compile).is_none());
    }

    /// A page read before a put made through this instance (so without
    /// it) is not applied over it: the put stays, the version does not
    /// move, and the next read has the put.
    #[test]
    fn a_page_read_before_a_local_put_does_not_undo_it() {
        let cache = OverrideCache::default();
        let before = cache.writes();
        // The sync reads its page (an older value of the key)...
        let stale = OverrideChanges {
            version: 5,
            epoch: 1,
            changes: vec![OverrideChange {
                rule: "r".into(),
                key: "k".into(),
                now: Some(o("r", "k", 1)),
            }],
            ..OverrideChanges::default()
        };
        // ...while an admin put goes through this instance.
        cache.put(&o("r", "k", 99));
        let (counts, restarted) = cache.apply(stale, before);
        assert!(counts.is_empty() && !restarted);
        assert_eq!(limit_of(&cache, "r", "k"), Some(99));
        assert_eq!(cache.version(), 0, "the page is read again next time");
    }
}
