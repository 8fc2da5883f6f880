//! What rules charged on the answer (`count_status`, `cost_header`) cost per
//! request against a plain rule of the same algorithm, on the memory store
//! and on Redis, measured in the same run.
//!
//! ```text
//! bench/answers.sh
//! cargo bench -p floodgate-redis --bench answers
//! ```
//!
//! Redis: `$FLOODGATE_BENCH_REDIS_URL` when set, else a private
//! `redis-server` started for the run.
//!
//! Three ways to decide one request, per algorithm:
//!
//! - `plain`: one `Store::check` that charges (a rule without either key);
//! - `asked`: one `Store::check` of a probe, never charged (a
//!   `count_status` rule whose answer does not count: a successful login);
//! - `asked+charged`: the probe, then one `Store::charge` (an answer that
//!   counts, or any answer under `cost_header`): two store calls;
//! - `slot`: a concurrency limit's slot taken (`Store::acquire`) and given
//!   back (`Store::release`): two store calls (the same for every
//!   algorithm; measured in each row for the pairing).
//!
//! Each is timed in rounds (memory: one thread, 20 000 requests a round;
//! Redis: 64 tasks sharing one store, 50 requests each a round), the three
//! in turn, 15 times over; the figure is the median over rounds of each
//! one's time over `plain`'s in the same turn, so load drifting during the
//! run skews neither. Quotas are far above what a run reaches: every
//! request is admitted. Keys: 10 000 client keys, walked in order.

#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use floodgate_core::{Algorithm, Check, MAX_LOG_LIMIT, MemoryStore, Policy, Store};
use floodgate_redis::{RedisConfig, RedisStore};

const KEYS: usize = 10_000;
const TURNS: usize = 15;
const MEMORY_ROUND: usize = 20_000;
const TASKS: usize = 64;
const REDIS_ROUND: usize = 50;

/// How one request is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Plain,
    Asked,
    AskedCharged,
    Slot,
}

const WAYS: [Way; 4] = [Way::Plain, Way::Asked, Way::AskedCharged, Way::Slot];

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Plain => "plain",
            Way::Asked => "asked",
            Way::AskedCharged => "asked+charged",
            Way::Slot => "slot",
        }
    }
}

/// A quota no run reaches.
fn admitting(algorithm: Algorithm) -> Policy {
    match algorithm {
        Algorithm::TokenBucket => Policy::new(algorithm, 1_000_000, Duration::from_secs(1))
            .and_then(|p| p.with_burst(1_000_000_000)),
        Algorithm::SlidingLog => Policy::new(algorithm, MAX_LOG_LIMIT, Duration::from_millis(1)),
        _ => Policy::new(algorithm, 1_000_000_000, Duration::from_secs(1)),
    }
    .unwrap()
}

fn keys() -> Vec<String> {
    (0..KEYS)
        .map(|i| format!("ip:10.0.{}.{}", i / 256, i % 256))
        .collect()
}

/// Decides one request of `key` the `way` given.
async fn decide<S: Store>(store: &S, policy: &Policy, key: &str, way: Way) {
    if way == Way::Slot {
        let slot = floodgate_core::Slot {
            rule: "bench-slots",
            key,
            limit: 1_000_000,
            lease: Duration::from_secs(30),
            id: key,
        };
        let d = store.acquire(&[slot]).await.unwrap();
        assert!(d[0].allowed, "a bench slot was refused");
        store.release(&[slot]).await.unwrap();
        return;
    }
    let check = Check::new("bench", policy, key, 1);
    let check = if way == Way::Plain {
        check
    } else {
        check.probe()
    };
    let d = store.check(std::slice::from_ref(&check)).await.unwrap();
    assert!(d[0].allowed, "a bench request was refused");
    if way == Way::AskedCharged {
        store
            .charge(&[Check::new("bench", policy, key, 1)])
            .await
            .unwrap();
    }
}

/// Per way: ns per request (median round) and the median ratio to plain.
type Row = Vec<(f64, f64)>;

fn summarise(rounds: &[[Duration; 4]], per_round: usize) -> Row {
    floodgate_testkit::paired::summarise(rounds, per_round)
}

async fn memory_row(algorithm: Algorithm, keys: &[String]) -> Row {
    let store = MemoryStore::new(4 * KEYS);
    let policy = admitting(algorithm);
    let mut at = 0;
    let mut rounds = Vec::with_capacity(TURNS);
    for turn in 0..=TURNS {
        let mut times = [Duration::ZERO; 4];
        for (w, way) in WAYS.iter().enumerate() {
            let started = Instant::now();
            for _ in 0..MEMORY_ROUND {
                decide(&store, &policy, &keys[at % KEYS], *way).await;
                at += 1;
            }
            times[w] = started.elapsed();
        }
        if turn > 0 {
            // The first turn warms up.
            rounds.push(times);
        }
    }
    summarise(&rounds, MEMORY_ROUND)
}

async fn redis_row(store: &RedisStore, algorithm: Algorithm, keys: &Arc<Vec<String>>) -> Row {
    let policy = Arc::new(admitting(algorithm));
    let mut rounds = Vec::with_capacity(TURNS);
    for turn in 0..=TURNS {
        let mut times = [Duration::ZERO; 4];
        for (w, way) in WAYS.iter().enumerate() {
            let started = Instant::now();
            let tasks: Vec<_> = (0..TASKS)
                .map(|t| {
                    let (store, policy, keys, way) =
                        (store.clone(), Arc::clone(&policy), Arc::clone(keys), *way);
                    tokio::spawn(async move {
                        for i in 0..REDIS_ROUND {
                            let key = &keys[(t * 131 + i + turn * 7) % KEYS];
                            decide(&store, &policy, key, way).await;
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            times[w] = started.elapsed();
        }
        if turn > 0 {
            rounds.push(times);
        }
    }
    summarise(&rounds, TASKS * REDIS_ROUND)
}

fn print_row(store: &str, algorithm: Algorithm, row: &Row) {
    let cells: Vec<String> = row
        .iter()
        .map(|(ns, ratio)| format!("{:>9.0} ns {:>5.2}x", ns, ratio))
        .collect();
    println!("{store:<7} {:<15} {}", algorithm.name(), cells.join("   "));
}

fn main() {
    // `cargo test --benches` runs benches with --bench absent: a smoke run
    // would take as long as a real one, so it only checks the wiring.
    if !std::env::args().any(|a| a == "--bench") {
        println!("answers: run with `cargo bench` (bench/answers.sh)");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (_server, url) = floodgate_testkit::bench_redis();
        let store = RedisStore::new(
            RedisConfig::new(url.clone())
                .with_prefix("fgbench-answers")
                .with_timeout(Duration::from_secs(1)),
        )
        .unwrap();
        let keys = Arc::new(keys());
        println!(
            "per request (median round) and time over plain's in the same turn (median of {TURNS})"
        );
        println!(
            "{:<7} {:<15} {:>20}   {:>20}   {:>20}   {:>20}",
            "store",
            "algorithm",
            WAYS[0].name(),
            WAYS[1].name(),
            WAYS[2].name(),
            WAYS[3].name()
        );
        for algorithm in Algorithm::ALL {
            let row = memory_row(algorithm, &keys).await;
            print_row("memory", algorithm, &row);
        }
        for algorithm in Algorithm::ALL {
            let row = redis_row(&store, algorithm, &keys).await;
            print_row("redis", algorithm, &row);
        }
    });
}
