//! The memory store as its users see it: bounded memory, exact counting under
//! concurrency, all-or-nothing batches, blocks, resets and errors.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use floodgate_core::{
    Algorithm, BlockSource, Check, Error, ManualClock, MemoryStore, Policy, Store, Timestamp,
};

/// A start time aligned to every window used here.
const T0: u64 = 1_700_000_000_000_000;

fn store(max_keys: usize) -> (MemoryStore, ManualClock) {
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    (
        MemoryStore::with_clock(max_keys, Arc::new(clock.clone())),
        clock,
    )
}

fn policy(algorithm: Algorithm, limit: u64, window: Duration) -> Policy {
    Policy::new(algorithm, limit, window).unwrap()
}

fn admits(store: &MemoryStore, rule: &str, policy: &Policy, key: &str, cost: u64) -> bool {
    store
        .check_one(&Check::new(rule, policy, key, cost))
        .unwrap()
        .allowed
}

#[test]
fn ten_times_max_keys_distinct_keys_stay_within_max_keys() {
    for algorithm in Algorithm::ALL {
        let (store, clock) = store(1_000);
        let p = policy(algorithm, 5, Duration::from_secs(60));
        for i in 0..10_000 {
            assert!(admits(&store, "flood", &p, &format!("ip:{i}"), 1));
            if i % 1_000 == 0 {
                clock.advance(Duration::from_millis(1));
            }
        }
        assert!(
            store.len() <= store.max_keys(),
            "{algorithm}: {}",
            store.len()
        );
        assert!(store.max_keys() <= 1_000);
    }
}

#[test]
fn expired_state_is_reclaimed_before_live_keys_are_evicted() {
    let (store, clock) = store(100_000);
    let short = policy(Algorithm::FixedWindow, 10, Duration::from_millis(1));
    let long = policy(Algorithm::SlidingLog, 10, Duration::from_secs(3600));
    // Fill the store with state that is about to expire.
    for i in 0..store.max_keys() {
        admits(&store, "short", &short, &format!("old:{i}"), 1);
    }
    clock.advance(Duration::from_secs(1));
    // Active keys, then a quarter of the store's worth of new ones: the room
    // comes from the expired state, not from the active keys.
    for i in 0..100 {
        assert!(admits(&store, "long", &long, &format!("active:{i}"), 3));
    }
    for i in 0..store.max_keys() / 4 {
        admits(&store, "long", &long, &format!("new:{i}"), 1);
    }
    assert!(store.len() <= store.max_keys());
    for i in 0..100 {
        let d = store.peek_now("long", &long, &format!("active:{i}"));
        assert_eq!(d.remaining, 7, "active:{i} lost its count");
    }
}

/// Guards a fixed bug: a full shard evicted every entry sharing the soonest
/// expiry instead of an eighth, so with fixed windows (every key of a window
/// expires at once) one new key wiped the counters of a whole shard.
#[test]
fn a_full_store_evicts_an_eighth_even_when_every_key_expires_together() {
    // 16 keys: a single shard.
    let (store, _clock) = store(16);
    assert_eq!(store.max_keys(), 16);
    let p = policy(Algorithm::FixedWindow, 1, Duration::from_secs(60));
    for i in 0..16 {
        assert!(admits(&store, "r", &p, &format!("k{i}"), 1));
    }
    assert!(admits(&store, "r", &p, "newcomer", 1));
    assert_eq!(store.len(), 15);
    let still_counted = (0..16)
        .filter(|i| store.peek_now("r", &p, &format!("k{i}")).remaining == 0)
        .count();
    assert_eq!(still_counted, 14);
}

