//! The Redis store's Lua scripts against the memory store: every value a
//! script receives, through `floodgate_redis::RedisStore` on a real
//! `redis-server` of the fuzzer's own, compared operation by operation with
//! `floodgate_core::MemoryStore` on the same manual clock.
//!
//! A case is a sequence of store operations (the unit `--iterations`
//! counts) on a few rules and keys: batches of checks of any size with
//! costs at and across each rule's capacity and shadow checks, peeks,
//! resets, manual blocks with any target, reason and TTL the admin API
//! accepts, block removals and listings, and clock moves (tiny steps, whole
//! windows, up to a year, backwards, onto window boundaries). Rule names
//! are random text (`{`, `}`, `:`, `%`, NUL, non-ASCII, up to 300 bytes) or
//! names shared by rules of different algorithms; keys are any text,
//! sometimes tens of kilobytes; policies sit at their validation bounds
//! (limits 1 to 10^12, sliding logs up to 100 000, windows 1 ms to 366 d,
//! bursts up to the 10-year span, penalties 1 ms to 366 d). Invariants:
//! - no panic and no Redis or script error: the only errors are the
//!   documented validation errors, identical from both stores;
//! - Redis and memory agree on every outcome: whole decisions, peeks,
//!   resets, blocks and listings. (This found the stores disagreeing on
//!   blocks that had ended once the clock stepped back, fixed in a91e3b9
//!   and c9b8f65.)

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use floodgate_core::{
    Algorithm, Block, Check, Clock, Decision, Error, MAX_BLOCK_STEPS, MAX_LIMIT, MAX_LOG_LIMIT,
    MAX_WINDOW, ManualClock, MemoryStore, Policy, Store, Timestamp,
};
use floodgate_redis::{RedisConfig, RedisStore};
use floodgate_testkit::RedisServer;

use crate::harness::{FuzzTarget, clip};
use crate::rng::Rng;

/// The key prefix of the fuzzer's Redis (it owns the whole server).
const PREFIX: &str = "fuzz";

/// One rule of a case.
#[derive(Debug, Clone)]
struct CaseRule {
    name: String,
    policy: Policy,
}

/// One store operation.
#[derive(Debug, Clone)]
enum Op {
    /// Moves the clock forward (µs).
    Advance(u64),
    /// Moves the clock back (µs).
    StepBack(u64),
    /// Moves the clock to the next `offset` µs into a window of `window` µs.
    AlignTo {
        window: u64,
        offset: u64,
    },
    /// One request's batch: (rule, key, cost, shadow) by index.
    Check(Vec<(usize, usize, u64, bool)>),
    Peek {
        rule: usize,
        key: usize,
    },
    Reset {
        rule: usize,
        key: usize,
    },
    AddBlock {
        key: usize,
        ttl_us: u64,
        reason: String,
    },
    RemoveBlock {
        key: usize,
    },
    Blocks,
}

/// A generated sequence of operations.
#[derive(Clone)]
pub struct LuaCase {
    start_us: u64,
    rules: Vec<CaseRule>,
    keys: Vec<String>,
    ops: Vec<Op>,
}

impl fmt::Debug for LuaCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|k| clip(&format!("{k:?}"), 200))
            .collect();
        write!(
            f,
            "start {} µs, rules {:?}, keys [{}], ops {:?}",
            self.start_us,
            self.rules,
            keys.join(", "),
            self.ops
        )
    }
}

/// What an operation returned, comparably.
#[derive(Debug, PartialEq)]
enum Outcome {
    Moved,
    Decisions(Result<Vec<Decision>, String>),
    Peek(Decision),
    Reset(bool),
    Added(Block),
    Removed(bool),
    Blocks(Vec<Block>),
}

/// The Lua-script target: a `redis-server` it empties between cases, one
/// Redis store on a manual clock, and a connection to empty it with.
pub struct LuaTarget {
    runtime: tokio::runtime::Runtime,
    /// The server the target started, if it did; killed on drop.
    _server: Option<RedisServer>,
    clock: ManualClock,
    redis: RedisStore,
    admin: redis::aio::MultiplexedConnection,
}

impl fmt::Debug for LuaTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LuaTarget").finish_non_exhaustive()
    }
}

impl LuaTarget {
    /// Starts a `redis-server` of its own (so it may empty the database
    /// between cases) and connects.
    ///
    /// # Panics
    /// When `redis-server` cannot be started or reached.
    pub fn new() -> Self {
        let server = RedisServer::start();
        let mut target = Self::connect(&server.url());
        target._server = Some(server);
        target
    }

