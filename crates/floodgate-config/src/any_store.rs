//! The store chosen by `[store] backend`: one type to hold whichever
//! backend the config names.

use std::time::Duration;

use floodgate_core::{
    Block, Check, Decision, Error, KeyOverride, MemoryStore, OverrideChanges, Policy, Store,
    TopSummary,
};
use floodgate_redis::{RedisConfig, RedisStore, Topology};

use crate::store::{Backend, RedisLayout, StoreSettings};

/// The memory or the Redis store.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// `backend = "memory"`.
    Memory(MemoryStore),
    /// `backend = "redis"`.
    Redis(RedisStore),
}

impl AnyStore {
    /// The store for `settings`. Redis is connected lazily: a Redis that is
    /// down at start-up makes calls fail (and `on_error` apply) until it is
    /// up; so do Sentinels that have not named a primary yet.
    pub fn open(settings: &StoreSettings) -> Result<Self, floodgate_redis::ConfigError> {
        Ok(match &settings.backend {
            Backend::Memory => AnyStore::Memory(MemoryStore::new(settings.max_keys)),
            Backend::Redis { urls } => {
                let topology = match &settings.redis_layout {
                    RedisLayout::Standalone => Topology::Standalone {
                        url: urls.first().cloned().unwrap_or_default(),
                    },
                    RedisLayout::Cluster => Topology::Cluster { urls: urls.clone() },
                    RedisLayout::Sentinel {
                        master,
                        primary_url,
                    } => Topology::Sentinel {
                        sentinels: urls.clone(),
                        master: master.clone(),
                        primary_url: primary_url.clone(),
                    },
                };
                let config = RedisConfig::with_topology(topology)
                    .with_tls(settings.tls.clone())
                    .with_prefix(settings.prefix.clone())
                    .with_timeout(settings.timeout);
                AnyStore::Redis(RedisStore::new(config)?)
            }
        })
    }

    /// `memory` or `redis`.
    pub fn backend_name(&self) -> &'static str {
        match self {
            AnyStore::Memory(_) => "memory",
            AnyStore::Redis(_) => "redis",
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Memory($s) => $call.await,
            AnyStore::Redis($s) => $call.await,
        }
    };
}

impl Store for AnyStore {
    async fn check(&self, checks: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        match self {
            AnyStore::Memory(s) => s.check(checks).await,
            // Boxed: the Redis call's future is large, and every request's
            // future would otherwise carry (and move) its size, the memory
            // store's too. One allocation beside a network round trip.
            AnyStore::Redis(s) => Box::pin(s.check(checks)).await,
        }
    }

    async fn charge(&self, charges: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        dispatch!(self, s => s.charge(charges))
    }

    async fn refund(&self, refunds: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        dispatch!(self, s => s.refund(refunds))
    }

    async fn acquire(
        &self,
        slots: &[floodgate_core::Slot<'_>],
    ) -> Result<Vec<floodgate_core::SlotDecision>, Error> {
        dispatch!(self, s => s.acquire(slots))
    }

    async fn release(&self, slots: &[floodgate_core::Slot<'_>]) -> Result<(), Error> {
        dispatch!(self, s => s.release(slots))
    }

    async fn renew(&self, slots: &[floodgate_core::Slot<'_>]) -> Result<Vec<bool>, Error> {
        dispatch!(self, s => s.renew(slots))
    }

    async fn put_override(
        &self,
        o: &KeyOverride,
        ttl: Option<Duration>,
    ) -> Result<KeyOverride, Error> {
        dispatch!(self, s => s.put_override(o, ttl))
    }

    async fn remove_override(&self, rule: &str, key: &str) -> Result<bool, Error> {
        dispatch!(self, s => s.remove_override(rule, key))
    }

    async fn override_changes(&self, since: u64, max: usize) -> Result<OverrideChanges, Error> {
        dispatch!(self, s => s.override_changes(since, max))
    }

    async fn peek(&self, rule: &str, policy: &Policy, key: &str) -> Result<Decision, Error> {
        dispatch!(self, s => s.peek(rule, policy, key))
    }

    async fn reset(&self, rule: &str, key: &str) -> Result<bool, Error> {
        dispatch!(self, s => s.reset(rule, key))
    }

    async fn add_block(&self, target: &str, ttl: Duration, reason: &str) -> Result<Block, Error> {
        dispatch!(self, s => s.add_block(target, ttl, reason))
    }

    async fn remove_block(&self, target: &str) -> Result<bool, Error> {
        dispatch!(self, s => s.remove_block(target))
    }

    async fn blocks(&self) -> Result<Vec<Block>, Error> {
        dispatch!(self, s => s.blocks())
    }

    async fn ping(&self) -> Result<(), Error> {
        dispatch!(self, s => s.ping())
    }

    async fn put_top(&self, summary: &TopSummary, ttl: Duration) -> Result<(), Error> {
        dispatch!(self, s => s.put_top(summary, ttl))
    }

    async fn top_summaries(&self) -> Result<Vec<TopSummary>, Error> {
        dispatch!(self, s => s.top_summaries())
    }

    fn call_timeout(&self) -> Option<Duration> {
        match self {
            AnyStore::Memory(s) => s.call_timeout(),
            AnyStore::Redis(s) => s.call_timeout(),
        }
    }
}
