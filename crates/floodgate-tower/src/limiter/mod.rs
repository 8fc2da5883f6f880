//! The request-side engine: access lists, blocks, rules, one store batch per
//! request, and what to do when the store fails.

mod blocks;
mod config;
mod descriptors;
mod health;
mod overrides;
mod top;

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use floodgate_core::{
    Block, Check, Clock, Decision, Error, KeyOverride, MemoryStore, Policy, PolicyError, Store,
    StoreError, SystemClock, Timestamp, TopSummary,
};
use http::header::HeaderName;
use http::{Extensions, HeaderMap, Method, StatusCode};
use smallvec::SmallVec;

pub use self::config::{
    AccessLists, ConfigError, ConfigProblem, LimiterConfig, MAX_DELAY, MAX_RULE_NAME_LEN, OnError,
    UnknownOnError, check_rule_name,
};
pub use self::health::PROBE_INTERVAL;
pub use self::top::{TOP_PUBLISH_INTERVAL, TOP_TTL};

use self::blocks::BlockCache;
pub use self::descriptors::{DescriptorStatus, DescriptorVerdict};
use self::health::StoreHealth;
use self::overrides::{OverrideCache, SYNC_PAGE};
use self::top::{RuleTop, TopClients};
use crate::answer::answer_cost;
use crate::observer::{NoopObserver, Observer, Outcome, StoreCall, StoreFallback};
use crate::path::{PathError, canonical_path};
use crate::rule::{KeyInput, Rule, bounded_key};
use crate::target::Target;
use crate::target_set::TargetSet;
use crate::verdict::{BadRequestReason, ForbiddenReason, RuleDecision, RuleLabel, Verdict};

/// How often the server should call [`Limiter::sync_blocks`]: blocks and
/// unblocks made on another instance then apply here within a second.
pub const BLOCK_SYNC_INTERVAL: Duration = Duration::from_millis(500);

/// [`Limiter::sync_blocks_in_background`] was called outside a Tokio
/// runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no Tokio runtime to run the block sync on")]
pub struct NoRuntime;

/// Why [`Limiter::check_key`] could not decide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// No rule has this name.
    #[error("no rule named {0:?}")]
    UnknownRule(String),
    /// A cost of zero.
    #[error("cost must be at least 1")]
    ZeroCost,
    /// More than the rule can ever admit at once; retrying never helps.
    #[error("cost {cost} can never be admitted by rule {rule:?}: it holds at most {capacity}")]
    InsufficientCapacity {
        /// The rule.
        rule: String,
        /// The cost asked for.
        cost: u64,
        /// The most the rule admits at once.
        capacity: u64,
    },
    /// The store could not decide and `on_error` is `deny`: answer 503.
    #[error("the store could not decide and on_error = deny")]
    Unavailable,
    /// The rule limits requests in flight, which only a request that
    /// passes through floodgate can hold.
    #[error(
        "rule {0:?} limits requests in flight (algorithm = \"concurrency\"): only requests through the gateway or the layer take its slots"
    )]
    InFlightRule(String),
}

/// Why a per-key override could not be put in force.
#[derive(Debug, thiserror::Error)]
pub enum OverrideError {
    /// No rule has this name.
    #[error("no rule named {0:?}")]
    UnknownRule(String),
    /// The key is empty.
    #[error("the key must not be empty")]
    EmptyKey,
    /// The limit, window or burst make no valid policy for the rule.
    #[error("{0}")]
    Invalid(PolicyError),
    /// The override would hold less than one request of the rule costs.
    #[error("the override holds {capacity} at most, less than the rule's cost {cost}")]
    BelowCost {
        /// What the override holds at most.
        capacity: u64,
        /// The rule's cost per request.
        cost: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// Where a key's override comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideSource {
    /// Put at run time (the admin API), kept in the store.
    Store,
    /// `[[rule.override]]` in the configuration.
    File,
}

impl OverrideSource {
    /// `store` or `file`.
    pub fn as_str(self) -> &'static str {
        match self {
            OverrideSource::Store => "store",
            OverrideSource::File => "file",
        }
    }
}

/// One of the heaviest clients of a rule, from [`Limiter::top`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopClient {
    /// The rule.
    pub rule: String,
    /// The rule key, e.g. `ip:203.0.113.7`.
    pub key: String,
    /// Admitted decisions counted (never more than the truth).
    pub admitted: u64,
    /// Refused decisions counted, penalty blocks included (never more than
    /// the truth).
    pub refused: u64,
    /// The most decisions the key may have made that are not counted: the
    /// truth lies in `[admitted + refused, admitted + refused + error]`.
    pub error: u64,
}

/// Why [`Limiter::top`] could not answer.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    /// No rule has this name.
    #[error("no rule named {0:?}")]
    UnknownRule(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// A rule with its name shared cheaply with verdicts.
#[derive(Debug)]
struct CompiledRule {
    /// Its place in the snapshot's rules.
    index: usize,
    rule: Rule,
    /// Its name and policy as the RateLimit fields give them.
    label: Arc<RuleLabel>,
    /// Its `[[rule.override]]`s, by key.
    file_overrides: HashMap<String, Arc<Overridden>>,
    /// Its configuration's number.
    generation: u64,
    /// Its decisions per key over the last minutes (top clients), kept
    /// across reloads.
    top: Arc<RuleTop>,
}

/// The limit a key is decided by instead of its rule's.
#[derive(Debug)]
struct Overridden {
    /// The configuration it was compiled for (see [`CompiledRule::generation`]).
    generation: u64,
    policy: Policy,
    label: Arc<RuleLabel>,
}

impl Overridden {
    /// `o` in force over `rule` (of configuration `generation`), if it
    /// makes a policy that admits the rule's cost.
    fn of(o: &KeyOverride, rule: &Rule, generation: u64) -> Option<Self> {
        let policy = o.policy(&rule.policy).ok()?;
        if policy.capacity() < rule.cost {
            return None;
        }
        let label = Arc::new(RuleLabel::new(&rule.name, policy.limit(), policy.window()));
        Some(Overridden {
            generation,
            policy,
            label,
        })
    }
}

/// `rule` as it is decided: under `on_limit = delay`, its policy admits a
/// request whose place is within `max_delay` (validated: a token bucket).
fn with_delay(rule: &Rule) -> Rule {
    let mut rule = rule.clone();
    if let crate::rule::OnLimit::Delay { max } = rule.on_limit
        && let Ok(policy) = rule.policy.clone().with_max_delay(max)
    {
        rule.policy = policy;
    }
    rule
}

/// Numbers every compiled configuration, so that what was compiled for one
/// (an override's policy) is known stale under the next.
static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl CompiledRule {
    fn name(&self) -> &str {
        self.label.name()
    }

    /// Counts one decision of this rule for `key` among its top clients.
    fn tally(&self, key: &str, admitted: bool) {
        self.top.lock().record(key, admitted);
    }
}

/// A validated configuration, ready to be consulted on every request.
#[derive(Debug)]
pub(crate) struct Snapshot {
    config: Arc<LimiterConfig>,
    rules: Vec<CompiledRule>,
    allow: TargetSet<()>,
    deny: TargetSet<()>,
    /// The headers the access lists name: each must come at most once.
    access_headers: Vec<HeaderName>,
    /// Every rule's `cost_header`: never passed on to a client.
    cost_headers: Vec<HeaderName>,
    /// Whether any rule is a concurrency limit.
    has_concurrency: bool,
}

impl Snapshot {
    fn compile(config: LimiterConfig, top: &TopClients) -> Result<Self, ConfigError> {
        config.validate()?;
        let generation = GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Snapshot {
            rules: config
                .rules
                .iter()
                .enumerate()
                .map(|(index, r)| (index, with_delay(r)))
                .map(|(index, r)| CompiledRule {
                    index,
                    generation,
                    top: top.of_rule(&r.name),
                    file_overrides: r
                        .overrides
                        .iter()
                        .filter_map(|o| {
                            Some((o.key.clone(), Arc::new(Overridden::of(o, &r, generation)?)))
                        })
                        .collect(),
                    rule: r.clone(),
                    label: Arc::new(RuleLabel::new(&r.name, r.policy.limit(), r.policy.window())),
                })
                .collect(),
            allow: TargetSet::from_targets(&config.access.allow, ()),
            deny: TargetSet::from_targets(&config.access.deny, ()),
            access_headers: config
                .access
                .allow
                .iter()
                .chain(&config.access.deny)
                .filter_map(|target| match target {
                    Target::Header { name, .. } => Some(name.clone()),
                    _ => None,
                })
                .fold(Vec::new(), |mut names, name| {
                    if !names.contains(&name) {
                        names.push(name);
                    }
                    names
                }),
            has_concurrency: config.rules.iter().any(|r| r.concurrency.is_some()),
            cost_headers: config
                .rules
                .iter()
                .filter_map(|r| r.cost_header.clone())
                .fold(Vec::new(), |mut names, name| {
                    if !names.contains(&name) {
                        names.push(name);
                    }
                    names
                }),
            config: Arc::new(config),
        })
    }
}

