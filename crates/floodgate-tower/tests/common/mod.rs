//! Helpers shared by the integration tests: an axum app behind the layer, a
//! store that can be made to fail or hang, and an observer that records.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use floodgate_core::{
    Algorithm, Block, Check, Decision, Error, ManualClock, MemoryStore, Policy, Store, StoreError,
    StoreErrorKind, Timestamp,
};
use floodgate_tower::{
    FloodgateLayer, Limiter, LimiterConfig, Observer, Outcome, PeerAddr, Rule, StoreCall,
};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tower::ServiceExt;

/// A start time aligned to every window the tests use (10 s, 60 s).
pub const T0: Timestamp = Timestamp::from_micros(1_700_000_040_000_000);

pub fn clock() -> ManualClock {
    ManualClock::new(T0)
}

pub fn memory_store(clock: &ManualClock) -> MemoryStore {
    MemoryStore::with_clock(10_000, Arc::new(clock.clone()))
}

pub fn policy(algorithm: Algorithm, limit: u64, window_secs: u64) -> Policy {
    Policy::new(algorithm, limit, Duration::from_secs(window_secs)).unwrap()
}

/// A fixed-window rule keyed by client IP.
pub fn ip_rule(name: &str, limit: u64, window_secs: u64) -> Rule {
    Rule::new(
        name,
        "ip".parse().unwrap(),
        policy(Algorithm::FixedWindow, limit, window_secs),
    )
}

pub fn config(rules: Vec<Rule>) -> LimiterConfig {
    LimiterConfig {
        rules,
        ..LimiterConfig::default()
    }
}

pub fn limiter<S: Store>(
    config: LimiterConfig,
    store: S,
    clock: &ManualClock,
    observer: Arc<Recorder>,
) -> Limiter<S> {
    Limiter::builder(config, store)
        .clock(Arc::new(clock.clone()))
        .observer(observer)
        .build()
        .unwrap()
}

/// The application every test drives: a small API behind the layer, built
/// the way a user would.
pub fn app<S: Store>(limiter: Limiter<S>) -> Router {
    Router::new()
        .route(
            "/api/items",
            get(|| async { "items" }).post(|| async { "created" }),
        )
        .route("/health", get(|| async { "ok" }))
        .layer(FloodgateLayer::new(limiter))
}

pub fn request(method: &str, path: &str, peer: Option<&str>) -> http::request::Builder {
    let builder = Request::builder().method(method).uri(path);
    match peer {
        Some(ip) => builder.extension(PeerAddr(SocketAddr::new(ip.parse().unwrap(), 40_000))),
        None => builder,
    }
}

pub fn get_from(path: &str, ip: &str) -> Request<Body> {
    request("GET", path, Some(ip)).body(Body::empty()).unwrap()
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

pub async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// Records what the limiter reports.
#[derive(Default)]
pub struct Recorder {
    pub decisions: Mutex<Vec<(Option<String>, Outcome)>>,
    pub store_calls: Mutex<Vec<(StoreCall, bool)>>,
    pub health: Mutex<Vec<bool>>,
}

impl Recorder {
    pub fn new() -> Arc<Self> {
        Arc::new(Recorder::default())
    }

    pub fn count(&self, rule: Option<&str>, outcome: Outcome) -> usize {
        self.decisions
            .lock()
            .iter()
            .filter(|(r, o)| r.as_deref() == rule && *o == outcome)
            .count()
    }
}

impl Observer for Recorder {
    fn on_decision(&self, rule: Option<&str>, outcome: Outcome) {
        self.decisions
            .lock()
            .push((rule.map(str::to_owned), outcome));
    }

    fn on_store_call(&self, call: StoreCall, _latency: Duration, ok: bool) {
        self.store_calls.lock().push((call, ok));
    }

    fn on_store_health(&self, healthy: bool) {
        self.health.lock().push(healthy);
    }
}

/// How a [`FlakyStore`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Answers from the memory store.
    Up = 0,
    /// Fails every call with a dropped connection.
    Failing = 1,
    /// Never answers.
    Hanging = 2,
}

