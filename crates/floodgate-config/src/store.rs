//! `[store]`: memory or Redis (one server, a Cluster, Sentinels, TLS),
//! the key prefix, the timeout and what happens when the store fails.

use std::path::PathBuf;
use std::time::Duration;

use floodgate_redis::{ConfigError as RedisConfigError, TlsItem, TlsOptions};
use floodgate_tower::OnError;
use serde::Deserialize;

use super::overrides::Overrides;
use super::problems::{Problems, Unknown};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawStore {
    backend: Option<String>,
    url: Option<String>,
    urls: Option<Vec<String>>,
    sentinels: Option<Vec<String>>,
    sentinel_master: Option<String>,
    tls_ca_file: Option<PathBuf>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    prefix: Option<String>,
    timeout: Option<String>,
    on_error: Option<String>,
    max_keys: Option<u64>,
    #[serde(flatten)]
    unknown: Unknown,
}

/// Which store holds the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// In this process only.
    Memory,
    /// Redis, shared by every instance; [`StoreSettings::redis_layout`] says
    /// what the URLs are.
    Redis {
        /// `redis://` or `rediss://` URLs: the server (`url`), the cluster's
        /// seed nodes (`urls`), or the Sentinels (`sentinels`).
        urls: Vec<String>,
    },
}

/// How the Redis servers of [`Backend::Redis`] are laid out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RedisLayout {
    /// `url`: one server (or a primary named directly).
    #[default]
    Standalone,
    /// `urls`: seed nodes of a Redis Cluster.
    Cluster,
    /// `sentinels` and `sentinel_master`: the primary the Sentinels name.
    Sentinel {
        /// `sentinel_master`.
        master: String,
        /// `url` (or `FLOODGATE_REDIS_URL`) with Sentinels: scheme,
        /// credentials and database for the primary; its host is the master
        /// name.
        primary_url: Option<String>,
    },
}

/// `[store]`.
///
/// ```toml
/// [store]
/// backend = "redis"
/// # One of:
/// url = "redis://user:password@10.0.0.5:6379/0"          # one Redis
/// urls = ["redis://10.0.0.5:6379", "redis://10.0.0.6:6379"]  # a Redis Cluster (seed nodes)
/// sentinels = ["redis://10.0.0.5:26379", "redis://10.0.0.6:26379"]  # Sentinel:
/// sentinel_master = "mymaster"                            #   the primary they name
/// # url = "redis://user:password@mymaster/0"              #   its credentials, database, TLS
/// # For rediss:// URLs:
/// tls_ca_file = "/etc/floodgate/redis-ca.pem"     # else the system's roots
/// tls_cert_file = "/etc/floodgate/redis-client.pem"  # when Redis asks for a client
/// tls_key_file = "/etc/floodgate/redis-client.key"   # certificate (tls-auth-clients)
/// ```
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// memory or redis.
    pub backend: Backend,
    /// With Redis: what [`Backend::Redis`]'s URLs are.
    pub redis_layout: RedisLayout,
    /// With Redis: certificates for `rediss://` connections.
    pub tls: TlsOptions,
    /// Prefix of every Redis key.
    pub prefix: String,
    /// A store call slower than this counts as a store error.
    pub timeout: Duration,
    /// What to do when the store fails.
    pub on_error: OnError,
    /// Bound on keys held by the memory store (and the local fallback).
    pub max_keys: usize,
}

