//! One log line per store transition, not per request.
//!
//! Alone in its own test binary on purpose: tracing caches each callsite's
//! interest globally, so when a test on another thread hits the same
//! `warn!` first without a subscriber, a thread-local capturing subscriber
//! here could miss it. With no other test running, capture is exact.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use floodgate_tower::limiter::PROBE_INTERVAL;
use floodgate_tower::{LimiterConfig, OnError};
use http::StatusCode;
use parking_lot::Mutex;

/// Collects formatted log lines.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn lines_containing(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock())
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

#[tokio::test]
async fn one_log_line_when_the_store_goes_down_and_one_when_it_returns() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let clock = clock();
    let store = FlakyStore::new(memory_store(&clock));
    let config = LimiterConfig {
        rules: vec![ip_rule("api", 100, 60)],
        on_error: OnError::Allow,
        timeout: Duration::from_millis(50),
        ..LimiterConfig::default()
    };
    let limiter = limiter(config, store.clone(), &clock, Recorder::new());
    let app = app(limiter.clone());

    store.set(Mode::Failing);
    // Many requests, several probes (one per interval), all failing.
    for _ in 0..4 {
        for _ in 0..5 {
            let reply = send(&app, get_from("/api/items", "192.0.2.7")).await;
            assert_eq!(reply.status, StatusCode::OK);
        }
        clock.advance(PROBE_INTERVAL);
    }
    assert!(limiter.sync_blocks().await.is_err());
    assert!(store.calls() >= 4, "the store was probed repeatedly");
    assert_eq!(logs.lines_containing("store unreachable"), 1);
    assert_eq!(logs.lines_containing("store reachable again"), 0);

    store.set(Mode::Up);
    for _ in 0..5 {
        send(&app, get_from("/api/items", "192.0.2.7")).await;
    }
    limiter.sync_blocks().await.unwrap();
    assert!(limiter.store_healthy());
    assert_eq!(logs.lines_containing("store unreachable"), 1);
    assert_eq!(logs.lines_containing("store reachable again"), 1);
}
