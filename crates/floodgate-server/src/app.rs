//! One floodgate instance: the shared state, the two routers, and `run`,
//! which serves until a shutdown future resolves, then drains.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use arc_swap::{ArcSwap, ArcSwapOption};
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use floodgate_tower::{
    AccessLists, ClientIpConfig, Limiter, LimiterConfig, Problem, RateLimitLayer,
};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::config::{self, Overrides, Settings};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::store::AnyStore;
use crate::{admin, api, demo_api, listen, serve};

/// Everything the handlers of one instance share.
pub struct AppState {
    /// Decides requests; holds the rules, the block cache and the store.
    pub limiter: Limiter<AnyStore>,
    /// Prometheus metrics, also the limiter's observer.
    pub metrics: Arc<Metrics>,
    /// Where allowed requests go; `None` serves the demo API.
    pub proxy: ArcSwapOption<Proxy>,
    /// The admin bearer token; `None` leaves a loopback admin API open.
    pub admin_token: ArcSwapOption<String>,
    /// Set once shutdown starts: `/readyz` answers 503 so balancers move on.
    pub draining: AtomicBool,
    /// The settings in force (replaced by a reload).
    pub settings: ArcSwap<Settings>,
}

/// A problem+json response.
pub fn problem(status: StatusCode, detail: &str) -> Response {
    Problem::new(status, detail).into_response().map(Body::new)
}

/// Parses a JSON body; a 400 naming the problem otherwise.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body)
        .map_err(|e| problem(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}")))
}

/// The limiter's view of the settings.
pub fn limiter_config(settings: &Settings) -> LimiterConfig {
    LimiterConfig {
        rules: settings.rules.clone(),
        access: AccessLists {
            allow: settings.allow.clone(),
            deny: settings.deny.clone(),
        },
        client_ip: ClientIpConfig {
            trusted_proxies: settings.server.trusted_proxies.clone(),
            ipv6_prefix: settings.server.ipv6_prefix,
            ..ClientIpConfig::default()
        },
        on_error: settings.store.on_error,
        timeout: settings.store.timeout,
        local_max_keys: settings.store.max_keys,
    }
}

impl AppState {
    /// The state for `settings` over `store`.
    pub fn new(settings: Settings, store: AnyStore) -> anyhow::Result<Arc<Self>> {
        let metrics = Arc::new(Metrics::new());
        let limiter = Limiter::builder(limiter_config(&settings), store)
            .observer(metrics.clone())
            .build()
            .context("invalid limiter configuration")?;
        Ok(Arc::new(AppState {
            limiter,
            metrics,
            proxy: ArcSwapOption::new(proxy_for(&settings).map(Arc::new)),
            admin_token: ArcSwapOption::new(settings.admin.token.clone().map(Arc::new)),
            draining: AtomicBool::new(false),
            settings: ArcSwap::new(Arc::new(settings)),
        }))
    }

    /// Applies new settings: rules, access lists, upstream and token at once.
    /// Listen addresses and the store need a restart; a change there is
    /// logged and otherwise ignored.
    pub fn reload(&self, new: Settings) -> anyhow::Result<()> {
        let old = self.settings.load_full();
        self.limiter
            .reload(limiter_config(&new))
            .context("invalid limiter configuration")?;
        if old.server.upstream != new.server.upstream
            || old.server.upstream_timeout != new.server.upstream_timeout
        {
            self.proxy.store(proxy_for(&new).map(Arc::new));
        }
        self.admin_token
            .store(new.admin.token.clone().map(Arc::new));
        if old.server.listen != new.server.listen || old.admin.listen != new.admin.listen {
            tracing::warn!("listen addresses changed in the config: they apply after a restart");
        }
        if old.server.header_timeout != new.server.header_timeout
            || old.server.idle_timeout != new.server.idle_timeout
            || old.server.max_header_bytes != new.server.max_header_bytes
            || old.server.max_connections != new.server.max_connections
        {
            tracing::warn!(
                "server.header_timeout, idle_timeout, max_header_bytes or max_connections changed in the config: they apply after a restart"
            );
        }
        if old.store.backend != new.store.backend || old.store.prefix != new.store.prefix {
            tracing::warn!("store settings changed in the config: they apply after a restart");
        }
        self.settings.store(Arc::new(new));
        Ok(())
    }
}

