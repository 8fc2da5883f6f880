//! Exact across instances: eight stores, each with its own connection (as
//! eight processes would have), hammer one key concurrently; together they
//! admit exactly the limit.

use std::time::Duration;

use floodgate_core::{Algorithm, Check, Policy, Store};
use floodgate_redis::RedisStore;
use floodgate_testkit::{shared_redis_url, unique_prefix};

use crate::support::{clock_config, manual_clock};

const STORES: usize = 8;
const TASKS_PER_STORE: usize = 64;
const CHECKS_PER_TASK: usize = 4;
const LIMIT: u64 = 100;

/// How many of `STORES × TASKS_PER_STORE × CHECKS_PER_TASK` concurrent checks
/// of one key are admitted under `policy`, the clock standing still.
async fn admitted(label: &str, policy: Policy) -> u64 {
    let url = shared_redis_url();
    let prefix = unique_prefix(label);
    let clock = manual_clock();
    let mut tasks = Vec::new();
    for _ in 0..STORES {
        let store = RedisStore::new(clock_config(&url, &prefix, &clock)).unwrap();
        for _ in 0..TASKS_PER_STORE {
            let store = store.clone();
            let policy = policy.clone();
            tasks.push(tokio::spawn(async move {
                let mut admitted = 0;
                for _ in 0..CHECKS_PER_TASK {
                    let check = Check::new("exact", &policy, "ip:198.51.100.1", 1);
                    if store.check(&[check]).await.unwrap()[0].allowed {
                        admitted += 1;
                    }
                }
                admitted
            }));
        }
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_instances_admit_exactly_the_limit() {
    let attempts = (STORES * TASKS_PER_STORE * CHECKS_PER_TASK) as u64;
    assert!(attempts > LIMIT * 10);
    for algorithm in Algorithm::ALL {
        let policy = Policy::new(algorithm, LIMIT, Duration::from_secs(60)).unwrap();
        let total = admitted(&format!("exact-{algorithm}"), policy).await;
        assert_eq!(
            total, LIMIT,
            "{algorithm}: admitted {total} of {attempts}, limit {LIMIT}"
        );
    }
}
