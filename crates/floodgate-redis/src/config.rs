//! How to reach Redis and how to name and time what is stored there.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use floodgate_core::Clock;
use redis::IntoConnectionInfo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "floodgate";

/// The default bound on one store call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// The default bound on establishing a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The default extra life of every key beyond the moment its state stops
/// mattering.
pub const DEFAULT_TTL_MARGIN: Duration = Duration::from_secs(1);

/// Where a [`crate::RedisStore`] takes "now" from.
#[derive(Debug, Clone, Default)]
pub enum TimeSource {
    /// Redis' own clock (`TIME`, read inside each script). Every instance
    /// sharing the Redis decides on the same time, however wrong its local
    /// clock is. The default.
    #[default]
    Server,
    /// A local clock, sent with each call: a [`floodgate_core::ManualClock`]
    /// in tests. Keys still expire on Redis' clock, so with a clock that does
    /// not follow real time, set a [`RedisConfig::ttl_margin`] longer than the
    /// test runs.
    Clock(Arc<dyn Clock>),
}

/// Where the Redis holding floodgate's state is, and how it is laid out.
///
/// URLs are `redis://[user:password@]host:port[/db]` or `rediss://` for TLS
/// (trusting [`RedisConfig::tls`]); `redis+unix:///path` for a standalone
/// server on a Unix socket.
#[derive(Clone, PartialEq, Eq)]
pub enum Topology {
    /// One Redis server, or a primary named directly.
    Standalone {
        /// The server.
        url: String,
    },
    /// A Redis Cluster. Any reachable node names the others; MOVED and ASK
    /// redirections and resharding are followed. Credentials, database and
    /// TLS are those of the first URL, for every node.
    Cluster {
        /// Seed nodes: one is enough, more survive one being down at start.
        urls: Vec<String>,
    },
    /// A primary whose address Sentinels give (`SENTINEL
    /// get-master-addr-by-name`), asked again after a failover.
    Sentinel {
        /// The Sentinels, `redis://[user:password@]host:port`; credentials
        /// here authenticate to the Sentinel.
        sentinels: Vec<String>,
        /// The name the Sentinels monitor the primary under.
        master: String,
        /// How to talk to the primary once found: scheme (`rediss://` for
        /// TLS), credentials and database of this URL, whose host and port
        /// are replaced by the primary's. Write the master name as the host:
        /// `redis://floodgate:secret@mymaster/0`. `None`: plain TCP,
        /// no credentials, database 0.
        primary_url: Option<String>,
    },
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |urls: &[String]| urls.iter().map(|u| redact(u)).collect::<Vec<_>>();
        match self {
            Topology::Standalone { url } => f
                .debug_struct("Standalone")
                .field("url", &redact(url))
                .finish(),
            Topology::Cluster { urls } => f
                .debug_struct("Cluster")
                .field("urls", &list(urls))
                .finish(),
            Topology::Sentinel {
                sentinels,
                master,
                primary_url,
            } => f
                .debug_struct("Sentinel")
                .field("sentinels", &list(sentinels))
                .field("master", master)
                .field("primary_url", &primary_url.as_deref().map(redact))
                .finish(),
        }
    }
}

impl Topology {
    /// Every URL named, in order.
    pub(crate) fn urls(&self) -> Vec<&str> {
        match self {
            Topology::Standalone { url } => vec![url.as_str()],
            Topology::Cluster { urls } => urls.iter().map(String::as_str).collect(),
            Topology::Sentinel {
                sentinels,
                primary_url,
                ..
            } => sentinels
                .iter()
                .map(String::as_str)
                .chain(primary_url.as_deref())
                .collect(),
        }
    }

    /// Whether any connection this topology opens uses TLS.
    fn uses_tls(&self) -> bool {
        self.urls().iter().any(|u| u.starts_with("rediss://"))
    }
}

