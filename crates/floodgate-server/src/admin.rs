//! The admin listener: `/metrics`, `/healthz`, `/readyz` and, behind a bearer
//! token, `/admin/blocks`, `/admin/rules/<rule>/keys/<key>`,
//! `/admin/rules/<rule>/overrides[/<key>]`, `/admin/top` and
//! `/admin/overview`; and the dashboard (`/`, see [`crate::dashboard`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use floodgate_core::duration::format_duration;
use floodgate_core::{Block, KeyOverride, Store, Timestamp};
use floodgate_tower::{OverrideError, OverrideSource, Target, TopError};
use serde::{Deserialize, Deserializer};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::api::decision_json;
use crate::error::{ApiError, parse_json, problems_only};
use crate::state::AppState;
use floodgate_core::duration::parse_duration;

/// The admin router.
pub fn router(state: Arc<AppState>) -> Router {
    let admin = Router::new()
        .route("/admin/blocks", get(list_blocks).post(add_block))
        .route(
            "/admin/blocks/{*target}",
            axum::routing::delete(remove_block),
        )
        .route(
            "/admin/rules/{rule}/keys/{*key}",
            get(get_key).delete(reset_key),
        )
        .route("/admin/rules/{rule}/overrides", get(list_overrides))
        .route("/admin/top", get(top_clients))
        .route("/admin/overview", get(crate::dashboard::overview))
        .route(
            "/admin/rules/{rule}/overrides/{*key}",
            get(get_override).put(put_override).delete(remove_override),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(crate::dashboard::index))
        .route("/dashboard.js", get(crate::dashboard::script))
        .route("/dashboard.css", get(crate::dashboard::style))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(admin)
        .fallback(|| async { ApiError::not_found("no such admin endpoint") })
        .layer(middleware::from_fn(problems_only))
        .with_state(state)
}

/// `Authorization: Bearer <token>`, compared in constant time. Without a
/// configured token (only allowed on a loopback address) the API is open.
async fn require_token(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let expected = state.admin_token.load_full();
    if let Some(expected) = expected.as_deref() {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer_credentials(v.as_bytes()))
            .unwrap_or(b"");
        if !bool::from(given.ct_eq(expected.as_bytes())) {
            return Err(
                ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
                    .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")),
            );
        }
    }
    Ok(next.run(req).await)
}

