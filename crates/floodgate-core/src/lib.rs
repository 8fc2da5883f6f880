//! # floodgate-core
//!
//! Rate-limiting policies, the four algorithms as pure functions, decisions,
//! blocks, the [`Store`] trait and an in-memory store.
//!
//! # Modules
//!
//! - `policy`: [`Policy`], a validated limit: [`Algorithm`], quota, window, burst, penalty.
//! - [`algorithm`]: the four algorithms as `(state, policy, now, cost) -> decision`; no I/O.
//! - `decision`: [`Decision`], the answer; a refusal is a value, not an error.
//! - `block`: [`Block`], a target refused outright until a time.
//! - `store`: the [`Store`] trait, where limit state lives and is changed atomically.
//! - `memory`: [`MemoryStore`], the in-process store; `floodgate-redis` shares state instead.
//! - `clock`: [`Clock`], time as the limiter sees it; [`ManualClock`] for tests.
//! - [`top`]: top clients per rule in bounded memory ([`TopWindow`], Space-Saving), merged across instances.
//! - [`duration`]: `"250ms"`, `"1m"`, `"1d"`: parsing and printing durations.
//! - `error`: [`Error`], the limiter could not decide, and whether retrying helps.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use floodgate_core::{Algorithm, Check, ManualClock, MemoryStore, Policy, Timestamp};
//!
//! let clock = ManualClock::new(Timestamp::from_micros(1_700_000_000_000_000));
//! let store = MemoryStore::with_clock(10_000, Arc::new(clock.clone()));
//! let policy = Policy::new(Algorithm::TokenBucket, 10, Duration::from_secs(10))?;
//!
//! for _ in 0..10 {
//!     assert!(store.check_one(&Check::new("api", &policy, "ip:192.0.2.7", 1))?.allowed);
//! }
//! let refused = store.check_one(&Check::new("api", &policy, "ip:192.0.2.7", 1))?;
//! assert!(!refused.allowed);
//! assert_eq!(refused.retry_after, Some(Duration::from_secs(1)));
//!
//! clock.advance(Duration::from_secs(1)); // one token refills per second
//! assert!(store.check_one(&Check::new("api", &policy, "ip:192.0.2.7", 1))?.allowed);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod algorithm;
mod block;
mod clock;
pub mod concurrency;
mod decision;
pub mod duration;
mod error;
mod memory;
pub mod overrides;
mod policy;
mod store;
pub mod top;

pub use block::{Block, BlockSource, penalty_reason};
pub use clock::{Clock, ManualClock, SystemClock, Timestamp, micros_of};
pub use concurrency::{Slot, SlotDecision};
pub use decision::Decision;
pub use error::{Error, StoreError, StoreErrorKind};
pub use memory::{DEFAULT_MAX_KEYS, MemoryStore, MemoryStoreStats};
pub use overrides::{KeyOverride, OverrideChange, OverrideChanges};
pub use policy::{
    Algorithm, MAX_BLOCK_STEPS, MAX_LIMIT, MAX_LOG_LIMIT, MAX_WINDOW, MIN_WINDOW, Policy,
    PolicyError,
};
pub use store::{Check, Store, admitted, validate_charges, validate_checks};
pub use top::{RuleSummary, TopEntry, TopSummary, TopWindow};

/// The README's examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
