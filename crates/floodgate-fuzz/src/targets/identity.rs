//! Client identity and rule keys: `ClientIpConfig::client_ip` on
//! `X-Forwarded-For`, `Forwarded` and `X-Real-IP` behind trusted proxies,
//! and the keys `Limiter::check_request` forms from it, from header values
//! (any bytes a request may carry, non-UTF-8 included), paths and methods,
//! alone and in composite keys.
//!
//! Inputs are forwarding chains built hop by hop (trusted and untrusted
//! addresses, ports, brackets, quoting, parameters, junk hops, chains past
//! the hop limit, split over several header lines), decoy headers, and
//! random other headers, paths and methods; often mutated byte by byte.
//! Invariants:
//! - no panic;
//! - a chain as built gives the address the documented walk names: the
//!   rightmost hop that is not a trusted proxy, within [`MAX_HOPS`];
//! - an untrusted peer's headers are never read: its identity is its own
//!   address; a trusted peer's client is the peer or came from the header;
//! - what a client writes to the left of the chain cannot change its
//!   identity: another header line of plain ASCII changes nothing, and any
//!   bytes at all (the same line, quotes, non-ASCII) can at most make
//!   floodgate fall back to the peer, never name another address;
//! - the `ip` key is the identity, IPv6 masked to `ipv6_prefix` bits;
//! - header, path and method keys are the documented text, or
//!   `sha256:<32 hex>` when longer than [`MAX_KEY_PART_LEN`] or not UTF-8;
//!   no key part is ever longer than that; a composite key is its parts'
//!   keys joined by `|` with `|` and `\` escaped, and exists only when every
//!   part does; a rule whose key cannot be formed is not checked.
//! - a request whose path has no canonical form, or that sends a header a
//!   key reads more than once, is refused as malformed (400) before any
//!   rule is checked, and only such a request; rules match, and `path`
//!   keys hold, the canonical path.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use floodgate_core::{Algorithm, Block, Check, Decision, Error, Policy, Store};
use floodgate_tower::identity::MAX_HOPS;
use floodgate_tower::rule::MAX_KEY_PART_LEN;
use floodgate_tower::{
    BadRequestReason, ClientIpConfig, ForwardedHeader, KeySpec, Limiter, LimiterConfig,
    RequestMatch, Rule, Target, Verdict,
};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::harness::{FuzzTarget, clip};
use crate::mutate::{hex, mutate};
use crate::rng::Rng;

const XFF: &str = "x-forwarded-for";
const FORWARDED: &str = "forwarded";
const X_REAL_IP: &str = "x-real-ip";
/// The headers the rules' keys read: a request sending one of them more
/// than once is refused.
const KEY_HEADERS: [&str; 3] = ["x-api-key", "x-b", XFF];
/// The forwarding headers in the order `ForwardedHeader::Auto` looks for them.
const FORWARDING: [&str; 3] = [XFF, FORWARDED, X_REAL_IP];

/// The rules every input is checked against: one per key part, two
/// composites, and one with a matcher.
const RULES: &[(&str, &[&str])] = &[
    ("k-ip", &["ip"]),
    ("k-key", &["header:x-api-key"]),
    ("k-b", &["header:x-b"]),
    ("k-xff", &["header:x-forwarded-for"]),
    ("k-path", &["path"]),
    ("k-method", &["method"]),
    ("k-global", &["global"]),
    ("k-combo", &["ip", "header:x-api-key", "path"]),
    ("k-combo2", &["header:x-api-key", "header:x-b", "method"]),
    ("k-api", &["ip"]),
];

const DICTIONARY: &[&[u8]] = &[
    b", ",
    b",",
    b";",
    b"for=",
    b"For=",
    b"by=",
    b"proto=https",
    b"\"",
    b"\\",
    b"[",
    b"]",
    b":",
    b"::",
    b"::ffff:",
    b"127.0.0.1",
    b"10.0.0.1",
    b"2001:db8::1",
    b"unknown",
    b"_hidden",
    b"%eth0",
    b"\xc3\xa9",
    b"\xff",
];

/// Which header a generated chain is written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChainHeader {
    Xff,
    Forwarded,
    XRealIp,
}

impl ChainHeader {
    fn name(self) -> &'static str {
        match self {
            ChainHeader::Xff => XFF,
            ChainHeader::Forwarded => FORWARDED,
            ChainHeader::XRealIp => X_REAL_IP,
        }
    }
}

