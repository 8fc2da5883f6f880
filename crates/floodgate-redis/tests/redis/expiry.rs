//! No key without expiry: whatever the store writes carries a TTL, set in the
//! same script call (the INCR-then-EXPIRE race cannot happen).

use std::time::Duration;

use floodgate_core::{Algorithm, Check, Policy, Store, Timestamp};
use floodgate_redis::RedisStore;
use floodgate_testkit::{shared_redis_url, unique_prefix};

use crate::support::{
    MANUAL_CLOCK_TTL_MARGIN, START_US, clock_config, keys_under, manual_clock, raw_connection,
    redis_on_server_time,
};

#[tokio::test]
async fn every_key_written_has_a_ttl() {
    let url = shared_redis_url();
    let prefix = unique_prefix("expiry");
    let store = redis_on_server_time(&prefix);
    let mut policies = Vec::new();
    for algorithm in Algorithm::ALL {
        policies.push(Policy::new(algorithm, 3, Duration::from_secs(60)).unwrap());
        policies.push(
            Policy::new(algorithm, 2, Duration::from_secs(30))
                .unwrap()
                .with_block_for(Duration::from_secs(120))
                .unwrap(),
        );
    }
    let keys = [
        "ip:203.0.113.1",
        "ip:203.0.113.2",
        "header:x-api-key:k{1}",
        "",
    ];
    for round in 0..6u64 {
        for (i, policy) in policies.iter().enumerate() {
            let rule = format!("rule{i}");
            for key in keys {
                let checks = [
                    Check::new(&rule, policy, key, 1 + round % 2),
                    Check::new("shared", &policies[0], key, 1),
                ];
                store.check(&checks).await.unwrap();
            }
        }
        store
            .add_block(
                &format!("ip:192.0.2.{round}"),
                Duration::from_secs(300),
                "test",
            )
            .await
            .unwrap();
    }
    // A rule that changes algorithm overwrites a list with a string and back.
    for policy in &policies {
        store
            .check(&[Check::new("reloaded", policy, keys[0], 1)])
            .await
            .unwrap();
    }
    store.reset("rule0", keys[1]).await.unwrap();
    store.remove_block("ip:192.0.2.0").await.unwrap();
    store.remove_block(keys[2]).await.unwrap();
    assert!(!store.blocks().await.unwrap().is_empty());

    let mut conn = raw_connection(&url).await;
    let found = keys_under(&mut conn, &prefix).await;
    assert!(
        found.iter().any(|k| k.ends_with(":state")),
        "no state keys in {found:?}"
    );
    assert!(
        found.iter().any(|k| k.ends_with(":block")),
        "no penalty keys in {found:?}"
    );
    assert!(
        found.iter().any(|k| k.ends_with(":blocks")),
        "no registry in {found:?}"
    );
    for key in &found {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} has PTTL {ttl}");
    }
}

#[tokio::test]
async fn the_registry_outlives_its_latest_block() {
    let url = shared_redis_url();
    let prefix = unique_prefix("registry-ttl");
    let store = redis_on_server_time(&prefix);
    store
        .add_block("ip:192.0.2.1", Duration::from_secs(3600), "long")
        .await
        .unwrap();
    // A shorter block later must not shorten the registry's life.
    store
        .add_block("ip:192.0.2.2", Duration::from_secs(5), "short")
        .await
        .unwrap();
    let mut conn = raw_connection(&url).await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}:blocks"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 3_590_000,
        "registry PTTL {ttl} ms, latest block ends in 3600 s"
    );
}

/// A window state's expiry follows its window: a later write in the same
/// window keeps the expiry the first one set, and the first write in a new
/// window sets that window's expiry, not the old one's.
#[tokio::test]
async fn window_states_expire_with_the_window_they_hold() {
    let url = shared_redis_url();
    let conn = raw_connection(&url).await;
    let w = 1_000_000_000u64; // 1000 s, in µs
    let margin_ms = MANUAL_CLOCK_TTL_MARGIN.as_millis() as i64;
    for (algorithm, windows_kept) in [(Algorithm::FixedWindow, 1), (Algorithm::SlidingWindow, 2)] {
        let prefix = unique_prefix("window-ttl");
        let clock = manual_clock();
        let store = RedisStore::new(clock_config(&url, &prefix, &clock)).unwrap();
        let policy = Policy::new(algorithm, 100, Duration::from_micros(w)).unwrap();
        let start = START_US - START_US % w;
        // A check at `at`, then the state key's PTTL.
        let check_and_pttl = |at: u64| {
            clock.set(Timestamp::from_micros(at));
            let store = &store;
            let policy = &policy;
            let prefix = &prefix;
            let conn = conn.clone();
            async move {
                let mut conn = conn;
                store
                    .check(&[Check::new("r", policy, "ip:192.0.2.1", 1)])
                    .await
                    .unwrap();
                let keys = keys_under(&mut conn, prefix).await;
                let key = keys.iter().find(|k| k.ends_with(":state")).unwrap();
                let pttl: i64 = redis::cmd("PTTL")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                pttl
            }
        };
        // Expected PTTL (ms) for a write at `at` into the window starting
        // at `window`.
        let expected =
            |window: u64, at: u64| ((window + windows_kept * w - at) / 1000) as i64 + margin_ms;
        let first = start + w / 10;
        let pttl = check_and_pttl(first).await;
        let want = expected(start, first);
        assert!(
            (want - 2_000..=want).contains(&pttl),
            "{algorithm:?}: first write: PTTL {pttl}, want about {want}"
        );
        // Later in the same window: the expiry stays put.
        let pttl = check_and_pttl(start + w / 2).await;
        assert!(
            (want - 2_000..=want).contains(&pttl),
            "{algorithm:?}: same window: PTTL {pttl}, want about {want}"
        );
        // Late in the next window: that window's expiry, well below the old
        // one's.
        let late = start + w + 9 * w / 10;
        let pttl = check_and_pttl(late).await;
        let want = expected(start + w, late);
        assert!(
            (want - 2_000..=want).contains(&pttl),
            "{algorithm:?}: next window: PTTL {pttl}, want about {want}"
        );
    }
}
