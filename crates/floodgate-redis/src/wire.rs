//! The wire format of the decision scripts: how a batch of checks becomes
//! `check.lua`'s arguments (and a policy `peek.lua`'s), and how their
//! replies become decisions. See each script's header for the layout.
//!
//! Shared by the store, which builds one call per batch, and the coalescer,
//! which builds one call for the batches of several requests; it uses
//! neither.

use std::time::Duration;

use floodgate_core::{Decision, Error, Policy};

use crate::error::bad_reply;
use crate::scripts::ScriptCall;

/// Integers per check in a `peek.lua` reply, and in a `check.lua` reply
/// once unpacked.
pub(crate) const DECISION_FIELDS: usize = 6;

/// Arguments of `check.lua` before the per-policy and per-check ones: now,
/// margin, batch sizes, number of policies.
pub(crate) const CHECK_FIXED_ARGS: usize = 4;

/// One check of a `check.lua` call, as its arguments describe it.
pub(crate) struct CheckArg<'a> {
    pub(crate) policy: &'a Policy,
    /// Whether the policy's `block_for` is sent (else 0: no penalty starts).
    pub(crate) penalties: bool,
    pub(crate) shadow: bool,
    /// Decided but never charged.
    pub(crate) probe: bool,
    /// Charged whatever the limit says (Store::charge); `shadow` and
    /// `probe` do not apply.
    pub(crate) charge: bool,
    /// Given back (Store::refund); `shadow` and `probe` do not apply.
    pub(crate) refund: bool,
    /// A lease of `cost` units for a batched policy's local budget (mode
    /// "9"); `shadow` and `probe` do not apply.
    pub(crate) lease: bool,
    pub(crate) cost: u64,
    /// A concurrency slot operation instead of a check (`policy` unused).
    pub(crate) slot: Option<&'a SlotArg>,
}

/// A concurrency slot operation, as `check.lua` takes it in a policy's
/// place (see its header).
#[derive(Debug, Clone)]
pub(crate) struct SlotArg {
    pub(crate) limit: u64,
    pub(crate) lease_us: u64,
    /// The request's id.
    pub(crate) id: String,
    pub(crate) op: SlotOp,
}

/// What a [`SlotArg`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotOp {
    Acquire,
    Release,
    Renew,
}

impl SlotOp {
    /// The mode `check.lua` reads.
    fn mode(self) -> &'static str {
        match self {
            SlotOp::Acquire => "6",
            SlotOp::Release => "7",
            SlotOp::Renew => "8",
        }
    }
}

