//! The operating commands: `floodgate blocks | block | unblock | inspect |
//! override | top`, each one request to a running instance's admin API.
//!
//! The admin API's address comes from `--admin URL` or
//! `FLOODGATE_ADMIN_URL` (default `http://127.0.0.1:9090`), the token only
//! from `FLOODGATE_ADMIN_TOKEN`, never from a flag (flags land in shell
//! history and in `ps`). Output is a table, coloured only on a terminal
//! without `NO_COLOR`; `--json` prints the API's JSON as it came. A
//! refusal exits 1 with the API's problem detail.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::Duration;

use bytes::Bytes;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// Where the admin API is unless told otherwise.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9090";

/// How long one command waits for the admin API.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where the admin API is and how to print; the token comes only from
/// `FLOODGATE_ADMIN_TOKEN`.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// The admin API's URL.
    #[arg(long = "admin", env = "FLOODGATE_ADMIN_URL", default_value = DEFAULT_ADMIN_URL)]
    pub url: String,
    /// Print the admin API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `floodgate block`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct BlockArgs {
    /// What to block: ip:203.0.113.7, ip:203.0.113.0/24, header:x-api-key:KEY.
    pub target: String,
    /// How long (1ms to 366d); the admin API's default when absent.
    #[arg(long)]
    pub ttl: Option<String>,
    /// Why, shown in listings.
    #[arg(long)]
    pub reason: Option<String>,
}

/// `floodgate unblock`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct UnblockArgs {
    /// The target, or a penalty block's key.
    pub target: String,
}

/// `floodgate inspect`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct InspectArgs {
    /// The rule.
    pub rule: String,
    /// The key, as the rule builds it (ip:203.0.113.7 for key = "ip").
    pub key: String,
}

/// `floodgate override`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct OverrideArgs {
    /// The rule.
    pub rule: String,
    /// The key, as the rule builds it.
    pub key: String,
    /// Its limit.
    #[arg(long)]
    pub limit: u64,
    /// Its window (default: the rule's).
    #[arg(long)]
    pub window: Option<String>,
    /// Its burst (token_bucket rules).
    #[arg(long)]
    pub burst: Option<u64>,
    /// How long it lasts (default: until removed).
    #[arg(long)]
    pub ttl: Option<String>,
}

/// `floodgate top`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct TopArgs {
    /// One rule (default: every rule).
    #[arg(long)]
    pub rule: Option<String>,
    /// How many.
    #[arg(short = 'n', default_value_t = 20)]
    pub n: u32,
}

/// One operating command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// `GET /admin/blocks`.
    Blocks,
    /// `POST /admin/blocks`.
    Block(BlockArgs),
    /// `DELETE /admin/blocks/<target>`.
    Unblock(UnblockArgs),
    /// `GET /admin/rules/<rule>/keys/<key>`.
    Inspect(InspectArgs),
    /// `PUT /admin/rules/<rule>/overrides/<key>`.
    Override(OverrideArgs),
    /// `GET /admin/top`.
    Top(TopArgs),
}

/// How to print.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// The API's JSON as it came, instead of a table.
    pub json: bool,
    /// ANSI colour (a terminal, no `NO_COLOR`).
    pub colour: bool,
}

impl Output {
    /// Tables, coloured when stdout is a terminal and `NO_COLOR` is unset
    /// or empty; or JSON.
    pub fn for_stdout(json: bool) -> Self {
        Output {
            json,
            colour: !json
                && std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }
}

/// A command that did not succeed, as the user should read it.
#[derive(Debug)]
pub struct Failure(pub String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs `op` against the admin API at `admin` with `token`; the text to
/// print on success.
pub fn run(
    op: &Operation,
    admin: &str,
    token: Option<&str>,
    out: Output,
) -> Result<String, Failure> {
    let base = admin.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(Failure(format!(
            "--admin {admin:?} is not an http:// URL (e.g. {DEFAULT_ADMIN_URL})"
        )));
    }
    if base.starts_with("https://") {
        return Err(Failure(
            "https:// admin URLs are not supported: reach the admin listener over loopback or an SSH tunnel"
                .into(),
        ));
    }
    let (method, path, body) = request_of(op);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure(format!("cannot start: {e}")))?;
    let (status, bytes) = runtime.block_on(send(method, &format!("{base}{path}"), token, body))?;
    if !status.is_success() {
        return Err(Failure(problem_text(status, &bytes, token.is_some())));
    }
    if out.json {
        return Ok(String::from_utf8_lossy(&bytes).trim_end().to_owned());
    }
    let value: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| Failure(format!("the admin API answered {status} with no JSON: {e}")))?
    };
    Ok(render(op, &value, out.colour))
}

