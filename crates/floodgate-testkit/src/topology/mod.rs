//! Multi-process Redis set-ups for tests: a Redis Cluster, a primary with a
//! replica watched by Sentinels, a TLS-enabled server.
//!
//! Every process listens on free loopback ports, works in a temporary
//! directory of its own, and is killed (its directory removed) when the
//! set-up is dropped. Set-ups are driven through the `redis` crate's
//! client; certificates are made by `rcgen`.
//!
//! - `cluster`: [`RedisCluster`].
//! - `sentinel`: [`SentinelSet`] and [`SENTINEL_MASTER`].
//! - `tls`: [`TlsRedis`].
//! - `node`: one process of a set-up, started on a free port and waited
//!   for; what the others share.
//!
//! ```no_run
//! use floodgate_testkit::topology::{RedisCluster, SentinelSet, TlsRedis};
//!
//! let cluster = RedisCluster::start(3);
//! let seeds = cluster.urls(); // redis://127.0.0.1:<port> × 3
//! let slot = cluster.key_slot("floodgate:{ip:192.0.2.1}:api:state");
//! cluster.move_slot(slot, (cluster.slot_owner(slot) + 1) % 3);
//!
//! let mut sentinels = SentinelSet::start();
//! let gap = sentinels.failover(); // SENTINEL FAILOVER, until the replica is primary
//!
//! let tls = TlsRedis::start(&[]);
//! let url = tls.url(); // rediss://127.0.0.1:<port>/0, trusting tls.ca_file()
//! # let _ = (seeds, gap, url);
//! ```

mod cluster;
mod node;
mod sentinel;
mod tls;

pub use cluster::RedisCluster;
pub use sentinel::{SENTINEL_MASTER, SentinelSet};
pub use tls::TlsRedis;

/// redis-server arguments creating ACL user `name` with `password`, allowed
/// keys matching `keys` and exactly `commands` (ACL SETUSER spelling, e.g.
/// `floodgate_redis::ACL_COMMANDS`), nothing else.
pub fn acl_user(name: &str, password: &str, keys: &str, commands: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--user".to_owned(),
        name.to_owned(),
        "on".to_owned(),
        format!(">{password}"),
        "resetkeys".to_owned(),
        format!("~{keys}"),
        "resetchannels".to_owned(),
        "-@all".to_owned(),
    ];
    args.extend(commands.iter().map(|c| format!("+{c}")));
    args
}
