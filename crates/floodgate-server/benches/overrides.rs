//! What per-key overrides cost a decision, on the memory store and on Redis,
//! measured in the same run.
//!
//! ```text
//! bench/overrides.sh
//! cargo bench -p floodgate-server --bench overrides
//! ```
//!
//! Redis: `$FLOODGATE_BENCH_REDIS_URL` when set, else a private
//! `redis-server` started for the run.
//!
//! Per store, 1 000 000 overrides are put in it, and two limiters on one
//! rule (sliding window) decide through `Limiter::check_key` as the
//! decision API does, three ways:
//!
//! - `none`: a limiter that has read no override (a rule with none);
//! - `1M, key without`: a limiter that has read the million into its copy,
//!   deciding keys that have none (must cost nothing more);
//! - `1M, key with`: the same limiter deciding keys that have one.
//!
//! Both limiters decide on the same store, so the counters they touch are
//! the same and what differs is the limiter's copy of the overrides alone.
//! (With a store each, the store of the limiter with overrides also held
//! the counters of the keys that have one: twice the counters, a larger
//! table, whose cache misses were counted against the overrides.)
//!
//! Timed in rounds (memory: one thread, 20 000 decisions a round; Redis: 64
//! tasks on one store, 50 decisions each a round), the three in turn, 101
//! times over; the figure is the median over rounds of each one's time over
//! `none`'s in the same turn. Quotas are far above what a run reaches.

#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use floodgate_core::{Algorithm, KeyOverride, MemoryStore, Policy, Store};
use floodgate_redis::{RedisConfig, RedisStore};
use floodgate_tower::{KeySpec, Limiter, LimiterConfig, Rule};

const OVERRIDES: usize = 1_000_000;
const KEYS: usize = 10_000;
const TURNS: usize = 101;
const MEMORY_ROUND: usize = 20_000;
const TASKS: usize = 64;
const REDIS_ROUND: usize = 50;
const RULE: &str = "bench";

fn limiter<S: Store>(store: S) -> Limiter<S> {
    let policy = Policy::new(
        Algorithm::SlidingWindow,
        1_000_000_000,
        Duration::from_secs(1),
    )
    .unwrap();
    let rule = Rule::new(RULE, KeySpec::parse_list(["global"]).unwrap(), policy);
    let config = LimiterConfig {
        rules: vec![rule],
        ..LimiterConfig::default()
    };
    Limiter::new(config, store).unwrap()
}

/// The overrides: keys `o:<i>`, a quota as far out of reach as the rule's.
fn an_override(i: usize) -> KeyOverride {
    KeyOverride {
        rule: RULE.to_owned(),
        key: format!("o:{i}"),
        limit: 1_000_000_000 + i as u64,
        window: None,
        burst: None,
        expires: None,
    }
}

/// Puts [`OVERRIDES`] overrides into `store`, 64 at a time.
async fn put_all<S: Store + Clone>(store: &S) {
    let started = Instant::now();
    let mut next = 0;
    while next < OVERRIDES {
        let batch: Vec<_> = (next..(next + 256).min(OVERRIDES))
            .map(|i| {
                let store = store.clone();
                tokio::spawn(
                    async move { store.put_override(&an_override(i), None).await.unwrap() },
                )
            })
            .collect();
        for put in batch {
            put.await.unwrap();
        }
        next += 256;
    }
    println!(
        "  put {OVERRIDES} overrides in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// ns per decision (median round) and the median ratio to the first way.
fn summarise(rounds: &[[Duration; 3]], per_round: usize) -> Vec<(f64, f64)> {
    floodgate_testkit::paired::summarise(rounds, per_round)
}

/// The key decision `i` of a round names, with or without an override.
fn key(i: usize, overridden: bool) -> String {
    if overridden {
        // 10 000 of the million, spread over it.
        format!("o:{}", (i % KEYS) * (OVERRIDES / KEYS))
    } else {
        format!("k:{}", i % KEYS)
    }
}

async fn measure<S: Store + Clone>(
    plain: Limiter<S>,
    loaded: Limiter<S>,
    tasks: usize,
    per_task: usize,
) -> Vec<(f64, f64)> {
    let ways: [(Limiter<S>, bool); 3] = [(plain, false), (loaded.clone(), false), (loaded, true)];
    let mut rounds = Vec::with_capacity(TURNS);
    let mut at = 0;
    for turn in 0..=TURNS {
        let mut times = [Duration::ZERO; 3];
        for (w, (limiter, overridden)) in ways.iter().enumerate() {
            let started = Instant::now();
            if tasks == 1 {
                for i in 0..per_task {
                    let d = limiter
                        .check_key(RULE, &key(at + i, *overridden), 1)
                        .await
                        .unwrap();
                    assert!(d.allowed);
                }
            } else {
                let handles: Vec<_> = (0..tasks)
                    .map(|t| {
                        let (limiter, overridden) = (limiter.clone(), *overridden);
                        tokio::spawn(async move {
                            for i in 0..per_task {
                                let d = limiter
                                    .check_key(RULE, &key(at + t * per_task + i, overridden), 1)
                                    .await
                                    .unwrap();
                                assert!(d.allowed);
                            }
                        })
                    })
                    .collect();
                for h in handles {
                    h.await.unwrap();
                }
            }
            times[w] = started.elapsed();
        }
        at += tasks * per_task;
        if turn > 0 {
            rounds.push(times);
        }
    }
    summarise(&rounds, tasks * per_task)
}

fn print_row(store: &str, row: &[(f64, f64)]) {
    let cells: Vec<String> = row
        .iter()
        .map(|(ns, ratio)| format!("{ns:>8.0} ns {ratio:>5.2}x"))
        .collect();
    println!("{store:<7} {}", cells.join("   "));
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("overrides: run with `cargo bench` (bench/overrides.sh)");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!("decisions through Limiter::check_key: time per decision (median round), and over `none`'s in the same turn (median of {TURNS})");
        println!("{:<7} {:>19}   {:>19}   {:>19}", "store", "none", "1M, key without", "1M, key with");

        let memory = MemoryStore::new(4 * KEYS + 4 * OVERRIDES);
        put_all(&memory).await;
        let loaded = limiter(memory.clone());
        loaded.sync_overrides().await.unwrap();
        let row = measure(limiter(memory), loaded, 1, MEMORY_ROUND).await;
        print_row("memory", &row);

        let (_server, url) = floodgate_testkit::bench_redis();
        let open = |prefix: &str| {
            RedisStore::new(
                RedisConfig::new(url.clone())
                    .with_prefix(prefix)
                    .with_timeout(Duration::from_secs(2)),
            )
            .unwrap()
        };
        let with = open("fgbench-overrides-1m");
        put_all(&with).await;
        let loaded = limiter(with.clone());
        let started = Instant::now();
        loaded.sync_overrides().await.unwrap();
        println!("  read {OVERRIDES} overrides from Redis in {:.1} s", started.elapsed().as_secs_f64());
        let row = measure(limiter(with), loaded, TASKS, REDIS_ROUND).await;
        print_row("redis", &row);
    });
}
