//! Runs N decisions of one limiter, for a profiler (callgrind, perf):
//! `profile_check NAME N [KEYS] [deny]` with NAME one of token_bucket,
//! token_bucket_fixed, governor, or another algorithm's name.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use floodgate_core::{Algorithm, Check, ManualClock, MemoryStore, Policy, Timestamp};
use governor::{Quota, RateLimiter};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = args[1].as_str();
    let n: usize = args[2].parse().unwrap();
    let nkeys: usize = args.get(3).map_or(1, |a| a.parse().unwrap());
    let deny = args.get(4).is_some_and(|a| a == "deny");
    let keys: Vec<String> = (0..nkeys)
        .map(|i| format!("ip:10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255))
        .collect();
    let mut allowed = 0u64;
    if name == "governor" {
        let q = if deny {
            Quota::per_hour(NonZeroU32::MIN)
        } else {
            Quota::per_second(NonZeroU32::new(1_000_000).unwrap())
                .allow_burst(NonZeroU32::new(1_000_000_000).unwrap())
        };
        let limiter = RateLimiter::keyed(q);
        for i in 0..n {
            allowed += u64::from(limiter.check_key(black_box(&keys[i % nkeys])).is_ok());
        }
    } else {
        let (alg, fixed) = match name {
            "token_bucket_fixed" => (Algorithm::TokenBucket, true),
            other => (other.parse().unwrap(), false),
        };
        let policy = if deny {
            Policy::new(alg, 1, Duration::from_secs(3600)).unwrap()
        } else if alg == Algorithm::TokenBucket {
            Policy::new(alg, 1_000_000, Duration::from_secs(1))
                .and_then(|p| p.with_burst(1_000_000_000))
                .unwrap()
        } else {
            Policy::new(alg, 1_000_000_000, Duration::from_secs(1)).unwrap()
        };
        let store = if fixed {
            MemoryStore::with_clock(2_000_000, Arc::new(ManualClock::new(Timestamp::now())))
        } else {
            MemoryStore::new(2_000_000)
        };
        for i in 0..n {
            let check = Check::new("bench", &policy, black_box(&keys[i % nkeys]), 1);
            allowed += u64::from(store.check_one(&check).unwrap().allowed);
        }
    }
    println!("{allowed}");
}
