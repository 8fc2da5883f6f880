//! Shared set-up: stores on a manual clock, runtimes, a raw connection.

use std::sync::Arc;
use std::time::Duration;

use floodgate_core::{Clock, ManualClock, MemoryStore, Timestamp};
use floodgate_redis::{RedisConfig, RedisStore};
use floodgate_testkit::{shared_redis_url, unique_prefix};

/// A start time that is not aligned to any window, late enough that times
/// need all 51 bits Lua's doubles hold exactly.
pub(crate) const START_US: u64 = 1_700_000_000_123_457;

/// A timeout no healthy local Redis misses, even on a loaded 2-core machine:
/// these tests are about decisions, not latency.
pub(crate) const RELAXED_TIMEOUT: Duration = Duration::from_secs(5);

/// Keys outlive their state by this much in manual-clock tests, whose clock
/// does not follow real time (see `TimeSource::Clock`).
pub(crate) const MANUAL_CLOCK_TTL_MARGIN: Duration = Duration::from_secs(3600);

/// A manual clock at [`START_US`].
pub(crate) fn manual_clock() -> ManualClock {
    ManualClock::new(Timestamp::from_micros(START_US))
}

/// A Redis store on the shared Redis, under a fresh prefix, taking time from
/// `clock`.
pub(crate) fn redis_on_clock(label: &str, clock: &ManualClock) -> RedisStore {
    RedisStore::new(clock_config(
        &shared_redis_url(),
        &unique_prefix(label),
        clock,
    ))
    .expect("valid config")
}

/// The config of a manual-clock store of `url` under `prefix`.
pub(crate) fn clock_config(url: &str, prefix: &str, clock: &ManualClock) -> RedisConfig {
    RedisConfig::new(url)
        .with_prefix(prefix)
        .with_timeout(RELAXED_TIMEOUT)
        .with_clock(Arc::new(clock.clone()))
        .with_ttl_margin(MANUAL_CLOCK_TTL_MARGIN)
}

/// A store on the shared Redis under `prefix`, on Redis' own clock (the
/// production default).
pub(crate) fn redis_on_server_time(prefix: &str) -> RedisStore {
    RedisStore::new(
        RedisConfig::new(shared_redis_url())
            .with_prefix(prefix)
            .with_timeout(RELAXED_TIMEOUT),
    )
    .expect("valid config")
}

/// A memory store on `clock`.
pub(crate) fn memory_on_clock(clock: &ManualClock) -> MemoryStore {
    MemoryStore::with_clock(100_000, Arc::new(clock.clone()))
}

/// A plain connection for looking at what the store wrote.
pub(crate) async fn raw_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Every key under `prefix`.
pub(crate) async fn keys_under(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys.dedup();
    keys
}

/// A clock `offset` ahead of the system clock: an instance whose clock is wrong.
#[derive(Debug)]
pub(crate) struct SkewedClock {
    pub(crate) offset: Duration,
}

impl Clock for SkewedClock {
    fn now(&self) -> Timestamp {
        Timestamp::now().saturating_add(self.offset)
    }
}
