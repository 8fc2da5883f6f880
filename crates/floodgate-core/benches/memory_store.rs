//! Decisions per second of the memory store, per algorithm, beside governor's
//! keyed limiter on the same keys in the same run.
//!
//! ```text
//! cargo bench -p floodgate-core --bench memory_store -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Groups: `{1key,1Mkeys}_{1,2}thread(s)` (quotas far above what a run
//! reaches, so every check is admitted) and `1key_1thread_deny` (every check
//! refused). Each group runs the four algorithms through
//! `MemoryStore::check_one` on the system clock, the token bucket again on a
//! clock that never moves (what is left without the OS clock read), and
//! `governor`'s `DefaultKeyedRateLimiter<String>` (GCRA on a TSC clock) with
//! the same quota. Keys are pre-generated strings (`ip:10.x.y.z`); each
//! limiter walks through them in order across samples, and with two threads
//! each thread starts half-way through the list from the other. Stores are
//! sized to hold every key (no eviction).
//!
//! After criterion's report a table gives decisions/s and the token bucket's
//! time per decision over governor's (target: at most 1.0, issue 19): once from
//! criterion's means, once as the median of 21 alternating ~50 ms rounds of
//! the two, which load drifting during the run cannot skew, and the same
//! paired ratio for the token bucket on the fixed clock. The table reads
//! this run's estimates; when a filter skips a benchmark its cell may show
//! an earlier run's figure.
//!
//! Under `cargo test` (criterion's test mode) the key set shrinks to 1 000,
//! so the benchmark stays a quick smoke test.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::hint::black_box;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use floodgate_core::{
    Algorithm, Check, MAX_LOG_LIMIT, ManualClock, MemoryStore, Policy, Timestamp,
};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// A check of one key: whether it was admitted.
type Decide<'a> = dyn Fn(&String) -> bool + Sync + Send + 'a;

/// `n` distinct client identities, as a rule keyed by IP would see them.
fn keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("ip:10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255))
        .collect()
}

/// A quota no benchmark run reaches: 10^9 per second for the window
/// algorithms; for the sliding log its largest limit (10^5) per millisecond,
/// so the log holds about a millisecond of decisions; for the token bucket
/// 10^6 per second (one unit a µs, the finest it can refill) with a burst of
/// 10^9.
fn admitting(algorithm: Algorithm) -> Policy {
    match algorithm {
        Algorithm::TokenBucket => Policy::new(algorithm, 1_000_000, Duration::from_secs(1))
            .and_then(|p| p.with_burst(1_000_000_000)),
        Algorithm::SlidingLog => Policy::new(algorithm, MAX_LOG_LIMIT, Duration::from_millis(1)),
        _ => Policy::new(algorithm, 1_000_000_000, Duration::from_secs(1)),
    }
    .unwrap()
}

/// The same quota for governor.
fn admitting_governor() -> DefaultKeyedRateLimiter<String> {
    RateLimiter::keyed(
        Quota::per_second(NonZeroU32::new(1_000_000).unwrap())
            .allow_burst(NonZeroU32::new(1_000_000_000).unwrap()),
    )
}

/// One unit per hour: after the first check every check is refused.
fn denying(algorithm: Algorithm) -> Policy {
    Policy::new(algorithm, 1, Duration::from_secs(3600)).unwrap()
}

/// A limiter under test: how it decides, and how far through the key list
/// it has got, so that successive samples keep walking all the keys instead
/// of replaying the first few.
struct Contender<'a> {
    name: &'static str,
    decide: Box<Decide<'a>>,
    cursor: AtomicUsize,
}

impl Contender<'_> {
    /// Runs `iters` decisions spread over `threads` threads, each walking
    /// `keys` from its own point; returns the wall time.
    fn run(&self, iters: u64, threads: usize, keys: &[String]) -> Duration {
        let share = |t: usize| {
            let n = iters / threads as u64;
            n + u64::from((t as u64) < iters % threads as u64)
        };
        let start_at = self.cursor.fetch_add(share(0) as usize, Ordering::Relaxed);
        let work = |t: usize| {
            let mut i = (start_at + t * keys.len() / threads) % keys.len();
            for _ in 0..share(t) {
                black_box((self.decide)(black_box(&keys[i])));
                i += 1;
                if i == keys.len() {
                    i = 0;
                }
            }
        };
        let start = Instant::now();
        if threads == 1 {
            work(0);
        } else {
            std::thread::scope(|s| {
                for t in 0..threads {
                    s.spawn(move || work(t));
                }
            });
        }
        start.elapsed()
    }
}

/// A memory store that holds `keys` without evicting.
fn store_for(keys: usize) -> MemoryStore {
    MemoryStore::new((2 * keys).max(floodgate_core::DEFAULT_MAX_KEYS))
}

/// Names of the contenders, in the order they run.
const CONTENDERS: [&str; 6] = [
    "fixed_window",
    "sliding_window",
    "sliding_log",
    "token_bucket",
    "token_bucket_fixed_clock",
    "governor",
];

/// A limiter checking `policy` on its own memory store: on the system clock,
/// or on a clock that never moves (to show what reading the system clock
/// costs; the quotas here are far from reached even with time stopped).
fn memory_contender(
    name: &'static str,
    policy: Policy,
    keys: usize,
    fixed_clock: bool,
) -> Contender<'static> {
    let store = if fixed_clock {
        let clock = ManualClock::new(Timestamp::now());
        MemoryStore::with_clock(2 * keys, Arc::new(clock))
    } else {
        store_for(keys)
    };
    Contender {
        name,
        decide: Box::new(move |key: &String| {
            store
                .check_one(&Check::new("bench", &policy, key, 1))
                .unwrap()
                .allowed
        }),
        cursor: AtomicUsize::new(0),
    }
}