/// Certificates for `rediss://` connections, in PEM.
///
/// Without a CA the system's trusted roots verify the servers. Redis asks
/// clients for a certificate unless it runs with `tls-auth-clients no`: give
/// [`TlsOptions::client_cert_pem`] and [`TlsOptions::client_key_pem`] then.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// The CA certificate(s) that signed the Redis servers' certificates;
    /// they replace the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// This client's certificate chain.
    pub client_cert_pem: Option<Vec<u8>>,
    /// This client's private key.
    pub client_key_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: &Option<Vec<u8>>| if v.is_some() { "set" } else { "none" };
        f.debug_struct("TlsOptions")
            .field("ca_pem", &set(&self.ca_pem))
            .field("client_cert_pem", &set(&self.client_cert_pem))
            .field("client_key_pem", &set(&self.client_key_pem))
            .finish()
    }
}

impl TlsOptions {
    /// Reads the named PEM files (any may be `None`) and checks them.
    pub fn from_files(
        ca: Option<&Path>,
        client_cert: Option<&Path>,
        client_key: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let read = |what: TlsItem, path: Option<&Path>| -> Result<Option<Vec<u8>>, ConfigError> {
            path.map(|p| {
                std::fs::read(p).map_err(|source| ConfigError::TlsFile {
                    what,
                    path: p.to_owned(),
                    source,
                })
            })
            .transpose()
        };
        let options = TlsOptions {
            ca_pem: read(TlsItem::Ca, ca)?,
            client_cert_pem: read(TlsItem::ClientCert, client_cert)?,
            client_key_pem: read(TlsItem::ClientKey, client_key)?,
        };
        options.validate()?;
        Ok(options)
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self == &TlsOptions::default()
    }

    /// Checks that every PEM holds what it should, and that a client
    /// certificate comes with its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what, detail: String| ConfigError::TlsPem { what, detail };
        if let Some(pem) = &self.ca_pem {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(TlsItem::Ca, e.to_string()))?;
            if certs.is_empty() {
                return Err(bad(TlsItem::Ca, "no CERTIFICATE block".into()));
            }
        }
        match (&self.client_cert_pem, &self.client_key_pem) {
            (None, None) => {}
            (Some(_), None) => {
                return Err(bad(
                    TlsItem::ClientKey,
                    "missing: a client certificate needs its key".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(bad(
                    TlsItem::ClientCert,
                    "missing: a client key needs its certificate".into(),
                ));
            }
            (Some(cert), Some(key)) => {
                let certs = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad(TlsItem::ClientCert, e.to_string()))?;
                if certs.is_empty() {
                    return Err(bad(TlsItem::ClientCert, "no CERTIFICATE block".into()));
                }
                PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| bad(TlsItem::ClientKey, e.to_string()))?;
            }
        }
        Ok(())
    }

    /// The form the redis client takes.
    pub(crate) fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: match (&self.client_cert_pem, &self.client_key_pem) {
                (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
                _ => None,
            },
            root_cert: self.ca_pem.clone(),
        }
    }
}

/// Which of the [`TlsOptions`] a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsItem {
    /// [`TlsOptions::ca_pem`].
    Ca,
    /// [`TlsOptions::client_cert_pem`].
    ClientCert,
    /// [`TlsOptions::client_key_pem`].
    ClientKey,
}

impl std::fmt::Display for TlsItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsItem::Ca => "CA certificate",
            TlsItem::ClientCert => "client certificate",
            TlsItem::ClientKey => "client key",
        })
    }
}

