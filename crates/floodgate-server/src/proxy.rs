//! The reverse proxy to `upstream`: bodies streamed both ways, hop-by-hop
//! headers dropped, `X-Forwarded-For` appended, and `Forwarded` and
//! `X-Real-IP` passed on only from a trusted proxy. (`CONNECT` and `TRACE`
//! never get here: the gateway refuses them.)

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri, header};
use axum::response::Response;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::error::problem;
use crate::metrics::{UpstreamFailure, UpstreamMetrics};

/// Forwards requests to one upstream.
#[derive(Clone)]
pub struct Proxy {
    client: Client<HttpConnector, Body>,
    upstream: Uri,
    timeout: Duration,
    /// Times the upstream's answers and counts its failures.
    metrics: UpstreamMetrics,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

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
    /// A proxy to `upstream` (an `http://host:port[/base]` URL), timed and
    /// counted by `metrics`.
    pub fn new(upstream: Uri, timeout: Duration, metrics: UpstreamMetrics) -> Self {
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
            metrics,
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
    /// problem+json when the upstream fails or is too slow, 400 when the
    /// client's own body could not be read. `peer_trusted`: the peer is one
    /// of `trusted_proxies`, whose `Forwarded` and `X-Real-IP` are passed
    /// on; anyone else's are removed, so the upstream cannot be told a
    /// client address that floodgate did not believe.
    pub async fn forward(
        &self,
        req: Request<Body>,
        peer: Option<SocketAddr>,
        peer_trusted: bool,
    ) -> Response {
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
        if !peer_trusted {
            parts.headers.remove(header::FORWARDED);
            parts.headers.remove(X_REAL_IP);
        }
        if let Some(peer) = peer {
            append_forwarded_for(&mut parts.headers, peer);
        }
        parts.uri = target;
        parts.version = http::Version::HTTP_11;
        let body_failed = Arc::new(AtomicBool::new(false));
        let body = Body::new(ClientBody {
            body,
            failed: Arc::clone(&body_failed),
        });
        let upstream_req = Request::from_parts(parts, body);
        let started = std::time::Instant::now();
        match tokio::time::timeout(self.timeout, self.client.request(upstream_req)).await {
            Ok(Ok(res)) => {
                self.metrics.answered(started.elapsed());
                let (mut parts, body) = res.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Body::new(body))
            }
            Ok(Err(e)) if body_failed.load(Ordering::Relaxed) => {
                // The client's fault (a malformed chunk, a body cut short):
                // no upstream failure to warn about.
                tracing::debug!(error = %e, "the client's request body could not be read");
                problem(
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read: it is malformed or was cut short",
                )
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, upstream = %self.upstream, "upstream request failed");
                self.metrics.failed(if e.is_connect() {
                    UpstreamFailure::Connect
                } else {
                    UpstreamFailure::Other
                });
                problem(
                    StatusCode::BAD_GATEWAY,
                    "the upstream API could not be reached",
                )
            }
            Err(_) => {
                self.metrics.failed(UpstreamFailure::Timeout);
                problem(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the upstream API did not answer in time",
                )
            }
        }
    }
}

/// The client's request body on its way upstream; notes when reading it
/// failed, so that failure is answered as the client's, not the upstream's.
struct ClientBody {
    body: Body,
    failed: Arc<AtomicBool>,
}

impl HttpBody for ClientBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &frame {
            this.failed.store(true, Ordering::Relaxed);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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
            UpstreamMetrics::default(),
        );
        let t = p
            .target(&"/api/x?y=1".parse().expect("uri"))
            .expect("target");
        assert_eq!(t.to_string(), "http://127.0.0.1:3000/base/api/x?y=1");
    }
}
