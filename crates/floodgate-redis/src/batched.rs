//! Batched consistency: the local budgets of batched policies, leased
//! from Redis in slices and spent here (`consistency = "batched"`). The
//! design and its bounds are documented on `RedisStore` ("Batched
//! consistency"); the leases themselves are `check.lua`'s mode "9".

use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Duration;

use floodgate_core::{Check, Decision, Policy};
use hashbrown::HashTable;

/// Shards of the budget table: requests for different keys rarely wait
/// on one another's lock.
const SHARDS: usize = 16;

/// The most (rule, key) budgets held; past it, lapsed ones are dropped,
/// then the oldest-found one.
pub(crate) const MAX_BUDGETS: usize = 262_144;

/// The local budgets of one store.
pub(crate) struct Budgets {
    shards: Box<[Mutex<HashTable<Budget>>]>,
    hasher: foldhash::fast::FixedState,
    per_shard: usize,
}

/// One (rule, key)'s local budget.
struct Budget {
    hash: u64,
    rule: Box<str>,
    key: Box<str>,
    /// The policy it was leased under; another (a reload, an override)
    /// starts afresh.
    policy: Policy,
    /// Units leased and not yet admitted.
    units: u64,
    /// When they lapse (µs on the store's clock).
    until: u64,
    /// The size of the last lease, and how much has been spent since it.
    granted: u64,
    spent: u64,
    /// The last slice lapsed unspent: the next is the size of what was
    /// spent of it, not twice the last.
    shrunk: bool,
    /// A lease is in flight: a check short of units meanwhile leases only
    /// what it needs, so concurrent checks do not each take a full slice.
    pending: bool,
    /// What the store had left after the last lease, and when the key's
    /// quota is whole again (for the RateLimit headers).
    store_remaining: u64,
    reset_at: u64,
    /// A refusal and when it ends.
    refused: Option<(u64, Decision)>,
}

/// What a local look at a budget found.
pub(crate) enum Take {
    /// Admitted from the local budget.
    Admitted(Decision),
    /// Refused, as the store said before and still holds.
    Refused(Decision),
    /// Short of units: lease this many.
    Lease(u64),
}

/// A lease's answer, from its `check.lua` reply.
pub(crate) enum Leased {
    /// `granted` units, usable for `valid`; the store's `remaining` and
    /// `reset_after` after them.
    Granted {
        granted: u64,
        valid: Duration,
        remaining: u64,
        reset_after: Duration,
    },
    /// Refused: the store's decision.
    Refused(Decision),
}

impl Budgets {
    pub(crate) fn new(max: usize) -> Self {
        Budgets {
            shards: (0..SHARDS).map(|_| Mutex::new(HashTable::new())).collect(),
            hasher: foldhash::fast::FixedState::with_seed(0x6261_7463_6865_6421),
            per_shard: max.div_ceil(SHARDS).max(1),
        }
    }