/// One generated request.
#[derive(Debug, Clone)]
pub struct IdentityInput {
    trusted: Vec<IpNet>,
    ipv6_prefix: u8,
    choice: ForwardedHeader,
    peer: Option<SocketAddr>,
    /// Header lines in order; values may hold any byte a header value can.
    headers: Vec<(&'static str, Vec<u8>)>,
    method: String,
    path: String,
    /// The chain as built, when the forwarding header was not mutated
    /// afterwards: the header it is in, and its hops (`None`: not an address).
    chain: Option<(ChainHeader, Vec<Option<IpAddr>>)>,
    /// What a client puts to the left of the chain, for the metamorphic checks.
    client_prefix: Vec<u8>,
}

/// The identity and key-forming target.
pub struct IdentityTarget {
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for IdentityTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityTarget").finish_non_exhaustive()
    }
}

impl IdentityTarget {
    /// A target with its own single-threaded runtime for the limiter.
    ///
    /// # Panics
    /// When the runtime cannot be built.
    pub fn new() -> Self {
        IdentityTarget {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a current-thread runtime"),
        }
    }
}

impl Default for IdentityTarget {
    fn default() -> Self {
        Self::new()
    }
}

impl FuzzTarget for IdentityTarget {
    type Input = IdentityInput;

    fn name(&self) -> &'static str {
        "identity"
    }

    fn generate(&mut self, rng: &mut Rng) -> IdentityInput {
        generate(rng)
    }

    fn check(&mut self, input: &IdentityInput) {
        let config = ClientIpConfig {
            trusted_proxies: input.trusted.clone(),
            ipv6_prefix: input.ipv6_prefix,
            header: input.choice,
        };
        let headers = header_map(&input.headers);
        let peer_ip = input.peer.map(|p| p.ip());
        let client = config.client_ip(peer_ip, &headers);
        check_client(&config, input, &headers, client);
        check_prefixes(&config, input, client);
        // Out-of-range prefixes (the limiter refuses them) must not panic.
        if let Some(ip) = client {
            for prefix in [0, 129, 255] {
                let _ = ClientIpConfig {
                    ipv6_prefix: prefix,
                    ..config.clone()
                }
                .identity(ip);
            }
        }
        if let Some((path, keys)) = self.runtime.block_on(keys_formed(&config, input, &headers)) {
            check_keys(&config, input, &path, &headers, client, &keys);
        }
    }

    fn describe(&self, input: &IdentityInput) -> String {
        let headers: Vec<String> = input
            .headers
            .iter()
            .map(|(n, v)| {
                format!(
                    "{n}: hex {} ({:?})",
                    hex(v),
                    clip(&String::from_utf8_lossy(v), 300)
                )
            })
            .collect();
        format!(
            "trusted {:?}, ipv6_prefix {}, header {:?}, peer {:?}, method {:?}, path {:?}, chain {:?}, client prefix hex {}, headers [{}]",
            input.trusted,
            input.ipv6_prefix,
            input.choice,
            input.peer,
            input.method,
            clip(&input.path, 300),
            input.chain,
            hex(&input.client_prefix),
            headers.join("; ")
        )
    }
}

fn header_map(lines: &[(&'static str, Vec<u8>)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in lines {
        let value = HeaderValue::from_bytes(value).expect("generated values are valid");
        map.append(HeaderName::from_static(name), value);
    }
    map
}

/// Which forwarding header `choice` reads in `headers`, if any.
fn consulted(choice: ForwardedHeader, headers: &HeaderMap) -> Option<&'static str> {
    match choice {
        ForwardedHeader::Auto => FORWARDING.into_iter().find(|n| headers.contains_key(*n)),
        ForwardedHeader::XForwardedFor => Some(XFF),
        ForwardedHeader::Forwarded => Some(FORWARDED),
        ForwardedHeader::XRealIp => Some(X_REAL_IP),
    }
}

/// The documented walk over hops as built.
fn walk_model(config: &ClientIpConfig, peer: IpAddr, hops: &[Option<IpAddr>]) -> IpAddr {
    let mut last = None;
    for hop in hops.iter().rev().take(MAX_HOPS) {
        let Some(ip) = hop.map(|ip| ip.to_canonical()) else {
            return peer;
        };
        if !config.is_trusted(ip) {
            return ip;
        }
        last = Some(ip);
    }
    if hops.len() > MAX_HOPS {
        return peer;
    }
    last.unwrap_or(peer)
}

