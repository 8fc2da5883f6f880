//! The `floodgate` server: configuration, the gateway and reverse proxy, the
//! decision API, the admin API, metrics, and the process side (signals,
//! reload, drain, supervisor).
//!
//! The binary is a thin shell over [`run_blocking`]; tests drive
//! [`app::run`] with their own listeners and shutdown future.
//!
//! Modules, from the wiring down:
//!
//! - [`app`]: one instance wired together: the gateway router, the
//!   listeners, `run` (serve, reload on SIGHUP, drain). Nothing imports it.
//! - [`supervisor`]: `serve --workers N`: workers sharing one socket,
//!   restarts, rolling restarts on SIGHUP.
//! - [`admin`]: the admin listener: `/metrics`, `/healthz`, `/readyz`,
//!   `/admin/*` behind the bearer token.
//! - [`api`]: the decision API, `POST /v1/check`.
//! - [`demo_api`]: the built-in API that answers when there is no upstream.
//! - [`proxy`]: the reverse proxy to the upstream.
//! - [`serve`]: the accept loop: HTTP/1 and HTTP/2, header and idle
//!   timeouts, bounded heads and connections, the drain.
//! - [`state`]: what the handlers share, and what a reload may change.
//! - [`error`]: `ApiError`, the problem+json every endpoint answers with.
//! - [`metrics`]: the Prometheus metrics, also the limiter's observer.
//! - [`config`]: the config file (the `floodgate-config` crate): sections,
//!   checks, `check-config`'s summary, the store it names.
//! - [`listen`]: binding sockets and passing them to workers.
//! - [`notify`]: systemd's `sd_notify` messages.
//! - [`worker`]: the supervisor–worker protocol.

pub mod admin;
pub mod api;
pub mod app;
pub mod authorize;
pub mod cli;
pub mod dashboard;
pub mod demo_api;
pub mod error;
pub mod listen;
pub mod metrics;
pub mod notify;
pub mod proxy;
pub mod rls;
mod routing;
pub mod serve;
pub mod state;
pub mod supervisor;
pub mod worker;

/// The config file, as [`floodgate_config`] reads it (also for Rust apps
/// that share the gateway's config).
pub use floodgate_config as config;

use std::path::PathBuf;

use anyhow::Context;

use crate::config::{Overrides, Settings};

/// Loads the config (or the built-in demo), binds, and serves until SIGTERM
/// or SIGINT.
pub fn run_blocking(config_path: Option<PathBuf>, overrides: Overrides) -> anyhow::Result<()> {
    let settings = match &config_path {
        Some(path) => config::load(path, &overrides)?,
        None => config::demo(&overrides),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listeners = app::Listeners::bind(&settings)?;
        if config_path.is_none() {
            announce_demo(&settings, &listeners);
        }
        app::run(
            settings,
            listeners,
            config_path,
            overrides,
            app::termination(),
            notify::announce_ready,
        )
        .await
    })
}

fn announce_demo(settings: &Settings, listeners: &app::Listeners) {
    let addr = listeners
        .main
        .local_addr()
        .map_or_else(|_| settings.server.listen.to_string(), |a| a.to_string());
    eprintln!(
        "floodgate demo: the built-in API on http://{addr} (memory store, rule demo-per-ip: 10 requests per 10s per IP on /api/)\n\
         try:  for i in $(seq 1 12); do curl -s -o /dev/null -w '%{{http_code}} ' http://{addr}/api/hello; done; echo\n\
         admin: http://{}/metrics",
        settings
            .admin
            .listen
            .map_or_else(|| "(disabled)".to_owned(), |a| a.to_string())
    );
}
