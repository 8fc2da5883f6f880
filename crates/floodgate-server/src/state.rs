//! What the handlers of one instance share ([`AppState`]), and how new
//! settings replace the ones in force: a reload applies rules, access
//! lists, upstream and token at once, or is refused whole.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use arc_swap::{ArcSwap, ArcSwapOption};
use floodgate_tower::Limiter;

use crate::config::AnyStore;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::proxy::Proxy;

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
    /// Where the admin listener is bound, once it is: a reload may change
    /// the token but not the socket, so the token rule is checked against
    /// this address, not the one the new file names.
    pub admin_addr: OnceLock<SocketAddr>,
}

impl AppState {
    /// The state for `settings` over `store`.
    pub fn new(settings: Settings, store: AnyStore) -> anyhow::Result<Arc<Self>> {
        let metrics = Arc::new(Metrics::new());
        if let AnyStore::Memory(memory) = &store {
            metrics.watch_memory_store("primary", memory.clone());
        }
        let limiter = Limiter::builder(settings.limiter_config(), store)
            .observer(metrics.clone())
            .build()
            .context("invalid limiter configuration")?;
        metrics.watch_memory_store("local_fallback", limiter.local_fallback().clone());
        Ok(Arc::new(AppState {
            limiter,
            proxy: ArcSwapOption::new(proxy_for(&settings, &metrics).map(Arc::new)),
            metrics,
            admin_token: ArcSwapOption::new(settings.admin.token.clone().map(Arc::new)),
            draining: AtomicBool::new(false),
            settings: ArcSwap::new(Arc::new(settings)),
            admin_addr: OnceLock::new(),
        }))
    }

    /// Applies new settings: rules, access lists, upstream and token at once.
    /// Listen addresses and the store need a restart; a change there is
    /// logged and otherwise ignored. Refused whole, with every reason, when
    /// it would take away a protection the running instance has (see
    /// [`reload_refusals`]).
    pub fn reload(&self, new: Settings) -> anyhow::Result<()> {
        let old = self.settings.load_full();
        let refusals = reload_refusals(&old, &new, self.admin_addr.get().copied());
        if !refusals.is_empty() {
            anyhow::bail!("{}", refusals.join("; "));
        }
        self.limiter
            .reload(new.limiter_config())
            .context("invalid limiter configuration")?;
        if old.server.upstream != new.server.upstream
            || old.server.upstream_timeout != new.server.upstream_timeout
        {
            self.proxy
                .store(proxy_for(&new, &self.metrics).map(Arc::new));
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

/// Why `new` may not replace `old` in a running instance whose admin
/// listener is bound to `admin`: each a protection the reload would take
/// away. A file that does these on purpose takes a restart, where the
/// start-up checks apply in full.
pub fn reload_refusals(old: &Settings, new: &Settings, admin: Option<SocketAddr>) -> Vec<String> {
    let mut refusals = Vec::new();
    if new.admin.token.is_none() {
        if let Some(addr) = admin.filter(|a| !a.ip().is_loopback()) {
            refusals.push(format!(
                "the admin listener is bound to {addr}, not a loopback address, and the new config has no admin.token"
            ));
        } else if old.admin.token.is_some() {
            refusals.push(
                "the new config has no admin.token: the running admin API would be open to anyone who reaches it".to_owned(),
            );
        }
    }
    if old.server.upstream.is_some() && new.server.upstream.is_none() {
        refusals.push(
            "the new config has no server.upstream: requests would be answered by the built-in demo API instead of yours".to_owned(),
        );
    }
    if !old.rules.is_empty() && new.rules.is_empty() {
        refusals.push("the new config has no [[rule]]: nothing would be limited".to_owned());
    }
    refusals
}

fn proxy_for(settings: &Settings, metrics: &Metrics) -> Option<Proxy> {
    settings
        .server
        .upstream
        .clone()
        .map(|u| Proxy::new(u, settings.server.upstream_timeout, metrics.upstream()))
}
