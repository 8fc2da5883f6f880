//! Top-clients summaries: each instance's kept until its time to live runs
//! out, replaced by its next, all read in one call, the same on Redis as in
//! memory; on Redis both keys share the `{top}` slot and expire.

use std::time::Duration;

use floodgate_core::{ManualClock, RuleSummary, Store, TopEntry, TopSummary};

use floodgate_testkit::shared_redis_url;

use crate::support::{keys_under, manual_clock, memory_on_clock, raw_connection, redis_on_clock};

fn summary(instance: &str, key: &str, admitted: u64) -> TopSummary {
    TopSummary {
        instance: instance.to_owned(),
        rules: vec![RuleSummary {
            rule: "api".to_owned(),
            decisions: admitted + 1,
            floor: 1,
            entries: vec![TopEntry {
                key: key.to_owned(),
                admitted,
                refused: 0,
                error: 1,
            }],
        }],
    }
}

async fn instances(store: &impl Store) -> Vec<TopSummary> {
    let mut got = store.top_summaries().await.unwrap();
    got.sort_by(|a, b| a.instance.cmp(&b.instance));
    got
}

async fn top_sequence(store: &impl Store, clock: &ManualClock) {
    let ttl = Duration::from_secs(15);
    assert!(store.top_summaries().await.unwrap().is_empty());
    let a = summary("a", "ip:192.0.2.1\n{x}", 10);
    let b = summary("b", "ip:192.0.2.2", 20);
    store.put_top(&a, ttl).await.unwrap();
    clock.advance(Duration::from_secs(10));
    store.put_top(&b, ttl).await.unwrap();
    assert_eq!(instances(store).await, [a.clone(), b.clone()]);

    // a's next summary replaces its last.
    let a2 = summary("a", "ip:192.0.2.3", 30);
    store.put_top(&a2, ttl).await.unwrap();
    assert_eq!(instances(store).await, [a2.clone(), b.clone()]);

    // b stops publishing: its summary leaves 15 s after its last (t = 10).
    clock.advance(Duration::from_secs(10));
    let a3 = summary("a", "ip:192.0.2.3", 40);
    store.put_top(&a3, ttl).await.unwrap();
    clock.advance(Duration::from_secs(4));
    assert_eq!(instances(store).await, [a3.clone(), b.clone()]);
    clock.advance(Duration::from_secs(1));
    assert_eq!(instances(store).await, [a3]);
    clock.advance(Duration::from_secs(10));
    assert!(store.top_summaries().await.unwrap().is_empty());
}

#[tokio::test]
async fn summaries_live_for_their_ttl_on_memory_and_redis() {
    let clock = manual_clock();
    top_sequence(&memory_on_clock(&clock), &clock).await;

    let clock = manual_clock();
    let store = redis_on_clock("top", &clock);
    top_sequence(&store, &clock).await;

    // Both keys in one slot, each with a time to live.
    let prefix = store.config().prefix.clone();
    let mut conn = raw_connection(&shared_redis_url()).await;
    store
        .put_top(&summary("c", "k", 1), Duration::from_secs(15))
        .await
        .unwrap();
    let mut keys = keys_under(&mut conn, &prefix).await;
    keys.sort();
    assert_eq!(
        keys,
        [
            format!("{prefix}:{{top}}:expiry"),
            format!("{prefix}:{{top}}:summaries")
        ]
    );
    for key in keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((1..=16_000).contains(&ttl), "{key}: {ttl} ms");
    }
}
