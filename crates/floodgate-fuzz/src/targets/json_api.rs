//! The HTTP JSON endpoints, through the server's real axum routers with
//! `tower::ServiceExt::oneshot`: the decision API (`POST /v1/check` on the
//! gateway router) and the admin API (`POST /admin/blocks`,
//! `DELETE /admin/blocks/<target>`, `GET`/`DELETE /admin/rules/<rule>/keys/<key>`,
//! with and without the bearer token).
//!
//! Bodies are JSON objects built from each endpoint's fields (right and
//! wrong types, values at and across their bounds, unknown and duplicate
//! fields, escapes, huge strings, NUL), often mutated byte by byte; paths
//! carry any percent-encoded text. Every input runs on a fresh instance
//! (memory store), so its answer depends on the input alone. Invariants:
//! - no panic and never a 5xx;
//! - a body that is not the endpoint's JSON object is a 400 whose
//!   `application/problem+json` body has a non-empty `detail`; so is every
//!   other refusal from a handler;
//! - a well-formed body gets exactly the status its values call for (an
//!   independent reading of the documented rules: 400 for an empty key, a
//!   bad target, a ttl outside 1ms..=366d or a reason over 1024 bytes; 404
//!   for an unknown rule; 422 for a cost of 0 or over the rule's capacity;
//!   else 200 or 201), and a success body says what was asked: the
//!   decision of a fresh key, the block's canonical target;
//! - `/admin/*` without the right token is a 401 and changes nothing.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use floodgate_core::duration::parse_duration;
use floodgate_core::{MAX_WINDOW, MemoryStore};
use floodgate_server::app::gateway_router;
use floodgate_server::config::AnyStore;
use floodgate_server::config::{self, Overrides, Settings};
use floodgate_server::state::AppState;
use floodgate_tower::Target;
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;
use tower::ServiceExt;

use crate::harness::{FuzzTarget, clip};
use crate::mutate::{hex, mutate};
use crate::rng::Rng;

const TOKEN: &str = "fuzz-admin-token";

/// The instance every input runs against: rules of each algorithm, at the
/// bounds, with dots in a name, shadow and a penalty.
const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
[store]
backend = "memory"
max_keys = 1000
[admin]
listen = "127.0.0.1:0"
token = "fuzz-admin-token"
[[rule]]
name = "api"
key = "header:x-api-key"
algorithm = "token_bucket"
limit = 100
window = "1m"
burst = 20
[[rule]]
name = "login"
algorithm = "sliding_log"
limit = 3
window = "10s"
block_for = "15m"
[[rule]]
name = "shadowed"
algorithm = "fixed_window"
limit = 1
window = "1ms"
shadow = true
[[rule]]
name = "big.rule_1-x"
algorithm = "sliding_window"
limit = 1000000000000
window = "366d"
"#;

/// The rules of [`CONFIG`] and their capacities.
const RULES: &[(&str, u64)] = &[
    ("api", 20),
    ("login", 3),
    ("shadowed", 1),
    ("big.rule_1-x", 1_000_000_000_000),
];

const DICTIONARY: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"\\udc00",
    b"\\ud83d\\ude00",
    b"\\\"",
    b"null",
    b"true",
    b"-0",
    b"1e999",
    b"0.0",
    b"\"rule\":",
    b"\"key\":",
    b"\"cost\":",
    b"\"target\":",
    b"\"ttl\":",
    b"\"reason\":",
    b"\"ip:203.0.113.7\"",
    b"\"10m\"",
    b"\xef\xbb\xbf",
    b"\xff",
];

/// Which endpoint an input exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Check,
    AddBlock,
    RemoveBlock,
    GetKey,
    ResetKey,
}

/// One generated request.
#[derive(Clone)]
pub struct ApiInput {
    endpoint: Endpoint,
    /// The JSON body of `Check` and `AddBlock`.
    body: Vec<u8>,
    /// The path arguments of the others, before percent-encoding.
    args: Vec<String>,
    /// Whether the admin token is sent (a wrong one otherwise).
    authorized: bool,
}

