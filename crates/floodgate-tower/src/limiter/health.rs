//! Whether the store is answering, and when to try it again while it is not.
//!
//! After a failure, requests stop waiting on the store: they go straight to
//! `on_error`, and one call per [`PROBE_INTERVAL`] (a request, or a block
//! sync) tries the store again. A dead store then costs each request nothing
//! instead of a full timeout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use floodgate_core::{Timestamp, micros_of};

/// While the store is down, how often a request is let through to try it.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// Health of the store, shared by every request.
#[derive(Debug)]
pub(crate) struct StoreHealth {
    healthy: AtomicBool,
    /// While unhealthy: the time (µs) from which the next probe may go.
    next_probe_us: AtomicU64,
}

impl Default for StoreHealth {
    fn default() -> Self {
        StoreHealth {
            healthy: AtomicBool::new(true),
            next_probe_us: AtomicU64::new(0),
        }
    }
}

impl StoreHealth {
    /// Whether the last store call succeeded.
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Whether a request should go to the store now: always while healthy,
    /// otherwise for one caller per probe interval.
    pub(crate) fn should_try(&self, now: Timestamp) -> bool {
        if self.is_healthy() {
            return true;
        }
        let now = now.as_micros();
        let next = self.next_probe_us.load(Ordering::Acquire);
        now >= next
            && self
                .next_probe_us
                .compare_exchange(
                    next,
                    now.saturating_add(micros_of(PROBE_INTERVAL)),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    /// Records a call that the store answered; `true` if it had been down.
    pub(crate) fn record_success(&self) -> bool {
        !self.healthy.swap(true, Ordering::AcqRel)
    }

    /// Records a failed call; `true` if it had been up.
    pub(crate) fn record_failure(&self, now: Timestamp) -> bool {
        self.next_probe_us.store(
            now.as_micros().saturating_add(micros_of(PROBE_INTERVAL)),
            Ordering::Release,
        );
        self.healthy.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Timestamp {
        Timestamp::from_micros(ms * 1000)
    }

    #[test]
    fn transitions_are_reported_once() {
        let h = StoreHealth::default();
        assert!(h.is_healthy());
        assert!(!h.record_success(), "no transition");
        assert!(h.record_failure(ms(0)), "up -> down");
        assert!(!h.record_failure(ms(1)), "still down: no new transition");
        assert!(h.record_success(), "down -> up");
        assert!(h.is_healthy());
    }

    #[test]
    fn one_probe_per_interval_while_down() {
        let h = StoreHealth::default();
        assert!(h.should_try(ms(0)));
        h.record_failure(ms(1000));
        assert!(!h.should_try(ms(1000)));
        assert!(!h.should_try(ms(1249)));
        assert!(h.should_try(ms(1250)), "the first caller probes");
        assert!(!h.should_try(ms(1250)), "the others do not");
        assert!(!h.should_try(ms(1499)));
        assert!(h.should_try(ms(1500)));
        h.record_success();
        assert!(h.should_try(ms(1500)));
        assert!(h.should_try(ms(1500)));
    }
}
