//! An HTTP/1.1 client for the tests ([`Http`]) and the answers it reads
//! ([`Reply`]); the requests most tests send through it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::process::{AUTH, Floodgate};

/// A response as the tests see it.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The problem+json body; fails unless the content type says so.
    pub(crate) fn problem(&self) -> serde_json::Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "status {} body {}",
            self.status,
            self.text()
        );
        let body = self.json();
        assert_eq!(body["status"], self.status, "{body}");
        body
    }

    /// The `r` (remaining) and `t` parameters of the `RateLimit` item of `rule`.
    pub(crate) fn ratelimit(&self, rule: &str) -> Option<(u64, u64)> {
        let item = self.sf_item("ratelimit", rule)?;
        Some((sf_param(item, "r")?, sf_param(item, "t")?))
    }

    /// The `q` (quota) and `w` (window) parameters of the `RateLimit-Policy`
    /// item of `rule`.
    pub(crate) fn ratelimit_policy(&self, rule: &str) -> Option<(u64, u64)> {
        let item = self.sf_item("ratelimit-policy", rule)?;
        Some((sf_param(item, "q")?, sf_param(item, "w")?))
    }

    /// The item of Structured Field list `field` named `"<rule>"`.
    fn sf_item(&self, field: &str, rule: &str) -> Option<&str> {
        self.headers
            .get_all(field)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find(|i| i.starts_with(&format!("\"{rule}\";")))
    }

    pub(crate) fn retry_after(&self) -> Option<u64> {
        self.header("retry-after").and_then(|v| v.parse().ok())
    }
}

fn sf_param(item: &str, name: &str) -> Option<u64> {
    item.split(';')
        .skip(1)
        .find_map(|p| p.trim().strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
}

/// An HTTP/1.1 client with keep-alive.
#[derive(Clone)]
pub(crate) struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    pub(crate) fn new() -> Self {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub(crate) async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Reply, String> {
        let mut req = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
            .map_err(|e| e.to_string())?;
        let res = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    pub(crate) async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", url, headers, None)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    pub(crate) async fn delete(&self, url: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("DELETE", url, headers, None)
            .await
            .unwrap_or_else(|e| panic!("DELETE {url}: {e}"))
    }

    pub(crate) async fn post_json(&self, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut h = headers.to_vec();
        h.push(("content-type", "application/json"));
        self.send("POST", url, &h, Some(body))
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"))
    }

    /// `GET /admin/rules/<rule>/keys/<key>` on `fg`: the counters of one key.
    pub(crate) async fn counters(
        &self,
        fg: &Floodgate,
        rule: &str,
        key: &str,
    ) -> serde_json::Value {
        let r = self
            .get(
                &fg.admin_url(&format!("/admin/rules/{rule}/keys/{key}")),
                &[AUTH],
            )
            .await;
        assert_eq!(r.status, 200, "{rule} {key}: {}", r.text());
        r.json()
    }

    /// `POST /v1/check` on `fg`.
    pub(crate) async fn check(&self, fg: &Floodgate, rule: &str, key: &str, cost: u64) -> Reply {
        let body = serde_json::json!({ "rule": rule, "key": key, "cost": cost }).to_string();
        self.post_json(&fg.url("/v1/check"), &[], &body).await
    }
}

/// A gateway `GET /api/hello` as client `key` (header `x-client`), failing
/// the test if it took longer than `bound`: whatever the store does, a
/// request must not hang.
pub(crate) async fn bounded_get(http: &Http, fg: &Floodgate, key: &str, bound: Duration) -> Reply {
    let started = Instant::now();
    let r = http.get(&fg.url("/api/hello"), &[("x-client", key)]).await;
    let took = started.elapsed();
    assert!(took <= bound, "a request waited {took:?} (bound {bound:?})");
    r
}

/// `n` [`bounded_get`]s for `key` on `fg`: their statuses.
pub(crate) async fn statuses(
    http: &Http,
    fg: &Floodgate,
    key: &str,
    n: usize,
    bound: Duration,
) -> Vec<u16> {
    alternating(http, fg, fg, key, n, bound).await
}

/// `n` [`bounded_get`]s for `key` alternating between `a` and `b`, starting
/// with `a`: their statuses. Under a shared limit of L, exactly L are 200.
pub(crate) async fn alternating(
    http: &Http,
    a: &Floodgate,
    b: &Floodgate,
    key: &str,
    n: usize,
    bound: Duration,
) -> Vec<u16> {
    let mut out = Vec::new();
    for i in 0..n {
        let fg = if i % 2 == 0 { a } else { b };
        out.push(bounded_get(http, fg, key, bound).await.status);
    }
    out
}
