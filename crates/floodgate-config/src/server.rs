//! `[server]`: the listeners, the upstream, who is a trusted proxy, and
//! the bounds on what a client may send and hold.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use floodgate_tower::EncodedSlashes;
use http::Uri;
use ipnet::IpNet;
use serde::Deserialize;

use super::overrides::Overrides;
use super::problems::{Problems, Unknown, parse_addr};

/// Where the built-in demo listens.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
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

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawServer {
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
    /// the server's `serve` module); slower connections are closed.
    pub header_timeout: Duration,
    /// How long a connection may stay open with no bytes either way and no
    /// request in flight (see the server's `serve` module).
    pub idle_timeout: Duration,
    /// The largest request head (request line and headers), in bytes; a
    /// larger one is answered 431 (see the server's `serve` module).
    pub max_header_bytes: usize,
    /// How many connections are served at once; past it new ones wait in
    /// the listen backlog. `None` sizes it from the file descriptor limit
    /// when serving (the server's `serve::Limits::gateway`).
    pub max_connections: Option<NonZeroU32>,
}

pub(super) fn validate_server(raw: RawServer, o: &Overrides, p: &mut Problems) -> ServerSettings {
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
