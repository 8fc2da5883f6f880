//! The dashboard: one page on the admin listener (`GET /`), its script and
//! its style sheet, compiled into the binary (no outside assets, works
//! offline), and `GET /admin/overview`, the one small JSON document the
//! page polls besides the admin API it already has (`/admin/top`,
//! `/admin/blocks`).
//!
//! The page asks for the admin token once and keeps it in the tab's
//! `sessionStorage` (not in the URL, not in a cookie), sending it as a
//! bearer header; every change it makes goes through the admin API. The
//! three assets need no token (they hold no data) and are served with a
//! strict Content-Security-Policy: `default-src 'self'`, no inline script
//! or style, no framing.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use floodgate_core::duration::format_duration;
use serde_json::{Value, json};

use crate::state::AppState;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// The policy every asset is served under.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /`: the page.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /dashboard.js`.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /dashboard.css`.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// `GET /admin/overview` (token): this instance, its store, and every rule
/// with its limit, its overrides and its decisions so far (counters: the
/// page charts their differences between polls).
pub async fn overview(State(state): State<Arc<AppState>>) -> Response {
    let settings = state.settings.load();
    let config = state.limiter.config();
    let counts = state.metrics.decision_counts();
    let decisions_of = |rule: &str| -> Value {
        let mut out = serde_json::Map::new();
        if let Some((_, outcomes)) = counts.iter().find(|(r, _)| r == rule) {
            for (outcome, n) in outcomes {
                out.insert((*outcome).to_owned(), json!(n));
            }
        }
        Value::Object(out)
    };
    let rules: Vec<Value> = config
        .rules
        .iter()
        .map(|r| {
            let p = &r.policy;
            let kind = if r.concurrency.is_some() {
                "concurrency".to_owned()
            } else {
                p.algorithm().to_string()
            };
            json!({
                "name": r.name,
                "algorithm": kind,
                "limit": p.limit(),
                "window": r.concurrency.is_none().then(|| format_duration(p.window())),
                "burst": (p.algorithm() == floodgate_core::Algorithm::TokenBucket && r.concurrency.is_none()).then(|| p.burst()),
                "key": r.descriptor.as_ref().map_or_else(|| r.key.to_string(), |d| format!("descriptor {d}")),
                "shadow": r.shadow,
                "block_for": p.block_steps_us().iter().map(|&us| format_duration(std::time::Duration::from_micros(us))).collect::<Vec<_>>(),
                "overrides": state.limiter.overrides(&r.name).map_or(0, |o| o.len()),
                "decisions": decisions_of(&r.name),
            })
        })
        .collect();
    // The instances that published their top clients lately (every
    // instance does, every 5 s): who shares this store.
    let instances = tokio::time::timeout(
        settings.store.timeout,
        floodgate_core::Store::top_summaries(state.limiter.store()),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .map(|summaries| {
        let mut ids: Vec<String> = summaries.into_iter().map(|s| s.instance).collect();
        ids.sort();
        ids.dedup();
        ids
    });
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "instances": instances,
        "pid": std::process::id(),
        "time_ms": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
        "draining": state.draining.load(Ordering::Relaxed),
        "store": {
            "backend": state.limiter.store().backend_name(),
            "healthy": state.limiter.store_healthy(),
            "on_error": settings.store.on_error.to_string(),
        },
        "without_rule": decisions_of(""),
        "rules": rules,
    }))
    .into_response()
}
