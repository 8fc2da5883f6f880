//! The machine's cores, as the tests take them.
//!
//! Most tests share the machine: the test harness runs two at a time, each
//! with its own floodgate processes. The deploy tests load both cores fully
//! for up to minutes and judge what their load saw, so they have the machine
//! alone: while one runs, no other test has a floodgate running (as when
//! each test file was a binary of its own, run one after the other).
//!
//! A [`Floodgate`](super::process::Floodgate) holds a [`Share`] while it
//! runs; a test that starts several holds several. So that a test starting
//! its second instance never waits for one that waits for its first,
//! sharing never waits for a test that wants the machine alone, only for one
//! that has it: such a test waits until no instance runs.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// Who holds the machine.
struct Holders {
    /// Live [`Share`]s.
    sharing: usize,
    /// Whether an [`Alone`] is live.
    alone: bool,
}

static HOLDERS: Mutex<Holders> = Mutex::new(Holders {
    sharing: 0,
    alone: false,
});
/// Signalled whenever a [`Share`] or an [`Alone`] is dropped.
static RELEASED: Condvar = Condvar::new();

fn holders() -> MutexGuard<'static, Holders> {
    HOLDERS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A share of the machine, given back on drop.
pub(crate) struct Share(());

/// Waits while a test has the machine alone; then shares it.
pub(crate) fn share() -> Share {
    let mut h = holders();
    while h.alone {
        h = RELEASED.wait(h).unwrap_or_else(PoisonError::into_inner);
    }
    h.sharing += 1;
    Share(())
}

impl Drop for Share {
    fn drop(&mut self) {
        holders().sharing -= 1;
        RELEASED.notify_all();
    }
}

/// The machine to one test, given back on drop.
pub(crate) struct Alone(());

/// Waits until nothing shares the machine and no other test has it alone;
/// then takes it.
pub(crate) fn alone() -> Alone {
    let mut h = holders();
    while h.alone || h.sharing > 0 {
        h = RELEASED.wait(h).unwrap_or_else(PoisonError::into_inner);
    }
    h.alone = true;
    Alone(())
}

impl Drop for Alone {
    fn drop(&mut self) {
        holders().alone = false;
        RELEASED.notify_all();
    }
}
