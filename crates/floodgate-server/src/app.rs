//! One floodgate instance wired together: the gateway router, the
//! listeners, and `run`, which serves until a shutdown future resolves,
//! re-reads the config on SIGHUP, then drains. Nothing imports this module
//! but the crate root.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use floodgate_tower::FloodgateLayer;
use tokio::net::TcpListener;
use tower::{Layer, Service, ServiceExt};

use crate::config::AnyStore;
use crate::config::{self, Overrides, Settings};
use crate::error::problems_only;
use crate::metrics::{CountRequests, RouteKind};
use crate::routing::{MainService, ProblemsOnlyLayer, RefuseTunnelsLayer};
use crate::state::AppState;
use crate::{admin, api, demo_api, listen, serve};

/// The main listener's service: the decision endpoints (`/v1/check`,
/// `/v1/charge`, `/v1/authorize`), and every other request through the
/// rate-limit layer to the upstream (or the demo API).
pub fn gateway_router(
    state: Arc<AppState>,
) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
+ Clone
+ Send
+ Sync
+ 'static {
    let demo = ProblemsOnlyLayer.layer(demo_api::Demo::default());
    let forward_state = state.clone();
    let forward = tower::service_fn(move |req: Request| {
        let state = forward_state.clone();
        let demo = demo.clone();
        async move {
            let peer = floodgate_tower::peer_addr(req.extensions());
            let response = match state.proxy.load_full() {
                Some(proxy) => {
                    // The same trust the limiter judged the client by.
                    let trusted =
                        peer.is_some_and(|p| state.limiter.config().client_ip.is_trusted(p.ip()));
                    proxy.forward(req, peer, trusted).await
                }
                None => demo.oneshot(req).await.into_response(),
            };
            Ok::<_, Infallible>(response)
        }
    });
    let limited = tower::ServiceBuilder::new()
        .layer(FloodgateLayer::new(state.limiter.clone()))
        .service(forward)
        .map_response(IntoResponse::into_response);
    // Refused before any rule counts them.
    let limited = tower::ServiceBuilder::new()
        .layer(CountRequests::new(state.metrics.route(RouteKind::Gateway)))
        .layer(RefuseTunnelsLayer)
        .service(limited);
    let decision_api = CountRequests::new(state.metrics.route(RouteKind::DecisionApi));
    let api = Router::new()
        .route(
            "/v1/check",
            post(api::check)
                .layer::<_, Infallible>(axum::middleware::from_fn(problems_only))
                .layer(decision_api.clone()),
        )
        .route(
            "/v1/charge",
            post(api::charge)
                .layer::<_, Infallible>(axum::middleware::from_fn(problems_only))
                .layer(decision_api),
        )
        .route(
            "/v1/authorize",
            axum::routing::get(crate::authorize::authorize)
                .layer::<_, Infallible>(axum::middleware::from_fn(problems_only))
                .layer(CountRequests::new(
                    state.metrics.route(RouteKind::Authorize),
                )),
        )
        .with_state(state);
    MainService::new(api, limited)
}

/// What `run` needs besides the settings.
pub struct Listeners {
    /// The main listener.
    pub main: TcpListener,
    /// The admin listener, when enabled.
    pub admin: Option<TcpListener>,
    /// The gRPC listener (Envoy's rate limit service), when enabled.
    pub grpc: Option<TcpListener>,
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
        let grpc = match listen::inherited(listen::GRPC_FD_ENV)? {
            Some(l) => Some(l),
            None => settings
                .grpc
                .listen
                .map(|a| listen::bind(a, reuse))
                .transpose()?,
        };
        Ok(Listeners {
            main: TcpListener::from_std(main)?,
            admin: admin.map(TcpListener::from_std).transpose()?,
            grpc: grpc.map(TcpListener::from_std).transpose()?,
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
    let _ = state.limiter.sync_overrides().await;

    let main_addr = listeners.main.local_addr()?;
    let admin_addr = listeners
        .admin
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    if let Some(addr) = admin_addr {
        // The listener may come from a supervisor, bound as an earlier file
        // said: the token rule holds for the socket as it is.
        if !addr.ip().is_loopback() && state.admin_token.load().is_none() {
            anyhow::bail!(
                "the admin listener is bound to {addr}, not a loopback address, and there is no admin.token or FLOODGATE_ADMIN_TOKEN"
            );
        }
        let _ = state.admin_addr.set(addr);
    }
    let grpc_addr = listeners
        .grpc
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    tracing::info!(
        listen = %main_addr,
        admin = %admin_addr.map_or_else(|| "disabled".to_owned(), |a| a.to_string()),
        grpc = %grpc_addr.map_or_else(|| "disabled".to_owned(), |a| a.to_string()),
        store = backend,
        rules = state.limiter.config().rules.len(),
        upstream = %state.settings.load().server.upstream.as_ref().map_or_else(|| "built-in demo API".to_owned(), ToString::to_string),
        "floodgate serving"
    );
    if let (Some(addr), None) = (admin_addr, state.admin_token.load().as_deref()) {
        tracing::warn!(
            admin = %addr,
            "the admin API has no token: any process on this host can block clients, lift blocks and reset counters; set admin.token or FLOODGATE_ADMIN_TOKEN"
        );
    }

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
        crate::worker::announce_stopped_accepting,
    ));
    let admin = listeners.admin.map(|l| {
        tokio::spawn(serve::serve(
            l,
            admin::router(state.clone())
                .layer(CountRequests::new(state.metrics.route(RouteKind::Admin))),
            admin_limits,
            || {},
            admin_stop.signalled(),
            || {},
        ))
    });
    let grpc = listeners.grpc.map(|l| {
        tokio::spawn(crate::rls::serve(
            l,
            state.clone(),
            gateway_stop.signalled(),
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

    tracing::info!(deadline = %floodgate_core::duration::format_duration(drain_timeout), "shutting down: draining in-flight requests");
    crate::notify::stopping();
    state.draining.store(true, Ordering::SeqCst);
    gateway_stop.signal();
    let drained = tokio::time::timeout(drain_timeout, async move {
        let gateway = gateway.await;
        if let Some(grpc) = grpc {
            let _ = grpc.await;
        }
        gateway
    })
    .await;
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
        if let Err(e) = state.limiter.sync_overrides().await {
            tracing::debug!(error = %e, "override sync failed");
        }
        // Every TOP_PUBLISH_INTERVAL: this instance's top clients, for
        // /admin/top on every instance.
        state.limiter.publish_top_if_due().await;
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
                state.metrics.count_reload(true);
                tracing::info!(config = %path.display(), rules = state.limiter.config().rules.len(), "config reloaded")
            }
            Err(e) => {
                state.metrics.count_reload(false);
                tracing::error!(config = %path.display(), "config reload refused, keeping the old config: {e:#}")
            }
        },
        Err(e) => {
            state.metrics.count_reload(false);
            tracing::error!(config = %path.display(), "config reload refused, keeping the old config: {e}")
        }
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