fn check_client(
    config: &ClientIpConfig,
    input: &IdentityInput,
    headers: &HeaderMap,
    client: Option<IpAddr>,
) {
    let Some(peer) = input.peer.map(|p| p.ip().to_canonical()) else {
        assert_eq!(client, None, "an unknown peer got an address");
        return;
    };
    let client = client.expect("a known peer always has a client address");
    assert!(
        !matches!(client, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some()),
        "an IPv4-mapped address {client} was not turned into IPv4"
    );
    if !config.is_trusted(peer) {
        assert_eq!(
            client, peer,
            "the headers of an untrusted peer {peer} were believed"
        );
        return;
    }
    let read = consulted(config.header, headers);
    match (&input.chain, read) {
        (Some((built, hops)), Some(name)) if built.name() == name => {
            assert_eq!(
                client,
                walk_model(config, peer, hops),
                "the chain {hops:?} in {name} from trusted peer {peer}"
            );
        }
        (_, None) => assert_eq!(client, peer, "an address without any forwarding header"),
        (_, Some(name)) if !headers.contains_key(name) => {
            assert_eq!(client, peer, "an address from {name}, which is absent");
        }
        _ => {}
    }
}

/// What a client writes in front of the chain must not choose its identity.
/// (This found a client's open quote in `Forwarded` swallowing its proxy's
/// element, fixed in 1dc2fcc and c9b8f65.)
fn check_prefixes(config: &ClientIpConfig, input: &IdentityInput, client: Option<IpAddr>) {
    let (Some(peer), Some(client)) = (input.peer, client) else {
        return;
    };
    let peer = peer.ip().to_canonical();
    if client == peer || config.is_trusted(client) {
        return;
    }
    let headers = header_map(&input.headers);
    let Some(name) = consulted(config.header, &headers) else {
        return;
    };
    let prefix = &input.client_prefix;
    // A separate, earlier line of plain ASCII without quotes: ignored.
    if prefix
        .iter()
        .all(|b| (0x20..0x7f).contains(b) && *b != b'"')
    {
        let mut lines = vec![(name, prefix.clone())];
        lines.extend(input.headers.iter().cloned());
        let again = config.client_ip(Some(peer), &header_map(&lines));
        assert_eq!(
            again,
            Some(client),
            "an earlier {name} line {:?} changed the client",
            String::from_utf8_lossy(prefix)
        );
    }
    // Anything at the start of the first line of the header, as a proxy
    // appending to the client's own header would forward it.
    let mut lines = input.headers.clone();
    if let Some(first) = lines.iter_mut().find(|(n, _)| *n == name) {
        let mut value = prefix.clone();
        value.extend_from_slice(b", ");
        value.extend_from_slice(&first.1);
        first.1 = value;
        let again = config.client_ip(Some(peer), &header_map(&lines));
        assert!(
            again == Some(client) || again == Some(peer),
            "a client prefix {:?} on the {name} line made the client {again:?} (was {client}, peer {peer})",
            String::from_utf8_lossy(prefix)
        );
    }
}

/// Records the keys of every check and admits everything.
#[derive(Debug, Clone, Default)]
struct RecordingStore {
    seen: Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

fn admitted(policy: &Policy, remaining: u64) -> Decision {
    Decision {
        allowed: true,
        limit: policy.limit(),
        remaining,
        reset_after: Duration::ZERO,
        retry_after: None,
        blocked: false,
        delay: std::time::Duration::ZERO,
    }
}

impl Store for RecordingStore {
    async fn check(&self, checks: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        floodgate_core::validate_checks(checks)?;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        Ok(checks
            .iter()
            .map(|c| {
                seen.push((c.rule.to_owned(), c.key.to_owned()));
                admitted(c.policy, c.policy.capacity() - c.cost)
            })
            .collect())
    }

    async fn refund(&self, refunds: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        self.charge(refunds).await
    }

