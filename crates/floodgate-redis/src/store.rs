//! [`RedisStore`]: floodgate's [`Store`] on a shared Redis.

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use floodgate_core::{
    Algorithm, Block, BlockSource, Check, Decision, Error, KeyOverride, OverrideChange,
    OverrideChanges, Policy, Slot, SlotDecision, Store, StoreError, StoreErrorKind, Timestamp,
    TopSummary, admitted, micros_of, validate_charges, validate_checks,
};
use futures_util::future::{join_all, try_join_all};
use redis::RedisResult;
use tokio::time::Instant;

use crate::batched::{Budgets, Leased, MAX_BUDGETS, Take};
use crate::coalesce::{Coalescer, QueuedCheck, Runner};
use crate::config::{ConfigError, RedisConfig, TimeSource};
use crate::connection::{Conn, Link};
use crate::error::{bad_reply, store_error};
use crate::keys::{KeyLayout, registry_field, split_registry_field};
use crate::scripts::{self, Dialect, DialectSwitch, LuaScript, ScriptCall};
use crate::wire::{
    CHECK_FIXED_ARGS, CheckArg, DECISION_FIELDS, SlotArg, SlotOp, decision_from, push_checks,
    push_policy, unpack_check_reply,
};

/// The longest manual block accepted (about 142 years): keeps `now + ttl`
/// exact in Lua's doubles. Longer TTLs are shortened to it.
const MAX_BLOCK_TTL_US: u64 = 1 << 52;

/// A [`Store`] on Redis, shared by every floodgate instance that uses the same
/// Redis and prefix. Cheap to clone; clones share one connection.
///
/// - Each [`Store::check`] is one `FCALL` of `check.lua` (see the crate's
///   docs for `EVALSHA`), which decides and records the whole batch
///   atomically with the same arithmetic as floodgate-core, so N instances
///   admit exactly what one would (on a Redis Cluster, a batch naming
///   several client keys is the exception: see
///   [`RedisStore::check`](#method.check)).
/// - Concurrent checks share calls ([`RedisConfig::coalesce`], on by default,
///   not on a cluster): while calls are on their way, the batches of
///   requests arriving meanwhile go together in the next one, each still
///   decided atomically and in turn — the same decisions, for less work per
///   decision in Redis and in this process.
/// - Calls share one multiplexed connection (pipelined on one socket), which
///   reconnects in the background after Redis goes away; function libraries
///   are loaded again after `Function not found` (scripts after `NOSCRIPT`
///   where functions cannot run), on a cluster on every primary. On a
///   cluster each call goes to the node owning its keys' slot, following
///   MOVED and ASK; behind Sentinels, to the primary they name, asked again
///   after a failover.
/// - Every call is bounded by [`RedisConfig::timeout`] and fails with a typed
///   [`StoreError`]: timeout, connection dropped, script error or other.
/// - Every key written carries a TTL set in the same script call.
///
/// # Batched consistency
///
/// A check of a batched policy ([`Policy::with_batched`], `consistency =
/// "batched"`) is admitted from a local budget of its (rule, key) when the
/// budget holds its cost, with no call at all. A check short of units
/// leases more in one atomic call: what is left of the key's quota, up to
/// the size asked, counted in Redis as admitted then. Every unit admitted
/// locally has therefore been counted in Redis first:
///
/// - **fixed_window, sliding_window**: leased units are used only in the
///   window they were counted in (a slice lapses at that window's end), so
///   what is admitted never goes over the limit, as without batching.
/// - **token_bucket**: a slice lapses after the time its units take to earn
///   (`size × window / limit`): over any span, every instance together
///   admits at most [`Policy::batch_max`] units more than the bucket allows.
/// - **sliding_log** is not batched ([`Policy::with_batched`] refuses it).
///
/// What batching can cost is quota, never excess: units left in a slice
/// when it lapses, or held by one instance while another is refused. Each
/// instance holds at most [`Policy::batch_max`] units of a key at a time (a
/// sixteenth of its capacity, at least 1): a key that stops sending with
/// slices held loses at most `instances × batch_max` in that window, and a
/// key sending steadily through every instance spends every slice and gets
/// its whole quota. Slices start at one unit and double while they are
/// spent before they lapse; one that lapses unspent makes the next the
/// size of what was spent of it, so a quiet key costs one call per request,
/// as without batching, and a busy one a call per slice.
///
/// A refusal is remembered until its `retry_after` (until then the key
/// cannot admit a unit, whatever other instances do). A reset or an
/// override made through another instance reaches this one's remembered
/// refusal or held slice when it ends; a penalty block started elsewhere,
/// when its slice is spent. Budgets are held for at most 262 144 (rule,
/// key) pairs; past that, lapsed ones are dropped first.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The multiplexed, self-reconnecting connection(s); cloned per call.
    link: Link,
    /// Names every key under the configured prefix.
    keys: KeyLayout,
    /// As given, validated.
    config: RedisConfig,
    /// `config.ttl_margin` in whole milliseconds, rounded up, as the scripts take it.
    margin_ms: u64,
    /// Shares script calls between concurrent checks: `config.coalesce`,
    /// not on a cluster (a call's keys must share one slot there).
    coalescer: Option<Arc<Coalescer>>,
    /// `FCALL` or `EVALSHA`: see `scripts`.
    dialect: DialectSwitch,
    /// The local budgets of batched policies (see `batched`).
    budgets: Budgets,
    /// The origin of `now_us` under Redis' clock.
    started: std::time::Instant,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.inner.config;
        f.debug_struct("RedisStore")
            .field("topology", &c.topology)
            .field("prefix", &c.prefix)
            .field("timeout", &c.timeout)
            .field("time_source", &c.time_source)
            .finish_non_exhaustive()
    }
}

/// How one `check.lua` call of a group of checks is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Decide and record: the normal call.
    Commit,
    /// Decide, start the penalty blocks of refused checks, charge nothing.
    PenaltiesOnly,
    /// Decide only: nothing is written.
    DryRun,
    /// Record every cost whatever the limits say (Store::charge).
    Charge,
    /// Give back held places (Store::refund).
    Refund,
    /// Lease quota for local budgets (batched policies): each check a
    /// batch of its own, its cost the size asked.
    Lease,
}

