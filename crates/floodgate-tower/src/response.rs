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

use crate::headers::{insert_rate_limit_headers, insert_retry_after, retry_after_secs};
use crate::verdict::{ForbiddenReason, Verdict};

/// `application/problem+json`.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The problem type of a 429 (draft-ietf-httpapi-ratelimit-headers-11 §5.1).
pub const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

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
            title: Cow::Borrowed(status.canonical_reason().unwrap_or("Error")),
            detail: detail.into(),
            violated_policies: Vec::new(),
        }
    }

    /// The JSON body.
    pub fn to_json(&self) -> String {
        let body = ProblemBody {
            detail: &self.detail,
            status: self.status.as_u16(),
            title: &self.title,
            problem_type: &self.problem_type,
            violated_policies: &self.violated_policies,
        };
        serde_json::to_string(&body).unwrap_or_default()
    }

    /// The response: status, `Content-Type: application/problem+json`,
    /// `Cache-Control: no-store`, the JSON body.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(self.to_json())));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// [`Problem`] as serialized: borrowed, so that a refusal (which may be most
/// requests under attack) costs one allocation for its body rather than a
/// map of owned JSON values. Members in alphabetical order, the order
/// floodgate has always sent them in.
#[derive(serde::Serialize)]
struct ProblemBody<'a> {
    detail: &'a str,
    status: u16,
    title: &'a str,
    #[serde(rename = "type")]
    problem_type: &'a str,
    #[serde(rename = "violated-policies", skip_serializing_if = "<[_]>::is_empty")]
    violated_policies: &'a [String],
}

/// The limiter's own answer to a refused request; `None` when the request
/// goes ahead.
///
/// - [`Verdict::Limited`]: 429, `Retry-After`, `RateLimit-Policy` and
///   `RateLimit`, a `quota-exceeded` problem naming the rule.
/// - [`Verdict::Forbidden`]: 403, a problem naming the list entry or block.
/// - [`Verdict::Unavailable`]: 503, `Retry-After: 1`.
pub fn verdict_response(verdict: &Verdict) -> Option<Response<Full<Bytes>>> {
    let response = match verdict {
        Verdict::Allow(_) => return None,
        Verdict::Limited(d) => {
            let decision = d.decision();
            let wait = decision.retry_after.unwrap_or(decision.reset_after);
            let detail = if decision.blocked {
                format!(
                    "blocked by rule {:?} for going over its limit; retry in {} s",
                    d.rule(),
                    retry_after_secs(wait)
                )
            } else {
                format!(
                    "over the limit of rule {:?}; retry in {} s",
                    d.rule(),
                    retry_after_secs(wait)
                )
            };
            let mut response = Problem {
                status: StatusCode::TOO_MANY_REQUESTS,
                problem_type: Cow::Borrowed(QUOTA_EXCEEDED),
                title: Cow::Borrowed("Quota Exceeded"),
                detail,
                violated_policies: vec![d.rule().to_owned()],
            }
            .into_response();
            let headers = response.headers_mut();
            insert_retry_after(headers, wait);
            insert_rate_limit_headers(headers, d);
            response
        }
        Verdict::Forbidden { reason } => {
            let detail = match reason {
                ForbiddenReason::DenyList { target } => format!("{target} is on the deny list"),
                ForbiddenReason::Blocked { target } => format!("{target} is blocked"),
            };
            Problem::new(StatusCode::FORBIDDEN, detail).into_response()
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

    #[test]
    fn limited_is_a_429_naming_the_rule() {
        let verdict = Verdict::Limited(RuleDecision::new(
            "api",
            Duration::from_secs(60),
            Decision {
                allowed: false,
                limit: 100,
                remaining: 0,
                reset_after: Duration::from_secs(60),
                retry_after: Some(Duration::from_millis(16_200)),
                blocked: false,
            },
        ));
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
        assert!(body["detail"].as_str().unwrap().contains("\"api\""));
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
