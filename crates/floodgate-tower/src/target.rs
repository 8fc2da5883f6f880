//! Who a list entry or a block is about: `ip:<addr>`, `ip:<cidr>` or
//! `header:<name>:<value>`.
//!
//! One syntax everywhere a client is named: the `[access]` lists, manual
//! blocks, logs and the admin API. [`Target`]'s `Display` writes what its
//! `FromStr` reads.

use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::str::FromStr;

use http::HeaderMap;
use http::header::HeaderName;
use ipnet::IpNet;

use crate::text::push_ipv4;

/// A client, or a set of clients, named in configuration, a block or a log.
///
/// ```
/// use floodgate_tower::Target;
///
/// let t: Target = "ip:203.0.113.0/24".parse()?;
/// assert_eq!(t.to_string(), "ip:203.0.113.0/24");
/// assert!(t.contains_ip("203.0.113.7".parse()?));
///
/// let key: Target = "header:X-Api-Key:leaked".parse()?;
/// assert_eq!(key.to_string(), "header:x-api-key:leaked"); // names are case-insensitive
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// One address: `ip:192.0.2.7`, `ip:2001:db8::1`. IPv4-mapped IPv6
    /// addresses are stored as IPv4, the way clients are identified.
    Ip(IpAddr),
    /// A network: `ip:192.0.2.0/24`, `ip:2001:db8:1:2::/64`. Host bits are
    /// always zero.
    Net(IpNet),
    /// Requests carrying `name: value`: `header:x-api-key:abc`. The name is
    /// stored lower-case; the value is compared byte for byte.
    Header {
        /// The header name.
        name: HeaderName,
        /// The exact value.
        value: String,
    },
}

/// Why a string is not a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Neither `ip:` nor `header:`.
    #[error("{0:?} is not a target: expected ip:<addr>, ip:<cidr> or header:<name>:<value>")]
    UnknownKind(String),
    /// `ip:` followed by something that is not an address or a network.
    #[error("{0:?} is not an IP address or a CIDR network (ip:192.0.2.7, ip:2001:db8::/32)")]
    BadIp(String),
    /// A CIDR network with host bits set, e.g. `ip:10.1.2.3/8`.
    #[error("{input:?} has host bits set; did you mean ip:{network}?")]
    HostBits {
        /// What was given.
        input: String,
        /// The network it lies in.
        network: IpNet,
    },
    /// `header:` without a `:<value>` part.
    #[error("{0:?} has no value: expected header:<name>:<value>")]
    MissingHeaderValue(String),
    /// The header name is empty or not a valid HTTP field name.
    #[error("{0:?} is not a valid header name")]
    BadHeaderName(String),
    /// The header value is empty or holds control characters.
    #[error("header value {0:?} is empty or holds control characters")]
    BadHeaderValue(String),
}

impl Target {
    /// Whether `ip` is this address or lies in this network. Header targets
    /// contain no address.
    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match self {
            Target::Ip(a) => *a == ip,
            Target::Net(n) => n.contains(&ip),
            Target::Header { .. } => false,
        }
    }

    /// Whether a request from `ip` (when known) with `headers` is one this
    /// target names.
    pub fn matches(&self, ip: Option<IpAddr>, headers: &HeaderMap) -> bool {
        match self {
            Target::Header { name, value } => headers
                .get_all(name)
                .iter()
                .any(|v| v.as_bytes() == value.as_bytes()),
            _ => ip.is_some_and(|ip| self.contains_ip(ip)),
        }
    }

    /// Appends what `Display` writes. An IPv4 address, the identity of
    /// most clients, skips `core::fmt`: this runs for every keyed request
    /// and every refusal.
    pub(crate) fn push_to(&self, out: &mut String) {
        match self {
            Target::Ip(IpAddr::V4(ip)) => {
                out.push_str("ip:");
                push_ipv4(out, *ip);
            }
            // Writing to a String cannot fail.
            other => {
                let _ = write!(out, "{other}");
            }
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Ip(a) => write!(f, "ip:{a}"),
            Target::Net(n) => write!(f, "ip:{n}"),
            Target::Header { name, value } => write!(f, "header:{name}:{value}"),
        }
    }
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(ip) = s.strip_prefix("ip:") {
            return parse_ip_target(s, ip);
        }
        if let Some(rest) = s.strip_prefix("header:") {
            let (name, value) = rest
                .split_once(':')
                .ok_or_else(|| TargetError::MissingHeaderValue(s.to_owned()))?;
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| TargetError::BadHeaderName(name.to_owned()))?;
            if value.is_empty() || value.chars().any(char::is_control) {
                return Err(TargetError::BadHeaderValue(value.to_owned()));
            }
            return Ok(Target::Header {
                name,
                value: value.to_owned(),
            });
        }
        Err(TargetError::UnknownKind(s.to_owned()))
    }
}

