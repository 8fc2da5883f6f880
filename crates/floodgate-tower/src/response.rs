//! The answers the limiter gives itself: 429, 403 and 503 with
//! `application/problem+json` bodies (RFC 9457).
//!
//! A 429 uses the `quota-exceeded` problem type of
//! draft-ietf-httpapi-ratelimit-headers-11 §5.1, whose `violated-policies`
//! member names the rule; 403 and 503 use `about:blank` with the status
//! phrase as title (RFC 9457 §4.2.1). The `detail` member always names the
//! rule or the target in words. A manual block's reason is not sent: it is
//! written by operators for operators.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::headers::{insert_retry_after, retry_after_secs};
use crate::target::Target;
use crate::text::push_decimal;
use crate::verdict::{ForbiddenReason, Verdict};

/// `application/problem+json`.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The problem type of a 429 (draft-ietf-httpapi-ratelimit-headers-11 §5.1).
pub const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// The title of a 429's `quota-exceeded` problem.
const QUOTA_EXCEEDED_TITLE: &str = "Quota Exceeded";

/// The title of an `about:blank` problem: the status phrase (RFC 9457
/// §4.2.1).
fn status_title(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("Error")
}

/// A problem details object (RFC 9457).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The HTTP status.
    pub status: StatusCode,
    /// The problem type URI (`about:blank` when the status says it all).
    pub problem_type: Cow<'static, str>,
    /// A short summary, the same for every occurrence of the type.
    pub title: Cow<'static, str>,
    /// This occurrence, in words.
    pub detail: String,
    /// The `violated-policies` extension member: rule names (429 only).
    pub violated_policies: Vec<String>,
}

impl Problem {
    /// An `about:blank` problem: the title is the status phrase.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Problem {
            status,
            problem_type: Cow::Borrowed("about:blank"),
            title: Cow::Borrowed(status_title(status)),
            detail: detail.into(),
            violated_policies: Vec::new(),
        }
    }

    /// The JSON body.
    pub fn to_json(&self) -> String {
        let mut json = ProblemJson::new();
        json.detail(&self.detail);
        json.finish(
            self.status,
            &self.title,
            &self.problem_type,
            self.violated_policies.iter().map(String::as_str),
        )
    }

    /// The response: status, `Content-Type: application/problem+json`,
    /// `Cache-Control: no-store`, the JSON body.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        problem_response(self.status, self.to_json())
    }
}

