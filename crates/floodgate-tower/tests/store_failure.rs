//! A store that fails or hangs: `on_error` allow / deny / local, the timeout,
//! one health report per transition, recovery, and block sync.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use common::*;
use floodgate_core::{Error, ManualClock};
use floodgate_tower::limiter::PROBE_INTERVAL;
use floodgate_tower::{
    BLOCK_SYNC_INTERVAL, CheckError, Limiter, LimiterConfig, OnError, Outcome, StoreCall,
};
use http::StatusCode;

fn failing_config(on_error: OnError, limit: u64) -> LimiterConfig {
    LimiterConfig {
        rules: vec![ip_rule("api", limit, 60)],
        on_error,
        timeout: Duration::from_millis(50),
        ..LimiterConfig::default()
    }
}

/// A limiter on a [`FlakyStore`], its app, and what it reports.
struct Harness {
    clock: ManualClock,
    store: FlakyStore,
    recorder: Arc<Recorder>,
    limiter: Limiter<FlakyStore>,
    app: Router,
}

fn harness(on_error: OnError, limit: u64) -> Harness {
    harness_with(on_error, limit, |store| store)
}

/// [`harness`] on the store `build` makes of the usual one.
fn harness_with(
    on_error: OnError,
    limit: u64,
    build: impl FnOnce(FlakyStore) -> FlakyStore,
) -> Harness {
    let clock = clock();
    let store = build(FlakyStore::new(memory_store(&clock)));
    let recorder = Recorder::new();
    let limiter = limiter(
        failing_config(on_error, limit),
        store.clone(),
        &clock,
        recorder.clone(),
    );
    let app = app(limiter.clone());
    Harness {
        app,
        clock,
        store,
        recorder,
        limiter,
    }
}

