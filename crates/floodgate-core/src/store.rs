//! The `Store` trait: where limit state lives and is changed atomically.

use std::future::Future;
use std::time::Duration;

use crate::block::Block;
use crate::concurrency::{Slot, SlotDecision};
use crate::decision::Decision;
use crate::error::Error;
use crate::overrides::{KeyOverride, OverrideChanges};
use crate::policy::Policy;
use crate::top::TopSummary;

/// One rule to check for one request.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    /// The rule's name; state is kept per (rule, key).
    pub rule: &'a str,
    /// The rule's limit.
    pub policy: &'a Policy,
    /// Who is being limited, e.g. `ip:203.0.113.7`.
    pub key: &'a str,
    /// Cost units this request takes (≥ 1).
    pub cost: u64,
    /// Count and report, but never refuse, never veto other checks and never
    /// start a penalty block.
    pub shadow: bool,
    /// Decide, but never record the cost, even when the batch is admitted:
    /// the cost is charged later, if at all, with [`Store::charge`] (a rule
    /// that counts only some answers). A refusal still refuses the batch and
    /// starts a penalty block.
    pub probe: bool,
}

impl<'a> Check<'a> {
    /// An enforcing check of `cost` units.
    pub fn new(rule: &'a str, policy: &'a Policy, key: &'a str, cost: u64) -> Self {
        Check {
            rule,
            policy,
            key,
            cost,
            shadow: false,
            probe: false,
        }
    }

    /// The same check in shadow mode.
    pub fn shadow(self) -> Self {
        Check {
            shadow: true,
            ..self
        }
    }

    /// The same check as a probe: decided, never charged (see
    /// [`Check::probe`](#structfield.probe)).
    pub fn probe(self) -> Self {
        Check {
            probe: true,
            ..self
        }
    }

    /// Whether an admitted batch records this check's cost.
    pub fn charges(&self) -> bool {
        !self.probe
    }
}

