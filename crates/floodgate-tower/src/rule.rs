//! Rules: which requests a limit applies to, and whose counter each counts on.
//!
//! A [`Rule`] matches requests ([`RequestMatch`]) and keys them ([`KeySpec`]):
//! a rule keyed by `ip` gives every client its own counter, one keyed by
//! `["header:x-api-key", "path"]` one counter per API key and path. A rule
//! whose key cannot be formed (the header is missing, the peer is unknown)
//! does not apply to that request.
//!
//! Besides the parts a config file names, an application can key a rule by
//! what it knows about a request ([`AppKey`]): the authenticated user or
//! tenant an earlier layer put in the request's extensions, or any function
//! of the request.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use floodgate_core::{KeyOverride, Policy};
use http::header::HeaderName;
use http::{Extensions, HeaderMap, Method};
use sha2::{Digest, Sha256};

pub use crate::answer::{StatusSet, StatusSetError};
use crate::descriptor::DescriptorMatch;
use crate::path::starts_with_prefix;
use crate::target::Target;

/// A key part longer than this many bytes is replaced by its hash, so a
/// client cannot grow the store's keys with huge headers or paths.
pub const MAX_KEY_PART_LEN: usize = 256;

/// One component of a rule's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyPart {
    /// `ip`: the client's identity, `ip:<addr>` (IPv6: `ip:<net>/<prefix>`).
    /// Does not apply when the peer address is unknown.
    Ip,
    /// `header:<name>`: `header:<name>:<value>`. Does not apply when the
    /// request lacks the header.
    Header(HeaderName),
    /// `path`: `path:<request path>` (without the query).
    Path,
    /// `method`: `method:<METHOD>`.
    Method,
    /// `global`: one counter shared by every request the rule matches.
    Global,
    /// A part the application forms: `<name>:<value>`. Only from code, never
    /// from a config file. Does not apply when it gives no value.
    App(AppKey),
}

/// A key part formed by the application: from a request extension an
/// earlier layer set (the authenticated user, the tenant), or by any
/// function of the request. Its text in a key is `<name>:<value>`.
///
/// ```
/// use floodgate_tower::{AppKey, KeySpec};
///
/// /// Set by the authentication layer in front of floodgate's.
/// #[derive(Clone)]
/// struct User(String);
/// impl std::fmt::Display for User {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str(&self.0)
///     }
/// }
///
/// // Keys `user:alice`, `user:bob`; requests without a `User` are not counted.
/// let per_user = KeySpec::from(AppKey::extension::<User>("user")?);
/// // Keys `tenant:acme`, from the host name's first label.
/// let per_tenant = KeySpec::from(AppKey::new("tenant", |request| {
///     let host = request.headers().get("host")?.to_str().ok()?;
///     Some(host.split('.').next()?.to_ascii_lowercase())
/// })?);
/// assert_eq!(per_user.to_string(), "app:user");
/// # let _ = per_tenant;
/// # Ok::<(), floodgate_tower::KeySpecError>(())
/// ```
#[derive(Clone)]
pub struct AppKey {
    name: Arc<str>,
    form: Arc<KeyFn>,
}

/// How an [`AppKey`] forms its value.
type KeyFn = dyn Fn(&KeyInput<'_>) -> Option<String> + Send + Sync;

impl AppKey {
    /// A part named `name` (letters, digits, `-` and `_`), whose value
    /// `form` gives; `None` from `form` means the rule does not apply to
    /// that request. Values longer than [`MAX_KEY_PART_LEN`] are hashed like
    /// every other part.
    pub fn new(
        name: &str,
        form: impl Fn(&KeyInput<'_>) -> Option<String> + Send + Sync + 'static,
    ) -> Result<Self, KeySpecError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
        if !valid {
            return Err(KeySpecError::BadAppKeyName(name.to_owned()));
        }
        Ok(AppKey {
            name: name.into(),
            form: Arc::new(form),
        })
    }

    /// A part named `name` whose value is the request extension `T`, as
    /// its `Display` writes it: the rule applies to requests an earlier
    /// layer gave a `T`.
    pub fn extension<T: fmt::Display + Send + Sync + 'static>(
        name: &str,
    ) -> Result<Self, KeySpecError> {
        AppKey::new(name, |request| {
            request.extension::<T>().map(ToString::to_string)
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for AppKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AppKey").field(&self.name).finish()
    }
}

/// Two app keys are the same part when they are the same one (clones of
/// it), not merely when their names are equal.
impl PartialEq for AppKey {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && Arc::ptr_eq(&self.form, &other.form)
    }
}

impl Eq for AppKey {}

impl std::hash::Hash for AppKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

/// Why a key specification could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySpecError {
    /// Not one of the known key parts.
    #[error(
        "{0:?} is not a key: expected \"ip\", \"header:<name>\", \"path\", \"method\" or \"global\""
    )]
    Unknown(String),
    /// `header:` with an invalid or empty name.
    #[error("{0:?} is not a valid header name")]
    BadHeaderName(String),
    /// An empty list of parts.
    #[error("a key needs at least one part")]
    Empty,
    /// The same part listed twice.
    #[error("key part {0} is listed twice")]
    Duplicate(KeyPart),
    /// An [`AppKey`] name that is not 1-64 letters, digits, `-` or `_`.
    #[error("{0:?} is not a valid app key name: 1-64 letters, digits, '-' or '_'")]
    BadAppKeyName(String),
}

