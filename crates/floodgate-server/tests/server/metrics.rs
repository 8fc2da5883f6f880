//! What `/metrics` tells an on-call engineer (issue 17): requests by kind
//! of route and status class, the upstream's latency and failures, the
//! fallbacks of `on_error`, the memory store's evictions, config reloads,
//! build info and the process; and that every metric the shipped alert
//! rules (deploy/prometheus/alerts.yml) and Grafana dashboard
//! (deploy/grafana/floodgate.json) name is one a running
//! instance exports.

use std::collections::BTreeSet;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;

use crate::support::grpc::rls_client;
use crate::support::host::free_addr;
use crate::support::http::Http;
use crate::support::process::Floodgate;
use crate::support::procfs;
use crate::support::upstream::Upstream;
use crate::support::wait::eventually;

/// A gateway to `upstream` with one rule of `limit` per client header on
/// `/api/`, a gRPC listener (`Floodgate::grpc`) with one descriptor rule,
/// and `store`.
fn config(upstream: &str, store: &str, limit: u64) -> String {
    format!(
        "[server]\nlisten = \"{{listen}}\"\nupstream = \"{upstream}\"\nupstream_timeout = \"300ms\"\n\
         {store}\n[admin]\nlisten = \"{{admin}}\"\n[grpc]\nlisten = \"{{grpc}}\"\n\
         [[rule]]\nname = \"api\"\nmatch = {{ path_prefix = \"/api/\" }}\nkey = \"header:x-client\"\n\
         algorithm = \"fixed_window\"\nlimit = {limit}\nwindow = \"1h\"\n\
         [[rule]]\nname = \"edge\"\nalgorithm = \"fixed_window\"\nlimit = 100\nwindow = \"1h\"\n\
         descriptor = {{ domain = \"edge\", entries = [\"user\"] }}\n"
    )
}

const MEMORY: &str = "[store]\nbackend = \"memory\"";

/// `/metrics` of `fg`.
/// Rewrites `fg`'s config to `text`, sends SIGHUP, and waits until
/// `floodgate_config_reloads_total{result}` counts it.
async fn reload_counted(http: &Http, fg: &Floodgate, text: &str, result: &str) {
    fg.rewrite_config(text);
    fg.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || async {
            let text = scrape(http, fg).await;
            count(
                &text,
                "floodgate_config_reloads_total",
                &[("result", result)],
            ) == 1.0
        })
        .await,
        "no reload {result}:\n{}",
        fg.log()
    );
}