    /// Connects to the `redis-server` at `url`, which the target then owns:
    /// it empties the database before every case. The engine's runs use
    /// this, with a server started beside `afl-fuzz`: a server started by
    /// the fuzzed process would be orphaned by every crash and timeout.
    ///
    /// # Panics
    /// When the server cannot be reached.
    pub fn connect(url: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        let clock = ManualClock::new(Timestamp::from_micros(1_700_000_000_000_000));
        let (redis, admin) = runtime.block_on(async {
            let config = RedisConfig::new(url.to_owned())
                .with_prefix(PREFIX)
                .with_timeout(Duration::from_secs(10))
                .with_clock(Arc::new(clock.clone()))
                // The manual clock does not follow real time: keys must
                // outlive the run whatever it says.
                .with_ttl_margin(Duration::from_secs(24 * 3600));
            let store = RedisStore::connect(config).await.expect("redis answers");
            let admin = redis::Client::open(url)
                .expect("a valid URL")
                .get_multiplexed_async_connection()
                .await
                .expect("a connection");
            (store, admin)
        });
        LuaTarget {
            runtime,
            _server: None,
            clock,
            redis,
            admin,
        }
    }
}

impl Default for LuaTarget {
    fn default() -> Self {
        Self::new()
    }
}

impl FuzzTarget for LuaTarget {
    type Input = LuaCase;

    fn name(&self) -> &'static str {
        "lua"
    }

    fn generate(&mut self, rng: &mut Rng) -> LuaCase {
        generate(rng)
    }

    fn check(&mut self, case: &LuaCase) {
        let clock = self.clock.clone();
        let redis = self.redis.clone();
        let mut admin = self.admin.clone();
        self.runtime.block_on(async move {
            redis::cmd("FLUSHDB")
                .query_async::<()>(&mut admin)
                .await
                .expect("FLUSHDB");
            let memory = MemoryStore::with_clock(1_000_000, Arc::new(clock.clone()));
            let m = run(&memory, &clock, case).await;
            let r = run(&redis, &clock, case).await;
            for (i, (m, r)) in m.iter().zip(&r).enumerate() {
                assert_eq!(
                    m, r,
                    "operation {i} ({:?}) differs: memory left, redis right",
                    case.ops[i]
                );
            }
        });
    }

    fn describe(&self, case: &LuaCase) -> String {
        clip(&format!("{case:?}"), 20_000)
    }

    fn weight(&self, case: &LuaCase) -> u64 {
        case.ops.len() as u64
    }
}

/// Runs `case` on `store` from its start time and records every outcome.
async fn run<S: Store>(store: &S, clock: &ManualClock, case: &LuaCase) -> Vec<Outcome> {
    clock.set(Timestamp::from_micros(case.start_us));
    let mut outcomes = Vec::with_capacity(case.ops.len());
    let rule = |i: usize| &case.rules[i];
    let key = |i: usize| case.keys[i].as_str();
    for op in &case.ops {
        let now = clock.now().as_micros();
        let outcome = match op {
            Op::Advance(us) => {
                clock.set(Timestamp::from_micros(now + us));
                Outcome::Moved
            }
            Op::StepBack(us) => {
                clock.set(Timestamp::from_micros(now.saturating_sub(*us)));
                Outcome::Moved
            }
            Op::AlignTo { window, offset } => {
                let mut t = now - now % window + offset;
                if t < now {
                    t += window;
                }
                clock.set(Timestamp::from_micros(t));
                Outcome::Moved
            }
            Op::Check(specs) => {
                let checks: Vec<Check<'_>> = specs
                    .iter()
                    .map(|&(r, k, cost, shadow)| {
                        let c = Check::new(&rule(r).name, &rule(r).policy, key(k), cost);
                        if shadow { c.shadow() } else { c }
                    })
                    .collect();
                Outcome::Decisions(match store.check(&checks).await {
                    Ok(d) => {
                        assert_eq!(d.len(), checks.len(), "a decision per check");
                        Ok(d)
                    }
                    Err(e @ Error::Store(_)) => panic!("store error: {e} ({e:?})"),
                    Err(e) => Err(e.to_string()),
                })
            }
            Op::Peek { rule: r, key: k } => Outcome::Peek(
                store
                    .peek(&rule(*r).name, &rule(*r).policy, key(*k))
                    .await
                    .unwrap_or_else(|e| panic!("peek failed: {e} ({e:?})")),
            ),
            Op::Reset { rule: r, key: k } => Outcome::Reset(
                store
                    .reset(&rule(*r).name, key(*k))
                    .await
                    .unwrap_or_else(|e| panic!("reset failed: {e} ({e:?})")),
            ),
            Op::AddBlock {
                key: k,
                ttl_us,
                reason,
            } => Outcome::Added(
                store
                    .add_block(key(*k), Duration::from_micros(*ttl_us), reason)
                    .await
                    .unwrap_or_else(|e| panic!("add_block failed: {e} ({e:?})")),
            ),
            Op::RemoveBlock { key: k } => Outcome::Removed(
                store
                    .remove_block(key(*k))
                    .await
                    .unwrap_or_else(|e| panic!("remove_block failed: {e} ({e:?})")),
            ),
            Op::Blocks => Outcome::Blocks(
                store
                    .blocks()
                    .await
                    .unwrap_or_else(|e| panic!("blocks failed: {e} ({e:?})")),
            ),
        };
        outcomes.push(outcome);
    }
    outcomes
}