impl FromStr for KeyPart {
    type Err = KeySpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ip" => Ok(KeyPart::Ip),
            "path" => Ok(KeyPart::Path),
            "method" => Ok(KeyPart::Method),
            "global" => Ok(KeyPart::Global),
            _ => {
                let name = s
                    .strip_prefix("header:")
                    .ok_or_else(|| KeySpecError::Unknown(s.to_owned()))?;
                HeaderName::from_bytes(name.as_bytes())
                    .map(KeyPart::Header)
                    .map_err(|_| KeySpecError::BadHeaderName(name.to_owned()))
            }
        }
    }
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPart::Ip => f.write_str("ip"),
            KeyPart::Header(name) => write!(f, "header:{name}"),
            KeyPart::Path => f.write_str("path"),
            KeyPart::Method => f.write_str("method"),
            KeyPart::Global => f.write_str("global"),
            KeyPart::App(key) => write!(f, "app:{}", key.name),
        }
    }
}

/// What a rule counts by: one part, or several forming a composite key.
///
/// A one-part key reads like an identity (`ip:192.0.2.7`,
/// `header:x-api-key:abc`), so a penalty block on it can be named the same
/// way. Parts of a composite key are joined by `|`, with `\` and `|` inside a
/// part escaped by `\`, so two different requests never share a key by
/// accident of concatenation.
///
/// ```
/// use floodgate_tower::{KeyPart, KeySpec};
///
/// let spec = KeySpec::parse_list(["header:x-api-key", "path"])?;
/// assert_eq!(spec.parts(), &[KeyPart::Header("x-api-key".parse()?), KeyPart::Path]);
/// let one: KeySpec = "ip".parse()?;
/// assert_eq!(one.to_string(), "ip");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeySpec(Vec<KeyPart>);

impl KeySpec {
    /// A key of `parts`: at least one, none twice.
    pub fn new(parts: Vec<KeyPart>) -> Result<Self, KeySpecError> {
        if parts.is_empty() {
            return Err(KeySpecError::Empty);
        }
        for (i, p) in parts.iter().enumerate() {
            if parts[..i].contains(p) {
                return Err(KeySpecError::Duplicate(p.clone()));
            }
        }
        Ok(KeySpec(parts))
    }

    /// A key from configuration strings such as `["ip", "path"]`.
    pub fn parse_list<'a>(parts: impl IntoIterator<Item = &'a str>) -> Result<Self, KeySpecError> {
        KeySpec::new(
            parts
                .into_iter()
                .map(str::parse)
                .collect::<Result<_, _>>()?,
        )
    }

    /// The parts, in order.
    pub fn parts(&self) -> &[KeyPart] {
        &self.0
    }

    /// The headers this key is formed from.
    pub(crate) fn header_names(&self) -> impl Iterator<Item = &HeaderName> {
        self.0.iter().filter_map(|part| match part {
            KeyPart::Header(name) => Some(name),
            _ => None,
        })
    }

    /// The key of a request, or `None` when a part cannot be formed.
    pub(crate) fn key(&self, request: &KeyInput<'_>) -> Option<String> {
        if let [only] = self.0.as_slice() {
            return Some(key_part(only, request)?.into_owned());
        }
        let mut key = String::new();
        for (i, part) in self.0.iter().enumerate() {
            if i > 0 {
                key.push('|');
            }
            for c in key_part(part, request)?.chars() {
                if c == '|' || c == '\\' {
                    key.push('\\');
                }
                key.push(c);
            }
        }
        Some(key)
    }
}

