//! # floodgate-tower
//!
//! Rate limiting for tower services (axum, hyper, tonic): client identity,
//! rule matching, `[access]` lists, blocks, `RateLimit` headers, and 429 /
//! 403 / 503 answers with `application/problem+json` bodies.
//!
//! # Modules
//!
//! - `middleware`: [`FloodgateLayer`] wraps a service in [`Floodgate`], which answers refusals.
//! - `peer`: where the TCP peer's address comes from ([`PeerAddr`], axum's `ConnectInfo`).
//! - [`identity`]: who the client is ([`ClientIpConfig`]), behind trusted proxies only.
//! - [`path`]: the canonical form of request paths, the one spelling that rules match.
//! - [`limiter`]: the engine, [`Limiter`]: lists, blocks, rules, one store batch per request.
//! - [`setup`]: a limiter in a few chained calls ([`Rule::sliding_window`], [`LimiterConfig::builder`]),
//!   checked at once like a config file.
//! - [`rule`]: [`Rule`]s, which requests a limit applies to and whose counter each counts on,
//!   including keys the application forms ([`AppKey`]: the authenticated user or tenant
//!   an earlier layer put in the request's extensions, or any function of the request).
//! - [`target`]: [`Target`], `ip:<addr>`, `ip:<cidr>` or `header:<name>:<value>`.
//! - `target_set`: [`Target`]s looked up by request in time independent of their number.
//! - `verdict`: [`Verdict`], what was decided; [`RuleDecision`] writes its RateLimit fields.
//! - [`response`]: the limiter's own 429 / 403 / 503 / 400 answers, with problem+json bodies.
//! - [`headers`]: encodes `RateLimit-Policy`, `RateLimit` and `Retry-After` values.
//! - [`observer`]: hooks for metrics ([`Observer`]), with labels from bounded sets.
//! - `text`: numbers and addresses appended to strings without `core::fmt`.
//!
//! Per request, the [`Limiter`] consults the allow list (bypass), the deny
//! list (403), manual blocks (403) and penalty blocks (429) from a local
//! cache with no store round trip, then every matching [`Rule`] in one
//! [`Store`](floodgate_core::Store) batch, which consumes nothing when any
//! rule refuses. Store failures follow [`OnError`]; no call waits longer than
//! the configured timeout. [`Target`]s are the one syntax for lists, blocks,
//! logs and the admin API.
//!
//! ```
//! use axum::{Router, body::Body, routing::get};
//! use floodgate_core::MemoryStore;
//! use floodgate_tower::{FloodgateLayer, LimiterConfig, PeerAddr, Rule};
//! use http::{Request, StatusCode};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let limiter = LimiterConfig::builder()
//!     .rule(Rule::token_bucket("api", 2, "1m").key("ip"))
//!     .build(MemoryStore::new(100_000))?;
//! let app = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(FloodgateLayer::new(limiter));
//!
//! // axum servers started with `into_make_service_with_connect_info` need
//! // no `PeerAddr`: the layer reads `ConnectInfo<SocketAddr>`.
//! let request = || {
//!     Request::get("/")
//!         .extension(PeerAddr("192.0.2.7:4711".parse().expect("address")))
//!         .body(Body::empty())
//! };
//! let ok = app.clone().oneshot(request()?).await?;
//! assert_eq!(ok.status(), StatusCode::OK);
//! // One unit left; the bucket is full again in 30 s.
//! assert_eq!(ok.headers()["ratelimit"], r#""api";r=1;t=30"#);
//!
//! app.clone().oneshot(request()?).await?;
//! let refused = app.oneshot(request()?).await?;
//! assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(refused.headers()["content-type"], "application/problem+json");
//! # Ok(())
//! # }
//! ```
//!
//! Rules match the request's [canonical path](path) (escapes of unreserved
//! characters decoded, dot segments removed, repeated slashes merged), and
//! the layer hands the inner service the request with that path, so no
//! spelling reaches it that the rules did not see. A header a rule's key or
//! an access list reads, sent twice, is a 400. axum's `Router::layer` runs a
//! layer after routing; to have the router route the canonical path too, put
//! the layer around the router (`FloodgateLayer::new(limiter).layer(router)`,
//! served as it is or as a `fallback_service`).
//!
//! A gRPC request (`content-type: application/grpc`) is refused as gRPC
//! clients read it: a trailers-only answer with `grpc-status`
//! `RESOURCE_EXHAUSTED` (over a limit), `PERMISSION_DENIED` (denied or
//! blocked), `UNAVAILABLE` (store down, `on_error = deny`) or
//! `INVALID_ARGUMENT` (malformed), the retry and RateLimit entries in its
//! metadata ([`grpc_verdict_response`]); see `examples/tonic_health.rs`.
//!
//! A server sharing a store between instances also calls
//! [`Limiter::sync_blocks_in_background`] once, so blocks made anywhere apply
//! here within a second; the sync ends by itself with the limiter.

mod answer;
pub mod descriptor;
pub mod headers;
pub mod identity;
pub mod limiter;
mod middleware;
pub mod observer;
pub mod path;
mod peer;
pub mod response;
pub mod rule;
pub mod setup;
pub mod target;
mod target_set;
mod text;
mod verdict;

pub use descriptor::{Descriptor, DescriptorError, DescriptorMatch};
pub use identity::{ClientIpConfig, ForwardedHeader};
pub use limiter::{
    AccessLists, BLOCK_SYNC_INTERVAL, CheckError, ConfigError, ConfigProblem, DescriptorStatus,
    DescriptorVerdict, Lease, Limiter, LimiterBuilder, LimiterConfig, NoRuntime, OnError,
    OverrideError, OverrideSource, Pending, TOP_PUBLISH_INTERVAL, TOP_TTL, TopClient, TopError,
    check_rule_name,
};
pub use middleware::{Floodgate, FloodgateLayer, Leased, ResponseBody, ResponseFuture};
pub use observer::{CostFallback, NoopObserver, Observer, Outcome, StoreCall, StoreFallback};
pub use path::{EncodedSlashes, PathError, canonical_path};
pub use peer::{PeerAddr, peer_addr};
pub use response::{Problem, grpc_verdict_response, is_grpc, verdict_response};
pub use rule::{
    AppKey, ConcurrencyLimit, KeyInput, KeyPart, KeySpec, KeySpecError, OnLimit, RequestMatch,
    Rule, StatusSet, StatusSetError,
};
pub use setup::{ConfigBuilder, IntoDuration, RuleBuilder};
pub use target::{Target, TargetError};
pub use verdict::{BadRequestReason, ForbiddenReason, RuleDecision, Verdict};

/// The old name of [`FloodgateLayer`].
#[deprecated(
    note = "renamed to `FloodgateLayer`: `RateLimitLayer` is also `tower::limit::RateLimitLayer`"
)]
pub type RateLimitLayer<S> = FloodgateLayer<S>;

/// The old name of [`Floodgate`].
#[deprecated(note = "renamed to `Floodgate`: `RateLimit` is also `tower::limit::RateLimit`")]
pub type RateLimit<Svc, S> = Floodgate<Svc, S>;

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The project README's axum quick start, compiled as a doctest. Only under
/// `cfg(doctest)`: the file is outside this crate's package.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ProjectReadmeDoctests;