fn proxy_for(settings: &Settings) -> Option<Proxy> {
    settings
        .server
        .upstream
        .clone()
        .map(|u| Proxy::new(u, settings.server.upstream_timeout))
}

/// The main listener's router: `POST /v1/check`, and every other request
/// through the rate-limit layer to the upstream (or the demo API).
pub fn gateway_router(state: Arc<AppState>) -> Router {
    let demo = demo_api::router();
    let forward_state = state.clone();
    let forward = tower::service_fn(move |req: Request| {
        let state = forward_state.clone();
        let demo = demo.clone();
        async move {
            let peer = floodgate_tower::peer_addr(req.extensions());
            let response = match state.proxy.load_full() {
                Some(proxy) => proxy.forward(req, peer).await,
                None => demo.oneshot(req).await.into_response(),
            };
            Ok::<_, Infallible>(response)
        }
    });
    let limited = tower::ServiceBuilder::new()
        .layer(RateLimitLayer::new(state.limiter.clone()))
        .service(forward)
        .map_response(IntoResponse::into_response);
    Router::new()
        .route("/v1/check", post(api::check))
        .with_state(state)
        .fallback_service(limited)
}

/// What `run` needs besides the settings.
pub struct Listeners {
    /// The main listener.
    pub main: TcpListener,
    /// The admin listener, when enabled.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// The listeners a supervisor passed down, else binds those named in
    /// `settings`.
    pub fn bind(settings: &Settings) -> anyhow::Result<Self> {
        let reuse = settings.server.reuse_port;
        let main = match listen::inherited(listen::LISTEN_FD_ENV)? {
            Some(l) => l,
            None => listen::bind(settings.server.listen, reuse)?,
        };
        let admin = match listen::inherited(listen::ADMIN_FD_ENV)? {
            Some(l) => Some(l),
            None => settings
                .admin
                .listen
                .map(|a| listen::bind(a, reuse))
                .transpose()?,
        };
        Ok(Listeners {
            main: TcpListener::from_std(main)?,
            admin: admin.map(TcpListener::from_std).transpose()?,
        })
    }
}

/// Serves until `shutdown` resolves, re-reading `config_path` on SIGHUP;
/// then stops accepting, lets in-flight requests finish within the drain
/// timeout, and returns. `ready` is called once both listeners serve.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    config_path: Option<PathBuf>,
    overrides: Overrides,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let store = AnyStore::open(&settings.store)?;
    let backend = store.backend_name();
    let drain_timeout = settings.server.drain_timeout;
    let state = AppState::new(settings, store)?;
    if let Err(e) = state.limiter.ping().await {
        tracing::warn!(error = %e, "the store does not answer yet; on_error applies until it does");
    }
    let _ = state.limiter.sync_blocks().await;

    let main_addr = listeners.main.local_addr()?;
    let admin_addr = listeners
        .admin
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    tracing::info!(
        listen = %main_addr,
        admin = ?admin_addr,
        store = backend,
        rules = state.limiter.config().rules.len(),
        upstream = ?state.settings.load().server.upstream.as_ref().map(ToString::to_string),
        "floodgate serving"
    );

    // Shutdown happens in two steps: the gateway stops accepting and drains
    // first, while the admin listener keeps answering (`/readyz` says 503 so
    // balancers move on); then the admin listener and the block sync stop.
    let gateway_stop = Stop::new();
    let admin_stop = Stop::new();

    let (gateway_limits, admin_limits) = {
        let settings = state.settings.load();
        (
            serve::Limits::gateway(&settings.server),
            serve::Limits::admin(&settings.server),
        )
    };
    let metrics = state.metrics.clone();
    let gateway = tokio::spawn(serve::serve(
        listeners.main,
        gateway_router(state.clone()),
        gateway_limits,
        move || metrics.count_connection_limit_reached(),
        gateway_stop.signalled(),
        crate::supervisor::announce_stopped_accepting,
    ));
    let admin = listeners.admin.map(|l| {
        tokio::spawn(serve::serve(
            l,
            admin::router(state.clone()),
            admin_limits,
            || {},
            admin_stop.signalled(),
            || {},
        ))
    });
    let sync = tokio::spawn({
        let state = state.clone();
        let stop = admin_stop.signalled();
        async move {
            tokio::select! {
                () = block_sync_loop(state) => {}
                () = stop => {}
            }
        }
    });

    let hangup = hangups();
    ready();
    let reload_loop = reload_on_hangup(hangup, state.clone(), config_path, overrides);
    tokio::select! {
        () = shutdown => {}
        () = reload_loop => {}
    }

    tracing::info!(deadline = ?drain_timeout, "shutting down: draining in-flight requests");
    crate::notify::stopping();
    state.draining.store(true, Ordering::SeqCst);
    gateway_stop.signal();
    let drained = tokio::time::timeout(drain_timeout, gateway).await;
    admin_stop.signal();
    if let Some(admin) = admin {
        // Admin requests are short; do not let one hold the exit up.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), admin).await;
    }
    sync.abort();
    match drained {
        Ok(_) => tracing::info!("drained; bye"),
        Err(_) => tracing::warn!("drain deadline passed with requests still in flight"),
    }
    Ok(())
}

