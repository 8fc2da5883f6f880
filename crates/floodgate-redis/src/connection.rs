//! The link to Redis, whatever the topology: one self-reconnecting
//! multiplexed connection to a server, a cluster connection that routes each
//! command to the node owning its keys' slot, or a connection to the primary
//! that Sentinels name, replaced after a failover.

use std::time::Duration;

use floodgate_core::Error;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Value};
use tokio::time::Instant;

use crate::client::{client, install_crypto_provider};
use crate::config::{ConfigError, RedisConfig, Topology, redact};
use crate::sentinel::SentinelPrimary;

/// Reconnection backoff: first retry after this long...
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(20);
/// ...doubling up to this. The connection manager adds a random jitter of up
/// to the delay again, so a restarted Redis is found again within half a
/// second (with 1 s here, shared limiting resumed up to 1.4 s after a
/// restart: `tests/server/chaos.rs` in floodgate-server).
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(250);

/// How a [`crate::RedisStore`] reaches Redis.
pub(crate) enum Link {
    /// A standalone server.
    Single(ConnectionManager),
    /// A Redis Cluster; MOVED, ASK and node failures are handled inside.
    Cluster(ClusterConnection),
    /// The primary Sentinels name, looked up again after connection errors,
    /// `READONLY` replies and on a timer.
    Sentinel(SentinelPrimary),
}

/// One call's connection: cheap clones of the shared, multiplexed one.
pub(crate) enum Conn {
    /// To one server (standalone, or the current Sentinel primary).
    Single(ConnectionManager),
    /// To a cluster.
    Cluster(ClusterConnection),
}

impl Link {
    /// The link for `config`, connecting lazily (the first call connects).
    /// Needs a Tokio runtime.
    pub(crate) fn open(config: &RedisConfig) -> Result<Self, ConfigError> {
        let url_error = |url: &str| {
            let url = redact(url);
            move |source| ConfigError::Url { url, source }
        };
        match &config.topology {
            Topology::Standalone { url } => {
                let client = client(url.as_str(), &config.tls).map_err(url_error(url))?;
                let manager =
                    ConnectionManager::new_lazy_with_config(client, manager_config(config))
                        .map_err(url_error(url))?;
                Ok(Link::Single(manager))
            }
            Topology::Cluster { urls } => {
                let first = urls.first().map_or("", String::as_str);
                let mut nodes = Vec::with_capacity(urls.len());
                for url in urls {
                    nodes.push(
                        url.as_str()
                            .into_connection_info()
                            .map_err(url_error(url))?,
                    );
                }
                let mut builder = ClusterClientBuilder::new(nodes)
                    .connection_timeout(config.connect_timeout)
                    .response_timeout(config.timeout);
                if first.starts_with("rediss://") {
                    install_crypto_provider();
                    builder = builder.certs(config.tls.certificates());
                }
                let client = builder.build().map_err(url_error(first))?;
                let cluster_config = ClusterConfig::new()
                    .set_connection_timeout(config.connect_timeout)
                    .set_response_timeout(config.timeout);
                Ok(Link::Cluster(
                    client.get_pending_async_connection_with_config(cluster_config),
                ))
            }
            Topology::Sentinel {
                sentinels,
                master,
                primary_url,
            } => Ok(Link::Sentinel(SentinelPrimary::start(
                sentinels,
                master,
                primary_url.as_deref(),
                &config.tls,
                manager_config(config),
                config.connect_timeout,
            )?)),
        }
    }

    /// Whether keys of different hash slots can be sent in one command (and
    /// one script can touch them): on everything but a cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Link::Cluster(_))
    }

    /// The connection for a call that must end by `deadline`.
    pub(crate) async fn conn(&self, deadline: Instant, timeout: Duration) -> Result<Conn, Error> {
        match self {
            Link::Single(manager) => Ok(Conn::Single(manager.clone())),
            Link::Cluster(cluster) => Ok(Conn::Cluster(cluster.clone())),
            Link::Sentinel(sentinel) => sentinel.primary(deadline, timeout).await.map(Conn::Single),
        }
    }

    /// Told of every failed call: a Sentinel primary that drops
    /// connections, times out or answers `READONLY` may have been replaced,
    /// so the Sentinels are asked again (in the background).
    pub(crate) fn failed(&self, error: Option<&RedisError>) {
        if let Link::Sentinel(sentinel) = self
            && error.is_none_or(suggests_failover)
        {
            sentinel.ask_again();
        }
    }
}

/// Whether `e` may mean the server is no longer the primary.
fn suggests_failover(e: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_io_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading
            )
        )
}

/// The reconnection settings every single-server connection uses
/// (standalone, and the primary Sentinels name).
///
/// No response timeout: every call of the store already runs against a
/// deadline of its own (`RedisStore::bounded`), and a second timer per
/// command would only repeat it, at a cost on every request. The cluster
/// connection keeps its own: the cluster client bases its per-node retries
/// and failure handling on it.
fn manager_config(config: &RedisConfig) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(None)
        .set_min_delay(RECONNECT_MIN_DELAY)
        .set_max_delay(RECONNECT_MAX_DELAY)
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
