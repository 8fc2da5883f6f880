//! The gateway's config file, read by a Rust app: the limiter it describes
//! behaves in an axum app as the rules say, and a bad file is refused with
//! the problems `check-config` reports.
#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::{Router, routing::get};
use floodgate_config::{AnyStore, Overrides, parse};
use floodgate_tower::{FloodgateLayer, Limiter, PeerAddr};
use http::{Request, StatusCode};
use tower::ServiceExt;

const FILE: &str = r#"
[server]
listen = "127.0.0.1:8080"
upstream = "http://127.0.0.1:3000"

[admin]
listen = "127.0.0.1:9090"
token = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"

[access]
deny = ["ip:203.0.113.0/24"]

[[rule]]
name = "api-per-ip"
match = { path_prefix = "/api/" }
key = "ip"
algorithm = "sliding_log"
limit = 2
window = "1m"
"#;

async fn status(app: &Router, path: &str, ip: &str) -> StatusCode {
    let request = Request::get(path)
        .extension(PeerAddr(format!("{ip}:4000").parse().unwrap()))
        .body(Body::empty())
        .unwrap();
    app.clone().oneshot(request).await.unwrap().status()
}

#[tokio::test]
async fn the_gateways_file_limits_an_app_the_same_way() {
    let settings = parse(FILE, None, &Overrides::default()).unwrap();
    let store = AnyStore::open(&settings.store).unwrap();
    assert_eq!(store.backend_name(), "memory", "the file's default store");
    let limiter = Limiter::new(settings.limiter_config(), store).unwrap();
    let app = Router::new()
        .route("/api/items", get(|| async { "items" }))
        .route("/health", get(|| async { "ok" }))
        .layer(FloodgateLayer::new(limiter));

    for expected in [
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        assert_eq!(status(&app, "/api/items", "192.0.2.7").await, expected);
    }
    assert_eq!(
        status(&app, "/health", "192.0.2.7").await,
        StatusCode::OK,
        "outside /api/"
    );
    assert_eq!(
        status(&app, "/api/items", "192.0.2.8").await,
        StatusCode::OK,
        "per ip"
    );
    assert_eq!(
        status(&app, "/health", "203.0.113.9").await,
        StatusCode::FORBIDDEN,
        "[access] deny"
    );
}

#[test]
fn a_bad_file_is_refused_with_every_problem_in_place() {
    let bad = FILE
        .replace("limit = 2", "limit = 0")
        .replace("key = \"ip\"", "key = \"ipp\"")
        .replace("ip:203.0.113.0/24", "ip:203.0.113.0/33");
    let err = parse(&bad, Some("app.toml".as_ref()), &Overrides::default()).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("app.toml: 3 problems"), "{text}");
    for place in [
        "rule \"api-per-ip\" limit",
        "rule \"api-per-ip\" key",
        "access.deny",
    ] {
        assert!(text.contains(place), "{place:?} not in {text}");
    }
}
