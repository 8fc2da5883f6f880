//! Decisions per second of [`RedisStore`] at 1, 64 and 256 concurrent tasks.
//!
//! ```text
//! bench/redis.sh        # this bench beside redis-benchmark on the same server, with ratios
//! cargo bench -p floodgate-redis --bench redis_store -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Redis: `$FLOODGATE_BENCH_REDIS_URL` when set (bench/redis.sh starts one on a
//! free port), else a private `redis-server` started for the run.
//!
//! Groups `redis_<algorithm>`, functions `<n>_tasks`: n tokio tasks on a
//! multi-thread runtime share one `RedisStore` (so one multiplexed
//! connection, as a gateway process does) and each makes its share of the
//! iterations one `Store::check` after the other, each a batch of one check.
//! Tasks walk disjoint slices of [`KEYSPACE`] client keys (`ip:` and 12
//! digits, the shape of redis-benchmark's `__rand_int__`), so the figure is
//! throughput over many keys; `redis_token_bucket/256_tasks_hot_key` has
//! every task on one key. Quotas are far above what a run reaches (every
//! check is admitted) and windows are 1 s, so keys expire soon after.
//!
//! `-- --print-argv` prints, per algorithm, the ARGV of `check.lua` this
//! bench sends after ARGV[1] (time: empty, Redis' clock): the TTL margin,
//! one batch of one check, its policy and the check. bench/redis.sh
//! hands them to redis-benchmark so both send the same command;
//! `-- --print-library` prints the function library it calls.
//!
//! The store's timeout is 1 s instead of the default 50 ms, so that a
//! loaded machine does not turn slow checks into failures; every check still
//! goes through the timeout wrapper. Failed or refused checks are counted and
//! printed at the end: a run with any is not a clean measurement.
//!
//! After criterion's report, each benchmark's client CPU per decision: the
//! CPU time of the whole bench process over all its samples (from
//! /proc/self/stat) over the checks made. Unlike decisions/s it does not
//! depend on how much CPU Redis and other processes left over.

#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use floodgate_core::{Algorithm, Check, Policy, Store};
use floodgate_redis::{DEFAULT_TTL_MARGIN, RedisConfig, RedisStore};

/// Distinct client keys the tasks share out.
const KEYSPACE: usize = 100_000;

/// Key prefix of every key this bench writes.
const PREFIX: &str = "fgbench";

/// The rule name in every key.
const RULE: &str = "bench";

/// Concurrent tasks per benchmark.
const TASKS: [usize; 3] = [1, 64, 256];

/// Counts what should never happen in a clean run.
static FAILED: AtomicU64 = AtomicU64::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// A quota no run reaches, over a 1 s window: 10^5 per window per key for
/// the window algorithms (a key here sees a check every second or so; 10^5
/// is also the largest sliding log floodgate accepts); for the token bucket
/// 10^6 per second (one unit a µs) with a burst of 10^9, which the one hot
/// key cannot exhaust either.
fn admitting(algorithm: Algorithm) -> Policy {
    let second = Duration::from_secs(1);
    match algorithm {
        Algorithm::TokenBucket => {
            Policy::new(algorithm, 1_000_000, second).and_then(|p| p.with_burst(1_000_000_000))
        }
        _ => Policy::new(algorithm, 100_000, second),
    }
    .unwrap()
}

/// ARGV[2..] of `check.lua` (see the script's header) for one enforcing
/// check of cost 1 on a store with the default TTL margin: the margin, one
/// batch of one check ("1"), one policy and its seven fields, then the
/// check (policy 1, cost 1).
fn check_argv(policy: &Policy) -> String {
    format!(
        "{} 1 1 {} {} {} {} {} {} 0 1 1",
        DEFAULT_TTL_MARGIN.as_millis(),
        policy.algorithm().name(),
        policy.limit(),
        policy.window_us(),
        policy.burst(),
        policy.emission_interval_us(),
        policy.block_for_us().unwrap_or(0),
    )
}

/// Client key `i`, as long as redis-benchmark's `__rand_int__` expansion.
fn client_key(i: usize) -> String {
    format!("ip:{i:012}")
}

/// CPU time this process has used (all threads, user and system), in the
/// 1/100 s ticks of /proc (USER_HZ); 0 where there is no /proc.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is the
    // 1st, utime the 12th, stime the 13th.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    field(11).unwrap_or(0) + field(12).unwrap_or(0)
}

/// One benchmark's workload: a store, a policy and the keys its tasks walk.
struct Workload {
    name: String,
    store: RedisStore,
    policy: Arc<Policy>,
    keys: Arc<Vec<String>>,
    /// Where the next sample starts in each task's slice of `keys`, so
    /// samples keep walking all the keys instead of replaying the first few.
    cursor: AtomicUsize,
    /// Checks made and CPU ticks used by the whole process meanwhile, over
    /// every sample: the client's CPU cost per decision.
    checks: AtomicU64,
    ticks: AtomicU64,
}

