//! The in-memory store: one process, no set-up.
//!
//! State is split over many shards, each behind its own lock, so concurrent
//! checks on different keys rarely meet. The number of keys is bounded: when a
//! shard is full, expired state is reclaimed first, then the entries closest
//! to expiry are evicted, so a flood of distinct keys cannot grow memory.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashTable;
use parking_lot::{Mutex, MutexGuard};

use crate::algorithm::{Evaluation, KeyState, Penalty};
use crate::block::{Block, BlockSource};
use crate::clock::{Clock, SystemClock, Timestamp};
use crate::concurrency::{Slot, SlotBook, SlotDecision};
use crate::decision::Decision;
use crate::error::Error;
use crate::overrides::{KeyOverride, OverrideBook, OverrideChanges};
use crate::policy::Policy;
use crate::store::{Check, Store, admitted, validate_charges, validate_checks};
use crate::top::TopSummary;

/// The default bound on stored keys.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// Shards before sizing them to whole hash tables (see [`shard_layout`]).
const MAX_SHARDS: usize = 256;

/// Entries a hash table of `buckets` buckets holds before it doubles
/// (hashbrown keeps 1/8 of a table of 8 or more buckets free).
const fn table_capacity(buckets: usize) -> usize {
    buckets / 8 * 7
}

/// How many shards, and how many entries each may hold, for `max_keys`.
///
/// Enough shards to spread lock traffic, but at least 16 keys a shard so a
/// small bound is still usable. Large shards are then resized so that a full
/// one fits a power-of-two table with room to spare: hashbrown doubles a
/// table past 7/8 of its buckets, so 1M keys over 256 shards (3 906 each)
/// would end in tables of 8 192 buckets, 48% used, where 319 shards of 3 134
/// stay in tables of 4 096. The spare eighth of the table's capacity absorbs
/// the tombstones that eviction leaves, which would otherwise make a full
/// shard's table double anyway.
fn shard_layout(max_keys: usize) -> (usize, usize) {
    let max_keys = max_keys.max(1);
    let mut shards = 1;
    while shards * 2 <= MAX_SHARDS && shards * 2 * 16 <= max_keys {
        shards *= 2;
    }
    let per_shard = max_keys / shards;
    if per_shard >= 1024 {
        let fill = |buckets: usize| table_capacity(buckets) / 8 * 7;
        let mut buckets = 1024;
        while fill(buckets * 2) <= per_shard {
            buckets *= 2;
        }
        shards = max_keys.div_ceil(fill(buckets));
    }
    (shards, max_keys / shards)
}

/// Hashes (rule, key) pairs, the same way for a lookup and for an entry.
struct KeyHasher(foldhash::fast::RandomState);

impl KeyHasher {
    fn hash(&self, rule: &[u8], key: &[u8]) -> u64 {
        let mut h = self.0.build_hasher();
        // As `str::hash` does: a terminator, so ("ab", "c") and ("a", "bc")
        // hash apart.
        h.write(rule);
        h.write_u8(0xff);
        h.write(key);
        h.finish()
    }

    /// The hash of an entry, for a table that grows or shrinks. Entries do
    /// not keep it: 8 bytes an entry cost more than rehashing the names on
    /// the rare resize.
    fn of(&self, e: &Entry) -> u64 {
        let (rule, key) = e.name.split();
        self.hash(rule, key)
    }
}

/// Bytes of a name (rule and key together) held inside the entry.
const INLINE_NAME: usize = 21;

/// The rule name followed by the key. Up to [`INLINE_NAME`] bytes (`api`
/// and `ip:203.0.113.7` with room to spare) it is held in the entry itself:
/// no allocation, and no second cache miss on a lookup. Longer names get
/// one allocation. 24 bytes either way.
enum Name {
    Inline {
        /// Where the rule name ends.
        rule_len: u8,
        len: u8,
        bytes: [u8; INLINE_NAME],
    },
    Heap {
        rule_len: u32,
        bytes: Box<[u8]>,
    },
}

const _: () = assert!(std::mem::size_of::<Name>() == 24);

impl Name {
    fn new(rule: &str, key: &str) -> Self {
        let len = rule.len() + key.len();
        if len <= INLINE_NAME {
            let mut bytes = [0; INLINE_NAME];
            bytes[..rule.len()].copy_from_slice(rule.as_bytes());
            bytes[rule.len()..len].copy_from_slice(key.as_bytes());
            // Both below INLINE_NAME: they fit a byte.
            Name::Inline {
                rule_len: rule.len() as u8,
                len: len as u8,
                bytes,
            }
        } else {
            Name::Heap {
                // A rule name of 4 GiB is no rule name.
                rule_len: u32::try_from(rule.len()).unwrap_or(u32::MAX),
                bytes: [rule.as_bytes(), key.as_bytes()]
                    .concat()
                    .into_boxed_slice(),
            }
        }
    }

