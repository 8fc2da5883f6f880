//! The upstream behind the gateway in the tests: a small real HTTP server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// A small real upstream: echoes method, uri, headers and body as JSON (with
/// an `x-upstream: echo` response header), `/slow?ms=N` answers after N ms,
/// `/drip?chunks=N&ms=M` streams N lines `drip`, each after a pause of M ms,
/// `/status/<code>` answers with that status, `/login` answers 200 to the
/// header `x-password: right` and 401 to anything else, `/cost?units=N`
/// answers with `x-ratelimit-cost: N` (no header without `units`).
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    /// Requests the echo route has answered.
    pub(crate) hits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub(crate) async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// [`Upstream::start`] on a given address (a fixed port: the deploy
    /// walk's API on 127.0.0.1:3000, as deploy/floodgate.toml expects).
    pub(crate) async fn start_on(addr: SocketAddr) -> Self {
        use axum::body::Bytes as AxBytes;
        use axum::extract::{Path, Query, Request};
        use axum::routing::any;
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = hits.clone();
        let app = axum::Router::new()
            .route(
                "/slow",
                any(|Query(q): Query<HashMap<String, u64>>| async move {
                    tokio::time::sleep(Duration::from_millis(q.get("ms").copied().unwrap_or(500)))
                        .await;
                    "slow done"
                }),
            )
            .route(
                "/drip",
                any(|Query(q): Query<HashMap<String, u64>>| async move {
                    let (mut tx, body) = http_body_util::channel::Channel::<
                        AxBytes,
                        std::convert::Infallible,
                    >::new(1);
                    let chunks = q.get("chunks").copied().unwrap_or(3);
                    let pause = Duration::from_millis(q.get("ms").copied().unwrap_or(500));
                    tokio::spawn(async move {
                        for _ in 0..chunks {
                            tokio::time::sleep(pause).await;
                            if tx.send_data(AxBytes::from_static(b"drip\n")).await.is_err() {
                                break;
                            }
                        }
                    });
                    axum::body::Body::new(body)
                }),
            )
            .route(
                "/login",
                any(|headers: http::HeaderMap| async move {
                    if headers.get("x-password").is_some_and(|p| p == "right") {
                        (http::StatusCode::OK, "welcome")
                    } else {
                        (http::StatusCode::UNAUTHORIZED, "wrong password")
                    }
                }),
            )
            .route(
                "/cost",
                any(|Query(q): Query<HashMap<String, String>>| async move {
                    let mut headers = http::HeaderMap::new();
                    if let Some(units) = q.get("units")
                        && let Ok(value) = http::HeaderValue::from_str(units)
                    {
                        headers.insert("x-ratelimit-cost", value);
                    }
                    (headers, "tokens spent")
                }),
            )
            .route(
                "/status/{code}",
                any(|Path(code): Path<u16>| async move {
                    (
                        http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::OK),
                        "as asked",
                    )
                }),
            )
            .fallback(any(move |req: Request| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let (parts, body) = req.into_parts();
                    let body: AxBytes = axum::body::to_bytes(body, 4 << 20)
                        .await
                        .unwrap_or_default();
                    // Repeated headers are joined the way a proxy must keep them.
                    let mut headers: HashMap<String, String> = HashMap::new();
                    for (k, v) in &parts.headers {
                        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                        headers
                            .entry(k.to_string())
                            .and_modify(|e| {
                                e.push_str(", ");
                                e.push_str(&v);
                            })
                            .or_insert(v);
                    }
                    (
                        [("x-upstream", "echo")],
                        axum::Json(serde_json::json!({
                            "method": parts.method.as_str(),
                            "uri": parts.uri.to_string(),
                            "headers": headers,
                            "body": String::from_utf8_lossy(&body),
                        })),
                    )
                }
            }));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("upstream: bind {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream { addr, hits, task }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}