/// Every name of [`CONTENDERS`] for `keys` keys.
fn contenders(keys: usize, deny: bool) -> Vec<Contender<'static>> {
    let policy = |a: Algorithm| if deny { denying(a) } else { admitting(a) };
    let mut all: Vec<Contender<'static>> = Algorithm::ALL
        .into_iter()
        .map(|a| memory_contender(a.name(), policy(a), keys, false))
        .collect();
    all.push(memory_contender(
        "token_bucket_fixed_clock",
        policy(Algorithm::TokenBucket),
        keys,
        true,
    ));
    let limiter = if deny {
        RateLimiter::keyed(Quota::per_hour(NonZeroU32::MIN))
    } else {
        admitting_governor()
    };
    all.push(Contender {
        name: "governor",
        decide: Box::new(move |key: &String| limiter.check_key(key).is_ok()),
        cursor: AtomicUsize::new(0),
    });
    debug_assert!(all.iter().map(|c| c.name).eq(CONTENDERS));
    all
}

/// The token bucket's time per decision over governor's, measured in
/// alternating rounds of about 50 ms each so that load drifting during the
/// run hits both alike: the median of 21 rounds.
fn paired_ratio(
    ours: &Contender<'_>,
    theirs: &Contender<'_>,
    threads: usize,
    keys: &[String],
) -> f64 {
    let mut n = 10_000;
    while theirs.run(n, threads, keys) < Duration::from_millis(50) {
        n *= 2;
    }
    let mut ratios: Vec<f64> = (0..21)
        .map(|_| {
            let a = ours.run(n, threads, keys);
            let b = theirs.run(n, threads, keys);
            a.as_secs_f64() / b.as_secs_f64()
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

/// Benchmarks one group; when measuring, returns the paired ratios of the
/// token bucket on the system clock and on the fixed clock to governor.
fn group(
    c: &mut Criterion,
    name: &str,
    threads: usize,
    keys: &[String],
    deny: bool,
    measuring: bool,
) -> Option<(f64, f64)> {
    let all = contenders(keys.len(), deny);
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    for contender in &all {
        g.bench_function(contender.name, |b| {
            b.iter_custom(|iters| contender.run(iters, threads, keys))
        });
    }
    g.finish();
    let find = |name: &str| all.iter().find(|c| c.name == name);
    match (
        measuring,
        find("token_bucket"),
        find("token_bucket_fixed_clock"),
        find("governor"),
    ) {
        (true, Some(ours), Some(fixed), Some(theirs)) => Some((
            paired_ratio(ours, theirs, threads, keys),
            paired_ratio(fixed, theirs, threads, keys),
        )),
        _ => None,
    }
}

/// Where criterion writes its estimates: the same place it picks by itself
/// (`$CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`), else the
/// workspace's `target/criterion`.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")))
        .join("criterion")
}

/// The mean time per decision (ns) criterion estimated for `group/function`
/// in this run.
fn mean_ns(group: &str, function: &str) -> Option<f64> {
    let path = criterion_dir()
        .join(group)
        .join(function)
        .join("new/estimates.json");
    let json = std::fs::read_to_string(path).ok()?;
    // {"mean":{"confidence_interval":{...},"point_estimate":12.3,...},...}
    let mean = &json[json.find("\"mean\"")?..];
    let value = &mean[mean.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = value.find([',', '}'])?;
    value[..end].trim().parse().ok()
}

/// Decisions/s of every contender in every group, then the token bucket's
/// time per decision over governor's: from criterion's means, and paired.
fn print_summary(groups: &[(&str, Option<(f64, f64)>)]) {
    println!(
        "\nmemory store: decisions/s (criterion mean), token_bucket / governor time per decision"
    );
    print!("{:<26}", "");
    for (group, _) in groups {
        print!("{group:>19}");
    }
    println!();
    for name in CONTENDERS {
        print!("{name:<26}");
        for (group, _) in groups {
            match mean_ns(group, name) {
                Some(ns) => print!("{:>19}", format!("{:.2}M", 1e3 / ns)),
                None => print!("{:>19}", "-"),
            }
        }
        println!();
    }
    print!("{:<26}", "ratio (criterion means)");
    for (group, _) in groups {
        match (mean_ns(group, "token_bucket"), mean_ns(group, "governor")) {
            (Some(ours), Some(theirs)) => print!("{:>19.2}", ours / theirs),
            _ => print!("{:>19}", "-"),
        }
    }
    println!();
    for (label, pick) in [("ratio (paired rounds)", 0), ("  fixed clock (paired)", 1)] {
        print!("{label:<26}");
        for (_, paired) in groups {
            match paired {
                Some(r) => print!("{:>19.2}", if pick == 0 { r.0 } else { r.1 }),
                None => print!("{:>19}", "-"),
            }
        }
        println!();
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test` runs benches in test mode.
    let measuring = std::env::args().any(|a| a == "--bench");
    let many = keys(if measuring { 1_000_000 } else { 1_000 });
    let one = keys(1);
    let mut c = Criterion::default()
        .output_directory(&criterion_dir())
        .configure_from_args();
    let groups = [
        ("1key_1thread", 1, &one, false),
        ("1key_2threads", 2, &one, false),
        ("1Mkeys_1thread", 1, &many, false),
        ("1Mkeys_2threads", 2, &many, false),
        ("1key_1thread_deny", 1, &one, true),
    ];
    let ratios = groups.map(|(name, threads, keys, deny)| {
        (name, group(&mut c, name, threads, keys, deny, measuring))
    });
    c.final_summary();
    if measuring {
        print_summary(&ratios);
    }
}