    async fn acquire(
        &self,
        slots: &[floodgate_core::Slot<'_>],
    ) -> Result<Vec<floodgate_core::SlotDecision>, Error> {
        Ok(slots
            .iter()
            .map(|s| floodgate_core::SlotDecision {
                allowed: true,
                in_flight: 1,
                limit: s.limit,
            })
            .collect())
    }

    async fn release(&self, _slots: &[floodgate_core::Slot<'_>]) -> Result<(), Error> {
        Ok(())
    }

    async fn renew(&self, slots: &[floodgate_core::Slot<'_>]) -> Result<Vec<bool>, Error> {
        Ok(vec![true; slots.len()])
    }

    async fn put_override(
        &self,
        o: &floodgate_core::KeyOverride,
        _ttl: Option<Duration>,
    ) -> Result<floodgate_core::KeyOverride, Error> {
        Ok(o.clone())
    }

    async fn remove_override(&self, _rule: &str, _key: &str) -> Result<bool, Error> {
        Ok(false)
    }

    async fn override_changes(
        &self,
        since: u64,
        _max: usize,
    ) -> Result<floodgate_core::OverrideChanges, Error> {
        Ok(floodgate_core::OverrideChanges {
            version: since,
            ..Default::default()
        })
    }

    async fn charge(&self, charges: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        floodgate_core::validate_charges(charges)?;
        Ok(charges
            .iter()
            .map(|c| admitted(c.policy, c.policy.capacity()))
            .collect())
    }

    async fn peek(&self, _rule: &str, policy: &Policy, _key: &str) -> Result<Decision, Error> {
        Ok(admitted(policy, policy.capacity()))
    }

    async fn reset(&self, _rule: &str, _key: &str) -> Result<bool, Error> {
        Ok(false)
    }

    async fn add_block(&self, target: &str, ttl: Duration, reason: &str) -> Result<Block, Error> {
        Ok(Block {
            target: target.to_owned(),
            until: floodgate_core::Timestamp::ZERO.saturating_add(ttl),
            reason: reason.to_owned(),
            source: floodgate_core::BlockSource::Manual,
        })
    }

    async fn remove_block(&self, _target: &str) -> Result<bool, Error> {
        Ok(false)
    }

    async fn blocks(&self) -> Result<Vec<Block>, Error> {
        Ok(Vec::new())
    }

    async fn ping(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// The request's canonical path and the key each rule was checked on, by
/// rule name; `None` when the limiter refused the request as malformed (a
/// path with no canonical form, a key header sent more than once), after
/// checking that it was.
async fn keys_formed(
    config: &ClientIpConfig,
    input: &IdentityInput,
    headers: &HeaderMap,
) -> Option<(String, BTreeMap<String, String>)> {
    let policy =
        Policy::new(Algorithm::FixedWindow, 1_000, Duration::from_secs(1)).expect("a valid policy");
    let rules = RULES
        .iter()
        .map(|(name, parts)| {
            let rule = Rule::new(
                *name,
                KeySpec::parse_list(parts.iter().copied()).expect("valid key parts"),
                policy.clone(),
            );
            if *name == "k-api" {
                rule.with_match(RequestMatch {
                    path_prefix: Some("/api/".into()),
                    methods: Some(vec![Method::GET, Method::POST]),
                })
            } else {
                rule
            }
        })
        .collect();
    let store = RecordingStore::default();
    let limiter = Limiter::new(
        LimiterConfig {
            rules,
            client_ip: config.clone(),
            local_max_keys: 16,
            ..LimiterConfig::default()
        },
        store.clone(),
    )
    .expect("a valid limiter config");
    let method = Method::from_bytes(input.method.as_bytes()).expect("a valid method");
    let verdict = limiter
        .check_request(&method, &input.path, headers, input.peer)
        .await;
    let seen = store.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // Every rule but `k-api` matches any path, so every key header counts.
    let repeated: Vec<&str> = KEY_HEADERS
        .iter()
        .copied()
        .filter(|name| headers.get_all(*name).iter().count() > 1)
        .collect();
    let path = limiter.canonical_path(&input.path);
    match &verdict {
        Verdict::BadRequest(reason) => {
            assert!(seen.is_empty(), "a refused request was checked");
            match reason {
                BadRequestReason::Path(e) => assert!(
                    path.is_err(),
                    "refused for its path ({e}), which has a canonical form"
                ),
                BadRequestReason::RepeatedHeader(name) => assert!(
                    path.is_ok() && repeated.contains(&name.as_str()),
                    "refused for a repeated {name}: path {path:?}, repeated {repeated:?}"
                ),
            }
            return None;
        }
        Verdict::Allow(Some(_)) => assert!(!seen.is_empty(), "a rule decision without a check"),
        Verdict::Allow(None) => assert!(seen.is_empty(), "checks without a rule decision"),
        other => panic!("an admitting store gave {other:?}"),
    }
    assert!(path.is_ok(), "a path without a canonical form admitted");
    assert!(
        repeated.is_empty(),
        "admitted with {repeated:?} sent more than once"
    );
    let mut keys = BTreeMap::new();
    for (rule, key) in seen {
        assert!(
            keys.insert(rule.clone(), key).is_none(),
            "rule {rule} checked twice in one request"
        );
    }
    Some((path.map(|p| p.into_owned()).unwrap_or_default(), keys))
}

fn is_hashed(key: &str) -> bool {
    key.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 32
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A key part as documented: the text when short enough, its hash otherwise.
fn expect_part(rule: &str, got: &str, text: Option<&str>) {
    match text {
        Some(t) if t.len() <= MAX_KEY_PART_LEN => assert_eq!(got, t, "rule {rule}"),
        _ => assert!(is_hashed(got), "rule {rule}: {got:?} should be a hash"),
    }
}

/// The keys of a request the limiter admitted, whose canonical path is
/// `path`.
fn check_keys(
    config: &ClientIpConfig,
    input: &IdentityInput,
    path: &str,
    headers: &HeaderMap,
    client: Option<IpAddr>,
    keys: &BTreeMap<String, String>,
) {
    for (rule, key) in keys {
        let parts = RULES
            .iter()
            .find(|(n, _)| n == rule)
            .map_or(0, |(_, p)| p.len());
        assert!(parts > 0, "a check for unknown rule {rule}");
        let bound = if parts == 1 {
            MAX_KEY_PART_LEN
        } else {
            parts * (2 * MAX_KEY_PART_LEN + 1)
        };
        assert!(
            key.len() <= bound,
            "rule {rule}: key of {} bytes",
            key.len()
        );
    }
    // ip
    let ip_key = keys.get("k-ip");
    assert_eq!(
        ip_key.is_some(),
        client.is_some(),
        "k-ip present iff the client is known"
    );
    if let (Some(key), Some(ip)) = (ip_key, client) {
        assert_eq!(*key, config.identity(ip).to_string());
        match key.parse::<Target>() {
            Ok(Target::Ip(a)) => assert!(
                a == ip && (a.is_ipv4() || config.ipv6_prefix == 128),
                "ip key {key} for {ip} with prefix {}",
                config.ipv6_prefix
            ),
            Ok(Target::Net(IpNet::V6(net))) => {
                assert!(ip.is_ipv6(), "IPv4 client {ip} keyed by network {net}");
                assert_eq!(net.prefix_len(), config.ipv6_prefix, "ip key {key}");
                assert_eq!(net, net.trunc(), "host bits in ip key {key}");
                assert!(IpNet::V6(net).contains(&ip), "{key} does not hold {ip}");
            }
            other => panic!("ip key {key} reads back as {other:?}"),
        }
    }
    // Header keys.
    for (rule, name) in [("k-key", "x-api-key"), ("k-b", "x-b"), ("k-xff", XFF)] {
        let values: Vec<&[u8]> = headers
            .get_all(name)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        let got = keys.get(rule);
        assert_eq!(
            got.is_some(),
            !values.is_empty(),
            "{rule} present iff {name} is"
        );
        if let Some(got) = got {
            let text = std::str::from_utf8(&values.join(&b","[..]))
                .ok()
                .map(|v| format!("header:{name}:{v}"));
            expect_part(rule, got, text.as_deref());
        }
    }
    expect_part(
        "k-path",
        keys.get("k-path").expect("path always applies"),
        Some(&format!("path:{path}")),
    );
    expect_part(
        "k-method",
        keys.get("k-method").expect("method always applies"),
        Some(&format!("method:{}", input.method)),
    );
    assert_eq!(keys.get("k-global").map(String::as_str), Some("global"));
    // Composites: the parts' own keys, escaped and joined.
    for (rule, parts) in [
        ("k-combo", ["k-ip", "k-key", "k-path"]),
        ("k-combo2", ["k-key", "k-b", "k-method"]),
    ] {
        let singles: Option<Vec<&String>> = parts.iter().map(|p| keys.get(*p)).collect();
        let expected = singles.map(|s| {
            s.iter()
                .map(|k| k.replace('\\', "\\\\").replace('|', "\\|"))
                .collect::<Vec<_>>()
                .join("|")
        });
        assert_eq!(keys.get(rule), expected.as_ref(), "composite {rule}");
    }
    // `GET` also matches `HEAD`. A path holding an escape is matched in a
    // decoded form (`/%61pi/` is under `/api/`); there only the key is
    // checked, not whether the rule applied.
    let api_method = ["GET", "POST", "HEAD"].contains(&input.method.as_str());
    let api_key = keys.get("k-api");
    if path.contains('%') {
        assert!(
            api_key.is_none() || (api_method && api_key == keys.get("k-ip")),
            "a rule matching /api/ GET|POST only: {api_key:?}"
        );
    } else {
        let api = api_method && path.starts_with("/api/");
        assert_eq!(
            api_key,
            if api { keys.get("k-ip") } else { None },
            "a rule matching /api/ GET|POST only"
        );
    }
}

// ---------------------------------------------------------------------------
// Generation.

const TRUSTED_POOL: &[&str] = &[
    "10.0.0.0/8",
    "127.0.0.1/32",
    "::1/128",
    "2001:db8:ffff::/48",
    "192.168.0.0/16",
    "172.16.0.0/12",
    "fd00::/8",
    "::ffff:10.0.0.0/104",
    "0.0.0.0/0",
    "::/0",
];

fn random_in(rng: &mut Rng, net: &IpNet) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let host = (rng.next_u64() as u32) & n.hostmask().to_bits();
            IpAddr::V4(Ipv4Addr::from_bits(n.network().to_bits() | host))
        }
        IpNet::V6(n) => {
            let bits = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
            IpAddr::V6(Ipv6Addr::from_bits(
                n.network().to_bits() | (bits & n.hostmask().to_bits()),
            ))
        }
    }
}

fn random_ip(rng: &mut Rng, trusted: &[IpNet]) -> IpAddr {
    if !trusted.is_empty() && rng.percent(45) {
        let net = *rng.pick(trusted);
        return random_in(rng, &net);
    }
    let wide = [
        IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(203, 0, 113, 0), 24)),
        IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0)),
        IpNet::V6(Ipv6Net::new_assert(
            Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 0),
            64,
        )),
        IpNet::V6(Ipv6Net::new_assert(
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
            32,
        )),
        IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 0)),
    ];
    match rng.below(12) {
        0 => IpAddr::V6(Ipv4Addr::from_bits(rng.next_u64() as u32).to_ipv6_mapped()),
        1 => *rng.pick(&[
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::BROADCAST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ]),
        _ => {
            let net = *rng.pick(&wide);
            random_in(rng, &net)
        }
    }
}

