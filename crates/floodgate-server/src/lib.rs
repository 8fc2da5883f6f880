//! The `floodgate` server: configuration, the gateway and reverse proxy, the
//! decision API, the admin API, metrics, and the process side (signals,
//! reload, drain, supervisor).
//!
//! The binary is a thin shell over [`run_blocking`]; tests drive
//! [`app::run`] with their own listeners and shutdown future.

pub mod admin;
pub mod api;
pub mod app;
pub mod config;
pub mod demo_api;
pub mod duration;
pub mod error;
pub mod listen;
pub mod metrics;
pub mod notify;
pub mod proxy;
pub mod serve;
pub mod state;
pub mod store;
pub mod supervisor;
pub mod worker;

use std::path::PathBuf;

use anyhow::Context;

use crate::config::{Backend, Overrides, RedisLayout, Settings};
use crate::duration::format_duration;

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

/// The one-screen summary `check-config` prints.
pub fn summary(s: &Settings) -> String {
    let mut out = String::new();
    let file = s
        .source
        .as_deref()
        .map_or_else(|| "built-in demo".to_owned(), |p| p.display().to_string());
    out.push_str(&format!("{file}: OK\n"));
    out.push_str(&format!(
        "  listen    {}{}\n",
        s.server.listen,
        if s.server.reuse_port {
            " (reuse_port)"
        } else {
            ""
        }
    ));
    out.push_str(&format!(
        "  upstream  {}\n",
        s.server
            .upstream
            .as_ref()
            .map_or_else(|| "built-in demo API".to_owned(), ToString::to_string)
    ));
    let backend = match &s.store.backend {
        Backend::Memory => format!("memory (max_keys {})", s.store.max_keys),
        Backend::Redis { urls } => {
            let urls: Vec<String> = urls.iter().map(|u| floodgate_redis::redact(u)).collect();
            let layout = match &s.store.redis_layout {
                RedisLayout::Standalone => "redis".to_owned(),
                RedisLayout::Cluster => "redis cluster, seeds".to_owned(),
                RedisLayout::Sentinel { master, .. } => {
                    format!("redis primary {master:?} named by sentinels")
                }
            };
            format!("{layout} {} (prefix {:?})", urls.join(", "), s.store.prefix)
        }
    };
    out.push_str(&format!(
        "  limits    heads up to {} bytes, {}\n",
        s.server.max_header_bytes,
        s.server.max_connections.map_or_else(
            || "connections sized from the fd limit".to_owned(),
            |n| format!("{n} connections at once")
        )
    ));
    out.push_str(&format!(
        "  store     {backend}, timeout {}, on_error {}\n",
        format_duration(s.store.timeout),
        s.store.on_error
    ));
    out.push_str(&format!(
        "  admin     {}\n",
        match (s.admin.listen, &s.admin.token) {
            (None, _) => "disabled".to_owned(),
            (Some(a), Some(_)) => format!("{a} (token set)"),
            (Some(a), None) => format!(
                "{a} WITHOUT A TOKEN: any process on this host can block clients and reset counters \
                 (set admin.token or FLOODGATE_ADMIN_TOKEN)"
            ),
        }
    ));
    out.push_str(&format!(
        "  access    {} allow, {} deny\n",
        s.allow.len(),
        s.deny.len()
    ));
    out.push_str(&format!("  rules     {}\n", s.rules.len()));
    for r in &s.rules {
        let p = &r.policy;
        out.push_str(&format!(
            "    {:<20} {} {} per {} key {}{}{}{}\n",
            r.name,
            p.algorithm(),
            p.limit(),
            format_duration(p.window()),
            r.key,
            if p.algorithm() == floodgate_core::Algorithm::TokenBucket {
                format!(" burst {}", p.burst())
            } else {
                String::new()
            },
            p.block_for().map_or_else(String::new, |d| format!(
                " block_for {}",
                format_duration(d)
            )),
            if r.shadow { " (shadow)" } else { "" },
        ));
    }
    out
}
