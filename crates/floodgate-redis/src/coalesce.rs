//! Coalescing: the decision batches of concurrent requests share one script
//! call.
//!
//! `check.lua` decides several batches in one call, one after the other,
//! each atomically and on the state the batches before it left: the same
//! decisions as one call per batch. What is shared is the cost of a call —
//! in Redis, running `FCALL`, setting up the call's tables and reading
//! `TIME` (more than half of Redis' work for a one-check call); here, the
//! command, the socket writes and reads, and the wake-ups.
//!
//! While fewer than [`MAX_IN_FLIGHT`] calls are on their way and nothing
//! waits, a request makes its own call at once, from its own task
//! ([`Coalescer::try_lead`]): an idle store adds neither wait nor work. When
//! that many are out, batches queue, and the next call to go takes every
//! batch queued by then (up to [`MAX_CHECKS_PER_CALL`] checks): the busier
//! the store, the more each call carries. Shared calls run in tasks of their
//! own, so a request that gives up (its caller's timeout, a dropped
//! connection) never strands the batches that share its call.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use floodgate_core::{Error, Policy, StoreError};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::bad_reply;
use crate::scripts::{self, Dialect, ScriptCall};
use crate::wire::{self, CheckArg, DECISION_FIELDS};

/// Calls of `check.lua` on their way at once, per store. Two keep Redis
/// busy while the previous call's reply travels back and is handed out.
pub(crate) const MAX_IN_FLIGHT: usize = 2;

/// Checks one call carries at most (a single larger batch still goes, alone).
pub(crate) const MAX_CHECKS_PER_CALL: usize = 128;

/// What a coalesced call needs from the store that runs it.
pub(crate) trait Runner: Clone + Send + Sync + 'static {
    /// `ARGV[1]`: the time source's now (µs), or empty for Redis' clock.
    fn now_arg(&self) -> String;
    /// `ARGV[2]`: the TTL margin in ms.
    fn margin_ms(&self) -> u64;
    /// How to call the script.
    fn dialect(&self) -> Dialect;
    /// Runs `call` within `deadline`.
    fn run(
        &self,
        call: ScriptCall,
        deadline: Instant,
    ) -> impl Future<Output = Result<Vec<i64>, Error>> + Send;
}

/// One check of a queued batch, with its key names already written.
pub(crate) struct QueuedCheck {
    pub(crate) state_key: String,
    pub(crate) block_key: String,
    pub(crate) policy: Policy,
    pub(crate) cost: u64,
    pub(crate) shadow: bool,
    pub(crate) probe: bool,
    pub(crate) charge: bool,
    pub(crate) refund: bool,
    pub(crate) slot: Option<wire::SlotArg>,
}

/// One request's batch, waiting for a call.
struct Job {
    checks: Vec<QueuedCheck>,
    deadline: Instant,
    reply: oneshot::Sender<Result<Vec<i64>, Error>>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    in_flight: usize,
}

/// The queue of batches waiting for a call, shared by a store's clones.
#[derive(Default)]
pub(crate) struct Coalescer {
    queue: Mutex<Queue>,
}

/// A call a request makes alone, counted in flight until dropped. Dropping
/// it (the call done, or the request given up) hands whatever queued
/// meanwhile to a call of its own.
pub(crate) struct Lead<R: Runner> {
    coalescer: Arc<Coalescer>,
    runner: R,
}

impl<R: Runner> Drop for Lead<R> {
    fn drop(&mut self) {
        let next = {
            let mut queue = self.coalescer.lock();
            queue.in_flight -= 1;
            take_call(&mut queue)
        };
        if let Some(jobs) = next {
            spawn_calls(&self.coalescer, &self.runner, jobs);
        }
    }
}

impl Coalescer {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue is consistent after every statement: a panic elsewhere
        // while it was held leaves nothing half done.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When nothing waits and another call may go, the caller's batch may
    /// be sent alone, now, by the caller: the returned guard counts that
    /// call in flight until dropped.
    pub(crate) fn try_lead<R: Runner>(self: &Arc<Self>, runner: &R) -> Option<Lead<R>> {
        let mut queue = self.lock();
        if !queue.jobs.is_empty() || queue.in_flight >= MAX_IN_FLIGHT {
            return None;
        }
        queue.in_flight += 1;
        Some(Lead {
            coalescer: Arc::clone(self),
            runner: runner.clone(),
        })
    }

    /// Decides `checks` (a validated, non-empty batch) in a call shared with
    /// whatever other batches are waiting; six integers per check, unpacked
    /// from the reply.
    /// Fails with a timeout at `deadline`.
    pub(crate) async fn check<R: Runner>(
        self: &Arc<Self>,
        runner: &R,
        checks: Vec<QueuedCheck>,
        deadline: Instant,
        timeout: std::time::Duration,
    ) -> Result<Vec<i64>, Error> {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            checks,
            deadline,
            reply: tx,
        };
        let call = {
            let mut queue = self.lock();
            queue.jobs.push_back(job);
            take_call(&mut queue)
        };
        if let Some(jobs) = call {
            spawn_calls(self, runner, jobs);
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            // The call's task ended without a word: it cannot, short of a
            // panic in it.
            Ok(Err(_)) => Err(Error::Store(StoreError::new(
                floodgate_core::StoreErrorKind::Other,
                "redis check: the call carrying this batch was lost",
            ))),
            Err(_) => Err(Error::Store(StoreError::timeout(timeout))),
        }
    }
}

