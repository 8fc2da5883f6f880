//! Conformance: the memory store and the Redis store, driven through the same
//! scripted sequence on the same manual clock, must give identical results:
//! whole `Decision`s, peeks, block listings and validation errors.

use std::time::Duration;

use floodgate_core::{
    Algorithm, Block, Check, Clock, Decision, ManualClock, Policy, Store, Timestamp,
};
use proptest::prelude::*;

use crate::support::{START_US, manual_clock, memory_on_clock, redis_on_clock};

/// The client keys the sequences use; the second one needs hash-tag escaping.
const KEYS: [&str; 2] = ["ip:192.0.2.1", "header:x-api-key:{a}%b"];

/// A named rule.
#[derive(Debug, Clone)]
struct Rule {
    name: String,
    policy: Policy,
}

/// One check of a batch, by index into the rules and [`KEYS`].
#[derive(Debug, Clone)]
struct CheckSpec {
    rule: usize,
    key: usize,
    cost: u64,
    shadow: bool,
    /// Decided, never charged (a rule that counts only some answers).
    probe: bool,
}

/// One step of a sequence.
#[derive(Debug, Clone)]
enum Op {
    /// Moves the clock forward (µs).
    Advance(u64),
    /// Steps the clock back (µs), as a corrected system clock would.
    StepBack(u64),
    /// Moves the clock forward to the next time `offset` µs into a window of
    /// `window` µs.
    AlignTo {
        window: u64,
        offset: u64,
    },
    /// One request's batch of checks.
    Check(Vec<CheckSpec>),
    /// Charges after the answer, whatever the limits say.
    Charge(Vec<CheckSpec>),
    /// Gives back what held requests took.
    Refund(Vec<CheckSpec>),
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
    },
    RemoveBlock {
        key: usize,
    },
    Blocks,
}

/// What a step returned, in a comparable form.
#[derive(Debug, PartialEq)]
enum Outcome {
    Advanced,
    Decisions(Result<Vec<Decision>, String>),
    Peek(Decision),
    Reset(bool),
    Added(Block),
    Removed(bool),
    Blocks(Vec<Block>),
}

/// The outcome of a call deciding checks: its decisions, or the error of a
/// batch the store refuses (never a store failure).
fn decided(result: Result<Vec<Decision>, floodgate_core::Error>) -> Outcome {
    Outcome::Decisions(result.map_err(|e| {
        assert!(
            !matches!(e, floodgate_core::Error::Store(_)),
            "store failed: {e}"
        );
        e.to_string()
    }))
}

/// Runs `ops` on `store` from [`START_US`] and records every outcome.
async fn run<S: Store>(store: &S, clock: &ManualClock, rules: &[Rule], ops: &[Op]) -> Vec<Outcome> {
    clock.set(Timestamp::from_micros(START_US));
    let mut outcomes = Vec::with_capacity(ops.len());
    for op in ops {
        let outcome = match op {
            Op::Advance(us) => {
                clock.advance(Duration::from_micros(*us));
                Outcome::Advanced
            }
            Op::StepBack(us) => {
                clock.set(Timestamp::from_micros(clock.now().as_micros() - us));
                Outcome::Advanced
            }
            Op::AlignTo { window, offset } => {
                let now = clock.now().as_micros();
                let mut t = now - now % window + offset;
                if t < now {
                    t += window;
                }
                clock.set(Timestamp::from_micros(t));
                Outcome::Advanced
            }
            Op::Check(specs) => {
                let checks: Vec<Check<'_>> = specs
                    .iter()
                    .map(|s| {
                        let r = &rules[s.rule];
                        let c = Check::new(&r.name, &r.policy, KEYS[s.key], s.cost);
                        let c = if s.shadow { c.shadow() } else { c };
                        if s.probe { c.probe() } else { c }
                    })
                    .collect();
                decided(store.check(&checks).await)
            }
            Op::Charge(specs) | Op::Refund(specs) => {
                let charges: Vec<Check<'_>> = specs
                    .iter()
                    .map(|s| {
                        let r = &rules[s.rule];
                        Check::new(&r.name, &r.policy, KEYS[s.key], s.cost)
                    })
                    .collect();
                let result = match op {
                    Op::Refund(_) => store.refund(&charges).await,
                    _ => store.charge(&charges).await,
                };
                decided(result)
            }
            Op::Peek { rule, key } => {
                let r = &rules[*rule];
                Outcome::Peek(store.peek(&r.name, &r.policy, KEYS[*key]).await.unwrap())
            }
            Op::Reset { rule, key } => {
                Outcome::Reset(store.reset(&rules[*rule].name, KEYS[*key]).await.unwrap())
            }
            Op::AddBlock { key, ttl_us } => Outcome::Added(
                store
                    .add_block(KEYS[*key], Duration::from_micros(*ttl_us), "conformance")
                    .await
                    .unwrap(),
            ),
            Op::RemoveBlock { key } => {
                Outcome::Removed(store.remove_block(KEYS[*key]).await.unwrap())
            }
            Op::Blocks => Outcome::Blocks(store.blocks().await.unwrap()),
        };
        outcomes.push(outcome);
    }
    outcomes
}

