//! Prometheus metrics: decisions by rule and outcome, store calls, requests
//! answered by kind of route and status class, the upstream, the fallbacks
//! of `on_error`, the memory store's size and evictions, config reloads,
//! build info and the process's own CPU, memory and files; and
//! [`CountRequests`], the layer that counts requests as they are answered.
//!
//! Label sets stay bounded: rules come from the config, everything else
//! from a fixed set; no client key and no path ever becomes a label. What
//! the request path touches is resolved once (counter and histogram
//! handles in arrays), so counting a request allocates nothing; what is
//! costly to know (the memory store's size, `/proc/self`) is read when
//! `/metrics` is scraped.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use floodgate_core::MemoryStore;
use floodgate_tower::{CostFallback, Observer, Outcome, StoreCall, StoreFallback};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    rule: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    rule: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DelayLabels {
    rule: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: &'static str,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OnErrorLabels {
    on_error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50µs .. ~1.6s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Buckets for whole requests and upstream calls, which last longer than
/// a store call: 1 ms .. ~33 s.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Where a request was answered, for `floodgate_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// Through the rate-limit layer to the upstream (or the demo API).
    Gateway,
    /// `POST /v1/check` and `POST /v1/charge`.
    DecisionApi,
    /// `GET /v1/authorize`, nginx's `auth_request`.
    Authorize,
    /// The Envoy rate limit service on the gRPC listener.
    Rls,
    /// The admin listener: `/metrics`, health, `/admin/*`, the dashboard.
    Admin,
}

impl RouteKind {
    /// Every kind, in the order of their indices (`RouteKind::index`).
    pub const ALL: [RouteKind; 5] = [
        RouteKind::Gateway,
        RouteKind::DecisionApi,
        RouteKind::Authorize,
        RouteKind::Rls,
        RouteKind::Admin,
    ];

    /// A label: `gateway`, `decision_api`, `authorize`, `rls` or `admin`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RouteKind::Gateway => "gateway",
            RouteKind::DecisionApi => "decision_api",
            RouteKind::Authorize => "authorize",
            RouteKind::Rls => "rls",
            RouteKind::Admin => "admin",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// The status classes a request is counted under.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The counters and the latency histogram of one [`RouteKind`], resolved
/// once: counting a request is an atomic add and a histogram observation,
/// with no lookup and no allocation. Cheap to clone (handles).
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    /// By status class, in the order of `STATUS_CLASSES`.
    answered: [Counter; STATUS_CLASSES.len()],
    latency: Histogram,
}

impl RouteMetrics {
    /// Counts one request answered with `status` after `elapsed`.
    pub fn record(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, STATUS_CLASSES.len()) - 1;
        if let Some(counter) = self.answered.get(class) {
            counter.inc();
        }
        self.latency.observe(elapsed.as_secs_f64());
    }
}

/// A gRPC status code as the HTTP status class it stands for (the mapping
/// of `google.rpc.Code`): `OK` 2xx; `CANCELLED`, `INVALID_ARGUMENT`,
/// `NOT_FOUND`, `ALREADY_EXISTS`, `PERMISSION_DENIED`,
/// `RESOURCE_EXHAUSTED`, `FAILED_PRECONDITION`, `ABORTED`, `OUT_OF_RANGE`
/// and `UNAUTHENTICATED` 4xx; the rest (`UNKNOWN`, `DEADLINE_EXCEEDED`,
/// `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`) 5xx.
pub fn grpc_status_class(code: i32) -> u16 {
    match code {
        0 => 200,
        1 | 3 | 5 | 6 | 7 | 8 | 9 | 10 | 11 | 16 => 400,
        _ => 500,
    }
}

/// Why a request to the upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// No connection could be made.
    Connect,
    /// No answer within `server.upstream_timeout`.
    Timeout,
    /// The connection broke, or the answer was not HTTP.
    Other,
}

impl UpstreamFailure {
    const ALL: [UpstreamFailure; 3] = [
        UpstreamFailure::Connect,
        UpstreamFailure::Timeout,
        UpstreamFailure::Other,
    ];

    const fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Other => "other",
        }
    }
}

/// The proxy's metrics, resolved once: the time to the upstream's answer
/// head, and failures by reason. Cheap to clone (handles).
#[derive(Clone, Debug)]
pub struct UpstreamMetrics {
    latency: Histogram,
    /// In the order of `UpstreamFailure::ALL`.
    failures: [Counter; UpstreamFailure::ALL.len()],
}

