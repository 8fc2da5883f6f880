//! Redis faults: flushed functions or scripts, a killed server, a restarted
//! one.
//! Each test runs its own `redis-server` so it can break it.

use std::time::{Duration, Instant};

use floodgate_core::{Algorithm, Check, Error, Policy, Store};
use floodgate_redis::{RedisConfig, RedisStore};
use floodgate_testkit::{RedisServer, unique_prefix};

use crate::support::{command_stats_in, raw_connection, until_ok};

/// The store timeout where Redis goes down: short, as in production (but not
/// so short that a loaded test machine misses it while Redis is up).
const TIMEOUT: Duration = Duration::from_millis(300);

/// How much later than `TIMEOUT` a failing call may return: generous, for a
/// loaded machine; a hang would take far longer.
const SLACK: Duration = Duration::from_secs(2);

fn store_for(server: &RedisServer, timeout: Duration) -> RedisStore {
    RedisStore::new(
        RedisConfig::new(server.url())
            .with_prefix(unique_prefix("faults"))
            .with_timeout(timeout),
    )
    .unwrap()
}

fn policy() -> Policy {
    Policy::new(Algorithm::TokenBucket, 1000, Duration::from_secs(1)).unwrap()
}

async fn one_check(store: &RedisStore, policy: &Policy) -> Result<bool, Error> {
    Ok(store
        .check(&[Check::new("faults", policy, "ip:192.0.2.3", 1)])
        .await?[0]
        .allowed)
}

/// Retries `one_check` until it succeeds, for at most 20 s.
async fn until_checks_succeed(store: &RedisStore, policy: &Policy) -> Result<bool, Error> {
    until_ok(Duration::from_secs(20), || one_check(store, policy)).await
}

/// How many Lua scripts the server has cached.
async fn cached_scripts(server: &RedisServer) -> u64 {
    let mut conn = raw_connection(&server.url()).await;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("number_of_cached_scripts:"))
        .expect("INFO memory reports number_of_cached_scripts")
        .trim()
        .parse()
        .unwrap()
}

/// Asserts that `result` is a store error telling a timeout or a lost
/// connection, returned within the timeout plus slack.
fn assert_fails_fast<T: std::fmt::Debug>(what: &str, started: Instant, result: Result<T, Error>) {
    let took = started.elapsed();
    match result {
        Err(Error::Store(e)) => {
            assert!(
                e.is_timeout() || e.is_connection_dropped(),
                "{what}: {e} is neither a timeout nor a dropped connection"
            );
            assert!(e.is_retryable(), "{what}: {e} should be retryable");
        }
        other => panic!("{what} with Redis down returned {other:?}"),
    }
    assert!(
        took < TIMEOUT + SLACK,
        "{what} took {took:?} with Redis down; the timeout is {TIMEOUT:?}"
    );
}

/// How many of floodgate's function libraries the server holds.
async fn floodgate_libraries(server: &RedisServer) -> usize {
    let mut conn = raw_connection(&server.url()).await;
    let libraries: Vec<redis::Value> = redis::cmd("FUNCTION")
        .arg("LIST")
        .arg("LIBRARYNAME")
        .arg("floodgate_*")
        .query_async(&mut conn)
        .await
        .unwrap();
    libraries.len()
}

/// `calls`, `rejected_calls` and `failed_calls` of `command` in INFO
/// commandstats.
fn command_stats(server: &RedisServer, command: &str) -> (u64, u64, u64) {
    command_stats_in(&server.command(&["INFO", "commandstats"]).unwrap(), command)
}

#[tokio::test]
async fn flushed_functions_are_loaded_again() {
    let server = RedisServer::start();
    // Not about latency: a timeout no healthy local Redis misses.
    let store = store_for(&server, Duration::from_secs(5));
    let policy = policy();
    assert!(one_check(&store, &policy).await.unwrap());
    assert_eq!(floodgate_libraries(&server).await, 1, "check.lua's");
    assert_eq!(
        cached_scripts(&server).await,
        0,
        "a server that runs functions is not sent EVALSHA"
    );
    server.command(&["FUNCTION", "FLUSH"]).unwrap();
    assert_eq!(floodgate_libraries(&server).await, 0);

    assert!(
        one_check(&store, &policy).await.unwrap(),
        "the first call after FUNCTION FLUSH"
    );
    assert_eq!(
        floodgate_libraries(&server).await,
        1,
        "check.lua is loaded again"
    );
    store.blocks().await.unwrap();
    assert_eq!(floodgate_libraries(&server).await, 2, "and block_list.lua");
    assert_eq!(cached_scripts(&server).await, 0);
}