impl fmt::Debug for ApiInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} authorized {} args {:?} body hex {} (as text: {:?})",
            self.endpoint,
            self.authorized,
            self.args.iter().map(|a| clip(a, 300)).collect::<Vec<_>>(),
            hex(&self.body),
            clip(&String::from_utf8_lossy(&self.body), 2000)
        )
    }
}

/// The JSON API target.
pub struct JsonApiTarget {
    runtime: tokio::runtime::Runtime,
    settings: Settings,
}

impl fmt::Debug for JsonApiTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonApiTarget").finish_non_exhaustive()
    }
}

impl JsonApiTarget {
    /// A target with its own single-threaded runtime.
    ///
    /// # Panics
    /// When the runtime cannot be built or the built-in config is invalid.
    pub fn new() -> Self {
        let settings = match config::parse(CONFIG, None, &Overrides::default()) {
            Ok(s) => s,
            Err(e) => panic!("the fuzz instance's config is invalid: {e}"),
        };
        JsonApiTarget {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime"),
            settings,
        }
    }
}

impl Default for JsonApiTarget {
    fn default() -> Self {
        Self::new()
    }
}

/// A response, read whole.
struct Answer {
    status: StatusCode,
    content_type: String,
    body: Vec<u8>,
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.status,
            self.content_type,
            clip(&String::from_utf8_lossy(&self.body), 500)
        )
    }
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{self}: not JSON: {e}"))
    }

    /// A problem+json body with a `detail` that says something.
    fn assert_problem(&self) {
        assert_eq!(
            self.content_type, "application/problem+json",
            "refusal without a problem body: {self}"
        );
        let json = self.json();
        let detail = json["detail"].as_str().unwrap_or("");
        assert!(
            !detail.trim().is_empty(),
            "a problem without detail: {self}"
        );
        assert_eq!(json["status"], self.status.as_u16(), "{self}");
    }
}

async fn send<S>(router: S, method: Method, uri: &str, auth: bool, body: Vec<u8>) -> Answer
where
    S: tower::Service<
            Request<Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        >,
{
    let token = if auth { TOKEN } else { "wrong" };
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("a valid request");
    let response = router.oneshot(request).await.expect("infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a readable body")
        .to_bytes()
        .to_vec();
    Answer {
        status,
        content_type,
        body,
    }
}

impl FuzzTarget for JsonApiTarget {
    type Input = ApiInput;

    fn name(&self) -> &'static str {
        "api"
    }

    fn generate(&mut self, rng: &mut Rng) -> ApiInput {
        generate(rng)
    }

    fn check(&mut self, input: &ApiInput) {
        let settings = self.settings.clone();
        self.runtime.block_on(async {
            let state = AppState::new(settings, AnyStore::Memory(MemoryStore::new(1000)))
                .expect("a valid instance");
            check_input(&state, input).await;
        });
    }

    fn describe(&self, input: &ApiInput) -> String {
        format!("{input:?}")
    }
}