#[tokio::test]
async fn on_error_allow_admits_and_reports_each_transition_once() {
    let Harness {
        clock,
        store,
        recorder,
        limiter,
        app,
    } = harness(OnError::Allow, 1);

    store.set(Mode::Failing);
    for _ in 0..5 {
        let reply = send(&app, get_from("/api/items", "192.0.2.7")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "items");
        assert!(
            reply.header("ratelimit").is_none(),
            "nothing is known to report"
        );
    }
    assert!(!limiter.store_healthy());
    assert_eq!(
        store.calls(),
        1,
        "after a failure, requests stop waiting on the store"
    );
    assert_eq!(recorder.count(Some("api"), Outcome::Error), 5);
    assert_eq!(
        *recorder.store_calls.lock(),
        vec![(StoreCall::Check, false)]
    );

    store.set(Mode::Up);
    assert_eq!(
        send(&app, get_from("/api/items", "192.0.2.7")).await.status,
        StatusCode::OK
    );
    assert_eq!(store.calls(), 1, "no probe before the interval");
    clock.advance(PROBE_INTERVAL);
    let reply = send(&app, get_from("/api/items", "192.0.2.7")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header("ratelimit"),
        Some(r#""api";r=0;t=60"#),
        "shared limiting resumed"
    );
    assert!(limiter.store_healthy());
    assert_eq!(
        send(&app, get_from("/api/items", "192.0.2.7")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );

    assert_eq!(*recorder.health.lock(), vec![false, true]);
}

#[tokio::test]
async fn on_error_deny_answers_503() {
    let Harness {
        store,
        recorder,
        limiter,
        app,
        ..
    } = harness(OnError::Deny, 10);
    store.set(Mode::Failing);

    for _ in 0..3 {
        let reply = send(&app, get_from("/api/items", "192.0.2.7")).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(reply.header("retry-after"), Some("1"));
        assert_eq!(reply.json()["status"], 503);
    }
    assert_eq!(
        limiter.check_key("api", "alice", 1).await,
        Err(CheckError::Unavailable)
    );
    // Requests no rule applies to never needed the store.
    let reply = send(
        &app,
        request("GET", "/health", None)
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(recorder.count(Some("api"), Outcome::Error), 4);
}

#[tokio::test]
async fn on_error_local_keeps_limiting_in_process() {
    let Harness {
        clock,
        store,
        limiter,
        app,
        ..
    } = harness(OnError::Local, 2);
    store.set(Mode::Failing);

    for left in [1, 0] {
        let reply = send(&app, get_from("/api/items", "192.0.2.7")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.header("ratelimit"),
            Some(format!(r#""api";r={left};t=60"#).as_str())
        );
    }
    let reply = send(&app, get_from("/api/items", "192.0.2.7")).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        reply.json()["violated-policies"],
        serde_json::json!(["api"])
    );
    assert!(
        !limiter
            .check_key("api", "ip:192.0.2.7", 1)
            .await
            .unwrap()
            .allowed
    );
    assert!(limiter.check_key("api", "bob", 1).await.unwrap().allowed);

    // Back up: the shared store decides again (its counters are untouched).
    store.set(Mode::Up);
    clock.advance(PROBE_INTERVAL);
    let reply = send(&app, get_from("/api/items", "192.0.2.7")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("ratelimit"), Some(r#""api";r=1;t=60"#));
    assert!(limiter.store_healthy());
}

#[tokio::test(start_paused = true)]
async fn a_hanging_store_is_cut_at_the_timeout() {
    for on_error in [OnError::Allow, OnError::Deny, OnError::Local] {
        let Harness {
            store,
            limiter,
            app,
            ..
        } = harness(on_error, 5);
        store.set(Mode::Hanging);

        let started = tokio::time::Instant::now();
        let reply = send(&app, get_from("/api/items", "192.0.2.7")).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(50) && waited < Duration::from_millis(60),
            "{on_error}: waited {waited:?}"
        );
        let expected = match on_error {
            OnError::Allow | OnError::Local => StatusCode::OK,
            OnError::Deny => StatusCode::SERVICE_UNAVAILABLE,
        };
        assert_eq!(reply.status, expected, "{on_error}");
        assert!(!limiter.store_healthy());

        // The next request does not wait at all.
        let started = tokio::time::Instant::now();
        let reply = send(&app, get_from("/api/items", "192.0.2.7")).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(reply.status, expected);

        // Block syncs and admin calls are cut the same way.
        let started = tokio::time::Instant::now();
        match limiter.sync_blocks().await {
            Err(Error::Store(e)) => assert!(e.is_timeout(), "{e}"),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        assert!(limiter.ping().await.is_err());
    }
}

/// How long one request waits with the harness' store hanging, and what
/// it is answered.
async fn one_request_while_hanging(h: &Harness) -> (Duration, StatusCode) {
    h.store.set(Mode::Hanging);
    let started = tokio::time::Instant::now();
    let reply = send(&h.app, get_from("/api/items", "192.0.2.7")).await;
    (started.elapsed(), reply.status)
}

/// A store that bounds its own calls is left to do so when its bound is
/// within the limiter's timeout, and is still cut at the limiter's timeout
/// when its own is longer.
#[tokio::test(start_paused = true)]
async fn a_store_bounding_its_own_calls_is_cut_at_the_shorter_timeout() {
    for (own, expected_wait) in [
        (Duration::from_millis(30), Duration::from_millis(30)),
        (Duration::from_millis(400), Duration::from_millis(50)),
    ] {
        let h = harness_with(OnError::Deny, 5, |store| store.with_own_timeout(own));
        let (waited, status) = one_request_while_hanging(&h).await;
        assert_eq!(waited, expected_wait, "store's own timeout {own:?}");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!h.limiter.store_healthy());
    }
}

/// The limiter sets no timer of its own for a store whose bound is within
/// its timeout: a store that claims 30 ms and takes 80 ms is waited for.
#[tokio::test(start_paused = true)]
async fn a_store_bounding_its_own_calls_is_left_to_do_so() {
    let h = harness_with(OnError::Deny, 5, |store| {
        store
            .with_own_timeout(Duration::from_millis(30))
            .giving_up_after(Duration::from_millis(80))
    });
    let (waited, status) = one_request_while_hanging(&h).await;
    assert_eq!(waited, Duration::from_millis(80));
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn check_key_follows_on_error_allow() {
    let Harness { store, limiter, .. } = harness(OnError::Allow, 5);
    store.set(Mode::Failing);
    let d = limiter.check_key("api", "alice", 2).await.unwrap();
    assert!(d.allowed);
    assert_eq!((d.limit, d.remaining), (5, 3));
}

#[tokio::test]
async fn a_failed_sync_keeps_the_cached_blocks() {
    let Harness {
        store,
        limiter,
        app,
        ..
    } = harness(OnError::Allow, 5);
    store
        .inner
        .add_block_now("ip:192.0.2.7", Duration::from_secs(600), "test");
    limiter.sync_blocks().await.unwrap();

    store.set(Mode::Failing);
    assert!(limiter.sync_blocks().await.is_err());
    let calls = store.calls();
    let reply = send(&app, get_from("/api/items", "192.0.2.7")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(store.calls(), calls, "refused from the cache");

    // A successful sync is also what marks the store healthy again.
    store.set(Mode::Up);
    assert!(!limiter.store_healthy());
    limiter.sync_blocks().await.unwrap();
    assert!(limiter.store_healthy());
}

#[tokio::test(start_paused = true)]
async fn the_sync_loop_picks_up_blocks_and_stops_on_shutdown() {
    let clock = clock();
    let store = memory_store(&clock);
    let limiter = limiter(
        failing_config(OnError::Allow, 5),
        store.clone(),
        &clock,
        Recorder::new(),
    );
    let app = app(limiter.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sync = limiter.clone();
    let task = tokio::spawn(async move {
        sync.sync_blocks_until(BLOCK_SYNC_INTERVAL, async {
            let _ = stopped.await;
        })
        .await;
    });

    tokio::time::sleep(Duration::from_millis(10)).await;
    store.add_block_now("ip:192.0.2.7", Duration::from_secs(600), "made elsewhere");
    assert_eq!(
        send(&app, get_from("/api/items", "192.0.2.7")).await.status,
        StatusCode::OK
    );
    tokio::time::sleep(BLOCK_SYNC_INTERVAL).await;
    assert_eq!(
        send(&app, get_from("/api/items", "192.0.2.7")).await.status,
        StatusCode::FORBIDDEN,
        "applied within one sync interval"
    );

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("the loop stops on shutdown")
        .unwrap();
}
