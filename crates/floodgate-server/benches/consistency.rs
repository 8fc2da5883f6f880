//! What `consistency = "batched"` buys on Redis: the same gateway load on
//! three processes side by side, one rule each, in alternating turns: the
//! memory store, Redis with exact decisions (one script call per request,
//! shared between concurrent requests), and Redis with batched decisions
//! (local budgets leased from Redis). Requests per second, floodgate's CPU
//! per request, and redis-server's CPU per request.
//!
//! ```text
//! bench/consistency.sh
//! cargo bench -p floodgate-server --bench consistency
//! ```
//!
//! Load: 64 callers on keep-alive HTTP/1.1 connections asking for the demo
//! API's `/api/hello` as 10 000 client addresses, under one sliding-window
//! rule far from its limit. The load generator and Redis share the two
//! cores. Turns of `ROUND`, `TURNS` of each, after a warm-up turn (a key's
//! slices grow while it is busy); medians over turns. Redis:
//! `$FLOODGATE_BENCH_REDIS_URL` when set (its CPU is then not read), else
//! a private `redis-server` started for the run.

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs
)]

use std::time::Duration;

mod common;
use common::{
    CALLERS, GATEWAY_RULE, KEYS, Round, Server, TOKEN, bench_main, cpu, gateway_calls, http_client,
    start_with, timed,
};

const ROUND: Duration = Duration::from_secs(3);
const TURNS: usize = 9;

/// A turn's figures, with redis-server's CPU per request (0 for memory, or
/// when Redis is not ours).
struct Turn {
    round: Round,
    redis_us: f64,
}

fn main() {
    bench_main("consistency", "bench/consistency.sh", || async {
        let (redis, url) = floodgate_testkit::bench_redis();
        let redis_pid = redis.as_ref().and_then(|r| r.pid());
        let store = |prefix: &str| {
            format!(
                "[store]\nbackend = \"redis\"\nurl = \"{url}\"\nprefix = \"fgbench-{prefix}-{}\"\ntimeout = \"2s\"",
                std::process::id()
            )
        };
        let servers: [(&str, Server); 3] = [
            (
                "memory",
                start_with(
                    &format!("[store]\nbackend = \"memory\"\n{GATEWAY_RULE}"),
                    TOKEN,
                    &[],
                ),
            ),
            (
                "exact",
                start_with(&format!("{}\n{GATEWAY_RULE}", store("exact")), TOKEN, &[]),
            ),
            (
                "batched",
                start_with(
                    &format!(
                        "{}\n{GATEWAY_RULE}consistency = \"batched\"\n",
                        store("batched")
                    ),
                    TOKEN,
                    &[],
                ),
            ),
        ];
        let client = http_client(CALLERS);
        for (_, server) in &servers {
            gateway_calls(&client, server.http, CALLERS, KEYS, ROUND).await;
        }
        let mut turns: Vec<[Turn; 3]> = Vec::new();
        for turn in 0..TURNS {
            // Each turn in another order, so drift hits every way alike.
            let mut order = [0, 1, 2];
            order.rotate_left(turn % 3);
            let mut got: [Option<Turn>; 3] = [None, None, None];
            for way in order {
                let server = &servers[way].1;
                let redis_before = redis_pid.map(cpu);
                let round = timed(
                    server.child.id(),
                    gateway_calls(&client, server.http, CALLERS, KEYS, ROUND),
                )
                .await;
                let redis_us = match (way, redis_pid, redis_before) {
                    (1 | 2, Some(pid), Some(before)) => {
                        let used = cpu(pid).saturating_sub(before).as_secs_f64() * 1e6;
                        used / (round.rate * ROUND.as_secs_f64())
                    }
                    _ => 0.0,
                };
                got[way] = Some(Turn { round, redis_us });
            }
            turns.push(got.map(|t| t.expect("every way ran")));
        }
        let median = |f: &dyn Fn(&[Turn; 3]) -> f64| {
            floodgate_testkit::paired::median(turns.iter().map(f).collect())
        };
        println!(
            "gateway, {CALLERS} keep-alive callers, {KEYS} client addresses, one sliding_window rule; median of {TURNS} turns of {ROUND:?} each way"
        );
        for (way, (label, _)) in servers.iter().enumerate() {
            println!(
                "{label:<8} {:>7.0} req/s  floodgate {:>5.1} us CPU/req  redis-server {:>5.1} us CPU/req",
                median(&|t| t[way].round.rate),
                median(&|t| t[way].round.cpu_us),
                median(&|t| t[way].redis_us),
            );
        }
        println!(
            "batched / memory: rate {:.2}x, floodgate CPU per request {:.2}x",
            median(&|t| t[2].round.rate / t[0].round.rate),
            median(&|t| t[2].round.cpu_us / t[0].round.cpu_us),
        );
        println!(
            "exact / memory:   rate {:.2}x, floodgate CPU per request {:.2}x",
            median(&|t| t[1].round.rate / t[0].round.rate),
            median(&|t| t[1].round.cpu_us / t[0].round.cpu_us),
        );
        println!(
            "batched / exact:  rate {:.2}x, redis-server CPU per request {:.2}x",
            median(&|t| t[2].round.rate / t[1].round.rate),
            median(&|t| t[2].redis_us / t[1].redis_us.max(f64::MIN_POSITIVE)),
        );
    });
}
