//! The configuration file: serde structs with documented defaults, and a
//! `validate` step that reports every problem at once, each naming where it is.
//!
//! Parsing happens in two steps. `RawConfig` mirrors the TOML loosely (strings
//! for durations and names, unknown fields collected rather than fatal) so one
//! pass can find every mistake; `validate` turns it into [`Settings`], whose
//! values are all checked and typed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use floodgate_core::{Algorithm, Policy};
use floodgate_redis::{ConfigError as RedisConfigError, TlsItem, TlsOptions};
use floodgate_tower::{EncodedSlashes, KeySpec, OnError, RequestMatch, Rule, Target};
use http::{Method, Uri};
use ipnet::IpNet;
use serde::Deserialize;

use crate::duration::parse_duration;

/// Where the built-in demo listens.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Where the admin listener binds unless told otherwise.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// How long an idle connection stays open by default: longer than the 60 s
/// a proxy in front keeps its idle upstream connections (nginx's
/// `keepalive_timeout` for upstreams), so the proxy, which knows when it is
/// about to reuse one, is the side that closes them.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// The largest request head accepted by default: room for big cookies and
/// tokens (nginx's default, `large_client_header_buffers 4 8k`, caps a
/// header line at 8 KiB and a head at about 32 KiB), while a connection
/// holding a half-sent head costs at most this much buffer.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// The smallest `max_header_bytes`: hyper's HTTP/1 read buffer cannot be
/// smaller, and real heads with a few cookies reach several KiB.
pub const MIN_MAX_HEADER_BYTES: usize = 8 * 1024;
/// The largest `max_header_bytes`: a head of 16 MiB is a mistake or an
/// attack, and every connection may buffer this much.
pub const MAX_MAX_HEADER_BYTES: usize = 16 * 1024 * 1024;

/// Admin tokens that examples show in place of a secret; a deployment that
/// kept one has an open admin API in all but name.
const PLACEHOLDER_TOKENS: [&str; 6] = [
    "...",
    "change-me",
    "changeme",
    "CHANGE_ME",
    "<token>",
    "token",
];

type Unknown = BTreeMap<String, toml::Value>;