/// The configuration of a [`crate::RedisStore`].
///
/// ```
/// use floodgate_redis::{RedisConfig, TimeSource};
/// use std::time::Duration;
///
/// let config = RedisConfig::new("redis://127.0.0.1:6379/0")
///     .with_prefix("myapp")
///     .with_timeout(Duration::from_millis(20));
/// assert_eq!(config.prefix, "myapp");
/// assert!(matches!(config.time_source, TimeSource::Server));
/// config.validate()?;
/// # Ok::<(), floodgate_redis::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Where Redis is: one server, a cluster, or a primary behind Sentinels.
    pub topology: Topology,
    /// Certificates for `rediss://` URLs (default: none, the system's roots).
    pub tls: TlsOptions,
    /// First part of every key, so several deployments can share a Redis
    /// (default `floodgate`). Must not contain `{` or `}`: those would take
    /// over the keys' cluster hash tag.
    pub prefix: String,
    /// A store call (including reconnecting and reloading a script) slower
    /// than this fails with a timeout error instead of holding up the
    /// request (default 50 ms).
    pub timeout: Duration,
    /// Bound on each attempt to (re)connect, which happens in the background
    /// (default 1 s).
    pub connect_timeout: Duration,
    /// Where "now" comes from (default: Redis' clock).
    pub time_source: TimeSource,
    /// Every key lives this much longer than its state matters (default 1 s).
    /// Keys expire on Redis' millisecond clock while decisions use
    /// microseconds; the margin absorbs the rounding and any drift between
    /// the time source and Redis' clock. A key kept after its state expired
    /// reads as empty, so the margin never changes a decision.
    pub ttl_margin: Duration,
    /// Whether concurrent checks share script calls (default on): while
    /// earlier calls are on their way, the batches of requests that arrive
    /// meanwhile go together in the next call, each still decided
    /// atomically and in turn. Same decisions, less work per decision in
    /// Redis and here; off, every batch is a call of its own.
    pub coalesce: bool,
}

impl RedisConfig {
    /// The defaults for one Redis at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig::with_topology(Topology::Standalone { url: url.into() })
    }

    /// The defaults for a Redis Cluster reached through any of `urls`.
    pub fn cluster<S: Into<String>>(urls: impl IntoIterator<Item = S>) -> Self {
        RedisConfig::with_topology(Topology::Cluster {
            urls: urls.into_iter().map(Into::into).collect(),
        })
    }

    /// The defaults for the primary that `sentinels` know as `master`
    /// (plain TCP, no credentials, database 0: see
    /// [`RedisConfig::with_primary_url`]).
    pub fn sentinel<S: Into<String>>(
        sentinels: impl IntoIterator<Item = S>,
        master: impl Into<String>,
    ) -> Self {
        RedisConfig::with_topology(Topology::Sentinel {
            sentinels: sentinels.into_iter().map(Into::into).collect(),
            master: master.into(),
            primary_url: None,
        })
    }

    /// The defaults for `topology`.
    pub fn with_topology(topology: Topology) -> Self {
        RedisConfig {
            topology,
            tls: TlsOptions::default(),
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            time_source: TimeSource::Server,
            ttl_margin: DEFAULT_TTL_MARGIN,
            coalesce: true,
        }
    }

    /// Sets [`RedisConfig::prefix`].
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets [`RedisConfig::timeout`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`RedisConfig::connect_timeout`].
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`RedisConfig::time_source`].
    pub fn with_time_source(mut self, time_source: TimeSource) -> Self {
        self.time_source = time_source;
        self
    }

    /// Takes "now" from `clock` instead of Redis (see [`TimeSource::Clock`]).
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        self.with_time_source(TimeSource::Clock(clock))
    }

    /// Sets [`RedisConfig::ttl_margin`].
    pub fn with_ttl_margin(mut self, margin: Duration) -> Self {
        self.ttl_margin = margin;
        self
    }

    /// Sets [`RedisConfig::tls`].
    pub fn with_tls(mut self, tls: TlsOptions) -> Self {
        self.tls = tls;
        self
    }

    /// With Sentinels: the scheme, credentials and database to use on the
    /// primary (see [`Topology::Sentinel::primary_url`]). No effect on other
    /// topologies.
    pub fn with_primary_url(mut self, url: impl Into<String>) -> Self {
        if let Topology::Sentinel { primary_url, .. } = &mut self.topology {
            *primary_url = Some(url.into());
        }
        self
    }

    /// Sets [`RedisConfig::coalesce`].
    pub fn with_coalesce(mut self, coalesce: bool) -> Self {
        self.coalesce = coalesce;
        self
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(ConfigError::Prefix(self.prefix.clone()));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::Timeout("timeout"));
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::Timeout("connect_timeout"));
        }
        match &self.topology {
            Topology::Standalone { .. } => {}
            Topology::Cluster { urls } if urls.is_empty() => {
                return Err(ConfigError::Topology(
                    "a cluster needs at least one seed URL",
                ));
            }
            Topology::Cluster { urls } => {
                if urls.iter().any(|u| u.starts_with("redis+unix:")) {
                    return Err(ConfigError::Topology(
                        "cluster nodes are reached over TCP, not Unix sockets",
                    ));
                }
            }
            Topology::Sentinel { sentinels, .. } if sentinels.is_empty() => {
                return Err(ConfigError::Topology(
                    "Sentinel needs at least one sentinel URL",
                ));
            }
            Topology::Sentinel { master, .. } if master.is_empty() => {
                return Err(ConfigError::Topology("the Sentinel master name is empty"));
            }
            Topology::Sentinel { .. } => {}
        }
        for url in self.topology.urls() {
            check_url(url)?;
        }
        self.tls.validate()?;
        if !self.tls.is_empty() && !self.topology.uses_tls() {
            return Err(ConfigError::Topology(
                "TLS certificates are set but no URL uses rediss://",
            ));
        }
        Ok(())
    }
}

