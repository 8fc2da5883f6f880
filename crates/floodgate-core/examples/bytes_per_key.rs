//! Memory per key of the memory store, for each algorithm, beside governor's
//! keyed limiter: the growth of the process's resident memory while 1M
//! distinct keys are each checked once, divided by the keys held.
//!
//! ```text
//! cargo run --release -p floodgate-core --example bytes_per_key [-- KEYS]
//! ```
//!
//! Each limiter is measured in a fresh child process (this program run again
//! with `--one NAME KEYS`), so memory freed by one cannot be reused by the
//! next. The key strings are made before the first reading and are not
//! counted. The figure includes everything a key costs: the hash-table slot
//! (at the table's real load factor), the entry, its name's allocation and,
//! for the sliding log, a log holding the one admitted unit (a sliding log
//! grows by 8 bytes per admitted unit still in its window). Linux only (it
//! reads `/proc/self/statm`).

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::num::NonZeroU32;
use std::process::Command;
use std::time::Duration;

use floodgate_core::{Algorithm, Check, MemoryStore, Policy};
use governor::{Quota, RateLimiter};

/// Resident memory of this process, in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("ip:10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255))
        .collect()
}

/// Checks every key once with `name`'s limiter and returns the resident
/// memory it grew by and the keys it holds. The limiter is leaked, so
/// nothing is freed before the second reading.
fn measure_one(name: &str, keys: &[String]) -> (u64, usize) {
    let before = resident_bytes();
    let held = if name == "governor" {
        let limiter = RateLimiter::keyed(Quota::per_second(NonZeroU32::new(100).unwrap()));
        for k in keys {
            assert!(limiter.check_key(k).is_ok());
        }
        Box::leak(Box::new(limiter)).len()
    } else {
        let policy = Policy::new(name.parse().unwrap(), 100, Duration::from_secs(60)).unwrap();
        // Room for every key: this measures what a key costs, not eviction.
        let store = MemoryStore::new(2 * keys.len());
        for k in keys {
            let check = Check::new("api", &policy, k, 1);
            assert!(store.check_one(&check).unwrap().allowed);
        }
        Box::leak(Box::new(store)).len()
    };
    (resident_bytes() - before, held)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, name, n] = args.as_slice()
        && flag == "--one"
    {
        let (bytes, held) = measure_one(name, &keys(n.parse().unwrap()));
        println!("{name:<16}{:>10.1}{held:>10}", bytes as f64 / held as f64);
        return;
    }
    let n: usize = args.get(1).map_or(1_000_000, |a| a.parse().unwrap());
    println!("bytes per key, {n} distinct keys checked once (resident memory growth / keys held)");
    println!("{:<16}{:>10}{:>10}", "limiter", "bytes/key", "keys");
    let exe = std::env::current_exe().unwrap();
    let names = Algorithm::ALL.map(|a| a.name());
    for name in names.iter().copied().chain(["governor"]) {
        let out = Command::new(&exe)
            .args(["--one", name, &n.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}