/// Runs `ops` on a memory store and a Redis store and demands identical
/// outcomes; returns them for further assertions.
async fn assert_conform(label: &str, rules: &[Rule], ops: &[Op]) -> Vec<Outcome> {
    let clock = manual_clock();
    let memory = run(&memory_on_clock(&clock), &clock, rules, ops).await;
    let redis = run(&redis_on_clock(label, &clock), &clock, rules, ops).await;
    for (i, (m, r)) in memory.iter().zip(&redis).enumerate() {
        assert_eq!(
            m, r,
            "step {i} ({:?}) differs: memory left, redis right",
            ops[i]
        );
    }
    memory
}

fn rule(name: &str, policy: Policy) -> Rule {
    Rule {
        name: name.to_owned(),
        policy,
    }
}

/// One request's checks, each `(rule, key, cost, shadow)`.
fn batch(specs: &[(usize, usize, u64, bool)]) -> Op {
    Op::Check(
        specs
            .iter()
            .map(|&(rule, key, cost, shadow)| CheckSpec {
                rule,
                key,
                cost,
                shadow,
                probe: false,
            })
            .collect(),
    )
}

fn single(rule: usize, key: usize, cost: u64) -> Op {
    batch(&[(rule, key, cost, false)])
}

/// A hand-written sequence touching every behaviour: exhausting the quota,
/// costs above one, shadow checks, batches vetoed by another rule, penalty
/// blocks and their expiry, small and large clock steps, peeks, resets,
/// manual blocks, and costs that can never fit.
fn scripted_ops() -> Vec<Op> {
    let mut ops = vec![Op::Peek { rule: 0, key: 0 }];
    for _ in 0..4 {
        ops.push(single(0, 0, 1));
        ops.push(Op::Advance(1));
    }
    ops.push(single(0, 0, 2)); // over the limit of 5
    ops.push(Op::Peek { rule: 0, key: 0 });
    ops.push(batch(&[(0, 0, 1, true)]));
    ops.push(Op::Advance(333_333));
    ops.push(single(0, 0, 1));
    ops.push(Op::Advance(2_500_000));
    ops.push(single(0, 0, 3));
    // Rule 1 (limit 3, block_for 5 s): exhaust it, then get blocked.
    for _ in 0..4 {
        ops.push(single(1, 0, 1));
    }
    ops.push(Op::Blocks);
    ops.push(Op::Peek { rule: 1, key: 0 });
    // A batch where rule 1 (blocked) vetoes rule 0: nothing is recorded.
    ops.push(batch(&[(0, 1, 1, false), (1, 0, 1, false)]));
    ops.push(Op::Peek { rule: 0, key: 1 });
    // The same batch with rule 1 in shadow: rule 0 records.
    ops.push(batch(&[(0, 1, 2, false), (1, 0, 1, true)]));
    ops.push(Op::Advance(5_000_001)); // the penalty ends
    ops.push(Op::Blocks);
    ops.push(single(1, 0, 1));
    ops.push(Op::AddBlock {
        key: 1,
        ttl_us: 7_000_000,
    });
    ops.push(Op::Blocks);
    // Get rule 1 on key 1 blocked too, then lift every block of key 1.
    for _ in 0..4 {
        ops.push(single(1, 1, 1));
    }
    ops.push(Op::Blocks);
    ops.push(Op::RemoveBlock { key: 1 });
    ops.push(Op::Peek { rule: 1, key: 1 });
    ops.push(Op::RemoveBlock { key: 1 });
    ops.push(Op::Blocks);
    ops.push(Op::Reset { rule: 0, key: 0 });
    ops.push(Op::Peek { rule: 0, key: 0 });
    ops.push(single(0, 0, 0)); // zero cost: an error
    ops.push(single(0, 0, 1000)); // can never fit: an error
    ops.push(Op::Advance(9_999_999));
    for _ in 0..7 {
        ops.push(single(0, 0, 1));
        ops.push(Op::Advance(1_234_567));
    }
    ops.push(Op::Advance(60_000_000));
    ops.push(single(0, 0, 5));
    ops.push(Op::Peek { rule: 0, key: 0 });
    // The clock steps back across a window boundary (10 s windows) and
    // forward again: 3 units late in one window, 1 early in the next, then
    // back before that window's start.
    ops.push(Op::Advance(60_000_000));
    ops.push(Op::AlignTo {
        window: 10_000_000,
        offset: 9_500_000,
    });
    ops.push(single(0, 0, 3));
    ops.push(Op::Advance(1_000_000));
    ops.push(single(0, 0, 1));
    ops.push(Op::StepBack(2_000_000));
    for _ in 0..3 {
        ops.push(single(0, 0, 2));
        ops.push(Op::Peek { rule: 0, key: 0 });
    }
    ops.push(Op::Advance(3_000_000));
    ops.push(single(0, 0, 1));
    ops
}

