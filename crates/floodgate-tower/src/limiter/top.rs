//! Top clients: each rule's decisions per key over the last minutes, in
//! bounded memory, published to the store so any instance can merge every
//! instance's (see `floodgate_core::top` for the summary and its bound).
//!
//! Recording takes the rule's own lock and touches one summary: no clock
//! read, no store call. The minute moves on when the summary is published
//! or read ([`TopClients::summary`]), which the block sync does every
//! [`TOP_PUBLISH_INTERVAL`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use floodgate_core::{Timestamp, TopSummary, TopWindow, micros_of};
use parking_lot::Mutex;

/// How often an instance publishes its summary to the store.
pub const TOP_PUBLISH_INTERVAL: Duration = Duration::from_secs(5);

/// How long a published summary stays in the store: three publish
/// intervals, so a summary outlives one or two failed publishes, and a
/// stopped instance's counts leave the merge within 15 s.
pub const TOP_TTL: Duration = Duration::from_secs(15);

/// One rule's window, shared by every configuration that has the rule.
pub(crate) type RuleTop = Mutex<TopWindow>;

/// Every rule's window, by rule name: a reload keeps the windows of the
/// rules it keeps.
#[derive(Debug, Default)]
pub(crate) struct TopClients {
    rules: Mutex<HashMap<String, Arc<RuleTop>>>,
    /// When this instance last published (µs on the limiter's clock).
    published_us: AtomicU64,
}

impl TopClients {
    /// The window of the rule named `rule`, made on first use.
    pub(crate) fn of_rule(&self, rule: &str) -> Arc<RuleTop> {
        Arc::clone(self.rules.lock().entry(rule.to_owned()).or_default())
    }

    /// Every rule's window as of `now`, named `instance`. Windows no
    /// configuration holds any longer (rules a reload removed) are dropped.
    pub(crate) fn summary(&self, instance: &str, now: Timestamp) -> TopSummary {
        let minute = now.as_micros() / 60_000_000;
        let mut rules = self.rules.lock();
        rules.retain(|_, top| Arc::strong_count(top) > 1);
        let mut summaries: Vec<_> = rules
            .iter()
            .filter_map(|(name, top)| {
                let mut top = top.lock();
                top.rotate(minute);
                (top.decisions() > 0).then(|| top.summary(name))
            })
            .collect();
        summaries.sort_by(|a, b| a.rule.cmp(&b.rule));
        TopSummary {
            instance: instance.to_owned(),
            rules: summaries,
        }
    }

    /// Whether a publish is due at `now`; if so, notes it as done.
    pub(crate) fn publish_due(&self, now: Timestamp) -> bool {
        let last = self.published_us.load(Ordering::Relaxed);
        let now = now.as_micros();
        if last != 0 && now.saturating_sub(last) < micros_of(TOP_PUBLISH_INTERVAL) {
            return false;
        }
        self.published_us
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}