/// The checks of one batch that share a client key (one hash slot), by
/// index into the batch.
struct SlotGroup {
    indices: Vec<usize>,
}

impl RedisStore {
    /// A store for `config`. Does not connect: the first call does, and a
    /// Redis that is down only makes calls fail until it is back.
    ///
    /// Must be called within a Tokio runtime (the connection runs on it);
    /// [`ConfigError::NoRuntime`] otherwise.
    pub fn new(config: RedisConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError::NoRuntime);
        }
        let link = Link::open(&config)?;
        let margin_ms = micros_of(config.ttl_margin).div_ceil(1000);
        let coalescer = (config.coalesce && !link.is_cluster()).then(Arc::default);
        Ok(RedisStore {
            inner: Arc::new(Inner {
                link,
                keys: KeyLayout::new(&config.prefix),
                config,
                margin_ms,
                coalescer,
                dialect: DialectSwitch::default(),
                budgets: Budgets::new(MAX_BUDGETS),
                started: std::time::Instant::now(),
            }),
        })
    }

    /// A store for `config` whose Redis has answered a `PING` within
    /// `connect_timeout` (plus `timeout`); behind Sentinels, whose primary
    /// they have named and which answered.
    pub async fn connect(config: RedisConfig) -> Result<Self, Error> {
        let store = RedisStore::new(config).map_err(|e| {
            Error::Store(StoreError::with_source(
                StoreErrorKind::Other,
                "invalid Redis configuration",
                e,
            ))
        })?;
        let wait = store.inner.config.connect_timeout + store.inner.config.timeout;
        let deadline = Instant::now() + wait;
        let mut conn = store.inner.link.conn(deadline, wait).await?;
        match tokio::time::timeout_at(
            deadline,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        {
            Ok(Ok(_)) => Ok(store),
            Ok(Err(e)) => Err(store_error("PING", e)),
            Err(_) => Err(Error::Store(StoreError::timeout(wait))),
        }
    }

    /// The configuration this store was built from.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// `ARGV[1]` of every script: the time source's now (µs), or empty for
    /// Redis' own clock.
    /// Now on the clock the local budgets of batched policies run on (µs):
    /// the configured clock, else a monotonic one (a lease says how long
    /// its units last, not until when, so Redis' clock need not agree).
    fn now_us(&self) -> u64 {
        match &self.inner.config.time_source {
            TimeSource::Server => {
                u64::try_from(self.inner.started.elapsed().as_micros()).unwrap_or(u64::MAX)
            }
            TimeSource::Clock(clock) => clock.now().as_micros(),
        }
    }

    fn now_arg(&self) -> String {
        match &self.inner.config.time_source {
            TimeSource::Server => String::new(),
            TimeSource::Clock(clock) => clock.now().as_micros().to_string(),
        }
    }

    /// When a call starting now must have finished.
    fn deadline(&self) -> Instant {
        Instant::now() + self.inner.config.timeout
    }

    /// The connection for a call ending at `deadline`.
    async fn conn(&self, deadline: Instant) -> Result<Conn, Error> {
        self.inner
            .link
            .conn(deadline, self.inner.config.timeout)
            .await
    }

    /// Runs one Redis request, failing with a timeout error at `deadline`.
    async fn bounded<T>(
        &self,
        deadline: Instant,
        what: &str,
        request: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, Error> {
        if Instant::now() >= deadline {
            // Earlier steps of the call used up its time (a penalty listed
            // after a slow check): nobody waits for this request's answer,
            // so it is not sent.
            return Err(Error::Store(StoreError::timeout(self.inner.config.timeout)));
        }
        match tokio::time::timeout_at(deadline, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                self.inner.link.failed(Some(&e));
                Err(store_error(what, e))
            }
            Err(_) => {
                self.inner.link.failed(None);
                Err(Error::Store(StoreError::timeout(self.inner.config.timeout)))
            }
        }
    }

    /// Runs one command within `deadline`.
    async fn command<T: redis::FromRedisValue>(
        &self,
        deadline: Instant,
        what: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, Error> {
        let mut conn = self.conn(deadline).await?;
        self.bounded(deadline, what, cmd.query_async(&mut conn))
            .await
    }

    /// A call of `script` in the store's dialect, with `keys` keys and
    /// `args` arguments.
    fn script_call(&self, script: &'static LuaScript, keys: usize, args: usize) -> ScriptCall {
        ScriptCall::new(script, self.inner.dialect.get(), keys, args)
    }

    /// Invokes a script within `deadline`.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        deadline: Instant,
        what: &str,
        call: &ScriptCall,
    ) -> Result<T, Error> {
        let mut conn = self.conn(deadline).await?;
        self.bounded(deadline, what, call.invoke(&mut conn, &self.inner.dialect))
            .await
    }

    /// Runs a `check.lua` call: six integers per check, unpacked from its
    /// reply.
    async fn invoke_check(
        &self,
        deadline: Instant,
        what: &str,
        call: &ScriptCall,
    ) -> Result<Vec<i64>, Error> {
        let packed: Vec<u8> = self.invoke(deadline, what, call).await?;
        unpack_check_reply(what, &packed)
    }

    /// Lists a penalty block that `check.lua` started, as MemoryStore does,
    /// so `blocks()` shows it with the rule as source. Best effort: the
    /// penalty itself is already in force (its key was written by the
    /// decision), only its listing can be missed if Redis fails now.
    async fn register_penalty(
        &self,
        deadline: Instant,
        check: &Check<'_>,
        until: u64,
        offence: u32,
    ) {
        let mut put = self.script_call(&scripts::BLOCK_PUT, 1, 6);
        put.key(self.inner.keys.registry())
            .arg(self.now_arg())
            .arg(self.inner.margin_ms)
            .arg(registry_field(check.key, check.rule))
            .arg(until)
            .arg("")
            .arg(floodgate_core::penalty_reason(check.rule, offence));
        let _ = self
            .invoke::<u64>(deadline, "penalty registration", &put)
            .await;
    }

    /// One `check.lua` call for `group` (indices into `checks`), made as
    /// `mode` says; returns the group's decisions in its order.
    ///
    /// A dry run and a penalties-only run add one check that can never fit
    /// (cost 2 of a limit of 1, on a key of the group's slot that nothing
    /// writes): the script then commits no cost, exactly as for any batch
    /// it refuses, while deciding every other check on the state as it is.
    /// A dry run also sends every `block_for` as 0, so no penalty starts.
    async fn run_group(
        &self,
        deadline: Instant,
        checks: &[Check<'_>],
        group: &[usize],
        mode: Mode,
    ) -> Result<Vec<Decision>, Error> {
        let reply = self.group_reply(deadline, checks, group, mode).await?;
        self.decisions(deadline, checks, group, &reply).await
    }

    /// The `check.lua` call of [`RedisStore::run_group`]: its reply, six
    /// integers per check of `group`.
    async fn group_reply(
        &self,
        deadline: Instant,
        checks: &[Check<'_>],
        group: &[usize],
        mode: Mode,
    ) -> Result<Vec<i64>, Error> {
        let keys = &self.inner.keys;
        let guarded = matches!(mode, Mode::PenaltiesOnly | Mode::DryRun);
        let n = group.len() + usize::from(guarded);
        let mut call = self.script_call(&scripts::CHECK, 2 * n, CHECK_FIXED_ARGS + 2 * n);
        // One buffer for every key name: the command copies each in.
        let mut name = String::new();
        for &i in group {
            let c = &checks[i];
            keys.write_state(&mut name, c.rule, c.key);
            call.key(name.as_str());
            keys.write_block(&mut name, c.rule, c.key);
            call.key(name.as_str());
        }
        if let Some(&first) = group.first()
            && guarded
        {
            keys.write_guard(&mut name, checks[first].key);
            call.key(name.as_str()).key(name.as_str());
        }
        call.arg(self.now_arg()).arg(self.inner.margin_ms);
        let mut args: Vec<CheckArg<'_>> = group
            .iter()
            .map(|&i| {
                let c = &checks[i];
                CheckArg {
                    policy: c.policy,
                    penalties: mode != Mode::DryRun,
                    shadow: c.shadow,
                    probe: c.probe,
                    charge: mode == Mode::Charge,
                    refund: mode == Mode::Refund,
                    lease: mode == Mode::Lease,
                    cost: c.cost,
                    slot: None,
                }
            })
            .collect();
        if guarded {
            // Cost 2 of a limit of 1, enforcing, no block_for.
            args.push(CheckArg {
                policy: &GUARD_POLICY,
                penalties: false,
                shadow: false,
                probe: false,
                charge: false,
                refund: false,
                lease: false,
                cost: 2,
                slot: None,
            });
        }
        push_checks(&mut call, if mode == Mode::Lease { "*" } else { "" }, &args);
        let what = match mode {
            Mode::Commit => "check",
            Mode::PenaltiesOnly => "check (penalties only)",
            Mode::DryRun => "check (dry run)",
            Mode::Charge => "charge",
            Mode::Refund => "refund",
            Mode::Lease => "lease",
        };
        let reply = self.invoke_check(deadline, what, &call).await?;
        if reply.len() != n * DECISION_FIELDS {
            return Err(bad_reply(
                what,
                format!("{} decisions for {n} checks", reply.len() / DECISION_FIELDS),
            ));
        }
        Ok(reply)
    }

    /// The decisions of `group` (indices into `checks`) from its part of a
    /// `check.lua` reply; lists every penalty block the call started.
    async fn decisions(
        &self,
        deadline: Instant,
        checks: &[Check<'_>],
        group: &[usize],
        reply: &[i64],
    ) -> Result<Vec<Decision>, Error> {
        let mut decisions = Vec::with_capacity(group.len());
        for (&i, fields) in group.iter().zip(reply.chunks_exact(DECISION_FIELDS)) {
            let c = &checks[i];
            decisions.push(decision_from(c.policy, fields)?);
            if let Ok(until @ 1..) = u64::try_from(fields[5]) {
                self.register_penalty(deadline, c, until, crate::wire::ladder_offence(fields))
                    .await;
            }
        }
        Ok(decisions)
    }

    /// [`Store::check`] of a batch through the coalescer: one call shared
    /// with the batches of other requests waiting at the same time.
    async fn check_coalesced(
        &self,
        coalescer: &Arc<Coalescer>,
        deadline: Instant,
        checks: &[Check<'_>],
        mode: Mode,
    ) -> Result<Vec<Decision>, Error> {
        let keys = &self.inner.keys;
        let queued = checks
            .iter()
            .map(|c| {
                let (state_key, block_key) = keys.state_and_block(c.rule, c.key);
                QueuedCheck {
                    state_key,
                    block_key,
                    policy: c.policy.clone(),
                    cost: c.cost,
                    shadow: c.shadow,
                    probe: c.probe,
                    charge: mode == Mode::Charge,
                    refund: mode == Mode::Refund,
                    slot: None,
                }
            })
            .collect();
        let reply = coalescer
            .check(self, queued, deadline, self.inner.config.timeout)
            .await?;
        let all: Vec<usize> = (0..checks.len()).collect();
        self.decisions(deadline, checks, &all, &reply).await
    }

    /// Charges or refunds (`mode`) every check whatever the limits say: one
    /// atomic `check.lua` call of checks of that mode, shared with other
    /// requests' calls like any check; on a cluster, one call per client key
    /// (hash slot), concurrently. They are independent of each other, so
    /// splitting them changes nothing but where they run.
    async fn record_all(&self, checks: &[Check<'_>], mode: Mode) -> Result<Vec<Decision>, Error> {
        validate_charges(checks)?;
        if checks.is_empty() {
            return Ok(Vec::new());
        }
        let deadline = self.deadline();
        if self.inner.link.is_cluster() {
            let groups = slot_groups(checks);
            let all: Vec<&SlotGroup> = groups.iter().collect();
            let answers = self.run_groups(deadline, checks, &all, mode).await?;
            let mut decisions: Vec<Option<Decision>> = vec![None; checks.len()];
            for (g, ds) in groups.iter().zip(answers) {
                for (&i, d) in g.indices.iter().zip(ds) {
                    decisions[i] = Some(d);
                }
            }
            return Ok(decisions.into_iter().flatten().collect());
        }
        let all: Vec<usize> = (0..checks.len()).collect();
        let Some(coalescer) = &self.inner.coalescer else {
            return self.run_group(deadline, checks, &all, mode).await;
        };
        match coalescer.try_lead(self) {
            Some(_lead) => self.run_group(deadline, checks, &all, mode).await,
            None => {
                self.check_coalesced(coalescer, deadline, checks, mode)
                    .await
            }
        }
    }

    /// The slots of a call grouped so that each group is one script call:
    /// all of them on a standalone Redis, one group per client key (hash
    /// slot) on a cluster.
    fn slot_call_groups(&self, slots: &[Slot<'_>]) -> Vec<Vec<usize>> {
        if !self.inner.link.is_cluster() {
            return vec![(0..slots.len()).collect()];
        }
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, s) in slots.iter().enumerate() {
            match groups.iter_mut().find(|(key, _)| *key == s.key) {
                Some((_, g)) => g.push(i),
                None => groups.push((s.key, vec![i])),
            }
        }
        groups.into_iter().map(|(_, g)| g).collect()
    }

    /// `op` on `slots`: a batch of `check.lua` slot operations per group of
    /// [`slot_call_groups`](Self::slot_call_groups), concurrently, shared
    /// with other requests' calls through the coalescer where there is
    /// one; the groups and each one's six integers per slot.
    async fn slot_calls(
        &self,
        op: SlotOp,
        slots: &[Slot<'_>],
    ) -> Result<(Vec<Vec<usize>>, Vec<Vec<i64>>), Error> {
        if slots.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let deadline = self.deadline();
        let groups = self.slot_call_groups(slots);
        let answers = try_join_all(groups.iter().map(|g| {
            let queued: Vec<QueuedCheck> = g
                .iter()
                .map(|&i| {
                    let s = &slots[i];
                    let key = self.inner.keys.slots(s.rule, s.key);
                    QueuedCheck {
                        block_key: key.clone(),
                        state_key: key,
                        policy: GUARD_POLICY.clone(),
                        cost: 1,
                        shadow: false,
                        probe: false,
                        charge: false,
                        refund: false,
                        slot: Some(SlotArg {
                            limit: s.limit,
                            lease_us: micros_of(s.lease).max(1),
                            id: s.id.to_owned(),
                            op,
                        }),
                    }
                })
                .collect();
            self.queued_call(deadline, queued)
        }))
        .await?;
        for (g, reply) in groups.iter().zip(&answers) {
            if reply.len() != g.len() * DECISION_FIELDS {
                return Err(bad_reply(
                    "slots",
                    format!("{} values for {} slots", reply.len(), g.len()),
                ));
            }
        }
        Ok((groups, answers))
    }

    /// One batch of `checks` (one hash slot): through the coalescer when
    /// another call is on its way, else a call of its own.
    async fn queued_call(
        &self,
        deadline: Instant,
        checks: Vec<QueuedCheck>,
    ) -> Result<Vec<i64>, Error> {
        // Counted in flight while this call is made, when it leads.
        let _lead = match &self.inner.coalescer {
            Some(coalescer) => match coalescer.try_lead(self) {
                Some(lead) => Some(lead),
                None => {
                    return coalescer
                        .check(self, checks, deadline, self.inner.config.timeout)
                        .await;
                }
            },
            None => None,
        };
        let n = checks.len();
        let mut call = self.script_call(&scripts::CHECK, 2 * n, CHECK_FIXED_ARGS + 2 * n);
        for c in &checks {
            call.key(c.state_key.as_str()).key(c.block_key.as_str());
        }
        call.arg(self.now_arg()).arg(self.inner.margin_ms);
        let args: Vec<CheckArg<'_>> = checks
            .iter()
            .map(|c| CheckArg {
                policy: &c.policy,
                penalties: false,
                shadow: false,
                probe: false,
                charge: false,
                refund: false,
                lease: false,
                cost: 1,
                slot: c.slot.as_ref(),
            })
            .collect();
        push_checks(&mut call, "", &args);
        self.invoke_check(deadline, "slots", &call).await
    }

    /// A call of `overrides.lua` on its five keys, with `ARGV[1]` (now) set
    /// and `args` more arguments to come.
    fn override_call(&self, args: usize) -> ScriptCall {
        let mut call = self.script_call(&scripts::OVERRIDES, 5, 1 + args);
        for key in self.inner.keys.overrides() {
            call.key(key.as_str());
        }
        call.arg(self.now_arg());
        call
    }

    /// A call of `top.lua` on its two keys, with `ARGV[1]` (now) set and
    /// `args` more arguments to come.
    fn top_call(&self, args: usize) -> ScriptCall {
        let mut call = self.script_call(&scripts::TOP, 2, 1 + args);
        for key in self.inner.keys.top() {
            call.key(key.as_str());
        }
        call.arg(self.now_arg());
        call
    }

    /// [`RedisStore::run_group`] for each of `groups`, concurrently.
    async fn run_groups(
        &self,
        deadline: Instant,
        checks: &[Check<'_>],
        groups: &[&SlotGroup],
        mode: Mode,
    ) -> Result<Vec<Vec<Decision>>, Error> {
        try_join_all(
            groups
                .iter()
                .map(|g| self.run_group(deadline, checks, &g.indices, mode)),
        )
        .await
    }

    /// [`Store::check`] of a batch spanning several hash slots of a cluster
    /// (see [`RedisStore::check`](#method.check)).
    async fn check_across_slots(
        &self,
        deadline: Instant,
        checks: &[Check<'_>],
        groups: &[SlotGroup],
    ) -> Result<Vec<Decision>, Error> {
        let mut decisions: Vec<Option<Decision>> = vec![None; checks.len()];
        let place = |decisions: &mut Vec<Option<Decision>>, g: &SlotGroup, ds: Vec<Decision>| {
            for (&i, d) in g.indices.iter().zip(ds) {
                decisions[i] = Some(d);
            }
        };
        let all: Vec<&SlotGroup> = groups.iter().collect();
        let peeked = self
            .run_groups(deadline, checks, &all, Mode::DryRun)
            .await?;
        let refuses = |g: &SlotGroup, ds: &[Decision]| {
            g.indices
                .iter()
                .zip(ds)
                .any(|(&i, d)| !d.allowed && !checks[i].shadow)
        };
        let refusing: Vec<&SlotGroup> = groups
            .iter()
            .zip(&peeked)
            .filter(|(g, ds)| refuses(g, ds))
            .map(|(g, _)| g)
            .collect();
        if refusing.is_empty() {
            let committed = self
                .run_groups(deadline, checks, &all, Mode::Commit)
                .await?;
            for (g, ds) in groups.iter().zip(committed) {
                place(&mut decisions, g, ds);
            }
        } else {
            for (g, ds) in groups.iter().zip(peeked) {
                place(&mut decisions, g, ds);
            }
            let penalised = self
                .run_groups(deadline, checks, &refusing, Mode::PenaltiesOnly)
                .await?;
            for (g, ds) in refusing.into_iter().zip(penalised) {
                // Refused again (the usual case): its decisions, penalties
                // included. Admitting now (its quota came back in between):
                // the dry run's refusal stands, so the batch stays refused.
                if refuses(g, &ds) {
                    place(&mut decisions, g, ds);
                }
            }
        }
        Ok(decisions.into_iter().flatten().collect())
    }

    /// [`Store::check`] of checks decided in Redis, each call atomic (see
    /// [`Store::check`](#method.check)).
    async fn check_exact(&self, checks: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        if checks.is_empty() {
            return Ok(Vec::new());
        }
        let deadline = self.deadline();
        if self.inner.link.is_cluster() {
            let groups = slot_groups(checks);
            if groups.len() > 1 {
                return self.check_across_slots(deadline, checks, &groups).await;
            }
        }
        let all: Vec<usize> = (0..checks.len()).collect();
        let Some(coalescer) = &self.inner.coalescer else {
            return self.run_group(deadline, checks, &all, Mode::Commit).await;
        };
        match coalescer.try_lead(self) {
            Some(_lead) => self.run_group(deadline, checks, &all, Mode::Commit).await,
            None => {
                self.check_coalesced(coalescer, deadline, checks, Mode::Commit)
                    .await
            }
        }
    }

    /// [`Store::check`] of a batch with checks of batched policies.
    ///
    /// Each such check is admitted from its (rule, key)'s local budget when
    /// the budget holds its cost; the ones short of units lease more, all
    /// of this batch's leases in one call (one per hash slot on a
    /// cluster), each lease standing alone. The batch's other checks are
    /// then decided in Redis as usual, one atomic call, when every batched
    /// check admitted; when one refused, they are decided without being
    /// charged (their penalties start), as in any refused batch. Units
    /// taken locally for a batch that is refused are given back to their
    /// budgets.
    async fn check_batched(&self, checks: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        let budgets = &self.inner.budgets;
        let now = self.now_us();
        let mut decisions: Vec<Option<Decision>> = vec![None; checks.len()];
        let mut short: Vec<(usize, u64)> = Vec::new();
        for (i, c) in checks.iter().enumerate() {
            if !leases(c) {
                continue;
            }
            match budgets.take(c, now) {
                Take::Admitted(d) | Take::Refused(d) => decisions[i] = Some(d),
                Take::Lease(want) => short.push((i, want)),
            }
        }
        let deadline = self.deadline();
        if !short.is_empty()
            && let Err(e) = self.lease(deadline, checks, &short, &mut decisions).await
        {
            for &(i, _) in &short {
                budgets.lease_failed(checks[i].rule, checks[i].key);
            }
            self.give_back(checks, &decisions);
            return Err(e);
        }
        let refused = decisions.iter().flatten().any(|d| !d.allowed);
        let exact: Vec<Check<'_>> = checks.iter().filter(|c| !leases(c)).copied().collect();
        if !exact.is_empty() {
            let decided = if refused {
                self.decide_uncharged(deadline, &exact).await
            } else {
                self.check_exact(&exact).await
            };
            let decided = match decided {
                Ok(decided) => decided,
                Err(e) => {
                    self.give_back(checks, &decisions);
                    return Err(e);
                }
            };
            if !refused && !admitted(&exact, &decided) {
                self.give_back(checks, &decisions);
            }
            let mut decided = decided.into_iter();
            for (c, d) in checks.iter().zip(decisions.iter_mut()) {
                if !leases(c) {
                    *d = decided.next();
                }
            }
        } else if refused {
            self.give_back(checks, &decisions);
        }
        let decided: Vec<Decision> = decisions.into_iter().flatten().collect();
        if decided.len() != checks.len() {
            return Err(bad_reply(
                "check",
                format!("{} decisions for {} checks", decided.len(), checks.len()),
            ));
        }
        Ok(decided)
    }

    /// Leases units for the checks `short` names (index, size asked) and
    /// settles each against its budget: its decision goes to `decisions`.
    async fn lease(
        &self,
        deadline: Instant,
        checks: &[Check<'_>],
        short: &[(usize, u64)],
        decisions: &mut [Option<Decision>],
    ) -> Result<(), Error> {
        // The leases as checks of the size asked.
        let asks: Vec<Check<'_>> = short
            .iter()
            .map(|&(i, want)| Check {
                cost: want,
                ..checks[i]
            })
            .collect();
        let groups: Vec<Vec<usize>> = if self.inner.link.is_cluster() {
            slot_groups(&asks).into_iter().map(|g| g.indices).collect()
        } else {
            vec![(0..asks.len()).collect()]
        };
        let sent = self.now_us();
        let replies = try_join_all(
            groups
                .iter()
                .map(|g| self.group_reply(deadline, &asks, g, Mode::Lease)),
        )
        .await?;
        let now = self.now_us();
        for (g, reply) in groups.iter().zip(replies) {
            for (&a, fields) in g.iter().zip(reply.chunks_exact(DECISION_FIELDS)) {
                let (i, _) = short[a];
                let c = &checks[i];
                let leased = if fields[0] == 1 {
                    let count = |v: i64| {
                        u64::try_from(v).map_err(|_| bad_reply("lease", format!("{fields:?}")))
                    };
                    Leased::Granted {
                        granted: count(fields[5])?,
                        valid: Duration::from_micros(count(fields[3])?),
                        remaining: count(fields[1])?,
                        reset_after: Duration::from_micros(count(fields[2])?),
                    }
                } else {
                    if let Ok(until @ 1..) = u64::try_from(fields[5]) {
                        self.register_penalty(
                            deadline,
                            c,
                            until,
                            crate::wire::ladder_offence(fields),
                        )
                        .await;
                    }
                    Leased::Refused(decision_from(c.policy, fields)?)
                };
                decisions[i] = Some(self.inner.budgets.settle(c, sent, now, leased));
            }
        }
        Ok(())
    }

    /// Decides `checks` in Redis without charging them; the penalties of
    /// the refused ones start (a batch refused by another of its checks).
    async fn decide_uncharged(
        &self,
        deadline: Instant,
        checks: &[Check<'_>],
    ) -> Result<Vec<Decision>, Error> {
        let groups = if self.inner.link.is_cluster() {
            slot_groups(checks)
        } else {
            vec![SlotGroup {
                indices: (0..checks.len()).collect(),
            }]
        };
        let all: Vec<&SlotGroup> = groups.iter().collect();
        let answers = self
            .run_groups(deadline, checks, &all, Mode::PenaltiesOnly)
            .await?;
        let mut decisions: Vec<Option<Decision>> = vec![None; checks.len()];
        for (g, ds) in groups.iter().zip(answers) {
            for (&i, d) in g.indices.iter().zip(ds) {
                decisions[i] = Some(d);
            }
        }
        Ok(decisions.into_iter().flatten().collect())
    }

    /// Gives the units of the batched checks admitted in `decisions` back
    /// to their budgets: their batch was refused, or failed.
    fn give_back(&self, checks: &[Check<'_>], decisions: &[Option<Decision>]) {
        let now = self.now_us();
        for (c, d) in checks.iter().zip(decisions) {
            if leases(c) && d.is_some_and(|d| d.allowed) {
                self.inner.budgets.give_back(c, now);
            }
        }
    }
}

/// The override changes an `overrides.lua` "changes" call answered.
fn override_changes_from(reply: &[redis::Value]) -> Result<OverrideChanges, Error> {
    let bad = |what: String| bad_reply("override_changes", what);
    let int = |v: &redis::Value| -> Result<u64, Error> {
        redis::from_redis_value::<u64>(v.clone()).map_err(|e| bad(e.to_string()))
    };
    let [version, reset, more, epoch, rest @ ..] = reply else {
        return Err(bad(format!("{} values", reply.len())));
    };
    let mut out = OverrideChanges {
        version: int(version)?,
        epoch: int(epoch)?,
        reset: int(reset)? == 1,
        more: int(more)? == 1,
        changes: Vec::with_capacity(rest.len() / 2),
    };
    for pair in rest.chunks(2) {
        let [field, value] = pair else {
            return Err(bad("a field without a value".to_owned()));
        };
        let field: String =
            redis::from_redis_value(field.clone()).map_err(|e| bad(e.to_string()))?;
        let (key, rule) =
            split_registry_field(&field).ok_or_else(|| bad(format!("field {field:?}")))?;
        let now = match value {
            redis::Value::Nil => None,
            v => {
                let text: String =
                    redis::from_redis_value(v.clone()).map_err(|e| bad(e.to_string()))?;
                Some(
                    parse_override(rule, key, &text)
                        .ok_or_else(|| bad(format!("value {text:?}")))?,
                )
            }
        };
        out.changes.push(OverrideChange {
            rule: rule.to_owned(),
            key: key.to_owned(),
            now,
        });
    }
    Ok(out)
}

/// An override stored as `<limit>:<window_us>:<burst>:<expires_us>`.
fn parse_override(rule: &str, key: &str, text: &str) -> Option<KeyOverride> {
    let mut parts = text.split(':').map(|p| p.parse::<u64>().ok());
    let (Some(Some(limit)), Some(Some(window)), Some(Some(burst)), Some(Some(expires)), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    Some(KeyOverride {
        rule: rule.to_owned(),
        key: key.to_owned(),
        limit,
        window: (window > 0).then(|| Duration::from_micros(window)),
        burst: (burst > 0).then_some(burst),
        expires: (expires > 0).then(|| Timestamp::from_micros(expires)),
    })
}

/// Whether a check is decided from a local budget: an enforcing charge
/// of a batched policy.
fn leases(c: &Check<'_>) -> bool {
    c.policy.is_batched() && !c.shadow && !c.probe
}

/// The checks of `checks` grouped by client key, in first-seen order.
fn slot_groups(checks: &[Check<'_>]) -> Vec<SlotGroup> {
    let mut groups: Vec<(&str, SlotGroup)> = Vec::new();
    for (i, c) in checks.iter().enumerate() {
        match groups.iter_mut().find(|(key, _)| *key == c.key) {
            Some((_, g)) => g.indices.push(i),
            None => groups.push((c.key, SlotGroup { indices: vec![i] })),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// The policy of the never-fitting check a dry or penalties-only run adds:
/// fixed_window, limit 1 per second.
static GUARD_POLICY: LazyLock<Policy> = LazyLock::new(|| {
    Policy::new(Algorithm::FixedWindow, 1, Duration::from_secs(1))
        .expect("1 per second is a valid policy")
});

impl Runner for RedisStore {
    fn now_arg(&self) -> String {
        RedisStore::now_arg(self)
    }

    fn margin_ms(&self) -> u64 {
        self.inner.margin_ms
    }

    fn dialect(&self) -> Dialect {
        self.inner.dialect.get()
    }

    async fn run(&self, call: ScriptCall, deadline: Instant) -> Result<Vec<i64>, Error> {
        self.invoke_check(deadline, "check", &call).await
    }
}

impl Store for RedisStore {
    /// Decides `checks` and records them if every enforcing one admits.
    ///
    /// On a standalone Redis or a Sentinel primary, and on a cluster when
    /// every check names the same client key (one hash slot), this is one
    /// atomic `check.lua` call: exact, as on [`floodgate_core::MemoryStore`].
    ///
    /// On a cluster, checks naming different client keys live in different
    /// slots, often on different nodes, and no one script can touch them
    /// all. Such a batch is decided per client key (per group), in a way
    /// that never admits more than a limit allows:
    ///
    /// 1. Every group is decided in a dry run (concurrently) that records
    ///    nothing and starts no penalty.
    /// 2. If some group refuses (an enforcing check is refused), the batch is
    ///    refused: the refusing groups are decided once more with their
    ///    penalty blocks starting but no cost charged, and nothing is charged
    ///    anywhere. The decisions of the other groups are their dry run's.
    /// 3. If every group admitted, each group is decided and recorded for
    ///    real (concurrently), each atomically in its slot. A group may
    ///    refuse now (another request took the last of its quota since the
    ///    dry run): the batch is then refused, and the groups that admitted
    ///    stay charged for a request that was refused. Limits are never
    ///    exceeded; under such races a client may be admitted less than its
    ///    limit.
    ///
    /// An error from any call fails the batch; costs already recorded by
    /// other groups stay (again only ever over-counting).
    ///
    /// Checks of a batched policy ([`Policy::with_batched`]) are decided
    /// from local budgets leased from Redis: see [batched
    /// consistency](RedisStore#batched-consistency).
    async fn check(&self, checks: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        validate_checks(checks)?;
        if checks.iter().any(leases) {
            return self.check_batched(checks).await;
        }
        self.check_exact(checks).await
    }

    /// [`RedisConfig::timeout`]: every call, cluster and Sentinel
    /// look-ups included, runs against one deadline that far away.
    fn call_timeout(&self) -> Option<Duration> {
        Some(self.inner.config.timeout)
    }

    /// Records each charge whatever its limit says: one atomic `check.lua`
    /// call shared with other requests' calls, one per client key (hash
    /// slot) on a cluster.
    async fn charge(&self, charges: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        self.record_all(charges, Mode::Charge).await
    }

    /// As [`charge`](#method.charge), each check giving its cost back.
    async fn refund(&self, refunds: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        self.record_all(refunds, Mode::Refund).await
    }

    async fn peek(&self, rule: &str, policy: &Policy, key: &str) -> Result<Decision, Error> {
        let keys = &self.inner.keys;
        let mut call = self.script_call(&scripts::PEEK, 2, 9);
        call.key(keys.state(rule, key))
            .key(keys.block(rule, key))
            .arg(self.now_arg())
            .arg(self.inner.margin_ms);
        push_policy(&mut call, policy, true);
        let reply: Vec<i64> = self.invoke(self.deadline(), "peek", &call).await?;
        decision_from(policy, &reply)
    }

    async fn reset(&self, rule: &str, key: &str) -> Result<bool, Error> {
        self.inner.budgets.forget(rule, key);
        let deadline = self.deadline();
        let keys = &self.inner.keys;
        // Two hash slots (the identity's and the registry's): two commands,
        // concurrent (pipelined on one connection), not a transaction.
        let mut del = redis::cmd("DEL");
        del.arg(keys.state(rule, key)).arg(keys.block(rule, key));
        let mut hdel = redis::cmd("HDEL");
        hdel.arg(keys.registry()).arg(registry_field(key, rule));
        let (deleted, _): (u64, u64) = tokio::try_join!(
            self.command(deadline, "reset", &del),
            self.command(deadline, "reset", &hdel),
        )?;
        Ok(deleted > 0)
    }

    async fn add_block(&self, target: &str, ttl: Duration, reason: &str) -> Result<Block, Error> {
        let mut call = self.script_call(&scripts::BLOCK_PUT, 1, 6);
        call.key(self.inner.keys.registry())
            .arg(self.now_arg())
            .arg(self.inner.margin_ms)
            .arg(registry_field(target, BlockSource::Manual.as_str()))
            .arg("")
            .arg(micros_of(ttl).min(MAX_BLOCK_TTL_US))
            .arg(reason);
        let until: u64 = self.invoke(self.deadline(), "add_block", &call).await?;
        Ok(Block {
            target: target.to_owned(),
            until: Timestamp::from_micros(until),
            reason: reason.to_owned(),
            source: BlockSource::Manual,
        })
    }

    async fn remove_block(&self, target: &str) -> Result<bool, Error> {
        let deadline = self.deadline();
        let keys = &self.inner.keys;
        let mut call = self.script_call(&scripts::BLOCK_REMOVE, 1, 2);
        call.key(keys.registry()).arg(self.now_arg()).arg(target);
        let reply: Vec<String> = self.invoke(deadline, "remove_block", &call).await?;
        let Some((lifted, sources)) = reply.split_first() else {
            return Err(bad_reply("remove_block", "empty reply"));
        };
        // Penalty keys live in the target's slot, not the registry's: clear
        // them in a second step. Each is zeroed, not deleted, like the memory
        // store zeroes `blocked_until`: what the key held is still there for
        // `reset` to report, until it expires. One command per key, sent
        // together, so a cluster routes each.
        let clears: Vec<redis::Cmd> = sources
            .iter()
            .filter_map(|source| match BlockSource::parse(source) {
                BlockSource::Rule(rule) => {
                    let mut set = redis::cmd("SET");
                    set.arg(keys.block(&rule, target))
                        .arg(0)
                        .arg("XX")
                        .arg("KEEPTTL");
                    Some(set)
                }
                BlockSource::Manual => None,
            })
            .collect();
        for cleared in join_all(
            clears
                .iter()
                .map(|set| self.command::<redis::Value>(deadline, "remove_block", set)),
        )
        .await
        {
            cleared?;
        }
        Ok(lifted == "1")
    }

    async fn acquire(&self, slots: &[Slot<'_>]) -> Result<Vec<SlotDecision>, Error> {
        let (groups, answers) = self.slot_calls(SlotOp::Acquire, slots).await?;
        let mut decisions: Vec<Option<SlotDecision>> = vec![None; slots.len()];
        for (g, reply) in groups.iter().zip(&answers) {
            for (&i, fields) in g.iter().zip(reply.chunks_exact(DECISION_FIELDS)) {
                decisions[i] = Some(SlotDecision {
                    allowed: fields[0] == 1,
                    in_flight: u64::try_from(fields[1]).unwrap_or(0),
                    limit: slots[i].limit,
                });
            }
        }
        let decisions: Vec<SlotDecision> = decisions.into_iter().flatten().collect();
        if groups.len() > 1 && decisions.iter().any(|d| !d.allowed) {
            // Slots spread over hash slots: what the groups that had room
            // took goes back, so the call takes all or nothing.
            let taken: Vec<Slot<'_>> = slots
                .iter()
                .zip(&decisions)
                .filter(|(_, d)| d.allowed)
                .map(|(s, _)| *s)
                .collect();
            self.release(&taken).await?;
            return Ok(decisions
                .into_iter()
                .map(|d| SlotDecision {
                    allowed: false,
                    in_flight: if d.allowed {
                        d.in_flight - 1
                    } else {
                        d.in_flight
                    },
                    ..d
                })
                .collect());
        }
        Ok(decisions)
    }

    async fn release(&self, slots: &[Slot<'_>]) -> Result<(), Error> {
        self.slot_calls(SlotOp::Release, slots).await?;
        Ok(())
    }

    async fn renew(&self, slots: &[Slot<'_>]) -> Result<Vec<bool>, Error> {
        let (groups, answers) = self.slot_calls(SlotOp::Renew, slots).await?;
        let mut held = vec![false; slots.len()];
        for (g, reply) in groups.iter().zip(&answers) {
            for (&i, fields) in g.iter().zip(reply.chunks_exact(DECISION_FIELDS)) {
                held[i] = fields[0] == 1;
            }
        }
        Ok(held)
    }

    async fn put_override(
        &self,
        o: &KeyOverride,
        ttl: Option<Duration>,
    ) -> Result<KeyOverride, Error> {
        let value = format!(
            "{}:{}:{}:",
            o.limit,
            o.window.map_or(0, micros_of),
            o.burst.unwrap_or(0)
        );
        let mut call = self.override_call(4);
        call.arg("put")
            .arg(registry_field(&o.key, &o.rule))
            .arg(value)
            .arg(ttl.map_or(0, |ttl| micros_of(ttl).max(1)));
        let expires: u64 = self.invoke(self.deadline(), "put_override", &call).await?;
        Ok(KeyOverride {
            expires: (expires > 0).then(|| Timestamp::from_micros(expires)),
            ..o.clone()
        })
    }

    async fn remove_override(&self, rule: &str, key: &str) -> Result<bool, Error> {
        let mut call = self.override_call(2);
        call.arg("remove").arg(registry_field(key, rule));
        let existed: u64 = self
            .invoke(self.deadline(), "remove_override", &call)
            .await?;
        Ok(existed == 1)
    }

    async fn override_changes(&self, since: u64, max: usize) -> Result<OverrideChanges, Error> {
        let mut call = self.override_call(3);
        call.arg("changes").arg(since).arg(max.max(1));
        let reply: Vec<redis::Value> = self
            .invoke(self.deadline(), "override_changes", &call)
            .await?;
        override_changes_from(&reply)
    }

    async fn blocks(&self) -> Result<Vec<Block>, Error> {
        let mut call = self.script_call(&scripts::BLOCK_LIST, 1, 2);
        call.key(self.inner.keys.registry())
            .arg(self.now_arg())
            .arg(self.inner.margin_ms);
        let reply: Vec<String> = self.invoke(self.deadline(), "blocks", &call).await?;
        let mut blocks = Vec::with_capacity(reply.len() / 2);
        for pair in reply.chunks(2) {
            let [field, value] = pair else {
                return Err(bad_reply("blocks", "odd number of strings"));
            };
            let (target, source) = split_registry_field(field)
                .ok_or_else(|| bad_reply("blocks", format!("registry field {field:?}")))?;
            let (until, reason) = value
                .split_once(':')
                .and_then(|(u, r)| Some((u.parse::<u64>().ok()?, r)))
                .ok_or_else(|| bad_reply("blocks", format!("registry value {value:?}")))?;
            blocks.push(Block {
                target: target.to_owned(),
                until: Timestamp::from_micros(until),
                reason: reason.to_owned(),
                source: BlockSource::parse(source),
            });
        }
        blocks.sort_by(|a, b| (&a.target, &a.source).cmp(&(&b.target, &b.source)));
        Ok(blocks)
    }

    /// One `top.lua` call: the summary is a field of a hash shared by every
    /// instance, with its expiry in a sorted set beside it.
    async fn put_top(&self, summary: &TopSummary, ttl: Duration) -> Result<(), Error> {
        let mut call = self.top_call(4);
        call.arg("put")
            .arg(summary.instance.as_str())
            .arg(summary.encode())
            .arg(micros_of(ttl).max(1));
        let _: i64 = self.invoke(self.deadline(), "put_top", &call).await?;
        Ok(())
    }

    /// One `top.lua` call. A summary this version cannot read (one written
    /// by another floodgate version during an upgrade) is left out.
    async fn top_summaries(&self) -> Result<Vec<TopSummary>, Error> {
        let mut call = self.top_call(1);
        call.arg("list");
        let reply: Vec<String> = self.invoke(self.deadline(), "top_summaries", &call).await?;
        Ok(reply
            .iter()
            .filter_map(|text| TopSummary::decode(text).ok())
            .collect())
    }

    async fn ping(&self) -> Result<(), Error> {
        // On a cluster PING goes to every node and must succeed on all.
        let pong: String = self
            .command(self.deadline(), "ping", &redis::cmd("PING"))
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(bad_reply("ping", pong))
        }
    }
}