/// A server that cannot run functions (Redis 6, or, as here, an ACL that
/// denies them) is sent EVALSHA from the first refusal on, and gets its
/// scripts again after SCRIPT FLUSH.
#[tokio::test]
async fn without_functions_the_scripts_run_by_evalsha() {
    let server = RedisServer::start();
    let mut acl = vec![
        "ACL",
        "SETUSER",
        "legacy",
        "on",
        ">pw",
        "~*",
        "resetchannels",
        "-@all",
    ];
    let commands: Vec<String> = floodgate_redis::ACL_COMMANDS
        .iter()
        .filter(|c| !matches!(**c, "fcall" | "function|load"))
        .map(|c| format!("+{c}"))
        .collect();
    acl.extend(commands.iter().map(String::as_str));
    server.command(&acl).unwrap();
    let store = RedisStore::new(
        RedisConfig::new(format!("redis://legacy:pw@127.0.0.1:{}", server.port()))
            .with_prefix(unique_prefix("legacy"))
            .with_timeout(Duration::from_secs(5)),
    )
    .unwrap();
    let policy = Policy::new(Algorithm::FixedWindow, 2, Duration::from_secs(60)).unwrap();
    assert!(one_check(&store, &policy).await.unwrap());
    assert!(one_check(&store, &policy).await.unwrap());
    assert_eq!(
        command_stats(&server, "fcall"),
        (0, 1, 0),
        "one FCALL refused, then EVALSHA only"
    );
    assert_eq!(
        command_stats(&server, "evalsha"),
        (3, 0, 1),
        "NOSCRIPT, then the two checks"
    );
    assert_eq!(cached_scripts(&server).await, 1);

    server.command(&["SCRIPT", "FLUSH"]).unwrap();
    assert!(
        !one_check(&store, &policy).await.unwrap(),
        "the first call after SCRIPT FLUSH decides on the counts kept"
    );
    assert_eq!(
        cached_scripts(&server).await,
        1,
        "check.lua is loaded again"
    );
    assert!(store.blocks().await.unwrap().is_empty());
    assert_eq!(command_stats(&server, "fcall"), (0, 1, 0));
    assert_eq!(floodgate_libraries(&server).await, 0);
}

/// Over `maxmemory` under `noeviction` Redis runs no function that could
/// write: a check fails as a store error (for `on_error` to decide), while
/// peek, flagged `no-writes`, still answers; with memory back, checks do.
#[tokio::test]
async fn over_maxmemory_a_check_fails_and_a_peek_still_answers() {
    let server = RedisServer::start();
    let store = store_for(&server, Duration::from_secs(5));
    // An hour's window: the count cannot reset between check and peek.
    let policy = Policy::new(Algorithm::FixedWindow, 10, Duration::from_secs(3600)).unwrap();
    // Both libraries loaded while there is memory to load them.
    assert!(one_check(&store, &policy).await.unwrap());
    store.peek("faults", &policy, "ip:192.0.2.3").await.unwrap();

    server
        .command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .unwrap();
    server
        .command(&["CONFIG", "SET", "maxmemory", "1"])
        .unwrap();
    match one_check(&store, &policy).await {
        Err(Error::Store(e)) => {
            let source = std::error::Error::source(&e).map(ToString::to_string);
            assert!(
                source.as_deref().is_some_and(|s| s.contains("OOM")),
                "{e}: {source:?}"
            );
        }
        other => panic!("a check over maxmemory returned {other:?}"),
    }
    let peeked = store.peek("faults", &policy, "ip:192.0.2.3").await.unwrap();
    assert_eq!(peeked.remaining, 9, "the one check admitted before");

    server
        .command(&["CONFIG", "SET", "maxmemory", "0"])
        .unwrap();
    assert!(one_check(&store, &policy).await.unwrap());
}