/// One hop as text.
fn hop_text(rng: &mut Rng, header: ChainHeader, ip: Option<IpAddr>) -> String {
    let Some(ip) = ip else {
        let junk = [
            "unknown",
            "_hidden",
            "garbage",
            "1.2.3.4.5",
            "[::1",
            "[1.2.3.4]",
            "fe80::1%eth0",
            "1.2.3.4:99999",
            "999.1.1.1",
            "[::1]:x",
            "1.2.3.4 5.6.7.8",
        ];
        let j = rng.pick(&junk);
        return match header {
            ChainHeader::Forwarded => match rng.below(4) {
                0 => "by=10.0.0.1".to_owned(),
                1 => format!("for=\"{j}\""),
                2 => "proto=https".to_owned(),
                _ => format!("for={}", j.replace([' ', '[', ']'], "_")),
            },
            _ => j.to_string(),
        };
    };
    let port = rng.range(0, 65_535);
    match (header, ip) {
        (ChainHeader::Forwarded, IpAddr::V4(v4)) => {
            let node = match rng.below(3) {
                0 => v4.to_string(),
                1 => format!("\"{v4}:{port}\""),
                _ => format!("\"{v4}\""),
            };
            forwarded_element(rng, &node)
        }
        (ChainHeader::Forwarded, IpAddr::V6(v6)) => {
            let node = if rng.percent(50) {
                format!("\"[{v6}]:{port}\"")
            } else {
                format!("\"[{v6}]\"")
            };
            forwarded_element(rng, &node)
        }
        (_, IpAddr::V4(v4)) => {
            if rng.percent(25) {
                format!("{v4}:{port}")
            } else {
                v4.to_string()
            }
        }
        (_, IpAddr::V6(v6)) => match rng.below(4) {
            0 => format!("[{v6}]:{port}"),
            1 => format!("[{v6}]"),
            _ => v6.to_string(),
        },
    }
}