/// When another call may go, takes the batches it carries off the queue
/// (and counts it as in flight).
fn take_call(queue: &mut Queue) -> Option<Vec<Job>> {
    if queue.in_flight >= MAX_IN_FLIGHT {
        return None;
    }
    let mut jobs = Vec::new();
    let mut checks = 0;
    while let Some(job) = queue.jobs.front() {
        if job.reply.is_closed() {
            // Its request gave up: deciding it now would spend quota nobody
            // is told about.
            queue.jobs.pop_front();
            continue;
        }
        if !jobs.is_empty() && checks + job.checks.len() > MAX_CHECKS_PER_CALL {
            break;
        }
        checks += job.checks.len();
        jobs.extend(queue.jobs.pop_front());
    }
    if jobs.is_empty() {
        return None;
    }
    queue.in_flight += 1;
    Some(jobs)
}

/// Runs the call of `jobs`, and the ones after it, in a task of their own.
fn spawn_calls<R: Runner>(coalescer: &Arc<Coalescer>, runner: &R, jobs: Vec<Job>) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(run_calls(Arc::clone(coalescer), runner.clone(), jobs));
        }
        // The runtime is shutting down (a guard dropped by its last tasks):
        // nobody is left to wait for these replies, and dropping the jobs
        // tells anyone who is that their call is lost.
        Err(_) => {
            coalescer.lock().in_flight -= 1;
        }
    }
}

/// Runs calls until the queue has nothing for this task to take.
async fn run_calls<R: Runner>(coalescer: Arc<Coalescer>, runner: R, mut jobs: Vec<Job>) {
    loop {
        run_call(&runner, jobs).await;
        let next = {
            let mut queue = coalescer.lock();
            queue.in_flight -= 1;
            take_call(&mut queue)
        };
        match next {
            Some(more) => jobs = more,
            None => return,
        }
    }
}

/// One `check.lua` call for `jobs`; hands each its part of the reply.
async fn run_call<R: Runner>(runner: &R, jobs: Vec<Job>) {
    let checks: usize = jobs.iter().map(|j| j.checks.len()).sum();
    let deadline = jobs.iter().map(|j| j.deadline).max();
    let Some(deadline) = deadline else { return };
    let mut call = ScriptCall::new(
        &scripts::CHECK,
        runner.dialect(),
        2 * checks,
        wire::CHECK_FIXED_ARGS + 2 * checks,
    );
    for c in jobs.iter().flat_map(|j| &j.checks) {
        call.key(c.state_key.as_str()).key(c.block_key.as_str());
    }
    let mut sizes = String::with_capacity(2 * jobs.len());
    if jobs.iter().all(|j| j.checks.len() == 1) {
        // Every batch a single check (requests matching one rule each):
        // nothing for the script to parse.
        sizes.push('*');
    } else {
        for (i, job) in jobs.iter().enumerate() {
            if i > 0 {
                sizes.push(',');
            }
            let _ = write!(sizes, "{}", job.checks.len());
        }
    }
    call.arg(runner.now_arg()).arg(runner.margin_ms());
    let args: Vec<CheckArg<'_>> = jobs
        .iter()
        .flat_map(|j| &j.checks)
        .map(|c| CheckArg {
            policy: &c.policy,
            penalties: true,
            shadow: c.shadow,
            probe: c.probe,
            charge: c.charge,
            refund: c.refund,
            lease: false,
            cost: c.cost,
            slot: c.slot.as_ref(),
        })
        .collect();
    wire::push_checks(&mut call, &sizes, &args);
    match runner.run(call, deadline).await {
        Ok(reply) if reply.len() == checks * DECISION_FIELDS => {
            let mut rest = reply.as_slice();
            for job in jobs {
                let (mine, tail) = rest.split_at(job.checks.len() * DECISION_FIELDS);
                rest = tail;
                let _ = job.reply.send(Ok(mine.to_vec()));
            }
        }
        Ok(reply) => {
            for job in jobs {
                let _ = job.reply.send(Err(bad_reply(
                    "check",
                    format!("{} integers for {checks} checks", reply.len()),
                )));
            }
        }
        Err(e) => {
            let (kind, message) = match &e {
                Error::Store(s) => (s.kind(), s.to_string()),
                other => (floodgate_core::StoreErrorKind::Other, other.to_string()),
            };
            let mut first = Some(e);
            for job in jobs {
                let error = first
                    .take()
                    .unwrap_or_else(|| Error::Store(StoreError::new(kind, message.clone())));
                let _ = job.reply.send(Err(error));
            }
        }
    }
}