    /// The rule's bytes and the key's.
    fn split(&self) -> (&[u8], &[u8]) {
        let (bytes, rule_len) = match self {
            Name::Inline {
                rule_len,
                len,
                bytes,
            } => (&bytes[..usize::from(*len)], usize::from(*rule_len)),
            Name::Heap { rule_len, bytes } => (&bytes[..], *rule_len as usize),
        };
        bytes.split_at(rule_len.min(bytes.len()))
    }

    /// Whether this is the name of (rule, key).
    #[inline]
    fn is(&self, rule: &[u8], key: &[u8]) -> bool {
        match self {
            Name::Inline {
                rule_len,
                len,
                bytes,
            } => {
                let (rl, n) = (usize::from(*rule_len), usize::from(*len));
                rl == rule.len()
                    && n == rule.len() + key.len()
                    && short_eq(&bytes[..rl], rule)
                    && short_eq(&bytes[rl..n], key)
            }
            Name::Heap { rule_len, bytes } => {
                let rl = *rule_len as usize;
                rl == rule.len()
                    && bytes.len() == rule.len() + key.len()
                    && bytes[..rl] == *rule
                    && bytes[rl..] == *key
            }
        }
    }
}

/// Whether two slices of the same length, at most 24 bytes, are equal:
/// a few word compares inline, where `==` calls `memcmp`.
#[inline(always)]
fn short_eq(a: &[u8], b: &[u8]) -> bool {
    fn word<const N: usize>(s: &[u8], at: usize) -> [u8; N] {
        s[at..at + N].try_into().unwrap_or([0; N])
    }
    let n = a.len();
    debug_assert!(n == b.len() && n <= 24);
    if n >= 8 {
        // First, last and (past 16) middle eight bytes, overlapping.
        let mid = (n / 2).saturating_sub(4);
        word::<8>(a, 0) == word::<8>(b, 0)
            && word::<8>(a, n - 8) == word::<8>(b, n - 8)
            && (n <= 16 || word::<8>(a, mid) == word::<8>(b, mid))
    } else if n >= 4 {
        word::<4>(a, 0) == word::<4>(b, 0) && word::<4>(a, n - 4) == word::<4>(b, n - 4)
    } else {
        a.iter().zip(b).all(|(x, y)| x == y)
    }
}

/// One (rule, key) and its state: 72 bytes, and no allocation of its own
/// for a name of up to [`INLINE_NAME`] bytes.
struct Entry {
    name: Name,
    state: KeyState,
    /// When `state` becomes the same as no state (µs).
    expires_at: u64,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 72);

impl Entry {
    fn new(check: &Check<'_>) -> Self {
        Entry {
            name: Name::new(check.rule, check.key),
            state: KeyState::fresh(check.policy),
            expires_at: 0,
        }
    }

    /// Whether this is the entry of (rule, key). The table has already
    /// matched 7 bits of the hash.
    #[inline(always)]
    fn is(&self, rule: &str, key: &str) -> bool {
        self.name.is(rule.as_bytes(), key.as_bytes())
    }

    /// The rule's name. Rule and key were split where the rule's `&str`
    /// ended, so both halves are UTF-8.
    fn rule(&self) -> &str {
        std::str::from_utf8(self.name.split().0).unwrap_or_default()
    }

    /// The key.
    fn key(&self) -> &str {
        std::str::from_utf8(self.name.split().1).unwrap_or_default()
    }
}

/// What a shard needs to insert: its bound, the time (to tell expired
/// entries) and the hasher (to move entries when its table is resized).
#[derive(Clone, Copy)]
struct Room<'a> {
    cap: usize,
    now: u64,
    hasher: &'a KeyHasher,
}

#[derive(Default)]
struct Shard {
    table: HashTable<Entry>,
    /// Expired states dropped to make room or by
    /// [`MemoryStore::purge_expired`], since the start.
    reclaimed: u64,
    /// Unexpired states evicted to make room, since the start: counters
    /// forgotten before their time, which operators must see.
    evicted: u64,
}

impl Shard {
    fn find(&self, hash: u64, rule: &str, key: &str) -> Option<&Entry> {
        self.table.find(hash, |e| e.is(rule, key))
    }

    fn find_mut(&mut self, hash: u64, rule: &str, key: &str) -> Option<&mut Entry> {
        self.table.find_mut(hash, |e| e.is(rule, key))
    }

