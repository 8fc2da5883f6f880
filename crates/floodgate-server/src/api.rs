//! The decision API: `POST /v1/check` on the main listener, for services in
//! any language that want a decision without proxying through floodgate.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use floodgate_core::Decision;
use floodgate_tower::CheckError;
use serde::Deserialize;
use serde_json::json;

use crate::error::{ApiError, parse_json};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    rule: String,
    key: String,
    #[serde(default = "one")]
    cost: u64,
    /// `false`: ask without charging (charge later with `/v1/charge`);
    /// absent: charge unless the rule is charged on the answer.
    charge: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChargeRequest {
    rule: String,
    key: String,
    #[serde(default = "one")]
    cost: u64,
}

fn one() -> u64 {
    1
}

/// Whole milliseconds, rounded up so a client never retries too early.
pub fn ceil_ms(d: Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
}

/// The JSON form of a decision.
pub fn decision_json(d: &Decision) -> serde_json::Value {
    json!({
        "allowed": d.allowed,
        "limit": d.limit,
        "remaining": d.remaining,
        "reset_after_ms": ceil_ms(d.reset_after),
        "retry_after_ms": d.retry_after.map(ceil_ms),
    })
}

/// `POST /v1/check` `{"rule": "...", "key": "...", "cost": 1, "charge": true}`.
pub async fn check(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: CheckRequest = parse_json(&body)?;
    if req.key.is_empty() {
        return Err(ApiError::bad_request("key must not be empty"));
    }
    answer(
        state
            .limiter
            .check_key_in_window(&req.rule, &req.key, req.cost, req.charge)
            .await,
    )
}

/// `POST /v1/charge` `{"rule": "...", "key": "...", "cost": 1}`: records
/// the cost whatever the limit says (the answer to a request asked about
/// with `"charge": false` counted).
pub async fn charge(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: ChargeRequest = parse_json(&body)?;
    if req.key.is_empty() {
        return Err(ApiError::bad_request("key must not be empty"));
    }
    answer(
        state
            .limiter
            .charge_key_in_window(&req.rule, &req.key, req.cost)
            .await,
    )
}

/// The HTTP answer of a decision API call: the decision, whether the key
/// is under a penalty block, and the window it is counted over (for a
/// `RateLimit-Policy` header's `w`).
fn answer(result: Result<(Decision, Duration), CheckError>) -> Result<Response, ApiError> {
    match result {
        Ok((d, window)) => {
            let mut body = decision_json(&d);
            body["blocked"] = json!(d.blocked);
            body["window_ms"] = json!(ceil_ms(window));
            Ok((StatusCode::OK, Json(body)).into_response())
        }
        Err(e @ CheckError::UnknownRule(_)) => Err(ApiError::not_found(e.to_string())),
        Err(
            e @ (CheckError::ZeroCost
            | CheckError::InsufficientCapacity { .. }
            | CheckError::InFlightRule(_)),
        ) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            e.to_string(),
        )),
        Err(e @ CheckError::Unavailable) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}