#[tokio::test]
async fn a_killed_redis_fails_calls_fast_and_a_restarted_one_serves_again() {
    let mut server = RedisServer::start();
    let store = store_for(&server, TIMEOUT);
    let policy = policy();
    assert!(until_checks_succeed(&store, &policy).await.unwrap());

    server.kill();
    // Several rounds: the first call meets the dropped connection, later ones
    // the reconnection attempts in the background.
    for round in 0..3 {
        let started = Instant::now();
        assert_fails_fast(
            &format!("check #{round}"),
            started,
            one_check(&store, &policy).await,
        );
        let started = Instant::now();
        assert_fails_fast("peek", started, store.peek("faults", &policy, "k").await);
        let started = Instant::now();
        assert_fails_fast("blocks", started, store.blocks().await);
        let started = Instant::now();
        assert_fails_fast("ping", started, store.ping().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    server.restart();
    // The same store object, on the same port: back once it has reconnected
    // and loaded its function into the new, empty server.
    assert!(until_checks_succeed(&store, &policy).await.unwrap());
    store.ping().await.unwrap();
    assert_eq!(floodgate_libraries(&server).await, 1);
}

#[tokio::test]
async fn a_store_made_while_redis_is_down_works_once_it_is_up() {
    let mut server = RedisServer::start();
    server.kill();
    let store = store_for(&server, TIMEOUT);
    let policy = policy();
    let started = Instant::now();
    assert_fails_fast("first check", started, one_check(&store, &policy).await);
    assert!(
        RedisStore::connect(
            RedisConfig::new(server.url()).with_connect_timeout(Duration::from_millis(300))
        )
        .await
        .is_err()
    );
    server.restart();
    assert!(until_checks_succeed(&store, &policy).await.unwrap());
}

/// A frozen Redis (SIGSTOP) keeps its connections open and answers nothing:
/// only the store's own deadline ends a call. It says so through
/// `call_timeout`, which callers such as the tower limiter rely on instead
/// of a timer of their own.
#[tokio::test]
async fn a_frozen_redis_times_every_call_out_within_the_store_timeout() {
    let server = RedisServer::start();
    let store = store_for(&server, TIMEOUT);
    assert_eq!(store.call_timeout(), Some(TIMEOUT));
    let policy = policy();
    assert!(until_checks_succeed(&store, &policy).await.unwrap());

    server.pause();
    let timed_out = |what: &str, started: Instant, result: Result<(), Error>| {
        let took = started.elapsed();
        match result {
            Err(Error::Store(e)) => assert!(e.is_timeout(), "{what}: {e} is not a timeout"),
            other => panic!("{what} with Redis frozen returned {other:?}"),
        }
        assert!(
            took >= TIMEOUT && took < TIMEOUT + SLACK,
            "{what} took {took:?} with Redis frozen; the timeout is {TIMEOUT:?}"
        );
    };
    // Two rounds: the second meets a connection with unanswered calls on it.
    for round in 0..2 {
        let started = Instant::now();
        let result = one_check(&store, &policy).await.map(drop);
        timed_out(&format!("check #{round}"), started, result);
        let started = Instant::now();
        let result = store.peek("faults", &policy, "k").await.map(drop);
        timed_out("peek", started, result);
        let started = Instant::now();
        let result = store.reset("faults", "k").await.map(drop);
        timed_out("reset", started, result);
        let started = Instant::now();
        let result = store
            .add_block("ip:192.0.2.9", Duration::from_secs(60), "test")
            .await
            .map(drop);
        timed_out("add_block", started, result);
        let started = Instant::now();
        let result = store.remove_block("ip:192.0.2.9").await.map(drop);
        timed_out("remove_block", started, result);
        let started = Instant::now();
        let result = store.blocks().await.map(drop);
        timed_out("blocks", started, result);
        let started = Instant::now();
        timed_out("ping", started, store.ping().await);
    }
    // Several concurrent checks share calls: each still ends by its deadline.
    let started = Instant::now();
    let checks = (0..8).map(|_| one_check(&store, &policy));
    for result in futures_util::future::join_all(checks).await {
        timed_out("concurrent check", started, result.map(drop));
    }

    server.resume();
    assert!(until_checks_succeed(&store, &policy).await.unwrap());
}

#[test]
fn a_store_needs_a_tokio_runtime() {
    // Outside a runtime the connection could not run: an error, not a panic.
    let made = RedisStore::new(RedisConfig::new("redis://127.0.0.1:1/0"));
    assert!(matches!(made, Err(floodgate_redis::ConfigError::NoRuntime)));
}
