//! What `check-config` prints for a valid file: one screen saying what
//! floodgate would run.

use floodgate_core::duration::format_duration;

use super::settings::Settings;
use super::store::{Backend, RedisLayout};

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
    if let Some(grpc) = s.grpc.listen {
        out.push_str(&format!(
            "  grpc      {grpc} (Envoy rate limit service, health, reflection)\n"
        ));
    }
    out.push_str(&format!(
        "  access    {} allow, {} deny\n",
        s.allow.len(),
        s.deny.len()
    ));
    out.push_str(&format!("  rules     {}\n", s.rules.len()));
    for r in &s.rules {
        if let Some(c) = r.concurrency {
            out.push_str(&format!(
                "    {:<20} concurrency {} in flight key {} lease {}\n",
                r.name,
                c.limit,
                r.key,
                format_duration(c.lease)
            ));
            continue;
        }
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
            if p.block_steps_us().is_empty() {
                String::new()
            } else {
                let steps: Vec<String> = p
                    .block_steps_us()
                    .iter()
                    .map(|&us| format_duration(std::time::Duration::from_micros(us)))
                    .collect();
                format!(" block_for {}", steps.join(","))
            },
            if r.shadow { " (shadow)" } else { "" },
        ));
        if let Some(d) = &r.descriptor {
            out.push_str(&format!(
                "    {:<20} decides Envoy descriptors {d} (not gateway requests)\n",
                ""
            ));
        }
        if let Some(statuses) = &r.count_status {
            out.push_str(&format!("    {:<20} counts only answers {statuses}\n", ""));
        }
        if p.is_batched() {
            out.push_str(&format!(
                "    {:<20} consistency batched: each instance leases up to {} of a key's units at a time (Redis; the memory store is exact)\n",
                "",
                p.batch_max()
            ));
        }
        if let floodgate_tower::OnLimit::Delay { max } = r.on_limit {
            out.push_str(&format!(
                "    {:<20} holds a request over the limit up to {}\n",
                "",
                format_duration(max)
            ));
        }
        if !r.overrides.is_empty() {
            out.push_str(&format!(
                "    {:<20} {} per-key override(s)\n",
                "",
                r.overrides.len()
            ));
        }
        if let Some(header) = &r.cost_header {
            out.push_str(&format!(
                "    {:<20} charges the cost the answer's {header} names\n",
                ""
            ));
        }
    }
    out
}
