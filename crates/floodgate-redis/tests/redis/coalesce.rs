//! Coalescing: concurrent checks share script calls and are decided exactly
//! as they would be one call each.
//!
//! To make sharing certain rather than likely, each test pauses its own
//! Redis (`CLIENT PAUSE`) while it starts the checks: the first calls wait
//! in Redis, every other batch queues behind them, and the calls after the
//! pause carry the queue.

use std::sync::Arc;
use std::time::Duration;

use floodgate_core::{Algorithm, Check, Decision, Policy, Store};
use floodgate_redis::RedisStore;
use floodgate_testkit::{RedisServer, unique_prefix};

use crate::support::{clock_config, manual_clock, memory_on_clock, raw_connection};

/// Concurrent single-check requests started during the pause.
const REQUESTS: usize = 60;

/// How long Redis holds the first calls.
const PAUSE_MS: u64 = 400;

/// Starts recording every command Redis runs (its slow log, threshold 0).
async fn record_commands(conn: &mut redis::aio::MultiplexedConnection) {
    for (name, value) in [
        ("slowlog-log-slower-than", "0"),
        ("slowlog-max-len", "10000"),
    ] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(conn)
            .await
            .unwrap();
    }
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(conn)
        .await
        .unwrap();
}

/// `check.lua` calls recorded since [`record_commands`]: the `FCALL`s of its
/// function (`EVALSHA`s where functions do not run) with an even number of
/// keys (two per check; the block scripts take one).
async fn check_calls(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let log: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(conn)
        .await
        .unwrap();
    let mut calls = 0;
    for entry in log {
        let redis::Value::Array(fields) = entry else {
            continue;
        };
        let Some(redis::Value::Array(argv)) = fields.get(3) else {
            continue;
        };
        let text = |v: &redis::Value| match v {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        };
        let command = argv.first().map(text).unwrap_or_default();
        let is_check = match command.to_ascii_lowercase().as_str() {
            "fcall" => argv
                .get(1)
                .is_some_and(|v| text(v).starts_with("floodgate_check_")),
            "evalsha" => true,
            _ => false,
        };
        let keys: u64 = argv.get(2).map_or(0, |v| text(v).parse().unwrap_or(0));
        if is_check && keys >= 2 && keys.is_multiple_of(2) {
            calls += 1;
        }
    }
    calls
}