impl From<AppKey> for KeyPart {
    fn from(key: AppKey) -> Self {
        KeyPart::App(key)
    }
}

impl From<AppKey> for KeySpec {
    fn from(key: AppKey) -> Self {
        KeySpec(vec![KeyPart::App(key)])
    }
}

impl From<KeyPart> for KeySpec {
    fn from(part: KeyPart) -> Self {
        KeySpec(vec![part])
    }
}

impl FromStr for KeySpec {
    type Err = KeySpecError;

    /// One part, e.g. `"ip"`; use [`KeySpec::parse_list`] for composite keys.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<KeyPart>().map(KeySpec::from)
    }
}

impl fmt::Display for KeySpec {
    /// `ip`, or a composite as `["header:x-api-key", "path"]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [only] = self.0.as_slice() {
            return write!(f, "{only}");
        }
        f.write_str("[")?;
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "\"{p}\"")?;
        }
        f.write_str("]")
    }
}

/// What key parts are formed from: the request as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct KeyInput<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) extensions: Option<&'a Extensions>,
    /// The client's identity (`ip:...`), when the peer is known.
    pub(crate) client: Option<&'a Target>,
}

impl<'a> KeyInput<'a> {
    /// The request method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The request's canonical path (see [`crate::path`]), without the query.
    pub fn path(&self) -> &'a str {
        self.path
    }

    /// The request headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The request extension `T`, when the request carried extensions (the
    /// layer passes them; [`Limiter::check_request`](crate::Limiter::check_request)
    /// has none) and one of type `T`.
    pub fn extension<T: Send + Sync + 'static>(&self) -> Option<&'a T> {
        self.extensions?.get::<T>()
    }

    /// The client's identity, `ip:<addr>` or `ip:<net>/<prefix>`, when the
    /// peer is known.
    pub fn client(&self) -> Option<&'a Target> {
        self.client
    }
}

fn key_part<'a>(part: &KeyPart, request: &KeyInput<'a>) -> Option<Cow<'a, str>> {
    let text = match part {
        KeyPart::Ip => {
            let mut text = String::with_capacity(18);
            request.client?.push_to(&mut text);
            text
        }
        KeyPart::Header(name) => {
            let mut values = request.headers.get_all(name).iter();
            let first = values.next()?;
            let mut bytes = format!("header:{name}:").into_bytes();
            bytes.extend_from_slice(first.as_bytes());
            for v in values {
                bytes.push(b',');
                bytes.extend_from_slice(v.as_bytes());
            }
            match String::from_utf8(bytes) {
                Ok(s) => s,
                // Header values may carry any byte: name them by their hash.
                Err(e) => return Some(Cow::Owned(hashed(e.as_bytes()))),
            }
        }
        KeyPart::Path => format!("path:{}", request.path),
        KeyPart::Method => format!("method:{}", request.method),
        KeyPart::Global => return Some(Cow::Borrowed("global")),
        KeyPart::App(key) => {
            let value = (key.form)(request)?;
            format!("{}:{value}", key.name)
        }
    };
    Some(bounded_key(text))
}

/// `key` itself (borrowed or owned, as given: never copied), or
/// `sha256:<hex>` of it when it is longer than [`MAX_KEY_PART_LEN`] bytes.
/// Applied to every key part, and to the keys of the decision API, so stored
/// keys stay small whatever a client sends.
pub fn bounded_key<'a>(key: impl Into<Cow<'a, str>>) -> Cow<'a, str> {
    let key = key.into();
    if key.len() > MAX_KEY_PART_LEN {
        Cow::Owned(hashed(key.as_bytes()))
    } else {
        key
    }
}

/// `sha256:` and the hex of the first 128 bits of the SHA-256 of `bytes`.
///
/// Every instance sharing a store must turn the same long value into the
/// same key, whatever its build, so the hash has to be fixed and specified
/// (std's `DefaultHasher` is neither), and hard to collide so one client
/// cannot craft a value that lands on another client's counter. 128 bits:
/// collisions need ~2^64 attempts.
fn hashed(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    format!("sha256:{}", base16ct::lower::encode_string(&digest[..16]))
}

