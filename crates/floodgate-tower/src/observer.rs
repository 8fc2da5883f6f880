//! Hooks for metrics. The server implements [`Observer`] to count decisions
//! and time store calls; every label comes from a fixed set or a rule name,
//! so label sets stay bounded whatever clients send.

use std::time::Duration;

pub use crate::answer::CostFallback;

/// What happened to a request, per rule (or before any rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The rule admitted it.
    Allowed,
    /// The rule refused it: over the limit.
    Limited,
    /// A shadow rule would have refused it; it went ahead.
    ShadowLimited,
    /// Refused by a block: a rule's penalty block (with the rule's name) or
    /// a manual block (without one).
    Blocked,
    /// Refused by the `[access]` deny list.
    Denied,
    /// Let through by the `[access]` allow list, without any rule.
    Bypassed,
    /// The store could not decide; `on_error` then applied.
    Error,
    /// Refused as malformed (400) before any list or rule: a path with no
    /// canonical form, a key header sent twice.
    Malformed,
}

impl Outcome {
    /// Every outcome, in the order of [`Outcome::index`].
    pub const ALL: [Outcome; 8] = [
        Outcome::Allowed,
        Outcome::Limited,
        Outcome::ShadowLimited,
        Outcome::Blocked,
        Outcome::Denied,
        Outcome::Bypassed,
        Outcome::Error,
        Outcome::Malformed,
    ];

    /// The place of this outcome in [`Outcome::ALL`], for tables indexed by
    /// outcome.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// A label: `allowed`, `limited`, `shadow_limited`, `blocked`, `denied`,
    /// `bypassed`, `error` or `malformed`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Limited => "limited",
            Outcome::ShadowLimited => "shadow_limited",
            Outcome::Blocked => "blocked",
            Outcome::Denied => "denied",
            Outcome::Bypassed => "bypassed",
            Outcome::Error => "error",
            Outcome::Malformed => "malformed",
        }
    }
}

/// A kind of store call, for latency and error metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreCall {
    /// Deciding a request's rules.
    Check,
    /// Charging requests once their answers are known.
    Charge,
    /// Reading the blocks for the local cache.
    Blocks,
    /// Adding a block.
    AddBlock,
    /// Lifting a block.
    RemoveBlock,
    /// Putting, removing or reading per-key overrides.
    Overrides,
    /// A health check.
    Ping,
}

impl StoreCall {
    /// Every kind of call, in the order of [`StoreCall::index`].
    pub const ALL: [StoreCall; 7] = [
        StoreCall::Check,
        StoreCall::Charge,
        StoreCall::Blocks,
        StoreCall::AddBlock,
        StoreCall::RemoveBlock,
        StoreCall::Overrides,
        StoreCall::Ping,
    ];

    /// The place of this kind in [`StoreCall::ALL`], for tables indexed by
    /// kind of call.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// A label: `check`, `charge`, `blocks`, `add_block`, `remove_block`,
    /// `overrides` or `ping`.
    pub const fn as_str(self) -> &'static str {
        match self {
            StoreCall::Check => "check",
            StoreCall::Charge => "charge",
            StoreCall::Blocks => "blocks",
            StoreCall::AddBlock => "add_block",
            StoreCall::RemoveBlock => "remove_block",
            StoreCall::Overrides => "overrides",
            StoreCall::Ping => "ping",
        }
    }
}

/// What the limiter did with rule decisions the store could not make, as
/// `on_error` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreFallback {
    /// Decided (or charged) on the in-process store: `on_error = "local"`.
    Local,
    /// Let through unchecked: `on_error = "allow"`.
    Allow,
}

impl StoreFallback {
    /// A label: `local` or `allow`, as `on_error` names them.
    pub const fn as_str(self) -> &'static str {
        match self {
            StoreFallback::Local => "local",
            StoreFallback::Allow => "allow",
        }
    }
}

/// Receives what the limiter does. Every method defaults to doing nothing;
/// they are called on the request path, so they must be quick.
pub trait Observer: Send + Sync + 'static {
    /// A decision: per matching rule (`Some(name)`), or once per request
    /// refused or admitted before any rule (`None`: deny list, manual block,
    /// allow list).
    fn on_decision(&self, rule: Option<&str>, outcome: Outcome) {
        let _ = (rule, outcome);
    }

    /// A rule with `count_status` or `cost_header` was charged `cost` units
    /// once the answer was known.
    fn on_charge(&self, rule: &str, cost: u64) {
        let _ = (rule, cost);
    }

    /// A rule's `cost_header` did not give the cost charged, for `reason`.
    fn on_cost_fallback(&self, rule: &str, reason: CostFallback) {
        let _ = (rule, reason);
    }

    /// `rule` now has `count` per-key overrides put in the store (as this
    /// instance knows them).
    fn on_override_count(&self, rule: &str, count: usize) {
        let _ = (rule, count);
    }

    /// A request held by a rule with `on_limit = delay` (named by the rule
    /// whose wait was longest) was `admitted` or refused after `waited`.
    fn on_delay(&self, rule: &str, admitted: bool, waited: Duration) {
        let _ = (rule, admitted, waited);
    }

    /// Requests held right now.
    fn on_held(&self, held: usize) {
        let _ = held;
    }

    /// A store call finished (or timed out) after `latency`.
    fn on_store_call(&self, call: StoreCall, latency: Duration, ok: bool) {
        let _ = (call, latency, ok);
    }

    /// The store could not make `decisions` rule decisions (one per rule a
    /// request matched, or per charge) and `on_error` dealt with them as
    /// `fallback` says. Not called under `on_error = "deny"`, nor when the
    /// local fallback fails too: those are [`Outcome::Error`] decisions.
    fn on_store_fallback(&self, fallback: StoreFallback, decisions: usize) {
        let _ = (fallback, decisions);
    }

    /// The store went down (`false`) or came back (`true`). Called once per
    /// transition.
    fn on_store_health(&self, healthy: bool) {
        let _ = healthy;
    }
}

/// An [`Observer`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl Observer for NoopObserver {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_variant() {
        // A variant added to either enum makes one of these matches
        // non-exhaustive: add it to its `ALL` as well.
        for outcome in Outcome::ALL {
            match outcome {
                Outcome::Allowed
                | Outcome::Limited
                | Outcome::ShadowLimited
                | Outcome::Blocked
                | Outcome::Denied
                | Outcome::Bypassed
                | Outcome::Error
                | Outcome::Malformed => {}
            }
        }
        for call in StoreCall::ALL {
            match call {
                StoreCall::Check
                | StoreCall::Charge
                | StoreCall::Blocks
                | StoreCall::AddBlock
                | StoreCall::RemoveBlock
                | StoreCall::Overrides
                | StoreCall::Ping => {}
            }
        }
    }

    #[test]
    fn indices_are_places_in_all() {
        for (i, outcome) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(outcome.index(), i, "{outcome:?}");
        }
        for (i, call) in StoreCall::ALL.into_iter().enumerate() {
            assert_eq!(call.index(), i, "{call:?}");
        }
    }
}