    fn hash(&self, rule: &str, key: &str) -> u64 {
        self.hasher.hash_one((rule, key))
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, HashTable<Budget>> {
        let shard = &self.shards[(hash >> 59) as usize % SHARDS];
        shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes `cost` units of (rule, key) from its budget, if it holds them.
    pub(crate) fn take(&self, check: &Check<'_>, now: u64) -> Take {
        let Check {
            rule,
            key,
            policy,
            cost,
            ..
        } = *check;
        let hash = self.hash(rule, key);
        let mut table = self.shard(hash);
        let Some(b) = table.find_mut(hash, |b| matches(b, hash, rule, key)) else {
            return Take::Lease(cost.max(1));
        };
        if b.policy != *policy {
            // Leased under another policy: those units count against a
            // limit no longer in force; start afresh.
            b.reset_to(policy, now);
        }
        if now >= b.until {
            b.lapse();
        }
        if b.units >= cost {
            b.units -= cost;
            b.spent += cost;
            return Take::Admitted(b.admitted(now));
        }
        if let Some((until, refusal)) = b.refused {
            if now < until {
                let mut d = refusal;
                d.retry_after = Some(Duration::from_micros(until - now));
                d.reset_after = d
                    .reset_after
                    .min(Duration::from_micros(b.reset_at.saturating_sub(now)));
                d.remaining = b.units;
                return Take::Refused(d);
            }
            b.refused = None;
        }
        let need = cost - b.units;
        let want = if b.pending {
            need
        } else {
            b.pending = true;
            b.next_size(need)
        };
        Take::Lease(want)
    }

    /// Settles a lease for (rule, key) sent at `sent` and answered at
    /// `now`, then takes `cost` from the budget: the check's decision.
    pub(crate) fn settle(
        &self,
        check: &Check<'_>,
        sent: u64,
        now: u64,
        leased: Leased,
    ) -> Decision {
        let Check {
            rule,
            key,
            policy,
            cost,
            ..
        } = *check;
        let hash = self.hash(rule, key);
        let mut table = self.shard(hash);
        if table.find(hash, |b| matches(b, hash, rule, key)).is_none() {
            if table.len() >= self.per_shard {
                make_room(&mut table, now, self.per_shard);
            }
            table.insert_unique(hash, Budget::empty(hash, rule, key, policy, now), |b| {
                b.hash
            });
        }
        let Some(b) = table.find_mut(hash, |b| matches(b, hash, rule, key)) else {
            unreachable!("the budget was just found or inserted")
        };
        if b.policy != *policy {
            b.reset_to(policy, now);
        }
        b.pending = false;
        match leased {
            Leased::Refused(d) => {
                if let Some(retry) = d.retry_after
                    && !d.allowed
                {
                    b.refused = Some((sent + micros(retry), d));
                }
                b.reset_at = sent + micros(d.reset_after);
                let mut d = d;
                // Units still held locally (too few for this cost) are
                // what could still be admitted here.
                d.remaining = d.remaining.max(b.live_units(now));
                d
            }
            Leased::Granted {
                granted,
                valid,
                remaining,
                reset_after,
            } => {
                let until = sent + micros(valid);
                if now >= b.until {
                    b.lapse();
                }
                b.granted = granted;
                b.spent = 0;
                b.shrunk = false;
                b.store_remaining = remaining;
                b.reset_at = sent + micros(reset_after);
                b.refused = None;
                if granted + b.units < cost {
                    // A partial lease, too small for this cost: the units
                    // stay for cheaper checks while they are valid.
                    if now < until {
                        b.add_units(granted, until);
                    }
                    return Decision {
                        allowed: false,
                        limit: policy.limit(),
                        remaining: b.live_units(now),
                        reset_after,
                        retry_after: Some(reset_after),
                        blocked: false,
                        delay: Duration::ZERO,
                    };
                }
                // The check that asked is admitted from the grant first:
                // Redis counted it when it leased, as it counts an exact
                // check, even if the grant's window has ended since (a
                // lease at a window's very end). Only what is left over
                // is kept, and only while it is valid.
                let from_grant = cost.min(granted);
                b.units -= cost - from_grant;
                b.spent += cost;
                let leftover = granted - from_grant;
                if b.units == 0 {
                    // A give-back of this check's units lands in this lot.
                    b.until = until;
                }
                if leftover > 0 && now < until {
                    b.add_units(leftover, until);
                }
                b.admitted(now)
            }
        }
    }

    /// A lease for (rule, key) failed: the next check may lease again.
    pub(crate) fn lease_failed(&self, rule: &str, key: &str) {
        let hash = self.hash(rule, key);
        let mut table = self.shard(hash);
        if let Some(b) = table.find_mut(hash, |b| matches(b, hash, rule, key)) {
            b.pending = false;
        }
    }

    /// Gives `cost` units taken by [`Budgets::take`] or
    /// [`Budgets::settle`] back to (rule, key)'s budget: the request they
    /// admitted was refused by another of its rules.
    pub(crate) fn give_back(&self, check: &Check<'_>, now: u64) {
        let Check {
            rule,
            key,
            policy,
            cost,
            ..
        } = *check;
        let hash = self.hash(rule, key);
        let mut table = self.shard(hash);
        if let Some(b) = table.find_mut(hash, |b| matches(b, hash, rule, key))
            && b.policy == *policy
            && now < b.until
        {
            b.units += cost;
            b.spent = b.spent.saturating_sub(cost);
        }
    }

    /// Forgets (rule, key)'s budget (a reset made through this store).
    pub(crate) fn forget(&self, rule: &str, key: &str) {
        let hash = self.hash(rule, key);
        let mut table = self.shard(hash);
        if let Ok(entry) = table.find_entry(hash, |b| matches(b, hash, rule, key)) {
            entry.remove();
        }
    }

    /// Budgets held, lapsed or not.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|t| t.len()).unwrap_or(0))
            .sum()
    }
}

/// A duration in whole microseconds, saturating.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn matches(b: &Budget, hash: u64, rule: &str, key: &str) -> bool {
    b.hash == hash && &*b.rule == rule && &*b.key == key
}

