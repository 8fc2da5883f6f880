//! Who is asking: the client's IP address, behind trusted proxies only.
//!
//! The client is the TCP peer. Forwarding headers (`X-Forwarded-For`,
//! `Forwarded`, `X-Real-IP`) are believed only when the peer is a trusted
//! proxy, and then the chain is walked from the right (the hop the proxy
//! itself added) to the first address that is not a trusted proxy. Anything
//! to the left of that address was written by the client and is ignored, so
//! a client cannot choose its own identity by sending `X-Forwarded-For`.
//!
//! A header that cannot be read (not ASCII, an unparsable hop, a chain longer
//! than [`MAX_HOPS`]) never fails the request: the peer address is used.

use std::net::{IpAddr, Ipv6Addr, SocketAddrV4};

use http::HeaderMap;
use http::header::{FORWARDED, HeaderName};
use ipnet::{IpNet, Ipv6Net};

use crate::target::Target;

/// Forwarding chains are walked at most this many hops from the right.
pub const MAX_HOPS: usize = 32;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Which forwarding header a trusted proxy's request is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// The first present of `X-Forwarded-For`, `Forwarded`, `X-Real-IP`.
    /// Safe when the trusted proxy sets or appends to that first header;
    /// pin one header when the proxy only writes a later one and passes
    /// the client's own earlier headers through.
    #[default]
    Auto,
    /// `X-Forwarded-For` only.
    XForwardedFor,
    /// `Forwarded` (RFC 7239, its `for=` parameters) only.
    Forwarded,
    /// `X-Real-IP` only.
    XRealIp,
}

/// How the client's address is found.
///
/// ```
/// use floodgate_tower::ClientIpConfig;
/// use http::HeaderMap;
///
/// let config = ClientIpConfig {
///     trusted_proxies: vec!["10.0.0.0/8".parse()?],
///     ..ClientIpConfig::default()
/// };
/// let mut headers = HeaderMap::new();
/// headers.insert("x-forwarded-for", "1.2.3.4, 203.0.113.9, 10.0.0.2".parse()?);
///
/// // From a trusted proxy: the rightmost address that is not a proxy.
/// let via_proxy = config.client_ip(Some("10.0.0.1".parse()?), &headers);
/// assert_eq!(via_proxy, Some("203.0.113.9".parse()?));
/// // From anyone else the header is ignored.
/// let direct = config.client_ip(Some("198.51.100.5".parse()?), &headers);
/// assert_eq!(direct, Some("198.51.100.5".parse()?));
///
/// // IPv6 clients are grouped by their /64.
/// let v6 = config.identity("2001:db8:1:2:aaaa::1".parse()?);
/// assert_eq!(v6.to_string(), "ip:2001:db8:1:2::/64");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIpConfig {
    /// Peers whose forwarding headers are believed (the load balancer, the
    /// CDN). Empty: forwarding headers are never believed.
    pub trusted_proxies: Vec<IpNet>,
    /// An IPv6 client is identified by this prefix of its address (default
    /// 64): one host usually holds a whole /64, so per-address limits would
    /// be dodged by changing the low bits. 128 identifies each address.
    pub ipv6_prefix: u8,
    /// Which forwarding header to read from a trusted proxy.
    pub header: ForwardedHeader,
}

impl Default for ClientIpConfig {
    fn default() -> Self {
        ClientIpConfig {
            trusted_proxies: Vec::new(),
            ipv6_prefix: 64,
            header: ForwardedHeader::Auto,
        }
    }
}

