//! `GET /v1/authorize`: the decision for nginx's `auth_request`. nginx
//! sends the original request's method and URI as `X-Original-Method` and
//! `X-Original-URI`, with the client's headers and `X-Forwarded-For`; the
//! rules, access lists and blocks decide it as if it had come through the
//! gateway.
//!
//! nginx takes only 2xx, 401 and 403 from an auth subrequest (anything
//! else is a 500 for the client), so: 204 admitted (with the `RateLimit`
//! headers); 401 over a limit, with `Retry-After`, the `RateLimit` headers
//! and `X-Floodgate-Status: 429`; 403 for everything else that refuses,
//! with `X-Floodgate-Status` saying what it was (403 denied or blocked, 503
//! the store could not decide, 400 a malformed request).
//! `deploy/nginx-auth-request.conf` turns these into the client's answers.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use floodgate_tower::{Verdict, verdict_response};

use crate::error::ApiError;
use crate::state::AppState;

/// The original request's method, from nginx.
const ORIGINAL_METHOD: &str = "x-original-method";
/// The original request's URI (path and query), from nginx.
const ORIGINAL_URI: &str = "x-original-uri";
/// What the client's answer should be, on a refusal.
pub const FLOODGATE_STATUS: HeaderName = HeaderName::from_static("x-floodgate-status");

/// `GET /v1/authorize`.
pub async fn authorize(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let headers = req.headers();
    let method = match headers.get(ORIGINAL_METHOD).map(|m| m.as_bytes()) {
        None => Method::GET,
        Some(m) => match Method::from_bytes(m) {
            Ok(m) => m,
            Err(_) => {
                return ApiError::bad_request("X-Original-Method is not an HTTP method")
                    .into_response();
            }
        },
    };
    let Some(uri) = headers.get(ORIGINAL_URI).and_then(|u| u.to_str().ok()) else {
        return ApiError::bad_request(
            "X-Original-URI is missing: set `proxy_set_header X-Original-URI $request_uri;` (deploy/nginx-auth-request.conf)",
        )
        .into_response();
    };
    if !uri.starts_with('/') {
        return ApiError::bad_request("X-Original-URI must be a path, starting with /")
            .into_response();
    }
    let path = uri.split(['?', '#']).next().unwrap_or("/");
    let peer = floodgate_tower::peer_addr(req.extensions());
    let verdict = state
        .limiter
        .check_request_with_extensions(&method, path, headers, req.extensions(), peer)
        .await;
    answer(&verdict)
}

/// The auth subrequest's answer for `verdict`.
fn answer(verdict: &Verdict) -> Response {
    let Some(refusal) = verdict_response(verdict) else {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        if let Verdict::Allow(Some(decision)) = verdict {
            decision.insert_rate_limit_headers(response.headers_mut());
        }
        return response;
    };
    let (mut parts, body) = refusal.into_parts();
    let status = parts.status;
    parts.status = if status == StatusCode::TOO_MANY_REQUESTS {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::FORBIDDEN
    };
    if let Ok(value) = HeaderValue::from_str(status.as_str()) {
        parts.headers.insert(FLOODGATE_STATUS, value);
    }
    Response::from_parts(parts, Body::new(body))
}
