//! Integration tests of the Redis store against real `redis-server`s.
//!
//! One test binary (one link on a small machine) with a module per concern.
//! Tests that only need "a Redis" share one (`$FLOODGATE_TEST_REDIS_URL`, or
//! one spawned on first use), each under its own key prefix; tests that kill
//! or restart Redis start their own, as do the cluster, Sentinel and TLS
//! tests (their set-ups come from `floodgate_testkit::topology`).

#![allow(clippy::unwrap_used)]

mod batched;
mod blocks;
mod cluster;
mod coalesce;
mod conformance;
mod encoding;
mod exact;
mod expiry;
mod faults;
mod sentinel;
mod skew;
mod slots;
mod support;
mod tls;
mod top;