fn forwarded_element(rng: &mut Rng, node: &str) -> String {
    let name = rng.pick(&["for", "For", "FOR"]);
    let mut pairs = vec![format!("{name}={node}")];
    for _ in 0..rng.below(3) {
        let extra = rng
            .pick(&[
                "proto=https",
                "by=10.0.0.5",
                "host=\"a,b;c\"",
                "x=\"q\\\"uote\"",
            ])
            .to_string();
        let at = rng.index(pairs.len() + 1);
        pairs.insert(at, extra);
    }
    pairs.join(";")
}

/// Renders hops into one or more header lines.
fn chain_lines(rng: &mut Rng, header: ChainHeader, hops: &[Option<IpAddr>]) -> Vec<Vec<u8>> {
    let mut lines = vec![String::new()];
    for (i, hop) in hops.iter().enumerate() {
        if i > 0 {
            if rng.one_in(6) {
                lines.push(String::new());
            } else {
                let separator = *rng.pick(&[", ", ",", " , ", ",, "]);
                lines
                    .last_mut()
                    .expect("at least one line")
                    .push_str(separator);
            }
        }
        let text = hop_text(rng, header, *hop);
        lines.last_mut().expect("at least one line").push_str(&text);
    }
    lines.into_iter().map(String::into_bytes).collect()
}