/// Appends ARGV[3..] of `check.lua` (see its header): `sizes`, each distinct
/// policy once (with its `block_for` and shadow flag), then each check's
/// policy number and cost. Every check of a gateway's rule shares its
/// policy, so a call carrying many requests' checks sends it once, and Redis
/// parses it once.
pub(crate) fn push_checks(call: &mut ScriptCall, sizes: &str, checks: &[CheckArg<'_>]) {
    // (policy, penalties, mode) in order of first use; a call holds a
    // handful at most, one per rule. A slot operation's policy is its
    // (limit, lease, operation), shared the same way; its request's id
    // goes where a check's cost goes.
    let mut distinct: Vec<(&Policy, bool, &str)> = Vec::new();
    let mut slots: Vec<(u64, u64, SlotOp)> = Vec::new();
    let mut numbers: Vec<usize> = Vec::with_capacity(checks.len());
    for c in checks {
        if let Some(slot) = c.slot {
            numbers.push(place_of(&mut slots, (slot.limit, slot.lease_us, slot.op)) + 1);
            continue;
        }
        let mode = match (c.charge, c.shadow, c.probe) {
            _ if c.refund => "5",
            _ if c.lease => "9",
            (true, _, _) => "4",
            (false, false, false) => "0",
            (false, true, false) => "1",
            (false, false, true) => "2",
            (false, true, true) => "3",
        };
        numbers.push(place_of(&mut distinct, (c.policy, c.penalties, mode)) + 1);
    }
    // Slot calls never mix with checks: their entries are all slots.
    debug_assert!(slots.is_empty() || distinct.is_empty());
    call.arg(sizes).arg(distinct.len() + slots.len());
    for (policy, penalties, mode) in distinct {
        push_policy(call, policy, penalties);
        call.arg(mode);
    }
    for &(limit, lease_us, op) in &slots {
        call.arg("slots")
            .arg(limit)
            .arg(lease_us)
            .arg(0)
            .arg(0)
            .arg(0)
            .arg(0)
            .arg(op.mode());
    }
    for (number, c) in numbers.into_iter().zip(checks) {
        call.arg(number);
        match c.slot {
            Some(slot) => call.arg(slot.id.as_str()),
            None => call.arg(c.cost),
        };
    }
}

/// The place of `entry` in `list`, pushed at the end when it is not there
/// yet (a call holds a handful of distinct policies: a scan beats a map).
fn place_of<T: PartialEq>(list: &mut Vec<T>, entry: T) -> usize {
    match list.iter().position(|e| *e == entry) {
        Some(at) => at,
        None => {
            list.push(entry);
            list.len() - 1
        }
    }
}

/// Appends ARGV for `policy` in the order `read_policy` in limits.lua reads
/// (`peek.lua`'s); its `block_for` as 0 unless `penalties`, a block
/// ladder's steps as `step,step,...`.
pub(crate) fn push_policy(call: &mut ScriptCall, policy: &Policy, penalties: bool) {
    call.arg(policy.algorithm().name())
        .arg(policy.limit())
        .arg(policy.window_us())
        .arg(policy.burst())
        .arg(policy.emission_interval_us());
    match policy.block_steps_us() {
        steps if !penalties || steps.is_empty() => call.arg(0),
        [one] => call.arg(*one),
        steps => call.arg(
            steps
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
    };
    call.arg(policy.max_delay_us());
}

/// The offence of the ladder block a check started (0: none, or not a
/// ladder), from its unpacked fields.
pub(crate) fn ladder_offence(fields: &[i64]) -> u32 {
    fields
        .get(4)
        .and_then(|blocked| u32::try_from(blocked >> 1).ok())
        .unwrap_or(0)
}

/// Bytes per check in a `check.lua` reply: a flags byte and four doubles.
const PACKED_DECISION_LEN: usize = 33;

/// The six integers per check (as `peek.lua` returns them) from the packed
/// reply of `check.lua` (see the script's header). Redis turns a Lua number
/// into an integer by truncation; so does this.
pub(crate) fn unpack_check_reply(what: &str, packed: &[u8]) -> Result<Vec<i64>, Error> {
    let (decisions, rest) = packed.as_chunks::<PACKED_DECISION_LEN>();
    if !rest.is_empty() {
        return Err(bad_reply(
            what,
            format!("{} bytes of packed decisions", packed.len()),
        ));
    }
    let mut fields = Vec::with_capacity(decisions.len() * DECISION_FIELDS);
    for [flags, doubles @ ..] in decisions {
        let mut numbers = [0i64; 4];
        for (n, bytes) in numbers.iter_mut().zip(doubles.as_chunks::<8>().0) {
            let v = f64::from_le_bytes(*bytes);
            if !v.is_finite() {
                return Err(bad_reply(what, format!("a decision field of {v}")));
            }
            // Truncation toward zero, as Redis converts Lua numbers;
            // microseconds and quota units stay far below 2^53.
            *n = v as i64;
        }
        let [remaining, reset, retry, block_until] = numbers;
        fields.extend_from_slice(&[
            i64::from(flags & 1),
            remaining,
            reset,
            retry,
            // Blocked, and a ladder block's offence above it (see
            // `ladder_offence`).
            i64::from(flags >> 1),
            block_until,
        ]);
    }
    Ok(fields)
}

/// A decision from the six integers a script returns for one check.
pub(crate) fn decision_from(policy: &Policy, fields: &[i64]) -> Result<Decision, Error> {
    let &[allowed, remaining, reset, retry, blocked, _] = fields else {
        return Err(bad_reply("decision", format!("{fields:?}")));
    };
    let micros = |v: i64| -> Result<u64, Error> {
        u64::try_from(v).map_err(|_| bad_reply("decision", format!("negative field in {fields:?}")))
    };
    Ok(Decision {
        allowed: allowed == 1,
        limit: policy.limit(),
        remaining: micros(remaining)?,
        reset_after: Duration::from_micros(micros(reset)?),
        // An admitted check's retry field is its wait under a max_delay.
        retry_after: if retry < 0 || allowed == 1 {
            None
        } else {
            Some(Duration::from_micros(micros(retry)?))
        },
        blocked: blocked & 1 == 1,
        delay: if allowed == 1 && retry >= 0 {
            Duration::from_micros(micros(retry)?)
        } else {
            Duration::ZERO
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One packed decision as `check.lua` writes it.
    fn packed(flags: u8, numbers: [f64; 4]) -> Vec<u8> {
        let mut out = vec![flags];
        for n in numbers {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    #[test]
    fn packed_decisions_read_as_six_integers_each() {
        let mut reply = packed(1, [41.75, 16_500_000.0, -1.0, 0.0]);
        reply.extend(packed(2, [0.0, 60_000_000.0, 2_100_000.0, 1.8e15]));
        let fields = unpack_check_reply("check", &reply).expect("well-formed");
        assert_eq!(
            fields,
            [
                1,
                41,
                16_500_000,
                -1,
                0,
                0,
                0,
                0,
                60_000_000,
                2_100_000,
                1,
                1_800_000_000_000_000
            ]
        );
        assert_eq!(unpack_check_reply("check", &[]).expect("no checks"), []);
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let good = packed(1, [1.0, 2.0, -1.0, 0.0]);
        for (bad, why) in [
            (good[..32].to_vec(), "bytes of packed decisions"),
            (
                [good.clone(), vec![0]].concat(),
                "bytes of packed decisions",
            ),
            (packed(1, [f64::NAN, 2.0, -1.0, 0.0]), "NaN"),
            (packed(1, [1.0, f64::INFINITY, -1.0, 0.0]), "inf"),
        ] {
            let error = unpack_check_reply("check", &bad)
                .expect_err(why)
                .to_string();
            assert!(error.contains(why), "{error}");
        }
    }
}