#[test]
fn eight_threads_on_one_key_admit_exactly_the_limit() {
    const LIMIT: u64 = 1_000;
    for algorithm in Algorithm::ALL {
        let (store, _clock) = store(1_000);
        let p = policy(algorithm, LIMIT, Duration::from_secs(60));
        let admitted = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..500 {
                        if admits(&store, "hot", &p, "one-key", 1) {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.into_inner(), LIMIT, "{algorithm}");
    }
}

#[test]
fn concurrent_batches_over_shared_keys_admit_exactly_the_limit() {
    const LIMIT: u64 = 300;
    let (store, _clock) = store(10_000);
    let per_key = policy(Algorithm::SlidingLog, LIMIT, Duration::from_secs(60));
    let global = policy(Algorithm::TokenBucket, 10 * LIMIT, Duration::from_secs(60));
    let admitted = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..8 {
            let (store, per_key, global, admitted) = (&store, &per_key, &global, &admitted);
            s.spawn(move || {
                for i in 0..200 {
                    // Threads lock the two shards in opposite orders of naming.
                    let (a, b) = if (t + i) % 2 == 0 {
                        ("a", "b")
                    } else {
                        ("b", "a")
                    };
                    let checks = [
                        Check::new("per-key", per_key, a, 1),
                        Check::new("global", global, "all", 1),
                        Check::new("per-key", per_key, b, 1),
                    ];
                    let d = store.check_now(&checks).unwrap();
                    if d.iter().all(|d| d.allowed) {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    // Every admitted batch took one unit from both "a" and "b".
    assert_eq!(admitted.into_inner(), LIMIT);
    for key in ["a", "b"] {
        assert_eq!(store.peek_now("per-key", &per_key, key).remaining, 0);
    }
    assert_eq!(
        store.peek_now("global", &global, "all").remaining,
        10 * LIMIT - LIMIT
    );
}

#[test]
fn a_refused_rule_means_no_rule_of_the_batch_consumed_quota() {
    for algorithm in Algorithm::ALL {
        let (store, _clock) = store(1_000);
        let roomy = policy(algorithm, 10, Duration::from_secs(60));
        let tight = policy(algorithm, 1, Duration::from_secs(60));
        assert!(admits(&store, "tight", &tight, "k", 1));
        let checks = [
            Check::new("roomy", &roomy, "k", 3),
            Check::new("tight", &tight, "k", 1),
        ];
        let d = store.check_now(&checks).unwrap();
        assert!(d[0].allowed && !d[1].allowed, "{algorithm}: {d:?}");
        // The roomy rule's decision said it would admit; nothing was taken.
        assert_eq!(store.peek_now("roomy", &roomy, "k").remaining, 10);
        // The same batch without the tight rule takes its cost.
        let d = store.check_now(&checks[..1]).unwrap();
        assert_eq!(d[0].remaining, 7);
    }
}

#[test]
fn shadow_checks_never_veto_and_never_block() {
    let (store, _clock) = store(1_000);
    let enforced = policy(Algorithm::FixedWindow, 10, Duration::from_secs(60));
    let watched = policy(Algorithm::FixedWindow, 1, Duration::from_secs(60))
        .with_block_for(Duration::from_secs(600))
        .unwrap();
    let checks = [
        Check::new("enforced", &enforced, "k", 1),
        Check::new("watched", &watched, "k", 1).shadow(),
    ];
    for i in 0..3 {
        let d = store.check_now(&checks).unwrap();
        assert!(d[0].allowed, "a shadow refusal vetoed the request");
        assert_eq!(d[1].allowed, i == 0);
        assert!(!d[1].blocked);
        assert_eq!(d[0].remaining, 10 - (i + 1));
    }
    assert!(store.blocks_now().is_empty());
    // The same rule enforced does block.
    let d = store
        .check_one(&Check::new("watched", &watched, "k", 1))
        .unwrap();
    assert!(d.blocked);
    assert_eq!(store.blocks_now().len(), 1);
}

#[test]
fn manual_blocks_are_added_listed_replaced_removed_and_expire() {
    let (store, clock) = store(1_000);
    let b = store.add_block_now("ip:203.0.113.7", Duration::from_secs(600), "scraping");
    assert_eq!(b.source, BlockSource::Manual);
    assert_eq!(b.until, Timestamp::from_micros(T0 + 600_000_000));
    store.add_block_now("ip:198.51.100.0/24", Duration::from_secs(60), "abuse");
    assert_eq!(store.blocks_now().len(), 2);
    // A new manual block of the same target replaces the old one.
    store.add_block_now(
        "ip:203.0.113.7",
        Duration::from_secs(1200),
        "still scraping",
    );
    let blocks = store.blocks_now();
    assert_eq!(blocks.len(), 2);
    let b = blocks
        .iter()
        .find(|b| b.target == "ip:203.0.113.7")
        .unwrap();
    assert_eq!(
        (b.reason.as_str(), b.until),
        ("still scraping", Timestamp::from_micros(T0 + 1_200_000_000))
    );

    assert!(store.remove_block_now("ip:203.0.113.7"));
    assert!(!store.remove_block_now("ip:203.0.113.7"));
    assert_eq!(store.blocks_now().len(), 1);

    clock.advance(Duration::from_secs(60));
    assert!(store.blocks_now().is_empty(), "a block outlived its ttl");
    assert!(!store.remove_block_now("ip:198.51.100.0/24"));
}

#[test]
fn a_penalty_is_listed_with_its_rule_and_lifted_by_remove_block() {
    let (store, clock) = store(1_000);
    let p = policy(Algorithm::FixedWindow, 2, Duration::from_secs(10))
        .with_block_for(Duration::from_secs(900))
        .unwrap();
    let check = Check::new("login", &p, "ip:192.0.2.1", 1);
    assert!(store.check_one(&check).unwrap().allowed);
    assert!(store.check_one(&check).unwrap().allowed);
    let over = store.check_one(&check).unwrap();
    assert!(!over.allowed && over.blocked);
    assert_eq!(over.retry_after, Some(Duration::from_secs(900)));

    let blocks = store.blocks_now();
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].target, "ip:192.0.2.1");
    assert_eq!(blocks[0].source, BlockSource::Rule("login".into()));
    assert_eq!(blocks[0].until, Timestamp::from_micros(T0 + 900_000_000));

    // The window has room again, but the penalty holds.
    clock.advance(Duration::from_secs(10));
    let d = store.check_one(&check).unwrap();
    assert!(!d.allowed && d.blocked);
    assert!(store.peek_now("login", &p, "ip:192.0.2.1").blocked);

    assert!(store.remove_block_now("ip:192.0.2.1"));
    assert!(store.blocks_now().is_empty());
    assert!(store.check_one(&check).unwrap().allowed);
}

#[test]
fn penalties_under_a_flood_of_distinct_keys_stay_within_max_keys() {
    let (store, _clock) = store(1_000);
    let p = policy(Algorithm::TokenBucket, 1, Duration::from_secs(60))
        .with_block_for(Duration::from_secs(3600))
        .unwrap();
    for i in 0..10_000 {
        let key = format!("ip:{i}");
        admits(&store, "r", &p, &key, 1);
        assert!(!admits(&store, "r", &p, &key, 1));
    }
    assert!(store.blocks_now().len() <= store.max_keys());
}

#[test]
fn reset_forgets_counters_and_penalty() {
    let (store, _clock) = store(1_000);
    let p = policy(Algorithm::SlidingLog, 1, Duration::from_secs(60))
        .with_block_for(Duration::from_secs(60))
        .unwrap();
    assert!(!store.reset_now("r", "k"));
    assert!(admits(&store, "r", &p, "k", 1));
    assert!(!admits(&store, "r", &p, "k", 1));
    assert_eq!(store.blocks_now().len(), 1);
    assert!(store.reset_now("r", "k"));
    assert!(store.blocks_now().is_empty());
    assert!(admits(&store, "r", &p, "k", 1));
    // Only that rule's state went.
    let other = policy(Algorithm::SlidingLog, 1, Duration::from_secs(60));
    assert!(admits(&store, "other", &other, "k", 1));
    assert!(store.reset_now("r", "k"));
    assert!(!admits(&store, "other", &other, "k", 1));
}

#[test]
fn peek_reports_without_taking() {
    let (store, clock) = store(1_000);
    let p = policy(Algorithm::FixedWindow, 3, Duration::from_secs(10));
    let fresh = store.peek_now("r", &p, "k");
    assert!(fresh.allowed);
    assert_eq!((fresh.remaining, fresh.limit), (3, 3));
    assert_eq!(fresh.reset_after, Duration::ZERO);
    assert!(admits(&store, "r", &p, "k", 2));
    clock.advance(Duration::from_secs(4));
    let d = store.peek_now("r", &p, "k");
    assert!(d.allowed);
    assert_eq!((d.remaining, d.reset_after), (1, Duration::from_secs(6)));
    assert_eq!(store.peek_now("r", &p, "k"), d, "peek took quota");
    assert!(admits(&store, "r", &p, "k", 1));
    // Nothing left: not allowed, and it says when one unit fits again.
    let full = store.peek_now("r", &p, "k");
    assert!(!full.allowed);
    assert_eq!(full.remaining, 0);
    assert_eq!(full.retry_after, Some(Duration::from_secs(6)));
}

#[test]
fn zero_and_oversized_costs_are_errors_not_decisions() {
    let (store, _clock) = store(1_000);
    for algorithm in Algorithm::ALL {
        let p = policy(algorithm, 5, Duration::from_secs(1));
        let zero = store.check_one(&Check::new("r", &p, "k", 0));
        assert!(matches!(zero, Err(Error::ZeroCost { ref rule }) if rule == "r"));
        let big = store.check_one(&Check::new("r", &p, "k", 6));
        assert!(matches!(
            big,
            Err(Error::InsufficientCapacity {
                cost: 6,
                capacity: 5,
                ..
            })
        ));
        assert!(!big.unwrap_err().is_retryable());
        // In a batch, one bad check fails the whole batch and takes nothing.
        let ok = Check::new("ok", &p, "k", 1);
        assert!(store.check_now(&[ok, Check::new("r", &p, "k", 0)]).is_err());
        assert_eq!(store.peek_now("ok", &p, "k").remaining, 5);
    }
    let tb = policy(Algorithm::TokenBucket, 100, Duration::from_secs(1))
        .with_burst(10)
        .unwrap();
    assert!(matches!(
        store.check_one(&Check::new("r", &tb, "k", 11)),
        Err(Error::InsufficientCapacity { capacity: 10, .. })
    ));
    assert!(
        store
            .check_one(&Check::new("r", &tb, "k", 10))
            .unwrap()
            .allowed
    );
    assert!(store.is_empty() || store.len() == 1);
}

/// The memory store's futures complete on first poll: no runtime needed.
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(f).poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the memory store waited"),
    }
}

#[test]
fn the_store_trait_answers_like_the_synchronous_calls() {
    let (store, _clock) = store(1_000);
    let p = policy(Algorithm::TokenBucket, 2, Duration::from_secs(10));
    let checks = [Check::new("r", &p, "k", 1)];
    assert_eq!(ready(store.check(&checks)).unwrap()[0].remaining, 1);
    assert_eq!(ready(store.peek("r", &p, "k")).unwrap().remaining, 1);
    ready(store.add_block("ip:192.0.2.9", Duration::from_secs(5), "test")).unwrap();
    assert_eq!(ready(store.blocks()).unwrap().len(), 1);
    assert!(ready(store.remove_block("ip:192.0.2.9")).unwrap());
    assert!(ready(store.reset("r", "k")).unwrap());
    assert!(ready(store.ping()).is_ok());
}

/// Guards a fixed bug: every check of a batch was decided against the state
/// before the batch, so a (rule, key) named twice spent the same quota twice
/// (limit 1, two checks: both admitted, count 2). Such a batch is now refused
/// as an error, by both stores alike, and spends nothing.
#[test]
fn a_key_named_twice_in_a_batch_is_an_error() {
    for algorithm in Algorithm::ALL {
        let (store, _clock) = store(1_000);
        let p = policy(algorithm, 3, Duration::from_secs(60));
        let twice = [
            Check::new("r", &p, "k", 2),
            Check::new("other", &p, "k", 1),
            Check::new("r", &p, "k", 2),
        ];
        match store.check_now(&twice) {
            Err(Error::DuplicateCheck { rule, key }) => {
                assert_eq!((rule.as_str(), key.as_str()), ("r", "k"))
            }
            other => panic!("{algorithm}: expected DuplicateCheck, got {other:?}"),
        }
        assert_eq!(store.peek_now("r", &p, "k").remaining, 3, "{algorithm}");
        assert_eq!(store.peek_now("other", &p, "k").remaining, 3, "{algorithm}");
        // The same key under another rule, or another key under the same
        // rule, is no repeat.
        let distinct = [
            Check::new("r", &p, "k", 1),
            Check::new("other", &p, "k", 1),
            Check::new("r", &p, "k2", 2),
        ];
        let d = store.check_now(&distinct).unwrap();
        assert!(d.iter().all(|d| d.allowed), "{algorithm}: {d:?}");
        assert_eq!(store.peek_now("r", &p, "k").remaining, 2, "{algorithm}");
    }
}
