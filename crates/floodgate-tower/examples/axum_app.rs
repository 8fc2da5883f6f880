//! An axum app behind floodgate: 10 requests per 10 s per client on `/api/`,
//! a deny list, `RateLimit` headers, 429s with problem+json bodies.
//!
//! ```text
//! cargo run -p floodgate-tower --example axum_app
//! for i in $(seq 12); do curl -s -o /dev/null -w '%{http_code} ' http://127.0.0.1:3000/api/hello; done
//! ```
//!
//! Set `LISTEN` to use another address. Ctrl-C stops it.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use floodgate_core::{Algorithm, MemoryStore, Policy};
use floodgate_tower::{AccessLists, FloodgateLayer, Limiter, LimiterConfig, RequestMatch, Rule};

fn limiter_config() -> Result<LimiterConfig, Box<dyn std::error::Error>> {
    let per_client = Rule::new(
        "api-per-client",
        "ip".parse()?,
        Policy::new(Algorithm::SlidingWindow, 10, Duration::from_secs(10))?,
    )
    .with_match(RequestMatch {
        path_prefix: Some("/api/".into()),
        methods: None,
    });
    Ok(LimiterConfig {
        rules: vec![per_client],
        access: AccessLists {
            allow: Vec::new(),
            deny: vec!["ip:203.0.113.0/24".parse()?],
        },
        ..LimiterConfig::default()
    })
}

/// The application, built by a function so tests could drive it too.
fn app(limiter: Limiter<MemoryStore>) -> Router {
    Router::new()
        .route("/api/hello", get(|| async { "hello\n" }))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(FloodgateLayer::new(limiter))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let addr: SocketAddr = std::env::var("LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:3000".into())
        .parse()?;

    let limiter = Limiter::new(limiter_config()?, MemoryStore::new(100_000))?;

    // With a store shared by several instances (Redis), this makes blocks
    // made on any of them apply here within a second. It stops by itself
    // once the app (and with it the limiter) is dropped.
    limiter.sync_blocks_in_background()?;

    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(
        "listening on http://{addr}; try: for i in $(seq 12); do curl -s -o /dev/null -w '%{{http_code}} ' http://{addr}/api/hello; done"
    );
    // `ConnectInfo<SocketAddr>` gives the layer each client's address.
    axum::serve(
        listener,
        app(limiter).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
