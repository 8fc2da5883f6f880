//! Concurrency limits: the memory store and the Redis store, driven through
//! the same generated sequences of acquire, release and renew on the same
//! manual clock, decide identically; never more than the limit is in
//! flight; every Redis key holding slots has a TTL; a cluster call spread
//! over hash slots takes all or nothing.

use std::time::Duration;

use floodgate_core::{ManualClock, Slot, SlotDecision, Store, Timestamp};
use floodgate_testkit::{shared_redis_url, unique_prefix};
use proptest::prelude::*;

use crate::support::{
    START_US, clock_config, keys_under, manual_clock, memory_on_clock, raw_connection,
};

const KEYS: [&str; 2] = ["ip:192.0.2.1", "header:x-api-key:{a}%b"];
const RULES: [(&str, u64, u64); 2] = [("two", 2, 3_000_000), ("three", 3, 1_000_000)];

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    /// (rule, key) pairs for request `id`.
    Acquire(u8, Vec<(usize, usize)>),
    Release(u8, Vec<(usize, usize)>),
    Renew(u8, Vec<(usize, usize)>),
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Advanced,
    Acquired(Vec<SlotDecision>),
    Released,
    Renewed(Vec<bool>),
}

fn slots_of<'a>(ids: &'a [String], id: u8, pairs: &[(usize, usize)]) -> Vec<Slot<'a>> {
    pairs
        .iter()
        .map(|&(r, k)| Slot {
            rule: RULES[r].0,
            key: KEYS[k],
            limit: RULES[r].1,
            lease: Duration::from_micros(RULES[r].2),
            id: &ids[id as usize],
        })
        .collect()
}

async fn run<S: Store>(store: &S, clock: &ManualClock, ops: &[Op]) -> Vec<Outcome> {
    clock.set(Timestamp::from_micros(START_US));
    let ids: Vec<String> = (0..8).map(|i| format!("req-{i}")).collect();
    let mut out = Vec::new();
    for op in ops {
        out.push(match op {
            Op::Advance(us) => {
                clock.advance(Duration::from_micros(*us));
                Outcome::Advanced
            }
            Op::Acquire(id, pairs) => {
                Outcome::Acquired(store.acquire(&slots_of(&ids, *id, pairs)).await.unwrap())
            }
            Op::Release(id, pairs) => {
                store.release(&slots_of(&ids, *id, pairs)).await.unwrap();
                Outcome::Released
            }
            Op::Renew(id, pairs) => {
                Outcome::Renewed(store.renew(&slots_of(&ids, *id, pairs)).await.unwrap())
            }
        });
    }
    out
}

fn op_strategy() -> impl Strategy<Value = Op> {
    // Distinct (rule, key) pairs, one to three of them.
    let pairs = prop::sample::subsequence(vec![(0, 0), (0, 1), (1, 0), (1, 1)], 1..=3);
    prop_oneof![
        5 => (0u8..8, pairs.clone()).prop_map(|(id, p)| Op::Acquire(id, p)),
        2 => (0u8..8, pairs.clone()).prop_map(|(id, p)| Op::Release(id, p)),
        2 => (0u8..8, pairs).prop_map(|(id, p)| Op::Renew(id, p)),
        3 => prop_oneof![Just(1u64), 1u64..=500_000, 500_000u64..=3_500_000].prop_map(Op::Advance),
    ]
}

/// Runs `ops` on both stores and compares; checks the invariants.
async fn assert_slots_conform(ops: &[Op]) {
    let clock = manual_clock();
    let memory = run(&memory_on_clock(&clock), &clock, ops).await;
    let prefix = unique_prefix("slots");
    let store =
        floodgate_redis::RedisStore::new(clock_config(&shared_redis_url(), &prefix, &clock))
            .unwrap();
    let redis = run(&store, &clock, ops).await;
    for (i, (m, r)) in memory.iter().zip(&redis).enumerate() {
        assert_eq!(
            m, r,
            "step {i} ({:?}) differs: memory left, redis right",
            ops[i]
        );
    }
    for o in &memory {
        if let Outcome::Acquired(ds) = o {
            for d in ds {
                assert!(d.in_flight <= d.limit, "over the limit: {d:?}");
            }
        }
    }
    let mut conn = raw_connection(&shared_redis_url()).await;
    for key in keys_under(&mut conn, &prefix).await {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn slots_decide_like_memory_never_exceed_the_limit_and_always_expire(
        ops in prop::collection::vec(op_strategy(), 1..=40)
    ) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(assert_slots_conform(&ops));
    }
}

/// A scripted run: the limit holds, a release frees a slot, a lapsed lease
/// frees one, renewing keeps one, and a refused call takes nothing.
#[tokio::test]
async fn a_scripted_run_takes_gives_back_and_lapses() {
    let a = |id: u8| Op::Acquire(id, vec![(0, 0)]);
    let ops = vec![
        a(0),
        a(1),
        a(2),                                 // refused: 2 in flight
        Op::Acquire(3, vec![(1, 0), (0, 0)]), // refused whole: rule two is full
        Op::Release(0, vec![(0, 0)]),
        a(2), // admitted now
        Op::Advance(2_000_000),
        Op::Renew(1, vec![(0, 0)]), // kept
        Op::Advance(1_500_000),     // 2's lease lapsed, 1's renewed one lives
        a(3),
        a(4),                       // refused
        Op::Renew(2, vec![(0, 0)]), // lapsed: false
    ];
    assert_slots_conform(&ops).await;
    let clock = manual_clock();
    let out = run(&memory_on_clock(&clock), &clock, &ops).await;
    let admitted: Vec<bool> = out
        .iter()
        .filter_map(|o| match o {
            Outcome::Acquired(ds) => Some(ds.iter().all(|d| d.allowed)),
            _ => None,
        })
        .collect();
    assert_eq!(admitted, [true, true, false, false, true, true, false]);
    assert_eq!(out.last(), Some(&Outcome::Renewed(vec![false])));
}