// ---------------------------------------------------------------------------
// Generation.

const MS: u64 = 1_000;
const DAY_US: u64 = 86_400_000_000;

fn rule_name(rng: &mut Rng, i: usize) -> String {
    match rng.below(8) {
        0 => String::new(),
        1 => {
            let n = rng.range(1, 300) as usize;
            rng.string(n)
        }
        2 => rng
            .pick(&[
                "a{b}",
                "}{",
                "r:1",
                "%7B",
                "\0",
                "é",
                "x|y",
                "api-per-client.v2",
            ])
            .to_string(),
        3 | 4 => {
            let n = rng.len(20);
            rng.string(n)
        }
        _ => format!("r{i}"),
    }
}

fn policy(rng: &mut Rng) -> Policy {
    loop {
        let algorithm = *rng.pick(&Algorithm::ALL);
        let limit = match rng.below(8) {
            0 => *rng.pick(&[
                1,
                MAX_LOG_LIMIT,
                MAX_LOG_LIMIT - 1,
                99_991,
                MAX_LIMIT,
                MAX_LIMIT - 1,
            ]),
            1 => rng.range(1, MAX_LIMIT),
            _ => rng.range(1, 6),
        };
        let window_us = match rng.below(6) {
            0 => *rng.pick(&[
                MS,
                MS + 1,
                7_919,
                999_983,
                1_000_000,
                DAY_US,
                MAX_WINDOW.as_micros() as u64,
            ]),
            1 => rng.range(MS, MAX_WINDOW.as_micros() as u64),
            _ => rng.range(MS, 30_000_000),
        };
        let Ok(mut p) = Policy::new(algorithm, limit, Duration::from_micros(window_us)) else {
            continue;
        };
        if algorithm == Algorithm::TokenBucket && rng.percent(50) {
            let burst = match rng.below(4) {
                0 => *rng.pick(&[1, MAX_LIMIT, limit.saturating_mul(2)]),
                1 => rng.range(1, MAX_LIMIT),
                _ => rng.range(1, 16),
            };
            if let Ok(b) = p.clone().with_burst(burst) {
                p = b;
            }
        }
        if rng.percent(35) {
            let block_us = match rng.below(4) {
                0 => *rng.pick(&[MS, MAX_WINDOW.as_micros() as u64, 900_000_000]),
                _ => rng.range(MS, 10_000_000),
            };
            // One step, or a ladder climbing from it (up to the longest
            // step and the most steps allowed).
            let mut steps = vec![Duration::from_micros(block_us)];
            if rng.percent(40) {
                for _ in 0..rng.range(1, MAX_BLOCK_STEPS as u64) {
                    let last = steps[steps.len() - 1];
                    steps.push(
                        (last + Duration::from_micros(rng.range(0, 5_000_000))).min(MAX_WINDOW),
                    );
                }
            }
            if let Ok(b) = p.clone().with_block_ladder(&steps) {
                p = b;
            }
        }
        return p;
    }
}

fn key_text(rng: &mut Rng) -> String {
    match rng.below(12) {
        0 if rng.one_in(5) => "k{}:".repeat(rng.range(1_000, 16_000) as usize),
        1 => String::new(),
        2 => rng
            .pick(&[
                "ip:192.0.2.1",
                "ip:2001:db8:1:2::/64",
                "header:x-api-key:{a}%b",
                "sha256:0123456789abcdef0123456789abcdef",
                "{",
                "}",
                "%",
                "%7B",
                "a\0b",
                "global",
            ])
            .to_string(),
        _ => {
            let n = rng.len(40);
            rng.string(n)
        }
    }
}

/// A cost for `policy`: mostly small, sometimes its whole capacity, now and
/// then one it refuses (0, one over, u64::MAX).
fn cost(rng: &mut Rng, policy: &Policy) -> u64 {
    let capacity = policy.capacity();
    let big_log = policy.algorithm() == Algorithm::SlidingLog && capacity > 1_000;
    match rng.below(20) {
        // A sliding log stores one entry per unit: whole large capacities
        // only now and then, or the run would be all list pushes.
        0 if !big_log || rng.one_in(20) => capacity,
        1 if !big_log => capacity.saturating_sub(1).max(1),
        2 => *rng.pick(&[0, capacity + 1, u64::MAX]),
        3 if !big_log => rng.range(1, capacity),
        4..=7 => rng.range(1, capacity.min(4)),
        _ => 1,
    }
}