async fn scrape(http: &Http, fg: &Floodgate) -> String {
    let r = http.get(&fg.admin_url("/metrics"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

/// The sum of the samples of `name` that carry every label of `labels`;
/// `None` when there is none.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, set) = series.split_once('{').unwrap_or((series, "}"));
        if metric != name {
            continue;
        }
        let set = set.trim_end_matches('}');
        if labels
            .iter()
            .all(|(k, v)| set.split(',').any(|pair| pair == format!("{k}=\"{v}\"")))
        {
            *found.get_or_insert(0.0) += v.parse::<f64>().unwrap();
        }
    }
    found
}

fn count(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
}

fn requests(text: &str, kind: &str, class: &str) -> f64 {
    count(
        text,
        "floodgate_requests_total",
        &[("kind", kind), ("class", class)],
    )
}

fn rls_request(domain: &str, user: &str) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "user".to_owned(),
                value: user.to_owned(),
            }],
            ..RateLimitDescriptor::default()
        }],
        hits_addend: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_kind_and_status_class_with_build_and_process_info() {
    let upstream = Upstream::start().await;
    let fg = Floodgate::launch(config(&format!("http://{}", upstream.addr), MEMORY, 2)).await;
    let http = Http::new();
    let before = scrape(&http, &fg).await;
    for kind in ["gateway", "decision_api", "authorize", "rls", "admin"] {
        for class in ["2xx", "4xx", "5xx"] {
            assert_eq!(requests(&before, kind, class), 0.0, "{kind} {class}");
        }
    }

    // The gateway: two admitted, one over the limit.
    let url = fg.url("/api/x");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(http.get(&url, &[("x-client", "a")]).await.status);
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        1,
        "{statuses:?}"
    );
    // The decision API: an answer, and an unknown rule.
    assert_eq!(http.check(&fg, "api", "b", 1).await.status, 200);
    assert_eq!(http.check(&fg, "nope", "b", 1).await.status, 404);
    // nginx's auth_request: admitted, and a subrequest without its URI.
    let r = http
        .get(
            &fg.url("/v1/authorize"),
            &[("x-original-uri", "/api/y"), ("x-client", "c")],
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(http.get(&fg.url("/v1/authorize"), &[]).await.status, 400);
    // Envoy: an answer (OK), and a request without a domain
    // (INVALID_ARGUMENT, a 4xx).
    let mut rls = rls_client(fg.grpc).await;
    rls.should_rate_limit(rls_request("edge", "u1"))
        .await
        .unwrap();
    let e = rls
        .should_rate_limit(rls_request("", "u1"))
        .await
        .expect_err("no domain");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    let ticks_before = procfs::cpu_ticks(fg.pid());
    let after = scrape(&http, &fg).await;
    let ticks_after = procfs::cpu_ticks(fg.pid());
    for (kind, class, n) in [
        ("gateway", "2xx", 2.0),
        ("gateway", "4xx", 1.0),
        ("decision_api", "2xx", 1.0),
        ("decision_api", "4xx", 1.0),
        ("authorize", "2xx", 1.0),
        ("authorize", "4xx", 1.0),
        ("rls", "2xx", 1.0),
        ("rls", "4xx", 1.0),
        ("admin", "2xx", 1.0),
    ] {
        assert_eq!(requests(&after, kind, class), n, "{kind} {class}\n{after}");
    }
    assert_eq!(
        count(
            &after,
            "floodgate_request_duration_seconds_count",
            &[("kind", "gateway")]
        ),
        3.0
    );
    assert_eq!(
        count(&after, "floodgate_upstream_duration_seconds_count", &[]),
        2.0
    );
    assert_eq!(
        count(
            &after,
            "floodgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(
        after.contains("floodgate_build_info{") && after.contains("commit=\""),
        "{after}"
    );
    // The process, read from /proc/self at the scrape.
    // The CPU time the kernel counted, in its ticks (USER_HZ, 100 a second
    // on Linux), read on either side of the scrape. A process this young
    // may not have spent a tick yet.
    let cpu = count(&after, "process_cpu_seconds_total", &[]);
    let ticks = (cpu * 100.0).round() as u64;
    assert!(
        (ticks_before..=ticks_after).contains(&ticks),
        "process_cpu_seconds_total {cpu} is not between {ticks_before} and {ticks_after} ticks"
    );
    let rss = count(&after, "process_resident_memory_bytes", &[]);
    let expected = fg.rss_kib() as f64 * 1024.0;
    assert!(
        rss > expected / 2.0 && rss < expected * 2.0,
        "{rss} vs {expected}"
    );
    let fds = count(&after, "process_open_fds", &[]);
    assert!(
        fds >= 4.0 && fds <= count(&after, "process_max_fds", &[]),
        "{fds}"
    );
    let started = count(&after, "process_start_time_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now && started > now - 600.0,
        "{started} vs {now}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_counted_by_reason() {
    let http = Http::new();
    // Nothing listens: connect.
    let closed = free_addr();
    let fg = Floodgate::launch(config(&format!("http://{closed}"), MEMORY, 100)).await;
    assert_eq!(
        http.get(&fg.url("/api/x"), &[("x-client", "a")])
            .await
            .status,
        502
    );
    let text = scrape(&http, &fg).await;
    assert_eq!(
        count(
            &text,
            "floodgate_upstream_failures_total",
            &[("reason", "connect")]
        ),
        1.0
    );
    assert_eq!(
        count(
            &text,
            "floodgate_upstream_failures_total",
            &[("reason", "timeout")]
        ),
        0.0
    );
    assert_eq!(requests(&text, "gateway", "5xx"), 1.0);
    drop(fg);

    // Slower than upstream_timeout (300ms): timeout.
    let upstream = Upstream::start().await;
    let fg = Floodgate::launch(config(&format!("http://{}", upstream.addr), MEMORY, 100)).await;
    let r = http.get(&fg.url("/slow?ms=2000"), &[]).await;
    assert_eq!(r.status, 504, "{}", r.text());
    let text = scrape(&http, &fg).await;
    assert_eq!(
        count(
            &text,
            "floodgate_upstream_failures_total",
            &[("reason", "timeout")]
        ),
        1.0
    );
    assert_eq!(
        count(
            &text,
            "floodgate_upstream_failures_total",
            &[("reason", "connect")]
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_applied_and_refused_are_counted_with_their_time() {
    let upstream = Upstream::start().await;
    let url = format!("http://{}", upstream.addr);
    let fg = Floodgate::launch(config(&url, MEMORY, 2)).await;
    let http = Http::new();
    let text = scrape(&http, &fg).await;
    assert_eq!(
        count(&text, "floodgate_config_last_reload_successful", &[]),
        1.0
    );
    assert_eq!(
        count(
            &text,
            "floodgate_config_last_reload_timestamp_seconds",
            &[("result", "applied")]
        ),
        0.0
    );

    reload_counted(&http, &fg, &config(&url, MEMORY, 5), "applied").await;
    let text = scrape(&http, &fg).await;
    assert!(
        count(
            &text,
            "floodgate_config_last_reload_timestamp_seconds",
            &[("result", "applied")]
        ) > 1e9
    );
    assert_eq!(
        count(&text, "floodgate_config_last_reload_successful", &[]),
        1.0
    );

    // Not TOML: refused, the old config kept.
    reload_counted(&http, &fg, "[server\n", "refused").await;
    let text = scrape(&http, &fg).await;
    assert_eq!(
        count(&text, "floodgate_config_last_reload_successful", &[]),
        0.0
    );
    assert_eq!(
        count(
            &text,
            "floodgate_config_reloads_total",
            &[("result", "applied")]
        ),
        1.0
    );
    assert!(
        count(
            &text,
            "floodgate_config_last_reload_timestamp_seconds",
            &[("result", "refused")]
        ) > 1e9
    );
}

/// Issue 17: 3 M distinct client addresses into `max_keys = 200000` left
/// no trace in `/metrics`. Here 3 000 keys into 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_keys_past_max_keys_shows_as_evictions() {
    let fg = Floodgate::launch(config(
        "http://127.0.0.1:9",
        "[store]\nbackend = \"memory\"\nmax_keys = 200",
        100,
    ))
    .await;
    let http = Http::new();
    let text = scrape(&http, &fg).await;
    let max = count(
        &text,
        "floodgate_memory_store_max_keys",
        &[("store", "primary")],
    );
    assert!(max > 0.0 && max <= 200.0, "{max}");
    assert_eq!(
        count(
            &text,
            "floodgate_memory_store_evictions_total",
            &[("store", "primary")]
        ),
        0.0
    );
    for batch in 0..30 {
        futures_util::future::join_all((0..100).map(|i| {
            let key = format!("198.51.{batch}.{i}");
            let http = http.clone();
            let fg = &fg;
            async move { assert_eq!(http.check(fg, "api", &key, 1).await.status, 200) }
        }))
        .await;
    }
    let text = scrape(&http, &fg).await;
    let keys = count(
        &text,
        "floodgate_memory_store_keys",
        &[("store", "primary")],
    );
    assert!(keys <= max, "{keys} > {max}");
    let evicted = count(
        &text,
        "floodgate_memory_store_evictions_total",
        &[("store", "primary")],
    );
    assert!(evicted >= 3000.0 - max, "{evicted}\n{text}");
    assert_eq!(
        count(
            &text,
            "floodgate_memory_store_expired_reclaimed_total",
            &[("store", "primary")]
        ),
        0.0,
        "nothing had expired"
    );
}

/// Redis on a port nothing listens on.
fn dead_redis(on_error: &str) -> String {
    format!(
        "[store]\nbackend = \"redis\"\nurl = \"redis://{}/0\"\ntimeout = \"100ms\"\non_error = \"{on_error}\"",
        free_addr()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_without_the_store_are_counted_by_what_on_error_did() {
    let http = Http::new();
    for (on_error, other) in [("local", "allow"), ("allow", "local")] {
        let upstream = Upstream::start().await;
        let fg = Floodgate::launch(config(
            &format!("http://{}", upstream.addr),
            &dead_redis(on_error),
            100,
        ))
        .await;
        for _ in 0..3 {
            let r = http.get(&fg.url("/api/x"), &[("x-client", "a")]).await;
            assert_eq!(r.status, 200, "{on_error}: {}", r.text());
        }
        assert_eq!(http.check(&fg, "api", "b", 1).await.status, 200);
        let text = scrape(&http, &fg).await;
        assert_eq!(count(&text, "floodgate_store_up", &[]), 0.0);
        assert_eq!(
            count(
                &text,
                "floodgate_store_fallback_decisions_total",
                &[("on_error", on_error)]
            ),
            4.0,
            "{on_error}\n{text}"
        );
        assert_eq!(
            count(
                &text,
                "floodgate_store_fallback_decisions_total",
                &[("on_error", other)]
            ),
            0.0
        );
        if on_error == "local" {
            assert!(
                count(
                    &text,
                    "floodgate_memory_store_keys",
                    &[("store", "local_fallback")]
                ) >= 2.0
            );
        }
    }
}

/// Every `floodgate_*` and `process_*` metric named in `expr`, with the
/// `label="value"` matchers given to it (regular expressions and negations
/// left out: they need no series to be valid).
fn metrics_named(expr: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut found = Vec::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += 1;
            }
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let name: String = chars[start..i].iter().collect();
            if !(name.starts_with("floodgate_") || name.starts_with("process_")) {
                continue;
            }
            let mut matchers = Vec::new();
            if chars.get(i) == Some(&'{') {
                let end = (i..chars.len()).find(|&j| chars[j] == '}').unwrap();
                let inner: String = chars[i + 1..end].iter().collect();
                for m in inner.split(',') {
                    if let Some((k, v)) = m.split_once('=')
                        && !k.ends_with('!')
                        && !v.starts_with('~')
                    {
                        matchers.push((k.trim().to_owned(), v.trim().trim_matches('"').to_owned()));
                    }
                }
                i = end + 1;
            }
            found.push((name, matchers));
            continue;
        }
        i += 1;
    }
    found
}

/// The problems of `exprs` against the exposition `text`: metrics it does
/// not have, or not with a label a matcher names (`job` and `instance`
/// are Prometheus's own). Label values are not held to it: a series such
/// as `outcome="error"` exists only once something failed.
fn missing_from(text: &str, exprs: &[String]) -> BTreeSet<String> {
    let mut missing = BTreeSet::new();
    for expr in exprs {
        for (name, matchers) in metrics_named(expr) {
            if value(text, &name, &[]).is_none() {
                missing.insert(format!("{name} (in {expr})"));
                continue;
            }
            let prefix = format!("{name}{{");
            for (label, _) in matchers
                .iter()
                .filter(|(k, _)| k != "job" && k != "instance")
            {
                let named = format!("{label}=\"");
                let labelled = text.lines().any(|l| {
                    l.strip_prefix(&prefix).is_some_and(|rest| {
                        rest.starts_with(&named) || rest.contains(&format!(",{named}"))
                    })
                });
                if !labelled {
                    missing.insert(format!("{name} has no label {label} (in {expr})"));
                }
            }
        }
    }
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_and_the_grafana_dashboard_name_only_exported_metrics() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let rules_path = format!("{root}/deploy/prometheus/alerts.yml");
    let rules_text = std::fs::read_to_string(&rules_path).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&rules_text).unwrap();
    let mut alert_exprs = Vec::new();
    for group in docs[0]["groups"].as_vec().unwrap() {
        for rule in group["rules"].as_vec().unwrap() {
            let alert = rule["alert"].as_str().unwrap();
            assert!(alert.starts_with("Floodgate"), "{alert}");
            assert!(
                ["page", "warning", "info"].contains(&rule["labels"]["severity"].as_str().unwrap()),
                "{alert}: severity"
            );
            assert!(
                rule["annotations"]["summary"].as_str().is_some(),
                "{alert}: summary"
            );
            alert_exprs.push(rule["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(alert_exprs.len() >= 8, "{alert_exprs:?}");

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/grafana/floodgate.json")).unwrap(),
    )
    .unwrap();
    let mut panel_exprs = Vec::new();
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "panel ids repeat"
        );
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            panel_exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            panel_exprs.push(query.to_owned());
        }
    }
    assert!(panel_exprs.len() >= 20, "{panel_exprs:?}");

    // A live instance, a few requests of each kind so their series exist
    // (most exist from zero anyway).
    let upstream = Upstream::start().await;
    let fg = Floodgate::launch(config(&format!("http://{}", upstream.addr), MEMORY, 1)).await;
    let http = Http::new();
    for _ in 0..2 {
        http.get(&fg.url("/api/x"), &[("x-client", "a")]).await;
    }
    http.check(&fg, "api", "b", 1).await;
    http.get(&fg.url("/v1/authorize"), &[("x-original-uri", "/api/y")])
        .await;
    rls_client(fg.grpc)
        .await
        .should_rate_limit(rls_request("edge", "u"))
        .await
        .unwrap();
    let text = scrape(&http, &fg).await;
    let missing = missing_from(&text, &alert_exprs);
    assert!(
        missing.is_empty(),
        "alert rules name metrics /metrics lacks: {missing:#?}"
    );
    let missing = missing_from(&text, &panel_exprs);
    assert!(
        missing.is_empty(),
        "the dashboard names metrics /metrics lacks: {missing:#?}"
    );

    // Every family exported is listed in docs/REFERENCE.md §11, under the
    // name a query uses.
    let reference = std::fs::read_to_string(format!("{root}/docs/REFERENCE.md")).unwrap();
    let section = reference
        .split("## 11. Metrics")
        .nth(1)
        .and_then(|s| s.split("\n## 12.").next())
        .unwrap();
    for line in text.lines() {
        let Some((name, kind)) = line.strip_prefix("# TYPE ").and_then(|l| l.split_once(' '))
        else {
            continue;
        };
        let queried = match kind {
            "counter" => format!("{name}_total"),
            "info" => format!("{name}_info"),
            _ => name.to_owned(),
        };
        assert!(
            section.contains(&format!("| `{queried}` |")),
            "{queried} is not listed in docs/REFERENCE.md §11"
        );
    }

    // promtool (scripts/test.sh installs Debian's prometheus package): the
    // rules file is valid as Prometheus reads it.
    let promtool = crate::support::host::find_program(
        "FLOODGATE_TEST_PROMTOOL",
        "promtool",
        &["/usr/bin/promtool"],
    )
    .unwrap_or_else(|| {
        panic!(
            "promtool is not installed: the alert rules are checked with it. \
                 Run scripts/test.sh (it installs Debian's prometheus package), \
                 or set FLOODGATE_TEST_PROMTOOL"
        )
    });
    let out = std::process::Command::new(&promtool)
        .args(["check", "rules", &rules_path])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool.display()));
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