/// Replaces bytes no header value may hold (HTTP parsers refuse them).
fn sanitize(value: &mut [u8]) {
    for b in value {
        if !((*b >= 0x20 && *b != 0x7f) || *b == b'\t') {
            *b = b'?';
        }
    }
}

fn random_value(rng: &mut Rng) -> Vec<u8> {
    let mut v = match rng.below(5) {
        0 => {
            let n = rng.len(600);
            rng.bytes(n)
        }
        1 => {
            let n = rng.len(40);
            rng.string(n).into_bytes()
        }
        2 => rng
            .pick(&[&b"abc"[..], b"a|b", b"\\", b"\\|", b"|", b"k\xff\xfe", b""])
            .to_vec(),
        3 => "x".repeat(rng.range(200, 300) as usize).into_bytes(),
        _ => format!("key-{}", rng.below(1000)).into_bytes(),
    };
    sanitize(&mut v);
    v
}

fn generate(rng: &mut Rng) -> IdentityInput {
    let trusted: Vec<IpNet> = (0..rng.len(4))
        .map(|_| rng.pick(TRUSTED_POOL).parse().expect("valid nets"))
        .collect();
    let ipv6_prefix = match rng.below(4) {
        0 => *rng.pick(&[1, 32, 48, 63, 64, 65, 127, 128]),
        _ => rng.range(1, 128) as u8,
    };
    let choice = *rng.pick(&[
        ForwardedHeader::Auto,
        ForwardedHeader::Auto,
        ForwardedHeader::Auto,
        ForwardedHeader::XForwardedFor,
        ForwardedHeader::Forwarded,
        ForwardedHeader::XRealIp,
    ]);
    let peer = if rng.one_in(20) {
        None
    } else {
        let ip = if !trusted.is_empty() && rng.percent(70) {
            let net = *rng.pick(&trusted);
            random_in(rng, &net)
        } else {
            random_ip(rng, &trusted)
        };
        Some(SocketAddr::new(ip, rng.range(1, 65_535) as u16))
    };

    let mut headers: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let mut chain = None;
    if rng.percent(85) {
        let header = *rng.pick(&[
            ChainHeader::Xff,
            ChainHeader::Forwarded,
            ChainHeader::XRealIp,
        ]);
        let n = match rng.below(10) {
            0 => rng.range(MAX_HOPS as u64 - 2, MAX_HOPS as u64 + 8) as usize,
            1 => 0,
            _ => rng.range(1, 5) as usize,
        };
        let hops: Vec<Option<IpAddr>> = (0..n)
            .map(|_| (!rng.one_in(8)).then(|| random_ip(rng, &trusted)))
            .collect();
        let mut lines = chain_lines(rng, header, &hops);
        if rng.percent(30) {
            // Mutated: the model no longer applies, the other invariants do.
            for line in &mut lines {
                if rng.percent(60) {
                    mutate(rng, line, DICTIONARY, 4, 16 * 1024);
                    sanitize(line);
                }
            }
        } else {
            chain = Some((header, hops));
        }
        for line in lines {
            headers.push((header.name(), line));
        }
    }
    // Decoys: other forwarding headers the chosen one must win over.
    let chain_name = headers.first().map(|(n, _)| *n);
    for name in FORWARDING {
        if Some(name) != chain_name && rng.one_in(6) {
            let kind = match name {
                XFF => ChainHeader::Xff,
                FORWARDED => ChainHeader::Forwarded,
                _ => ChainHeader::XRealIp,
            };
            let hops = [Some(random_ip(rng, &[]))];
            let mut line = chain_lines(rng, kind, &hops).concat();
            if rng.percent(30) {
                mutate(rng, &mut line, DICTIONARY, 3, 1024);
                sanitize(&mut line);
            }
            let at = rng.index(headers.len() + 1);
            headers.insert(at, (name, line));
        }
    }
    for name in ["x-api-key", "x-b"] {
        for _ in 0..rng.below(3) {
            let value = random_value(rng);
            headers.push((name, value));
        }
    }
    if rng.one_in(4) {
        headers.push(("x-other", random_value(rng)));
    }

    let method = match rng.below(10) {
        0 => {
            let n = rng.range(1, 300) as usize;
            (0..n)
                .map(|_| char::from(*rng.pick(b"ABCXYZ-_!#~09|")))
                .collect()
        }
        _ => rng
            .pick(&[
                "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "PURGE",
            ])
            .to_string(),
    };
    let path = match rng.below(6) {
        0 => format!("/api/{}", rng.below(100)),
        1 => {
            let n = rng.len(400);
            format!("/{}", rng.string(n))
        }
        2 => format!("/{}", "p".repeat(rng.range(240, 300) as usize)),
        3 => "/".to_owned(),
        _ => format!("/api/items/{}|{}\\", rng.below(10), rng.below(10)),
    };
    let client_prefix = {
        let mut p = match rng.below(4) {
            0 => b"for=6.6.6.6;x=\"".to_vec(),
            1 => random_ip(rng, &trusted).to_string().into_bytes(),
            2 => {
                let n = rng.len(40);
                rng.bytes(n)
            }
            _ => b"1.2.3.4, garbage, [::1]:80, for=9.9.9.9".to_vec(),
        };
        if rng.percent(30) {
            mutate(rng, &mut p, DICTIONARY, 3, 256);
        }
        sanitize(&mut p);
        p
    };
    IdentityInput {
        trusted,
        ipv6_prefix,
        choice,
        peer,
        headers,
        method,
        path,
        chain,
        client_prefix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_reaches_believed_headers_and_the_model() {
        let mut rng = Rng::new(1);
        let (mut believed, mut modelled, mut spoofable) = (0, 0, 0);
        for _ in 0..2_000 {
            let input = generate(&mut rng);
            let config = ClientIpConfig {
                trusted_proxies: input.trusted.clone(),
                ipv6_prefix: input.ipv6_prefix,
                header: input.choice,
            };
            let headers = header_map(&input.headers);
            let client = config.client_ip(input.peer.map(|p| p.ip()), &headers);
            let peer = input.peer.map(|p| p.ip().to_canonical());
            if let Some(c) = client.filter(|c| Some(*c) != peer) {
                believed += 1;
                if !config.is_trusted(c) {
                    spoofable += 1;
                }
            }
            let read = consulted(config.header, &headers);
            if matches!((&input.chain, read), (Some((h, _)), Some(n)) if h.name() == n) {
                modelled += 1;
            }
        }
        assert!(
            believed > 400,
            "a header was believed in only {believed} of 2000"
        );
        assert!(
            spoofable > 200,
            "only {spoofable} of 2000 met the prefix checks"
        );
        assert!(
            modelled > 600,
            "the model applied to only {modelled} of 2000"
        );
    }

    #[test]
    fn the_model_agrees_on_hand_written_chains() {
        let config = ClientIpConfig {
            trusted_proxies: vec!["10.0.0.0/8".parse().expect("net")],
            ..ClientIpConfig::default()
        };
        let peer: IpAddr = "10.0.0.1".parse().expect("ip");
        let a: IpAddr = "203.0.113.9".parse().expect("ip");
        let t: IpAddr = "10.1.1.1".parse().expect("ip");
        assert_eq!(walk_model(&config, peer, &[Some(a), Some(t)]), a);
        assert_eq!(walk_model(&config, peer, &[None, Some(a)]), a);
        assert_eq!(walk_model(&config, peer, &[Some(a), None]), peer);
        assert_eq!(walk_model(&config, peer, &[Some(t)]), t);
        assert_eq!(walk_model(&config, peer, &[]), peer);
        assert_eq!(
            walk_model(&config, peer, &vec![Some(t); MAX_HOPS + 1]),
            peer
        );
    }
}