impl Default for UpstreamMetrics {
    /// Handles registered nowhere (a proxy in a unit test).
    fn default() -> Self {
        UpstreamMetrics {
            latency: request_histogram(),
            failures: Default::default(),
        }
    }
}

impl UpstreamMetrics {
    /// The upstream answered (its head) after `elapsed`.
    pub fn answered(&self, elapsed: Duration) {
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// A request to the upstream failed.
    pub fn failed(&self, why: UpstreamFailure) {
        if let Some(counter) = self.failures.get(why as usize) {
            counter.inc();
        }
    }
}

/// The decision counters looked up so far, by rule name, then outcome (in
/// the order of `Outcome::ALL`). Looked up on every decision, with a
/// fast hash: rule names come from the config, not from clients.
type DecisionCounters =
    HashMap<Box<str>, [Option<Counter>; Outcome::ALL.len()], foldhash::fast::RandomState>;

/// The latency histogram and the error counter of one kind of store call.
struct CallMetrics {
    latency: Histogram,
    errors: Counter,
}

/// Every metric floodgate exports.
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    /// Handles on `decisions`' counters (each shares its count with the
    /// family's): a decision then costs a read lock and two lookups by
    /// `&str`, where the family's own lookup needs an owned label set, a
    /// `String` per decision.
    decision_counters: RwLock<DecisionCounters>,
    /// Handles on the store call families' series, by kind of call (in the
    /// order of `StoreCall::ALL`): no lookup per call.
    calls: [CallMetrics; StoreCall::ALL.len()],
    active_blocks: Gauge,
    store_up: Gauge,
    /// Times the gateway stopped accepting at `[server] max_connections`.
    connection_limit_reached: Counter,
    /// Cost units charged on answers, by rule.
    charged_units: Family<RuleLabels, Counter>,
    /// Answers whose cost header was not charged as named, by rule and why.
    cost_fallbacks: Family<FallbackLabels, Counter>,
    /// Per-key overrides put in the store, by rule.
    overrides: Family<RuleLabels, Gauge>,
    /// Requests held by `on_limit = "delay"`, by rule and how it ended.
    delayed: Family<DelayLabels, Counter>,
    /// Requests held right now.
    held: Gauge,
    /// Requests answered, by kind of route (in the order of
    /// `RouteKind::ALL`).
    routes: [Arc<RouteMetrics>; RouteKind::ALL.len()],
    upstream: UpstreamMetrics,
    /// Rule decisions the store could not make, by what `on_error` did (in
    /// the order of `StoreFallback` `Local`, `Allow`).
    fallbacks: [Counter; 2],
    /// Config reloads, applied and refused.
    reloads_applied: Counter,
    reloads_refused: Counter,
    /// When the last reload was applied, and refused (Unix seconds; 0:
    /// none yet).
    last_applied: Gauge<f64, std::sync::atomic::AtomicU64>,
    last_refused: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// 1 when the last reload was applied (or there was none), 0 when it
    /// was refused.
    last_reload_successful: Gauge,
    /// The memory stores whose size and evictions are exported.
    memory_stores: Arc<RwLock<Vec<(&'static str, MemoryStore)>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut root = Registry::default();
        // The process's own metrics carry their conventional names, with
        // no prefix; everything else is `floodgate_*`.
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("floodgate");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Rate-limit decisions by rule and outcome",
            decisions.clone(),
        );
        let store_latency =
            Family::<CallLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "store_call_duration_seconds",
            "Latency of store calls",
            store_latency.clone(),
        );
        let store_errors = Family::<CallLabels, Counter>::default();
        // Every kind of call starts at zero, so the series exist (and alert
        // rules on their rate work) before the first error.
        let calls = StoreCall::ALL.map(|call| {
            let labels = CallLabels {
                call: call.as_str(),
            };
            CallMetrics {
                latency: store_latency.get_or_create(&labels).clone(),
                errors: store_errors.get_or_create(&labels).clone(),
            }
        });
        registry.register(
            "store_errors",
            "Store calls that failed or timed out",
            store_errors.clone(),
        );
        let active_blocks = Gauge::default();
        registry.register(
            "active_blocks",
            "Blocks in force (manual and penalty), as last read from the store",
            active_blocks.clone(),
        );
        let store_up = Gauge::default();
        registry.register(
            "store_up",
            "1 while the store answers, 0 while it is failing",
            store_up.clone(),
        );
        let connection_limit_reached = Counter::default();
        registry.register(
            "connection_limit_reached",
            "Times the gateway reached server.max_connections and stopped accepting until a connection closed",
            connection_limit_reached.clone(),
        );
        let charged_units = Family::<RuleLabels, Counter>::default();
        registry.register(
            "charged_units",
            "Cost units charged once the answer was known (rules with count_status or cost_header)",
            charged_units.clone(),
        );
        let cost_fallbacks = Family::<FallbackLabels, Counter>::default();
        registry.register(
            "cost_header_fallbacks",
            "Answers whose cost header was missing or malformed (the rule's cost was charged) or too large (the rule's capacity was charged)",
            cost_fallbacks.clone(),
        );
        let overrides = Family::<RuleLabels, Gauge>::default();
        registry.register(
            "overrides",
            "Per-key overrides put in the store (the admin API), by rule, as this instance last read them",
            overrides.clone(),
        );
        let delayed = Family::<DelayLabels, Counter>::default();
        registry.register(
            "delayed",
            "Requests held by a rule with on_limit = delay, by rule and result (admitted, or refused when its wait outgrew max_delay)",
            delayed.clone(),
        );
        let held = Gauge::default();
        registry.register(
            "held",
            "Requests being held right now by rules with on_limit = delay",
            held.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        let request_latency =
            Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                request_histogram,
            );
        // Every kind and class from zero: alert rules on ratios work before
        // the first error.
        let routes = RouteKind::ALL.map(|kind| {
            Arc::new(RouteMetrics {
                answered: STATUS_CLASSES.map(|class| {
                    requests
                        .get_or_create(&RequestLabels {
                            kind: kind.as_str(),
                            class,
                        })
                        .clone()
                }),
                latency: request_latency
                    .get_or_create(&KindLabels {
                        kind: kind.as_str(),
                    })
                    .clone(),
            })
        });
        registry.register(
            "requests",
            "Requests answered, by kind of route and status class (RLS: the gRPC status as its HTTP class)",
            requests,
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its answer's head, by kind of route",
            request_latency,
        );
        let upstream_latency = request_histogram();
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a request upstream to the upstream's answer head",
            upstream_latency.clone(),
        );
        let upstream_failures = Family::<ReasonLabels, Counter>::default();
        let upstream = UpstreamMetrics {
            latency: upstream_latency,
            failures: UpstreamFailure::ALL.map(|why| {
                upstream_failures
                    .get_or_create(&ReasonLabels {
                        reason: why.as_str(),
                    })
                    .clone()
            }),
        };
        registry.register(
            "upstream_failures",
            "Requests the upstream did not answer (answered 502 or 504), by reason: connect, timeout, other",
            upstream_failures,
        );
        let fallback_family = Family::<OnErrorLabels, Counter>::default();
        let fallbacks = [StoreFallback::Local, StoreFallback::Allow].map(|f| {
            fallback_family
                .get_or_create(&OnErrorLabels {
                    on_error: f.as_str(),
                })
                .clone()
        });
        registry.register(
            "store_fallback_decisions",
            "Rule decisions the store could not make: decided by the in-process store (on_error = local) or let through unchecked (on_error = allow)",
            fallback_family,
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        let reloads_applied = reloads
            .get_or_create(&ResultLabels { result: "applied" })
            .clone();
        let reloads_refused = reloads
            .get_or_create(&ResultLabels { result: "refused" })
            .clone();
        registry.register(
            "config_reloads",
            "Config reloads (SIGHUP), applied or refused (the old config kept)",
            reloads,
        );
        let last_reload =
            Family::<ResultLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let last_applied = last_reload
            .get_or_create(&ResultLabels { result: "applied" })
            .clone();
        let last_refused = last_reload
            .get_or_create(&ResultLabels { result: "refused" })
            .clone();
        registry.register(
            "config_last_reload_timestamp_seconds",
            "When the last reload was applied, and refused (Unix time; 0: none since the start)",
            last_reload,
        );
        let last_reload_successful = Gauge::default();
        last_reload_successful.set(1);
        registry.register(
            "config_last_reload_successful",
            "1 when the last config reload was applied (or none was tried), 0 when it was refused",
            last_reload_successful.clone(),
        );
        registry.register(
            "build",
            "The version and commit this binary was built from",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", env!("FLOODGATE_COMMIT")),
            ]),
        );
        let memory_stores = Arc::new(RwLock::new(Vec::new()));
        registry.register_collector(Box::new(MemoryStoreCollector(Arc::clone(&memory_stores))));
        Metrics {
            registry: root,
            decisions,
            decision_counters: RwLock::default(),
            calls,
            active_blocks,
            store_up,
            connection_limit_reached,
            charged_units,
            cost_fallbacks,
            overrides,
            delayed,
            held,
            routes,
            upstream,
            fallbacks,
            reloads_applied,
            reloads_refused,
            last_applied,
            last_refused,
            last_reload_successful,
            memory_stores,
        }
    }

    /// The handles that count requests answered by `kind` of route.
    pub fn route(&self, kind: RouteKind) -> Arc<RouteMetrics> {
        Arc::clone(&self.routes[kind.index()])
    }

    /// The handles that time the upstream and count its failures.
    pub fn upstream(&self) -> UpstreamMetrics {
        self.upstream.clone()
    }

    /// Exports `store`'s size, bound and evictions as `store="<name>"`,
    /// read at every scrape.
    pub fn watch_memory_store(&self, name: &'static str, store: MemoryStore) {
        self.memory_stores
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name, store));
    }

    /// Counts a config reload, `applied` or refused, now.
    pub fn count_reload(&self, applied: bool) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        if applied {
            self.reloads_applied.inc();
            self.last_applied.set(now);
        } else {
            self.reloads_refused.inc();
            self.last_refused.set(now);
        }
        self.last_reload_successful.set(i64::from(applied));
    }

    /// Sets the number of blocks in force, as last read from the store.
    pub fn set_active_blocks(&self, n: usize) {
        self.active_blocks.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Sets whether the store answers.
    pub fn set_store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    /// Counts one time the gateway reached its connection cap.
    pub fn count_connection_limit_reached(&self) {
        self.connection_limit_reached.inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Metrics {
    /// Decisions so far by rule (`""`: decisions of no rule, such as access
    /// lists and manual blocks), each as `(outcome, count)` for every
    /// outcome of [`Outcome::ALL`] seen: what the dashboard charts.
    pub fn decision_counts(&self) -> Vec<(String, Vec<(&'static str, u64)>)> {
        let known = self
            .decision_counters
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut counts: Vec<(String, Vec<(&'static str, u64)>)> = known
            .iter()
            .map(|(rule, by)| {
                let outcomes = Outcome::ALL
                    .iter()
                    .zip(by)
                    .filter_map(|(o, c)| Some((o.as_str(), c.as_ref()?.get())))
                    .collect();
                (rule.to_string(), outcomes)
            })
            .collect();
        counts.sort_by(|a, b| a.0.cmp(&b.0));
        counts
    }
}

impl Observer for Metrics {
    fn on_decision(&self, rule: Option<&str>, outcome: Outcome) {
        let rule = rule.unwrap_or("");
        {
            let known = self
                .decision_counters
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(Some(counter)) = known.get(rule).and_then(|by| by.get(outcome.index())) {
                counter.inc();
                return;
            }
        }
        let counter = self
            .decisions
            .get_or_create(&DecisionLabels {
                rule: rule.to_owned(),
                outcome: outcome.as_str(),
            })
            .clone();
        counter.inc();
        if let Some(slot) = self
            .decision_counters
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(rule.into())
            .or_default()
            .get_mut(outcome.index())
        {
            *slot = Some(counter);
        }
    }

    fn on_store_call(&self, call: StoreCall, latency: Duration, ok: bool) {
        let Some(metrics) = self.calls.get(call.index()) else {
            return;
        };
        metrics.latency.observe(latency.as_secs_f64());
        if !ok {
            metrics.errors.inc();
        }
    }

    fn on_store_health(&self, healthy: bool) {
        self.set_store_up(healthy);
    }

    fn on_store_fallback(&self, fallback: StoreFallback, decisions: usize) {
        let i = match fallback {
            StoreFallback::Local => 0,
            StoreFallback::Allow => 1,
        };
        if let Some(counter) = self.fallbacks.get(i) {
            counter.inc_by(u64::try_from(decisions).unwrap_or(u64::MAX));
        }
    }

    fn on_charge(&self, rule: &str, cost: u64) {
        self.charged_units
            .get_or_create(&RuleLabels {
                rule: rule.to_owned(),
            })
            .inc_by(cost);
    }

    fn on_delay(&self, rule: &str, admitted: bool, _waited: Duration) {
        self.delayed
            .get_or_create(&DelayLabels {
                rule: rule.to_owned(),
                result: if admitted { "admitted" } else { "refused" },
            })
            .inc();
    }

    fn on_held(&self, held: usize) {
        self.held.set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    fn on_override_count(&self, rule: &str, count: usize) {
        self.overrides
            .get_or_create(&RuleLabels {
                rule: rule.to_owned(),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    fn on_cost_fallback(&self, rule: &str, reason: CostFallback) {
        self.cost_fallbacks
            .get_or_create(&FallbackLabels {
                rule: rule.to_owned(),
                reason: reason.as_str(),
            })
            .inc();
    }
}

/// The memory stores' size, bound, evictions and reclaims, read at each
/// scrape ([`MemoryStore::stats`] takes every shard's lock in turn: too
/// much for the request path, nothing for a scrape).
#[derive(Debug)]
struct MemoryStoreCollector(Arc<RwLock<Vec<(&'static str, MemoryStore)>>>);

impl Collector for MemoryStoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let stats: Vec<_> = self
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, store)| (StoreLabels { store: name }, store.stats()))
            .collect();
        if stats.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "memory_store_keys",
            "(rule, key) states held by the memory store, expired ones not yet dropped included",
            None,
            MetricType::Gauge,
        )?;
        for (labels, s) in &stats {
            ConstGauge::new(s.keys).encode(family.encode_family(labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "memory_store_max_keys",
            "The most (rule, key) states the memory store holds (max_keys, local_max_keys)",
            None,
            MetricType::Gauge,
        )?;
        for (labels, s) in &stats {
            ConstGauge::new(s.max_keys).encode(family.encode_family(labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "memory_store_evictions",
            "Unexpired states evicted to make room for new keys: counters forgotten early, their clients starting again from a full quota",
            None,
            MetricType::Counter,
        )?;
        for (labels, s) in &stats {
            ConstCounter::new(s.evicted).encode(family.encode_family(labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "memory_store_expired_reclaimed",
            "Expired states dropped to make room: harmless, they held nothing",
            None,
            MetricType::Counter,
        )?;
        for (labels, s) in &stats {
            ConstCounter::new(s.reclaimed).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// The process's CPU time, memory, open files and start time under their
/// conventional unprefixed names (`process_*`), read from `/proc/self` at
/// each scrape; on a system without `/proc` they are left out.
///
/// Written here rather than taken from a crate: the process collectors
/// that exist belong to the other Prometheus client (`prometheus`), and
/// the five numbers are a few lines of `/proc` parsing.
#[derive(Debug)]
struct ProcessCollector;

/// What `/proc/self` says, each `None` where it could not be read.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    start_time_seconds: Option<f64>,
}

impl ProcessStats {
    fn read() -> Self {
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let page = rustix::param::page_size() as u64;
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let fields = stat.as_deref().and_then(stat_fields);
        let field = |i: usize| fields.as_ref()?.get(i)?.parse::<u64>().ok();
        // The fields after the command name start at field 3 (`state`):
        // utime is field 14, stime 15, starttime 22, vsize 23, rss 24.
        let cpu_seconds = field(11)
            .zip(field(12))
            .map(|(user, system)| (user + system) as f64 / ticks);
        static START: OnceLock<Option<f64>> = OnceLock::new();
        let start_time_seconds = *START.get_or_init(|| {
            let boot = std::fs::read_to_string("/proc/stat")
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())?;
            Some(boot as f64 + field(19)? as f64 / ticks)
        });
        ProcessStats {
            cpu_seconds,
            resident_bytes: field(21).map(|pages| pages * page),
            virtual_bytes: field(20),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|dir| dir.count() as u64),
            max_fds: rustix::process::getrlimit(rustix::process::Resource::Nofile).current,
            start_time_seconds,
        }
    }
}

/// The fields of `/proc/self/stat` after the command name (which may hold
/// spaces and parentheses: it ends at the last `)`).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let stats = ProcessStats::read();
        if let Some(v) = stats.cpu_seconds {
            let family = encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(v).encode(family)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size, in bytes",
                stats.resident_bytes.map(|v| v as f64),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size, in bytes",
                stats.virtual_bytes.map(|v| v as f64),
            ),
            (
                "process_open_fds",
                "Open file descriptors",
                stats.open_fds.map(|v| v as f64),
            ),
            (
                "process_max_fds",
                "The most file descriptors the process may open (RLIMIT_NOFILE)",
                stats.max_fds.map(|v| v as f64),
            ),
            (
                "process_start_time_seconds",
                "When the process started, in seconds since the Unix epoch",
                stats.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(v).encode(family)?;
            }
        }
        Ok(())
    }
}

/// Counts and times every request a service answers as one [`RouteKind`]
/// (the time to the answer's head: a streamed body is not waited for).
#[derive(Clone, Debug)]
pub struct CountRequests {
    metrics: Arc<RouteMetrics>,
}

impl CountRequests {
    /// The layer counting into `metrics`.
    pub fn new(metrics: Arc<RouteMetrics>) -> Self {
        CountRequests { metrics }
    }
}

impl<S> tower::Layer<S> for CountRequests {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// A service whose answers are counted by [`CountRequests`].
#[derive(Clone, Debug)]
pub struct Counted<S> {
    inner: S,
    metrics: Arc<RouteMetrics>,
}

impl<S, B, R> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        CountedFuture {
            inner: self.inner.call(req),
            // Counted once the answer is known: one `Arc` increment is the
            // cost before it.
            metrics: Some(Arc::clone(&self.metrics)),
            started: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`Counted`] service.
    pub struct CountedFuture<F> {
        #[pin]
        inner: F,
        metrics: Option<Arc<RouteMetrics>>,
        started: Instant,
    }
}

impl<F, R, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let (Ok(response), Some(metrics)) = (&result, this.metrics.take()) {
            metrics.record(response.status().as_u16(), this.started.elapsed());
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_are_exported_before_the_first_error() {
        let metrics = Metrics::new();
        let text = metrics.render();
        assert!(
            text.contains("floodgate_store_errors_total{call=\"check\"} 0"),
            "{text}"
        );
        metrics.on_store_call(StoreCall::Check, Duration::from_millis(1), false);
        metrics.on_store_call(StoreCall::Ping, Duration::from_millis(1), true);
        metrics.on_store_call(StoreCall::Ping, Duration::from_secs(1), true);
        let text = metrics.render();
        for line in [
            "floodgate_store_errors_total{call=\"check\"} 1",
            "floodgate_store_errors_total{call=\"ping\"} 0",
            "floodgate_store_call_duration_seconds_count{call=\"check\"} 1",
            "floodgate_store_call_duration_seconds_count{call=\"ping\"} 2",
            "floodgate_store_call_duration_seconds_sum{call=\"ping\"} 1.001",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn decisions_count_per_rule_and_outcome_from_every_thread() {
        let metrics = Metrics::new();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..250 {
                        metrics.on_decision(Some("api"), Outcome::Allowed);
                        metrics.on_decision(None, Outcome::Denied);
                    }
                    metrics.on_decision(Some("api"), Outcome::Limited);
                });
            }
        });
        let text = metrics.render();
        for line in [
            "floodgate_decisions_total{rule=\"api\",outcome=\"allowed\"} 1000",
            "floodgate_decisions_total{rule=\"api\",outcome=\"limited\"} 4",
            "floodgate_decisions_total{rule=\"\",outcome=\"denied\"} 1000",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn status_classes_and_grpc_codes() {
        let metrics = Metrics::new();
        let rls = metrics.route(RouteKind::Rls);
        for code in [0, 3, 14, 12, 8] {
            rls.record(grpc_status_class(code), Duration::from_millis(1));
        }
        metrics
            .route(RouteKind::Gateway)
            .record(101, Duration::ZERO);
        metrics
            .route(RouteKind::Gateway)
            .record(999, Duration::ZERO);
        let text = metrics.render();
        for line in [
            "floodgate_requests_total{kind=\"rls\",class=\"2xx\"} 1",
            "floodgate_requests_total{kind=\"rls\",class=\"4xx\"} 2",
            "floodgate_requests_total{kind=\"rls\",class=\"5xx\"} 2",
            "floodgate_requests_total{kind=\"gateway\",class=\"1xx\"} 1",
            "floodgate_requests_total{kind=\"gateway\",class=\"5xx\"} 1",
            "floodgate_request_duration_seconds_count{kind=\"rls\"} 5",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn stat_fields_start_after_the_command_name_whatever_it_holds() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 4 0 9000 1000 250";
        let fields = stat_fields(stat).unwrap_or_default();
        assert_eq!(fields.first(), Some(&"S"));
        assert_eq!((fields.get(11), fields.get(12)), (Some(&"7"), Some(&"3")));
        assert_eq!(fields.get(19), Some(&"9000"));
        assert_eq!(fields.get(21), Some(&"250"));
    }
}