/// The rules of [`scripted_ops`] for `algorithm`.
fn scripted_rules(algorithm: Algorithm) -> Vec<Rule> {
    let mut main = Policy::new(algorithm, 5, Duration::from_secs(10)).unwrap();
    if algorithm == Algorithm::TokenBucket {
        main = main.with_burst(4).unwrap();
    }
    let penalised = Policy::new(algorithm, 3, Duration::from_secs(2))
        .unwrap()
        .with_block_for(Duration::from_secs(5))
        .unwrap();
    vec![rule("main", main), rule("penalised", penalised)]
}

/// A probe of `cost` on (rule, key): decided, never charged.
fn probe(rule: usize, key: usize, cost: u64) -> Op {
    Op::Check(vec![CheckSpec {
        rule,
        key,
        cost,
        shadow: false,
        probe: true,
    }])
}

/// A charge of `cost` on (rule, key).
fn charge(rule: usize, key: usize, cost: u64) -> Op {
    Op::Charge(vec![CheckSpec {
        rule,
        key,
        cost,
        shadow: false,
        probe: false,
    }])
}

/// Failed logins, as a rule with `count_status` runs them: each attempt is
/// probed before it goes ahead and charged only when it fails. Rule 0 has
/// a limit of 3 per 10 s (token bucket: burst 3), rule 1 the same with a
/// penalty ladder; key 0 fails, key 1 succeeds.
#[tokio::test]
async fn probes_charge_nothing_and_charges_go_past_the_limit_like_memory() {
    for algorithm in Algorithm::ALL {
        let plain = Policy::new(algorithm, 3, Duration::from_secs(10)).unwrap();
        let laddered = plain
            .clone()
            .with_block_ladder(&[2, 4].map(Duration::from_secs))
            .unwrap();
        let rules = [rule("login", plain), rule("login-ladder", laddered)];
        let mut ops = Vec::new();
        for r in 0..2 {
            // Successes: probed, never charged, never refused.
            for _ in 0..6 {
                ops.push(probe(r, 1, 1));
            }
            // Failures: probed, then charged; the fourth probe is refused.
            for _ in 0..4 {
                ops.push(probe(r, 0, 1));
                ops.push(charge(r, 0, 1));
            }
            ops.push(probe(r, 0, 1));
            ops.push(Op::Peek { rule: r, key: 0 });
            // A probe in a batch with a charging check: the batch is
            // admitted, only the charging check pays.
            ops.push(Op::Check(vec![
                CheckSpec {
                    rule: r,
                    key: 1,
                    cost: 2,
                    shadow: false,
                    probe: true,
                },
                CheckSpec {
                    rule: 1 - r,
                    key: 1,
                    cost: 1,
                    shadow: false,
                    probe: false,
                },
            ]));
            // Charges of one key twice in one call add up.
            ops.push(Op::Charge(vec![
                CheckSpec {
                    rule: r,
                    key: 1,
                    cost: 2,
                    shadow: false,
                    probe: false,
                },
                CheckSpec {
                    rule: r,
                    key: 1,
                    cost: 2,
                    shadow: false,
                    probe: false,
                },
            ]));
            ops.push(Op::Peek { rule: r, key: 1 });
            ops.push(charge(r, 1, 0)); // zero cost: an error
            ops.push(charge(r, 1, 4)); // more than the rule holds: an error
            ops.push(Op::Advance(3_000_000));
            ops.push(probe(r, 0, 1));
            ops.push(Op::Blocks);
            ops.push(Op::Advance(30_000_000));
            ops.push(probe(r, 0, 1));
        }
        let outcomes = assert_conform(&format!("conform-probe-{algorithm}"), &rules, &ops).await;
        let decisions = |o: &Outcome| match o {
            Outcome::Decisions(Ok(d)) => d.clone(),
            other => panic!("{algorithm}: expected decisions, got {other:?}"),
        };
        // Six successes, all admitted, none charged: the seventh probe
        // still finds the full quota.
        for d in outcomes[..6].iter().flat_map(decisions) {
            assert!(d.allowed && d.remaining == 2, "{algorithm}: {d:?}");
        }
        // Failures 1-3 admitted; the fourth probe refused; the fourth
        // failure's charge (it went ahead before the third was charged, as
        // a concurrent one would) goes past the limit.
        let probes: Vec<bool> = (0..4)
            .map(|i| decisions(&outcomes[6 + 2 * i])[0].allowed)
            .collect();
        assert_eq!(probes, [true, true, true, false], "{algorithm}");
        let over = decisions(&outcomes[14])[0];
        assert!(
            !over.allowed && over.retry_after.is_some(),
            "{algorithm}: {over:?}"
        );
        let after_ladder_probe = decisions(&outcomes[outcomes.len() - 1])[0];
        assert!(
            after_ladder_probe.allowed,
            "{algorithm}: quota back after 33 s"
        );
    }
}

