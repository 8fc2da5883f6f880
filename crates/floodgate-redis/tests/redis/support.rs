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

/// Runs `attempt` until it succeeds, 50 ms apart, for at most `within`: its
/// first success, or its last error.
pub(crate) async fn until_ok<T, Fut>(
    within: Duration,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, floodgate_core::Error>
where
    Fut: std::future::Future<Output = Result<T, floodgate_core::Error>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// `calls`, `rejected_calls` and `failed_calls` of `command` in the text of
/// `INFO commandstats`; zeros when the command never ran.
pub(crate) fn command_stats_in(info: &str, command: &str) -> (u64, u64, u64) {
    let prefix = format!("cmdstat_{command}:");
    let Some(line) = info.lines().find_map(|l| l.trim().strip_prefix(&prefix)) else {
        return (0, 0, 0);
    };
    let field = |name: &str| {
        line.split(',')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    (
        field("calls"),
        field("rejected_calls"),
        field("failed_calls"),
    )
}

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

/// The client keys of [`assert_basics_like_memory`]: three identities, so
/// three hash slots (on a cluster, mostly on different nodes); the second
/// needs hash-tag escaping.
const BASIC_KEYS: [&str; 3] = ["ip:192.0.2.1", "header:x-api-key:{a}%b", "global"];

/// One step's result in [`assert_basics_like_memory`].
#[derive(Debug, PartialEq)]
enum Outcome {
    Decisions(Vec<floodgate_core::Decision>),
    Peek(floodgate_core::Decision),
    Flag(bool),
    Added(floodgate_core::Block),
    Blocks(Vec<floodgate_core::Block>),
    /// A page of override changes.
    Overrides(floodgate_core::OverrideChanges),
    /// An override as stored.
    Override(floodgate_core::KeyOverride),
    /// A refusal that started a block ladder's penalty, and the length (µs)
    /// of the block it started.
    Ladder(floodgate_core::Decision, u64),
}

/// Store conformance basics for a topology: a scripted sequence of single-
/// and multi-key batches (admitted, refused, vetoed by another key's rule,
/// shadow), penalty blocks, peeks, resets and manual blocks, run for every
/// algorithm on a memory store and on a store from `redis_store` (given the
/// manual clock), which must give identical results step by step.
pub(crate) async fn assert_basics_like_memory(
    mut redis_store: impl FnMut(&ManualClock) -> RedisStore,
) {
    use floodgate_core::{Algorithm, Policy};

    for algorithm in Algorithm::ALL {
        let mut main = Policy::new(algorithm, 5, Duration::from_secs(10)).unwrap();
        if algorithm == Algorithm::TokenBucket {
            main = main.with_burst(4).unwrap();
        }
        let penalised = Policy::new(algorithm, 3, Duration::from_secs(2))
            .unwrap()
            .with_block_for(Duration::from_secs(5))
            .unwrap();
        let ladder = Policy::new(algorithm, 3, Duration::from_secs(2))
            .unwrap()
            .with_block_ladder(&[1, 3, 6].map(Duration::from_secs))
            .unwrap();
        // A token bucket holds requests for their turn; the others cannot.
        let mut paced = Policy::new(algorithm, 4, Duration::from_secs(2)).unwrap();
        if algorithm == Algorithm::TokenBucket {
            paced = paced
                .with_burst(1)
                .and_then(|p| p.with_max_delay(Duration::from_secs(1)))
                .unwrap();
        }
        let rules = [
            ("main", main),
            ("penalised", penalised),
            ("ladder", ladder),
            ("paced", paced),
        ];
        let clock = manual_clock();
        let memory = basics_sequence(&memory_on_clock(&clock), &clock, &rules).await;
        let redis = basics_sequence(&redis_store(&clock), &clock, &rules).await;
        assert_eq!(memory.len(), redis.len());
        for (i, (m, r)) in memory.iter().zip(&redis).enumerate() {
            assert_eq!(
                m, r,
                "{algorithm}: step {i} differs: memory left, redis right"
            );
        }
        let decisions = || {
            memory.iter().flat_map(|o| match o {
                Outcome::Decisions(d) => d.as_slice(),
                _ => &[],
            })
        };
        assert!(decisions().any(|d| d.blocked), "{algorithm}: no penalty");
        assert_eq!(
            decisions().any(|d| d.allowed && !d.delay.is_zero()),
            algorithm == Algorithm::TokenBucket,
            "{algorithm}: held requests"
        );
        // The ladder's offences, in order: each step, the last repeated,
        // then the first again once forgotten, and again after a lift.
        let started: Vec<u64> = memory
            .iter()
            .filter_map(|o| match o {
                Outcome::Ladder(_, block_us) => Some(block_us / 1_000_000),
                _ => None,
            })
            .collect();
        assert_eq!(started, [1, 3, 6, 6, 1, 3, 1], "{algorithm}: ladder steps");
        // The last page of override changes: the removal, the new one,
        // then the three expired ones its put dropped.
        let Some(Outcome::Overrides(last)) = memory.last() else {
            panic!("{algorithm}: no override changes at the end");
        };
        let limits: Vec<Option<u64>> = last
            .changes
            .iter()
            .map(|c| c.now.as_ref().map(|o| o.limit))
            .collect();
        assert_eq!(
            limits,
            [None, Some(11), None, None, None],
            "{algorithm}: {last:?}"
        );
        assert!(!last.more && !last.reset);
        assert!(
            decisions().any(|d| !d.allowed && !d.blocked),
            "{algorithm}: no refusal"
        );
    }
}

/// The sequence of [`assert_basics_like_memory`] on one store.
async fn basics_sequence<S: floodgate_core::Store>(
    store: &S,
    clock: &ManualClock,
    rules: &[(&str, floodgate_core::Policy); 4],
) -> Vec<Outcome> {
    use floodgate_core::Check;

    clock.set(Timestamp::from_micros(START_US));
    let mut steps = Vec::new();
    // Each check is (rule, key, cost, shadow).
    let check = async |specs: &[(usize, usize, u64, bool)]| {
        let checks: Vec<Check<'_>> = specs
            .iter()
            .map(|&(r, k, cost, shadow)| {
                let c = Check::new(rules[r].0, &rules[r].1, BASIC_KEYS[k], cost);
                if shadow { c.shadow() } else { c }
            })
            .collect();
        Outcome::Decisions(store.check(&checks).await.unwrap())
    };
    let peek = async |r: usize, k: usize| {
        Outcome::Peek(
            store
                .peek(rules[r].0, &rules[r].1, BASIC_KEYS[k])
                .await
                .unwrap(),
        )
    };
    let blocks = async || Outcome::Blocks(store.blocks().await.unwrap());

    steps.push(peek(0, 0).await);
    for _ in 0..4 {
        steps.push(check(&[(0, 0, 1, false)]).await);
        clock.advance(Duration::from_micros(1));
    }
    steps.push(check(&[(0, 0, 2, false)]).await); // over the limit of 5
    // Two keys, both admit: both charged.
    steps.push(check(&[(0, 1, 1, false), (1, 0, 1, false)]).await);
    for _ in 0..3 {
        steps.push(check(&[(1, 0, 1, false)]).await); // the last starts a penalty
    }
    steps.push(blocks().await);
    // Key 0 is blocked under rule 1: it vetoes key 1's check.
    steps.push(check(&[(0, 1, 1, false), (1, 0, 1, false)]).await);
    steps.push(peek(0, 1).await);
    // The same with rule 1 in shadow: key 1 is charged.
    steps.push(check(&[(0, 1, 2, false), (1, 0, 1, true)]).await);
    // Three keys, one exhausted: nothing charged anywhere.
    steps.push(check(&[(0, 2, 1, false), (1, 1, 1, false), (0, 1, 2, false)]).await);
    steps.push(peek(1, 1).await);
    steps.push(peek(0, 2).await);
    clock.advance(Duration::from_micros(5_000_001)); // the penalty ends
    steps.push(blocks().await);
    steps.push(check(&[(1, 0, 1, false)]).await);
    steps.push(Outcome::Added(
        store
            .add_block(BASIC_KEYS[1], Duration::from_secs(7), "basics")
            .await
            .unwrap(),
    ));
    for _ in 0..4 {
        steps.push(check(&[(1, 1, 1, false)]).await);
    }
    steps.push(blocks().await);
    steps.push(Outcome::Flag(
        store.remove_block(BASIC_KEYS[1]).await.unwrap(),
    ));
    steps.push(peek(1, 1).await);
    steps.push(Outcome::Flag(
        store.remove_block(BASIC_KEYS[1]).await.unwrap(),
    ));
    steps.push(blocks().await);
    steps.push(Outcome::Flag(
        store.reset("main", BASIC_KEYS[0]).await.unwrap(),
    ));
    steps.push(Outcome::Flag(
        store.reset("main", BASIC_KEYS[0]).await.unwrap(),
    ));
    steps.push(peek(0, 0).await);
    clock.advance(Duration::from_secs(11));
    steps.push(check(&[(0, 0, 1, false), (0, 1, 1, false), (1, 2, 1, false)]).await);
    steps.push(check(&[(0, 0, 3, false), (1, 2, 2, false), (0, 2, 1, true)]).await);

    // The block ladder (1 s, 3 s, 6 s; limit 3 per 2 s) on key 0: offend
    // (checks until one is refused), wait out the block, and again.
    let ladder = LADDER_KEY;
    let offend = async |steps: &mut Vec<Outcome>| {
        for _ in 0..4 {
            let c = [Check::new(rules[2].0, &rules[2].1, ladder, 1)];
            let d = store.check(&c).await.unwrap()[0];
            if d.blocked {
                // The block's own length, as the listing gives it.
                let now = clock.now().as_micros();
                let listed = store.blocks().await.unwrap();
                let block = listed
                    .iter()
                    .find(|b| b.target == ladder && b.source.as_str() == rules[2].0)
                    .expect("the ladder's block is listed");
                steps.push(Outcome::Ladder(d, block.until.as_micros() - now));
                return;
            }
            steps.push(Outcome::Decisions(vec![d]));
        }
        panic!("no offence after 4 checks");
    };
    let ladder_peek =
        async || Outcome::Peek(store.peek(rules[2].0, &rules[2].1, ladder).await.unwrap());
    offend(&mut steps).await; // 1st: 1 s
    clock.advance(Duration::from_millis(1_500));
    offend(&mut steps).await; // remembered: 3 s
    steps.push(blocks().await);
    clock.advance(Duration::from_millis(3_500));
    offend(&mut steps).await; // 6 s
    steps.push(ladder_peek().await);
    clock.advance(Duration::from_secs(11)); // 5 s after the block: remembered
    offend(&mut steps).await; // the last step repeats: 6 s
    clock.advance(Duration::from_secs(12)); // 6 s after the block: forgotten
    offend(&mut steps).await; // 1 s again
    clock.advance(Duration::from_millis(1_500));
    offend(&mut steps).await; // 3 s
    // Lifting the block forgives the offences.
    steps.push(Outcome::Flag(store.remove_block(ladder).await.unwrap()));
    clock.advance(Duration::from_secs(2));
    offend(&mut steps).await; // 1 s

    // Probes, charges and refunds, and a token bucket holding requests for
    // their turn (the others refuse).
    let one =
        |r: usize, k: usize, cost: u64| Check::new(rules[r].0, &rules[r].1, BASIC_KEYS[k], cost);
    clock.advance(Duration::from_secs(30));
    for _ in 0..6 {
        steps.push(Outcome::Decisions(
            store.check(&[one(3, 0, 1)]).await.unwrap(),
        ));
    }
    steps.push(Outcome::Decisions(
        store.refund(&[one(3, 0, 1)]).await.unwrap(),
    ));
    steps.push(Outcome::Decisions(
        store.check(&[one(3, 0, 1)]).await.unwrap(),
    ));
    steps.push(Outcome::Decisions(
        store
            .check(&[one(0, 1, 1).probe(), one(3, 1, 1)])
            .await
            .unwrap(),
    ));
    steps.push(Outcome::Decisions(
        store
            .charge(&[one(0, 1, 2), one(3, 1, 1), one(0, 1, 1)])
            .await
            .unwrap(),
    ));
    steps.push(peek(0, 1).await);

    override_sequence(store, clock, &mut steps).await;
    steps
}

/// Per-key overrides: puts with and without a time to live, a replacement,
/// a removal, expiry (dropped by the next write), and the change log read
/// in pages, from the start and from the middle, and past its end.
async fn override_sequence<S: floodgate_core::Store>(
    store: &S,
    clock: &ManualClock,
    steps: &mut Vec<Outcome>,
) {
    use floodgate_core::KeyOverride;
    let o = |rule: &str, key: &str, limit: u64| KeyOverride {
        rule: rule.to_owned(),
        key: key.to_owned(),
        limit,
        window: limit.is_multiple_of(2).then(|| Duration::from_secs(limit)),
        burst: limit.is_multiple_of(3).then_some(limit * 2),
        expires: None,
    };
    let ttl = Some(Duration::from_secs(5));
    let put = async |o: KeyOverride, ttl: Option<Duration>| {
        Outcome::Override(store.put_override(&o, ttl).await.unwrap())
    };
    steps.push(Outcome::Overrides(
        store.override_changes(0, 10).await.unwrap(),
    ));
    steps.push(put(o("main", BASIC_KEYS[0], 7), None).await);
    steps.push(put(o("main", BASIC_KEYS[1], 8), ttl).await);
    steps.push(put(o("penalised", BASIC_KEYS[1], 9), ttl).await);
    steps.push(put(o("main", "{odd}:key%", 10), None).await);
    // Replaced: one change per (rule, key), the latest.
    steps.push(put(o("main", BASIC_KEYS[0], 12), ttl).await);
    for (since, max) in [(0, 2), (2, 2), (4, 10), (0, 100), (99, 10)] {
        steps.push(Outcome::Overrides(
            store.override_changes(since, max).await.unwrap(),
        ));
    }
    steps.push(Outcome::Flag(
        store.remove_override("main", "{odd}:key%").await.unwrap(),
    ));
    steps.push(Outcome::Flag(
        store.remove_override("main", "{odd}:key%").await.unwrap(),
    ));
    // Past their time to live: the next write drops all three, in order
    // of expiry.
    clock.advance(Duration::from_secs(6));
    steps.push(put(o("penalised", BASIC_KEYS[2], 11), None).await);
    steps.push(Outcome::Overrides(
        store.override_changes(5, 100).await.unwrap(),
    ));
}

/// The client key of the block ladder in [`basics_sequence`].
const LADDER_KEY: &str = "ip:198.51.100.9";
