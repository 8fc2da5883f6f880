//! # floodgate-tower
//!
//! Rate limiting for tower services (axum, hyper, tonic).
//!
//! - [`Limiter`]: the engine. Per request: the allow list (bypass), the deny
//!   list (403), manual blocks (403) and penalty blocks (429) from a local
//!   cache with no store round trip, then every matching [`Rule`] in one
//!   [`Store`](floodgate_core::Store) batch, which consumes nothing when any
//!   rule refuses. Store failures follow [`OnError`]; no call waits longer
//!   than the configured timeout.
//! - [`ClientIpConfig`]: who the client is; forwarding headers count only
//!   from trusted proxies.
//! - [`Target`]: `ip:<addr>`, `ip:<cidr>`, `header:<name>:<value>`, the one
//!   syntax for lists, blocks, logs and the admin API.

mod digest;
pub mod identity;
pub mod limiter;
pub mod observer;
pub mod rule;
pub mod target;
mod target_set;
mod verdict;

pub use identity::{ClientIpConfig, ForwardedHeader};
pub use limiter::{
    AccessLists, BLOCK_SYNC_INTERVAL, CheckError, ConfigError, ConfigProblem, Limiter,
    LimiterBuilder, LimiterConfig, OnError,
};
pub use observer::{NoopObserver, Observer, Outcome, StoreCall};
pub use rule::{KeyPart, KeySpec, KeySpecError, RequestMatch, Rule};
pub use target::{Target, TargetError};
pub use verdict::{ForbiddenReason, RuleDecision, Verdict};