/// Which requests a rule applies to. Every condition given must hold;
/// [`RequestMatch::default`] matches every request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMatch {
    /// The request's [canonical path](crate::path) starts with this string
    /// (`"/api/"`). A plain string prefix: `"/api"` also matches `/apiary`.
    /// Case-sensitive, as paths are.
    pub path_prefix: Option<String>,
    /// The request method is one of these; `GET` also matches `HEAD`, which
    /// servers answer as a `GET` without the body.
    pub methods: Option<Vec<Method>>,
}

impl RequestMatch {
    /// Whether a request with `method` and the canonical path `path` is
    /// matched.
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        self.path_prefix
            .as_deref()
            .is_none_or(|prefix| starts_with_prefix(path, prefix))
            && self.methods.as_ref().is_none_or(|m| {
                m.contains(method) || (method == Method::HEAD && m.contains(&Method::GET))
            })
    }
}

/// One rate limit: the requests it matches, how they are keyed, the policy
/// and what each request costs.
///
/// ```
/// use std::time::Duration;
/// use floodgate_core::{Algorithm, Policy};
/// use floodgate_tower::{RequestMatch, Rule};
///
/// let rule = Rule::new(
///     "api-per-client",
///     "ip".parse()?,
///     Policy::new(Algorithm::SlidingWindow, 100, Duration::from_secs(60))?,
/// )
/// .with_match(RequestMatch { path_prefix: Some("/api/".into()), methods: None });
/// assert_eq!(rule.cost, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Unique among the rules; names the counters, the headers, the logs and
    /// the metrics.
    pub name: String,
    /// Which requests the rule applies to.
    pub matcher: RequestMatch,
    /// Whose counter a request counts on.
    pub key: KeySpec,
    /// The limit.
    pub policy: Policy,
    /// Cost units each request takes (1 ..= the policy's capacity).
    pub cost: u64,
    /// Count, log and send headers, but never refuse.
    pub shadow: bool,
    /// Charge only answers with these statuses: the request is checked
    /// before it goes ahead (refused if the key is already over the limit,
    /// charged nothing) and charged once its answer's status is known.
    pub count_status: Option<StatusSet>,
    /// The answer names the request's cost in this header, charged once the
    /// answer is known (see [`Rule::with_cost_header`]).
    pub cost_header: Option<HeaderName>,
    /// Per-key limits fixed with the rule (`[[rule.override]]`); one put
    /// at run time (kept in the store) wins over one of these.
    pub overrides: Vec<KeyOverride>,
    /// What a request over the limit gets: a 429 at once, or a wait for
    /// its turn.
    pub on_limit: OnLimit,
    /// `algorithm = "concurrency"`: a limit on requests in flight, not on
    /// a rate; the rule's `policy` then only names its limit.
    pub concurrency: Option<ConcurrencyLimit>,
    /// `descriptor = { domain, entries }`: the rule decides the Envoy rate
    /// limit descriptors it matches, keyed by their values (see
    /// [`descriptor`](crate::descriptor)), and no request through the
    /// gateway or `auth_request`.
    pub descriptor: Option<DescriptorMatch>,
}

/// A limit on the requests of one key in flight at once, across every
/// instance sharing the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcurrencyLimit {
    /// Requests in flight at once.
    pub limit: u64,
    /// How long a slot outlives an instance that crashed holding it; a
    /// long request renews its slot while it runs.
    pub lease: std::time::Duration,
}

/// What a rule does with a request over its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnLimit {
    /// Refuse it at once (429).
    #[default]
    Reject,
    /// Hold it until the limit admits it, if that is at most `max` after it
    /// arrived; else refuse it at once.
    Delay {
        /// The longest a request is held.
        max: std::time::Duration,
    },
}

impl Rule {
    /// A rule matching every request, costing 1, enforcing.
    pub fn new(name: impl Into<String>, key: KeySpec, policy: Policy) -> Self {
        Rule {
            name: name.into(),
            matcher: RequestMatch::default(),
            key,
            policy,
            cost: 1,
            shadow: false,
            count_status: None,
            cost_header: None,
            overrides: Vec::new(),
            on_limit: OnLimit::Reject,
            concurrency: None,
            descriptor: None,
        }
    }