#[tokio::test]
async fn every_algorithm_decides_like_memory() {
    for algorithm in Algorithm::ALL {
        let outcomes = assert_conform(
            &format!("conform-{algorithm}"),
            &scripted_rules(algorithm),
            &scripted_ops(),
        )
        .await;
        // The sequence must have exercised refusals and penalty blocks, or
        // agreeing on it would prove little.
        let decisions: Vec<&Decision> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Decisions(Ok(d)) => Some(d),
                _ => None,
            })
            .flatten()
            .collect();
        assert!(
            decisions.iter().any(|d| d.allowed),
            "{algorithm}: nothing admitted"
        );
        assert!(
            decisions.iter().any(|d| !d.allowed && !d.blocked),
            "{algorithm}: nothing refused"
        );
        assert!(
            decisions.iter().any(|d| d.blocked),
            "{algorithm}: no penalty block"
        );
        assert!(
            outcomes
                .iter()
                .any(|o| matches!(o, Outcome::Blocks(b) if b.len() == 2)),
            "{algorithm}: never listed a manual and a penalty block together"
        );
    }
}

#[tokio::test]
async fn a_rule_changing_algorithm_starts_from_empty_like_memory() {
    // Same rule name, one policy per algorithm: each check finds the state of
    // another algorithm (string or list) and must treat it as empty.
    let rules: Vec<Rule> = Algorithm::ALL
        .iter()
        .map(|&a| {
            rule(
                "reloaded",
                Policy::new(a, 3, Duration::from_secs(10)).unwrap(),
            )
        })
        .collect();
    let mut ops = Vec::new();
    for round in 0..3 {
        for r in 0..rules.len() {
            for _ in 0..(2 + round) {
                ops.push(single(r, 0, 1));
            }
            ops.push(Op::Peek {
                rule: (r + 1) % rules.len(),
                key: 0,
            });
            ops.push(Op::Advance(100_000));
        }
    }
    assert_conform("conform-reload", &rules, &ops).await;
}

