//! Top clients: which keys of a rule make the most decisions, in bounded
//! memory whatever the number of keys.
//!
//! Each rule counts its decisions per key in a [`TopWindow`]: a ring of
//! [`WINDOW_MINUTES`] one-minute [`SpaceSaving`] summaries (Metwally,
//! Agrawal and El Abbadi, 2005) of [`SLOT_COUNTERS`] counters each. The
//! window's [`RuleSummary`] is the ring merged, cut to the
//! [`PUBLISHED_KEYS`] heaviest keys; instances publish theirs through the
//! [`Store`](crate::Store) and any instance merges them all with
//! [`RuleSummary::merge`].
//!
//! # The bound
//!
//! Every listed key has `admitted` and `refused` counted while it was
//! tracked, so they never exceed the truth; `error` bounds what may be
//! missing: the key's true number of decisions lies in
//! `[admitted + refused, admitted + refused + error]`. A key not listed
//! made at most [`RuleSummary::floor`] decisions, and every `error` is at
//! most that floor.
//!
//! - One Space-Saving summary of `k` counters over `N` decisions: its
//!   counters sum to `N`, so the smallest (the floor) is at most `N / k`.
//! - Merging without cutting adds the floors of the parts that do not list
//!   a key to its error: floors add up, so a merge of summaries over `N`
//!   decisions in all keeps a floor of at most `N / k`.
//! - Cutting a summary with floor `F` over `N` decisions to its `p`
//!   heaviest keys (by upper bound) raises its floor to at most
//!   `F + N / (p + 1)`: the `p + 1` keys at or above the first one dropped
//!   each made at least its upper bound less `F` decisions.
//!
//! An instance's window is cut once, so its floor is at most
//! `N / SLOT_COUNTERS + N / (PUBLISHED_KEYS + 1)`, under `2N / 512`; the
//! merge of every instance's window keeps that: **over `N` decisions of a
//! rule in the window (all instances), each count is short of the truth by
//! at most `N / 256`, and every key with more than `N / 256` decisions is
//! listed.**

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::BuildHasher;

use hashbrown::HashTable;

/// Counters of one rule's one-minute summary.
pub const SLOT_COUNTERS: usize = 512;

/// Keys of one rule an instance publishes (the heaviest of its window).
pub const PUBLISHED_KEYS: usize = 512;

/// One-minute summaries in a window: the current minute and the five
/// before it, so the window always covers the last five minutes (and at
/// most six).
pub const WINDOW_MINUTES: usize = 6;

/// The Space-Saving summary of a stream of decisions: at most `capacity`
/// keys, each with its admitted and refused decisions counted since it was
/// tracked and the error it inherited when it took the place of the
/// lightest key.
///
/// Recording is O(1) for a tracked key that stays heavier than others and
/// O(log capacity) otherwise (a min-heap by upper bound), with no
/// allocation once the summary is full and keys fit the buffers they
/// replace. Hand-written: the crates with Space-Saving count one number per
/// key, not admitted and refused apart, and none merges with bounds.
#[derive(Debug, Clone)]
pub struct SpaceSaving {
    capacity: usize,
    counters: Vec<Counter>,
    /// Indices into `counters`, a min-heap by [`Counter::upper`].
    heap: Vec<u32>,
    /// Indices into `counters`, by the hash of their key.
    table: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    decisions: u64,
}

#[derive(Debug, Clone)]
struct Counter {
    key: String,
    hash: u64,
    admitted: u64,
    refused: u64,
    error: u64,
    /// Where this counter sits in the heap.
    place: u32,
}

impl Counter {
    fn upper(&self) -> u64 {
        self.admitted + self.refused + self.error
    }
}

impl SpaceSaving {
    /// An empty summary of at most `capacity` keys (at least 1).
    pub fn new(capacity: usize) -> Self {
        SpaceSaving {
            capacity: capacity.clamp(1, u32::MAX as usize),
            counters: Vec::new(),
            heap: Vec::new(),
            table: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            decisions: 0,
        }
    }

