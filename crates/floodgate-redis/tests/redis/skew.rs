//! Clock skew: with Redis' clock as the time source, instances whose own
//! clocks disagree by 10 s still decide as one; with their own clocks, they
//! would not (the second half shows the test can tell).

use std::sync::Arc;
use std::time::Duration;

use floodgate_core::{Algorithm, Check, Clock, Policy, Store, SystemClock, micros_of};
use floodgate_redis::{RedisConfig, RedisStore, TimeSource};
use floodgate_testkit::{shared_redis_url, unique_prefix};

use crate::support::{RELAXED_TIMEOUT, SkewedClock, raw_connection};

const SKEW: Duration = Duration::from_secs(10);

/// Two stores sharing `prefix`, with the given time sources.
fn pair(prefix: &str, a: TimeSource, b: TimeSource) -> [RedisStore; 2] {
    let url = shared_redis_url();
    [a, b].map(|time| {
        RedisStore::new(
            RedisConfig::new(&url)
                .with_prefix(prefix)
                .with_timeout(RELAXED_TIMEOUT)
                .with_time_source(time),
        )
        .unwrap()
    })
}

/// Alternates checks between the two stores on one key; returns
/// (allowed, remaining) of each.
async fn alternate(stores: &[RedisStore; 2], policy: &Policy) -> Vec<(bool, u64)> {
    let mut seen = Vec::new();
    for i in 0..24 {
        let d = stores[i % 2]
            .check(&[Check::new("skew", policy, "ip:192.0.2.9", 1)])
            .await
            .unwrap()
            .remove(0);
        seen.push((d.allowed, d.remaining));
    }
    seen
}

/// Returns once Redis' clock is in the first half of a `window`.
async fn wait_for_early_in_window(window: Duration) {
    let mut conn = raw_connection(&shared_redis_url()).await;
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let into = Duration::from_micros((secs * 1_000_000 + micros) % micros_of(window));
    if into > window / 2 {
        tokio::time::sleep(window - into + Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn instances_with_skewed_clocks_agree_on_redis_time() {
    // A 10 s skew is a whole window of the fixed and sliding windows, and
    // refills the token bucket twice over; only the log would not notice.
    let policies = [
        Policy::new(Algorithm::FixedWindow, 10, Duration::from_secs(10)).unwrap(),
        Policy::new(Algorithm::SlidingWindow, 10, Duration::from_secs(10)).unwrap(),
        Policy::new(Algorithm::TokenBucket, 10, Duration::from_secs(5)).unwrap(),
    ];
    // One instance's clock is right, the other's 10 s ahead; each would send
    // its own time if asked to.
    let right: Arc<dyn Clock> = Arc::new(SystemClock);
    let ahead: Arc<dyn Clock> = Arc::new(SkewedClock { offset: SKEW });
    let expected: Vec<(bool, u64)> = (0..24u64)
        .map(|i| if i < 10 { (true, 9 - i) } else { (false, 0) })
        .collect();
    // Run well inside one 10 s window, so no window rolls over mid-test.
    wait_for_early_in_window(Duration::from_secs(10)).await;
    for policy in &policies {
        let algorithm = policy.algorithm();
        let on_redis_time = pair(
            &unique_prefix("skew-server"),
            TimeSource::Server,
            TimeSource::Server,
        );
        assert_eq!(
            alternate(&on_redis_time, policy).await,
            expected,
            "{algorithm}: instances on Redis time disagree"
        );
    }
    for policy in &policies {
        let algorithm = policy.algorithm();
        let on_own_clocks = pair(
            &unique_prefix("skew-local"),
            TimeSource::Clock(right.clone()),
            TimeSource::Clock(ahead.clone()),
        );
        let admitted = alternate(&on_own_clocks, policy)
            .await
            .iter()
            .filter(|(allowed, _)| *allowed)
            .count();
        assert!(
            admitted > 10,
            "{algorithm}: own clocks 10 s apart admitted only {admitted}; the skew test cannot tell"
        );
    }
}
