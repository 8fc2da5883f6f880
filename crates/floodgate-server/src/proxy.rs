//! The reverse proxy to `upstream`: every method, bodies streamed both ways,
//! hop-by-hop headers dropped, `X-Forwarded-For` appended.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri, header};
use axum::response::Response;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::app::problem;

/// Forwards requests to one upstream.
#[derive(Clone)]
pub struct Proxy {
    client: Client<HttpConnector, Body>,
    upstream: Uri,
    timeout: Duration,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

impl Proxy {
    /// A proxy to `upstream` (an `http://host:port[/base]` URL).
    pub fn new(upstream: Uri, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout.min(Duration::from_secs(5))));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Proxy {
            client,
            upstream,
            timeout,
        }
    }

    /// The upstream URI for a request path and query.
    fn target(&self, uri: &Uri) -> Result<Uri, http::Error> {
        let base = self.upstream.path().trim_end_matches('/');
        let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
        Uri::builder()
            .scheme(self.upstream.scheme_str().unwrap_or("http"))
            .authority(self.upstream.authority().map_or("", |a| a.as_str()))
            .path_and_query(format!("{base}{path_and_query}"))
            .build()
    }

    /// Sends `req` upstream and streams the answer back; 502 or 504 as
    /// problem+json when the upstream fails or is too slow.
    pub async fn forward(&self, req: Request<Body>, peer: Option<SocketAddr>) -> Response {
        let (mut parts, body) = req.into_parts();
        let target = match self.target(&parts.uri) {
            Ok(t) => t,
            Err(e) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot forward this URI: {e}"),
                );
            }
        };
        strip_hop_by_hop(&mut parts.headers);
        if let Some(host) = parts.headers.remove(header::HOST) {
            parts
                .headers
                .insert(HeaderName::from_static("x-forwarded-host"), host);
        }
        if let Some(peer) = peer {
            append_forwarded_for(&mut parts.headers, peer);
        }
        parts.uri = target;
        parts.version = http::Version::HTTP_11;
        let upstream_req = Request::from_parts(parts, body);
        match tokio::time::timeout(self.timeout, self.client.request(upstream_req)).await {
            Ok(Ok(res)) => {
                let (mut parts, body) = res.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Body::new(body))
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, upstream = %self.upstream, "upstream request failed");
                problem(
                    StatusCode::BAD_GATEWAY,
                    "the upstream API could not be reached",
                )
            }
            Err(_) => problem(
                StatusCode::GATEWAY_TIMEOUT,
                "the upstream API did not answer in time",
            ),
        }
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip().to_canonical().to_string();
    // Several X-Forwarded-For lines are one comma-joined list (RFC 9110
    // §5.3): keep every earlier hop, byte for byte, and add the peer last.
    let mut value: Vec<u8> = Vec::new();
    for line in headers.get_all(X_FORWARDED_FOR) {
        let line = line.as_bytes().trim_ascii();
        if line.is_empty() {
            continue;
        }
        if !value.is_empty() {
            value.extend_from_slice(b", ");
        }
        value.extend_from_slice(line);
    }
    if !value.is_empty() {
        value.extend_from_slice(b", ");
    }
    value.extend_from_slice(ip.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&value) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn appends_to_forwarded_for() {
        let mut h = HeaderMap::new();
        let peer: SocketAddr = "[::ffff:10.1.2.3]:5000".parse().expect("addr");
        append_forwarded_for(&mut h, peer);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        append_forwarded_for(&mut h, "192.0.2.9:1".parse().expect("addr"));
        assert_eq!(h["x-forwarded-for"], "10.1.2.3, 192.0.2.9");
    }

    #[test]
    fn keeps_every_forwarded_for_line() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
        h.append("x-forwarded-for", HeaderValue::from_static(" "));
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("198.51.100.2, 203.0.113.3"),
        );
        append_forwarded_for(&mut h, "127.0.0.1:9".parse().expect("addr"));
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(
            h["x-forwarded-for"],
            "192.0.2.1, 198.51.100.2, 203.0.113.3, 127.0.0.1"
        );
    }

    #[test]
    fn joins_base_path() {
        let p = Proxy::new(
            "http://127.0.0.1:3000/base/".parse().expect("uri"),
            Duration::from_secs(1),
        );
        let t = p
            .target(&"/api/x?y=1".parse().expect("uri"))
            .expect("target");
        assert_eq!(t.to_string(), "http://127.0.0.1:3000/base/api/x?y=1");
    }
}