struct Shared<S> {
    store: S,
    /// The configuration in force; a request keeps the one it started with.
    snapshot: ArcSwap<Snapshot>,
    clock: Arc<dyn Clock>,
    /// Decides requests while the store is down under `on_error = local`.
    fallback: MemoryStore,
    health: StoreHealth,
    blocks: BlockCache,
    overrides: OverrideCache,
    observer: Arc<dyn Observer>,
    /// Requests held by rules with `on_limit = delay` right now.
    held: std::sync::atomic::AtomicUsize,
    /// Names this process's concurrency slots, with `slot_counter`.
    slot_prefix: String,
    slot_counter: std::sync::atomic::AtomicU64,
    /// Set once a background block sync runs for this limiter.
    syncing: std::sync::atomic::AtomicBool,
    /// Every rule's top clients.
    top: TopClients,
}

/// Decides requests against a [`LimiterConfig`] and a [`Store`].
///
/// Cheap to clone: clones share the configuration, the block cache and the
/// store. See the [crate documentation](crate) for an example.
pub struct Limiter<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for Limiter<S> {
    fn clone(&self) -> Self {
        Limiter {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> std::fmt::Debug for Limiter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let snapshot = self.shared.snapshot.load();
        f.debug_struct("Limiter")
            .field("rules", &snapshot.rules.len())
            .field("on_error", &snapshot.config.on_error)
            .field("store_healthy", &self.shared.health.is_healthy())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Limiter`] with a clock or an observer of choice.
pub struct LimiterBuilder<S> {
    config: LimiterConfig,
    store: S,
    clock: Arc<dyn Clock>,
    observer: Arc<dyn Observer>,
}

impl<S: Store> LimiterBuilder<S> {
    /// The clock that block expiry and store probes are judged by (default:
    /// the system clock). Give it the store's clock in tests.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Where decisions and store calls are reported (default: nowhere).
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// The limiter, if the configuration is valid.
    pub fn build(self) -> Result<Limiter<S>, ConfigError> {
        let top = TopClients::default();
        let snapshot = Snapshot::compile(self.config, &top)?;
        let fallback =
            MemoryStore::with_clock(snapshot.config.local_max_keys, Arc::clone(&self.clock));
        Ok(Limiter {
            shared: Arc::new(Shared {
                store: self.store,
                snapshot: ArcSwap::from_pointee(snapshot),
                clock: self.clock,
                fallback,
                health: StoreHealth::default(),
                blocks: BlockCache::default(),
                overrides: OverrideCache::default(),
                observer: self.observer,
                held: std::sync::atomic::AtomicUsize::new(0),
                slot_prefix: {
                    use std::hash::BuildHasher;
                    let seed = std::collections::hash_map::RandomState::new()
                        .hash_one((std::process::id(), std::time::SystemTime::now()));
                    format!("{seed:016x}")
                },
                slot_counter: std::sync::atomic::AtomicU64::new(0),
                syncing: std::sync::atomic::AtomicBool::new(false),
                top,
            }),
        })
    }
}

/// One matching rule, the key it counts this request on, and the override
/// in force for that key, if any.
type Keyed<'a> = (&'a CompiledRule, String, Option<Arc<Overridden>>);

/// What an admitted request still owes once its answer is known: the rules
/// with `count_status` or `cost_header` it matched, and its key on each.
/// Give it to [`Limiter::charge_answer`] with the answer; dropping it
/// charges nothing.
#[derive(Debug, Default)]
pub struct Pending {
    /// The configuration the request was checked under (its rules, by
    /// index), and each rule's key.
    owed: Option<Owed>,
    /// The slots of the concurrency limits the request holds.
    lease: Option<Lease>,
}

/// The slots a request holds in its rules' concurrency limits, on every
/// instance sharing the store. Renewed in the background while held;
/// given back by [`give_back`](Self::give_back), or when dropped (in a task
/// of its own). A crashed instance's slots come back by themselves when
/// their lease ends.
pub struct Lease {
    release: Option<Release>,
    renewer: Option<tokio::task::AbortHandle>,
}

/// Gives a lease's slots back: at once (the in-process fallback's), or as
/// the store call it returns.
type Release = Box<dyn FnOnce() -> Option<ReleaseCall> + Send + Sync>;

/// The store call that gives slots back, bounded by the store's timeout.
type ReleaseCall = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Lease {
    /// Gives the slots back now, returning the store call to await (`None`
    /// when there is nothing to wait for): awaited before an answer's end
    /// goes out, no client that has its answer can find the slot still
    /// held, on any instance. Bounded by the store's timeout; a failure
    /// leaves the slots to their lease.
    pub fn give_back(mut self) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        self.stop_renewing();
        self.release.take().and_then(|release| release())
    }

    fn stop_renewing(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lease")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop_renewing();
        if let Some(call) = self.release.take().and_then(|release| release())
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(call);
        }
    }
}

/// The concurrency slots of one request, as the store takes them.
#[derive(Clone)]
struct HeldSlots {
    /// (rule, key, limit, lease) of each.
    slots: Vec<(String, String, u64, Duration)>,
    id: String,
    /// Taken from the in-process fallback (the store was down).
    local: bool,
}

impl HeldSlots {
    fn as_slots(&self) -> Vec<floodgate_core::Slot<'_>> {
        self.slots
            .iter()
            .map(|(rule, key, limit, lease)| floodgate_core::Slot {
                rule,
                key,
                limit: *limit,
                lease: *lease,
                id: &self.id,
            })
            .collect()
    }
}

/// The snapshot a request was checked under, and (rule index, key) of each
/// rule it owes a charge on.
type Owed = (Arc<Snapshot>, Vec<(usize, String)>);

impl Pending {
    /// Whether nothing is owed: no rule charged on the answer matched, and
    /// no concurrency slot is held.
    pub fn is_empty(&self) -> bool {
        self.owed.is_none() && self.lease.is_none()
    }

    /// The concurrency slots the request holds: keep them until its
    /// answer's body ends (dropping them gives them back).
    pub fn take_lease(&mut self) -> Option<Lease> {
        self.lease.take()
    }
}

impl<S: Store> Limiter<S> {
    /// A limiter enforcing `config` on `store`, on the system clock.
    pub fn new(config: LimiterConfig, store: S) -> Result<Self, ConfigError> {
        Limiter::builder(config, store).build()
    }

    /// A builder, to set the clock or an observer.
    pub fn builder(config: LimiterConfig, store: S) -> LimiterBuilder<S> {
        LimiterBuilder {
            config,
            store,
            clock: Arc::new(SystemClock),
            observer: Arc::new(NoopObserver),
        }
    }

    /// Replaces the configuration atomically. Requests already being decided
    /// finish under the old one. An invalid configuration changes nothing.
    pub fn reload(&self, config: LimiterConfig) -> Result<(), ConfigError> {
        let snapshot = Snapshot::compile(config, &self.shared.top)?;
        let rules = snapshot.rules.len();
        self.shared.snapshot.store(Arc::new(snapshot));
        tracing::info!(rules, "limiter configuration reloaded");
        Ok(())
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<LimiterConfig> {
        Arc::clone(&self.shared.snapshot.load().config)
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// Whether the last store call succeeded (for `/readyz`).
    pub fn store_healthy(&self) -> bool {
        self.shared.health.is_healthy()
    }

    /// The [canonical form](crate::path) of a request path under this
    /// limiter's `encoded_slashes`: what rules match, and what the request
    /// should be passed on with.
    pub fn canonical_path<'p>(&self, path: &'p str) -> Result<Cow<'p, str>, PathError> {
        canonical_path(path, self.shared.snapshot.load().config.encoded_slashes)
    }

    /// Decides a request: a malformed one (a path with no canonical form, a
    /// header that names the client sent twice) is refused with 400; then
    /// the allow list (bypasses everything), the deny list (403), manual
    /// blocks (403) and rule penalty blocks (429) from the local cache
    /// without a store round trip, then every rule matching the canonical
    /// path in one store batch.
    ///
    /// `peer` is the TCP peer. When it is `None` the client address is
    /// unknown: IP entries of the access lists and blocks never match it, and
    /// rules keyed by `ip` do not apply.
    ///
    /// A rule with `count_status` or `cost_header` is only checked here,
    /// never charged, and a concurrency limit's slot is given back as soon
    /// as this returns: use
    /// [`check_request_for_answer`](Self::check_request_for_answer) and
    /// [`charge_answer`](Self::charge_answer) to charge it on the answer.
    pub async fn check_request(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Verdict {
        self.check(method, path, headers, None, peer).await.0
    }

    /// [`check_request_with_extensions`](Self::check_request_with_extensions),
    /// and what the request owes once its answer is known (the rules
    /// charged on the answer): pass that to
    /// [`charge_answer`](Self::charge_answer) with the answer.
    pub async fn check_request_for_answer(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        extensions: &Extensions,
        peer: Option<SocketAddr>,
    ) -> (Verdict, Pending) {
        self.check(method, path, headers, Some(extensions), peer)
            .await
    }

    /// [`check_request`](Self::check_request) with the request's
    /// extensions, which rules keyed by an [`AppKey`](crate::AppKey) read
    /// (the layer calls this one).
    pub async fn check_request_with_extensions(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        extensions: &Extensions,
        peer: Option<SocketAddr>,
    ) -> Verdict {
        self.check(method, path, headers, Some(extensions), peer)
            .await
            .0
    }

    async fn check(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        extensions: Option<&Extensions>,
        peer: Option<SocketAddr>,
    ) -> (Verdict, Pending) {
        let (snapshot, path) = self.canonicalise(path);
        match path {
            Ok(path) => {
                self.check_canonical(snapshot, method, &path, headers, extensions, peer)
                    .await
            }
            Err(e) => (
                self.malformed(BadRequestReason::Path(e)),
                Pending::default(),
            ),
        }
    }

    /// The configuration in force, and the canonical form of `path` under
    /// it: what [`check_canonical`](Self::check_canonical) is given, so a
    /// caller that passes the canonical path on (the layer) canonicalises it
    /// once.
    pub(crate) fn canonicalise<'p>(
        &self,
        path: &'p str,
    ) -> (Arc<Snapshot>, Result<Cow<'p, str>, PathError>) {
        let snapshot = self.shared.snapshot.load_full();
        let path = canonical_path(path, snapshot.config.encoded_slashes);
        (snapshot, path)
    }

    /// The check of a request whose `path` is canonical under `snapshot`;
    /// one refused only by rules with `on_limit = delay` is held until
    /// they admit it, when that is within their `max_delay`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn check_canonical(
        &self,
        snapshot: Arc<Snapshot>,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        extensions: Option<&Extensions>,
        peer: Option<SocketAddr>,
    ) -> (Verdict, Pending) {
        let mut hold = None;
        let (verdict, pending) = self
            .check_canonical_once(snapshot, method, path, headers, extensions, peer, &mut hold)
            .await;
        let Some(hold) = hold else {
            return (verdict, pending);
        };
        // Admitted with a place in the future: held until then. A client
        // that leaves meanwhile drops this future, and the guard gives the
        // place back.
        let refusal = Verdict::Limited(RuleDecision::labelled(
            &hold.label,
            Decision {
                allowed: false,
                limit: hold.limit,
                remaining: 0,
                reset_after: hold.wait,
                retry_after: Some(hold.wait),
                blocked: false,
                delay: Duration::ZERO,
            },
        ));
        let Some(slot) = HeldSlot::enter(self, hold) else {
            // Too many held already: refused at once, the place given back.
            return (refusal, Pending::default());
        };
        let wait = slot.hold.wait;
        tokio::time::sleep(wait).await;
        slot.done();
        (verdict, pending)
    }

    /// One decision of [`check_canonical`](Self::check_canonical); sets
    /// `hold` when it admits the request with a place in the future.
    #[allow(clippy::too_many_arguments)]
    async fn check_canonical_once(
        &self,
        snapshot: Arc<Snapshot>,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        extensions: Option<&Extensions>,
        peer: Option<SocketAddr>,
        hold: &mut Option<Hold>,
    ) -> (Verdict, Pending) {
        let verdict = |v: Verdict| (v, Pending::default());
        // Matching twice (here and for the keys below) costs two prefix
        // comparisons per rule; collecting the matches would cost an
        // allocation on every request.
        let matching = || {
            snapshot.rules.iter().filter(move |r| {
                r.rule.descriptor.is_none() && r.rule.matcher.matches(method, path)
            })
        };
        let repeated = snapshot
            .access_headers
            .iter()
            .chain(matching().flat_map(|r| r.rule.key.header_names()))
            .find(|name| {
                let mut lines = headers.get_all(*name).iter();
                lines.next().is_some() && lines.next().is_some()
            });
        if let Some(name) = repeated {
            return verdict(self.malformed(BadRequestReason::RepeatedHeader(name.clone())));
        }
        let client_ip = &snapshot.config.client_ip;
        let ip: Option<IpAddr> = client_ip.client_ip(peer.map(|p| p.ip()), headers);

        if snapshot.allow.find(ip, headers, |_| true).is_some() {
            self.observe(None, Outcome::Bypassed);
            return verdict(Verdict::Allow(None));
        }
        if let Some((target, ())) = snapshot.deny.find(ip, headers, |_| true) {
            self.observe(None, Outcome::Denied);
            return verdict(Verdict::Forbidden {
                reason: ForbiddenReason::DenyList {
                    target: target.clone(),
                },
            });
        }
        let now = self.shared.clock.now();
        if let Some(target) = self.shared.blocks.manual_block(ip, headers, now) {
            self.observe(None, Outcome::Blocked);
            return verdict(Verdict::Forbidden {
                reason: ForbiddenReason::Blocked { target },
            });
        }

        let client: Option<Target> = ip.map(|ip| client_ip.identity(ip));
        let info = KeyInput {
            method,
            path,
            headers,
            extensions,
            client: client.as_ref(),
        };
        // Inline for the usual one or two rules: no allocation. Each key's
        // word of the override filter is fetched while the penalties are
        // looked up, and read after.
        let mut probes: SmallVec<[overrides::Probe; 2]> = SmallVec::new();
        let mut keyed: SmallVec<[Keyed<'_>; 2]> = matching()
            .filter_map(|r| {
                let key = r.rule.key.key(&info)?;
                probes.push(self.shared.overrides.probe(r.name(), &key));
                Some((r, key, None))
            })
            .collect();
        if keyed.is_empty() {
            return verdict(Verdict::Allow(None));
        }
        for ((rule, key, _), probe) in keyed.iter().zip(&probes) {
            if rule.rule.shadow {
                continue;
            }
            if let Some(left) = self.shared.blocks.penalty(rule.name(), key, now) {
                rule.tally(key, false);
                self.observe(Some(rule.name()), Outcome::Blocked);
                let overridden = self.overridden_probed(*probe, rule, key, now);
                let (policy, label) = policy_and_label(rule, overridden.as_deref());
                return verdict(Verdict::Limited(RuleDecision::labelled(
                    label,
                    penalty_decision(policy, left),
                )));
            }
        }
        for ((rule, key, overridden), probe) in keyed.iter_mut().zip(probes) {
            *overridden = self.overridden_probed(probe, rule, key, now);
        }

        // Concurrency limits first: a slot taken, then the rates decided; a
        // refusal by the rates gives the slot back (the lease dropped).
        let mut lease = None;
        let keyed = if snapshot.has_concurrency {
            let (in_flight, rates): (SmallVec<[Keyed<'_>; 2]>, SmallVec<[Keyed<'_>; 2]>) = keyed
                .into_iter()
                .partition(|(r, ..)| r.rule.concurrency.is_some());
            if !in_flight.is_empty() {
                // Boxed: only concurrency rules take slots, and every
                // request's future would otherwise carry room for it.
                match Box::pin(self.acquire_slots(&snapshot.config, &in_flight)).await {
                    Ok(taken) => lease = taken,
                    Err(refusal) => return verdict(refusal),
                }
            }
            if rates.is_empty() {
                return (Verdict::Allow(None), Pending { owed: None, lease });
            }
            rates
        } else {
            keyed
        };
        let checks: SmallVec<[Check<'_>; 2]> = keyed
            .iter()
            .map(|(rule, key, overridden)| {
                check_of(rule, overridden.as_deref(), key, rule.rule.cost)
            })
            .collect();
        match self.decide_where(&snapshot.config, &checks).await {
            Some((decisions, local)) => {
                let concluded = self.conclude(&keyed, &decisions);
                if matches!(concluded, Verdict::Allow(_)) {
                    *hold = hold_of(&keyed, &checks, &decisions, local);
                }
                let owed: Vec<(usize, String)> = match &concluded {
                    Verdict::Allow(_) => keyed
                        .iter()
                        .filter(|(r, ..)| r.rule.charges_on_answer())
                        .map(|(r, key, _)| (r.index, key.clone()))
                        .collect(),
                    _ => Vec::new(),
                };
                drop(checks);
                let pending = Pending {
                    owed: (!owed.is_empty()).then(|| (Arc::clone(&snapshot), owed)),
                    lease: if matches!(concluded, Verdict::Allow(_)) {
                        lease
                    } else {
                        None
                    },
                };
                (concluded, pending)
            }
            None => {
                for (rule, ..) in &keyed {
                    self.observe(Some(rule.name()), Outcome::Error);
                }
                match snapshot.config.on_error {
                    // Let through: with the slots it holds, if any.
                    OnError::Allow => (Verdict::Allow(None), Pending { owed: None, lease }),
                    OnError::Deny | OnError::Local => verdict(Verdict::Unavailable),
                }
            }
        }
    }

    /// Decides `cost` units of `rule` for `key`: the decision API. The key
    /// is used as given (hashed when longer than
    /// [`MAX_KEY_PART_LEN`](crate::rule::MAX_KEY_PART_LEN) bytes). A shadow
    /// rule's decision is always `allowed`. A rule charged on the answer
    /// (`count_status`, `cost_header`) is only asked, never charged: see
    /// [`check_key_with`](Self::check_key_with).
    ///
    /// When the store cannot decide: `on_error = allow` admits (reporting
    /// the full quota, as nothing is known), `deny` returns
    /// [`CheckError::Unavailable`], `local` decides on the in-process store.
    pub async fn check_key(
        &self,
        rule: &str,
        key: &str,
        cost: u64,
    ) -> Result<Decision, CheckError> {
        self.check_key_with(rule, key, cost, None).await
    }

    /// [`check_key`](Self::check_key), charging the cost when admitted if
    /// `charge` is `Some(true)`, only asking if `Some(false)` (charge later
    /// with [`charge_key`](Self::charge_key)); `None` charges unless the
    /// rule is charged on the answer.
    pub async fn check_key_with(
        &self,
        rule: &str,
        key: &str,
        cost: u64,
        charge: Option<bool>,
    ) -> Result<Decision, CheckError> {
        self.check_key_in_window(rule, key, cost, charge)
            .await
            .map(|(decision, _)| decision)
    }

    /// [`check_key_with`](Self::check_key_with), and the window the key is
    /// counted over (its override's, else the rule's): what a
    /// `RateLimit-Policy` header's `w` says.
    pub async fn check_key_in_window(
        &self,
        rule: &str,
        key: &str,
        cost: u64,
        charge: Option<bool>,
    ) -> Result<(Decision, Duration), CheckError> {
        let key = bounded_key(key);
        // The override filter's word for the key is fetched while the rule
        // is found, the clock read and the penalties looked up.
        let probe = self.shared.overrides.probe(rule, &key);
        let snapshot = self.shared.snapshot.load_full();
        let compiled = find_rule(&snapshot, rule, cost)?;
        let now = self.shared.clock.now();
        let penalty = if compiled.rule.shadow {
            None
        } else {
            self.shared.blocks.penalty(compiled.name(), &key, now)
        };
        let overridden = self.overridden_probed(probe, compiled, &key, now);
        let (policy, _) = policy_and_label(compiled, overridden.as_deref());
        // The API cannot hold a request: a rule with on_limit = delay is
        // decided here without its delay, a refusal being the answer.
        let undelayed;
        let policy = if policy.max_delay_us() > 0 {
            undelayed = policy.clone().without_max_delay();
            &undelayed
        } else {
            policy
        };
        if cost > policy.capacity() {
            return Err(CheckError::InsufficientCapacity {
                rule: rule.to_owned(),
                cost,
                capacity: policy.capacity(),
            });
        }
        if let Some(left) = penalty {
            compiled.tally(&key, false);
            self.observe(Some(compiled.name()), Outcome::Blocked);
            return Ok((penalty_decision(policy, left), policy.window()));
        }
        let mut check = check_of(compiled, overridden.as_deref(), &key, cost);
        check.policy = policy;
        check.probe = !charge.unwrap_or(!compiled.rule.charges_on_answer());
        match self
            .decide(&snapshot.config, std::slice::from_ref(&check))
            .await
        {
            Some(decisions) => {
                let mut decision = decisions[0];
                self.record(compiled, &key, &decision);
                if compiled.rule.shadow {
                    decision.allowed = true;
                    decision.retry_after = None;
                }
                Ok((decision, policy.window()))
            }
            None => {
                self.observe(Some(compiled.name()), Outcome::Error);
                match snapshot.config.on_error {
                    OnError::Allow => Ok((
                        Decision {
                            allowed: true,
                            limit: policy.limit(),
                            remaining: policy.capacity() - cost,
                            reset_after: Duration::ZERO,
                            retry_after: None,
                            blocked: false,
                            delay: std::time::Duration::ZERO,
                        },
                        policy.window(),
                    )),
                    OnError::Deny | OnError::Local => Err(CheckError::Unavailable),
                }
            }
        }
    }

    /// Charges `cost` units of `rule` to `key` whatever the limit says: the
    /// second step of the decision API for what already happened (a
    /// request [asked about](Self::check_key_with) without charging whose
    /// answer counts). Never refused; the counter may pass the limit, and
    /// the key is then refused until it has paid it back. Returns what the
    /// key has left after the charge.
    ///
    /// When the store cannot record it: `on_error = local` records it on
    /// the in-process store, else [`CheckError::Unavailable`].
    pub async fn charge_key(
        &self,
        rule: &str,
        key: &str,
        cost: u64,
    ) -> Result<Decision, CheckError> {
        self.charge_key_in_window(rule, key, cost)
            .await
            .map(|(decision, _)| decision)
    }

    /// [`charge_key`](Self::charge_key), and the window the key is counted
    /// over (see [`check_key_in_window`](Self::check_key_in_window)).
    pub async fn charge_key_in_window(
        &self,
        rule: &str,
        key: &str,
        cost: u64,
    ) -> Result<(Decision, Duration), CheckError> {
        let snapshot = self.shared.snapshot.load_full();
        let compiled = find_rule(&snapshot, rule, cost)?;
        let key = bounded_key(key);
        let overridden = self.overridden(compiled, &key, self.shared.clock.now());
        let (policy, _) = policy_and_label(compiled, overridden.as_deref());
        if cost > policy.capacity() {
            return Err(CheckError::InsufficientCapacity {
                rule: rule.to_owned(),
                cost,
                capacity: policy.capacity(),
            });
        }
        let charge = Check::new(compiled.name(), policy, &key, cost);
        match self
            .charge(&snapshot.config, std::slice::from_ref(&charge))
            .await
        {
            Some(decisions) => {
                self.shared.observer.on_charge(compiled.name(), cost);
                Ok((decisions[0], policy.window()))
            }
            None => {
                self.observe(Some(compiled.name()), Outcome::Error);
                Err(CheckError::Unavailable)
            }
        }
    }

    /// Takes a slot of every concurrency limit in `in_flight` for one
    /// request (all or nothing): the lease, `None` when the store could
    /// not be asked and `on_error = allow`; the refusal otherwise.
    async fn acquire_slots(
        &self,
        config: &LimiterConfig,
        in_flight: &[Keyed<'_>],
    ) -> Result<Option<Lease>, Verdict> {
        let n = self
            .shared
            .slot_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut held = HeldSlots {
            slots: in_flight
                .iter()
                .filter_map(|(r, key, _)| {
                    let c = r.rule.concurrency?;
                    Some((r.name().to_owned(), key.clone(), c.limit, c.lease))
                })
                .collect(),
            id: format!("{}-{n:x}", self.shared.slot_prefix),
            local: false,
        };
        let mut decisions = None;
        if self.shared.health.should_try(self.shared.clock.now()) {
            let slots = held.as_slots();
            match self
                .store_call(StoreCall::Check, self.shared.store.acquire(&slots))
                .await
            {
                Ok(d) if d.len() == slots.len() => decisions = Some(d),
                Ok(_) => tracing::error!("store answered the wrong number of slots"),
                Err(Error::Store(_)) => {}
                Err(e) => tracing::error!(error = %e, "store refused a slot"),
            }
        }
        if decisions.is_none() && config.on_error == OnError::Local {
            decisions = Some(self.shared.fallback.acquire_now(&held.as_slots()));
            held.local = true;
            self.shared
                .observer
                .on_store_fallback(StoreFallback::Local, in_flight.len());
        }
        let Some(decisions) = decisions else {
            for (rule, ..) in in_flight {
                self.observe(Some(rule.name()), Outcome::Error);
            }
            return match config.on_error {
                OnError::Allow => {
                    self.shared
                        .observer
                        .on_store_fallback(StoreFallback::Allow, in_flight.len());
                    Ok(None)
                }
                OnError::Deny | OnError::Local => Err(Verdict::Unavailable),
            };
        };
        if let Some(i) = decisions
            .iter()
            .position(|d| !d.allowed && d.in_flight >= d.limit)
        {
            for ((rule, key, _), d) in in_flight.iter().zip(&decisions) {
                let refused = d.in_flight >= d.limit;
                rule.tally(key, !refused);
                let outcome = if refused {
                    Outcome::Limited
                } else {
                    Outcome::Allowed
                };
                self.observe(Some(rule.name()), outcome);
            }
            let rule = in_flight[i].0;
            tracing::debug!(rule = rule.name(), key = %in_flight[i].1, "request limited: too many in flight");
            return Err(Verdict::Limited(RuleDecision::labelled(
                &rule.label,
                Decision {
                    allowed: false,
                    limit: decisions[i].limit,
                    remaining: 0,
                    reset_after: Duration::ZERO,
                    // Nothing says when a request in flight ends.
                    retry_after: Some(Duration::from_secs(1)),
                    blocked: false,
                    delay: Duration::ZERO,
                },
            )));
        }
        for (rule, key, _) in in_flight {
            rule.tally(key, true);
            self.observe(Some(rule.name()), Outcome::Allowed);
        }
        Ok(Some(self.lease_of(held)))
    }

    /// The lease of `held`: renewed every third of the shortest lease
    /// while it lives, given back when dropped.
    fn lease_of(&self, held: HeldSlots) -> Lease {
        let every = held
            .slots
            .iter()
            .map(|(.., lease)| *lease)
            .min()
            .unwrap_or(Duration::from_secs(30))
            / 3;
        let renewer = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            let (limiter, held) = (self.clone(), held.clone());
            runtime
                .spawn(async move {
                    loop {
                        tokio::time::sleep(every).await;
                        let slots = held.as_slots();
                        let renewed = if held.local {
                            Ok(limiter.shared.fallback.renew_now(&slots))
                        } else {
                            limiter
                                .store_call(StoreCall::Check, limiter.shared.store.renew(&slots))
                                .await
                        };
                        if let Ok(kept) = renewed
                            && kept.iter().any(|k| !k)
                        {
                            tracing::warn!(id = %held.id, "a request in flight outlived its concurrency lease");
                        }
                    }
                })
                .abort_handle()
        });
        let limiter = self.clone();
        Lease {
            release: Some(Box::new(move || {
                if held.local {
                    limiter.shared.fallback.release_now(&held.as_slots());
                    return None;
                }
                Some(Box::pin(async move {
                    let slots = held.as_slots();
                    if let Err(e) = limiter
                        .store_call(StoreCall::Check, limiter.shared.store.release(&slots))
                        .await
                    {
                        tracing::debug!(error = %e, "could not give back concurrency slots; their lease frees them");
                    }
                }) as ReleaseCall)
            })),
            renewer,
        }
    }

    /// Removes every rule's `cost_header` from an answer's `headers`: what
    /// a request cost is between the upstream and floodgate, whether or
    /// not a rule charged it (the layer calls this on every answer).
    pub fn remove_cost_headers(&self, headers: &mut HeaderMap) {
        for name in &self.shared.snapshot.load().cost_headers {
            headers.remove(name);
        }
    }

    /// Charges what a request checked with
    /// [`check_request_for_answer`](Self::check_request_for_answer) owes,
    /// now that its answer's `status` and `headers` are known: each rule
    /// with `count_status` whose statuses hold `status`, and each rule with
    /// `cost_header` (what the header names), in one store call. Every
    /// rule's `cost_header` is removed from `headers`: the cost is between
    /// the upstream and floodgate.
    ///
    /// A store failure is logged and counted; the answer goes out as it
    /// is, uncharged (under `on_error = local`, charged on the in-process
    /// store).
    pub async fn charge_answer(
        &self,
        pending: Pending,
        status: StatusCode,
        headers: &mut HeaderMap,
    ) {
        let Some((snapshot, owed)) = pending.owed else {
            return;
        };
        let mut charges_of: Vec<(&CompiledRule, &str, u64)> = Vec::with_capacity(owed.len());
        let mut owed_policies: Vec<(usize, Option<Arc<Overridden>>)> =
            Vec::with_capacity(owed.len());
        for (index, key) in &owed {
            let Some(rule) = snapshot.rules.get(*index) else {
                continue;
            };
            if rule
                .rule
                .count_status
                .as_ref()
                .is_some_and(|counted| !counted.contains(status))
            {
                continue;
            }
            let overridden = self.overridden(rule, key, self.shared.clock.now());
            let capacity = policy_and_label(rule, overridden.as_deref()).0.capacity();
            let cost = match &rule.rule.cost_header {
                Some(name) => {
                    let (cost, fallback) =
                        answer_cost(headers, name, rule.rule.cost.min(capacity), capacity);
                    if let Some(reason) = fallback {
                        tracing::debug!(rule = rule.name(), header = %name, reason = reason.as_str(), cost, "the answer's cost header was not charged as named");
                        self.shared.observer.on_cost_fallback(rule.name(), reason);
                    }
                    cost
                }
                None => rule.rule.cost,
            };
            if cost > 0 {
                owed_policies.push((charges_of.len(), overridden));
                charges_of.push((rule, key.as_str(), cost));
            }
        }
        let charges: Vec<Check<'_>> = charges_of
            .iter()
            .zip(&owed_policies)
            .map(|((rule, key, cost), (_, overridden))| {
                let (policy, _) = policy_and_label(rule, overridden.as_deref());
                Check::new(rule.name(), policy, key, *cost)
            })
            .collect();
        for (index, _) in &owed {
            if let Some(name) = snapshot
                .rules
                .get(*index)
                .and_then(|r| r.rule.cost_header.as_ref())
            {
                headers.remove(name);
            }
        }
        if charges.is_empty() {
            return;
        }
        if self.charge(&snapshot.config, &charges).await.is_some() {
            for c in &charges {
                self.shared.observer.on_charge(c.rule, c.cost);
            }
        } else {
            for c in &charges {
                tracing::warn!(
                    rule = c.rule,
                    key = c.key,
                    cost = c.cost,
                    "could not charge an answer: the store failed"
                );
                self.observe(Some(c.rule), Outcome::Error);
            }
        }
    }

    /// The override in force for `key` on `rule`: one put in the store,
    /// else one of the rule's own.
    fn overridden(
        &self,
        rule: &CompiledRule,
        key: &str,
        now: Timestamp,
    ) -> Option<Arc<Overridden>> {
        let probe = self.shared.overrides.probe(rule.name(), key);
        self.overridden_probed(probe, rule, key, now)
    }

    /// [`overridden`](Self::overridden) with the override cache's `probe`
    /// of (rule, key), taken earlier.
    fn overridden_probed(
        &self,
        probe: overrides::Probe,
        rule: &CompiledRule,
        key: &str,
        now: Timestamp,
    ) -> Option<Arc<Overridden>> {
        let put =
            self.shared
                .overrides
                .get_probed(probe, rule.name(), key, now, rule.generation, |o| {
                    let compiled = Overridden::of(o, &rule.rule, rule.generation);
                    if compiled.is_none() {
                        tracing::debug!(
                            rule = rule.name(),
                            key,
                            "an override that no longer fits its rule (reloaded since) is ignored"
                        );
                    }
                    compiled
                });
        if put.is_some() {
            return put;
        }
        if rule.file_overrides.is_empty() {
            return None;
        }
        rule.file_overrides.get(key).cloned()
    }

    /// Puts a per-key override of `rule` in force for `key`: `limit` per
    /// `window` (default: the rule's), `burst` (token bucket), for `ttl`
    /// (default: until removed). Kept in the store, so every instance
    /// sharing it applies it at its next sync (within a second); this one
    /// at once. Returns it as stored.
    pub async fn put_override(
        &self,
        rule: &str,
        key: &str,
        limit: u64,
        window: Option<Duration>,
        burst: Option<u64>,
        ttl: Option<Duration>,
    ) -> Result<KeyOverride, OverrideError> {
        let snapshot = self.shared.snapshot.load_full();
        let compiled = snapshot
            .rules
            .iter()
            .find(|r| r.name() == rule)
            .ok_or_else(|| OverrideError::UnknownRule(rule.to_owned()))?;
        if key.is_empty() {
            return Err(OverrideError::EmptyKey);
        }
        let o = KeyOverride {
            rule: rule.to_owned(),
            key: bounded_key(key).into_owned(),
            limit,
            window,
            burst,
            expires: None,
        };
        let policy = o
            .policy(&compiled.rule.policy)
            .map_err(OverrideError::Invalid)?;
        if policy.capacity() < compiled.rule.cost {
            return Err(OverrideError::BelowCost {
                capacity: policy.capacity(),
                cost: compiled.rule.cost,
            });
        }
        let stored = self
            .store_call(
                StoreCall::Overrides,
                self.shared.store.put_override(&o, ttl),
            )
            .await?;
        let n = self.shared.overrides.put(&stored);
        self.shared.observer.on_override_count(rule, n);
        Ok(stored)
    }

    /// Whether the configuration in force has a rule named `rule`.
    fn has_rule(&self, rule: &str) -> bool {
        self.shared
            .snapshot
            .load()
            .rules
            .iter()
            .any(|r| r.name() == rule)
    }

    /// Removes the override put for `key` on `rule`, in the store and here
    /// at once. Returns whether there was one. The rule's own
    /// (`[[rule.override]]`) stay.
    pub async fn remove_override(&self, rule: &str, key: &str) -> Result<bool, OverrideError> {
        if !self.has_rule(rule) {
            return Err(OverrideError::UnknownRule(rule.to_owned()));
        }
        let key = bounded_key(key);
        let existed = self
            .store_call(
                StoreCall::Overrides,
                self.shared.store.remove_override(rule, &key),
            )
            .await?;
        let n = self.shared.overrides.remove(rule, &key);
        self.shared.observer.on_override_count(rule, n);
        Ok(existed)
    }

    /// Every override of `rule` in force, by key: those put in the store
    /// (as of this instance's last sync), then the rule's own that none of
    /// those replaces. `None` if no rule has that name.
    pub fn overrides(&self, rule: &str) -> Option<Vec<(KeyOverride, OverrideSource)>> {
        let snapshot = self.shared.snapshot.load();
        let compiled = snapshot.rules.iter().find(|r| r.name() == rule)?;
        let now = self.shared.clock.now();
        let mut list: Vec<(KeyOverride, OverrideSource)> = self
            .shared
            .overrides
            .of_rule(rule, now)
            .into_iter()
            .map(|o| (o, OverrideSource::Store))
            .collect();
        for o in &compiled.rule.overrides {
            if !list.iter().any(|(put, _)| put.key == o.key) {
                list.push((o.clone(), OverrideSource::File));
            }
        }
        list.sort_by(|a, b| a.0.key.cmp(&b.0.key));
        Some(list)
    }

    /// The override in force for `key` on `rule`, if any, and the policy
    /// it decides that key by.
    pub fn override_of(
        &self,
        rule: &str,
        key: &str,
    ) -> Option<(KeyOverride, OverrideSource, Policy)> {
        let snapshot = self.shared.snapshot.load();
        let compiled = snapshot.rules.iter().find(|r| r.name() == rule)?;
        let key = bounded_key(key);
        let now = self.shared.clock.now();
        if let Some(o) = self.shared.overrides.override_of(rule, &key, now)
            && let Some(overridden) = Overridden::of(&o, &compiled.rule, compiled.generation)
        {
            return Some((o, OverrideSource::Store, overridden.policy));
        }
        let o = compiled.rule.overrides.iter().find(|o| o.key == *key)?;
        let overridden = compiled.file_overrides.get(o.key.as_str())?;
        Some((o.clone(), OverrideSource::File, overridden.policy.clone()))
    }

    /// Reads the override changes made since the last sync (by any
    /// instance sharing the store) into the local copy, a page at a time.
    /// Returns the number of the last change applied.
    pub async fn sync_overrides(&self) -> Result<u64, Error> {
        // Bounded, so one sync never runs away; the rest comes next time.
        for _ in 0..1000 {
            let since = self.shared.overrides.version();
            let writes = self.shared.overrides.writes();
            let page = self
                .store_call(
                    StoreCall::Overrides,
                    self.shared.store.override_changes(since, SYNC_PAGE),
                )
                .await?;
            let more = page.more;
            let (counts, restarted) = self.shared.overrides.apply(page, writes);
            for (rule, n) in counts {
                self.shared.observer.on_override_count(&rule, n);
            }
            if !more && !restarted {
                break;
            }
        }
        Ok(self.shared.overrides.version())
    }

    /// Reads every block from the store into the local cache (manual blocks,
    /// and penalty blocks so that an unblock made elsewhere is seen). Returns
    /// how many blocks are cached. On failure the cache is left as it was.
    ///
    /// A block or an unblock made through this instance while the list was
    /// being read is kept: that sync leaves the cache as it is, and the next
    /// one, whose list has the change, replaces it.
    pub async fn sync_blocks(&self) -> Result<usize, Error> {
        let changes = self.shared.blocks.changes();
        let blocks = self
            .store_call(StoreCall::Blocks, self.shared.store.blocks())
            .await?;
        let cache = &self.shared.blocks;
        let (manual, penalties) = cache
            .replace(&blocks, self.shared.clock.now(), changes)
            .unwrap_or_else(|| cache.counts());
        Ok(manual + penalties)
    }

    /// Runs [`sync_blocks`](Self::sync_blocks) and
    /// [`sync_overrides`](Self::sync_overrides) every `every` (use
    /// [`BLOCK_SYNC_INTERVAL`]) until `shutdown` resolves. Failures are
    /// logged by the store health transitions, not per attempt.
    pub async fn sync_blocks_until(&self, every: Duration, shutdown: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => {
                    if let Err(e) = self.sync_blocks().await {
                        tracing::debug!(error = %e, "block sync failed");
                    }
                    if let Err(e) = self.sync_overrides().await {
                        tracing::debug!(error = %e, "override sync failed");
                    }
                    self.publish_top_if_due().await;
                }
            }
        }
    }

    /// Keeps this limiter's blocks in step with the store in the background:
    /// [`sync_blocks`](Self::sync_blocks) every [`BLOCK_SYNC_INTERVAL`], on
    /// the current Tokio runtime, for as long as any handle to the limiter
    /// (a clone, the layer) lives; the task ends by itself after the last
    /// one is dropped. Blocks and unblocks made on other instances sharing
    /// the store then apply here within a second. Calling it again does
    /// nothing. `Err` outside a Tokio runtime.
    ///
    /// [`sync_blocks_until`](Self::sync_blocks_until) does the same under a
    /// shutdown future of the caller's.
    pub fn sync_blocks_in_background(&self) -> Result<(), NoRuntime>
    where
        S: Store,
    {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NoRuntime)?;
        if self
            .shared
            .syncing
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return Ok(());
        }
        let shared = Arc::downgrade(&self.shared);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(BLOCK_SYNC_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // Only a live limiter is synced; the task holds none between ticks.
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let limiter = Limiter { shared };
                if let Err(e) = limiter.sync_blocks().await {
                    tracing::debug!(error = %e, "block sync failed");
                }
                if let Err(e) = limiter.sync_overrides().await {
                    tracing::debug!(error = %e, "override sync failed");
                }
                limiter.publish_top_if_due().await;
            }
        });
        Ok(())
    }

    /// This instance's top clients of every rule as of now: each rule's
    /// window moved on to the current minute.
    pub fn top_summary(&self) -> TopSummary {
        self.shared
            .top
            .summary(&self.shared.slot_prefix, self.shared.clock.now())
    }

    /// Publishes [`top_summary`](Self::top_summary) to the store for
    /// [`TOP_TTL`], where [`top`](Self::top) on any instance sharing the
    /// store finds it. Bounded by the store timeout; the store's health and
    /// metrics are left alone (a publish is not a decision).
    pub async fn publish_top(&self) -> Result<(), Error> {
        let summary = self.top_summary();
        self.bounded(self.shared.store.put_top(&summary, TOP_TTL))
            .await
    }

    /// [`publish_top`](Self::publish_top) if [`TOP_PUBLISH_INTERVAL`] has
    /// passed since the last one; a failure is logged. The block syncs
    /// ([`sync_blocks_until`](Self::sync_blocks_until), the background
    /// one) call this on every tick.
    pub async fn publish_top_if_due(&self) {
        if !self.shared.top.publish_due(self.shared.clock.now()) {
            return;
        }
        if let Err(e) = self.publish_top().await {
            tracing::debug!(error = %e, "top clients publish failed");
        }
    }

    /// The `n` heaviest (rule, key) pairs by decisions (admitted + refused)
    /// over the last five minutes, across every instance that published to
    /// the store, this one counted as of now; only `rule`'s if given. See
    /// `floodgate_core::top` for the bound each count is within.
    pub async fn top(&self, rule: Option<&str>, n: usize) -> Result<Vec<TopClient>, TopError> {
        if let Some(rule) = rule
            && !self.has_rule(rule)
        {
            return Err(TopError::UnknownRule(rule.to_owned()));
        }
        let mine = self.top_summary();
        let mut summaries = self.bounded(self.shared.store.top_summaries()).await?;
        summaries.retain(|s| s.instance != mine.instance);
        summaries.push(mine);
        Ok(floodgate_core::top::heaviest(&summaries, rule, n)
            .into_iter()
            .map(|(head, e)| TopClient {
                rule: head.rule,
                key: e.key,
                admitted: e.admitted,
                refused: e.refused,
                error: e.error,
            })
            .collect())
    }

    /// `fut`, failing with a timeout after the configured store timeout.
    async fn bounded<T>(&self, fut: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        let timeout = self.shared.snapshot.load().config.timeout;
        match tokio::time::timeout(timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(Error::Store(StoreError::timeout(timeout))),
        }
    }

    /// Blocks `target` for `ttl` in the store (so every instance sees it at
    /// its next sync) and at once on this instance.
    pub async fn block(
        &self,
        target: &Target,
        ttl: Duration,
        reason: &str,
    ) -> Result<Block, Error> {
        let block = self
            .store_call(
                StoreCall::AddBlock,
                self.shared
                    .store
                    .add_block(&target.to_string(), ttl, reason),
            )
            .await?;
        self.shared.blocks.add_manual(target.clone(), block.until);
        Ok(block)
    }

    /// Lifts every block of `target` (a [`Target`], or a rule key for a
    /// penalty block) in the store and at once on this instance. Returns
    /// whether any was in force.
    pub async fn unblock(&self, target: &str) -> Result<bool, Error> {
        let lifted = self
            .store_call(
                StoreCall::RemoveBlock,
                self.shared.store.remove_block(target),
            )
            .await?;
        self.shared.blocks.remove(target);
        Ok(lifted)
    }

    /// The in-process store that decides while the store is down under
    /// `on_error = local` (bounded by `local_max_keys`): for its
    /// [`stats`](MemoryStore::stats) in metrics.
    pub fn local_fallback(&self) -> &MemoryStore {
        &self.shared.fallback
    }

    /// Asks the store whether it answers, within the timeout; updates
    /// [`store_healthy`](Self::store_healthy).
    pub async fn ping(&self) -> Result<(), Error> {
        self.store_call(StoreCall::Ping, self.shared.store.ping())
            .await
    }

    /// The decisions for `checks`: from the store when it is (or may be)
    /// up, else from the fallback under `on_error = local`; `None` when
    /// nothing could decide.
    async fn decide(&self, config: &LimiterConfig, checks: &[Check<'_>]) -> Option<Vec<Decision>> {
        self.decide_where(config, checks).await.map(|(d, _)| d)
    }

    /// [`decide`](Self::decide), and whether the in-process fallback
    /// decided (`true`) rather than the store.
    async fn decide_where(
        &self,
        config: &LimiterConfig,
        checks: &[Check<'_>],
    ) -> Option<(Vec<Decision>, bool)> {
        self.store_or_fallback(
            config,
            StoreCall::Check,
            "check",
            checks.len(),
            self.shared.store.check(checks),
            || self.shared.fallback.check_now(checks),
        )
        .await
    }

    /// Records `charges` in the store when it is (or may be) up, else in
    /// the fallback under `on_error = local`; the decisions after, or
    /// `None` when nothing could record them.
    async fn charge(&self, config: &LimiterConfig, charges: &[Check<'_>]) -> Option<Vec<Decision>> {
        self.store_or_fallback(
            config,
            StoreCall::Charge,
            "charge",
            charges.len(),
            self.shared.store.charge(charges),
            || self.shared.fallback.charge_now(charges),
        )
        .await
        .map(|(decisions, _)| decisions)
    }

    /// One answer per item of a `what` call: from the store (`call`) when
    /// it is (or may be) up, else from the in-process fallback (`local`)
    /// under `on_error = local`, with `true`; `None` when neither could.
    async fn store_or_fallback<T>(
        &self,
        config: &LimiterConfig,
        kind: StoreCall,
        what: &str,
        expected: usize,
        call: impl Future<Output = Result<Vec<T>, Error>>,
        local: impl FnOnce() -> Result<Vec<T>, Error>,
    ) -> Option<(Vec<T>, bool)> {
        if self.shared.health.should_try(self.shared.clock.now()) {
            match self.store_call(kind, call).await {
                Ok(answers) if answers.len() == expected => return Some((answers, false)),
                Ok(answers) => tracing::error!(
                    expected,
                    got = answers.len(),
                    what,
                    "store answered the wrong number of items"
                ),
                Err(Error::Store(_)) => {}
                Err(e) => tracing::error!(error = %e, what, "store refused a call"),
            }
        }
        match config.on_error {
            OnError::Local => match local() {
                Ok(answers) => {
                    self.shared
                        .observer
                        .on_store_fallback(StoreFallback::Local, expected);
                    return Some((answers, true));
                }
                Err(e) => tracing::error!(error = %e, what, "local fallback refused a call"),
            },
            // Every caller of a check lets its requests through now; a
            // charge that cannot be recorded is lost, not let through.
            OnError::Allow if kind == StoreCall::Check => self
                .shared
                .observer
                .on_store_fallback(StoreFallback::Allow, expected),
            OnError::Allow | OnError::Deny => {}
        }
        None
    }

    /// Runs one store call bounded by the timeout, timing it and tracking
    /// the store's health.
    async fn store_call<T>(
        &self,
        call: StoreCall,
        fut: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let timeout = self.shared.snapshot.load().config.timeout;
        let started = tokio::time::Instant::now();
        let result = if self
            .shared
            .store
            .call_timeout()
            .is_some_and(|own| own <= timeout)
        {
            // The store gives up in time by itself: no second timer.
            fut.await
        } else {
            match tokio::time::timeout(timeout, fut).await {
                Ok(result) => result,
                Err(_) => Err(Error::Store(StoreError::timeout(timeout))),
            }
        };
        let failure = match &result {
            Err(Error::Store(e)) => Some(e),
            _ => None,
        };
        self.shared
            .observer
            .on_store_call(call, started.elapsed(), failure.is_none());
        match failure {
            Some(e) => {
                if self.shared.health.record_failure(self.shared.clock.now()) {
                    let on_error = self.shared.snapshot.load().config.on_error;
                    tracing::warn!(error = %e, %on_error, "store unreachable; deciding per on_error until it answers again");
                    self.shared.observer.on_store_health(false);
                }
            }
            None => {
                if self.shared.health.record_success() {
                    tracing::info!("store reachable again; shared limiting resumed");
                    self.shared.observer.on_store_health(true);
                }
            }
        }
        result
    }

    /// Turns a batch's decisions into a verdict.
    fn conclude(&self, keyed: &[Keyed<'_>], decisions: &[Decision]) -> Verdict {
        let mut refusal: Option<usize> = None;
        let mut tightest: Option<usize> = None;
        for (i, ((rule, key, _), d)) in keyed.iter().zip(decisions).enumerate() {
            self.record(rule, key, d);
            if !d.allowed
                && !rule.rule.shadow
                && refusal.is_none_or(|j| d.retry_after > decisions[j].retry_after)
            {
                refusal = Some(i);
            }
            if tightest.is_none_or(|j| d.remaining < decisions[j].remaining) {
                tightest = Some(i);
            }
        }
        let pick = |i: usize| {
            let (_, label) = policy_and_label(keyed[i].0, keyed[i].2.as_deref());
            RuleDecision::labelled(label, decisions[i])
        };
        match refusal {
            Some(i) => {
                tracing::debug!(rule = keyed[i].0.name(), key = %keyed[i].1, "request limited");
                Verdict::Limited(pick(i))
            }
            None => Verdict::Allow(tightest.map(pick)),
        }
    }

    /// Reports one rule's decision, logs a shadow refusal, and caches a
    /// penalty block the decision started.
    fn record(&self, rule: &CompiledRule, key: &str, d: &Decision) {
        rule.tally(key, d.allowed);
        let outcome = if d.allowed {
            Outcome::Allowed
        } else if rule.rule.shadow {
            tracing::info!(
                rule = rule.name(),
                key,
                remaining = d.remaining,
                "shadow rule would refuse"
            );
            Outcome::ShadowLimited
        } else if d.blocked {
            if let Some(left) = d.retry_after {
                let now = self.shared.clock.now();
                self.shared
                    .blocks
                    .add_penalty(rule.name(), key, now.saturating_add(left), now);
            }
            Outcome::Blocked
        } else {
            Outcome::Limited
        };
        self.observe(Some(rule.name()), outcome);
    }

    pub(crate) fn malformed(&self, reason: BadRequestReason) -> Verdict {
        self.observe(None, Outcome::Malformed);
        Verdict::BadRequest(reason)
    }

    fn observe(&self, rule: Option<&str>, outcome: Outcome) {
        self.shared.observer.on_decision(rule, outcome);
    }
}

/// An admitted request to hold: how long, and what it took, to give back
/// if it never goes ahead.
struct Hold {
    wait: Duration,
    /// (rule, policy, key, cost) of every check that charged.
    took: Vec<(String, Policy, String, u64)>,
    /// The rule whose place is furthest, for the metrics.
    rule: String,
    /// The in-process fallback decided (the store was down): the places
    /// are given back there.
    local: bool,
    /// That rule's RateLimit label and limit, for a refusal when too many
    /// are held.
    label: Arc<RuleLabel>,
    limit: u64,
}

/// The hold of an admitted batch: the longest [`Decision::delay`] of its
/// checks, if any is not zero.
fn hold_of(
    keyed: &[Keyed<'_>],
    checks: &[Check<'_>],
    decisions: &[Decision],
    local: bool,
) -> Option<Hold> {
    // Probes take no place: only what charged is held for.
    let (i, longest) = decisions
        .iter()
        .enumerate()
        .filter(|(i, _)| checks[*i].charges())
        .max_by_key(|(_, d)| d.delay)?;
    if longest.delay.is_zero() {
        return None;
    }
    let took = checks
        .iter()
        .zip(decisions)
        .filter(|(c, d)| c.charges() && d.allowed)
        .map(|(c, _)| {
            (
                c.rule.to_owned(),
                c.policy.clone(),
                c.key.to_owned(),
                c.cost,
            )
        })
        .collect();
    let (_, label) = policy_and_label(keyed[i].0, keyed[i].2.as_deref());
    Some(Hold {
        wait: longest.delay,
        took,
        rule: keyed[i].0.name().to_owned(),
        local,
        label: Arc::clone(label),
        limit: longest.limit,
    })
}

/// Requests held at once per limiter, at most: past this, one that would
/// be held is refused at once (429) and its place given back, so holding
/// cannot grow memory without bound.
pub const MAX_HELD: usize = 10_000;

/// A held request's place among [`MAX_HELD`], and what it took: dropped
/// before [`done`](HeldSlot::done) (the client left), it gives that back
/// in the store.
struct HeldSlot<'a, S: Store> {
    limiter: &'a Limiter<S>,
    hold: Hold,
    arrived: tokio::time::Instant,
    finished: bool,
}

impl<'a, S: Store> HeldSlot<'a, S> {
    fn enter(limiter: &'a Limiter<S>, hold: Hold) -> Option<Self> {
        let held = &limiter.shared.held;
        let before = held.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let slot = HeldSlot {
            limiter,
            hold,
            arrived: tokio::time::Instant::now(),
            finished: false,
        };
        if before >= MAX_HELD {
            // Dropped unfinished: the place goes back.
            return None;
        }
        limiter.shared.observer.on_held(before + 1);
        Some(slot)
    }

    /// The request goes ahead.
    fn done(mut self) {
        self.finished = true;
    }
}

impl<S: Store> Drop for HeldSlot<'_, S> {
    fn drop(&mut self) {
        let shared = &self.limiter.shared;
        let before = shared
            .held
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        shared.observer.on_held(before.saturating_sub(1));
        shared
            .observer
            .on_delay(&self.hold.rule, self.finished, self.arrived.elapsed());
        if self.finished || self.hold.took.is_empty() {
            return;
        }
        let took = std::mem::take(&mut self.hold.took);
        if self.hold.local {
            let refunds: Vec<Check<'_>> = took
                .iter()
                .map(|(rule, policy, key, cost)| Check::new(rule, policy, key, *cost))
                .collect();
            let _ = shared.fallback.refund_now(&refunds);
            return;
        }
        let limiter = self.limiter.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let refunds: Vec<Check<'_>> = took
                    .iter()
                    .map(|(rule, policy, key, cost)| Check::new(rule, policy, key, *cost))
                    .collect();
                if let Err(e) = limiter
                    .store_call(StoreCall::Charge, limiter.shared.store.refund(&refunds))
                    .await
                {
                    tracing::debug!(error = %e, "could not give back a held request's place");
                }
            });
        }
    }
}

/// The policy a key is decided by, and its RateLimit label: an override's,
/// else its rule's.
fn policy_and_label<'a>(
    rule: &'a CompiledRule,
    overridden: Option<&'a Overridden>,
) -> (&'a Policy, &'a Arc<RuleLabel>) {
    match overridden {
        Some(o) => (&o.policy, &o.label),
        None => (&rule.rule.policy, &rule.label),
    }
}

/// The check of `cost` units of `rule` (under `overridden` when the key has
/// an override) for `key`: a probe when the rule is charged on the answer.
fn check_of<'a>(
    rule: &'a CompiledRule,
    overridden: Option<&'a Overridden>,
    key: &'a str,
    cost: u64,
) -> Check<'a> {
    let (policy, _) = policy_and_label(rule, overridden);
    let check = Check::new(rule.name(), policy, key, cost);
    let check = if rule.rule.shadow {
        check.shadow()
    } else {
        check
    };
    if rule.rule.charges_on_answer() {
        check.probe()
    } else {
        check
    }
}

/// The rule named `rule` of `snapshot`, if `cost` is not zero (whether the
/// key's policy can ever admit it is checked once its override is known).
fn find_rule<'s>(
    snapshot: &'s Snapshot,
    rule: &str,
    cost: u64,
) -> Result<&'s CompiledRule, CheckError> {
    let compiled = snapshot
        .rules
        .iter()
        .find(|r| r.name() == rule)
        .ok_or_else(|| CheckError::UnknownRule(rule.to_owned()))?;
    if compiled.rule.concurrency.is_some() {
        return Err(CheckError::InFlightRule(rule.to_owned()));
    }
    if cost == 0 {
        return Err(CheckError::ZeroCost);
    }
    Ok(compiled)
}

/// The refusal of a request under a cached penalty block lasting `left`.
fn penalty_decision(policy: &Policy, left: Duration) -> Decision {
    Decision {
        allowed: false,
        limit: policy.limit(),
        remaining: 0,
        reset_after: left,
        retry_after: Some(left),
        blocked: true,
        delay: std::time::Duration::ZERO,
    }
}