    /// Counts one decision for `key`.
    pub fn record(&mut self, key: &str, admitted: bool) {
        self.decisions += 1;
        let hash = self.hasher.hash_one(key);
        let counters = &self.counters;
        if let Some(&i) = self.table.find(hash, |&i| counters[i as usize].key == key) {
            let c = &mut self.counters[i as usize];
            if admitted {
                c.admitted += 1;
            } else {
                c.refused += 1;
            }
            let place = c.place as usize;
            self.sift_down(place);
            return;
        }
        let (a, r) = if admitted { (1, 0) } else { (0, 1) };
        if self.counters.len() < self.capacity {
            let i = self.counters.len() as u32;
            let place = self.heap.len();
            self.counters.push(Counter {
                key: key.to_owned(),
                hash,
                admitted: a,
                refused: r,
                error: 0,
                place: place as u32,
            });
            self.heap.push(i);
            let counters = &self.counters;
            self.table
                .insert_unique(hash, i, |&j| counters[j as usize].hash);
            self.sift_up(place);
            return;
        }
        // Full: the lightest key gives its place, and its count becomes the
        // newcomer's error.
        let i = self.heap[0];
        let old_hash = self.counters[i as usize].hash;
        if let Ok(entry) = self.table.find_entry(old_hash, |&j| j == i) {
            entry.remove();
        }
        let c = &mut self.counters[i as usize];
        c.error = c.upper();
        c.key.clear();
        c.key.push_str(key);
        c.hash = hash;
        c.admitted = a;
        c.refused = r;
        let counters = &self.counters;
        self.table
            .insert_unique(hash, i, |&j| counters[j as usize].hash);
        self.sift_down(0);
    }

    /// Decisions counted since the summary was made or cleared.
    pub fn decisions(&self) -> u64 {
        self.decisions
    }

    /// The most decisions an untracked key can have made: the smallest
    /// upper bound once every counter is taken, else 0.
    pub fn floor(&self) -> u64 {
        if self.counters.len() < self.capacity {
            return 0;
        }
        self.heap
            .first()
            .map_or(0, |&i| self.counters[i as usize].upper())
    }

    /// Forgets everything counted, keeping the capacity.
    pub fn clear(&mut self) {
        self.counters.clear();
        self.heap.clear();
        self.table.clear();
        self.decisions = 0;
    }

    /// The summary as a [`RuleSummary`] of `rule`, every key listed.
    pub fn summary(&self, rule: &str) -> RuleSummary {
        RuleSummary {
            rule: rule.to_owned(),
            decisions: self.decisions,
            floor: self.floor(),
            entries: self
                .counters
                .iter()
                .map(|c| TopEntry {
                    key: c.key.clone(),
                    admitted: c.admitted,
                    refused: c.refused,
                    error: c.error,
                })
                .collect(),
        }
    }

    fn upper_at(&self, place: usize) -> u64 {
        self.counters[self.heap[place] as usize].upper()
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.counters[self.heap[a] as usize].place = a as u32;
        self.counters[self.heap[b] as usize].place = b as u32;
    }

    fn sift_up(&mut self, mut place: usize) {
        while place > 0 {
            let parent = (place - 1) / 2;
            if self.upper_at(parent) <= self.upper_at(place) {
                break;
            }
            self.swap(parent, place);
            place = parent;
        }
    }

    fn sift_down(&mut self, mut place: usize) {
        let len = self.heap.len();
        loop {
            let left = 2 * place + 1;
            if left >= len {
                break;
            }
            let right = left + 1;
            let child = if right < len && self.upper_at(right) < self.upper_at(left) {
                right
            } else {
                left
            };
            if self.upper_at(place) <= self.upper_at(child) {
                break;
            }
            self.swap(place, child);
            place = child;
        }
    }
}

/// One rule's decisions per key over the last [`WINDOW_MINUTES`] minutes:
/// a ring of one-minute [`SpaceSaving`] summaries. Time comes from the
/// caller ([`TopWindow::rotate`]), never from a clock read while recording.
#[derive(Debug, Clone)]
pub struct TopWindow {
    slots: Vec<SpaceSaving>,
    /// The slot decisions go to.
    current: usize,
    /// The minute (since the Unix epoch) of the current slot.
    minute: u64,
}

impl Default for TopWindow {
    fn default() -> Self {
        TopWindow::new(SLOT_COUNTERS)
    }
}

impl TopWindow {
    /// A window of one-minute summaries of `counters` counters each.
    pub fn new(counters: usize) -> Self {
        TopWindow {
            slots: (0..WINDOW_MINUTES)
                .map(|_| SpaceSaving::new(counters))
                .collect(),
            current: 0,
            minute: 0,
        }
    }