/// A stop signal that any number of tasks can wait for.
struct Stop(tokio::sync::watch::Sender<bool>);

impl Stop {
    fn new() -> Self {
        Stop(tokio::sync::watch::channel(false).0)
    }

    fn signal(&self) {
        self.0.send_replace(true);
    }

    fn signalled(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }
}

async fn block_sync_loop(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(floodgate_tower::limiter::BLOCK_SYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match state.limiter.sync_blocks().await {
            Ok(n) => state.metrics.set_active_blocks(n),
            Err(e) => tracing::debug!(error = %e, "block sync failed"),
        }
        if !state.limiter.store_healthy() {
            // The limiter only learns the store is back from a call that works.
            let _ = state.limiter.ping().await;
        }
    }
}

/// SIGHUP's handler, installed before the server says it is ready: from
/// then on a SIGHUP reloads instead of ending the process.
fn hangups() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: config reload disabled");
            None
        }
    }
}

/// Re-reads the config on every SIGHUP. Never returns.
async fn reload_on_hangup(
    hangup: Option<tokio::signal::unix::Signal>,
    state: Arc<AppState>,
    path: Option<PathBuf>,
    overrides: Overrides,
) {
    let Some(mut hangup) = hangup else {
        return std::future::pending().await;
    };
    while hangup.recv().await.is_some() {
        // Every SIGHUP is a reload to systemd, applied or not: READY=1
        // always follows.
        crate::notify::reloading();
        reload_from(&state, path.as_deref(), &overrides);
        crate::notify::ready("serving");
    }
    std::future::pending().await
}

/// One SIGHUP's reload: the config at `path` replaces the running one, or
/// is refused whole.
fn reload_from(state: &AppState, path: Option<&std::path::Path>, overrides: &Overrides) {
    let Some(path) = path else {
        tracing::info!("SIGHUP: running the built-in demo, no config file to re-read");
        return;
    };
    match config::load(path, overrides) {
        Ok(new) => match state.reload(new) {
            Ok(()) => {
                tracing::info!(config = %path.display(), rules = state.limiter.config().rules.len(), "config reloaded")
            }
            Err(e) => tracing::error!("config reload refused, keeping the old config: {e:#}"),
        },
        Err(e) => tracing::error!("config reload refused, keeping the old config: {e}"),
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called (inside a Tokio runtime), not when the future is first polled: a
/// signal that comes before the server starts waiting still drains it.
pub fn termination() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    async move {
        tokio::select! {
            () = delivery(&mut term) => tracing::info!("SIGTERM received"),
            () = delivery(&mut int) => tracing::info!("SIGINT received"),
        }
    }
}

/// The next delivery of `signal`; never, when its handler could not be
/// installed.
async fn delivery(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}
