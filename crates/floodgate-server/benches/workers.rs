//! Which a 2-core host should run: one floodgate process, or
//! `--workers 2` (a supervisor and two worker processes on one port). The
//! same gateway load on both, alternating turns, on the memory store and
//! on Redis; requests per second and floodgate's CPU per request (the
//! supervisor and its workers summed).
//!
//! ```text
//! bench/workers.sh
//! cargo bench -p floodgate-server --bench workers
//! ```
//!
//! Load: 64 callers on keep-alive HTTP/1.1 connections asking for the demo
//! API's `/api/hello` as 10 000 client addresses, under one rule far from
//! its limit. The load generator shares the two cores, as wrk does in
//! bench/gateway.sh. Turns of `ROUND`, `TURNS` of each; medians over turns.
//! Redis: `$FLOODGATE_BENCH_REDIS_URL` when set, else a private
//! `redis-server` started for the run.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs
)]

use std::time::Duration;

mod common;
use common::{
    CALLERS, GATEWAY_RULE, KEYS, TOKEN, alternate, bench_main, gateway_calls, http_client, medians,
    start_with, timed,
};

const ROUND: Duration = Duration::from_secs(3);
const TURNS: usize = 9;

async fn compare(label: &str, store: &str) {
    let rest = format!("{store}\n{GATEWAY_RULE}");
    let one = start_with(&rest, TOKEN, &[]);
    let two = start_with(&rest, TOKEN, &["--workers", "2"]);
    let client = http_client(CALLERS);
    // Warm both (the workers may still be starting).
    gateway_calls(&client, one.http, CALLERS, KEYS, ROUND).await;
    gateway_calls(&client, two.http, CALLERS, KEYS, ROUND).await;
    let run = |server: &common::Server| {
        timed(
            server.child.id(),
            gateway_calls(&client, server.http, CALLERS, KEYS, ROUND),
        )
    };
    let rows = alternate(TURNS, async || run(&one).await, async || run(&two).await).await;
    let m = medians(&rows);
    println!(
        "{label:<7} one process {:>7.0} req/s {:>5.1} us CPU/req; --workers 2 {:>7.0} req/s {:>5.1} us CPU/req; workers / one: rate {:.2}x, CPU per request {:.2}x",
        m.a.rate, m.a.cpu_us, m.b.rate, m.b.cpu_us, m.rate_ratio, m.cpu_ratio,
    );
}

fn main() {
    bench_main("workers", "bench/workers.sh", || async {
        println!(
            "gateway, {CALLERS} keep-alive callers, median of {TURNS} turns of {ROUND:?} each way"
        );
        compare("memory", "[store]\nbackend = \"memory\"").await;
        let (_redis, url) = floodgate_testkit::bench_redis();
        compare(
            "redis",
            &format!(
                "[store]\nbackend = \"redis\"\nurl = \"{url}\"\nprefix = \"fgbench-workers-{}\"\ntimeout = \"2s\"",
                std::process::id()
            ),
        )
        .await;
    });
}