    /// Counts one decision for `key` in the current minute.
    pub fn record(&mut self, key: &str, admitted: bool) {
        self.slots[self.current].record(key, admitted);
    }

    /// Moves the window to `minute` (minutes since the Unix epoch): each
    /// minute passed since the last call clears the oldest slot and makes
    /// it the current one. An earlier minute (a clock set back) changes
    /// nothing.
    pub fn rotate(&mut self, minute: u64) {
        if minute <= self.minute {
            return;
        }
        let steps = (minute - self.minute).min(WINDOW_MINUTES as u64);
        for _ in 0..steps {
            self.current = (self.current + 1) % WINDOW_MINUTES;
            self.slots[self.current].clear();
        }
        self.minute = minute;
    }

    /// Decisions counted in the window.
    pub fn decisions(&self) -> u64 {
        self.slots.iter().map(SpaceSaving::decisions).sum()
    }

    /// The window's summary for `rule`: every slot merged, cut to the
    /// [`PUBLISHED_KEYS`] heaviest keys.
    pub fn summary(&self, rule: &str) -> RuleSummary {
        let slots: Vec<RuleSummary> = self
            .slots
            .iter()
            .filter(|s| s.decisions() > 0)
            .map(|s| s.summary(rule))
            .collect();
        let mut merged = RuleSummary::merge(rule, slots.iter());
        merged.cut(PUBLISHED_KEYS);
        merged
    }
}

/// One key of a [`RuleSummary`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopEntry {
    /// The rule key, e.g. `ip:203.0.113.7`.
    pub key: String,
    /// Admitted decisions counted for it (never more than the truth).
    pub admitted: u64,
    /// Refused decisions counted for it, penalty blocks included (for a
    /// shadow rule, the refusals it would have made).
    pub refused: u64,
    /// The most decisions it may have made that are not counted.
    pub error: u64,
}

impl TopEntry {
    /// `admitted + refused`: what the list is ordered by.
    pub fn counted(&self) -> u64 {
        self.admitted + self.refused
    }

    /// The most decisions it may have made.
    pub fn upper(&self) -> u64 {
        self.counted() + self.error
    }
}

/// The heaviest keys of one rule, with the bound of what they miss.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleSummary {
    /// The rule's name.
    pub rule: String,
    /// Decisions summarised, every key's.
    pub decisions: u64,
    /// The most decisions a key not listed may have made; at least every
    /// entry's `error`.
    pub floor: u64,
    /// The keys tracked.
    pub entries: Vec<TopEntry>,
}

impl RuleSummary {
    /// The summary of the union of the streams `parts` summarise (all of
    /// rule `rule`): counts and floors add up, and a key some part does not
    /// list gets that part's floor added to its error. Nothing is cut.
    pub fn merge<'a>(rule: &str, parts: impl Iterator<Item = &'a RuleSummary> + Clone) -> Self {
        let floor: u64 = parts.clone().map(|p| p.floor).sum();
        let decisions = parts.clone().map(|p| p.decisions).sum();
        // Per key: its entry, and the floors of the parts that list it.
        let mut keys: HashMap<&str, (TopEntry, u64)> = HashMap::new();
        for part in parts {
            for e in &part.entries {
                let (sum, listed_floor) = keys.entry(e.key.as_str()).or_insert_with(|| {
                    (
                        TopEntry {
                            key: e.key.clone(),
                            admitted: 0,
                            refused: 0,
                            error: 0,
                        },
                        0,
                    )
                });
                sum.admitted += e.admitted;
                sum.refused += e.refused;
                sum.error += e.error;
                *listed_floor += part.floor;
            }
        }
        let mut entries: Vec<TopEntry> = keys
            .into_values()
            .map(|(mut e, listed_floor)| {
                e.error += floor.saturating_sub(listed_floor);
                e
            })
            .collect();
        sort_heaviest_first(&mut entries);
        RuleSummary {
            rule: rule.to_owned(),
            decisions,
            floor,
            entries,
        }
    }

    /// Keeps the `keep` keys of highest upper bound; the floor rises to the
    /// upper bound of the heaviest key dropped.
    pub fn cut(&mut self, keep: usize) {
        if self.entries.len() <= keep {
            return;
        }
        self.entries
            .sort_by(|a, b| b.upper().cmp(&a.upper()).then_with(|| a.key.cmp(&b.key)));
        self.floor = self.floor.max(self.entries[keep].upper());
        self.entries.truncate(keep);
        sort_heaviest_first(&mut self.entries);
    }
}