impl Workload {
    /// `iters` checks spread over `tasks` tasks; returns the wall time.
    async fn run(&self, iters: u64, tasks: usize) -> Duration {
        let per_task = iters / tasks as u64;
        let extra = iters % tasks as u64;
        let slice = (self.keys.len() / tasks).max(1);
        let offset = self
            .cursor
            .fetch_add(per_task as usize + 1, Ordering::Relaxed);
        let ticks = cpu_ticks();
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let n = per_task + u64::from((t as u64) < extra);
                let store = self.store.clone();
                let policy = Arc::clone(&self.policy);
                let keys = Arc::clone(&self.keys);
                tokio::spawn(async move {
                    for j in 0..n as usize {
                        let key = &keys[(t * slice + (offset + j) % slice) % keys.len()];
                        match store.check(&[Check::new(RULE, &policy, key, 1)]).await {
                            Ok(d) if d[0].allowed => {}
                            Ok(_) => {
                                REFUSED.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                FAILED.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
        let elapsed = start.elapsed();
        self.checks.fetch_add(iters, Ordering::Relaxed);
        self.ticks
            .fetch_add(cpu_ticks().saturating_sub(ticks), Ordering::Relaxed);
        elapsed
    }

    /// Client CPU (µs) per decision over every sample so far.
    fn cpu_per_check_us(&self) -> Option<f64> {
        let checks = self.checks.load(Ordering::Relaxed);
        let ticks = self.ticks.load(Ordering::Relaxed);
        (checks > 0 && ticks > 0).then(|| ticks as f64 * 10_000.0 / checks as f64)
    }
}

fn main() {
    if std::env::args().any(|a| a == "--print-library") {
        print!("{}", floodgate_redis::check_library());
        return;
    }
    if std::env::args().any(|a| a == "--print-argv") {
        for a in Algorithm::ALL {
            println!("{} {}", a.name(), check_argv(&admitting(a)));
        }
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // Our own server unless one was given; dropped (killed) at the end.
    let (_server, url) = floodgate_testkit::bench_redis();
    // A timeout far above any wait here, so a loaded machine cannot turn
    // checks into failures; what the timeout wrapper costs does not depend
    // on its length.
    let config = RedisConfig::new(url)
        .with_prefix(PREFIX)
        .with_timeout(Duration::from_secs(1));
    let store = runtime.block_on(RedisStore::connect(config)).unwrap();
    let keys: Arc<Vec<String>> = Arc::new((0..KEYSPACE).map(client_key).collect());
    let hot_key = Arc::new(vec![client_key(KEYSPACE)]);
    let workload = |name: String, algorithm: Algorithm, keys: &Arc<Vec<String>>| Workload {
        name,
        store: store.clone(),
        policy: Arc::new(admitting(algorithm)),
        keys: Arc::clone(keys),
        cursor: AtomicUsize::new(0),
        checks: AtomicU64::new(0),
        ticks: AtomicU64::new(0),
    };

    let mut c = Criterion::default().sample_size(10).configure_from_args();
    let mut done: Vec<Workload> = Vec::new();
    for algorithm in Algorithm::ALL {
        let group = format!("redis_{}", algorithm.name());
        let mut g = c.benchmark_group(&group);
        g.throughput(Throughput::Elements(1));
        let mut runs: Vec<(usize, Workload)> = TASKS
            .into_iter()
            .map(|tasks| {
                let function = match tasks {
                    1 => "1_task".to_owned(),
                    n => format!("{n}_tasks"),
                };
                let name = format!("{group}/{function}");
                (tasks, workload(name, algorithm, &keys))
            })
            .collect();
        // One key for everyone: a sliding log's list would grow with every
        // check, so only for an algorithm whose state has a fixed size.
        if algorithm == Algorithm::TokenBucket {
            let name = format!("{group}/256_tasks_hot_key");
            runs.push((256, workload(name, algorithm, &hot_key)));
        }
        for (tasks, w) in runs {
            let function = w.name.rsplit('/').next().unwrap_or_default().to_owned();
            g.bench_function(function, |b| {
                b.to_async(&runtime)
                    .iter_custom(|iters| w.run(iters, tasks))
            });
            done.push(w);
        }
        g.finish();
    }
    c.final_summary();

    // `cargo bench` passes --bench; under `cargo test` each benchmark runs
    // once, too little to time the CPU.
    let measuring = std::env::args().any(|a| a == "--bench");
    let measured: Vec<&Workload> = done
        .iter()
        .filter(|w| w.checks.load(Ordering::Relaxed) > 0)
        .collect();
    if measuring && !measured.is_empty() {
        println!("\nclient CPU per decision (whole bench process, every sample)");
        for w in measured {
            match w.cpu_per_check_us() {
                Some(us) => println!("{:<40}{us:>8.1} µs", w.name),
                None => println!("{:<40}{:>8} µs", w.name, "-"),
            }
        }
    }
    let (failed, refused) = (
        FAILED.load(Ordering::Relaxed),
        REFUSED.load(Ordering::Relaxed),
    );
    println!("redis_store: {failed} failed checks, {refused} refused checks (both should be 0)");
}