#[tokio::test]
async fn sliding_window_rounding_matches_at_awkward_times() {
    // Weights with long binary fractions: a window of a prime number of µs,
    // previous counts that do not divide it, and times all over the window.
    let policy = Policy::new(Algorithm::SlidingWindow, 7, Duration::from_micros(999_983)).unwrap();
    let rules = vec![rule("sw", policy)];
    let mut ops = Vec::new();
    for i in 0..200u64 {
        ops.push(single(0, (i % 2) as usize, 1 + i % 3));
        ops.push(Op::Advance(37_003 + (i * 7919) % 90_001));
        if i % 5 == 0 {
            ops.push(Op::Peek { rule: 0, key: 0 });
        }
    }
    assert_conform("conform-sw-rounding", &rules, &ops).await;
}

/// The sliding window's weighted count and decay point (where `retry_after`
/// comes from) are computed in doubles; doing one operation in another order
/// changes a result only at rare rounding edges (e.g. a window of 1000 µs with
/// 19 previous units and a budget of 18, or 50 previous units 420 µs in).
/// This drives every (limit, count, budget) of a set of limits through both
/// stores at awkward windows and offsets, so such an edge cannot hide.
#[tokio::test]
async fn sliding_window_rounding_edges_match_exhaustively() {
    const LIMITS: [u64; 8] = [1, 2, 3, 5, 7, 19, 38, 50];
    /// (limit index, units in the previous window, in the current one, cost)
    type Scenario = (usize, u64, u64, u64);
    let mut scenarios: Vec<Scenario> = Vec::new();
    for (r, &limit) in LIMITS.iter().enumerate() {
        for count in 1..=limit {
            for budget in 0..count {
                // Refusals hinge on decay_point(count, budget) through the
                // previous window (first) or the current one (second).
                scenarios.push((r, count, 0, limit - budget));
                scenarios.push((r, 0, count, limit - budget));
            }
        }
    }
    let keys: Vec<String> = (0..scenarios.len()).map(|i| format!("s{i}")).collect();
    // One batch of shadow checks per phase drives every scenario at once:
    // shadow checks never veto each other.
    let phase = |pick: fn(&Scenario) -> u64| -> Vec<(usize, usize, u64)> {
        scenarios
            .iter()
            .enumerate()
            .filter(|(_, s)| pick(s) > 0)
            .map(|(k, s)| (s.0, k, pick(s)))
            .collect()
    };
    let phases = [phase(|s| s.1), phase(|s| s.2), phase(|s| s.3)];
    for w in [1_000u64, 999_983] {
        let rules: Vec<Rule> = LIMITS
            .iter()
            .map(|&l| {
                let p = Policy::new(Algorithm::SlidingWindow, l, Duration::from_micros(w)).unwrap();
                rule(&format!("limit{l}"), p)
            })
            .collect();
        let window_start = START_US - START_US % w;
        for elapsed in [0, 1, w * 42 / 100, w / 3, w - 1] {
            // Phase 0 fills the window before the one phases 1 and 2 run in.
            let times = [
                START_US,
                window_start + w + elapsed,
                window_start + w + elapsed,
            ];
            let clock = manual_clock();
            let memory = memory_on_clock(&clock);
            let redis = redis_on_clock("conform-sw-edges", &clock);
            let mut refused_with_retry = 0;
            for (i, batch) in phases.iter().enumerate() {
                let checks: Vec<Check<'_>> = batch
                    .iter()
                    .map(|&(r, k, cost)| {
                        Check::new(&rules[r].name, &rules[r].policy, &keys[k], cost).shadow()
                    })
                    .collect();
                clock.set(Timestamp::from_micros(times[i]));
                let m = memory.check(&checks).await.unwrap();
                let r = redis.check(&checks).await.unwrap();
                for (j, (dm, dr)) in m.iter().zip(&r).enumerate() {
                    assert_eq!(
                        dm, dr,
                        "window {w} µs, elapsed {elapsed} µs, phase {i}, scenario {:?}: \
                         memory left, redis right",
                        scenarios[batch[j].1]
                    );
                }
                refused_with_retry += m
                    .iter()
                    .filter(|d| d.retry_after > Some(Duration::from_micros(1)))
                    .count();
            }
            assert!(
                refused_with_retry > 0,
                "window {w}, elapsed {elapsed}: nothing refused"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Generated sequences.

fn policy_strategy() -> impl Strategy<Value = Policy> {
    let algorithm = prop::sample::select(Algorithm::ALL.to_vec());
    let window_us = prop_oneof![
        Just(1_000u64),
        Just(7_919),
        Just(1_000_000),
        Just(2_999_999),
        1_000u64..=20_000_000,
    ];
    // None, one step, or a ladder of up to four (sorted: steps escalate).
    let block_steps_us = prop_oneof![
        2 => Just(Vec::new()),
        1 => (1_000u64..=10_000_000).prop_map(|b| vec![b]),
        1 => prop::collection::vec(1_000u64..=10_000_000, 2..=4).prop_map(|mut steps| {
            steps.sort_unstable();
            steps
        }),
    ];
    (algorithm, 1u64..=8, window_us, 1u64..=12, block_steps_us).prop_map(
        |(algorithm, limit, window_us, burst, block_steps_us)| {
            let mut p = Policy::new(algorithm, limit, Duration::from_micros(window_us)).unwrap();
            if algorithm == Algorithm::TokenBucket && burst % 3 != 0 {
                p = p.with_burst(burst).unwrap();
            }
            if algorithm == Algorithm::TokenBucket && burst % 4 == 1 {
                p = p
                    .with_max_delay(Duration::from_micros(window_us / 2 + 1000))
                    .unwrap();
            }
            if !block_steps_us.is_empty() {
                let steps: Vec<Duration> = block_steps_us
                    .into_iter()
                    .map(Duration::from_micros)
                    .collect();
                p = p.with_block_ladder(&steps).unwrap();
            }
            p
        },
    )
}

fn rules_strategy() -> impl Strategy<Value = Vec<Rule>> {
    // Names drawn from two, so rules sometimes share state across algorithms.
    prop::collection::vec((0usize..2, policy_strategy()), 1..=3).prop_map(|rules| {
        rules
            .into_iter()
            .map(|(name, policy)| rule(&format!("r{name}"), policy))
            .collect()
    })
}

fn op_strategy(rules: usize) -> impl Strategy<Value = Op> {
    let cost = prop_oneof![6 => Just(1u64), 3 => 1u64..=4, 1 => 0u64..=13];
    let spec = (
        0..rules,
        0..KEYS.len(),
        cost,
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(rule, key, cost, shadow, probe)| CheckSpec {
            rule,
            key,
            cost,
            shadow,
            probe,
        });
    let advance = prop_oneof![
        Just(0u64),
        1u64..=1_000,
        1u64..=2_000_000,
        1u64..=30_000_000
    ];
    prop_oneof![
        10 => prop::collection::vec(spec.clone(), 1..=3).prop_map(Op::Check),
        3 => prop::collection::vec(spec.clone(), 1..=3).prop_map(Op::Charge),
        2 => prop::collection::vec(spec, 1..=2).prop_map(Op::Refund),
        6 => advance.prop_map(Op::Advance),
        1 => (1u64..=5_000_000).prop_map(Op::StepBack),
        2 => (0..rules, 0..KEYS.len()).prop_map(|(rule, key)| Op::Peek { rule, key }),
        1 => (0..rules, 0..KEYS.len()).prop_map(|(rule, key)| Op::Reset { rule, key }),
        1 => (0..KEYS.len(), 0u64..=5_000_000).prop_map(|(key, ttl_us)| Op::AddBlock { key, ttl_us }),
        1 => (0..KEYS.len()).prop_map(|key| Op::RemoveBlock { key }),
        1 => Just(Op::Blocks),
    ]
}

fn sequence_strategy() -> impl Strategy<Value = (Vec<Rule>, Vec<Op>)> {
    rules_strategy().prop_flat_map(|rules| {
        let n = rules.len();
        (Just(rules), prop::collection::vec(op_strategy(n), 1..=60))
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn generated_sequences_decide_like_memory((rules, ops) in sequence_strategy()) {
        runtime().block_on(assert_conform("conform-prop", &rules, &ops));
    }
}

/// The overrides' part of the basics on a standalone Redis (the topology
/// tests run the whole basics, overrides included, on Cluster and
/// Sentinel).
#[tokio::test]
async fn overrides_and_their_change_log_match_memory() {
    crate::support::assert_basics_like_memory(|clock| redis_on_clock("conform-basics", clock))
        .await;
}
