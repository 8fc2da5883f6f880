//! The stored form of counting states: packed numbers, and the decimal text
//! of earlier versions still read.

use std::time::Duration;

use floodgate_core::{Algorithm, Check, Policy, Store};
use floodgate_redis::RedisStore;
use floodgate_testkit::{shared_redis_url, unique_prefix};

use crate::support::{START_US, clock_config, keys_under, manual_clock, raw_connection};

/// States written in the decimal text of earlier versions are read and
/// counted on (a rolling upgrade keeps every count), and replaced by the
/// packed form on their next write.
#[tokio::test]
async fn text_states_of_earlier_versions_keep_counting() {
    let url = shared_redis_url();
    let mut conn = raw_connection(&url).await;
    let w = 10_000_000u64; // 10 s, in µs
    let start = START_US - START_US % w;
    // Each algorithm with a limit of 5 and a text state that has used 4:
    // one more is admitted (nothing left), the next refused.
    let cases = [
        (Algorithm::FixedWindow, format!("f{start}:4"), b'F', 17),
        (Algorithm::SlidingWindow, format!("s{start}:0:4"), b'S', 25),
        // Emission 2 s: a TAT 8 s ahead leaves room for one more.
        (
            Algorithm::TokenBucket,
            format!("t{}", START_US + 8_000_000),
            b'T',
            9,
        ),
    ];
    for (algorithm, text, tag, len) in cases {
        let prefix = unique_prefix("text-state");
        let clock = manual_clock();
        let store = RedisStore::new(clock_config(&url, &prefix, &clock)).unwrap();
        let policy = Policy::new(algorithm, 5, Duration::from_micros(w)).unwrap();
        let check = [Check::new("r", &policy, "ip:192.0.2.1", 1)];
        store.check(&check).await.unwrap();
        let keys = keys_under(&mut conn, &prefix).await;
        let key = keys.iter().find(|k| k.ends_with(":state")).unwrap();
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(&text)
            .arg("KEEPTTL")
            .query_async(&mut conn)
            .await
            .unwrap();

        let admitted = store.check(&check).await.unwrap()[0];
        assert!(admitted.allowed, "{algorithm:?} on {text:?}: {admitted:?}");
        assert_eq!(admitted.remaining, 0, "{algorithm:?} on {text:?}");
        let packed: Vec<u8> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            (packed.first().copied(), packed.len()),
            (Some(tag), len),
            "{algorithm:?}: the state after a write: {packed:?}"
        );
        let refused = store.check(&check).await.unwrap()[0];
        assert!(
            !refused.allowed,
            "{algorithm:?} after {text:?}: {refused:?}"
        );
    }
}
