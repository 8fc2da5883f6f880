//! Concurrency limits: how many requests of one key may be in flight at
//! once, across every instance sharing the store.
//!
//! A request takes a slot before it goes ahead and gives it back when its
//! answer is over. Each slot is a lease: it lapses by itself `lease` after
//! it was taken or last renewed, so the slots of a crashed instance come
//! back within a lease. A long request renews its slots while it runs.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use hashbrown::{Equivalent, HashMap};

use crate::clock::micros_of;

/// One slot of a concurrency limit, as a request takes, renews or gives it
/// back.
#[derive(Debug, Clone, Copy)]
pub struct Slot<'a> {
    /// The rule.
    pub rule: &'a str,
    /// Who is limited.
    pub key: &'a str,
    /// Requests in flight allowed at once.
    pub limit: u64,
    /// How long a slot lives without being renewed.
    pub lease: Duration,
    /// The request's own id: unique among every instance's requests.
    pub id: &'a str,
}

/// What [`Store::acquire`](crate::Store::acquire) found for one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotDecision {
    /// Whether the slot is taken (every slot of the call is, or none).
    pub allowed: bool,
    /// Requests of this key in flight after the call.
    pub in_flight: u64,
    /// The limit.
    pub limit: u64,
}

/// A (rule, key) the slot book holds, looked up by [`Named`] without
/// allocating.
#[derive(Debug, PartialEq, Eq)]
struct Owner {
    rule: Box<str>,
    key: Box<str>,
}

impl Hash for Owner {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Named(&self.rule, &self.key).hash(state);
    }
}

/// A (rule, key) as a slot names it.
#[derive(Hash)]
struct Named<'a>(&'a str, &'a str);

impl Equivalent<Owner> for Named<'_> {
    fn equivalent(&self, owner: &Owner) -> bool {
        *owner.rule == *self.0 && *owner.key == *self.1
    }
}

/// The slots of a [`MemoryStore`](crate::MemoryStore): per (rule, key),
/// each held slot's id and the end of its lease (µs).
#[derive(Debug, Default)]
pub(crate) struct SlotBook {
    held: HashMap<Owner, Vec<(Box<str>, u64)>>,
}

impl SlotBook {
    fn live(&mut self, rule: &str, key: &str, now: u64) -> u64 {
        let Some(slots) = self.held.get_mut(&Named(rule, key)) else {
            return 0;
        };
        slots.retain(|(_, until)| *until > now);
        let n = slots.len() as u64;
        if n == 0 {
            self.held.remove(&Named(rule, key));
        }
        n
    }

    /// Takes every slot of `slots` if each has room, else none.
    pub(crate) fn acquire(&mut self, slots: &[Slot<'_>], now: u64) -> Vec<SlotDecision> {
        let counts: Vec<u64> = slots
            .iter()
            .map(|s| self.live(s.rule, s.key, now))
            .collect();
        let admit = slots.iter().zip(&counts).all(|(s, n)| *n < s.limit);
        slots
            .iter()
            .zip(counts)
            .map(|(s, n)| {
                if admit {
                    let until = now + micros_of(s.lease);
                    let held = match self.held.get_mut(&Named(s.rule, s.key)) {
                        Some(held) => held,
                        None => self
                            .held
                            .entry(Owner {
                                rule: s.rule.into(),
                                key: s.key.into(),
                            })
                            .or_default(),
                    };
                    match held.iter_mut().find(|(id, _)| **id == *s.id) {
                        Some(slot) => slot.1 = until,
                        None => held.push((s.id.into(), until)),
                    }
                    SlotDecision {
                        allowed: true,
                        in_flight: held.len() as u64,
                        limit: s.limit,
                    }
                } else {
                    SlotDecision {
                        allowed: false,
                        in_flight: n,
                        limit: s.limit,
                    }
                }
            })
            .collect()
    }

    /// Gives back every slot of `slots`.
    pub(crate) fn release(&mut self, slots: &[Slot<'_>], now: u64) {
        for s in slots {
            if let Some(held) = self.held.get_mut(&Named(s.rule, s.key)) {
                held.retain(|(slot, until)| **slot != *s.id && *until > now);
                if held.is_empty() {
                    self.held.remove(&Named(s.rule, s.key));
                }
            }
        }
    }

    /// Renews every slot of `slots` still held; whether each was.
    pub(crate) fn renew(&mut self, slots: &[Slot<'_>], now: u64) -> Vec<bool> {
        slots
            .iter()
            .map(|s| {
                self.live(s.rule, s.key, now);
                let Some(held) = self.held.get_mut(&Named(s.rule, s.key)) else {
                    return false;
                };
                match held.iter_mut().find(|(id, _)| **id == *s.id) {
                    Some(slot) => {
                        slot.1 = now + micros_of(s.lease);
                        true
                    }
                    None => false,
                }
            })
            .collect()
    }
}