/// A problem response of `status` with the JSON body `json`.
fn problem_response(status: StatusCode, json: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(json)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A problem's JSON body, written into one buffer without serde or
/// `core::fmt`: under attack, refusals can be most of what an instance
/// answers. The detail is written first, in pieces; the other members
/// follow in [`finish`](Self::finish). Members in alphabetical order, the
/// order floodgate has always sent them in; strings escaped as serde_json
/// escapes them.
struct ProblemJson {
    out: String,
}

impl ProblemJson {
    fn new() -> Self {
        let mut out = String::with_capacity(256);
        out.push_str(r#"{"detail":""#);
        ProblemJson { out }
    }

    /// Appends `text` to the detail.
    fn detail(&mut self, text: &str) -> &mut Self {
        push_json_escaped(&mut self.out, text);
        self
    }

    /// Appends `n` in decimal to the detail.
    fn detail_number(&mut self, n: u64) -> &mut Self {
        push_decimal(&mut self.out, n);
        self
    }

    /// Appends the name of `target` to the detail.
    fn detail_target(&mut self, target: &Target) -> &mut Self {
        match target {
            // A header value may hold what JSON escapes.
            Target::Header { .. } => push_json_escaped(&mut self.out, &target.to_string()),
            // Digits, hex digits, `.`, `:`, `/`: nothing to escape.
            _ => target.push_to(&mut self.out),
        }
        self
    }

    /// The body: the detail written so far, then `status`, `title`, `type`
    /// and, unless there are none, `violated-policies`.
    fn finish<'a>(
        mut self,
        status: StatusCode,
        title: &str,
        problem_type: &str,
        violated_policies: impl IntoIterator<Item = &'a str>,
    ) -> String {
        let out = &mut self.out;
        out.push_str(r#"","status":"#);
        push_decimal(out, u64::from(status.as_u16()));
        out.push_str(r#","title":""#);
        push_json_escaped(out, title);
        out.push_str(r#"","type":""#);
        push_json_escaped(out, problem_type);
        out.push('"');
        let mut open = false;
        for name in violated_policies {
            out.push_str(if open {
                r#",""#
            } else {
                r#","violated-policies":[""#
            });
            open = true;
            push_json_escaped(out, name);
            out.push('"');
        }
        if open {
            out.push(']');
        }
        out.push('}');
        self.out
    }
}

/// Appends `text` as the inside of a JSON string, escaped as serde_json
/// escapes it: `"` and `\` with a backslash, the control characters
/// U+0000 to U+001F as `\b`, `\t`, `\n`, `\f`, `\r` or `\u00xx`, all
/// else as it is.
fn push_json_escaped(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Runs that need no escape are copied whole; every escaped character is
    // ASCII, so each split falls on a character boundary.
    let mut rest = text;
    while let Some(at) = rest
        .bytes()
        .position(|b| b < 0x20 || b == b'"' || b == b'\\')
    {
        out.push_str(&rest[..at]);
        let b = rest.as_bytes()[at];
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            _ => {
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
}

/// The limiter's own answer to a refused request; `None` when the request
/// goes ahead.
///
/// - [`Verdict::Limited`]: 429, `Retry-After`, `RateLimit-Policy` and
///   `RateLimit`, a `quota-exceeded` problem naming the rule.
/// - [`Verdict::Forbidden`]: 403, a problem naming the list entry or block.
/// - [`Verdict::Unavailable`]: 503, `Retry-After: 1`.
/// - [`Verdict::BadRequest`]: 400, a problem saying what is wrong.
pub fn verdict_response(verdict: &Verdict) -> Option<Response<Full<Bytes>>> {
    let response = match verdict {
        Verdict::Allow(_) => return None,
        Verdict::Limited(d) => {
            let decision = d.decision();
            let wait = decision.retry_after.unwrap_or(decision.reset_after);
            // The rule's name quoted as in the RateLimit fields.
            let mut json = ProblemJson::new();
            json.detail(if decision.blocked {
                "blocked by rule "
            } else {
                "over the limit of rule "
            })
            .detail(d.quoted_rule());
            if decision.blocked {
                json.detail(" for going over its limit");
            }
            json.detail("; retry in ")
                .detail_number(retry_after_secs(wait))
                .detail(" s");
            let body = json.finish(
                StatusCode::TOO_MANY_REQUESTS,
                QUOTA_EXCEEDED_TITLE,
                QUOTA_EXCEEDED,
                [d.rule()],
            );
            let mut response = problem_response(StatusCode::TOO_MANY_REQUESTS, body);
            let headers = response.headers_mut();
            insert_retry_after(headers, wait);
            d.insert_rate_limit_headers(headers);
            response
        }
        Verdict::Forbidden { reason } => {
            let mut json = ProblemJson::new();
            match reason {
                ForbiddenReason::DenyList { target } => {
                    json.detail_target(target).detail(" is on the deny list")
                }
                ForbiddenReason::Blocked { target } => {
                    json.detail_target(target).detail(" is blocked")
                }
            };
            let status = StatusCode::FORBIDDEN;
            let body = json.finish(status, status_title(status), "about:blank", []);
            problem_response(status, body)
        }
        Verdict::BadRequest(reason) => {
            Problem::new(StatusCode::BAD_REQUEST, reason.to_string()).into_response()
        }
        Verdict::Unavailable => {
            let mut response = Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the rate limiter cannot reach its store",
            )
            .into_response();
            insert_retry_after(response.headers_mut(), std::time::Duration::from_secs(1));
            response
        }
    };
    Some(response)
}

/// Whether a request is gRPC (`content-type: application/grpc`, with or
/// without a `+proto`-like suffix): its refusals must be gRPC statuses, as
/// a gRPC client reads no HTTP status but 200.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The limiter's own answer to a refused gRPC request, or `None` when it
/// goes ahead: a trailers-only response (HTTP 200, no body) whose
/// `grpc-status` is `RESOURCE_EXHAUSTED` (8) over a limit or under a
/// penalty block, `PERMISSION_DENIED` (7) when denied or blocked,
/// `UNAVAILABLE` (14) when the store cannot decide and `INVALID_ARGUMENT`
/// (3) for a malformed request; `grpc-message` is the problem's detail.
/// The retry information is metadata, as [`verdict_response`] sends it over
/// HTTP: `retry-after` (seconds) and the `ratelimit` and `ratelimit-policy`
/// entries.
pub fn grpc_verdict_response(verdict: &Verdict) -> Option<Response<Full<Bytes>>> {
    let http = verdict_response(verdict)?;
    let code: u16 = match http.status() {
        StatusCode::TOO_MANY_REQUESTS => 8,
        StatusCode::FORBIDDEN => 7,
        StatusCode::SERVICE_UNAVAILABLE => 14,
        _ => 3,
    };
    let (parts, body) = http.into_parts();
    let detail = body
        .into_inner()
        .map(|json| problem_detail(&json))
        .unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::new()));
    let headers = response.headers_mut();
    for (name, value) in &parts.headers {
        if name != CONTENT_TYPE && name != CACHE_CONTROL {
            headers.append(name, value.clone());
        }
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(code));
    if let Ok(message) = HeaderValue::from_str(&grpc_percent_encode(&detail)) {
        headers.insert("grpc-message", message);
    }
    Some(response)
}

/// The `detail` member of a problem body this module wrote: first, and
/// escaped as [`push_json_escaped`] escapes.
fn problem_detail(json: &[u8]) -> String {
    let Some(rest) = std::str::from_utf8(json)
        .ok()
        .and_then(|j| j.strip_prefix(r#"{"detail":""#))
    else {
        return String::new();
    };
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some('b') => out.push('\u{8}'),
                Some('f') => out.push('\u{c}'),
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).collect();
                    if let Some(c) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                        out.push(c);
                    }
                }
                Some(other) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
    }
    out
}

/// `grpc-message` encoding: printable ASCII but `%` as it is, every other
/// byte of the UTF-8 as `%XX` (the gRPC over HTTP/2 specification).
fn grpc_percent_encode(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::verdict::RuleDecision;
    use floodgate_core::Decision;
    use http::header::RETRY_AFTER;
    use http_body_util::BodyExt;
    use std::time::Duration;

    fn body_json(response: Response<Full<Bytes>>) -> serde_json::Value {
        let bytes = poll_now(response.into_body().collect())
            .expect("a full body cannot fail")
            .to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// `Full` is ready at once: poll it without a runtime.
    fn poll_now<F: std::future::Future>(f: F) -> F::Output
    where
        F::Output: Sized,
    {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) {
                return out;
            }
        }
    }

    /// A refusal by `rule` (`limit` per minute, nothing left), to retry in
    /// `retry`; under a penalty block if `blocked`.
    fn refused(rule: &str, limit: u64, retry: Duration, blocked: bool) -> Verdict {
        Verdict::Limited(RuleDecision::new(
            rule,
            Duration::from_secs(60),
            Decision {
                allowed: false,
                limit,
                remaining: 0,
                reset_after: Duration::from_secs(60),
                retry_after: Some(retry),
                blocked,
                delay: Duration::ZERO,
            },
        ))
    }

    #[test]
    fn limited_is_a_429_naming_the_rule() {
        let verdict = refused("api", 100, Duration::from_millis(16_200), false);
        let response = verdict_response(&verdict).unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(response.headers()[RETRY_AFTER], "17");
        assert_eq!(response.headers()["ratelimit"], r#""api";r=0;t=17"#);
        assert_eq!(
            response.headers()["ratelimit-policy"],
            r#""api";q=100;w=60"#
        );
        let body = body_json(response);
        assert_eq!(body["type"], QUOTA_EXCEEDED);
        assert_eq!(body["status"], 429);
        assert_eq!(body["violated-policies"], serde_json::json!(["api"]));
        assert_eq!(
            body["detail"],
            "over the limit of rule \"api\"; retry in 17 s"
        );
    }

    /// The members as serde_json writes them, in the same order.
    #[derive(serde::Serialize)]
    struct SerdeProblem<'a> {
        detail: &'a str,
        status: u16,
        title: &'a str,
        #[serde(rename = "type")]
        problem_type: &'a str,
        #[serde(rename = "violated-policies", skip_serializing_if = "<[_]>::is_empty")]
        violated_policies: &'a [String],
    }

    #[test]
    fn bodies_are_what_serde_json_writes() {
        // Every character JSON escapes, and some it does not.
        let mut every_ascii = String::new();
        for c in 0u8..=0x7f {
            every_ascii.push(char::from(c));
        }
        let texts = [
            "",
            "plain",
            "say \"hi\"",
            r"back\slash\",
            "tab\tnew\nline\rret\u{8}bs\u{c}ff",
            "\u{0}\u{1}\u{1f}\u{7f}",
            "naïve ☃ 𝄞",
            &every_ascii,
        ];
        for (i, detail) in texts.iter().enumerate() {
            let violated: Vec<String> = texts[..i].iter().map(|t| (*t).to_owned()).collect();
            let problem = Problem {
                status: StatusCode::TOO_MANY_REQUESTS,
                problem_type: Cow::Owned(texts[texts.len() - 1 - i].to_owned()),
                title: Cow::Owned(texts[(i + 3) % texts.len()].to_owned()),
                detail: (*detail).to_owned(),
                violated_policies: violated.clone(),
            };
            let expected = serde_json::to_string(&SerdeProblem {
                detail,
                status: 429,
                title: &problem.title,
                problem_type: &problem.problem_type,
                violated_policies: &violated,
            })
            .unwrap();
            assert_eq!(problem.to_json(), expected, "text {i}");
        }
    }

    #[test]
    fn a_header_target_is_escaped_in_the_detail() {
        let verdict = Verdict::Forbidden {
            reason: ForbiddenReason::DenyList {
                target: "header:x-api-key:a\"b\\c".parse().unwrap(),
            },
        };
        let body = body_json(verdict_response(&verdict).unwrap());
        assert_eq!(
            body["detail"],
            "header:x-api-key:a\"b\\c is on the deny list"
        );
    }

    #[test]
    fn a_penalty_block_says_so() {
        let verdict = refused("login", 5, Duration::from_millis(299_001), true);
        let body = body_json(verdict_response(&verdict).unwrap());
        assert_eq!(
            body["detail"],
            "blocked by rule \"login\" for going over its limit; retry in 300 s"
        );
    }

    #[test]
    fn forbidden_and_unavailable() {
        let verdict = Verdict::Forbidden {
            reason: ForbiddenReason::Blocked {
                target: "ip:192.0.2.7".parse().unwrap(),
            },
        };
        let response = verdict_response(&verdict).unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let body = body_json(response);
        assert_eq!(body["type"], "about:blank");
        assert_eq!(body["title"], "Forbidden");
        assert_eq!(body["detail"], "ip:192.0.2.7 is blocked");
        assert!(body.get("violated-policies").is_none());

        let response = verdict_response(&verdict).unwrap();
        let bytes = poll_now(response.into_body().collect()).unwrap().to_bytes();
        assert_eq!(
            bytes,
            r#"{"detail":"ip:192.0.2.7 is blocked","status":403,"title":"Forbidden","type":"about:blank"}"#,
            "members in alphabetical order, as always sent"
        );

        let response = verdict_response(&Verdict::Unavailable).unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        assert!(verdict_response(&Verdict::Allow(None)).is_none());
    }
}
