//! Batched consistency (`Policy::with_batched`): four instances leasing
//! slices of one Redis (and of a cluster) admit a hot key's limit and never
//! more, a key spread thinly over the instances still gets all of it,
//! quota held by instances that stop is bounded by their slices, leased
//! units never outlive their window, a token bucket stays within one slice
//! of its bound over every span, and far fewer calls reach Redis than
//! decisions are made.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use floodgate_core::{Algorithm, Check, Clock, Policy, Store};
use floodgate_redis::{RedisConfig, RedisStore};
use floodgate_testkit::topology::RedisCluster;
use floodgate_testkit::{RedisServer, shared_redis_url, unique_prefix};

use crate::support::{
    MANUAL_CLOCK_TTL_MARGIN, RELAXED_TIMEOUT, clock_config, command_stats_in, manual_clock,
};

const INSTANCES: usize = 4;
const LIMIT: u64 = 400;
const REQUESTS: usize = 2_000;

fn batched(algorithm: Algorithm, limit: u64, window: Duration) -> Policy {
    Policy::new(algorithm, limit, window)
        .unwrap()
        .with_batched()
        .unwrap()
}

/// The batched algorithms, each with `LIMIT` per minute.
fn policies() -> Vec<Policy> {
    [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket,
    ]
    .into_iter()
    .map(|a| batched(a, LIMIT, Duration::from_secs(60)))
    .collect()
}

fn instances(config: impl Fn() -> RedisConfig) -> Vec<RedisStore> {
    (0..INSTANCES)
        .map(|_| RedisStore::new(config()).unwrap())
        .collect()
}