impl ClientIpConfig {
    /// Whether `ip` is a trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// The client's address: the peer's, or (from a trusted proxy) the
    /// rightmost untrusted address of the forwarding header. IPv4-mapped
    /// IPv6 addresses come back as IPv4. `None` only when the peer is unknown.
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?.to_canonical();
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let name = match self.header {
            ForwardedHeader::Auto => [X_FORWARDED_FOR, FORWARDED, X_REAL_IP]
                .into_iter()
                .find(|name| headers.contains_key(name)),
            ForwardedHeader::XForwardedFor => Some(X_FORWARDED_FOR),
            ForwardedHeader::Forwarded => Some(FORWARDED),
            ForwardedHeader::XRealIp => Some(X_REAL_IP),
        };
        let found = match name {
            Some(name) if name == FORWARDED => {
                self.hops(&name, headers).and_then(|h| self.walk(&h))
            }
            Some(name) => self.walk_list(&name, headers),
            None => None,
        };
        Some(found.unwrap_or(peer))
    }

    /// [`walk`](Self::walk) of a comma-separated list header (every header
    /// but `Forwarded`), read from the right without collecting its hops:
    /// the same answer, without an allocation per request.
    fn walk_list(&self, name: &HeaderName, headers: &HeaderMap) -> Option<IpAddr> {
        let lines = headers.get_all(name);
        // Non-ASCII bytes in any line: the whole header is ignored.
        if lines.iter().any(|v| v.to_str().is_err()) {
            return None;
        }
        let mut seen = 0;
        let mut last = None;
        for line in lines.iter().rev() {
            let line = line.to_str().ok()?;
            for entry in line.rsplit(',') {
                let entry = entry.trim();
                if entry.is_empty() {
                    continue;
                }
                if seen == MAX_HOPS {
                    return None;
                }
                seen += 1;
                let ip = parse_node(entry)?.to_canonical();
                if !self.is_trusted(ip) {
                    return Some(ip);
                }
                last = Some(ip);
            }
        }
        last
    }

    /// The identity a rule keyed by `ip` counts under: the address itself
    /// for IPv4, its `ipv6_prefix` network for IPv6.
    pub fn identity(&self, ip: IpAddr) -> Target {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Target::Ip(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = self.ipv6_prefix.min(128);
                match Ipv6Net::new(v6, prefix) {
                    Ok(net) if prefix < 128 => Target::Net(IpNet::V6(net.trunc())),
                    _ => Target::Ip(IpAddr::V6(v6)),
                }
            }
        }
    }

    /// The hops of header `name`, left to right (`None` for an entry that is
    /// not an address); `None` when the header cannot be read at all.
    fn hops(&self, name: &HeaderName, headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
        let mut hops = Vec::new();
        for value in headers.get_all(name) {
            // Non-ASCII bytes in a forwarding header are not an address
            // anybody honest wrote: ignore the whole header.
            let value = value.to_str().ok()?;
            if *name == FORWARDED {
                // Proxies append their elements to the client's line. A
                // line that does not follow the grammar (a quote left open,
                // a quoted value with text glued after it) could make the
                // client's part swallow theirs: the whole line is one
                // unreadable hop. Lines after it are still read.
                if !forwarded_line_is_well_formed(value) {
                    hops.push(None);
                    continue;
                }
                for element in split_unquoted(value, b',') {
                    if element.trim().is_empty() {
                        continue;
                    }
                    hops.push(forwarded_for(element));
                }
            } else {
                for entry in value.split(',') {
                    let entry = entry.trim();
                    if !entry.is_empty() {
                        hops.push(parse_node(entry));
                    }
                }
            }
        }
        Some(hops)
    }

    /// The rightmost address that is not a trusted proxy; the leftmost when
    /// every hop is trusted. `None` (use the peer) when an unreadable hop or
    /// the hop limit comes first, or there are no hops.
    fn walk(&self, hops: &[Option<IpAddr>]) -> Option<IpAddr> {
        let mut last = None;
        for hop in hops.iter().rev().take(MAX_HOPS) {
            let ip = (*hop)?.to_canonical();
            if !self.is_trusted(ip) {
                return Some(ip);
            }
            last = Some(ip);
        }
        if hops.len() > MAX_HOPS {
            return None;
        }
        last
    }
}

/// The `for=` node of one `Forwarded` element, if it is an address.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = split_unquoted(element, b';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })?;
    parse_node(&unquote(value)?)
}

/// An address with an optional port: `192.0.2.7`, `192.0.2.7:80`,
/// `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`. `unknown` and
/// obfuscated identifiers (`_hidden`) are not addresses.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok());
        if !port_ok {
            return None;
        }
        return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    node.parse::<SocketAddrV4>()
        .ok()
        .map(|sa| IpAddr::V4(*sa.ip()))
}