async fn check_input(state: &Arc<AppState>, input: &ApiInput) {
    let admin = floodgate_server::admin::router(state.clone());
    let encoded: Vec<String> = input
        .args
        .iter()
        .map(|a| utf8_percent_encode(a, NON_ALPHANUMERIC).to_string())
        .collect();
    let answer = match input.endpoint {
        Endpoint::Check => {
            send(
                gateway_router(state.clone()),
                Method::POST,
                "/v1/check",
                true,
                input.body.clone(),
            )
            .await
        }
        Endpoint::AddBlock => {
            send(
                admin.clone(),
                Method::POST,
                "/admin/blocks",
                input.authorized,
                input.body.clone(),
            )
            .await
        }
        Endpoint::RemoveBlock => {
            let uri = format!("/admin/blocks/{}", encoded[0]);
            send(
                admin.clone(),
                Method::DELETE,
                &uri,
                input.authorized,
                Vec::new(),
            )
            .await
        }
        Endpoint::GetKey | Endpoint::ResetKey => {
            let uri = format!("/admin/rules/{}/keys/{}", encoded[0], encoded[1]);
            let method = if input.endpoint == Endpoint::GetKey {
                Method::GET
            } else {
                Method::DELETE
            };
            send(admin.clone(), method, &uri, input.authorized, Vec::new()).await
        }
    };
    assert!(!answer.status.is_server_error(), "a server error: {answer}");
    // An empty target or key matches no route: the admin fallback answers,
    // before any token check. (An empty rule name does match its route.)
    if input.args.last().is_some_and(String::is_empty) {
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{answer}");
        answer.assert_problem();
        return;
    }
    if input.endpoint != Endpoint::Check && !input.authorized {
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer}");
        answer.assert_problem();
        let blocks = send(admin, Method::GET, "/admin/blocks", true, Vec::new()).await;
        assert_eq!(
            blocks.json()["blocks"],
            Value::Array(Vec::new()),
            "an unauthorized request changed the blocks"
        );
        return;
    }
    match input.endpoint {
        Endpoint::Check => check_decision(&input.body, &answer),
        Endpoint::AddBlock => {
            check_block(&input.body, &answer);
            // A block of a few milliseconds may be over before it is listed.
            let lasting = expected_block(&input.body).is_ok_and(|(_, _, ttl)| ttl.as_secs() >= 60);
            if answer.status == StatusCode::CREATED && lasting {
                let blocks = send(admin, Method::GET, "/admin/blocks", true, Vec::new()).await;
                let listed = blocks.json()["blocks"].clone();
                assert_eq!(
                    listed[0]["target"],
                    answer.json()["target"],
                    "the new block is not listed: {listed}"
                );
            }
        }
        Endpoint::RemoveBlock => {
            // A fresh instance has no block to lift.
            assert_eq!(answer.status, StatusCode::NOT_FOUND, "{answer}");
            answer.assert_problem();
        }
        Endpoint::GetKey | Endpoint::ResetKey => {
            let (rule, key) = (&input.args[0], &input.args[1]);
            let known = RULES.iter().find(|(n, _)| n == rule);
            let expected = match known {
                None => StatusCode::NOT_FOUND,
                Some(_) if input.endpoint == Endpoint::GetKey => StatusCode::OK,
                Some(_) => StatusCode::NO_CONTENT,
            };
            assert_eq!(answer.status, expected, "{answer}");
            if answer.status == StatusCode::OK {
                let json = answer.json();
                assert_eq!(json["rule"].as_str(), Some(rule.as_str()), "{answer}");
                assert_eq!(json["key"].as_str(), Some(key.as_str()), "{answer}");
                let capacity = known.map_or(0, |(_, c)| *c);
                assert_eq!(json["remaining"].as_u64(), Some(capacity), "{answer}");
            } else if answer.status != StatusCode::NO_CONTENT {
                answer.assert_problem();
            }
        }
    }
}

/// A JSON object's members in order, duplicates kept; `None` when the body
/// is not one JSON object.
fn members(body: &[u8]) -> Option<Vec<(String, Value)>> {
    struct Members(Vec<(String, Value)>);
    impl<'de> serde::Deserialize<'de> for Members {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Members;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Members, A::Error> {
                    let mut out = Vec::new();
                    while let Some(entry) = map.next_entry::<String, Value>()? {
                        out.push(entry);
                    }
                    Ok(Members(out))
                }
            }
            d.deserialize_map(Visit)
        }
    }
    serde_json::from_slice::<Members>(body).ok().map(|m| m.0)
}

/// The members of a well-formed body: only `allowed` names, none twice.
fn fields<'a>(
    members: &'a [(String, Value)],
    allowed: &[&str],
) -> Option<Vec<(&'a str, &'a Value)>> {
    let mut seen: Vec<(&str, &Value)> = Vec::new();
    for (name, value) in members {
        if !allowed.contains(&name.as_str()) || seen.iter().any(|(n, _)| n == name) {
            return None;
        }
        seen.push((name, value));
    }
    Some(seen)
}

