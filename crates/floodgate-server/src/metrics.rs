//! Prometheus metrics: decisions by rule and outcome, store call latency,
//! store errors, active blocks, and the times the gateway reached its
//! connection cap.
//!
//! Label sets stay bounded: rules come from the config, outcomes are a fixed
//! set, and no client key ever becomes a label.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use floodgate_tower::{CostFallback, Observer, Outcome, StoreCall};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
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

fn latency_histogram() -> Histogram {
    // 50µs .. ~1.6s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// The decision counters looked up so far, by rule name, then outcome (in
/// the order of `Outcome::ALL`).
type DecisionCounters = HashMap<Box<str>, [Option<Counter>; Outcome::ALL.len()]>;

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
        let mut registry = Registry::with_prefix("floodgate");
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
        Metrics {
            registry,
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
        }
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
}