pub(super) fn validate_store(raw: RawStore, o: &Overrides, p: &mut Problems) -> StoreSettings {
    p.unknown(
        "store",
        &raw.unknown,
        &[
            "backend",
            "url",
            "urls",
            "sentinels",
            "sentinel_master",
            "tls_ca_file",
            "tls_cert_file",
            "tls_key_file",
            "prefix",
            "timeout",
            "on_error",
            "max_keys",
        ],
    );
    let mut backend_name = raw.backend.clone().unwrap_or_else(|| "memory".into());
    if o.redis_url.is_some() {
        backend_name = "redis".into();
    }
    let (backend, redis_layout, tls) = match backend_name.as_str() {
        "memory" => (
            Backend::Memory,
            RedisLayout::Standalone,
            TlsOptions::default(),
        ),
        "redis" => {
            let (urls, layout) = validate_redis_servers(&raw, o, p);
            let tls = validate_redis_tls(&raw, &urls, &layout, p);
            (Backend::Redis { urls }, layout, tls)
        }
        other => {
            p.add(
                "store.backend",
                format!("unknown backend {other:?} (expected \"memory\" or \"redis\")"),
            );
            (
                Backend::Memory,
                RedisLayout::Standalone,
                TlsOptions::default(),
            )
        }
    };
    let prefix = raw.prefix.unwrap_or_else(|| "floodgate".into());
    if prefix.is_empty() || prefix.contains(['{', '}']) || prefix.chars().any(char::is_whitespace) {
        p.add(
            "store.prefix",
            format!("{prefix:?} must be non-empty, without braces or spaces"),
        );
    }
    let timeout = p.duration(
        "store.timeout",
        raw.timeout.as_deref(),
        Duration::from_millis(50),
    );
    let on_error = match raw.on_error.as_deref().unwrap_or("allow") {
        "allow" => OnError::Allow,
        "deny" => OnError::Deny,
        "local" => OnError::Local,
        other => {
            p.add(
                "store.on_error",
                format!("unknown value {other:?} (expected \"allow\", \"deny\" or \"local\")"),
            );
            OnError::Allow
        }
    };
    let max_keys = raw.max_keys.unwrap_or(1_000_000);
    if max_keys == 0 {
        p.add("store.max_keys", "must be at least 1");
    }
    StoreSettings {
        backend,
        redis_layout,
        tls,
        prefix,
        timeout,
        on_error,
        max_keys: usize::try_from(max_keys.max(1)).unwrap_or(usize::MAX),
    }
}

/// Where the URL that `FLOODGATE_REDIS_URL` or `store.url` names came from.
fn url_field(o: &Overrides) -> &'static str {
    if o.redis_url.is_some() {
        "FLOODGATE_REDIS_URL"
    } else {
        "store.url"
    }
}

/// Checks one Redis URL found at `at`.
fn check_redis_url(p: &mut Problems, at: &str, url: &str) {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        p.add(
            at,
            format!(
                "{:?} must start with redis:// or rediss://",
                floodgate_redis::redact(url)
            ),
        );
    } else if let Err(e) = floodgate_redis::check_url(url) {
        p.add(at, e.to_string());
    }
}

/// The host of a Redis URL: between `://` (or the userinfo's `@`) and the
/// port or path.
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host.split(':').next().unwrap_or_default()
}