/// A memory store that can be switched to failing or hanging, and counts
/// the calls it receives.
#[derive(Clone)]
pub struct FlakyStore {
    pub inner: MemoryStore,
    mode: Arc<AtomicU8>,
    pub calls: Arc<AtomicUsize>,
    /// What `call_timeout` says: when set, a hanging call gives up after it
    /// (or after `actual_timeout`, when that is set too).
    own_timeout: Option<Duration>,
    actual_timeout: Option<Duration>,
}

impl FlakyStore {
    pub fn new(inner: MemoryStore) -> Self {
        FlakyStore {
            inner,
            mode: Arc::new(AtomicU8::new(Mode::Up as u8)),
            calls: Arc::new(AtomicUsize::new(0)),
            own_timeout: None,
            actual_timeout: None,
        }
    }

    /// A store that bounds its own calls by `timeout`, and says so.
    pub fn with_own_timeout(mut self, timeout: Duration) -> Self {
        self.own_timeout = Some(timeout);
        self
    }

    /// A store that says it bounds its calls as `with_own_timeout` but
    /// gives up only after `actual`: shows who does the bounding.
    pub fn giving_up_after(mut self, actual: Duration) -> Self {
        self.actual_timeout = Some(actual);
        self
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    async fn gate(&self) -> Result<(), Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.mode.load(Ordering::SeqCst) {
            0 => Ok(()),
            1 => Err(Error::Store(StoreError::new(
                StoreErrorKind::ConnectionDropped,
                "connection refused (test)",
            ))),
            _ => match self.actual_timeout.or(self.own_timeout) {
                Some(timeout) => {
                    tokio::time::sleep(timeout).await;
                    Err(Error::Store(StoreError::timeout(timeout)))
                }
                None => std::future::pending().await,
            },
        }
    }
}

impl Store for FlakyStore {
    async fn check(&self, checks: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        self.gate().await?;
        self.inner.check(checks).await
    }

    async fn charge(&self, charges: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        self.gate().await?;
        self.inner.charge(charges).await
    }

    async fn refund(&self, refunds: &[Check<'_>]) -> Result<Vec<Decision>, Error> {
        self.gate().await?;
        self.inner.refund(refunds).await
    }

    async fn acquire(
        &self,
        slots: &[floodgate_core::Slot<'_>],
    ) -> Result<Vec<floodgate_core::SlotDecision>, Error> {
        self.gate().await?;
        self.inner.acquire(slots).await
    }

    async fn release(&self, slots: &[floodgate_core::Slot<'_>]) -> Result<(), Error> {
        self.gate().await?;
        self.inner.release(slots).await
    }

    async fn renew(&self, slots: &[floodgate_core::Slot<'_>]) -> Result<Vec<bool>, Error> {
        self.gate().await?;
        self.inner.renew(slots).await
    }

    async fn put_override(
        &self,
        o: &floodgate_core::KeyOverride,
        ttl: Option<Duration>,
    ) -> Result<floodgate_core::KeyOverride, Error> {
        self.gate().await?;
        self.inner.put_override(o, ttl).await
    }

    async fn remove_override(&self, rule: &str, key: &str) -> Result<bool, Error> {
        self.gate().await?;
        self.inner.remove_override(rule, key).await
    }

    async fn override_changes(
        &self,
        since: u64,
        max: usize,
    ) -> Result<floodgate_core::OverrideChanges, Error> {
        self.gate().await?;
        self.inner.override_changes(since, max).await
    }

    async fn peek(&self, rule: &str, policy: &Policy, key: &str) -> Result<Decision, Error> {
        self.gate().await?;
        self.inner.peek(rule, policy, key).await
    }

    async fn reset(&self, rule: &str, key: &str) -> Result<bool, Error> {
        self.gate().await?;
        self.inner.reset(rule, key).await
    }

    async fn add_block(&self, target: &str, ttl: Duration, reason: &str) -> Result<Block, Error> {
        self.gate().await?;
        self.inner.add_block(target, ttl, reason).await
    }

    async fn remove_block(&self, target: &str) -> Result<bool, Error> {
        self.gate().await?;
        self.inner.remove_block(target).await
    }

    async fn blocks(&self) -> Result<Vec<Block>, Error> {
        self.gate().await?;
        self.inner.blocks().await
    }

    async fn ping(&self) -> Result<(), Error> {
        self.gate().await
    }

    fn call_timeout(&self) -> Option<Duration> {
        self.own_timeout
    }
}