/// The request `op` makes: method, path and query, JSON body.
fn request_of(op: &Operation) -> (Method, String, Option<Value>) {
    match op {
        Operation::Blocks => (Method::GET, "/admin/blocks".into(), None),
        Operation::Block(BlockArgs {
            target,
            ttl,
            reason,
        }) => {
            let mut body = json!({ "target": target });
            if let Some(ttl) = ttl {
                body["ttl"] = json!(ttl);
            }
            if let Some(reason) = reason {
                body["reason"] = json!(reason);
            }
            (Method::POST, "/admin/blocks".into(), Some(body))
        }
        Operation::Unblock(UnblockArgs { target }) => (
            Method::DELETE,
            format!("/admin/blocks/{}", encode(target)),
            None,
        ),
        Operation::Inspect(InspectArgs { rule, key }) => (
            Method::GET,
            format!("/admin/rules/{}/keys/{}", encode(rule), encode(key)),
            None,
        ),
        Operation::Override(OverrideArgs {
            rule,
            key,
            limit,
            window,
            burst,
            ttl,
        }) => {
            let mut body = json!({ "limit": limit });
            if let Some(w) = window {
                body["window"] = json!(w);
            }
            if let Some(b) = burst {
                body["burst"] = json!(b);
            }
            if let Some(t) = ttl {
                body["ttl"] = json!(t);
            }
            (
                Method::PUT,
                format!("/admin/rules/{}/overrides/{}", encode(rule), encode(key)),
                Some(body),
            )
        }
        Operation::Top(TopArgs { rule, n }) => {
            let mut query = format!("n={n}");
            if let Some(rule) = rule {
                let _ = write!(query, "&rule={}", encode(rule));
            }
            (Method::GET, format!("/admin/top?{query}"), None)
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so a
/// target or key (`ip:2001:db8::/64`, `a b/c`) is one path segment.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

async fn send(
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Result<(StatusCode, Bytes), Failure> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = Request::builder().method(method).uri(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = match body {
        Some(v) => {
            request = request.header("content-type", "application/json");
            Full::new(Bytes::from(v.to_string()))
        }
        None => Full::new(Bytes::new()),
    };
    let request = request
        .body(body)
        .map_err(|e| Failure(format!("bad admin URL {url:?}: {e}")))?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| {
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                let _ = write!(why, ": {s}");
                source = s.source();
            }
            Failure(format!("cannot reach the admin API at {url}: {why}"))
        })?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Failure(format!("the admin API's answer broke off: {e}")))?
            .to_bytes();
        Ok((status, bytes))
    };
    tokio::time::timeout(TIMEOUT, exchange).await.map_err(|_| {
        Failure(format!(
            "the admin API at {url} did not answer within {TIMEOUT:?}"
        ))
    })?
}

/// The API's refusal as one line: status, and the problem's detail.
fn problem_text(status: StatusCode, body: &[u8], token_set: bool) -> String {
    let detail = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("detail")
                .and_then(Value::as_str)
                .or_else(|| v.get("title").and_then(Value::as_str))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    let mut text = format!("{status}");
    if !detail.is_empty() {
        let _ = write!(text, ": {detail}");
    }
    if status == StatusCode::UNAUTHORIZED {
        text.push_str(if token_set {
            " (FLOODGATE_ADMIN_TOKEN is not the instance's admin token)"
        } else {
            " (set FLOODGATE_ADMIN_TOKEN to the instance's admin token)"
        });
    }
    text
}

fn table(colour: bool, header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(|h| paint(colour, BOLD, h)));
    t
}

const BOLD: &str = "1";
const RED: &str = "31";
const GREEN: &str = "32";
const DIM: &str = "2";