/// By `admitted + refused`, heaviest first; then by key.
pub fn sort_heaviest_first(entries: &mut [TopEntry]) {
    entries.sort_by(|a, b| {
        b.counted()
            .cmp(&a.counted())
            .then_with(|| a.key.cmp(&b.key))
    });
}

/// What one instance publishes: its window's summary of every rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopSummary {
    /// The instance that counted it (unique per process).
    pub instance: String,
    /// One summary per rule with decisions in the window.
    pub rules: Vec<RuleSummary>,
}

/// A [`TopSummary`] that could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed top-clients summary: {0}")]
pub struct MalformedSummary(&'static str);

const MAGIC: &str = "floodgate-top 1\n";

impl TopSummary {
    /// The summary as text for a store: a header line, the instance, then
    /// per rule a line `<name> <decisions> <floor> <keys>` and one line
    /// `<key> <admitted> <refused> <error>` per key, each name written
    /// `<byte length>:<bytes>` so that any byte may appear in it.
    pub fn encode(&self) -> String {
        let mut out = String::from(MAGIC);
        push_text(&mut out, &self.instance);
        out.push('\n');
        for r in &self.rules {
            push_text(&mut out, &r.rule);
            let _ = writeln!(out, " {} {} {}", r.decisions, r.floor, r.entries.len());
            for e in &r.entries {
                push_text(&mut out, &e.key);
                let _ = writeln!(out, " {} {} {}", e.admitted, e.refused, e.error);
            }
        }
        out
    }

    /// Reads back what [`encode`](Self::encode) wrote.
    pub fn decode(text: &str) -> Result<Self, MalformedSummary> {
        let mut rest = text
            .strip_prefix(MAGIC)
            .ok_or(MalformedSummary("unknown header"))?;
        let instance = take_text(&mut rest)?.to_owned();
        take_literal(&mut rest, "\n")?;
        let mut rules = Vec::new();
        while !rest.is_empty() {
            let rule = take_text(&mut rest)?.to_owned();
            let [decisions, floor, keys] = take_numbers(&mut rest)?;
            let mut entries = Vec::with_capacity(keys.min(PUBLISHED_KEYS as u64) as usize);
            for _ in 0..keys {
                let key = take_text(&mut rest)?.to_owned();
                let [admitted, refused, error] = take_numbers(&mut rest)?;
                entries.push(TopEntry {
                    key,
                    admitted,
                    refused,
                    error,
                });
            }
            rules.push(RuleSummary {
                rule,
                decisions,
                floor,
                entries,
            });
        }
        Ok(TopSummary { instance, rules })
    }
}

fn push_text(out: &mut String, text: &str) {
    let _ = write!(out, "{}:{text}", text.len());
}

fn take_literal(rest: &mut &str, literal: &str) -> Result<(), MalformedSummary> {
    *rest = rest
        .strip_prefix(literal)
        .ok_or(MalformedSummary("missing separator"))?;
    Ok(())
}

fn take_text<'a>(rest: &mut &'a str) -> Result<&'a str, MalformedSummary> {
    let (len, after) = rest
        .split_once(':')
        .ok_or(MalformedSummary("missing length"))?;
    let len: usize = len.parse().map_err(|_| MalformedSummary("bad length"))?;
    if !after.is_char_boundary(len) {
        return Err(MalformedSummary("length past the end"));
    }
    let (text, after) = after.split_at(len);
    *rest = after;
    Ok(text)
}

/// ` <a> <b> <c>\n`.
fn take_numbers(rest: &mut &str) -> Result<[u64; 3], MalformedSummary> {
    let (line, after) = rest
        .split_once('\n')
        .ok_or(MalformedSummary("unterminated line"))?;
    let mut numbers = [0; 3];
    let mut fields = line
        .strip_prefix(' ')
        .ok_or(MalformedSummary("missing separator"))?
        .split(' ');
    for n in &mut numbers {
        *n = fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or(MalformedSummary("bad number"))?;
    }
    if fields.next().is_some() {
        return Err(MalformedSummary("too many numbers"));
    }
    *rest = after;
    Ok(numbers)
}