/// The credentials of an `Authorization: Bearer <token>` value: the scheme
/// in any case (RFC 9110 §11.1), one or more spaces after it.
fn bearer_credentials(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || value.get(6) != Some(&b' ') {
        return None;
    }
    Some(value[6..].trim_ascii())
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.set_store_up(state.limiter.store_healthy());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    if !state.limiter.store_healthy() {
        return (StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n").into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

/// RFC 3339 UTC, to the millisecond.
pub fn rfc3339(t: Timestamp) -> String {
    let micros = t.as_micros();
    let secs = micros / 1_000_000;
    let millis = (micros % 1_000_000) / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn block_json(b: &Block) -> serde_json::Value {
    json!({
        "target": b.target,
        "until": rfc3339(b.until),
        "until_ms": b.until.as_micros() / 1000,
        "reason": b.reason,
        "source": b.source.as_str(),
    })
}

async fn list_blocks(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let blocks = state
        .limiter
        .store()
        .blocks()
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok(Json(json!({
        "blocks": blocks.iter().map(block_json).collect::<Vec<_>>()
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBlock {
    #[serde(deserialize_with = "target_text")]
    target: String,
    #[serde(deserialize_with = "ttl_text")]
    ttl: String,
    #[serde(default, deserialize_with = "reason_text")]
    reason: String,
}

// serde_json's own type errors ("invalid type: integer `60`, expected a
// string") do not say which field was wrong; these do.
fn target_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    string_field(d, "target", "\"ip:203.0.113.7\"")
}

fn ttl_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    string_field(d, "ttl", "\"10m\"")
}

fn reason_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    string_field(d, "reason", "\"scraping\"")
}

fn string_field<'de, D: Deserializer<'de>>(
    d: D,
    field: &str,
    example: &str,
) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        other => Err(serde::de::Error::custom(format!(
            "{field} must be a string like {example}, not {other}"
        ))),
    }
}

async fn add_block(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: NewBlock = parse_json(&body)?;
    let target = req
        .target
        .parse::<Target>()
        .map_err(|e| ApiError::bad_request(format!("target {:?}: {e}", req.target)))?;
    let ttl = match parse_duration(&req.ttl) {
        Ok(d) if !d.is_zero() && d <= floodgate_core::MAX_WINDOW => d,
        Ok(_) => return Err(ApiError::bad_request("ttl must be between 1ms and 366d")),
        Err(e) => return Err(ApiError::bad_request(format!("ttl: {e}"))),
    };
    if req.reason.len() > 1024 {
        return Err(ApiError::bad_request("reason must be at most 1024 bytes"));
    }
    let block = state
        .limiter
        .block(&target, ttl, &req.reason)
        .await
        .map_err(|e| ApiError::store(&e))?;
    // `block`, not `target`: JSON log lines already have a `target`, the
    // module that logged.
    tracing::info!(block = %block.target, until = %rfc3339(block.until), reason = %block.reason, "block added");
    Ok((StatusCode::CREATED, Json(block_json(&block))).into_response())
}

async fn remove_block(
    State(state): State<Arc<AppState>>,
    Path(target): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !state
        .limiter
        .unblock(&target)
        .await
        .map_err(|e| ApiError::store(&e))?
    {
        return Err(ApiError::not_found(format!(
            "no block in force for {target:?}"
        )));
    }
    tracing::info!(block = %target, "block lifted");
    Ok(StatusCode::NO_CONTENT)
}

fn find_rule(state: &AppState, rule: &str) -> Result<floodgate_core::Policy, ApiError> {
    state
        .limiter
        .config()
        .rules
        .iter()
        .find(|r| r.name == rule)
        .map(|r| r.policy.clone())
        .ok_or_else(|| ApiError::not_found(format!("no rule named {rule:?}")))
}

async fn get_key(
    State(state): State<Arc<AppState>>,
    Path((rule, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let mut policy = find_rule(&state, &rule)?;
    let overridden = state.limiter.override_of(&rule, &key);
    if let Some((_, _, p)) = &overridden {
        policy = p.clone();
    }
    let d = state
        .limiter
        .store()
        .peek(&rule, &policy, &key)
        .await
        .map_err(|e| ApiError::store(&e))?;
    let mut body = decision_json(&d);
    body["rule"] = json!(rule);
    body["key"] = json!(key);
    body["blocked"] = json!(d.blocked);
    body["override"] = match &overridden {
        Some((o, source, _)) => override_json(o, *source),
        None => serde_json::Value::Null,
    };
    Ok(Json(body).into_response())
}

fn override_json(o: &KeyOverride, source: OverrideSource) -> serde_json::Value {
    json!({
        "rule": o.rule,
        "key": o.key,
        "limit": o.limit,
        "window": o.window.map(format_duration),
        "burst": o.burst,
        "expires": o.expires.map(rfc3339),
        "expires_ms": o.expires.map(|t| t.as_micros() / 1000),
        "source": source.as_str(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOverride {
    #[serde(deserialize_with = "limit_number")]
    limit: u64,
    #[serde(default, deserialize_with = "optional_window")]
    window: Option<String>,
    #[serde(default, deserialize_with = "optional_burst")]
    burst: Option<u64>,
    #[serde(default, deserialize_with = "optional_ttl")]
    ttl: Option<String>,
}

fn limit_number<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    number_field(d, "limit")
}

fn optional_burst<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    number_field(d, "burst").map(Some)
}

fn number_field<'de, D: Deserializer<'de>>(d: D, field: &str) -> Result<u64, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) if n.as_u64().is_some() => Ok(n.as_u64().unwrap_or(0)),
        other => Err(serde::de::Error::custom(format!(
            "{field} must be a whole number like 1000, not {other}"
        ))),
    }
}

fn optional_window<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    string_field(d, "window", "\"1m\"").map(Some)
}

fn optional_ttl<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    string_field(d, "ttl", "\"30d\"").map(Some)
}

fn override_error(e: OverrideError) -> ApiError {
    match e {
        OverrideError::UnknownRule(_) => ApiError::not_found(e.to_string()),
        OverrideError::Store(e) => ApiError::store(&e),
        OverrideError::EmptyKey | OverrideError::Invalid(_) | OverrideError::BelowCost { .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
    }
}

async fn put_override(
    State(state): State<Arc<AppState>>,
    Path((rule, key)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: NewOverride = parse_json(&body)?;
    let window = req
        .window
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("window: {e}")))?;
    let ttl = match req.ttl.as_deref().map(parse_duration) {
        None => None,
        Some(Ok(d)) if !d.is_zero() && d <= floodgate_core::MAX_WINDOW => Some(d),
        Some(Ok(_)) => return Err(ApiError::bad_request("ttl must be between 1ms and 366d")),
        Some(Err(e)) => return Err(ApiError::bad_request(format!("ttl: {e}"))),
    };
    let o = state
        .limiter
        .put_override(&rule, &key, req.limit, window, req.burst, ttl)
        .await
        .map_err(override_error)?;
    tracing::info!(rule = %o.rule, key = %o.key, limit = o.limit, "override put");
    Ok(Json(override_json(&o, OverrideSource::Store)).into_response())
}

async fn get_override(
    State(state): State<Arc<AppState>>,
    Path((rule, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    find_rule(&state, &rule)?;
    match state.limiter.override_of(&rule, &key) {
        Some((o, source, _)) => Ok(Json(override_json(&o, source)).into_response()),
        None => Err(ApiError::not_found(format!(
            "no override of rule {rule:?} for {key:?}"
        ))),
    }
}

async fn list_overrides(
    State(state): State<Arc<AppState>>,
    Path(rule): Path<String>,
) -> Result<Response, ApiError> {
    let Some(list) = state.limiter.overrides(&rule) else {
        return Err(ApiError::not_found(format!("no rule named {rule:?}")));
    };
    Ok(Json(json!({
        "overrides": list.iter().map(|(o, source)| override_json(o, *source)).collect::<Vec<_>>()
    }))
    .into_response())
}

async fn remove_override(
    State(state): State<Arc<AppState>>,
    Path((rule, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    if !state
        .limiter
        .remove_override(&rule, &key)
        .await
        .map_err(override_error)?
    {
        return Err(ApiError::not_found(format!(
            "no override of rule {rule:?} for {key:?} in the store"
        )));
    }
    tracing::info!(rule = %rule, key = %key, "override removed");
    Ok(StatusCode::NO_CONTENT)
}

/// The most keys `/admin/top` lists.
const MAX_TOP: usize = 1000;

/// `/admin/top` lists this many keys without `n`.
const DEFAULT_TOP: usize = 20;

/// `/admin/top?rule=<rule>&n=<n>`: the heaviest keys over the last five
/// minutes across every instance sharing the store.
async fn top_clients(
    State(state): State<Arc<AppState>>,
    query: Result<
        Query<std::collections::HashMap<String, String>>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if let Some(unknown) = query.keys().find(|k| *k != "rule" && *k != "n") {
        return Err(ApiError::bad_request(format!(
            "unknown query parameter {unknown:?}: only rule and n"
        )));
    }
    let n = match query.get("n") {
        None => DEFAULT_TOP,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if (1..=MAX_TOP).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "n must be a whole number from 1 to {MAX_TOP}, not {n:?}"
                )));
            }
        },
    };
    let rule = query.get("rule").map(String::as_str);
    let top = state.limiter.top(rule, n).await.map_err(|e| match e {
        TopError::UnknownRule(_) => ApiError::not_found(e.to_string()),
        TopError::Store(e) => ApiError::store(&e),
    })?;
    Ok(Json(
        top.iter()
            .map(|c| {
                json!({
                    "rule": c.rule,
                    "key": c.key,
                    "admitted": c.admitted,
                    "refused": c.refused,
                    "error": c.error,
                })
            })
            .collect::<Vec<_>>(),
    )
    .into_response())
}

async fn reset_key(
    State(state): State<Arc<AppState>>,
    Path((rule, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    find_rule(&state, &rule)?;
    state
        .limiter
        .store()
        .reset(&rule, &key)
        .await
        .map_err(|e| ApiError::store(&e))?;
    // Drop this instance's cached copy of a penalty the reset lifted.
    let _ = state.limiter.sync_blocks().await;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer t0k", "bearer t0k", "BEARER t0k", "bEaReR   t0k "] {
            assert_eq!(
                bearer_credentials(value.as_bytes()),
                Some(&b"t0k"[..]),
                "{value}"
            );
        }
        for value in ["Basic t0k", "Bearert0k", "Bear t0k", "", "Bearer"] {
            assert_eq!(
                bearer_credentials(value.as_bytes()).filter(|c| !c.is_empty()),
                None,
                "{value}"
            );
        }
    }

    #[test]
    fn a_wrongly_typed_field_is_named() {
        for (body, field) in [
            (
                r#"{"target": "ip:192.0.2.1", "ttl": 60}"#,
                "ttl must be a string",
            ),
            (r#"{"target": 7, "ttl": "1m"}"#, "target must be a string"),
            (
                r#"{"target": "ip:192.0.2.1", "ttl": "1m", "reason": null}"#,
                "reason must be a string",
            ),
        ] {
            let err = serde_json::from_str::<NewBlock>(body).expect_err(body);
            assert!(err.to_string().contains(field), "{err}");
        }
        let ok: NewBlock =
            serde_json::from_str(r#"{"target": "ip:192.0.2.1", "ttl": "1m"}"#).expect("valid");
        assert_eq!((ok.ttl.as_str(), ok.reason.as_str()), ("1m", ""));
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(
            rfc3339(Timestamp::from_micros(0)),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339(Timestamp::from_micros(1_795_795_200_123_456)),
            "2026-11-27T16:00:00.123Z"
        );
        assert_eq!(
            rfc3339(Timestamp::from_micros(951_782_400_000_000)),
            "2000-02-29T00:00:00.000Z"
        );
    }
}