fn paint(colour: bool, code: &str, text: &str) -> String {
    if colour {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `ms` from now as `1h 2m 3s`.
fn in_human(ms: u64) -> String {
    let secs = ms.div_ceil(1000);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m"),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a successful answer to `op` looks like on a terminal.
fn render(op: &Operation, v: &Value, colour: bool) -> String {
    match op {
        Operation::Blocks => {
            let blocks = v["blocks"].as_array().cloned().unwrap_or_default();
            if blocks.is_empty() {
                return "no blocks in force".into();
            }
            let mut t = table(colour, &["TARGET", "SOURCE", "ENDS IN", "UNTIL", "REASON"]);
            let now = now_ms();
            for b in &blocks {
                t.add_row(vec![
                    paint(colour, RED, &text_of(&b["target"])),
                    text_of(&b["source"]),
                    in_human(b["until_ms"].as_u64().unwrap_or(0).saturating_sub(now)),
                    text_of(&b["until"]),
                    text_of(&b["reason"]),
                ]);
            }
            format!("{t}\n{} block(s)", blocks.len())
        }
        Operation::Block(_) => format!(
            "{} {} until {} ({}); every instance sharing the store refuses it within a second",
            paint(colour, RED, "blocked"),
            text_of(&v["target"]),
            text_of(&v["until"]),
            in_human(v["until_ms"].as_u64().unwrap_or(0).saturating_sub(now_ms())),
        ),
        Operation::Unblock(UnblockArgs { target }) => format!(
            "{} {target}; every instance sharing the store lets it through within a second",
            paint(colour, GREEN, "unblocked")
        ),
        Operation::Inspect(_) => {
            let mut t = table(colour, &["FIELD", "VALUE"]);
            let allowed = v["allowed"].as_bool().unwrap_or(false);
            let state = if v["blocked"].as_bool().unwrap_or(false) {
                paint(colour, RED, "blocked (penalty)")
            } else if allowed {
                paint(colour, GREEN, "has quota left")
            } else {
                paint(colour, RED, "over the limit")
            };
            let retry = v["retry_after_ms"]
                .as_u64()
                .map_or_else(|| "-".into(), in_human);
            let o = &v["override"];
            let override_text = if o.is_null() {
                paint(colour, DIM, "none")
            } else {
                format!(
                    "limit {}{}{} ({}{})",
                    text_of(&o["limit"]),
                    o["window"]
                        .as_str()
                        .map(|w| format!(" per {w}"))
                        .unwrap_or_default(),
                    o["burst"]
                        .as_u64()
                        .map(|b| format!(", burst {b}"))
                        .unwrap_or_default(),
                    text_of(&o["source"]),
                    o["expires"]
                        .as_str()
                        .map(|e| format!(", until {e}"))
                        .unwrap_or_default(),
                )
            };
            for (field, value) in [
                ("rule", text_of(&v["rule"])),
                ("key", text_of(&v["key"])),
                ("state", state),
                ("limit", text_of(&v["limit"])),
                ("remaining", text_of(&v["remaining"])),
                (
                    "whole again in",
                    v["reset_after_ms"]
                        .as_u64()
                        .map_or_else(|| "-".into(), in_human),
                ),
                ("retry after", retry),
                ("override", override_text),
            ] {
                t.add_row(vec![field.to_owned(), value]);
            }
            t.to_string()
        }
        Operation::Override(_) => format!(
            "{} {} on rule {}: limit {}{}{}{}; every instance sharing the store applies it within a second",
            paint(colour, GREEN, "override set for"),
            text_of(&v["key"]),
            text_of(&v["rule"]),
            text_of(&v["limit"]),
            v["window"]
                .as_str()
                .map(|w| format!(" per {w}"))
                .unwrap_or_default(),
            v["burst"]
                .as_u64()
                .map(|b| format!(", burst {b}"))
                .unwrap_or_default(),
            v["expires"]
                .as_str()
                .map(|e| format!(", until {e}"))
                .unwrap_or_default(),
        ),
        Operation::Top(_) => {
            let rows = v.as_array().cloned().unwrap_or_default();
            if rows.is_empty() {
                return "no decisions in the last 5 minutes".into();
            }
            let mut t = table(colour, &["RULE", "KEY", "ADMITTED", "REFUSED"]);
            for r in &rows {
                let refused = r["refused"].as_u64().unwrap_or(0);
                t.add_row(vec![
                    text_of(&r["rule"]),
                    text_of(&r["key"]),
                    text_of(&r["admitted"]),
                    if refused > 0 {
                        paint(colour, RED, &refused.to_string())
                    } else {
                        refused.to_string()
                    },
                ]);
            }
            t.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_keys_are_one_path_segment() {
        assert_eq!(encode("ip:2001:db8::/64"), "ip%3A2001%3Adb8%3A%3A%2F64");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
        assert_eq!(encode("plain-key_1.2~"), "plain-key_1.2~");
        assert_eq!(encode("ü"), "%C3%BC");
    }

    #[test]
    fn refusals_read_as_the_problem_detail() {
        let body = br#"{"type":"about:blank","title":"Not Found","status":404,"detail":"no rule named \"x\""}"#;
        assert_eq!(
            problem_text(StatusCode::NOT_FOUND, body, true),
            "404 Not Found: no rule named \"x\""
        );
        let unauthorized = problem_text(StatusCode::UNAUTHORIZED, b"", false);
        assert!(
            unauthorized.contains("set FLOODGATE_ADMIN_TOKEN"),
            "{unauthorized}"
        );
    }

    #[test]
    fn colour_only_when_asked() {
        let v = json!({"blocks": [{"target": "ip:192.0.2.1", "source": "manual", "until": "x", "until_ms": 0, "reason": "r"}]});
        let plain = render(&Operation::Blocks, &v, false);
        assert!(
            plain.contains("ip:192.0.2.1") && !plain.contains('\x1b'),
            "{plain}"
        );
        let coloured = render(&Operation::Blocks, &v, true);
        assert!(
            coloured.contains("\x1b[31mip:192.0.2.1\x1b[0m"),
            "{coloured}"
        );
        assert_eq!(in_human(61_000), "1m 1s");
        assert_eq!(in_human(3_600_000), "1h 0m");
        assert_eq!(in_human(1), "1s");
    }
}
