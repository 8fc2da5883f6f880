//! [`RedisStore`]: floodgate's [`Store`] on a shared Redis.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use floodgate_core::{
    Block, BlockSource, Check, Decision, Error, Policy, Store, StoreError, StoreErrorKind,
    Timestamp, micros_of, validate_checks,
};
use redis::RedisResult;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use crate::config::{ConfigError, RedisConfig, TimeSource, redact};
use crate::error::{bad_reply, store_error};
use crate::keys::{KeyLayout, registry_field, split_registry_field};
use crate::scripts::{self, ScriptCall};

/// Integers per check in a `check.lua` or `peek.lua` reply.
const DECISION_FIELDS: usize = 6;

/// The longest manual block accepted (about 142 years): keeps `now + ttl`
/// exact in Lua's doubles. Longer TTLs are shortened to it.
const MAX_BLOCK_TTL_US: u64 = 1 << 52;

/// Reconnection backoff: first retry after this long...
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(20);
/// ...doubling up to this, so a restarted Redis is found again within a second.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);

/// A [`Store`] on Redis, shared by every floodgate instance that uses the same
/// Redis and prefix. Cheap to clone; clones share one connection.
///
/// - Each [`Store::check`] is one `EVALSHA` of `check.lua`, which decides
///   and records the whole batch atomically with the same arithmetic as
///   floodgate-core, so N instances admit exactly what one would.
/// - Calls share one multiplexed connection (pipelined on one socket), which
///   reconnects in the background after Redis goes away; scripts are reloaded
///   after `NOSCRIPT`.
/// - Every call is bounded by [`RedisConfig::timeout`] and fails with a typed
///   [`StoreError`]: timeout, connection dropped, script error or other.
/// - Every key written carries a TTL set in the same script call.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The multiplexed, self-reconnecting connection; cloned per call.
    conn: ConnectionManager,
    /// Names every key under the configured prefix.
    keys: KeyLayout,
    /// As given, validated.
    config: RedisConfig,
    /// `config.ttl_margin` in whole milliseconds, rounded up, as the scripts take it.
    margin_ms: u64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.inner.config;
        f.debug_struct("RedisStore")
            .field("prefix", &c.prefix)
            .field("timeout", &c.timeout)
            .field("time_source", &c.time_source)
            .finish_non_exhaustive()
    }
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
        let client = redis::Client::open(config.url.as_str()).map_err(|e| ConfigError::Url {
            url: redact(&config.url),
            source: e,
        })?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.timeout))
            .set_min_delay(RECONNECT_MIN_DELAY)
            .set_max_delay(RECONNECT_MAX_DELAY);
        let conn =
            ConnectionManager::new_lazy_with_config(client, manager_config).map_err(|e| {
                ConfigError::Url {
                    url: redact(&config.url),
                    source: e,
                }
            })?;
        let margin_ms = micros_of(config.ttl_margin).div_ceil(1000);
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                keys: KeyLayout::new(&config.prefix),
                config,
                margin_ms,
            }),
        })
    }

    /// A store for `config` whose Redis has answered a `PING` within
    /// `connect_timeout`.
    pub async fn connect(config: RedisConfig) -> Result<Self, Error> {
        let store = RedisStore::new(config).map_err(|e| {
            Error::Store(StoreError::with_source(
                StoreErrorKind::Other,
                "invalid Redis configuration",
                e,
            ))
        })?;
        let wait = store.inner.config.connect_timeout + store.inner.config.timeout;
        let mut conn = store.inner.conn.clone();
        match tokio::time::timeout(wait, redis::cmd("PING").query_async::<String>(&mut conn)).await
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

    /// ARGV[1] of every script: the time source's now (µs), or empty for
    /// Redis' own clock.
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

    /// Runs one Redis request, failing with a timeout error at `deadline`.
    async fn bounded<T>(
        &self,
        deadline: Instant,
        what: &str,
        request: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout_at(deadline, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(store_error(what, e)),
            Err(_) => Err(Error::Store(StoreError::timeout(self.inner.config.timeout))),
        }
    }

    /// Invokes a script within `deadline`.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        deadline: Instant,
        what: &str,
        call: &ScriptCall,
    ) -> Result<T, Error> {
        let mut conn = self.inner.conn.clone();
        self.bounded(deadline, what, call.invoke(&mut conn)).await
    }

    /// Lists a penalty block that `check.lua` started, as MemoryStore does,
    /// so `blocks()` shows it with the rule as source. Best effort: the
    /// penalty itself is already in force (its key was written by the
    /// decision), only its listing can be missed if Redis fails now.
    async fn register_penalty(&self, deadline: Instant, check: &Check<'_>, until: u64) {
        let mut put = ScriptCall::new(&scripts::BLOCK_PUT, 1, 6);
        put.key(self.inner.keys.registry())
            .arg(self.now_arg())
            .arg(self.inner.margin_ms)
            .arg(registry_field(check.key, check.rule))
            .arg(until)
            .arg("")
            .arg(penalty_reason(check.rule));
        let _ = self
            .invoke::<u64>(deadline, "penalty registration", &put)
            .await;
    }
}

/// The reason a penalty block is listed with (as MemoryStore words it).
fn penalty_reason(rule: &str) -> String {
    format!("over the limit of rule {rule}")
}

/// Appends ARGV for `policy` in the order `read_policy` in limits.lua reads.
fn push_policy(call: &mut ScriptCall, policy: &Policy) {
    call.arg(policy.algorithm().name())
        .arg(policy.limit())
        .arg(policy.window_us())
        .arg(policy.burst())
        .arg(policy.emission_interval_us())
        .arg(policy.block_for_us().unwrap_or(0));
}