/// The heaviest keys across `summaries` (one per instance): each rule's
/// summaries merged ([`RuleSummary::merge`]), then only `rule`'s if given,
/// every key of every rule ordered heaviest first, the first `n` kept.
/// Each with its rule's merged floor: what a key not listed may have made.
pub fn heaviest(
    summaries: &[TopSummary],
    rule: Option<&str>,
    n: usize,
) -> Vec<(RuleSummaryHead, TopEntry)> {
    let mut names: Vec<&str> = summaries
        .iter()
        .flat_map(|s| s.rules.iter().map(|r| r.rule.as_str()))
        .filter(|name| rule.is_none_or(|wanted| wanted == *name))
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut rows = Vec::new();
    for name in names {
        let parts = summaries
            .iter()
            .flat_map(|s| s.rules.iter().filter(move |r| r.rule == name));
        let merged = RuleSummary::merge(name, parts);
        let head = RuleSummaryHead {
            rule: merged.rule.clone(),
            decisions: merged.decisions,
            floor: merged.floor,
        };
        rows.extend(merged.entries.into_iter().map(|e| (head.clone(), e)));
    }
    rows.sort_by(|(ra, a), (rb, b)| {
        b.counted()
            .cmp(&a.counted())
            .then_with(|| ra.rule.cmp(&rb.rule))
            .then_with(|| a.key.cmp(&b.key))
    });
    rows.truncate(n);
    rows
}