    fn remove(&mut self, hash: u64, rule: &str, key: &str) -> Option<Entry> {
        self.table
            .find_entry(hash, |e| e.is(rule, key))
            .ok()
            .map(|e| e.remove().0)
    }

    /// Inserts a fresh entry for a (rule, key) known to be absent; makes
    /// room first when the shard holds `cap` entries.
    fn insert_new(&mut self, hash: u64, check: &Check<'_>, room: Room<'_>) -> &mut Entry {
        if self.table.len() >= room.cap {
            self.make_room(room);
        }
        self.table
            .insert_unique(hash, Entry::new(check), |e| room.hasher.of(e))
            .into_mut()
    }

    /// The entry for (rule, key), inserted fresh if absent.
    fn upsert(&mut self, hash: u64, check: &Check<'_>, room: Room<'_>) -> &mut Entry {
        if self.find(hash, check.rule, check.key).is_some() {
            self.find_mut(hash, check.rule, check.key)
                .expect("the entry was just found")
        } else {
            self.insert_new(hash, check, room)
        }
    }

    /// Drops expired entries; if that frees nothing, evicts the eighth of the
    /// entries that expire soonest (amortised O(1) per insert).
    fn make_room(&mut self, room: Room<'_>) {
        let full = self.table.len();
        self.table.retain(|e| e.expires_at > room.now);
        let live = self.table.len();
        self.reclaimed += (full - live) as u64;
        if live >= room.cap {
            self.evict_soonest_eighth();
            self.evicted += (live - self.table.len()) as u64;
        }
        // A table that grew past the size `cap` needs (tombstones left by
        // earlier evictions use up its free slots) goes back to that size.
        self.table.shrink_to(room.cap, |e| room.hasher.of(e));
    }

    /// Evicts the eighth of the entries that expire soonest.
    fn evict_soonest_eighth(&mut self) {
        let mut expiries: Vec<u64> = self.table.iter().map(|e| e.expires_at).collect();
        let k = (expiries.len() / 8).max(1);
        let (below, &mut threshold, _) = expiries.select_nth_unstable(k - 1);
        // Entries tied at the threshold go only as far as needed: with fixed
        // windows every key of a window expires at once, and evicting all of
        // them would wipe the shard.
        let mut ties = k - below.iter().filter(|&&e| e < threshold).count();
        self.table.retain(|e| {
            if e.expires_at < threshold {
                false
            } else if e.expires_at == threshold && ties > 0 {
                ties -= 1;
                false
            } else {
                true
            }
        });
    }
}

/// A shard behind its lock, alone on its cache lines: two threads on
/// neighbouring shards would otherwise take turns owning one line (a shard
/// is 56 bytes), and the CPU fetches lines in pairs.
#[derive(Default)]
#[repr(align(128))]
struct ShardLock(Mutex<Shard>);

impl std::ops::Deref for ShardLock {
    type Target = Mutex<Shard>;

    fn deref(&self) -> &Mutex<Shard> {
        &self.0
    }
}

struct Inner {
    shards: Box<[ShardLock]>,
    /// Entries allowed per shard; shards × this ≤ `max_keys`.
    shard_cap: usize,
    hasher: KeyHasher,
    clock: Arc<dyn Clock>,
    /// `clock` is the [`SystemClock`]: read it without a virtual call.
    system_clock: bool,
    /// Manual blocks by target. Penalty blocks live in the (rule, key) state
    /// they belong to, so they are bounded by `max_keys` with it and a listed
    /// penalty is always one that is enforced.
    manual_blocks: Mutex<HashMap<String, Block>>,
    overrides: Mutex<OverrideBook>,
    slots: Mutex<SlotBook>,
    /// Top-clients summaries by instance, with when each expires: only
    /// those of limiters sharing this store (one process).
    top: Mutex<HashMap<String, (TopSummary, Timestamp)>>,
}

/// What [`MemoryStore::stats`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStoreStats {
    /// (rule, key) states held, expired ones not yet dropped included.
    pub keys: usize,
    /// The most states the store holds ([`MemoryStore::max_keys`]).
    pub max_keys: usize,
    /// Unexpired states evicted to make room for new keys since the store
    /// was made: each a counter forgotten early, so a client it limited
    /// starts again from a full quota.
    pub evicted: u64,
    /// Expired states dropped (to make room, or by
    /// [`MemoryStore::purge_expired`]): harmless, they held nothing.
    pub reclaimed: u64,
}