/// `REQUESTS` checks of one key, sent concurrently through every instance
/// (16 tasks each, round robin), the clock standing still; how many were
/// admitted.
async fn hot_key(stores: &[RedisStore], policy: &Policy, key: &str) -> u64 {
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let per_task = REQUESTS / (stores.len() * 16);
    for store in stores {
        for _ in 0..16 {
            let (store, policy, key, admitted) = (
                store.clone(),
                policy.clone(),
                key.to_owned(),
                admitted.clone(),
            );
            tasks.push(tokio::spawn(async move {
                for _ in 0..per_task {
                    let d = store
                        .check(&[Check::new("hot", &policy, &key, 1)])
                        .await
                        .unwrap();
                    if d[0].allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    admitted.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_admit_a_hot_keys_whole_limit_and_never_more() {
    let url = shared_redis_url();
    for policy in policies() {
        let clock = manual_clock();
        let prefix = unique_prefix("batched-hot");
        let stores = instances(|| clock_config(&url, &prefix, &clock));
        let admitted = hot_key(&stores, &policy, "ip:198.51.100.7").await;
        // Every instance kept sending after Redis ran out, so every slice
        // was spent: exactly the limit.
        assert_eq!(
            admitted,
            LIMIT,
            "{}: {admitted} of {REQUESTS} admitted",
            policy.algorithm()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_spread_thinly_over_the_instances_gets_its_whole_limit() {
    // A Redis of its own: the calls it counts are this test's alone.
    let redis = RedisServer::start();
    for policy in policies() {
        let clock = manual_clock();
        let prefix = unique_prefix("batched-thin");
        let stores = instances(|| clock_config(&redis.url(), &prefix, &clock));
        redis.command(&["config", "resetstat"]).unwrap();
        let mut admitted = 0;
        // One request at a time, each through the next instance, 10 ms
        // apart: 600 requests in 6 s, well inside one window.
        for i in 0..600 {
            let d = stores[i % INSTANCES]
                .check(&[Check::new("thin", &policy, "ip:198.51.100.8", 1)])
                .await
                .unwrap();
            admitted += u64::from(d[0].allowed);
            clock.advance(Duration::from_millis(10));
        }
        let algorithm = policy.algorithm();
        // One call at a time, none shared: without batching, 600 calls.
        let info = redis.command(&["info", "commandstats"]).unwrap();
        let (calls, _, _) = command_stats_in(&info, "fcall");
        assert!(calls < 100, "{algorithm}: {calls} calls for 600 decisions");
        if algorithm == Algorithm::TokenBucket {
            // 6 s earn 40 more units (400 per minute).
            assert!(
                (LIMIT..=LIMIT + 40 + policy.batch_max()).contains(&admitted),
                "{algorithm}: {admitted}"
            );
        } else {
            assert_eq!(admitted, LIMIT, "{algorithm}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_lost_to_instances_that_stop_is_bounded_by_their_slices() {
    let url = shared_redis_url();
    for policy in policies() {
        let clock = manual_clock();
        let prefix = unique_prefix("batched-stop");
        let stores = instances(|| clock_config(&url, &prefix, &clock));
        let key = "ip:198.51.100.9";
        let mut admitted = 0;
        // Every instance warms up (its slices grow), then only the first
        // keeps sending.
        for round in 0..40 {
            for (i, store) in stores.iter().enumerate() {
                if round >= 20 && i > 0 {
                    continue;
                }
                let d = store
                    .check(&[Check::new("stop", &policy, key, 1)])
                    .await
                    .unwrap();
                admitted += u64::from(d[0].allowed);
            }
        }
        for _ in 0..LIMIT {
            let d = stores[0]
                .check(&[Check::new("stop", &policy, key, 1)])
                .await
                .unwrap();
            admitted += u64::from(d[0].allowed);
        }
        let bound = (INSTANCES as u64 - 1) * policy.batch_max();
        assert!(admitted <= LIMIT, "{}: {admitted}", policy.algorithm());
        assert!(
            admitted >= LIMIT - bound,
            "{}: {admitted}, bound {bound}",
            policy.algorithm()
        );
        // And the stopped instances did hold some: quota was lost.
        assert!(admitted < LIMIT, "{}: {admitted}", policy.algorithm());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_units_never_outlive_their_window() {
    let url = shared_redis_url();
    for algorithm in [Algorithm::FixedWindow, Algorithm::SlidingWindow] {
        let policy = batched(algorithm, LIMIT, Duration::from_secs(60));
        let clock = manual_clock();
        let prefix = unique_prefix("batched-window");
        let stores = instances(|| clock_config(&url, &prefix, &clock));
        let key = "ip:198.51.100.10";
        // Into the last second of a window, then enough requests that every
        // instance holds a slice.
        let now_us = clock.now().as_micros();
        let to_end = 60_000_000 - now_us % 60_000_000;
        clock.advance(Duration::from_micros(to_end - 1_000_000));
        for _ in 0..30 {
            for store in &stores {
                store
                    .check(&[Check::new("window", &policy, key, 1)])
                    .await
                    .unwrap();
            }
        }
        // The next window: the slices leased in the last lapse; what the
        // next window admits is its own limit at most (a sliding window
        // also weighs the last one: less).
        clock.advance(Duration::from_secs(1));
        let mut admitted = 0;
        for _ in 0..(LIMIT as usize) {
            for store in &stores {
                let d = store
                    .check(&[Check::new("window", &policy, key, 1)])
                    .await
                    .unwrap();
                admitted += u64::from(d[0].allowed);
            }
        }
        assert!(admitted <= LIMIT, "{algorithm}: {admitted}");
        if algorithm == Algorithm::FixedWindow {
            assert_eq!(admitted, LIMIT, "{algorithm}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_bucket_stays_within_one_slice_of_its_bound_over_every_span() {
    let url = shared_redis_url();
    // 100 per second (a unit every 10 ms), burst 100: batch_max 6.
    let policy = batched(Algorithm::TokenBucket, 100, Duration::from_secs(1))
        .with_burst(100)
        .unwrap();
    let policy = policy.with_batched().unwrap();
    let clock = manual_clock();
    let prefix = unique_prefix("batched-gcra");
    let stores = instances(|| clock_config(&url, &prefix, &clock));
    let mut times = Vec::new();
    // 3 s of every instance asking every millisecond.
    for ms in 0..3_000u64 {
        for store in &stores {
            let d = store
                .check(&[Check::new("gcra", &policy, "ip:198.51.100.11", 1)])
                .await
                .unwrap();
            if d[0].allowed {
                times.push(ms);
            }
        }
        clock.advance(Duration::from_millis(1));
    }
    // Over any span of `d` ms the bucket allows burst + d / 10 units; the
    // instances together at most batch_max more.
    let slack = policy.batch_max();
    for span in [1u64, 10, 50, 100, 500, 1_000, 2_000] {
        let mut worst = 0;
        for (i, &start) in times.iter().enumerate() {
            let n = times[i..].iter().take_while(|&&t| t < start + span).count() as u64;
            worst = worst.max(n);
        }
        let bound = 100 + span.div_ceil(10) + slack;
        assert!(
            worst <= bound,
            "{worst} admitted in {span} ms, bound {bound}"
        );
    }
    // And it admits about its rate: burst + 3 s × 100/s, less what slices
    // held at the end.
    let total = times.len() as u64;
    assert!(
        (400 - INSTANCES as u64 * slack..=400 + slack).contains(&total),
        "{total}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_by_an_exact_rule_gives_its_units_back() {
    let url = shared_redis_url();
    let clock = manual_clock();
    let store = RedisStore::new(clock_config(&url, &unique_prefix("batched-mix"), &clock)).unwrap();
    let wide = batched(Algorithm::FixedWindow, 100, Duration::from_secs(60));
    let narrow = Policy::new(Algorithm::FixedWindow, 3, Duration::from_secs(60)).unwrap();
    let key = "ip:198.51.100.12";
    let mut admitted = 0;
    for _ in 0..10 {
        let d = store
            .check(&[
                Check::new("wide", &wide, key, 1),
                Check::new("narrow", &narrow, key, 1),
            ])
            .await
            .unwrap();
        if d.iter().all(|d| d.allowed) {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3);
    // The wide rule was charged only for the 3 admitted requests: 97 more
    // go through it alone (some already leased, the rest leased now).
    let mut alone = 0;
    for _ in 0..120 {
        let d = store
            .check(&[Check::new("wide", &wide, key, 1)])
            .await
            .unwrap();
        alone += u64::from(d[0].allowed);
    }
    assert_eq!(alone, 97);
    // A batched refusal refuses the batch: the exact rule is not charged.
    let other = "ip:198.51.100.13";
    let tiny = batched(Algorithm::FixedWindow, 1, Duration::from_secs(60));
    let roomy = Policy::new(Algorithm::FixedWindow, 5, Duration::from_secs(60)).unwrap();
    for _ in 0..4 {
        store
            .check(&[
                Check::new("tiny", &tiny, other, 1),
                Check::new("roomy", &roomy, other, 1),
            ])
            .await
            .unwrap();
    }
    let left = store.peek("roomy", &roomy, other).await.unwrap();
    assert_eq!(left.remaining, 4, "only the first batch charged roomy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_lease_starts_the_penalty_block_and_lists_it() {
    let url = shared_redis_url();
    let clock = manual_clock();
    let store =
        RedisStore::new(clock_config(&url, &unique_prefix("batched-block"), &clock)).unwrap();
    let policy = Policy::new(Algorithm::SlidingWindow, 20, Duration::from_secs(60))
        .unwrap()
        .with_block_for(Duration::from_secs(600))
        .unwrap()
        .with_batched()
        .unwrap();
    let key = "ip:198.51.100.14";
    let mut refusals = Vec::new();
    for _ in 0..30 {
        let d = store
            .check(&[Check::new("login", &policy, key, 1)])
            .await
            .unwrap();
        if !d[0].allowed {
            refusals.push(d[0]);
        }
    }
    assert_eq!(refusals.len(), 10);
    assert!(refusals.iter().all(|d| d.blocked), "{refusals:?}");
    // The block runs its length: a retry 5 minutes on is still refused.
    clock.advance(Duration::from_secs(300));
    let d = store
        .check(&[Check::new("login", &policy, key, 1)])
        .await
        .unwrap();
    assert!(!d[0].allowed && d[0].blocked);
    let blocks = store.blocks().await.unwrap();
    assert!(
        blocks.iter().any(|b| b.target.contains("198.51.100.14")),
        "{blocks:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_on_a_cluster_admit_each_hot_keys_limit() {
    let cluster = RedisCluster::start(3);
    for policy in policies() {
        let clock = manual_clock();
        let prefix = unique_prefix("batched-cluster");
        let config = || {
            RedisConfig::cluster(cluster.urls())
                .with_prefix(&prefix)
                .with_timeout(RELAXED_TIMEOUT)
                .with_clock(Arc::new(clock.clone()))
                .with_ttl_margin(MANUAL_CLOCK_TTL_MARGIN)
        };
        let stores = instances(config);
        // Keys on different nodes, each hammered in turn.
        for key in ["ip:203.0.113.1", "ip:203.0.113.2", "global"] {
            let admitted = hot_key(&stores, &policy, key).await;
            assert_eq!(admitted, LIMIT, "{} {key}", policy.algorithm());
        }
    }
}
