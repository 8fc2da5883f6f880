//! Bytes per key that [`RedisStore`] costs in Redis, per algorithm.
//!
//! ```text
//! cargo bench -p floodgate-redis --bench redis_bytes_per_key
//! ```
//!
//! On a private, empty `redis-server` (started for the run, persistence
//! off): for each case, `FLUSHALL`, read `used_memory`, write one state key
//! for each of [`KEYS`] distinct clients through `RedisStore::check` (rule
//! `api`, client keys `ip:10.x.y.z`, 100 per hour, so nothing expires while
//! measuring), read `used_memory` again. Prints the delta over the number of
//! keys (what a key really costs: the value, the key name, the dict entries
//! and the entry in the expiry dict, and the dicts' growth) beside the
//! average `MEMORY USAGE ... SAMPLES 0` of a few random keys (the key's own
//! allocations only). The sliding log is measured with 1 and with 100
//! timestamps per key: its state grows with the limit.
//!
//! Under `cargo test` (no `--bench` argument) only 100 keys per case.

#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use floodgate_core::{Algorithm, Check, Policy, Store};
use floodgate_redis::{RedisConfig, RedisStore};
use floodgate_testkit::RedisServer;
use redis::aio::MultiplexedConnection;

/// Distinct client keys written per case.
const KEYS: usize = 10_000;

/// Tasks writing at once.
const WRITERS: usize = 64;

/// Random keys whose `MEMORY USAGE` is averaged.
const SAMPLES: usize = 8;

/// One measured case: a policy and the cost of the one check per key.
struct Case {
    label: &'static str,
    policy: Policy,
    cost: u64,
}

fn cases() -> Vec<Case> {
    let hour = Duration::from_secs(3600);
    let policy = |a: Algorithm| Policy::new(a, 100, hour).unwrap();
    let mut all: Vec<Case> = [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket,
    ]
    .into_iter()
    .map(|a| Case {
        label: a.name(),
        policy: policy(a),
        cost: 1,
    })
    .collect();
    all.push(Case {
        label: "sliding_log (1 entry)",
        policy: policy(Algorithm::SlidingLog),
        cost: 1,
    });
    all.push(Case {
        label: "sliding_log (100 entries)",
        policy: policy(Algorithm::SlidingLog),
        cost: 100,
    });
    all
}

fn client_key(i: usize) -> String {
    format!("ip:10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

async fn used_memory(conn: &mut MultiplexedConnection) -> i64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// Writes one state key per client, `WRITERS` at a time.
async fn fill(store: &RedisStore, case: &Case, keys: usize) {
    let policy = Arc::new(case.policy.clone());
    let cost = case.cost;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            let policy = Arc::clone(&policy);
            tokio::spawn(async move {
                for i in (w..keys).step_by(WRITERS) {
                    let key = client_key(i);
                    let d = store
                        .check(&[Check::new("api", &policy, &key, cost)])
                        .await
                        .unwrap();
                    assert!(d[0].allowed);
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
}

/// Average `MEMORY USAGE` of random keys, and one key's name.
async fn sampled_usage(conn: &mut MultiplexedConnection) -> (u64, String) {
    let mut total = 0;
    let mut name = String::new();
    for _ in 0..SAMPLES {
        let key: String = redis::cmd("RANDOMKEY").query_async(conn).await.unwrap();
        let usage: u64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(conn)
            .await
            .unwrap();
        total += usage;
        name = key;
    }
    (total / SAMPLES as u64, name)
}

async fn measure(url: String, keys: usize) {
    // Speed is not measured here: a timeout no loaded machine reaches.
    let config = RedisConfig::new(url.as_str()).with_timeout(Duration::from_secs(5));
    let store = RedisStore::connect(config).await.unwrap();
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let flush = redis::cmd("FLUSHALL");
    // Load the script and grow the connection buffers before any baseline.
    for case in cases() {
        flush.query_async::<()>(&mut conn).await.unwrap();
        fill(&store, &case, WRITERS).await;
    }

    println!("Redis bytes per key, {keys} keys per case");
    println!(
        "{:<28}{:>22}{:>26}   sample key",
        "", "used_memory delta / N", "MEMORY USAGE (average)"
    );
    for case in cases() {
        flush.query_async::<()>(&mut conn).await.unwrap();
        let before = used_memory(&mut conn).await;
        fill(&store, &case, keys).await;
        let after = used_memory(&mut conn).await;
        let count: usize = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
        assert_eq!(count, keys, "one state key per client, nothing else");
        let (usage, sample) = sampled_usage(&mut conn).await;
        let per_key = (after - before) as f64 / keys as f64;
        println!("{:<28}{per_key:>22.1}{usage:>26}   {sample}", case.label);
    }
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let keys = if measuring { KEYS } else { 100 };
    let server = RedisServer::start();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(measure(server.url(), keys));
}
