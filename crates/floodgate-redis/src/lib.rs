//! # floodgate-redis
//!
//! The Redis store for floodgate: rate-limit state shared by every instance
//! that points at the same Redis, decided by one atomic Lua script per
//! request, with the same arithmetic as floodgate-core's in-memory store.
//!
//! The modules, from the top (each uses only those below it):
//!
//! - `store`: [`RedisStore`], the [`floodgate_core::Store`]; cluster batches split by slot.
//! - `coalesce`: concurrent requests' batches sharing one `check.lua` call.
//! - `wire`: `check.lua`/`peek.lua` arguments from checks, decisions from their replies.
//! - `scripts`: the Lua of `src/lua/`, called by `FCALL` or `EVALSHA`, reloaded when missing.
//! - `connection`: the link to Redis for each topology, one multiplexed connection per call.
//! - `sentinel`: the primary that Sentinels name, followed through failovers.
//! - `client`: a redis client for one address, with TLS certificates and crypto provider.
//! - `keys`: key names under the prefix, client keys escaped as hash tags.
//! - `config`: [`RedisConfig`] ([`Topology`], [`TlsOptions`], [`TimeSource`]), validated.
//! - `error`: redis failures as typed store errors that say whether a retry helps.
//!
//! ## What it does
//!
//! - [`RedisStore`] implements [`floodgate_core::Store`]. A batch of checks
//!   is decided atomically by one `FCALL` of a function floodgate loads
//!   itself (`EVALSHA` on servers that cannot run functions) on a
//!   multiplexed connection that reconnects in the background; the batches
//!   of concurrent requests share calls (coalescing); every call is bounded
//!   by a timeout and fails with a typed [`floodgate_core::StoreError`].
//! - [`RedisConfig`]: where Redis is ([`Topology`]: one server, a Redis
//!   Cluster, or a primary behind Sentinels), TLS certificates
//!   ([`TlsOptions`], for `rediss://`), key prefix, timeout and
//!   [`TimeSource`]. By default "now" is Redis' own clock, so instances
//!   whose clocks disagree still decide alike. ACL users log in through the
//!   URL (`redis://user:password@host`).
//! - Keys are `<prefix>:{<client key>}:<rule>:state|block` (the client key
//!   escaped as a Redis Cluster hash tag, so all keys of one identity share a
//!   slot) and `<prefix>:blocks` (the block registry). Every key has a TTL.
//!
//! Limits: needs Redis 6.0 or later (7.0 or later for functions). Each
//! floodgate version loads libraries named after its scripts' hashes
//! (`floodgate_check_<sha1>`), so versions sharing a Redis during a rolling
//! upgrade each call their own; old versions' libraries stay until
//! `FUNCTION DELETE`. On a cluster, a batch whose checks
//! name different client keys spans several slots and cannot be one atomic
//! script: it is decided per client key in a way that never over-admits but
//! may over-count under races (see [`RedisStore`]'s `check`). Behind
//! Sentinels, counts written to a primary in its last moments (replication
//! is asynchronous) or to a demoted one before floodgate notices (at most
//! about 250 ms) are lost. A penalty block is enforced by the decision script
//! itself; listing it in the registry is a second call that can be lost if
//! Redis fails at that moment.
//!
//! ```
//! use floodgate_core::{Algorithm, Check, Policy, Store};
//! use floodgate_redis::{RedisConfig, RedisStore};
//! use std::time::Duration;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! # let url = floodgate_testkit::shared_redis_url();
//! # let prefix = floodgate_testkit::unique_prefix("doc");
//! // e.g. url = "redis://127.0.0.1:6379/0"
//! let store = RedisStore::connect(RedisConfig::new(url).with_prefix(prefix)).await?;
//! let policy = Policy::new(Algorithm::SlidingLog, 2, Duration::from_secs(60))?;
//! let check = Check::new("login", &policy, "ip:192.0.2.1", 1);
//!
//! assert!(store.check(&[check]).await?[0].allowed);
//! assert!(store.check(&[check]).await?[0].allowed);
//! let refused = store.check(&[check]).await?.remove(0);
//! assert!(!refused.allowed);
//! assert!(refused.retry_after.is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod batched;
mod client;
mod coalesce;
mod config;
mod connection;
mod error;
mod keys;
mod scripts;
mod sentinel;
mod store;
mod wire;

pub use config::{
    ConfigError, DEFAULT_CONNECT_TIMEOUT, DEFAULT_PREFIX, DEFAULT_TIMEOUT, DEFAULT_TTL_MARGIN,
    RedisConfig, TimeSource, TlsItem, TlsOptions, Topology, check_url, redact,
};
pub use store::RedisStore;

/// `check.lua`'s function library, byte for byte as a [`RedisStore`] loads
/// it (`#!lua name=<its function>` first): for benchmarks that run the
/// store's own script without a store (bench/redis.sh).
#[doc(hidden)]
pub fn check_library() -> &'static str {
    scripts::check_library()
}

/// Every Redis command a [`RedisStore`] runs, directly or from its Lua
/// scripts (which run with the caller's permissions), in `ACL SETUSER`
/// spelling. A least-privilege ACL user needs these on its prefix's keys
/// (`~<prefix>:*`); add `select` for a non-zero database and
/// `cluster|slots` on a Redis Cluster.
///
/// Scripts are called with `fcall` (loaded with `function|load`) on Redis 7
/// and later, and with `evalsha` (loaded with `script|load`) where functions
/// cannot run: a user without the first two gets the second two.
pub const ACL_COMMANDS: &[&str] = &[
    "ping",
    "fcall",
    "function|load",
    "evalsha",
    "script|load",
    "del",
    "hdel",
    "set",
    "get",
    "mget",
    "llen",
    "lindex",
    "ltrim",
    "rpush",
    "pexpire",
    "pttl",
    "incr",
    "exists",
    "zremrangebyscore",
    "zcard",
    "zscore",
    "zadd",
    "zrem",
    "zrangebyscore",
    "hmget",
    "hset",
    "hgetall",
    "time",
];

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