fn field<'a>(fields: &[(&str, &'a Value)], name: &str) -> Option<&'a Value> {
    fields.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// `POST /v1/check`: what the documented rules say the answer is.
fn expected_check(body: &[u8]) -> Result<(String, u64, u64), StatusCode> {
    let bad = StatusCode::BAD_REQUEST;
    let members = members(body).ok_or(bad)?;
    let fields = fields(&members, &["rule", "key", "cost"]).ok_or(bad)?;
    let rule = field(&fields, "rule").and_then(Value::as_str).ok_or(bad)?;
    let key = field(&fields, "key").and_then(Value::as_str).ok_or(bad)?;
    let cost = match field(&fields, "cost") {
        None => 1,
        Some(v) => v.as_u64().ok_or(bad)?,
    };
    if key.is_empty() {
        return Err(bad);
    }
    let (_, capacity) = RULES
        .iter()
        .find(|(n, _)| *n == rule)
        .ok_or(StatusCode::NOT_FOUND)?;
    if cost == 0 || cost > *capacity {
        return Err(StatusCode::UNPROCESSABLE_ENTITY);
    }
    Ok((rule.to_owned(), cost, *capacity))
}

fn check_decision(body: &[u8], answer: &Answer) {
    match expected_check(body) {
        Err(status) => {
            assert_eq!(answer.status, status, "{answer}");
            answer.assert_problem();
        }
        Ok((rule, cost, capacity)) => {
            assert_eq!(answer.status, StatusCode::OK, "rule {rule}: {answer}");
            let json = answer.json();
            assert_eq!(
                json["allowed"],
                Value::Bool(true),
                "a fresh key refused: {answer}"
            );
            assert_eq!(
                json["remaining"].as_u64(),
                Some(capacity - cost),
                "{answer}"
            );
            assert!(json["limit"].as_u64().is_some(), "{answer}");
            assert!(json["reset_after_ms"].as_u64().is_some(), "{answer}");
        }
    }
}

/// `POST /admin/blocks`: the target's canonical form, or the refusal.
fn expected_block(body: &[u8]) -> Result<(String, String, Duration), StatusCode> {
    let bad = StatusCode::BAD_REQUEST;
    let members = members(body).ok_or(bad)?;
    let fields = fields(&members, &["target", "ttl", "reason"]).ok_or(bad)?;
    let target = field(&fields, "target")
        .and_then(Value::as_str)
        .ok_or(bad)?;
    let ttl = field(&fields, "ttl").and_then(Value::as_str).ok_or(bad)?;
    let reason = match field(&fields, "reason") {
        None => "",
        Some(v) => v.as_str().ok_or(bad)?,
    };
    let target = target.parse::<Target>().map_err(|_| bad)?;
    let ttl = match parse_duration(ttl) {
        Ok(d) if !d.is_zero() && d <= MAX_WINDOW => d,
        _ => return Err(bad),
    };
    if reason.len() > 1024 {
        return Err(bad);
    }
    Ok((target.to_string(), reason.to_owned(), ttl))
}

fn check_block(body: &[u8], answer: &Answer) {
    match expected_block(body) {
        Err(status) => {
            assert_eq!(answer.status, status, "{answer}");
            answer.assert_problem();
        }
        Ok((target, reason, _)) => {
            assert_eq!(answer.status, StatusCode::CREATED, "{answer}");
            let json = answer.json();
            assert_eq!(json["target"].as_str(), Some(target.as_str()), "{answer}");
            assert_eq!(json["reason"].as_str(), Some(reason.as_str()), "{answer}");
            assert_eq!(json["source"].as_str(), Some("manual"), "{answer}");
        }
    }
}

// ---------------------------------------------------------------------------
// Generation.