/// A token, or the contents of a quoted string with its escapes undone.
fn unquote(value: &str) -> Option<String> {
    let Some(inner) = value.strip_prefix('"') else {
        return Some(value.to_owned());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// Whether `line` follows RFC 7239's grammar: elements separated by `,`,
/// each of `name=value` pairs separated by `;`, every name a token, every
/// value a token or a quoted string that ends where the pair does. Spaces
/// and tabs are allowed around the separators, empty elements and pairs are
/// allowed, and unquoted values may hold `:`, `[` and `]` (ports and IPv6
/// written without the quotes the RFC asks for).
fn forwarded_line_is_well_formed(line: &str) -> bool {
    let b = line.as_bytes();
    let is_token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    let skip_ows = |mut i: usize| {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        i
    };
    let mut i = skip_ows(0);
    while i < b.len() {
        if b[i] == b',' || b[i] == b';' {
            i = skip_ows(i + 1);
            continue;
        }
        // name
        let start = i;
        while i < b.len() && is_token(b[i]) {
            i += 1;
        }
        if i == start || i >= b.len() || b[i] != b'=' {
            return false;
        }
        i += 1;
        // value
        if i < b.len() && b[i] == b'"' {
            i += 1;
            loop {
                match b.get(i) {
                    None => return false,
                    Some(b'"') => break,
                    Some(b'\\') => i += 2,
                    Some(_) => i += 1,
                }
            }
            i += 1;
        } else {
            let start = i;
            while i < b.len() && (is_token(b[i]) || b":[]".contains(&b[i])) {
                i += 1;
            }
            if i == start {
                return false;
            }
        }
        // what ends the pair
        i = skip_ows(i);
        if i < b.len() && b[i] != b',' && b[i] != b';' {
            return false;
        }
    }
    true
}

/// Splits `s` at `sep` bytes that are outside double-quoted strings.
fn split_unquoted(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    let mut quoted = false;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        while i < bytes.len() {
            let b = bytes[i];
            i += 1;
            match b {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b if b == sep && !quoted => {
                    let part = &s[start..i - 1];
                    start = i;
                    return Some(part);
                }
                _ => {}
            }
        }
        done = true;
        Some(s.get(start..).unwrap_or(""))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn config(trusted: &[&str]) -> ClientIpConfig {
        ClientIpConfig {
            trusted_proxies: trusted.iter().map(|n| n.parse().unwrap()).collect(),
            ..ClientIpConfig::default()
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    use proptest::prelude::Strategy as _;

    #[test]
    fn a_chain_of_trusted_hops_longer_than_the_limit_is_not_believed() {
        let c = config(&["10.0.0.0/8"]);
        for n in [MAX_HOPS, MAX_HOPS + 1] {
            let chain = vec!["10.0.0.1"; n].join(", ");
            let h = headers(&[("x-forwarded-for", chain.as_str())]);
            let expected = (n <= MAX_HOPS).then(|| ip("10.0.0.1"));
            assert_eq!(c.walk_list(&X_FORWARDED_FOR, &h), expected, "{n} hops");
            let peer = ip("127.0.0.1");
            let c = config(&["10.0.0.0/8", "127.0.0.1/32"]);
            assert_eq!(
                c.client_ip(Some(peer), &h),
                Some(expected.unwrap_or(peer)),
                "{n} hops"
            );
        }
    }

    proptest::proptest! {
        /// Reading a list header from the right without collecting it
        /// finds what collecting every hop and walking them finds: lines,
        /// empty entries, garbage, ports, trusted runs and over-long chains.
        #[test]
        fn walking_a_list_lazily_agrees_with_collecting_it(
            lines in proptest::collection::vec(
                proptest::collection::vec(
                    // Mostly trusted, so chains run past MAX_HOPS.
                    proptest::prop_oneof![
                        30 => proptest::prelude::Just("10.0.0.1".to_owned()),
                        10 => proptest::prelude::Just("10.1.2.3:8080".to_owned()),
                        1 => proptest::prelude::Just("203.0.113.9".to_owned()),
                        1 => proptest::prelude::Just("[2001:db8::1]:443".to_owned()),
                        1 => proptest::prelude::Just("2001:db8::2".to_owned()),
                        1 => proptest::prelude::Just("unknown".to_owned()),
                        1 => proptest::prelude::Just(" ".to_owned()),
                        1 => proptest::prelude::Just(String::new()),
                        1 => (0u8..=255).prop_map(|b| format!("192.0.2.{b}")),
                    ],
                    0..40,
                ),
                1..4,
            ),
        ) {
            let c = config(&["10.0.0.0/8", "192.0.2.0/25", "2001:db8::2/128"]);
            let mut h = HeaderMap::new();
            for line in &lines {
                h.append(X_FORWARDED_FOR, HeaderValue::from_str(&line.join(",")).unwrap());
            }
            let collected = c.hops(&X_FORWARDED_FOR, &h).and_then(|hops| c.walk(&hops));
            proptest::prop_assert_eq!(c.walk_list(&X_FORWARDED_FOR, &h), collected);
        }
    }

    #[test]
    fn untrusted_peer_cannot_spoof_its_address() {
        let c = config(&["10.0.0.0/8"]);
        for h in [
            headers(&[("x-forwarded-for", "1.2.3.4")]),
            headers(&[("forwarded", "for=1.2.3.4")]),
            headers(&[("x-real-ip", "1.2.3.4")]),
        ] {
            assert_eq!(
                c.client_ip(Some(ip("198.51.100.5")), &h),
                Some(ip("198.51.100.5"))
            );
        }
        // No trusted proxies at all: headers never count, even from loopback.
        let none = config(&[]);
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(
            none.client_ip(Some(ip("127.0.0.1")), &h),
            Some(ip("127.0.0.1"))
        );
    }

    #[test]
    fn trusted_chain_gives_rightmost_untrusted() {
        let c = config(&["10.0.0.0/8", "192.168.0.0/16"]);
        let h = headers(&[(
            "x-forwarded-for",
            "1.2.3.4, 203.0.113.9, 192.168.1.1, 10.0.0.2",
        )]);
        assert_eq!(
            c.client_ip(Some(ip("10.0.0.1")), &h),
            Some(ip("203.0.113.9"))
        );
        // The same chain split over several header lines.
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "203.0.113.9, 192.168.1.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        assert_eq!(
            c.client_ip(Some(ip("10.0.0.1")), &h),
            Some(ip("203.0.113.9"))
        );
        // Every hop trusted: the leftmost (the originating host).
        let h = headers(&[("x-forwarded-for", "10.1.1.1, 10.0.0.2")]);
        assert_eq!(c.client_ip(Some(ip("10.0.0.1")), &h), Some(ip("10.1.1.1")));
        // Trusted peer without any header: the peer.
        assert_eq!(
            c.client_ip(Some(ip("10.0.0.1")), &HeaderMap::new()),
            Some(ip("10.0.0.1"))
        );
    }

    #[test]
    fn xff_entries_with_ports_and_brackets() {
        let c = config(&["10.0.0.0/8"]);
        for (value, want) in [
            ("203.0.113.9:5555", "203.0.113.9"),
            ("[2001:db8::7]:443", "2001:db8::7"),
            ("[2001:db8::7]", "2001:db8::7"),
            ("2001:db8::7", "2001:db8::7"),
            (" 203.0.113.9 ,, ", "203.0.113.9"),
        ] {
            let h = headers(&[("x-forwarded-for", value)]);
            assert_eq!(
                c.client_ip(Some(ip("10.0.0.1")), &h),
                Some(ip(want)),
                "{value}"
            );
        }
    }

    #[test]
    fn forwarded_header_rfc7239() {
        let c = config(&["10.0.0.0/8"]);
        let h = headers(&[(
            "forwarded",
            r#"for=1.2.3.4, for="[2001:db8:cafe::17]:4711";proto=https;by=10.0.0.5, For=10.0.0.3"#,
        )]);
        assert_eq!(
            c.client_ip(Some(ip("10.0.0.1")), &h),
            Some(ip("2001:db8:cafe::17"))
        );
        let h = headers(&[("forwarded", r#"proto=http;for="203.0.113.9:80""#)]);
        assert_eq!(
            c.client_ip(Some(ip("10.0.0.1")), &h),
            Some(ip("203.0.113.9"))
        );
        // A quoted comma does not split elements.
        let h = headers(&[("forwarded", r#"for=203.0.113.9;x="a,b""#)]);
        assert_eq!(
            c.client_ip(Some(ip("10.0.0.1")), &h),
            Some(ip("203.0.113.9"))
        );
        // `unknown` is not an address: fall back to the peer.
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(c.client_ip(Some(ip("10.0.0.1")), &h), Some(ip("10.0.0.1")));
    }

    #[test]
    fn header_choice() {
        let mut c = config(&["10.0.0.0/8"]);
        let h = headers(&[
            ("x-real-ip", "203.0.113.1"),
            ("forwarded", "for=203.0.113.2"),
            ("x-forwarded-for", "203.0.113.3"),
        ]);
        let peer = Some(ip("10.0.0.1"));
        assert_eq!(c.client_ip(peer, &h), Some(ip("203.0.113.3")));
        c.header = ForwardedHeader::Forwarded;
        assert_eq!(c.client_ip(peer, &h), Some(ip("203.0.113.2")));
        c.header = ForwardedHeader::XRealIp;
        assert_eq!(c.client_ip(peer, &h), Some(ip("203.0.113.1")));
        c.header = ForwardedHeader::Auto;
        let only_real = headers(&[("x-real-ip", "203.0.113.1")]);
        assert_eq!(c.client_ip(peer, &only_real), Some(ip("203.0.113.1")));
        c.header = ForwardedHeader::XForwardedFor;
        assert_eq!(c.client_ip(peer, &only_real), Some(ip("10.0.0.1")));
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        let c = config(&["10.0.0.0/8"]);
        // A mapped peer is trusted by its IPv4 network.
        let h = headers(&[("x-forwarded-for", "::ffff:203.0.113.9")]);
        assert_eq!(
            c.client_ip(Some(ip("::ffff:10.0.0.1")), &h),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            c.client_ip(Some(ip("::ffff:198.51.100.5")), &HeaderMap::new()),
            Some(ip("198.51.100.5"))
        );
        assert_eq!(
            c.identity(ip("::ffff:198.51.100.5")).to_string(),
            "ip:198.51.100.5"
        );
    }

    #[test]
    fn ipv6_grouped_by_prefix() {
        let mut c = config(&[]);
        assert_eq!(
            c.identity(ip("2001:db8:1:2:3:4:5:6")).to_string(),
            "ip:2001:db8:1:2::/64"
        );
        assert_eq!(
            c.identity(ip("2001:db8:1:2::ffff")),
            c.identity(ip("2001:db8:1:2::1"))
        );
        assert_ne!(
            c.identity(ip("2001:db8:1:3::1")),
            c.identity(ip("2001:db8:1:2::1"))
        );
        c.ipv6_prefix = 48;
        assert_eq!(
            c.identity(ip("2001:db8:1:2::1")).to_string(),
            "ip:2001:db8:1::/48"
        );
        c.ipv6_prefix = 128;
        assert_eq!(
            c.identity(ip("2001:db8:1:2::1")).to_string(),
            "ip:2001:db8:1:2::1"
        );
        assert_eq!(c.identity(ip("192.0.2.7")).to_string(), "ip:192.0.2.7");
    }

    #[test]
    fn hostile_headers_fall_back_to_the_peer() {
        let c = config(&["10.0.0.0/8"]);
        let peer = Some(ip("10.0.0.1"));
        let huge = "9".repeat(10_000);
        let many = vec!["203.0.113.9"; 2_000].join(",");
        let many_trusted = vec!["10.9.9.9"; 2_000].join(",");
        for value in [
            huge.as_str(),
            "not an address",
            "1.2.3.4.5",
            "203.0.113.9, garbage",
            "[2001:db8::1",
            "[2001:db8::1]:99999",
            "[1.2.3.4]",
            ",,,",
            many_trusted.as_str(),
            "\"quoted\"",
        ] {
            let h = headers(&[("x-forwarded-for", value)]);
            assert_eq!(c.client_ip(peer, &h), Some(ip("10.0.0.1")), "{value:.40}");
        }
        // A long chain is fine when the rightmost hops are readable.
        let h = headers(&[("x-forwarded-for", &many)]);
        assert_eq!(c.client_ip(peer, &h), Some(ip("203.0.113.9")));
        // Garbage to the left of the client is never looked at.
        let h = headers(&[("x-forwarded-for", "garbage, 203.0.113.9")]);
        assert_eq!(c.client_ip(peer, &h), Some(ip("203.0.113.9")));

        for value in [
            "for=",
            "for=\"",
            "for=\"[2001:db8::1]",
            "for=\"a\\",
            ";;;,,,===",
            "for=_hidden",
            "by=1.2.3.4",
            huge.as_str(),
        ] {
            let h = headers(&[("forwarded", value)]);
            assert_eq!(c.client_ip(peer, &h), Some(ip("10.0.0.1")), "{value:.40}");
        }

        // Non-UTF-8 / non-ASCII bytes.
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"203.0.113.9, \xff\xfe").unwrap(),
        );
        assert_eq!(c.client_ip(peer, &h), Some(ip("10.0.0.1")));
        let mut h = HeaderMap::new();
        h.insert(
            "forwarded",
            HeaderValue::from_bytes(b"for=\xc3\xa9").unwrap(),
        );
        assert_eq!(c.client_ip(peer, &h), Some(ip("10.0.0.1")));
    }

    #[test]
    fn unknown_peer_has_no_address() {
        let c = config(&["0.0.0.0/0"]);
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(c.client_ip(None, &h), None);
    }

    #[test]
    fn an_open_quote_in_forwarded_cannot_choose_the_client() {
        // The client sent `for=6.6.6.6;x="`; the proxy appended its element.
        // Read naively, the open quote swallows the proxy's element and the
        // client's chosen address counts. The line is unreadable instead:
        // the peer (the proxy) counts.
        let config = ClientIpConfig {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            header: ForwardedHeader::Forwarded,
            ..ClientIpConfig::default()
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            "forwarded",
            HeaderValue::from_static("for=6.6.6.6;x=\", for=203.0.113.9"),
        );
        let peer = "10.0.0.1".parse().unwrap();
        assert_eq!(config.client_ip(Some(peer), &headers), Some(peer));
        // The open quote closed by an escaped quote in the proxy's part.
        headers.insert(
            "forwarded",
            HeaderValue::from_static(r#"for=6.6.6.6;x=", for=203.0.113.9;x="q\"uote""#),
        );
        assert_eq!(config.client_ip(Some(peer), &headers), Some(peer));
        for good in [
            r#"for="[2001:db8::1]:80";x="a\"b", for=1.2.3.4"#,
            "for=192.0.2.60;proto=http;by=203.0.113.43",
            "for=192.0.2.43, for=198.51.100.17 ,for=unknown",
            "for=192.0.2.7:80 ; proto=https",
            "for=_hidden,,",
            "",
        ] {
            assert!(forwarded_line_is_well_formed(good), "{good:?}");
        }
        for bad in [
            r#"for="1.2.3.4\"#,
            r#"x=""#,
            r#"for="1.2.3.4"x"#,
            "for 1.2.3.4",
            "=1.2.3.4",
            "for=",
            "for=1.2.3.4 5.6.7.8",
            "for=\"a\"\"b\"",
        ] {
            assert!(!forwarded_line_is_well_formed(bad), "{bad:?}");
        }
    }

    #[test]
    fn split_unquoted_handles_escapes() {
        let parts: Vec<&str> = split_unquoted(r#"a="x\"," , b"#, b',').collect();
        assert_eq!(parts, vec![r#"a="x\"," "#, " b"]);
        assert_eq!(split_unquoted("", b',').collect::<Vec<_>>(), vec![""]);
        assert_eq!(unquote(r#""a\"b""#).as_deref(), Some("a\"b"));
        assert_eq!(unquote(r#""a"b""#), None);
    }
}
