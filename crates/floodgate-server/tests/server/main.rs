//! Integration tests of the server: the real `floodgate` binary, on ports
//! chosen at run time, against a real upstream, real Redis servers, nginx
//! and PM2.
//!
//! One test binary (one link on a small machine) with a module per concern;
//! what the tests drive is in `support`, a module per thing driven. Tests
//! run two at a time, except the deploy tests, which have the machine to
//! themselves (`support::machine`). A single test runs as
//! `cargo test -p floodgate-server --test server -- chaos::`.

#![allow(clippy::unwrap_used)] // a failed setup step is a test failure

mod admin;
mod answers;
mod auth_request_pm2;
mod authorize;
mod batched;
mod chaos;
mod cli;
mod concurrency;
mod config;
mod dashboard;
mod decision_api;
mod delay;
mod deploy_e2e;
mod deploy_walk;
mod gateway;
mod hostile;
mod identity;
mod lifecycle;
mod metrics;
mod overrides;
mod redis_topologies;
mod rls;
mod store_failure;
mod support;
mod top;