fn advance(rng: &mut Rng, rules: &[CaseRule]) -> u64 {
    let w = rng.pick(rules).policy.window_us();
    match rng.below(8) {
        0 => 0,
        1 => rng.range(1, 1_000),
        2 => w,
        3 => w + rng.range(0, 2) - 1,
        4 => rng.range(1, w.saturating_mul(2)),
        5 if rng.one_in(10) => rng.range(1, MAX_WINDOW.as_micros() as u64 * 2),
        _ => rng.range(1, 2_000_000),
    }
}

fn generate(rng: &mut Rng) -> LuaCase {
    let rules: Vec<CaseRule> = (0..rng.range(1, 4) as usize)
        .map(|i| CaseRule {
            // Now and then two rules share a name: state written under one
            // algorithm is read under another.
            name: if rng.one_in(6) {
                "shared".to_owned()
            } else {
                rule_name(rng, i)
            },
            policy: policy(rng),
        })
        .collect();
    let keys: Vec<String> = (0..rng.range(1, 4)).map(|_| key_text(rng)).collect();
    let n_ops = rng.range(1, 48) as usize;
    let mut ops = Vec::with_capacity(n_ops);
    for _ in 0..n_ops {
        let r = rng.index(rules.len());
        let k = rng.index(keys.len());
        let op = match rng.below(24) {
            0..=9 => {
                let n = rng.range(1, 5);
                let specs = (0..n)
                    .map(|_| {
                        let r = rng.index(rules.len());
                        (
                            r,
                            rng.index(keys.len()),
                            cost(rng, &rules[r].policy),
                            rng.percent(20),
                        )
                    })
                    .collect();
                Op::Check(specs)
            }
            10..=14 => Op::Advance(advance(rng, &rules)),
            15 => Op::StepBack(rng.range(1, 5_000_000)),
            16 => {
                let window = rules[r].policy.window_us();
                let offset = *rng.pick(&[0, 1, window - 1, window / 2]);
                Op::AlignTo { window, offset }
            }
            17 | 18 => Op::Peek { rule: r, key: k },
            19 => Op::Reset { rule: r, key: k },
            20 => Op::AddBlock {
                key: k,
                // Zero: a block that has ended when it is made.
                ttl_us: match rng.below(4) {
                    0 => *rng.pick(&[0, 1, MS, MAX_WINDOW.as_micros() as u64]),
                    _ => rng.range(1, 10_000_000),
                },
                reason: {
                    let n = rng.len(1024);
                    let mut s = rng.string(n);
                    while s.len() > 1024 {
                        s.pop();
                    }
                    s
                },
            },
            21 => Op::RemoveBlock { key: k },
            _ => Op::Blocks,
        };
        ops.push(op);
    }
    LuaCase {
        start_us: rng.range(1_600_000_000_000_000, 1_900_000_000_000_000),
        rules,
        keys,
        ops,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cases must reach every kind of outcome, or agreeing on them
    /// would prove little. Counted on the memory store alone.
    #[test]
    fn the_cases_reach_refusals_penalties_errors_and_blocks() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let clock = ManualClock::new(Timestamp::from_micros(0));
        let mut rng = Rng::new(1);
        let (mut admitted, mut refused, mut penalised, mut listed) = (0, 0, 0, 0);
        let mut errors = std::collections::BTreeSet::new();
        for _ in 0..300 {
            let case = generate(&mut rng);
            let memory = MemoryStore::with_clock(1_000_000, Arc::new(clock.clone()));
            for outcome in runtime.block_on(run(&memory, &clock, &case)) {
                match outcome {
                    Outcome::Decisions(Ok(ds)) => {
                        for d in ds {
                            match (d.allowed, d.blocked) {
                                (true, _) => admitted += 1,
                                (false, false) => refused += 1,
                                (false, true) => penalised += 1,
                            }
                        }
                    }
                    Outcome::Decisions(Err(e)) => {
                        for kind in ["at least 1", "can never", "twice"] {
                            if e.contains(kind) {
                                errors.insert(kind);
                            }
                        }
                    }
                    Outcome::Blocks(b) if b.len() >= 2 => listed += 1,
                    _ => {}
                }
            }
        }
        assert!(
            admitted > 1_000 && refused > 200 && penalised > 20,
            "{admitted} {refused} {penalised}"
        );
        assert!(listed > 10, "only {listed} listings of two blocks or more");
        // Zero cost, over capacity, a (rule, key) twice.
        assert!(errors.len() >= 3, "{errors:?}");
    }
}
