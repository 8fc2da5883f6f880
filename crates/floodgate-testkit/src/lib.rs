//! # floodgate-testkit
//!
//! Test support shared by floodgate's crates: ports chosen at run time and
//! throwaway `redis-server` processes, alone or as a cluster, behind
//! Sentinels or serving TLS. Not published.
//!
//! The modules, from the top (each uses only those below it):
//!
//! - [`topology`]: multi-process set-ups: [`topology::RedisCluster`],
//!   [`topology::SentinelSet`], [`topology::TlsRedis`], one file each.
//! - `server`: [`RedisServer`], one test's own server, and
//!   [`shared_redis_url`], the Redis tests share.
//! - `command`: every command the kit sends, through the `redis` crate's
//!   blocking client.
//! - `process`: signals to a child process, its working directory, its log.
//! - `unique`: [`free_port`], [`unique_prefix`], [`unique_temp_path`].
//!
//! ## What it offers
//!
//! - [`free_port`]: a loopback TCP port nobody listens on right now.
//! - [`RedisServer`]: a private `redis-server` (no persistence, its own
//!   temporary directory) that tests may kill, freeze, stop and restart on
//!   the same port; killed when dropped. [`RedisServer::start_persistent`]
//!   keeps its data across restarts in an append-only file.
//! - [`shared_redis_url`]: one Redis for every test of a test binary that only
//!   needs "a Redis": `$FLOODGATE_TEST_REDIS_URL` when set (`scripts/test.sh`
//!   starts one), else a server spawned on first use. Tests sharing it keep
//!   their keys apart with [`unique_prefix`].
//!
//! A missing `redis-server` is a test failure with instructions, never a skip.
//!
//! ```no_run
//! use floodgate_testkit::RedisServer;
//!
//! let mut redis = RedisServer::start();
//! let url = redis.url(); // redis://127.0.0.1:<port>/0
//! redis.kill(); // SIGKILL: the store under test sees a dead Redis
//! redis.restart(); // same port, empty data set
//! # let _ = url;
//! ```

pub mod paired;
pub mod topology;

mod command;
mod process;
mod server;
mod unique;

pub use process::send_signal;
pub use server::{RedisServer, SHARED_REDIS_URL_VAR, bench_redis, shared_redis_url};
pub use unique::{free_port, unique_prefix, unique_temp_path};
