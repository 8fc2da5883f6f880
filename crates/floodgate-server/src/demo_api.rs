//! The built-in demo API, answering when no `upstream` is configured, so
//! `floodgate serve` shows limiting with nothing else running.

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::error::ApiError;

/// `GET /api/hello`, `GET /api/items`, `GET /api/items/{id}`, `POST /api/echo`.
pub fn router() -> Router {
    Router::new()
        .route("/api/hello", get(hello))
        .route("/api/items", get(items))
        .route("/api/items/{id}", get(item))
        .route("/api/echo", post(echo))
        .fallback(not_found)
}

const ITEMS: [(u32, &str); 3] = [(1, "anvil"), (2, "rope"), (3, "lantern")];

async fn hello() -> Json<Value> {
    Json(json!({ "message": "hello from the floodgate demo API" }))
}

async fn items() -> Json<Value> {
    Json(json!({
        "items": ITEMS.iter().map(|(id, name)| json!({ "id": id, "name": name })).collect::<Vec<_>>()
    }))
}

async fn item(Path(id): Path<String>) -> Response {
    match id
        .parse::<u32>()
        .ok()
        .and_then(|id| ITEMS.iter().find(|(i, _)| *i == id))
    {
        Some((id, name)) => Json(json!({ "id": id, "name": name })).into_response(),
        None => ApiError::not_found(format!("no item {id:?}")).into_response(),
    }
}

async fn echo(body: axum::body::Bytes) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        body,
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found(
        "the demo API has /api/hello, /api/items, /api/items/{id} and POST /api/echo",
    )
}