/// A merged [`RuleSummary`] without its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSummaryHead {
    /// The rule's name.
    pub rule: String,
    /// Decisions of the rule summarised, over every instance.
    pub decisions: u64,
    /// The most decisions a key not listed may have made.
    pub floor: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The true counts of a stream: key → (admitted, refused).
    fn truth(stream: &[(u16, bool)]) -> HashMap<String, (u64, u64)> {
        let mut t = HashMap::new();
        for (k, admitted) in stream {
            let e = t.entry(format!("k{k}")).or_insert((0, 0));
            if *admitted {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
        t
    }

    /// Every listed count within its error of the truth, errors within the
    /// floor, every key above the floor listed, and the floor within
    /// `bound`.
    fn assert_within(s: &RuleSummary, t: &HashMap<String, (u64, u64)>, bound: u64) {
        assert!(s.floor <= bound, "floor {} over {bound}", s.floor);
        for e in &s.entries {
            let (a, r) = t.get(&e.key).copied().unwrap_or((0, 0));
            assert!(e.admitted <= a && e.refused <= r, "{e:?} over ({a}, {r})");
            assert!(
                e.upper() >= a + r,
                "{e:?} misses more than its error: {}",
                a + r
            );
            assert!(e.error <= s.floor, "{e:?} error over the floor {}", s.floor);
        }
        for (key, (a, r)) in t {
            if a + r > s.floor {
                assert!(
                    s.entries.iter().any(|e| &e.key == key),
                    "{key} ({}) above the floor {} is missing",
                    a + r,
                    s.floor
                );
            }
        }
    }

    fn stream() -> impl Strategy<Value = Vec<(u16, bool)>> {
        // Skewed: small keys are frequent, as with real clients.
        prop::collection::vec(
            (prop_oneof![0u16..8, 0u16..64, 0u16..2000], any::<bool>()),
            0..3000,
        )
    }

    proptest! {
        #[test]
        fn one_summary_keeps_its_bound(stream in stream(), k in 1usize..64) {
            let mut ss = SpaceSaving::new(k);
            for (key, admitted) in &stream {
                ss.record(&format!("k{key}"), *admitted);
            }
            let s = ss.summary("r");
            prop_assert_eq!(s.decisions, stream.len() as u64);
            prop_assert!(s.entries.len() <= k);
            let total: u64 = s.entries.iter().map(TopEntry::upper).sum();
            prop_assert_eq!(total, stream.len() as u64);
            assert_within(&s, &truth(&stream), stream.len() as u64 / k as u64);
        }

        #[test]
        fn merged_and_cut_summaries_keep_the_documented_bound(
            parts in prop::collection::vec(stream(), 1..5),
            k in 1usize..48,
            keep in 1usize..48,
        ) {
            let summaries: Vec<RuleSummary> = parts
                .iter()
                .map(|stream| {
                    let mut ss = SpaceSaving::new(k);
                    for (key, admitted) in stream {
                        ss.record(&format!("k{key}"), *admitted);
                    }
                    let mut s = ss.summary("r");
                    s.cut(keep);
                    s
                })
                .collect();
            let merged = RuleSummary::merge("r", summaries.iter());
            let all: Vec<(u16, bool)> = parts.concat();
            let n = all.len() as u64;
            prop_assert_eq!(merged.decisions, n);
            // N/k for the counters, N/(keep+1) for the cut.
            let bound = n / k as u64 + n / (keep as u64 + 1);
            assert_within(&merged, &truth(&all), bound);
        }

        #[test]
        fn summaries_read_back_as_written(
            keys in prop::collection::vec((".{0,12}", any::<u32>(), any::<u32>(), any::<u32>()), 0..20),
            instance in ".{0,12}",
        ) {
            let summary = TopSummary {
                instance,
                rules: vec![RuleSummary {
                    rule: "api:x 1\n".to_owned(),
                    decisions: 7,
                    floor: 3,
                    entries: keys
                        .into_iter()
                        .map(|(key, a, r, e)| TopEntry { key, admitted: a.into(), refused: r.into(), error: e.into() })
                        .collect(),
                }, RuleSummary::default()],
            };
            prop_assert_eq!(TopSummary::decode(&summary.encode()), Ok(summary));
        }
    }

    #[test]
    fn a_window_forgets_minutes_older_than_six() {
        let mut w = TopWindow::new(4);
        w.rotate(100);
        w.record("a", true);
        w.rotate(101);
        w.record("a", false);
        w.record("b", true);
        let s = w.summary("r");
        assert_eq!(s.decisions, 3);
        assert_eq!(
            (
                s.entries[0].key.as_str(),
                s.entries[0].admitted,
                s.entries[0].refused
            ),
            ("a", 1, 1)
        );
        // Minute 100 is in the window until minute 106 starts.
        w.rotate(105);
        assert_eq!(w.decisions(), 3);
        w.rotate(106);
        assert_eq!(w.decisions(), 2);
        // A clock set back changes nothing.
        w.rotate(50);
        assert_eq!(w.decisions(), 2);
        w.rotate(1_000);
        assert_eq!(w.decisions(), 0);
        assert!(w.summary("r").entries.is_empty());
    }

    #[test]
    fn heaviest_merges_instances_and_orders_every_rule() {
        let summary = |instance: &str, rules: Vec<RuleSummary>| TopSummary {
            instance: instance.to_owned(),
            rules,
        };
        let entry = |key: &str, admitted, refused, error| TopEntry {
            key: key.to_owned(),
            admitted,
            refused,
            error,
        };
        let rule = |name: &str, floor, entries| RuleSummary {
            rule: name.to_owned(),
            decisions: 100,
            floor,
            entries,
        };
        let summaries = [
            summary(
                "a",
                vec![
                    rule("api", 2, vec![entry("x", 10, 5, 1), entry("y", 3, 0, 0)]),
                    rule("login", 0, vec![entry("x", 1, 30, 0)]),
                ],
            ),
            summary("b", vec![rule("api", 4, vec![entry("y", 20, 0, 2)])]),
        ];
        let rows = heaviest(&summaries, None, 10);
        let got: Vec<(&str, &str, u64, u64, u64)> = rows
            .iter()
            .map(|(h, e)| {
                (
                    h.rule.as_str(),
                    e.key.as_str(),
                    e.admitted,
                    e.refused,
                    e.error,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("login", "x", 1, 30, 0),
                ("api", "y", 23, 0, 2),
                // Not listed by b: b's floor is its error there.
                ("api", "x", 10, 5, 5),
            ]
        );
        assert_eq!(rows[1].0.floor, 6);
        assert_eq!(rows[1].0.decisions, 200);
        let api = heaviest(&summaries, Some("api"), 1);
        assert_eq!(api.len(), 1);
        assert_eq!(api[0].1.key, "y");
    }

    #[test]
    fn malformed_summaries_are_refused() {
        for text in [
            "",
            "floodgate-top 2\n",
            "floodgate-top 1\n5:ab\n",
            "floodgate-top 1\n1:a\n1:r 1 2\n",
        ] {
            assert!(TopSummary::decode(text).is_err(), "{text:?}");
        }
    }
}
