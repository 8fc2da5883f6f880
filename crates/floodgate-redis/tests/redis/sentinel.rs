//! Sentinel: the store on a Sentinel-managed primary decides like the
//! memory store, and through a failover under load (`SENTINEL FAILOVER`, a
//! killed primary, a frozen one) its calls keep returning within the
//! timeout (failing during the switch), after which it limits exactly on
//! the new primary.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floodgate_core::{Algorithm, Check, Policy, Store};
use floodgate_redis::{RedisConfig, RedisStore};
use floodgate_testkit::topology::SentinelSet;
use floodgate_testkit::unique_prefix;

use crate::support::{
    MANUAL_CLOCK_TTL_MARGIN, RELAXED_TIMEOUT, assert_basics_like_memory, command_stats_in,
};

/// The config of a store on `set`'s primary under `prefix`.
fn sentinel_config(set: &SentinelSet, prefix: &str) -> RedisConfig {
    RedisConfig::sentinel(set.sentinel_urls(), set.master_name()).with_prefix(prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_store_decides_like_memory() {
    let set = SentinelSet::start();
    let prefix = unique_prefix("sentinel-basics");
    let mut n = 0;
    assert_basics_like_memory(|clock| {
        n += 1;
        RedisStore::new(
            sentinel_config(&set, &format!("{prefix}-{n}"))
                .with_timeout(RELAXED_TIMEOUT)
                .with_clock(Arc::new(clock.clone()))
                .with_ttl_margin(MANUAL_CLOCK_TTL_MARGIN),
        )
        .unwrap()
    })
    .await;
}

/// One call during the failover test: when it started (since the test's
/// start), how long it took, whether it succeeded.
struct Call {
    at: Duration,
    took: Duration,
    ok: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_under_load_stays_bounded_and_then_limits_on_the_new_primary() {
    failover_under_load("SENTINEL FAILOVER", SentinelSet::failover).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_and_limiting_resumes() {
    failover_under_load("kill -9 of the primary", SentinelSet::kill_primary).await;
}

/// A frozen primary keeps its connections open and answers nothing, so the
/// stores learn of the failover only through their own timeouts. It is
/// thawed once the replica has taken over: back, it believes it is the
/// primary until the Sentinels demote it, and the stores must not return
/// to it (the exact count on the new primary below would show it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_is_replaced_and_limiting_resumes() {
    failover_under_load("SIGSTOP of the primary", |set| {
        let took = set.freeze_primary();
        set.thaw();
        took
    })
    .await;
}

/// Two stores under load while `fail_over` replaces the primary: every call
/// returns within the timeout (failing while there is no primary), calls
/// succeed again once the Sentinels name the new one, and both stores then
/// admit exactly a limit between them, counted on the new primary.
async fn failover_under_load(what: &str, fail_over: fn(&mut SentinelSet) -> Duration) {
    const TIMEOUT: Duration = Duration::from_millis(100);
    // What the scheduler of a 2-core machine busy with the other tests adds
    // to the timeout, for most calls and for every call. A call waiting for
    // a lost primary (or a reconnection, or a lookup) would show as a
    // failure of the second bound, however loaded the machine.
    const USUAL_SLACK: Duration = Duration::from_millis(50);
    const WORST_SLACK: Duration = Duration::from_secs(1);
    // The failover tests measure call times: one at a time.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut set = SentinelSet::start();
    let old_primary = set.primary_port();
    let prefix = unique_prefix("sentinel-failover");
    let mut stores = Vec::new();
    for _ in 0..2 {
        let config = sentinel_config(&set, &prefix)
            .with_timeout(TIMEOUT)
            .with_connect_timeout(Duration::from_millis(500));
        stores.push(RedisStore::connect(config).await.unwrap());
    }
    let policy = Policy::new(Algorithm::SlidingWindow, 1_000_000, Duration::from_secs(60)).unwrap();
    let epoch = Instant::now();
    let calls = Arc::new(Mutex::new(Vec::<Call>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (s, store) in stores.iter().enumerate() {
        for t in 0..4 {
            let (store, policy, calls, stop) = (
                store.clone(),
                policy.clone(),
                Arc::clone(&calls),
                Arc::clone(&stop),
            );
            tasks.push(tokio::spawn(async move {
                let key = format!("ip:192.0.2.{}", s * 10 + t);
                while !stop.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let ok = store
                        .check(&[Check::new("load", &policy, &key, 1)])
                        .await
                        .is_ok();
                    let call = Call {
                        at: start - epoch,
                        took: start.elapsed(),
                        ok,
                    };
                    calls.lock().unwrap().push(call);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let failover_at = epoch.elapsed();
    // The failover, then how long until the stores' scripts run on the new
    // primary (which has run none before: replicas are sent the effects of
    // function calls, not the calls).
    let (set, failover_took, switched_after) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let took = fail_over(&mut set);
        let new_primary = set.primary_port();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !set
            .cli(new_primary, &["info", "commandstats"])
            .contains("cmdstat_fcall:")
        {
            assert!(
                Instant::now() < deadline,
                "no script call reached the new primary"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        (set, took, started.elapsed())
    })
    .await
    .unwrap();
    let new_primary = set.primary_port();
    assert_ne!(new_primary, old_primary);
    // Load goes on for a second more, and until it has run error-free for
    // a second (at most 15 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    let at_least = Instant::now() + Duration::from_secs(1);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = epoch.elapsed();
        let calls = calls.lock().unwrap();
        let recent_error = calls
            .iter()
            .any(|c| !c.ok && c.at + Duration::from_secs(1) > now);
        if (!recent_error && Instant::now() > at_least) || Instant::now() > deadline {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let calls = std::mem::take(&mut *calls.lock().unwrap());
    let errors: Vec<&Call> = calls.iter().filter(|c| !c.ok).collect();
    let mut took: Vec<Duration> = calls.iter().map(|c| c.took).collect();
    took.sort();
    let slowest = took.last().copied().unwrap_or_default();
    let p99 = took[took.len() * 99 / 100];
    let gap = match (errors.first(), errors.iter().map(|c| c.at + c.took).max()) {
        (Some(first), Some(last_end)) => last_end.saturating_sub(first.at),
        _ => Duration::ZERO,
    };
    eprintln!(
        "sentinel failover {old_primary} -> {new_primary} by {what}: the Sentinels took {} ms, \
         the stores' calls reached the new primary {} ms after it began; \
         {} calls, {} failed, failing for {} ms (first failure {} ms after the failover began); \
         slowest call {} ms, 99% within {} ms (timeout {} ms)",
        failover_took.as_millis(),
        switched_after.as_millis(),
        calls.len(),
        errors.len(),
        gap.as_millis(),
        errors
            .first()
            .map_or(0, |c| c.at.saturating_sub(failover_at).as_millis()),
        slowest.as_millis(),
        p99.as_millis(),
        TIMEOUT.as_millis()
    );
    assert!(
        p99 <= TIMEOUT + USUAL_SLACK && slowest <= TIMEOUT + WORST_SLACK,
        "calls took up to {slowest:?}, 99% within {p99:?}; timeout {TIMEOUT:?}"
    );
    let last_second = epoch.elapsed().saturating_sub(Duration::from_secs(1));
    assert!(
        calls.iter().filter(|c| c.at > last_second).all(|c| c.ok),
        "calls still fail a second after the failover: {} failures, gap {gap:?}",
        errors.len()
    );

    // From here on no call may reach the old primary (when it still runs:
    // a replica now, or a thawed primary the Sentinels demoted).
    let old_calls = || {
        set.try_cli(old_primary, &["info", "commandstats"])
            .ok()
            .map(|stats| fcall_calls(&stats))
    };
    let old_calls_before = old_calls();

    // Shared limiting on the new primary: both stores, one fresh key,
    // exactly the limit recorded there. A call may still time out on this
    // loaded machine (then it may or may not have been recorded), so what
    // the stores saw admitted is at most the limit, and what the primary
    // recorded is exactly it.
    const LIMIT: u64 = 50;
    let limited = Policy::new(Algorithm::SlidingLog, LIMIT, Duration::from_secs(60)).unwrap();
    let admitted = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for store in &stores {
        for _ in 0..8 {
            let (store, limited, admitted, failed) = (
                store.clone(),
                limited.clone(),
                Arc::clone(&admitted),
                Arc::clone(&failed),
            );
            tasks.push(tokio::spawn(async move {
                for _ in 0..20 {
                    match store
                        .check(&[Check::new("after", &limited, "ip:198.51.100.9", 1)])
                        .await
                    {
                        Ok(d) if d[0].allowed => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let (admitted, failed) = (
        admitted.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    eprintln!(
        "sentinel after {what}: 320 calls, {admitted} admitted, {failed} failed (limit {LIMIT})"
    );
    assert!(admitted <= LIMIT && admitted + failed >= LIMIT);
    assert!(
        failed < 32,
        "{failed} of 320 calls failed on the new primary"
    );
    let state = format!("{prefix}:{{ip:198.51.100.9}}:after:state");
    assert_eq!(
        set.cli(new_primary, &["llen", &state]).trim(),
        LIMIT.to_string()
    );
    if let Some(before) = old_calls_before {
        assert_eq!(
            old_calls(),
            Some(before),
            "a store called the old primary {old_primary} after the failover"
        );
    }
}

/// The `FCALL`s a server was sent, run or rejected (a replica rejects a
/// function that may write), from its `INFO commandstats`.
fn fcall_calls(stats: &str) -> u64 {
    let (calls, rejected, _) = command_stats_in(stats, "fcall");
    calls + rejected
}