/// Drops the lapsed budgets of a full shard; if none has lapsed, one.
fn make_room(table: &mut HashTable<Budget>, now: u64, per_shard: usize) {
    table.retain(|b| b.pending || now < b.until || b.refused.is_some_and(|(u, _)| now < u));
    if table.len() >= per_shard
        && let Some(first) = table.iter().next().map(|b| b.hash)
    {
        // Still full of live budgets: losing one costs at most its units
        // (never admits more).
        if let Ok(entry) = table.find_entry(first, |b| b.hash == first) {
            entry.remove();
        }
    }
}

impl Budget {
    fn empty(hash: u64, rule: &str, key: &str, policy: &Policy, now: u64) -> Self {
        Budget {
            hash,
            rule: rule.into(),
            key: key.into(),
            policy: policy.clone(),
            units: 0,
            until: now,
            granted: 0,
            spent: 0,
            shrunk: false,
            pending: false,
            store_remaining: 0,
            reset_at: now,
            refused: None,
        }
    }

    fn reset_to(&mut self, policy: &Policy, now: u64) {
        self.policy = policy.clone();
        self.units = 0;
        self.until = now;
        self.granted = 0;
        self.spent = 0;
        self.shrunk = false;
        self.refused = None;
    }

    /// The units lapse: the next slice is the size of what was spent of
    /// this one.
    fn lapse(&mut self) {
        if self.units > 0 {
            self.granted = self.spent;
            self.shrunk = true;
        }
        self.units = 0;
        self.spent = 0;
    }

    /// Adds `n` units usable until `until`: both lots are used only while
    /// both are valid.
    fn add_units(&mut self, n: u64, until: u64) {
        if self.units == 0 {
            self.until = until;
        } else {
            self.until = self.until.min(until);
        }
        self.units += n;
    }

    fn live_units(&self, now: u64) -> u64 {
        if now < self.until { self.units } else { 0 }
    }

    /// The size of the next lease for a check `need` units short: twice
    /// the last while slices are spent before they lapse, at most
    /// [`Policy::batch_max`], at least `need`.
    fn next_size(&self, need: u64) -> u64 {
        let max = self.policy.batch_max();
        let next = if self.shrunk {
            self.granted
        } else {
            self.granted.saturating_mul(2)
        };
        next.clamp(1, max).max(need).min(self.policy.capacity())
    }

