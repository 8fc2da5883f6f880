//! Waiting for something to happen: polled, with a deadline; and waiting
//! out the end of a rate-limit window.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Waits, polling every 50 ms, until `probe` returns true; false after `within`.
pub(crate) async fn eventually<F, Fut>(within: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if probe().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Epoch-aligned windows (fixed and sliding window) reset at multiples of
/// their length: when the current one ends within `margin`, waits it out, so
/// a test counting to a limit never straddles a boundary.
pub(crate) async fn avoid_window_boundary(window: Duration, margin: Duration) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = Duration::from_micros(
        u64::try_from(now.as_micros() % window.as_micros()).unwrap_or_default(),
    );
    let left = window.saturating_sub(into);
    if left < margin {
        tokio::time::sleep(left + Duration::from_millis(50)).await;
    }
}

/// Polls `probe` every 20 ms until it gives a value; fails after `within`.
pub(crate) fn wait_for<T>(within: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