/// The Redis servers `[store]` names: `url` (one server), `urls` (cluster
/// seeds) or `sentinels` with `sentinel_master` (and `url` for the
/// primary's credentials). `FLOODGATE_REDIS_URL` replaces `url`, or the
/// seeds of a cluster.
fn validate_redis_servers(
    raw: &RawStore,
    o: &Overrides,
    p: &mut Problems,
) -> (Vec<String>, RedisLayout) {
    let url = o.redis_url.clone().or_else(|| raw.url.clone());
    if raw.sentinels.is_some() || raw.sentinel_master.is_some() {
        if raw.urls.is_some() {
            p.add(
                "store.urls",
                "a Redis Cluster (urls) and Sentinels (sentinels) cannot be combined: keep one",
            );
        }
        let sentinels = raw.sentinels.clone().unwrap_or_default();
        if sentinels.is_empty() {
            p.add(
                "store.sentinels",
                "missing or empty: list the Sentinels, e.g. [\"redis://10.0.0.5:26379\"] (sentinel_master is set)",
            );
        }
        for s in &sentinels {
            check_redis_url(p, "store.sentinels", s);
        }
        let master = raw.sentinel_master.clone().unwrap_or_default();
        if master.is_empty() {
            p.add(
                "store.sentinel_master",
                "missing or empty: the name the Sentinels monitor the primary under (their `sentinel monitor <name> ...` line)",
            );
        }
        if let Some(url) = &url {
            let at = url_field(o);
            check_redis_url(p, at, url);
            if !master.is_empty() && url_host(url) != master {
                p.add(
                    at,
                    format!(
                        "with sentinels this URL only gives the primary's credentials, database and TLS (the Sentinels give its address): write the master name as its host, like \"redis://user:password@{master}/0\""
                    ),
                );
            }
        }
        return (
            sentinels,
            RedisLayout::Sentinel {
                master,
                primary_url: url,
            },
        );
    }
    if let Some(seeds) = &raw.urls {
        if raw.url.is_some() {
            p.add(
                "store.url",
                "give url (one Redis) or urls (the seed nodes of a Redis Cluster), not both",
            );
        }
        let seeds = match &o.redis_url {
            Some(url) => vec![url.clone()],
            None => seeds.clone(),
        };
        if seeds.is_empty() {
            p.add(
                "store.urls",
                "an empty list: name at least one node of the Redis Cluster",
            );
        }
        let at = if o.redis_url.is_some() {
            "FLOODGATE_REDIS_URL"
        } else {
            "store.urls"
        };
        for seed in &seeds {
            check_redis_url(p, at, seed);
        }
        return (seeds, RedisLayout::Cluster);
    }
    match url {
        Some(url) => {
            check_redis_url(p, url_field(o), &url);
            (vec![url], RedisLayout::Standalone)
        }
        None => {
            p.add(
                "store.url",
                "the redis backend needs url = \"redis://host:6379/0\" (or urls = [...] for a cluster, sentinels = [...] with sentinel_master, or FLOODGATE_REDIS_URL)",
            );
            (Vec::new(), RedisLayout::Standalone)
        }
    }
}

/// `tls_ca_file`, `tls_cert_file` and `tls_key_file`, read and checked.
fn validate_redis_tls(
    raw: &RawStore,
    urls: &[String],
    layout: &RedisLayout,
    p: &mut Problems,
) -> TlsOptions {
    let field = |what: TlsItem| match what {
        TlsItem::Ca => "store.tls_ca_file",
        TlsItem::ClientCert => "store.tls_cert_file",
        TlsItem::ClientKey => "store.tls_key_file",
    };
    let (ca, cert, key) = (
        raw.tls_ca_file.as_deref(),
        raw.tls_cert_file.as_deref(),
        raw.tls_key_file.as_deref(),
    );
    if ca.is_none() && cert.is_none() && key.is_none() {
        return TlsOptions::default();
    }
    let primary = match layout {
        RedisLayout::Sentinel { primary_url, .. } => primary_url.as_deref(),
        _ => None,
    };
    let any_tls = urls
        .iter()
        .map(String::as_str)
        .chain(primary)
        .any(|u| u.starts_with("rediss://"));
    if !any_tls {
        let first = [
            (TlsItem::Ca, ca),
            (TlsItem::ClientCert, cert),
            (TlsItem::ClientKey, key),
        ]
        .into_iter()
        .find_map(|(what, path)| path.map(|_| field(what)))
        .unwrap_or("store.tls_ca_file");
        p.add(
            first,
            "set, but no Redis URL uses rediss://: TLS certificates apply to rediss:// URLs only",
        );
    }
    match TlsOptions::from_files(ca, cert, key) {
        Ok(tls) => tls,
        Err(RedisConfigError::TlsFile {
            what, path, source, ..
        }) => {
            p.add(
                field(what),
                format!("{} cannot be read: {source}", path.display()),
            );
            TlsOptions::default()
        }
        Err(e @ RedisConfigError::TlsPem { what, .. }) => {
            p.add(field(what), e.to_string());
            TlsOptions::default()
        }
        Err(other) => {
            p.add("store.tls_ca_file", other.to_string());
            TlsOptions::default()
        }
    }
}