/// `s` as a JSON string literal, sometimes with needless escapes.
fn json_string(rng: &mut Rng, s: &str) -> String {
    let escape_all = rng.one_in(10);
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || (escape_all && !c.is_ascii_alphanumeric()) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A random string for a key or a reason: short, awkward, or huge.
fn text(rng: &mut Rng) -> String {
    match rng.below(10) {
        0 => "k".repeat(rng.range(250, 70_000) as usize),
        1 => String::new(),
        2 => rng
            .pick(&[
                "{a}",
                "}{",
                "a:b:c",
                "\0",
                "ip:192.0.2.1",
                "%7B",
                "x|y\\z",
                "é😀",
            ])
            .to_string(),
        _ => {
            let n = rng.len(64);
            rng.string(n)
        }
    }
}

fn number(rng: &mut Rng) -> String {
    rng.pick(&[
        "0",
        "1",
        "2",
        "3",
        "4",
        "20",
        "21",
        "1000000000000",
        "1000000000001",
        "18446744073709551615",
        "18446744073709551616",
        "-1",
        "1.0",
        "1e2",
        "-0",
        "1e400",
    ])
    .to_string()
}

/// A value for a field: usually of the right kind, sometimes not.
fn value(rng: &mut Rng, right: impl FnOnce(&mut Rng) -> String) -> String {
    match rng.below(12) {
        0 => rng
            .pick(&[
                "null",
                "true",
                "[]",
                "{}",
                "[\"a\"]",
                "{\"a\":1}",
                "7",
                "\"7\"",
            ])
            .to_string(),
        _ => right(rng),
    }
}

fn object(rng: &mut Rng, members: Vec<(&str, String)>) -> Vec<u8> {
    let mut members: Vec<(String, String)> = members
        .into_iter()
        .map(|(n, v)| (json_string(rng, n), v))
        .collect();
    if rng.one_in(12) {
        let v = value(rng, number);
        members.push(("\"unexpected\"".to_owned(), v));
    }
    if rng.one_in(15) && !members.is_empty() {
        let dup = members[rng.index(members.len())].clone();
        members.push(dup);
    }
    // Shuffle.
    for i in (1..members.len()).rev() {
        let j = rng.index(i + 1);
        members.swap(i, j);
    }
    let space = *rng.pick(&["", " ", "\n\t "]);
    let inner: Vec<String> = members
        .iter()
        .map(|(n, v)| format!("{n}{space}:{space}{v}"))
        .collect();
    format!("{space}{{{}}}{space}", inner.join(&format!(",{space}"))).into_bytes()
}

fn check_body(rng: &mut Rng) -> Vec<u8> {
    let mut members = Vec::new();
    if !rng.one_in(15) {
        let rule = value(rng, |r| {
            let name = if r.percent(80) {
                r.pick(RULES).0.to_owned()
            } else {
                text(r)
            };
            json_string(r, &name)
        });
        members.push(("rule", rule));
    }
    if !rng.one_in(15) {
        let key = value(rng, |r| {
            let k = text(r);
            json_string(r, &k)
        });
        members.push(("key", key));
    }
    if rng.percent(60) {
        let cost = value(rng, number);
        members.push(("cost", cost));
    }
    object(rng, members)
}

const TARGETS: &[&str] = &[
    "ip:203.0.113.7",
    "ip:2001:db8::/32",
    "ip:::ffff:192.0.2.1",
    "ip:10.1.2.3/8",
    "ip:0.0.0.0/0",
    "ip:",
    "header:x-api-key:leaked",
    "header:X-Api-Key:a:b",
    "header::v",
    "header:x:",
    "header:x:a\u{7}b",
    "203.0.113.7",
];

const TTLS: &[&str] = &[
    "1ms",
    "10m",
    "366d",
    "367d",
    "0ms",
    "0s",
    "31622400s",
    "31622400001ms",
    "10",
    "m",
    "",
    " 1h ",
    "1.5h",
    "99999999999999999999d",
];

fn block_body(rng: &mut Rng) -> Vec<u8> {
    let mut members = Vec::new();
    if !rng.one_in(15) {
        let target = value(rng, |r| {
            let t = if r.percent(80) {
                r.pick(TARGETS).to_string()
            } else {
                format!("header:x-k:{}", text(r))
            };
            json_string(r, &t)
        });
        members.push(("target", target));
    }
    if !rng.one_in(15) {
        let ttl = value(rng, |r| {
            let t = r.pick(TTLS).to_string();
            json_string(r, &t)
        });
        members.push(("ttl", ttl));
    }
    if rng.percent(50) {
        let reason = value(rng, |r| {
            let t = if r.one_in(4) {
                "r".repeat(r.range(1020, 1030) as usize)
            } else {
                text(r)
            };
            json_string(r, &t)
        });
        members.push(("reason", reason));
    }
    object(rng, members)
}

fn generate(rng: &mut Rng) -> ApiInput {
    let endpoint = *rng.pick(&[
        Endpoint::Check,
        Endpoint::Check,
        Endpoint::Check,
        Endpoint::AddBlock,
        Endpoint::AddBlock,
        Endpoint::AddBlock,
        Endpoint::RemoveBlock,
        Endpoint::GetKey,
        Endpoint::ResetKey,
    ]);
    let mut body = match endpoint {
        Endpoint::Check => check_body(rng),
        Endpoint::AddBlock => block_body(rng),
        _ => Vec::new(),
    };
    if !body.is_empty() && rng.percent(40) {
        mutate(rng, &mut body, DICTIONARY, 5, 256 * 1024);
    }
    // At most 3000 characters: a URI holds at most 64 KiB, and a path
    // argument may triple in length when percent-encoded.
    let arg = |rng: &mut Rng, known: &[&str]| {
        if rng.percent(50) {
            rng.pick(known).to_string()
        } else {
            text(rng).chars().take(3000).collect()
        }
    };
    let args = match endpoint {
        Endpoint::RemoveBlock => vec![arg(rng, TARGETS)],
        Endpoint::GetKey | Endpoint::ResetKey => {
            let names: Vec<&str> = RULES.iter().map(|(n, _)| *n).collect();
            vec![
                arg(rng, &names),
                arg(rng, &["ip:192.0.2.1", "a/b", "sha256:00"]),
            ]
        }
        _ => Vec::new(),
    };
    ApiInput {
        endpoint,
        body,
        args,
        authorized: !rng.one_in(10),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_keeps_duplicates_and_refuses_non_objects() {
        let m = members(br#"{"a": 1, "a": 2}"#).expect("an object");
        assert_eq!(m.len(), 2);
        assert!(members(b"[1]").is_none());
        assert!(members(b"{").is_none());
        assert!(fields(&m, &["a"]).is_none(), "a duplicate is malformed");
    }

    #[test]
    fn the_generator_reaches_every_answer() {
        let mut rng = Rng::new(1);
        let mut checks = std::collections::BTreeSet::new();
        let mut blocks = std::collections::BTreeSet::new();
        for _ in 0..3_000 {
            let input = generate(&mut rng);
            match input.endpoint {
                Endpoint::Check => {
                    checks.insert(expected_check(&input.body).map_or_else(|s| s.as_u16(), |_| 200));
                }
                Endpoint::AddBlock => {
                    blocks.insert(expected_block(&input.body).map_or_else(|s| s.as_u16(), |_| 201));
                }
                _ => {}
            }
        }
        assert_eq!(checks.into_iter().collect::<Vec<_>>(), [200, 400, 404, 422]);
        assert_eq!(blocks.into_iter().collect::<Vec<_>>(), [201, 400]);
    }

    #[test]
    fn the_oracle_reads_the_documented_examples() {
        assert!(expected_check(br#"{"rule": "api", "key": "alice", "cost": 1}"#).is_ok());
        assert_eq!(
            expected_check(br#"{"rule": "nope", "key": "alice"}"#),
            Err(StatusCode::NOT_FOUND)
        );
        assert!(
            expected_block(br#"{"target": "ip:203.0.113.7", "ttl": "10m", "reason": "scraping"}"#)
                .is_ok()
        );
    }
}