    /// A rule limiting `key`'s requests in flight to `limit` at once, each
    /// slot a lease of `lease` (renewed while its request runs).
    pub fn concurrency(
        name: impl Into<String>,
        key: KeySpec,
        limit: u64,
        lease: std::time::Duration,
    ) -> Result<Self, floodgate_core::PolicyError> {
        // The policy only carries the limit (headers, validation).
        let policy = Policy::new(floodgate_core::Algorithm::FixedWindow, limit, lease)?;
        Ok(Rule {
            concurrency: Some(ConcurrencyLimit { limit, lease }),
            ..Rule::new(name, key, policy)
        })
    }

    /// The same rule holding a request over the limit until it is admitted,
    /// for at most `max` (`on_limit = "delay"`, `max_delay`).
    pub fn with_delay(self, max: std::time::Duration) -> Self {
        Rule {
            on_limit: OnLimit::Delay { max },
            ..self
        }
    }

    /// The same rule with `o` in force for `o.key` (its `rule` and
    /// `expires` are ignored).
    pub fn with_override(mut self, o: KeyOverride) -> Self {
        self.overrides.retain(|existing| existing.key != o.key);
        self.overrides.push(KeyOverride {
            rule: self.name.clone(),
            expires: None,
            ..o
        });
        self
    }

    /// The same rule deciding the Envoy rate limit descriptors `m` matches
    /// instead of requests.
    pub fn with_descriptor(self, m: DescriptorMatch) -> Self {
        Rule {
            descriptor: Some(m),
            ..self
        }
    }

    /// The same rule charging only answers whose status is in `statuses`
    /// (e.g. failed logins: `401, 403`).
    pub fn with_count_status(self, statuses: StatusSet) -> Self {
        Rule {
            count_status: Some(statuses),
            ..self
        }
    }

    /// The same rule charging what the answer's `header` names: a whole
    /// number of cost units, 0 for none. A missing or malformed value
    /// charges the rule's `cost`; more than the rule holds charges what it
    /// holds. The header is removed from the answer the client gets.
    pub fn with_cost_header(self, header: HeaderName) -> Self {
        Rule {
            cost_header: Some(header),
            ..self
        }
    }

    /// Whether the rule is charged once the answer is known
    /// (`count_status` or `cost_header`), not when the request is checked.
    pub fn charges_on_answer(&self) -> bool {
        self.count_status.is_some() || self.cost_header.is_some()
    }

    /// The same rule applying only to `matcher`'s requests.
    pub fn with_match(self, matcher: RequestMatch) -> Self {
        Rule { matcher, ..self }
    }

    /// The same rule with each request costing `cost`.
    pub fn with_cost(self, cost: u64) -> Self {
        Rule { cost, ..self }
    }

    /// The same rule in shadow mode (`true`) or enforcing (`false`).
    pub fn with_shadow(self, shadow: bool) -> Self {
        Rule { shadow, ..self }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderValue;

    /// The whole SHA-256 of `data` in hex, as the FIPS 180-4 vectors give it.
    fn sha256_hex(data: &[u8]) -> String {
        base16ct::lower::encode_string(&Sha256::digest(data))
    }

    #[test]
    fn sha256_known_vectors() {
        // FIPS 180-4 examples and the empty string.
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        assert_eq!(
            sha256_hex(&[b'a'; 1_000_000]),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }

    #[test]
    fn sha256_block_boundaries() {
        // 55, 56 and 64 bytes exercise every padding case; all must differ.
        let a = Sha256::digest([b'x'; 55]);
        let b = Sha256::digest([b'x'; 56]);
        let c = Sha256::digest([b'x'; 64]);
        assert_ne!(a, b);
        assert_ne!(b, c);
        assert_eq!(
            sha256_hex(&[b'a'; 64]),
            "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"
        );
        // The stored key is the first half of it: keys written by builds
        // with the hand-written SHA-256 are found again.
        assert_eq!(
            hashed(&[b'a'; 64]),
            "sha256:ffe054fe7ae0cb6dc65c3af9b61d5209"
        );
    }

    fn spec(parts: &[&str]) -> KeySpec {
        KeySpec::parse_list(parts.iter().copied()).unwrap()
    }

    fn info<'a>(headers: &'a HeaderMap, client: Option<&'a Target>, path: &'a str) -> KeyInput<'a> {
        KeyInput {
            method: &Method::GET,
            path,
            headers,
            extensions: None,
            client,
        }
    }