/// One request's batch: (rule, key, cost) per check.
type Batch = Vec<(&'static str, String, u64)>;

/// Runs `requests` (each a batch) concurrently on `store` while Redis is
/// paused; returns each one's decisions, in order, and the number of script
/// calls they took.
async fn paused_burst(
    redis: &RedisServer,
    store: &RedisStore,
    policy: &Policy,
    requests: Vec<Batch>,
) -> (Vec<Vec<Decision>>, u64) {
    let mut conn = raw_connection(&redis.url()).await;
    // Load the script first, so the burst measures decisions only.
    let warm = Check::new("warm-up", policy, "warm-up", 1);
    store.check(&[warm]).await.unwrap();
    record_commands(&mut conn).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(PAUSE_MS)
        .arg("WRITE")
        .query_async(&mut conn)
        .await
        .unwrap();
    let policy = Arc::new(policy.clone());
    let mut tasks = Vec::new();
    for batch in requests {
        let store = store.clone();
        let policy = Arc::clone(&policy);
        tasks.push(tokio::spawn(async move {
            let checks: Vec<Check<'_>> = batch
                .iter()
                .map(|(rule, key, cost)| Check::new(rule, &policy, key, *cost))
                .collect();
            store.check(&checks).await.unwrap()
        }));
    }
    let mut decisions = Vec::new();
    for task in tasks {
        decisions.push(task.await.unwrap());
    }
    let calls = check_calls(&mut conn).await;
    (decisions, calls)
}

/// A store on `redis` with a timeout that outlasts the pause.
fn store_on(redis: &RedisServer, label: &str) -> RedisStore {
    let clock = manual_clock();
    let config = clock_config(&redis.url(), &unique_prefix(label), &clock)
        .with_timeout(Duration::from_secs(5));
    RedisStore::new(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_of_one_key_share_calls_and_admit_exactly_the_limit() {
    let redis = RedisServer::start();
    for algorithm in Algorithm::ALL {
        let store = store_on(&redis, &format!("coalesce-{algorithm}"));
        let policy = Policy::new(algorithm, 20, Duration::from_secs(60)).unwrap();
        let requests = (0..REQUESTS)
            .map(|_| vec![("hot", "ip:203.0.113.9".to_owned(), 1)])
            .collect();
        let (decisions, calls) = paused_burst(&redis, &store, &policy, requests).await;
        let decisions: Vec<Decision> = decisions.into_iter().flatten().collect();
        let admitted = decisions.iter().filter(|d| d.allowed).count();
        assert_eq!(admitted, 20, "{algorithm}: one key, limit 20");
        // In order of admission the remaining counts 19, 18, ... 0 each
        // appear once: every batch saw the ones before it.
        let mut remaining: Vec<u64> = decisions
            .iter()
            .filter(|d| d.allowed)
            .map(|d| d.remaining)
            .collect();
        remaining.sort_unstable();
        assert_eq!(remaining, (0..20).collect::<Vec<_>>(), "{algorithm}");
        assert!(
            calls < REQUESTS as u64 / 4,
            "{algorithm}: {REQUESTS} concurrent checks took {calls} script calls"
        );
    }
}

// One thread: the request tasks run in the order they were spawned, so their
// batches queue in that order, and the shared call decides them in it.
#[tokio::test(flavor = "current_thread")]
async fn shared_calls_decide_exactly_as_one_call_per_batch() {
    let redis = RedisServer::start();
    let store = store_on(&redis, "coalesce-mixed");
    let policy = Policy::new(Algorithm::SlidingWindow, 10, Duration::from_secs(60))
        .unwrap()
        .with_block_for(Duration::from_secs(30))
        .unwrap();
    // The first two requests go out at once in calls of their own, which may
    // reach Redis in either order: they use keys nothing else uses. The rest
    // queue behind them, in order, on three keys, with costs 1 to 4, so keys
    // run over their limit and into penalty blocks in the middle of a call.
    // Every fifth request checks a second rule too (a batch of two, among
    // batches of one).
    let mut requests: Vec<Batch> = vec![
        vec![("mixed", "ip:192.0.2.1".to_owned(), 1)],
        vec![("mixed", "ip:192.0.2.2".to_owned(), 1)],
    ];
    requests.extend((0..REQUESTS - 2).map(|i| {
        let key = format!("ip:198.51.100.{}", i % 3);
        let mut batch = vec![("mixed", key.clone(), 1 + (i % 4) as u64)];
        if i % 5 == 0 {
            batch.push(("second", key, 1));
        }
        batch
    }));
    let (decisions, calls) = paused_burst(&redis, &store, &policy, requests.clone()).await;
    assert!(
        calls <= 3,
        "{REQUESTS} queued checks took {calls} script calls"
    );

    // The same requests one by one on a memory store, at the same time.
    let clock = manual_clock();
    let memory = memory_on_clock(&clock);
    for (i, batch) in requests.iter().enumerate() {
        let checks: Vec<Check<'_>> = batch
            .iter()
            .map(|(rule, key, cost)| Check::new(rule, &policy, key, *cost))
            .collect();
        let expected = memory.check(&checks).await.unwrap();
        assert_eq!(decisions[i], expected, "request {i}: {batch:?}");
    }
    let all: Vec<&Decision> = decisions.iter().flatten().collect();
    assert!(all.iter().any(|d| d.blocked), "no penalty was reached");
    assert!(all.iter().filter(|d| d.allowed).count() > 3);
    assert!(
        decisions.iter().any(|ds| ds.len() == 2 && ds[1].allowed),
        "no batch of two was admitted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_give_up_mid_call_leave_the_store_working() {
    // Callers that stop waiting (an outer timeout, a closed connection) drop
    // their futures in the middle of a call they lead or a call they wait
    // for. The calls still in flight must be counted out, or the store
    // would queue every later request forever.
    let redis = RedisServer::start();
    let store = store_on(&redis, "coalesce-give-up");
    let policy = Policy::new(Algorithm::TokenBucket, 1_000, Duration::from_secs(60)).unwrap();
    let mut conn = raw_connection(&redis.url()).await;
    store
        .check(&[Check::new("give-up", &policy, "warm-up", 1)])
        .await
        .unwrap();
    for _ in 0..3 {
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(300)
            .arg("WRITE")
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut impatient = Vec::new();
        for i in 0..8 {
            let store = store.clone();
            let policy = policy.clone();
            impatient.push(tokio::spawn(async move {
                let key = format!("ip:192.0.2.{i}");
                let check = Check::new("give-up", &policy, &key, 1);
                tokio::time::timeout(Duration::from_millis(30), store.check(&[check]))
                    .await
                    .is_err()
            }));
        }
        for task in impatient {
            assert!(
                task.await.unwrap(),
                "a check answered while Redis was paused"
            );
        }
        // Redis answers again: every request gets its answer.
        for i in 0..20 {
            let key = format!("ip:198.51.100.{i}");
            let check = Check::new("give-up", &policy, &key, 1);
            let decision = tokio::time::timeout(Duration::from_secs(3), store.check(&[check]))
                .await
                .expect("a check after the pause never answered")
                .unwrap();
            assert!(decision[0].allowed);
        }
    }
}