/// An in-memory [`Store`]. Cheap to clone; clones share state.
///
/// ```
/// use floodgate_core::{Algorithm, Check, MemoryStore, Policy};
/// use std::time::Duration;
///
/// let store = MemoryStore::new(1000);
/// let policy = Policy::new(Algorithm::SlidingLog, 2, Duration::from_secs(1))?;
/// let check = Check::new("login", &policy, "ip:192.0.2.1", 1);
/// assert!(store.check_one(&check)?.allowed);
/// assert!(store.check_one(&check)?.allowed);
/// assert!(!store.check_one(&check)?.allowed);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.inner.shards.len())
            .field(
                "max_keys",
                &(self.inner.shards.len() * self.inner.shard_cap),
            )
            .finish()
    }
}

/// `state` decides `check` at `now` (a single check: recorded at once);
/// the decision, and whether the state changed.
#[inline(always)]
fn decide(state: &mut KeyState, check: &Check<'_>, now: u64) -> (Decision, bool) {
    let mut changed = false;
    let decision = state.check(
        check.policy,
        now,
        check.cost,
        check.shadow,
        check.charges(),
        &mut changed,
    );
    (decision, changed)
}

impl MemoryStore {
    /// A store holding at most `max_keys` (rule, key) states, on the system clock.
    pub fn new(max_keys: usize) -> Self {
        MemoryStore::build(max_keys, Arc::new(SystemClock), true)
    }

    /// A store on the given clock (a [`crate::ManualClock`] in tests).
    pub fn with_clock(max_keys: usize, clock: Arc<dyn Clock>) -> Self {
        MemoryStore::build(max_keys, clock, false)
    }

    fn build(max_keys: usize, clock: Arc<dyn Clock>, system_clock: bool) -> Self {
        let (shards, shard_cap) = shard_layout(max_keys);
        MemoryStore {
            inner: Arc::new(Inner {
                shards: (0..shards).map(|_| ShardLock::default()).collect(),
                shard_cap,
                hasher: KeyHasher(foldhash::fast::RandomState::default()),
                clock,
                system_clock,
                manual_blocks: Mutex::new(HashMap::new()),
                overrides: Mutex::default(),
                slots: Mutex::default(),
                top: Mutex::default(),
            }),
        }
    }