    #[derive(Clone)]
    struct User(&'static str);

    impl fmt::Display for User {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    #[test]
    fn app_keys_read_extensions_and_functions() {
        let headers = HeaderMap::new();
        let client: Target = "ip:192.0.2.7".parse().unwrap();
        let mut extensions = Extensions::new();
        extensions.insert(User("alice|admin"));
        let with = KeyInput {
            extensions: Some(&extensions),
            ..info(&headers, Some(&client), "/api/items")
        };
        let without = info(&headers, Some(&client), "/api/items");

        let user = AppKey::extension::<User>("user").unwrap();
        let per_user = KeySpec::from(KeyPart::App(user.clone()));
        assert_eq!(per_user.to_string(), "app:user");
        assert_eq!(per_user.key(&with).unwrap(), "user:alice|admin");
        assert_eq!(
            per_user.key(&without),
            None,
            "no User: the rule does not apply"
        );

        let first_segment =
            AppKey::new("section", |r| Some(r.path().split('/').nth(1)?.to_owned())).unwrap();
        let composite = KeySpec::new(vec![
            KeyPart::App(user.clone()),
            KeyPart::App(first_segment.clone()),
            KeyPart::Ip,
        ])
        .unwrap();
        assert_eq!(
            composite.key(&with).unwrap(),
            "user:alice\\|admin|section:api|ip:192.0.2.7",
            "an app part is escaped like any other"
        );

        let long = AppKey::new("long", |_| Some("v".repeat(400))).unwrap();
        let key = KeySpec::from(KeyPart::App(long)).key(&without).unwrap();
        assert!(key.starts_with("sha256:") && key.len() < 100, "{key}");

        // The same part, not merely the same name.
        assert_eq!(KeyPart::App(user.clone()), KeyPart::App(user.clone()));
        let other = AppKey::extension::<User>("user").unwrap();
        assert_ne!(KeyPart::App(user.clone()), KeyPart::App(other));
        assert!(matches!(
            KeySpec::new(vec![KeyPart::App(user.clone()), KeyPart::App(user)]),
            Err(KeySpecError::Duplicate(_))
        ));
        for bad in ["", "has space", "a:b", &"n".repeat(65)] {
            assert!(
                matches!(
                    AppKey::new(bad, |_| None),
                    Err(KeySpecError::BadAppKeyName(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn parses_parts() {
        assert_eq!("ip".parse::<KeyPart>(), Ok(KeyPart::Ip));
        assert_eq!("global".parse::<KeyPart>(), Ok(KeyPart::Global));
        assert_eq!(
            "header:X-Api-Key".parse::<KeyPart>(),
            Ok(KeyPart::Header(HeaderName::from_static("x-api-key")))
        );
        assert!(matches!(
            "header:".parse::<KeyPart>(),
            Err(KeySpecError::BadHeaderName(_))
        ));
        assert!(matches!(
            "user".parse::<KeyPart>(),
            Err(KeySpecError::Unknown(_))
        ));
        assert!(matches!(
            "IP".parse::<KeyPart>(),
            Err(KeySpecError::Unknown(_))
        ));
        assert_eq!(KeySpec::parse_list([]), Err(KeySpecError::Empty));
        assert_eq!(
            KeySpec::parse_list(["ip", "ip"]),
            Err(KeySpecError::Duplicate(KeyPart::Ip))
        );
        for s in ["ip", "header:x-api-key", "path", "method", "global"] {
            assert_eq!(s.parse::<KeyPart>().unwrap().to_string(), s);
        }
        assert_eq!(spec(&["ip", "path"]).to_string(), r#"["ip", "path"]"#);
    }

    #[test]
    fn keys_of_each_part() {
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_static("abc"));
        let client: Target = "ip:192.0.2.7".parse().unwrap();
        let req = KeyInput {
            method: &Method::POST,
            ..info(&headers, Some(&client), "/api/items")
        };
        assert_eq!(spec(&["ip"]).key(&req).unwrap(), "ip:192.0.2.7");
        assert_eq!(
            spec(&["header:x-api-key"]).key(&req).unwrap(),
            "header:x-api-key:abc"
        );
        assert_eq!(spec(&["path"]).key(&req).unwrap(), "path:/api/items");
        assert_eq!(spec(&["method"]).key(&req).unwrap(), "method:POST");
        assert_eq!(spec(&["global"]).key(&req).unwrap(), "global");
        assert_eq!(
            spec(&["ip", "method", "path"]).key(&req).unwrap(),
            "ip:192.0.2.7|method:POST|path:/api/items"
        );
    }

    #[test]
    fn missing_parts_mean_no_key() {
        let headers = HeaderMap::new();
        let req = info(&headers, None, "/");
        assert_eq!(spec(&["ip"]).key(&req), None, "unknown peer");
        assert_eq!(
            spec(&["header:x-api-key"]).key(&req),
            None,
            "missing header"
        );
        assert_eq!(spec(&["path", "header:x-api-key"]).key(&req), None);
        assert_eq!(
            spec(&["path", "global"]).key(&req).unwrap(),
            "path:/|global"
        );
    }

    #[test]
    fn composite_keys_are_unambiguous() {
        // Two different requests whose naive concatenations would collide.
        let mut a = HeaderMap::new();
        a.insert("x-a", HeaderValue::from_static("1|header:x-b:2"));
        a.insert("x-b", HeaderValue::from_static("3"));
        let mut b = HeaderMap::new();
        b.insert("x-a", HeaderValue::from_static("1"));
        b.insert("x-b", HeaderValue::from_static("2|header:x-b:3"));
        let s = spec(&["header:x-a", "header:x-b"]);
        let ka = s.key(&info(&a, None, "/")).unwrap();
        let kb = s.key(&info(&b, None, "/")).unwrap();
        assert_ne!(ka, kb);
        assert_eq!(ka, r"header:x-a:1\|header:x-b:2|header:x-b:3");
        let mut c = HeaderMap::new();
        c.insert("x-a", HeaderValue::from_static("\\"));
        c.insert("x-b", HeaderValue::from_static("x"));
        let mut d = HeaderMap::new();
        d.insert("x-a", HeaderValue::from_static("\\|header:x-b:x"));
        d.insert("x-b", HeaderValue::from_static("x"));
        assert_ne!(s.key(&info(&c, None, "/")), s.key(&info(&d, None, "/")));
    }

    #[test]
    fn long_and_binary_parts_are_hashed() {
        let long = "a".repeat(10_000);
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_str(&long).unwrap());
        let key = spec(&["header:x-api-key"])
            .key(&info(&headers, None, "/"))
            .unwrap();
        assert!(key.starts_with("sha256:"), "{key}");
        assert_eq!(key.len(), "sha256:".len() + 32);
        // Stable: the same value gives the same key (instances must agree).
        assert_eq!(
            Some(key.clone()),
            spec(&["header:x-api-key"]).key(&info(&headers, None, "/"))
        );
        // A different long value, a different key.
        headers.insert(
            "x-api-key",
            HeaderValue::from_str(&format!("{long}b")).unwrap(),
        );
        assert_ne!(
            Some(key),
            spec(&["header:x-api-key"]).key(&info(&headers, None, "/"))
        );

        let long_path = format!("/{}", "p".repeat(300));
        let key = spec(&["path"])
            .key(&info(&headers, None, &long_path))
            .unwrap();
        assert!(key.starts_with("sha256:"));
        // Exactly 256 bytes is kept as is.
        let edge = format!("/{}", "p".repeat(MAX_KEY_PART_LEN - "path:/".len()));
        assert_eq!(
            spec(&["path"]).key(&info(&headers, None, &edge)).unwrap(),
            format!("path:{edge}")
        );

        let mut binary = HeaderMap::new();
        binary.insert("x-api-key", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        let key = spec(&["header:x-api-key"])
            .key(&info(&binary, None, "/"))
            .unwrap();
        assert!(key.starts_with("sha256:"));
        assert_eq!(bounded_key("short"), "short");
    }

    #[test]
    fn multiple_header_values_are_joined() {
        let mut headers = HeaderMap::new();
        headers.append("x-api-key", HeaderValue::from_static("a"));
        headers.append("x-api-key", HeaderValue::from_static("b"));
        assert_eq!(
            spec(&["header:x-api-key"])
                .key(&info(&headers, None, "/"))
                .unwrap(),
            "header:x-api-key:a,b"
        );
    }

    #[test]
    fn request_match() {
        let any = RequestMatch::default();
        assert!(any.matches(&Method::DELETE, "/anything"));
        let m = RequestMatch {
            path_prefix: Some("/api/".into()),
            methods: Some(vec![Method::GET, Method::POST]),
        };
        assert!(m.matches(&Method::GET, "/api/items"));
        assert!(!m.matches(&Method::PUT, "/api/items"));
        assert!(!m.matches(&Method::GET, "/apx"));
        assert!(!m.matches(&Method::GET, "/api"));
    }
}