    fn admitted(&self, now: u64) -> Decision {
        Decision {
            allowed: true,
            limit: self.policy.limit(),
            remaining: self.units + self.store_remaining,
            reset_after: Duration::from_micros(self.reset_at.saturating_sub(now)),
            retry_after: None,
            blocked: false,
            delay: Duration::ZERO,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use floodgate_core::Algorithm;

    fn policy(limit: u64) -> Policy {
        Policy::new(Algorithm::FixedWindow, limit, Duration::from_secs(60))
            .unwrap()
            .with_batched()
            .unwrap()
    }

    fn grant(granted: u64) -> Leased {
        Leased::Granted {
            granted,
            valid: Duration::from_secs(30),
            remaining: 100,
            reset_after: Duration::from_secs(30),
        }
    }

    #[test]
    fn slices_double_while_spent_and_never_pass_the_batch_max() {
        let budgets = Budgets::new(1024);
        let p = policy(1600); // batch_max 100
        let mut sizes = Vec::new();
        for _ in 0..12 {
            let now = 1_000_000u64;
            match budgets.take(&Check::new("r", &p, "k", 1), now) {
                Take::Lease(want) => {
                    sizes.push(want);
                    let d = budgets.settle(&Check::new("r", &p, "k", 1), now, now, grant(want));
                    assert!(d.allowed);
                    // Spend the rest of the slice.
                    for _ in 1..want {
                        assert!(matches!(
                            budgets.take(&Check::new("r", &p, "k", 1), now),
                            Take::Admitted(_)
                        ));
                    }
                }
                _ => panic!("an empty budget leases"),
            }
        }
        assert_eq!(sizes, [1, 2, 4, 8, 16, 32, 64, 100, 100, 100, 100, 100]);
    }

    #[test]
    fn concurrent_shortfalls_lease_only_what_they_need() {
        let budgets = Budgets::new(1024);
        let p = policy(1600);
        let now = 1_000_000u64;
        let Take::Lease(first) = budgets.take(&Check::new("r", &p, "k", 1), now) else {
            panic!()
        };
        budgets.settle(&Check::new("r", &p, "k", 1), now, now, grant(first));
        for _ in 1..first {
            budgets.take(&Check::new("r", &p, "k", 1), now);
        }
        let Take::Lease(big) = budgets.take(&Check::new("r", &p, "k", 1), now) else {
            panic!()
        };
        assert_eq!(big, 2);
        // While that lease is in flight, another check short of units asks
        // only for its own cost.
        assert!(matches!(
            budgets.take(&Check::new("r", &p, "k", 3), now),
            Take::Lease(3)
        ));
    }

    #[test]
    fn a_refusal_is_remembered_until_its_retry_time() {
        let budgets = Budgets::new(1024);
        let p = policy(10);
        let sent = 1_000_000u64;
        let refusal = Decision {
            allowed: false,
            limit: 10,
            remaining: 0,
            reset_after: Duration::from_secs(5),
            retry_after: Some(Duration::from_millis(200)),
            blocked: false,
            delay: Duration::ZERO,
        };
        let d = budgets.settle(
            &Check::new("r", &p, "k", 1),
            sent,
            sent,
            Leased::Refused(refusal),
        );
        assert!(!d.allowed);
        match budgets.take(&Check::new("r", &p, "k", 1), sent + 50_000) {
            Take::Refused(d) => assert_eq!(d.retry_after, Some(Duration::from_millis(150))),
            _ => panic!("the refusal holds"),
        }
        assert!(matches!(
            budgets.take(&Check::new("r", &p, "k", 1), sent + 250_000),
            Take::Lease(_)
        ));
    }

    #[test]
    fn units_lapse_and_a_new_policy_starts_afresh() {
        let budgets = Budgets::new(1024);
        let p = policy(1600);
        let sent = 1_000_000u64;
        budgets.settle(
            &Check::new("r", &p, "k", 1),
            sent,
            sent,
            Leased::Granted {
                granted: 10,
                valid: Duration::from_millis(100),
                remaining: 0,
                reset_after: Duration::from_millis(100),
            },
        );
        assert!(matches!(
            budgets.take(&Check::new("r", &p, "k", 1), sent),
            Take::Admitted(_)
        ));
        // Lapsed with 8 unspent: the next slice is what was spent (2).
        assert!(matches!(
            budgets.take(&Check::new("r", &p, "k", 1), sent + 150_000),
            Take::Lease(2)
        ));
        budgets.lease_failed("r", "k");
        let other = policy(3200);
        assert!(matches!(
            budgets.take(&Check::new("r", &other, "k", 1), sent),
            Take::Lease(1)
        ));
    }

    #[test]
    fn a_full_table_makes_room() {
        let budgets = Budgets::new(SHARDS);
        let p = policy(1600);
        let now = 1_000_000u64;
        for i in 0..200 {
            budgets.settle(
                &Check::new("r", &p, &format!("k{i}"), 1),
                now,
                now,
                grant(5),
            );
        }
        assert!(budgets.len() <= 2 * SHARDS, "{}", budgets.len());
    }

    #[test]
    fn a_grant_lapsed_on_arrival_still_admits_the_check_that_asked() {
        let budgets = Budgets::new(1024);
        let p = policy(1600);
        let sent = 1_000_000u64;
        // Leased 100 µs before its window ended; the answer came 300 µs
        // after the call left.
        let d = budgets.settle(
            &Check::new("r", &p, "k", 1),
            sent,
            sent + 300,
            Leased::Granted {
                granted: 8,
                valid: Duration::from_micros(100),
                remaining: 50,
                reset_after: Duration::from_secs(60),
            },
        );
        assert!(d.allowed, "{d:?}");
        // The rest of the grant lapsed with its window: the next check
        // leases again.
        assert!(matches!(
            budgets.take(&Check::new("r", &p, "k", 1), sent + 400),
            Take::Lease(_)
        ));
    }

    #[test]
    fn given_back_units_admit_again() {
        let budgets = Budgets::new(1024);
        let p = policy(1600);
        let now = 1_000_000u64;
        let d = budgets.settle(&Check::new("r", &p, "k", 1), now, now, grant(1));
        assert!(d.allowed);
        budgets.give_back(&Check::new("r", &p, "k", 1), now);
        assert!(matches!(
            budgets.take(&Check::new("r", &p, "k", 1), now),
            Take::Admitted(_)
        ));
    }
}