/// A decision from the six integers a script returns for one check.
fn decision_from(policy: &Policy, fields: &[i64]) -> Result<Decision, Error> {
    let &[allowed, remaining, reset, retry, blocked, _] = fields else {
        return Err(bad_reply("decision", format!("{fields:?}")));
    };
    let micros = |v: i64| -> Result<u64, Error> {
        u64::try_from(v).map_err(|_| bad_reply("decision", format!("negative field in {fields:?}")))
    };
    Ok(Decision {
        allowed: allowed == 1,
        limit: policy.limit(),
        remaining: micros(remaining)?,
        reset_after: Duration::from_micros(micros(reset)?),
        retry_after: if retry < 0 {
            None
        } else {
            Some(Duration::from_micros(micros(retry)?))
        },
        blocked: blocked == 1,
    })
}

impl Store for RedisStore {
    async fn check(&self, checks: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        validate_checks(checks)?;
        if checks.is_empty() {
            return Ok(Vec::new());
        }
        let deadline = self.deadline();
        let keys = &self.inner.keys;
        let mut call = ScriptCall::new(&scripts::CHECK, 2 * checks.len(), 2 + 8 * checks.len());
        // One buffer for every key name: the command copies each in.
        let mut name = String::new();
        for c in checks {
            keys.write_state(&mut name, c.rule, c.key);
            call.key(name.as_str());
            keys.write_block(&mut name, c.rule, c.key);
            call.key(name.as_str());
        }
        call.arg(self.now_arg()).arg(self.inner.margin_ms);
        for c in checks {
            push_policy(&mut call, c.policy);
            call.arg(c.cost).arg(if c.shadow { "1" } else { "0" });
        }
        let reply: Vec<i64> = self.invoke(deadline, "check", &call).await?;
        if reply.len() != checks.len() * DECISION_FIELDS {
            return Err(bad_reply("check", format!("{} integers", reply.len())));
        }
        let mut decisions = Vec::with_capacity(checks.len());
        for (c, fields) in checks.iter().zip(reply.chunks_exact(DECISION_FIELDS)) {
            decisions.push(decision_from(c.policy, fields)?);
            if let Ok(until @ 1..) = u64::try_from(fields[5]) {
                self.register_penalty(deadline, c, until).await;
            }
        }
        Ok(decisions)
    }

    async fn peek(&self, rule: &str, policy: &Policy, key: &str) -> Result<Decision, Error> {
        let keys = &self.inner.keys;
        let mut call = ScriptCall::new(&scripts::PEEK, 2, 8);
        call.key(keys.state(rule, key))
            .key(keys.block(rule, key))
            .arg(self.now_arg())
            .arg(self.inner.margin_ms);
        push_policy(&mut call, policy);
        let reply: Vec<i64> = self.invoke(self.deadline(), "peek", &call).await?;
        decision_from(policy, &reply)
    }

    async fn reset(&self, rule: &str, key: &str) -> Result<bool, Error> {
        let keys = &self.inner.keys;
        // Two hash slots (the identity's and the registry's): a plain
        // pipeline, not a transaction.
        let mut pipe = redis::pipe();
        pipe.del(&[keys.state(rule, key), keys.block(rule, key)])
            .hdel(keys.registry(), registry_field(key, rule))
            .ignore();
        let mut conn = self.inner.conn.clone();
        let (deleted,): (u64,) = self
            .bounded(self.deadline(), "reset", pipe.query_async(&mut conn))
            .await?;
        Ok(deleted > 0)
    }

    async fn add_block(&self, target: &str, ttl: Duration, reason: &str) -> Result<Block, Error> {
        let mut call = ScriptCall::new(&scripts::BLOCK_PUT, 1, 6);
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
        let mut call = ScriptCall::new(&scripts::BLOCK_REMOVE, 1, 2);
        call.key(keys.registry()).arg(self.now_arg()).arg(target);
        let reply: Vec<String> = self.invoke(deadline, "remove_block", &call).await?;
        let Some((lifted, sources)) = reply.split_first() else {
            return Err(bad_reply("remove_block", "empty reply"));
        };
        // Penalty keys live in the target's slot, not the registry's: clear
        // them in a second step. Each is zeroed, not deleted, like the memory
        // store zeroes `blocked_until`: what the key held is still there for
        // `reset` to report, until it expires.
        let mut pipe = redis::pipe();
        for source in sources {
            if let BlockSource::Rule(rule) = BlockSource::parse(source) {
                pipe.cmd("SET")
                    .arg(keys.block(&rule, target))
                    .arg(0)
                    .arg("XX")
                    .arg("KEEPTTL")
                    .ignore();
            }
        }
        if !pipe.is_empty() {
            let mut conn = self.inner.conn.clone();
            self.bounded::<()>(deadline, "remove_block", pipe.query_async(&mut conn))
                .await?;
        }
        Ok(lifted == "1")
    }

    async fn blocks(&self) -> Result<Vec<Block>, Error> {
        let mut call = ScriptCall::new(&scripts::BLOCK_LIST, 1, 1);
        call.key(self.inner.keys.registry()).arg(self.now_arg());
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

    async fn ping(&self) -> Result<(), Error> {
        let mut conn = self.inner.conn.clone();
        let pong: String = self
            .bounded(
                self.deadline(),
                "ping",
                redis::cmd("PING").query_async(&mut conn),
            )
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(bad_reply("ping", pong))
        }
    }
}
