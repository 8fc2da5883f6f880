//! Memory per key of the memory store, for each algorithm, beside governor's
//! keyed limiter: the growth of the process's resident memory while distinct
//! keys are each checked once, divided by the keys held. Two cases:
//! - `room`: 1M keys into a store bounded at 2M (governor: 1M keys);
//! - `at bound`: 2M keys into a store bounded at 1M (the default), so the
//!   store fills up and keeps evicting.
//!
//! ```text
//! cargo run --release -p floodgate-core --example bytes_per_key [-- KEYS]
//! ```
//!
//! Each limiter is measured in a fresh child process (this program run again
//! with `--one NAME KEYS MAX_KEYS`), so memory freed by one cannot be reused
//! by the next, and with glibc's malloc told to map every block of 4 KiB or
//! more on its own, so that tables outgrown while filling up are returned to
//! the system instead of lingering as free heap. The key strings are made before the first reading and are not
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

/// Checks every key once with `name`'s limiter (a memory store bounded at
/// `max_keys`) and returns the resident memory it grew by and the keys it
/// holds. The limiter is leaked, so nothing is freed before the second reading.
fn measure_one(name: &str, keys: &[String], max_keys: usize) -> (u64, usize) {
    let before = resident_bytes();
    let held = if name == "governor" {
        let limiter = RateLimiter::keyed(Quota::per_second(NonZeroU32::new(100).unwrap()));
        for k in keys {
            assert!(limiter.check_key(k).is_ok());
        }
        Box::leak(Box::new(limiter)).len()
    } else {
        // An hour, so that no state expires while the keys go in.
        let policy = Policy::new(name.parse().unwrap(), 100, Duration::from_secs(3600)).unwrap();
        let store = MemoryStore::new(max_keys);
        for k in keys {
            let check = Check::new("api", &policy, k, 1);
            assert!(store.check_one(&check).unwrap().allowed);
        }
        Box::leak(Box::new(store)).len()
    };
    (resident_bytes() - before, held)
}

/// Runs one measurement in a fresh process; returns its "bytes/key held" cell.
fn in_child(name: &str, keys: usize, max_keys: usize) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--one", name, &keys.to_string(), &max_keys.to_string()])
        // Blocks of 4 KiB and more get their own mappings, returned to the
        // system when freed: the hash tables a shard outgrew while filling
        // up then no longer count as resident.
        .env("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=4096")
        .output()
        .unwrap();
    assert!(out.status.success(), "{name}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, name, n, max_keys] = args.as_slice()
        && flag == "--one"
    {
        let keys = keys(n.parse().unwrap());
        let (bytes, held) = measure_one(name, &keys, max_keys.parse().unwrap());
        println!("{:.1} ({held})", bytes as f64 / held as f64);
        return;
    }
    let n: usize = args.get(1).map_or(1_000_000, |a| a.parse().unwrap());
    println!("bytes per key held (keys held), resident memory growth, {n}-key scale");
    println!("{:<16}{:>24}{:>24}", "limiter", "room", "at bound");
    for a in Algorithm::ALL {
        let room = in_child(a.name(), n, 2 * n);
        let bound = in_child(a.name(), 2 * n, n);
        println!("{:<16}{room:>24}{bound:>24}", a.name());
    }
    println!(
        "{:<16}{:>24}{:>24}",
        "governor",
        in_child("governor", n, n),
        "-"
    );
}