fn parse_ip_target(input: &str, ip: &str) -> Result<Target, TargetError> {
    if ip.contains('/') {
        let net: IpNet = ip
            .parse()
            .map_err(|_| TargetError::BadIp(input.to_owned()))?;
        if net.trunc() != net {
            return Err(TargetError::HostBits {
                input: input.to_owned(),
                network: net.trunc(),
            });
        }
        return Ok(Target::Net(net));
    }
    let addr: IpAddr = ip
        .parse()
        .map_err(|_| TargetError::BadIp(input.to_owned()))?;
    Ok(Target::Ip(addr.to_canonical()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderValue;

    #[test]
    fn display_round_trips() {
        for s in [
            "ip:192.0.2.7",
            "ip:2001:db8::1",
            "ip:203.0.113.0/24",
            "ip:2001:db8:1:2::/64",
            "ip:0.0.0.0/0",
            "ip:192.0.2.7/32",
            "header:x-api-key:leaked",
            "header:authorization:Bearer a:b:c",
        ] {
            let t: Target = s.parse().unwrap();
            assert_eq!(t.to_string(), s);
            assert_eq!(t.to_string().parse::<Target>().unwrap(), t);
        }
    }

    #[test]
    fn push_to_appends_what_display_writes() {
        for s in [
            "ip:192.0.2.7",
            "ip:0.0.0.0",
            "ip:255.255.255.255",
            "ip:2001:db8::1",
            "ip:203.0.113.0/24",
            "header:x-api-key:leaked",
        ] {
            let t: Target = s.parse().unwrap();
            let mut out = String::from(">");
            t.push_to(&mut out);
            assert_eq!(out, format!(">{t}"));
        }
    }

    #[test]
    fn header_names_are_lower_cased_and_values_kept() {
        let t: Target = "header:X-Api-Key:AbC".parse().unwrap();
        assert_eq!(t.to_string(), "header:x-api-key:AbC");
    }

    #[test]
    fn ipv4_mapped_addresses_become_ipv4() {
        let t: Target = "ip:::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(t, Target::Ip("192.0.2.7".parse().unwrap()));
    }

    #[test]
    fn bad_targets_say_what_is_wrong() {
        assert!(matches!(
            "203.0.113.7".parse::<Target>(),
            Err(TargetError::UnknownKind(_))
        ));
        assert!(matches!(
            "ip:203.0.113.300".parse::<Target>(),
            Err(TargetError::BadIp(_))
        ));
        assert!(matches!(
            "ip:10.0.0.0/33".parse::<Target>(),
            Err(TargetError::BadIp(_))
        ));
        assert!(matches!(
            "ip: 10.0.0.1".parse::<Target>(),
            Err(TargetError::BadIp(_))
        ));
        let err = "ip:10.1.2.3/8".parse::<Target>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"ip:10.1.2.3/8\" has host bits set; did you mean ip:10.0.0.0/8?"
        );
        assert!(matches!(
            "header:x-api-key".parse::<Target>(),
            Err(TargetError::MissingHeaderValue(_))
        ));
        assert!(matches!(
            "header::v".parse::<Target>(),
            Err(TargetError::BadHeaderName(_))
        ));
        assert!(matches!(
            "header:bad name:v".parse::<Target>(),
            Err(TargetError::BadHeaderName(_))
        ));
        assert!(matches!(
            "header:x-a:".parse::<Target>(),
            Err(TargetError::BadHeaderValue(_))
        ));
        assert!(matches!(
            "header:x-a:a\nb".parse::<Target>(),
            Err(TargetError::BadHeaderValue(_))
        ));
        assert!(matches!(
            "".parse::<Target>(),
            Err(TargetError::UnknownKind(_))
        ));
    }

    #[test]
    fn matching() {
        let net: Target = "ip:2001:db8::/32".parse().unwrap();
        assert!(net.contains_ip("2001:db8:5::1".parse().unwrap()));
        assert!(!net.contains_ip("2001:db9::1".parse().unwrap()));
        assert!(!net.contains_ip("192.0.2.1".parse().unwrap()));
        let v4: Target = "ip:192.0.2.0/24".parse().unwrap();
        assert!(v4.contains_ip("::ffff:192.0.2.9".parse().unwrap()));

        let key: Target = "header:x-api-key:leaked".parse().unwrap();
        let mut headers = HeaderMap::new();
        assert!(!key.matches(None, &headers));
        headers.append("x-api-key", HeaderValue::from_static("fine"));
        assert!(!key.matches(None, &headers));
        headers.append("x-api-key", HeaderValue::from_static("leaked"));
        assert!(key.matches(None, &headers));
        assert!(!v4.matches(None, &headers), "unknown peer matches no IP");
    }
}