/// Checks that `url` is a Redis URL the client can use.
pub fn check_url(url: &str) -> Result<(), ConfigError> {
    url.into_connection_info()
        .map(drop)
        .map_err(|e| ConfigError::Url {
            url: redact(url),
            source: e,
        })
}

/// Why a [`RedisConfig`] cannot be used (or a store not built from it).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The URL does not parse.
    #[error("invalid Redis url {url:?}: {source}")]
    Url {
        /// The URL, password removed.
        url: String,
        /// What the redis client said.
        #[source]
        source: redis::RedisError,
    },
    /// The prefix is empty or contains `{` or `}`.
    #[error("invalid key prefix {0:?}: it must be non-empty and contain no '{{' or '}}'")]
    Prefix(String),
    /// A timeout is zero.
    #[error("{0} must be longer than zero")]
    Timeout(&'static str),
    /// The topology names no server, or names them in a way that cannot work.
    #[error("{0}")]
    Topology(&'static str),
    /// A TLS file cannot be read.
    #[error("cannot read the TLS {what} {path:?}: {source}")]
    TlsFile {
        /// Which file.
        what: TlsItem,
        /// Where it was looked for.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// A TLS certificate or key is not usable PEM, or misses its pair.
    #[error("TLS {what}: {detail}")]
    TlsPem {
        /// Which of them.
        what: TlsItem,
        /// What is wrong.
        detail: String,
    },
    /// The store was built outside a Tokio runtime, which its connection
    /// needs to run on.
    #[error("a Redis store must be created within a Tokio runtime")]
    NoRuntime,
}

/// `url` with any password replaced by `***`, for logs and error messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_fields() {
        let ok = RedisConfig::new("redis://127.0.0.1:6379/0");
        assert!(ok.validate().is_ok());
        assert!(matches!(
            ok.clone().with_prefix("a{b").validate(),
            Err(ConfigError::Prefix(_))
        ));
        assert!(matches!(
            ok.clone().with_prefix("").validate(),
            Err(ConfigError::Prefix(_))
        ));
        assert!(matches!(
            ok.clone().with_timeout(Duration::ZERO).validate(),
            Err(ConfigError::Timeout("timeout"))
        ));
        assert!(matches!(
            RedisConfig::new("http://x").validate(),
            Err(ConfigError::Url { .. })
        ));
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }
}
