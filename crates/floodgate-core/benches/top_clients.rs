//! What counting top clients adds to a decision: the memory store's
//! `check_one` alone, and the same check followed by what the limiter does
//! for every per-key decision (lock the rule's `TopWindow`, record the key),
//! in the same run.
//!
//! ```text
//! bench/top_clients.sh
//! ```
//!
//! Two key streams, each of 1 M pre-generated `ip:` keys walked in order:
//! `zipf` (Zipf 1.1 over 100 000 clients: most records find their key
//! tracked) and `distinct` (every key new: every record evicts the
//! lightest, the worst case). After criterion's report, each stream's cost
//! of the summary as the median of 21 alternating ~50 ms rounds of the two
//! variants, which load drifting during the run cannot skew: ns per
//! decision added, and the time per decision with the summary over the time
//! without. The limiter itself spends more per decision than `check_one`
//! (rules, keys, the verdict), so through the limiter the ratio is smaller.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use floodgate_core::{Algorithm, Check, MemoryStore, Policy, TopWindow};
use parking_lot::Mutex;

const KEYS: usize = 1_000_000;

fn ip(i: usize) -> String {
    format!("ip:10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

/// `KEYS` draws of Zipf(1.1) over `clients` clients, from a fixed seed.
fn zipf(clients: usize) -> Vec<String> {
    let weights: Vec<f64> = (1..=clients).map(|k| (k as f64).powf(-1.1)).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    let cumulative: Vec<f64> = weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..KEYS)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let u = (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
            ip(cumulative.partition_point(|&c| c < u).min(clients - 1))
        })
        .collect()
}

/// One variant: decides the next key, with or without the summary.
struct Variant {
    store: MemoryStore,
    top: Mutex<TopWindow>,
    policy: Policy,
    cursor: usize,
    with_top: bool,
}

impl Variant {
    fn new(with_top: bool) -> Self {
        Variant {
            store: MemoryStore::new(2 * KEYS),
            top: Mutex::new(TopWindow::default()),
            policy: Policy::new(
                Algorithm::SlidingWindow,
                1_000_000_000,
                Duration::from_secs(60),
            )
            .unwrap(),
            cursor: 0,
            with_top,
        }
    }

    fn run(&mut self, keys: &[String], iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            let key = &keys[self.cursor];
            self.cursor = (self.cursor + 1) % keys.len();
            let d = self
                .store
                .check_one(&Check::new("api", &self.policy, key, 1))
                .unwrap();
            if self.with_top {
                self.top.lock().record(key, d.allowed);
            }
            black_box(d);
        }
        start.elapsed()
    }
}

/// Median over 21 alternating rounds of ns per decision without and with
/// the summary.
fn paired(keys: &[String]) -> (f64, f64) {
    let (mut without, mut with) = (Variant::new(false), Variant::new(true));
    let round = 200_000;
    // Warm both: every key seen once, every table at its size.
    without.run(keys, keys.len() as u64);
    with.run(keys, keys.len() as u64);
    let mut pairs: Vec<(f64, f64)> = (0..21)
        .map(|_| {
            let a = without.run(keys, round).as_nanos() as f64 / round as f64;
            let b = with.run(keys, round).as_nanos() as f64 / round as f64;
            (a, b)
        })
        .collect();
    pairs.sort_by(|x, y| (x.1 / x.0).total_cmp(&(y.1 / y.0)));
    pairs[10]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let streams: Vec<(&str, Vec<String>)> = if quick {
        vec![("zipf", (0..1000).map(ip).collect())]
    } else {
        vec![
            ("zipf", zipf(100_000)),
            ("distinct", (0..KEYS).map(ip).collect()),
        ]
    };
    let mut c = Criterion::default().configure_from_args();
    for (name, keys) in &streams {
        let mut group = c.benchmark_group(format!("top_clients_{name}"));
        group.throughput(Throughput::Elements(1));
        for with_top in [false, true] {
            let mut v = Variant::new(with_top);
            let label = if with_top { "check+top" } else { "check" };
            group.bench_function(label, |b| b.iter_custom(|iters| v.run(keys, iters)));
        }
        group.finish();
    }
    c.final_summary();
    if quick {
        return;
    }
    println!();
    println!("stream    check ns  check+top ns  added ns  ratio (paired median of 21 rounds)");
    for (name, keys) in &streams {
        let (without, with) = paired(keys);
        println!(
            "{name:<9} {without:>8.1} {with:>13.1} {:>9.1}  {:.3}",
            with - without,
            with / without
        );
    }
}