/// Rejects batches that can never be decided: a cost of zero, a cost more
/// than the policy can ever admit at once, or one (rule, key) named twice
/// (every check of a batch is decided on the state before the batch, so a
/// repeat would spend the same quota twice).
pub fn validate_checks(checks: &[Check<'_>]) -> Result<(), Error> {
    for (i, c) in checks.iter().enumerate() {
        if checks[..i]
            .iter()
            .any(|earlier| earlier.rule == c.rule && earlier.key == c.key)
        {
            return Err(Error::DuplicateCheck {
                rule: c.rule.to_owned(),
                key: c.key.to_owned(),
            });
        }
    }
    validate_charges(checks)
}

/// Rejects charges that can never be recorded: a cost of zero, or more
/// than the policy can ever admit at once. One (rule, key) may be charged
/// several times in one call: the charges add up.
pub fn validate_charges(charges: &[Check<'_>]) -> Result<(), Error> {
    for c in charges {
        if c.cost == 0 {
            return Err(Error::ZeroCost {
                rule: c.rule.to_owned(),
            });
        }
        if c.cost > c.policy.capacity() {
            return Err(Error::InsufficientCapacity {
                rule: c.rule.to_owned(),
                cost: c.cost,
                capacity: c.policy.capacity(),
            });
        }
    }
    Ok(())
}

/// Whether the non-shadow checks of a batch all admit, i.e. whether the
/// request goes ahead.
pub fn admitted(checks: &[Check<'_>], decisions: &[Decision]) -> bool {
    checks
        .iter()
        .zip(decisions)
        .all(|(c, d)| c.shadow || d.allowed)
}

/// Where limit state lives. Implemented by [`crate::MemoryStore`] and by the
/// Redis store of `floodgate-redis`.
///
/// A batch of checks is all-or-nothing: every check is decided, and costs are
/// recorded only when every non-shadow check admits, so a refused request
/// consumes no quota on any rule.
pub trait Store: Send + Sync + 'static {
    /// Decides every check of one request, atomically.
    fn check(
        &self,
        checks: &[Check<'_>],
    ) -> impl Future<Output = Result<Vec<Decision>, Error>> + Send;

    /// Records the cost of every check, whatever the limit says: a charge
    /// for what already happened (an answer that counts, a cost the answer
    /// named), after a [probe](Check::probe) let it through. Each charge is
    /// atomic on its own; none is refused, none starts a penalty block, and
    /// a counter may go past its limit (the key is then refused until it
    /// has paid it back). Returns, per check, what a [`Store::peek`] would
    /// find right after its charge.
    fn charge(
        &self,
        charges: &[Check<'_>],
    ) -> impl Future<Output = Result<Vec<Decision>, Error>> + Send;

    /// Gives back the cost of checks admitted under a maximum delay
    /// ([`Decision::delay`]) whose requests never went ahead (the client
    /// left while held): a token bucket's place moves back. Does nothing
    /// for the other algorithms, which hold no places in the future.
    /// Returns, per check, what a [`Store::peek`] would find after.
    fn refund(
        &self,
        refunds: &[Check<'_>],
    ) -> impl Future<Output = Result<Vec<Decision>, Error>> + Send;

    /// What a check would find now for (rule, key), without recording
    /// anything: `remaining` is the quota left, `blocked` a penalty in force.
    fn peek(
        &self,
        rule: &str,
        policy: &Policy,
        key: &str,
    ) -> impl Future<Output = Result<Decision, Error>> + Send;

    /// Forgets the counters and any penalty block of (rule, key). Returns
    /// whether there was anything to forget.
    fn reset(&self, rule: &str, key: &str) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Blocks `target` for `ttl` (from the store's own clock). A new block
    /// replaces an existing manual block of the same target.
    fn add_block(
        &self,
        target: &str,
        ttl: Duration,
        reason: &str,
    ) -> impl Future<Output = Result<Block, Error>> + Send;

    /// Lifts every block of `target`, manual or penalty. Returns whether any
    /// was in force.
    fn remove_block(&self, target: &str) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Every block in force, manual and penalty.
    fn blocks(&self) -> impl Future<Output = Result<Vec<Block>, Error>> + Send;

    /// Takes a slot of each concurrency limit of `slots` for the request
    /// `slot.id`, each until `slot.lease` from now (the store's clock), if
    /// every one has room (fewer than `limit` live slots); else takes none.
    /// Atomic on one client key; a call naming several keys on a Redis
    /// Cluster gives back what it took when one of them refuses. Taking a
    /// slot the request already holds renews it.
    fn acquire(
        &self,
        slots: &[Slot<'_>],
    ) -> impl Future<Output = Result<Vec<SlotDecision>, Error>> + Send;

    /// Gives back the request's slots (a slot already lapsed is nothing
    /// to give back).
    fn release(&self, slots: &[Slot<'_>]) -> impl Future<Output = Result<(), Error>> + Send;

    /// Renews the request's slots for another `lease`; whether each was
    /// still held (a lapsed one is not taken again).
    fn renew(&self, slots: &[Slot<'_>]) -> impl Future<Output = Result<Vec<bool>, Error>> + Send;

    /// Puts `o` in force for its rule and key, replacing any override of
    /// them, until `ttl` from now by the store's own clock (`None`: until
    /// removed; `o.expires` is ignored). Returns it as stored. Expired
    /// overrides the store finds on its way are dropped.
    fn put_override(
        &self,
        o: &KeyOverride,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<KeyOverride, Error>> + Send;

    /// Removes the override of (rule, key). Returns whether there was one.
    fn remove_override(
        &self,
        rule: &str,
        key: &str,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Up to `max` override changes made after change number `since`
    /// (0: every override there is), oldest first: how instances keep
    /// their copies in step.
    fn override_changes(
        &self,
        since: u64,
        max: usize,
    ) -> impl Future<Output = Result<OverrideChanges, Error>> + Send;

    /// Keeps `summary` (one instance's top clients, replacing what that
    /// instance published before) for `ttl` from now by the store's clock,
    /// so a stopped instance's counts leave the merge by themselves.
    ///
    /// The default keeps nothing: a store that shares no summaries.
    fn put_top(
        &self,
        summary: &TopSummary,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = (summary, ttl);
        async { Ok(()) }
    }

    /// Every instance's last [`put_top`](Store::put_top) summary whose time
    /// to live has not run out, in one call.
    ///
    /// The default has none.
    fn top_summaries(&self) -> impl Future<Output = Result<Vec<TopSummary>, Error>> + Send {
        async { Ok(Vec::new()) }
    }

    /// Whether the store answers.
    fn ping(&self) -> impl Future<Output = Result<(), Error>> + Send;

    /// The longest any call of this store can take, when the store bounds
    /// its own calls (a call that would take longer fails with a timeout
    /// [`Error::Store`]); `Some(Duration::ZERO)` for a store that never
    /// waits; `None`, the default, when calls are not bounded.
    ///
    /// A caller that would bound each call by at least this long can leave
    /// the bounding to the store and spare a timer per call. A store that
    /// wraps another and adds waits of its own must not pass the inner
    /// store's bound on.
    fn call_timeout(&self) -> Option<Duration> {
        None
    }
}