/// The file as written. Every section is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawConfig {
    server: RawServer,
    store: RawStore,
    admin: RawAdmin,
    access: RawAccess,
    #[serde(rename = "rule")]
    rules: Vec<RawRule>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawServer {
    listen: Option<String>,
    upstream: Option<String>,
    reuse_port: bool,
    trusted_proxies: Option<Vec<String>>,
    ipv6_prefix: Option<u8>,
    encoded_slashes: Option<String>,
    drain_timeout: Option<String>,
    upstream_timeout: Option<String>,
    header_timeout: Option<String>,
    idle_timeout: Option<String>,
    // Numbers, read as any TOML value so a string or a negative number is
    // reported with the field's name instead of a bare type error.
    max_header_bytes: Option<toml::Value>,
    max_connections: Option<toml::Value>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawStore {
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

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawAdmin {
    listen: Option<String>,
    token: Option<String>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawAccess {
    allow: Vec<String>,
    deny: Vec<String>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawRule {
    name: Option<String>,
    #[serde(rename = "match")]
    matcher: Option<RawMatch>,
    key: Option<OneOrMany>,
    algorithm: Option<String>,
    limit: Option<i64>,
    window: Option<String>,
    burst: Option<i64>,
    cost: Option<i64>,
    block_for: Option<String>,
    shadow: bool,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawMatch {
    path_prefix: Option<String>,
    methods: Option<Vec<String>>,
    #[serde(flatten)]
    unknown: Unknown,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file it came from; `None` for the built-in demo.
    pub source: Option<PathBuf>,
    /// `[server]`.
    pub server: ServerSettings,
    /// `[store]`.
    pub store: StoreSettings,
    /// `[admin]`.
    pub admin: AdminSettings,
    /// `[access]` allow list: bypasses every rule.
    pub allow: Vec<Target>,
    /// `[access]` deny list: always 403.
    pub deny: Vec<Target>,
    /// `[[rule]]`, in file order.
    pub rules: Vec<Rule>,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// The main listener (gateway and decision API).
    pub listen: SocketAddr,
    /// The API behind floodgate; `None` serves the built-in demo API.
    pub upstream: Option<Uri>,
    /// Bind with SO_REUSEPORT so several instances share one port.
    pub reuse_port: bool,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// IPv6 clients are identified by their address's first this-many bits.
    pub ipv6_prefix: u8,
    /// What a path with `%2F` or `%5C` gets: `reject` (400, the default)
    /// or `keep` (passed on encoded; for APIs whose ids hold slashes and
    /// whose servers do not decode them).
    pub encoded_slashes: EncodedSlashes,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// How long the upstream may take to answer.
    pub upstream_timeout: Duration,
    /// How long a client may take to send a request's head (see
    /// [`crate::serve`]); slower connections are closed.
    pub header_timeout: Duration,
    /// How long a connection may stay open with no bytes either way and no
    /// request in flight (see [`crate::serve`]).
    pub idle_timeout: Duration,
    /// The largest request head (request line and headers), in bytes; a
    /// larger one is answered 431 (see [`crate::serve`]).
    pub max_header_bytes: usize,
    /// How many connections are served at once; past it new ones wait in
    /// the listen backlog. `None` sizes it from the file descriptor limit
    /// when serving ([`crate::serve::Limits::gateway`]).
    pub max_connections: Option<NonZeroU32>,
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

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Where /metrics, /healthz, /readyz and /admin/* listen; `None` disables it.
    pub listen: Option<SocketAddr>,
    /// Bearer token for /admin/*.
    pub token: Option<String>,
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: `server.listen`, `rule "api" limit`, ...
    pub at: String,
    /// What is wrong, and what would be right.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    /// The file, when there is one.
    pub file: Option<PathBuf>,
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self
            .file
            .as_deref()
            .map_or_else(|| "config".to_owned(), |p| p.display().to_string());
        let n = self.problems.len();
        write!(f, "{file}: {n} problem{}", if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            write!(f, "\n  {file}: {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Values taken from the environment and the command line, which win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `FLOODGATE_REDIS_URL`: selects the Redis backend with this URL.
    pub redis_url: Option<String>,
    /// `FLOODGATE_ADMIN_TOKEN`.
    pub admin_token: Option<String>,
    /// `FLOODGATE_ADMIN_LISTEN`: the admin listener's address, so several
    /// instances started from one config file (PM2 apps, systemd template
    /// units) each get their own `/metrics` and `/readyz`. Checked like
    /// `admin.listen`.
    pub admin_listen: Option<String>,
}

impl Overrides {
    /// The overrides found in the environment.
    pub fn from_env() -> Self {
        let non_empty = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Overrides {
            listen: None,
            redis_url: non_empty("FLOODGATE_REDIS_URL"),
            admin_token: non_empty("FLOODGATE_ADMIN_TOKEN"),
            admin_listen: non_empty("FLOODGATE_ADMIN_LISTEN"),
        }
    }
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path, overrides: &Overrides) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: Some(path.to_owned()),
        problems: vec![Problem {
            at: "file".into(),
            message: format!("cannot be read: {e}"),
        }],
    })?;
    parse(&text, Some(path), overrides)
}

/// Parses and validates config text.
pub fn parse(
    text: &str,
    file: Option<&Path>,
    overrides: &Overrides,
) -> Result<Settings, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
        file: file.map(Path::to_owned),
        problems: vec![Problem {
            at: e
                .span()
                .map(|s| line_col(text, s.start))
                .unwrap_or_else(|| "file".into()),
            message: e.message().to_owned(),
        }],
    })?;
    if sets_nothing(text) {
        // Every setting has a default, so an empty file would run the demo
        // API with no rules and no admin token: a truncated or blanked file
        // is far likelier than a wish for that.
        return Err(ConfigError {
            file: file.map(Path::to_owned),
            problems: vec![Problem {
                at: "file".into(),
                message: "sets nothing (it is empty or all comments); run `floodgate serve` without --config for the built-in demo".into(),
            }],
        });
    }
    raw.validate(file, overrides)
}

/// Whether TOML `text` holds no table and no key: blank or comments only.
fn sets_nothing(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|line| line.is_empty() || line.starts_with('#'))
}

fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    format!("line {line}, column {col}")
}

/// Collects problems while validating.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, at: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            at: at.into(),
            message: message.into(),
        });
    }

    fn unknown(&mut self, section: &str, unknown: &Unknown, known: &[&str]) {
        for name in unknown.keys() {
            // A name TOML writes bare as it is; any other (empty, spaces,
            // newlines) quoted, so the place is never blank or split.
            let bare = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            let name = if bare {
                name.clone()
            } else {
                format!("{name:?}")
            };
            let at = if section.is_empty() {
                name
            } else {
                format!("{section} {name}")
            };
            self.add(
                at,
                format!("unknown field (expected one of: {})", known.join(", ")),
            );
        }
    }

    fn duration(&mut self, at: &str, value: Option<&str>, default: Duration) -> Duration {
        match value.map(parse_duration) {
            None => default,
            Some(Ok(d)) if !d.is_zero() => d,
            Some(Ok(_)) => {
                self.add(at, "must be longer than zero");
                default
            }
            Some(Err(e)) => {
                self.add(at, e);
                default
            }
        }
    }
}

impl RawConfig {
    /// Checks every value and builds [`Settings`], or lists every problem.
    pub fn validate(
        self,
        file: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Settings, ConfigError> {
        let mut p = Problems::default();
        p.unknown(
            "",
            &self.unknown,
            &["server", "store", "admin", "access", "rule"],
        );
        let server = validate_server(self.server, overrides, &mut p);
        let store = validate_store(self.store, overrides, &mut p);
        let admin = validate_admin(self.admin, overrides, &mut p);
        let (allow, deny) = validate_access(self.access, &mut p);
        let rules = validate_rules(self.rules, &mut p);
        if p.0.is_empty() {
            Ok(Settings {
                source: file.map(Path::to_owned),
                server,
                store,
                admin,
                allow,
                deny,
                rules,
            })
        } else {
            Err(ConfigError {
                file: file.map(Path::to_owned),
                problems: p.0,
            })
        }
    }
}

fn parse_addr(p: &mut Problems, at: &str, text: &str) -> Option<SocketAddr> {
    match text.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            p.add(
                at,
                format!("{text:?} is not an address like \"127.0.0.1:8080\" or \"[::1]:8080\""),
            );
            None
        }
    }
}

fn validate_server(raw: RawServer, o: &Overrides, p: &mut Problems) -> ServerSettings {
    p.unknown(
        "server",
        &raw.unknown,
        &[
            "listen",
            "upstream",
            "reuse_port",
            "trusted_proxies",
            "ipv6_prefix",
            "encoded_slashes",
            "drain_timeout",
            "upstream_timeout",
            "header_timeout",
            "idle_timeout",
            "max_header_bytes",
            "max_connections",
        ],
    );
    let default_listen: SocketAddr = DEFAULT_LISTEN.parse().unwrap_or_else(|_| unreachable!());
    let listen = match (o.listen, raw.listen.as_deref()) {
        (Some(a), _) => a,
        (None, Some(text)) => parse_addr(p, "server.listen", text).unwrap_or(default_listen),
        (None, None) => default_listen,
    };
    let upstream = raw.upstream.as_deref().and_then(|text| match text.parse::<Uri>() {
        Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => Some(uri),
        Ok(_) => {
            p.add(
                "server.upstream",
                format!("{text:?} must be an http:// URL with a host, like \"http://127.0.0.1:3000\""),
            );
            None
        }
        Err(e) => {
            p.add("server.upstream", format!("{text:?} is not a URL: {e}"));
            None
        }
    });
    let trusted_proxies = raw
        .trusted_proxies
        .unwrap_or_else(|| vec!["127.0.0.1/32".into(), "::1/128".into()])
        .iter()
        .filter_map(|text| match parse_net(text) {
            Some(net) => Some(net),
            None => {
                p.add(
                    "server.trusted_proxies",
                    format!("{text:?} is not an IP address or CIDR like \"10.0.0.0/8\""),
                );
                None
            }
        })
        .collect();
    let ipv6_prefix = raw.ipv6_prefix.unwrap_or(64);
    if !(1..=128).contains(&ipv6_prefix) {
        p.add(
            "server.ipv6_prefix",
            format!("must be between 1 and 128, got {ipv6_prefix}"),
        );
    }
    let encoded_slashes = match raw.encoded_slashes.as_deref().map(str::parse) {
        None => EncodedSlashes::Reject,
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            p.add("server.encoded_slashes", e);
            EncodedSlashes::Reject
        }
    };
    ServerSettings {
        listen,
        upstream,
        reuse_port: raw.reuse_port,
        trusted_proxies,
        ipv6_prefix: ipv6_prefix.clamp(1, 128),
        encoded_slashes,
        drain_timeout: p.duration(
            "server.drain_timeout",
            raw.drain_timeout.as_deref(),
            Duration::from_secs(10),
        ),
        upstream_timeout: p.duration(
            "server.upstream_timeout",
            raw.upstream_timeout.as_deref(),
            Duration::from_secs(30),
        ),
        header_timeout: p.duration(
            "server.header_timeout",
            raw.header_timeout.as_deref(),
            Duration::from_secs(10),
        ),
        idle_timeout: p.duration(
            "server.idle_timeout",
            raw.idle_timeout.as_deref(),
            DEFAULT_IDLE_TIMEOUT,
        ),
        max_header_bytes: raw
            .max_header_bytes
            .as_ref()
            .and_then(|v| max_header_bytes(v, p))
            .unwrap_or(DEFAULT_MAX_HEADER_BYTES),
        max_connections: raw
            .max_connections
            .as_ref()
            .and_then(|v| max_connections(v, p)),
    }
}

/// `server.max_header_bytes`: a number of bytes, or a string with a unit
/// (`"64KiB"`, `"1MiB"`), within [`MIN_MAX_HEADER_BYTES`] and
/// [`MAX_MAX_HEADER_BYTES`].
fn max_header_bytes(value: &toml::Value, p: &mut Problems) -> Option<usize> {
    const AT: &str = "server.max_header_bytes";
    let bytes = match value {
        toml::Value::Integer(n) => u64::try_from(*n).ok(),
        toml::Value::String(text) => parse_bytes(text),
        _ => None,
    };
    let Some(bytes) = bytes else {
        p.add(
            AT,
            format!("must be a number of bytes, like 65536 or \"64KiB\", got {value}"),
        );
        return None;
    };
    let range = MIN_MAX_HEADER_BYTES as u64..=MAX_MAX_HEADER_BYTES as u64;
    if !range.contains(&bytes) {
        p.add(
            AT,
            format!(
                "must be between {} (8KiB) and {} (16MiB), got {bytes}",
                range.start(),
                range.end()
            ),
        );
        return None;
    }
    usize::try_from(bytes).ok()
}

/// `"65536"`, `"64KiB"`, `"1MiB"`, `"512 B"`: a size in bytes.
fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(factor)
}

/// `server.max_connections`: a whole number from 1 to 2^32 - 1.
fn max_connections(value: &toml::Value, p: &mut Problems) -> Option<NonZeroU32> {
    const AT: &str = "server.max_connections";
    match value {
        toml::Value::Integer(n) => match u32::try_from(*n).ok().and_then(NonZeroU32::new) {
            Some(n) => Some(n),
            None => {
                p.add(AT, format!("must be between 1 and {}, got {n}", u32::MAX));
                None
            }
        },
        _ => {
            p.add(
                AT,
                format!(
                    "must be a whole number of connections, like 10000 (leave it out to size it from the file descriptor limit), got {value}"
                ),
            );
            None
        }
    }
}

/// An IP network; a bare address is a network of one.
pub fn parse_net(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

fn validate_store(raw: RawStore, o: &Overrides, p: &mut Problems) -> StoreSettings {
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
            format!("{:?} must start with redis:// or rediss://", redact(url)),
        );
    } else if let Err(e) = floodgate_redis::check_url(url) {
        p.add(at, e.to_string());
    }
}

/// `url` with its password replaced, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => match url[scheme + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
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

fn validate_admin(raw: RawAdmin, o: &Overrides, p: &mut Problems) -> AdminSettings {
    p.unknown("admin", &raw.unknown, &["listen", "token"]);
    let listen = match (o.admin_listen.as_deref(), raw.listen.as_deref()) {
        (Some(text), _) => parse_addr(p, "FLOODGATE_ADMIN_LISTEN", text),
        (None, Some("")) => None,
        (None, Some(text)) => parse_addr(p, "admin.listen", text),
        (None, None) => DEFAULT_ADMIN_LISTEN.parse().ok(),
    };
    let token = o
        .admin_token
        .clone()
        .or(raw.token)
        .filter(|t| !t.is_empty());
    if let Some(t) = &token
        && PLACEHOLDER_TOKENS.contains(&t.as_str())
    {
        p.add(
            "admin.token",
            format!("{t:?} is the example's placeholder, not a secret: make one with `openssl rand -hex 32`"),
        );
    }
    if let (Some(addr), None) = (listen, &token)
        && !addr.ip().is_loopback()
    {
        p.add(
            "admin.token",
            format!("admin.listen {addr} is not a loopback address, so a token is required (admin.token or FLOODGATE_ADMIN_TOKEN)"),
        );
    }
    AdminSettings { listen, token }
}

fn validate_access(raw: RawAccess, p: &mut Problems) -> (Vec<Target>, Vec<Target>) {
    p.unknown("access", &raw.unknown, &["allow", "deny"]);
    let mut parse_list = |name: &str, list: Vec<String>| -> Vec<Target> {
        list.iter()
            .filter_map(|text| match text.parse::<Target>() {
                Ok(t) => Some(t),
                Err(e) => {
                    p.add(format!("access.{name}"), format!("{text:?}: {e}"));
                    None
                }
            })
            .collect()
    };
    let allow = parse_list("allow", raw.allow);
    let deny = parse_list("deny", raw.deny);
    (allow, deny)
}

fn valid_rule_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn validate_rules(raw: Vec<RawRule>, p: &mut Problems) -> Vec<Rule> {
    // Where each name first appears, and how often: a rule whose name is
    // shared is also named by its position, so its problems point at one rule.
    let mut first_of: HashMap<String, (usize, usize)> = HashMap::new();
    for (i, r) in raw.iter().enumerate() {
        if let Some(n) = &r.name {
            first_of.entry(n.clone()).or_insert((i, 0)).1 += 1;
        }
    }
    let mut rules = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let at = match &r.name {
            Some(n) if first_of.get(n).is_some_and(|(_, count)| *count > 1) => {
                format!("rule {n:?} (#{})", i + 1)
            }
            Some(n) => format!("rule {n:?}"),
            None => format!("rule #{}", i + 1),
        };
        let before = p.0.len();
        p.unknown(
            &at,
            &r.unknown,
            &[
                "name",
                "match",
                "key",
                "algorithm",
                "limit",
                "window",
                "burst",
                "cost",
                "block_for",
                "shadow",
            ],
        );
        let name = match r.name {
            Some(n) if valid_rule_name(&n) => n,
            Some(n) => {
                p.add(
                    format!("{at} name"),
                    format!("{n:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"),
                );
                n
            }
            None => {
                p.add(
                    format!("{at} name"),
                    "missing (every rule needs a unique name)",
                );
                String::new()
            }
        };
        if let Some((first, _)) = first_of.get(&name).filter(|(first, _)| *first != i) {
            p.add(
                format!("{at} name"),
                format!(
                    "duplicate rule name: rule #{} has it too (names must be unique)",
                    first + 1
                ),
            );
        }
        let matcher = validate_match(r.matcher, &at, p);
        let key = match r.key {
            None => KeySpec::parse_list(["ip"]),
            Some(OneOrMany::One(k)) => KeySpec::parse_list([k.as_str()]),
            Some(OneOrMany::Many(ks)) if ks.is_empty() => {
                p.add(
                    format!("{at} key"),
                    "an empty list (use \"global\" for one shared key)",
                );
                KeySpec::parse_list(["global"])
            }
            Some(OneOrMany::Many(ks)) => KeySpec::parse_list(ks.iter().map(String::as_str)),
        };
        let key = key
            .map_err(|e| p.add(format!("{at} key"), e.to_string()))
            .ok();
        let algorithm = match r.algorithm.as_deref() {
            None => Some(Algorithm::SlidingWindow),
            Some(text) => text
                .parse::<Algorithm>()
                .map_err(|e| p.add(format!("{at} algorithm"), e.to_string()))
                .ok(),
        };
        let limit = match r.limit {
            None => {
                p.add(
                    format!("{at} limit"),
                    "missing (requests, in cost units, per window)",
                );
                None
            }
            Some(l) if l < 1 => {
                p.add(
                    format!("{at} limit"),
                    format!("must be at least 1, got {l}"),
                );
                None
            }
            Some(l) => Some(l as u64),
        };
        let window = match r.window.as_deref().map(parse_duration) {
            None => {
                p.add(format!("{at} window"), "missing (e.g. window = \"1m\")");
                None
            }
            Some(Err(e)) => {
                p.add(format!("{at} window"), e);
                None
            }
            Some(Ok(w)) => Some(w),
        };
        let block_for = match r.block_for.as_deref().map(parse_duration) {
            None => None,
            Some(Err(e)) => {
                p.add(format!("{at} block_for"), e);
                None
            }
            Some(Ok(d)) => Some(d),
        };
        let cost = r.cost.unwrap_or(1);
        if cost < 1 {
            p.add(
                format!("{at} cost"),
                format!("must be at least 1, got {cost}"),
            );
        }
        let policy = match (algorithm, limit, window) {
            (Some(a), Some(l), Some(w)) => build_policy(a, l, w, r.burst, block_for, &at, p),
            _ => None,
        };
        if let Some(policy) = &policy
            && cost >= 1
            && cost as u64 > policy.capacity()
        {
            p.add(
                format!("{at} cost"),
                format!(
                    "{cost} is more than the rule can ever admit at once ({})",
                    policy.capacity()
                ),
            );
        }
        if p.0.len() == before
            && let (Some(key), Some(policy)) = (key, policy)
        {
            rules.push(Rule {
                name,
                matcher,
                key,
                policy,
                cost: cost as u64,
                shadow: r.shadow,
            });
        }
    }
    rules
}

fn build_policy(
    algorithm: Algorithm,
    limit: u64,
    window: Duration,
    burst: Option<i64>,
    block_for: Option<Duration>,
    at: &str,
    p: &mut Problems,
) -> Option<Policy> {
    let mut policy = Policy::new(algorithm, limit, window)
        .map_err(|e| {
            let field = if matches!(e, floodgate_core::PolicyError::Window(_)) {
                "window"
            } else {
                "limit"
            };
            p.add(format!("{at} {field}"), e.to_string());
        })
        .ok()?;
    if let Some(b) = burst {
        if b < 1 {
            p.add(
                format!("{at} burst"),
                format!("must be at least 1, got {b}"),
            );
            return None;
        }
        policy = policy
            .with_burst(b as u64)
            .map_err(|e| p.add(format!("{at} burst"), e.to_string()))
            .ok()?;
    }
    if let Some(d) = block_for {
        policy = policy
            .with_block_for(d)
            .map_err(|e| p.add(format!("{at} block_for"), e.to_string()))
            .ok()?;
    }
    Some(policy)
}

fn validate_match(raw: Option<RawMatch>, at: &str, p: &mut Problems) -> RequestMatch {
    let Some(raw) = raw else {
        return RequestMatch::default();
    };
    p.unknown(
        &format!("{at} match"),
        &raw.unknown,
        &["path_prefix", "methods"],
    );
    if let Some(prefix) = &raw.path_prefix
        && !prefix.starts_with('/')
    {
        p.add(
            format!("{at} match.path_prefix"),
            format!("{prefix:?} must start with '/'"),
        );
    }
    let methods = raw.methods.map(|ms| {
        ms.iter()
            .filter_map(
                |m| match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(method) => Some(method),
                    Err(_) => {
                        p.add(
                            format!("{at} match.methods"),
                            format!("{m:?} is not an HTTP method"),
                        );
                        None
                    }
                },
            )
            .collect()
    });
    RequestMatch {
        path_prefix: raw.path_prefix,
        methods,
    }
}

/// The built-in demo: memory store, the demo API, 10 requests per 10 s per IP on /api/.
pub fn demo(overrides: &Overrides) -> Settings {
    let text = r#"
[server]
listen = "127.0.0.1:8080"

[store]
backend = "memory"

[admin]
listen = "127.0.0.1:9090"

[[rule]]
name = "demo-per-ip"
match = { path_prefix = "/api/" }
key = "ip"
algorithm = "sliding_window"
limit = 10
window = "10s"
"#;
    match parse(text, None, overrides) {
        Ok(settings) => settings,
        Err(e) => panic!("the built-in demo config is invalid: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin_listen_with(file: &str, env: Option<&str>) -> Result<Option<SocketAddr>, ConfigError> {
        let overrides = Overrides {
            admin_listen: env.map(str::to_owned),
            ..Overrides::default()
        };
        parse(file, None, &overrides).map(|s| s.admin.listen)
    }

    #[test]
    fn admin_listen_env_wins_over_the_file() {
        let file = "[admin]\nlisten = \"127.0.0.1:9090\"\n";
        assert_eq!(
            admin_listen_with(file, Some("127.0.0.1:9191"))
                .ok()
                .flatten(),
            "127.0.0.1:9191".parse().ok()
        );
        assert_eq!(
            admin_listen_with(file, None).ok().flatten(),
            "127.0.0.1:9090".parse().ok()
        );
        // It also enables an admin listener the file disabled.
        assert_eq!(
            admin_listen_with("[admin]\nlisten = \"\"\n", Some("127.0.0.1:9191"))
                .ok()
                .flatten(),
            "127.0.0.1:9191".parse().ok()
        );
    }

    #[test]
    fn a_bad_admin_listen_env_is_a_problem_naming_the_variable() {
        let err =
            admin_listen_with("[server]\n", Some("nine-thousand")).expect_err("must be refused");
        assert_eq!(err.problems.len(), 1, "{err}");
        assert_eq!(err.problems[0].at, "FLOODGATE_ADMIN_LISTEN");
    }

    #[test]
    fn problems_of_rules_sharing_a_name_say_which_rule() {
        let file = "[[rule]]\nname = \"a\"\nlimit = 1\nwindow = \"1m\"\nalgorithm = \"leaky\"\n\
                    [[rule]]\nname = \"b\"\nlimit = 1\nwindow = \"1m\"\n\
                    [[rule]]\nname = \"a\"\nlimit = 0\nwindow = \"1m\"\n";
        let err = parse(file, None, &Overrides::default()).expect_err("must be refused");
        let problems: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 3, "{err}");
        assert!(
            problems[0].starts_with("rule \"a\" (#1) algorithm: "),
            "{err}"
        );
        assert!(
            problems[1]
                .starts_with("rule \"a\" (#3) name: duplicate rule name: rule #1 has it too"),
            "{err}"
        );
        assert!(problems[2].starts_with("rule \"a\" (#3) limit: "), "{err}");
    }

    #[test]
    fn a_non_loopback_admin_listen_env_still_needs_a_token() {
        let err =
            admin_listen_with("[server]\n", Some("0.0.0.0:9191")).expect_err("must be refused");
        assert!(err.to_string().contains("admin.token"), "{err}");
    }

    fn store_problems(store: &str, env_url: Option<&str>) -> Vec<String> {
        let overrides = Overrides {
            redis_url: env_url.map(str::to_owned),
            ..Overrides::default()
        };
        match parse(&format!("[store]\n{store}"), None, &overrides) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems.iter().map(ToString::to_string).collect(),
        }
    }

    fn store_of(store: &str, env_url: Option<&str>) -> StoreSettings {
        let overrides = Overrides {
            redis_url: env_url.map(str::to_owned),
            ..Overrides::default()
        };
        match parse(&format!("[store]\n{store}"), None, &overrides) {
            Ok(s) => s.store,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn urls_name_a_cluster_and_sentinels_a_sentinel_primary() {
        let one = store_of("backend = \"redis\"\nurl = \"redis://h:6379/0\"\n", None);
        assert_eq!(one.redis_layout, RedisLayout::Standalone);
        let cluster = store_of(
            "backend = \"redis\"\nurls = [\"redis://a:7000\", \"redis://b:7000\"]\n",
            None,
        );
        assert_eq!(cluster.redis_layout, RedisLayout::Cluster);
        assert_eq!(
            cluster.backend,
            Backend::Redis {
                urls: vec!["redis://a:7000".into(), "redis://b:7000".into()]
            }
        );
        let sentinel = store_of(
            "backend = \"redis\"\nsentinels = [\"redis://s1:26379\"]\nsentinel_master = \"mymaster\"\n",
            Some("redis://floodgate:secret@mymaster/2"),
        );
        assert_eq!(
            sentinel.redis_layout,
            RedisLayout::Sentinel {
                master: "mymaster".into(),
                primary_url: Some("redis://floodgate:secret@mymaster/2".into()),
            }
        );
        assert_eq!(
            sentinel.backend,
            Backend::Redis {
                urls: vec!["redis://s1:26379".into()]
            }
        );
        // FLOODGATE_REDIS_URL replaces a cluster's seeds.
        let cluster = store_of("urls = [\"redis://a:7000\"]\n", Some("redis://:pw@c:7000"));
        assert_eq!(cluster.redis_layout, RedisLayout::Cluster);
        assert_eq!(
            cluster.backend,
            Backend::Redis {
                urls: vec!["redis://:pw@c:7000".into()]
            }
        );
    }

    #[test]
    fn redis_topology_mistakes_are_each_named_with_their_field() {
        let problems = store_problems(
            "backend = \"redis\"\nurl = \"redis://x:1\"\nurls = [\"redis://y:1\"]\n",
            None,
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("store.url: give url"),
            "{problems:?}"
        );

        let problems = store_problems(
            "backend = \"redis\"\nsentinels = []\nurls = [\"redis://y:1\"]\nurl = \"redis://user:pw@primary/0\"\n",
            None,
        );
        let fields: Vec<&str> = problems
            .iter()
            .map(|p| p.split(':').next().unwrap_or(""))
            .collect();
        assert_eq!(
            fields,
            ["store.urls", "store.sentinels", "store.sentinel_master"],
            "{problems:?}"
        );

        let problems = store_problems(
            "backend = \"redis\"\nsentinels = [\"http://s1:26379\"]\nsentinel_master = \"m\"\nurl = \"redis://u:secret@primary/0\"\n",
            None,
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("store.sentinels: "), "{problems:?}");
        assert!(
            problems[1].starts_with("store.url: with sentinels"),
            "{problems:?}"
        );
        assert!(
            !problems.concat().contains("secret"),
            "a password in a message: {problems:?}"
        );

        let problems = store_problems("backend = \"redis\"\nurls = []\n", None);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("store.urls: an empty list"),
            "{problems:?}"
        );
    }

    #[test]
    fn tls_files_are_read_and_named_when_wrong() {
        let problems = store_problems(
            "backend = \"redis\"\nurl = \"rediss://h:6380/0\"\ntls_ca_file = \"/nonexistent/ca.pem\"\ntls_key_file = \"/nonexistent/key.pem\"\n",
            None,
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("store.tls_ca_file: /nonexistent/ca.pem cannot be read"),
            "{problems:?}"
        );

        let dir = std::env::temp_dir().join(format!("floodgate-config-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap_or_else(|e| panic!("{e}"));
        let problems = store_problems(
            &format!(
                "backend = \"redis\"\nurl = \"redis://h:6379/0\"\ntls_ca_file = {:?}\n",
                junk.display().to_string()
            ),
            None,
        );
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("store.tls_ca_file: set, but no Redis URL uses rediss://"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("store.tls_ca_file: TLS CA certificate"),
            "{problems:?}"
        );
    }

    fn server_of(server: &str) -> Result<ServerSettings, Vec<String>> {
        parse(&format!("[server]\n{server}"), None, &Overrides::default())
            .map(|s| s.server)
            .map_err(|e| e.problems.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn max_header_bytes_takes_bytes_or_a_unit_within_bounds() {
        let bytes = |text: &str| server_of(text).map(|s| s.max_header_bytes);
        assert_eq!(bytes(""), Ok(DEFAULT_MAX_HEADER_BYTES));
        assert_eq!(bytes("max_header_bytes = 65536"), Ok(65_536));
        assert_eq!(bytes("max_header_bytes = \"16KiB\""), Ok(16_384));
        assert_eq!(bytes("max_header_bytes = \"1MiB\""), Ok(1 << 20));
        assert_eq!(bytes("max_header_bytes = \"9000\""), Ok(9_000));
        for (value, message) in [
            (
                "0",
                "must be between 8192 (8KiB) and 16777216 (16MiB), got 0",
            ),
            ("4096", "got 4096"),
            ("\"32MiB\"", "got 33554432"),
            (
                "-1",
                "must be a number of bytes, like 65536 or \"64KiB\", got -1",
            ),
            ("\"64 kb\"", "must be a number of bytes"),
            ("\"lots\"", "got \"lots\""),
            ("1.5", "must be a number of bytes"),
            ("\"99999999999999999999KiB\"", "must be a number of bytes"),
        ] {
            assert_one_server_problem("max_header_bytes", value, message);
        }
    }

    /// `[server] <field> = <value>` is refused with one problem, at the
    /// field, saying `message`.
    fn assert_one_server_problem(field: &str, value: &str, message: &str) {
        let problems = server_of(&format!("{field} = {value}")).expect_err(value);
        assert_eq!(problems.len(), 1, "{value}: {problems:?}");
        assert!(
            problems[0].starts_with(&format!("server.{field}: ")) && problems[0].contains(message),
            "{value}: {problems:?}"
        );
    }

    #[test]
    fn max_connections_is_a_positive_whole_number_or_left_to_the_fd_limit() {
        let cap = |text: &str| server_of(text).map(|s| s.max_connections.map(NonZeroU32::get));
        assert_eq!(cap(""), Ok(None));
        assert_eq!(cap("max_connections = 1"), Ok(Some(1)));
        assert_eq!(cap("max_connections = 20000"), Ok(Some(20_000)));
        for (value, message) in [
            ("0", "must be between 1 and 4294967295, got 0"),
            ("-3", "got -3"),
            ("4294967296", "got 4294967296"),
            (
                "\"many\"",
                "must be a whole number of connections, like 10000",
            ),
            ("\"100\"", "got \"100\""),
            ("2.0", "must be a whole number"),
        ] {
            assert_one_server_problem("max_connections", value, message);
        }
    }

    #[test]
    fn an_unknown_field_with_an_odd_name_is_named_quoted() {
        for (text, at) in [
            ("\"\" = 1", "\"\""),
            ("[server]\n\"\" = 1", "server \"\""),
            ("\"x\\n\" = 1", "\"x\\n\""),
            ("[server]\nlisten_on = 1", "server listen_on"),
        ] {
            let err = parse(text, None, &Overrides::default()).expect_err("an unknown field");
            assert_eq!(err.problems[0].at, at, "{text:?}");
        }
    }
}