    /// The store's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The number of (rule, key) states held, expired ones included.
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| s.lock().table.len()).sum()
    }

    /// Whether no state is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most (rule, key) states this store will hold.
    pub fn max_keys(&self) -> usize {
        self.inner.shards.len() * self.inner.shard_cap
    }

    /// How full the store is and what it has dropped to stay within
    /// [`max_keys`](Self::max_keys): for metrics, read when they are
    /// scraped (it takes every shard's lock in turn), never per request.
    pub fn stats(&self) -> MemoryStoreStats {
        let mut stats = MemoryStoreStats {
            max_keys: self.max_keys(),
            ..MemoryStoreStats::default()
        };
        for shard in self.inner.shards.iter() {
            let shard = shard.lock();
            stats.keys += shard.table.len();
            stats.reclaimed += shard.reclaimed;
            stats.evicted += shard.evicted;
        }
        stats
    }

    /// Drops every expired state and block; returns how many states went.
    /// Optional: full shards reclaim expired state on their own.
    pub fn purge_expired(&self) -> usize {
        let now = self.now_us();
        let mut purged = 0;
        for shard in self.inner.shards.iter() {
            let mut shard = shard.lock();
            let before = shard.table.len();
            shard.table.retain(|e| e.expires_at > now);
            let gone = before - shard.table.len();
            shard.reclaimed += gone as u64;
            purged += gone;
        }
        self.inner
            .manual_blocks
            .lock()
            .retain(|_, b| b.until.as_micros() > now);
        purged
    }

    /// The time (µs).
    #[inline]
    fn now_us(&self) -> u64 {
        if self.inner.system_clock {
            Timestamp::now().as_micros()
        } else {
            self.inner.clock.now().as_micros()
        }
    }

    fn hash(&self, rule: &str, key: &str) -> u64 {
        self.inner.hasher.hash(rule.as_bytes(), key.as_bytes())
    }

    fn room(&self, now: u64) -> Room<'_> {
        Room {
            cap: self.inner.shard_cap,
            now,
            hasher: &self.inner.hasher,
        }
    }

    /// Shard of a hash. Uses bits the table does not use for its own
    /// bucket index (low bits) or tag (top 7 bits).
    fn shard_of(&self, hash: u64) -> usize {
        // Bits 32..56, scaled to the shard count (not a power of two).
        let bits = (hash >> 32) & 0xff_ffff;
        ((bits * self.inner.shards.len() as u64) >> 24) as usize
    }

    /// Decides one check: the fast path of [`Store::check`] for a single rule.
    pub fn check_one(&self, check: &Check<'_>) -> Result<Decision, Error> {
        // A single check cannot name its key twice: only the cost to check.
        if check.cost == 0 || check.cost > check.policy.capacity() {
            validate_checks(std::slice::from_ref(check))?;
        }
        let now = self.now_us();
        let hash = self.hash(check.rule, check.key);
        let mut shard = self.inner.shards[self.shard_of(hash)].lock();
        // One probe when the key is known (the common case).
        let d = match shard.find_mut(hash, check.rule, check.key) {
            Some(entry) => {
                let (decision, changed) = decide(&mut entry.state, check, now);
                if changed {
                    entry.expires_at = entry.state.expires_at(check.policy);
                }
                decision
            }
            None => self.check_new(&mut shard, hash, check, now),
        };
        drop(shard);
        // Field by field: a copy of the whole decision would read its flags,
        // just written a byte each, back as one word, and wait for them.
        Ok(Decision {
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            reset_after: d.reset_after,
            retry_after: d.retry_after,
            blocked: d.blocked,
            delay: d.delay,
        })
    }

    /// [`check_one`](Self::check_one) of a key the shard does not hold.
    #[inline(never)]
    fn check_new(&self, shard: &mut Shard, hash: u64, check: &Check<'_>, now: u64) -> Decision {
        let mut state = KeyState::fresh(check.policy);
        let (decision, changed) = decide(&mut state, check, now);
        if changed {
            let entry = shard.insert_new(hash, check, self.room(now));
            entry.expires_at = state.expires_at(check.policy);
            entry.state = state;
        }
        decision
    }

    /// Decides a batch of checks atomically (see [`Store::check`]).
    pub fn check_now(&self, checks: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        if let [one] = checks {
            return Ok(vec![self.check_one(one)?]);
        }
        validate_checks(checks)?;
        let now = self.now_us();
        let located: Vec<(u64, usize)> = checks
            .iter()
            .map(|c| {
                let h = self.hash(c.rule, c.key);
                (h, self.shard_of(h))
            })
            .collect();
        // Lock every shard involved, in ascending order so batches never deadlock.
        let mut order: Vec<usize> = located.iter().map(|&(_, s)| s).collect();
        order.sort_unstable();
        order.dedup();
        let mut guards: Vec<(usize, MutexGuard<'_, Shard>)> = order
            .into_iter()
            .map(|s| (s, self.inner.shards[s].lock()))
            .collect();

        let evals: Vec<Evaluation> = checks
            .iter()
            .zip(&located)
            .map(
                |(c, &(h, s))| match shard_in(&mut guards, s).find(h, c.rule, c.key) {
                    Some(e) => e.state.evaluate(c.policy, now, c.cost, c.shadow),
                    None => KeyState::fresh(c.policy).evaluate(c.policy, now, c.cost, c.shadow),
                },
            )
            .collect();
        let decisions: Vec<Decision> = evals.iter().map(|e| e.decision).collect();
        let admit = admitted(checks, &decisions);
        for ((c, &(h, s)), eval) in checks.iter().zip(&located).zip(&evals) {
            let admit = admit && c.charges();
            if (admit && eval.decision.allowed) || eval.block_until.is_some() {
                let entry = shard_in(&mut guards, s).upsert(h, c, self.room(now));
                apply(entry, c, now, eval, admit);
            }
        }
        drop(guards);
        Ok(decisions)
    }

    /// [`Store::charge`], synchronously.
    pub fn charge_now(&self, charges: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        validate_charges(charges)?;
        let now = self.now_us();
        let mut decisions = Vec::with_capacity(charges.len());
        for c in charges {
            let hash = self.hash(c.rule, c.key);
            let mut shard = self.inner.shards[self.shard_of(hash)].lock();
            let entry = shard.upsert(hash, c, self.room(now));
            entry.state.limit.commit(c.policy, now, c.cost);
            entry.expires_at = entry.state.expires_at(c.policy);
            decisions.push(peek_state(Some(&entry.state), c.policy, now));
        }
        Ok(decisions)
    }

    /// [`Store::refund`], synchronously.
    pub fn refund_now(&self, refunds: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        validate_charges(refunds)?;
        let now = self.now_us();
        let mut decisions = Vec::with_capacity(refunds.len());
        for c in refunds {
            let hash = self.hash(c.rule, c.key);
            let mut shard = self.inner.shards[self.shard_of(hash)].lock();
            let state = match shard.find_mut(hash, c.rule, c.key) {
                Some(entry) => {
                    entry.state.limit.refund(c.policy, now, c.cost);
                    entry.expires_at = entry.state.expires_at(c.policy);
                    Some(&entry.state)
                }
                None => None,
            };
            decisions.push(peek_state(state, c.policy, now));
        }
        Ok(decisions)
    }

    /// [`Store::peek`], synchronously.
    pub fn peek_now(&self, rule: &str, policy: &Policy, key: &str) -> Decision {
        let now = self.now_us();
        let hash = self.hash(rule, key);
        let shard = self.inner.shards[self.shard_of(hash)].lock();
        peek_state(shard.find(hash, rule, key).map(|e| &e.state), policy, now)
    }

    /// [`Store::reset`], synchronously. A penalty block goes with the state.
    pub fn reset_now(&self, rule: &str, key: &str) -> bool {
        let hash = self.hash(rule, key);
        self.inner.shards[self.shard_of(hash)]
            .lock()
            .remove(hash, rule, key)
            .is_some()
    }

    /// [`Store::add_block`], synchronously.
    pub fn add_block_now(&self, target: &str, ttl: Duration, reason: &str) -> Block {
        let now = self.inner.clock.now();
        let block = Block {
            target: target.to_owned(),
            until: now.saturating_add(ttl),
            reason: reason.to_owned(),
            source: BlockSource::Manual,
        };
        self.inner
            .manual_blocks
            .lock()
            .insert(target.to_owned(), block.clone());
        block
    }

    /// [`Store::acquire`], synchronously.
    pub fn acquire_now(&self, slots: &[Slot<'_>]) -> Vec<SlotDecision> {
        let now = self.now_us();
        self.inner.slots.lock().acquire(slots, now)
    }

    /// [`Store::release`], synchronously.
    pub fn release_now(&self, slots: &[Slot<'_>]) {
        let now = self.now_us();
        self.inner.slots.lock().release(slots, now);
    }

    /// [`Store::renew`], synchronously.
    pub fn renew_now(&self, slots: &[Slot<'_>]) -> Vec<bool> {
        let now = self.now_us();
        self.inner.slots.lock().renew(slots, now)
    }

    /// [`Store::put_override`], synchronously.
    pub fn put_override_now(&self, o: &KeyOverride, ttl: Option<Duration>) -> KeyOverride {
        let now = self.inner.clock.now();
        let stored = KeyOverride {
            expires: ttl.map(|ttl| now.saturating_add(ttl)),
            ..o.clone()
        };
        self.inner
            .overrides
            .lock()
            .put(stored.clone(), now.as_micros());
        stored
    }

    /// [`Store::remove_override`], synchronously.
    pub fn remove_override_now(&self, rule: &str, key: &str) -> bool {
        let now = self.now_us();
        self.inner.overrides.lock().remove(rule, key, now)
    }

    /// [`Store::remove_block`], synchronously: the manual block of `target`
    /// and every rule's penalty on it. Penalties are found by a scan of all
    /// state, which is fine for an operator's call.
    pub fn remove_block_now(&self, target: &str) -> bool {
        let now = self.now_us();
        let manual = self.inner.manual_blocks.lock().remove(target);
        let mut lifted = manual.is_some_and(|b| b.until.as_micros() > now);
        for shard in self.inner.shards.iter() {
            for e in shard.lock().table.iter_mut() {
                if e.state.blocked_until() > now && e.name.split().1 == target.as_bytes() {
                    // Lifted and forgiven: a block ladder starts over. The
                    // entry's `expires_at` keeps the block's end: it is only
                    // reclaimed a little later than it could be.
                    e.state.penalty = Penalty::NONE;
                    lifted = true;
                }
            }
        }
        lifted
    }

    /// [`Store::blocks`], synchronously: manual blocks, then every penalty in
    /// force (found by a scan of all state), sorted by target and source.
    pub fn blocks_now(&self) -> Vec<Block> {
        let now = self.now_us();
        let mut list: Vec<Block> = {
            let mut manual = self.inner.manual_blocks.lock();
            manual.retain(|_, b| b.until.as_micros() > now);
            manual.values().cloned().collect()
        };
        for shard in self.inner.shards.iter() {
            let shard = shard.lock();
            list.extend(
                shard
                    .table
                    .iter()
                    .filter(|e| e.state.blocked_until() > now)
                    .map(|e| Block {
                        target: e.key().to_owned(),
                        until: Timestamp::from_micros(e.state.blocked_until()),
                        reason: crate::block::penalty_reason(e.rule(), e.state.penalty.offences()),
                        source: BlockSource::Rule(e.rule().to_owned()),
                    }),
            );
        }
        list.sort_by(|a, b| (&a.target, &a.source).cmp(&(&b.target, &b.source)));
        list
    }
}

/// The locked shard `s` among `guards` (which hold every shard of the batch).
fn shard_in<'a>(guards: &'a mut [(usize, MutexGuard<'_, Shard>)], s: usize) -> &'a mut Shard {
    let i = guards.iter().position(|(idx, _)| *idx == s).unwrap_or(0);
    &mut guards[i].1
}

/// What a zero-cost check finds in `state`.
pub(crate) fn peek_state(state: Option<&KeyState>, policy: &Policy, now: u64) -> Decision {
    let fresh;
    let state = match state {
        Some(s) => s,
        None => {
            fresh = KeyState::fresh(policy);
            &fresh
        }
    };
    if state.blocked_until() > now {
        return state.evaluate(policy, now, 1, true).decision;
    }
    let mut d = state.limit.decide(policy, now, 0);
    d.delay = Duration::ZERO;
    if d.remaining == 0 {
        // Nothing left: say so, and when a single unit fits again.
        let one = state.limit.decide(policy, now, 1);
        d.allowed = false;
        d.retry_after = one.retry_after;
    }
    d
}

fn apply(entry: &mut Entry, check: &Check<'_>, now: u64, eval: &Evaluation, admit: bool) {
    entry
        .state
        .apply(check.policy, now, check.cost, eval, admit);
    entry.expires_at = entry.state.expires_at(check.policy);
}

impl Store for MemoryStore {
    /// Every call is over when first polled: nothing to wait for.
    fn call_timeout(&self) -> Option<Duration> {
        Some(Duration::ZERO)
    }

    async fn check(&self, checks: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        self.check_now(checks)
    }

    async fn charge(&self, charges: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        self.charge_now(charges)
    }

    async fn refund(&self, refunds: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        self.refund_now(refunds)
    }

    async fn peek(&self, rule: &str, policy: &Policy, key: &str) -> Result<Decision, Error> {
        Ok(self.peek_now(rule, policy, key))
    }

    async fn reset(&self, rule: &str, key: &str) -> Result<bool, Error> {
        Ok(self.reset_now(rule, key))
    }

    async fn add_block(&self, target: &str, ttl: Duration, reason: &str) -> Result<Block, Error> {
        Ok(self.add_block_now(target, ttl, reason))
    }

    async fn remove_block(&self, target: &str) -> Result<bool, Error> {
        Ok(self.remove_block_now(target))
    }

    async fn blocks(&self) -> Result<Vec<Block>, Error> {
        Ok(self.blocks_now())
    }

    async fn acquire(&self, slots: &[Slot<'_>]) -> Result<Vec<SlotDecision>, Error> {
        Ok(self.acquire_now(slots))
    }

    async fn release(&self, slots: &[Slot<'_>]) -> Result<(), Error> {
        self.release_now(slots);
        Ok(())
    }

    async fn renew(&self, slots: &[Slot<'_>]) -> Result<Vec<bool>, Error> {
        Ok(self.renew_now(slots))
    }

    async fn put_override(
        &self,
        o: &KeyOverride,
        ttl: Option<Duration>,
    ) -> Result<KeyOverride, Error> {
        Ok(self.put_override_now(o, ttl))
    }

    async fn remove_override(&self, rule: &str, key: &str) -> Result<bool, Error> {
        Ok(self.remove_override_now(rule, key))
    }

    async fn override_changes(&self, since: u64, max: usize) -> Result<OverrideChanges, Error> {
        Ok(self.inner.overrides.lock().changes(since, max))
    }

    async fn ping(&self) -> Result<(), Error> {
        Ok(())
    }

    async fn put_top(&self, summary: &TopSummary, ttl: Duration) -> Result<(), Error> {
        let now = self.inner.clock.now();
        let mut top = self.inner.top.lock();
        top.retain(|_, (_, expires)| *expires > now);
        top.insert(
            summary.instance.clone(),
            (summary.clone(), now.saturating_add(ttl)),
        );
        Ok(())
    }

    async fn top_summaries(&self) -> Result<Vec<TopSummary>, Error> {
        let now = self.inner.clock.now();
        let mut top = self.inner.top.lock();
        top.retain(|_, (_, expires)| *expires > now);
        Ok(top.values().map(|(s, _)| s.clone()).collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{
        INLINE_NAME, MemoryStore, MemoryStoreStats, Name, shard_layout, short_eq, table_capacity,
    };
    use crate::clock::{ManualClock, Timestamp};
    use crate::policy::{Algorithm, Policy};
    use crate::store::Check;

    /// Issue 17: a flood of distinct keys past `max_keys` used to leave no
    /// trace; the evictions of live counters are now counted, apart from
    /// the harmless reclaiming of expired ones.
    #[test]
    fn stats_count_live_evictions_apart_from_expired_reclaims() {
        let clock = Arc::new(ManualClock::new(Timestamp::from_micros(1_000_000)));
        let store = MemoryStore::with_clock(1_000, clock.clone());
        let policy = Policy::new(Algorithm::FixedWindow, 10, Duration::from_secs(60)).unwrap();
        let flood = |from: u32, n: u32| {
            for i in from..from + n {
                let key = format!("ip:{i}");
                store
                    .check_one(&Check::new("per-ip", &policy, &key, 1))
                    .unwrap();
            }
        };
        assert_eq!(
            store.stats(),
            MemoryStoreStats {
                keys: 0,
                max_keys: store.max_keys(),
                evicted: 0,
                reclaimed: 0
            }
        );
        flood(0, 30_000);
        let flooded = store.stats();
        assert!(flooded.keys <= flooded.max_keys, "{flooded:?}");
        assert!(flooded.keys > flooded.max_keys / 2, "{flooded:?}");
        // Every key past the bound pushed a live one out.
        assert!(
            flooded.evicted >= 30_000 - flooded.max_keys as u64,
            "{flooded:?}"
        );
        assert_eq!(flooded.reclaimed, 0, "{flooded:?}");
        // A window later everything held has expired: new keys reclaim it,
        // evicting nothing live.
        clock.advance(Duration::from_secs(61));
        flood(100_000, 300);
        let later = store.stats();
        assert_eq!(later.evicted, flooded.evicted, "{later:?}");
        assert!(later.reclaimed > 0, "{later:?}");
        clock.advance(Duration::from_secs(61));
        let purged = store.purge_expired() as u64;
        assert_eq!(store.stats().reclaimed, later.reclaimed + purged);
        assert_eq!(store.stats().keys, 0);
    }

    #[test]
    fn short_eq_sees_every_byte() {
        for n in 0..=24 {
            let a: Vec<u8> = (0..n as u8).collect();
            assert!(short_eq(&a, &a.clone()));
            for at in 0..n {
                let mut b = a.clone();
                b[at] ^= 0x40;
                assert!(!short_eq(&a, &b), "{n} {at}");
            }
        }
    }

    #[test]
    fn names_inline_or_on_the_heap_tell_rule_from_key() {
        let long = "k".repeat(INLINE_NAME);
        for (rule, key) in [
            ("api", "ip:203.0.113.7"),
            ("", ""),
            ("r", &long[..INLINE_NAME - 1]),
            ("r", &long[..]),
            ("ruleé", "clé:ü"),
            (&long[..], "ip:1"),
        ] {
            let name = Name::new(rule, key);
            let inline = rule.len() + key.len() <= INLINE_NAME;
            assert_eq!(matches!(name, Name::Inline { .. }), inline, "{rule} {key}");
            assert_eq!(name.split(), (rule.as_bytes(), key.as_bytes()));
            assert!(name.is(rule.as_bytes(), key.as_bytes()));
            let moved = format!("{rule}x");
            assert!(!name.is(moved.as_bytes(), &key.as_bytes()[key.len().min(1)..]));
            assert!(!name.is(rule.as_bytes(), format!("{key}x").as_bytes()));
        }
        // The split point is part of the name.
        assert!(!Name::new("ab", "c").is(b"a", b"bc"));
        let store = MemoryStore::new(1000);
        assert_ne!(store.hash("ab", "c"), store.hash("a", "bc"));
    }

    #[test]
    fn small_bounds_keep_sixteen_keys_a_shard() {
        assert_eq!(shard_layout(0), (1, 1));
        assert_eq!(shard_layout(16), (1, 16));
        assert_eq!(shard_layout(1_000), (32, 31));
        assert_eq!(shard_layout(100_000), (256, 390));
    }

    #[test]
    fn full_large_shards_fit_a_power_of_two_table_with_room_to_spare() {
        for max_keys in [300_000, 1_000_000, 2_000_000, 10_000_000] {
            let (shards, cap) = shard_layout(max_keys);
            assert!(shards * cap <= max_keys);
            assert!(shards * cap > max_keys - shards, "{max_keys}: bound wasted");
            let buckets = (cap * 8 / 7 + 1).next_power_of_two();
            assert!(cap <= table_capacity(buckets) / 8 * 7, "{max_keys}: {cap}");
        }
        assert_eq!(shard_layout(1_000_000), (319, 3134));
    }

    #[test]
    fn every_shard_gets_keys() {
        let store = MemoryStore::new(1_000_000);
        let mut seen = vec![false; store.inner.shards.len()];
        for i in 0..100_000 {
            seen[store.shard_of(store.hash("r", &i.to_string()))] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
