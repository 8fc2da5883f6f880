//! The layer in an axum app on a memory store and a manual clock: limits,
//! headers, bodies, lists, blocks, shadow rules, penalties, batches, reload.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use axum::body::Body;
use common::*;
use floodgate_core::{Algorithm, Policy};
use floodgate_tower::{
    AccessLists, CheckError, ClientIpConfig, KeySpec, LimiterConfig, Outcome, RequestMatch, Rule,
};
use http::{Method, Request, StatusCode};

#[tokio::test]
async fn over_the_limit_is_a_429_with_headers_and_a_problem_naming_the_rule() {
    let clock = clock();
    let recorder = Recorder::new();
    let limiter = limiter(
        config(vec![ip_rule("api-per-client", 3, 60)]),
        memory_store(&clock),
        &clock,
        recorder.clone(),
    );
    let app = app(limiter);

    for left in [2, 1, 0] {
        let reply = send(&app, get_from("/api/items", "192.0.2.7")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "items", "the request reached the app");
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some(r#""api-per-client";q=3;w=60"#)
        );
        assert_eq!(
            reply.header("ratelimit"),
            Some(format!(r#""api-per-client";r={left};t=60"#).as_str())
        );
    }

    clock.advance(Duration::from_millis(15_500));
    let reply = send(&app, get_from("/api/items", "192.0.2.7")).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("retry-after"), Some("45"), "44.5 s rounded up");
    assert_eq!(
        reply.header("ratelimit"),
        Some(r#""api-per-client";r=0;t=45"#)
    );
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some(r#""api-per-client";q=3;w=60"#)
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    let problem = reply.json();
    assert_eq!(problem["status"], 429);
    assert_eq!(
        problem["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(
        problem["violated-policies"],
        serde_json::json!(["api-per-client"])
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("\"api-per-client\""),
        "{problem}"
    );

    // Another client has its own counter.
    let other = send(&app, get_from("/api/items", "192.0.2.8")).await;
    assert_eq!(other.status, StatusCode::OK);

    // The next window admits again.
    clock.advance(Duration::from_secs(45));
    let reply = send(&app, get_from("/api/items", "192.0.2.7")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(recorder.count(Some("api-per-client"), Outcome::Limited), 1);
    assert_eq!(recorder.count(Some("api-per-client"), Outcome::Allowed), 5);
}

#[tokio::test]
async fn spoofed_forwarding_headers_do_not_change_the_client() {
    let clock = clock();
    let mut config = config(vec![ip_rule("api", 1, 60)]);
    config.client_ip = ClientIpConfig {
        trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
        ..ClientIpConfig::default()
    };
    let app = app(limiter(
        config,
        memory_store(&clock),
        &clock,
        Recorder::new(),
    ));

    let spoof = |xff: &str| {
        request("GET", "/api/items", Some("198.51.100.5"))
            .header("x-forwarded-for", xff)
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(send(&app, spoof("1.2.3.4")).await.status, StatusCode::OK);
    // A fresh made-up address every time: still the same client.
    assert_eq!(
        send(&app, spoof("5.6.7.8")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );

    // Behind the trusted proxy, the rightmost untrusted address counts.
    let via_proxy = |xff: &str| {
        request("GET", "/api/items", Some("10.0.0.1"))
            .header("x-forwarded-for", xff)
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(
        send(&app, via_proxy("9.9.9.9, 203.0.113.9, 10.0.0.2"))
            .await
            .status,
        StatusCode::OK
    );
    let reply = send(&app, via_proxy("1.1.1.1, 203.0.113.9")).await;
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "same client 203.0.113.9"
    );
    assert_eq!(
        send(&app, via_proxy("203.0.113.10")).await.status,
        StatusCode::OK
    );
    // A hostile header from the proxy's client falls back to the proxy.
    let huge = "9".repeat(10_000);
    assert_eq!(send(&app, via_proxy(&huge)).await.status, StatusCode::OK);
    assert_eq!(
        send(&app, via_proxy("garbage")).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "both fell back to the proxy's own address"
    );
}

#[tokio::test]
async fn ipv6_clients_are_limited_per_64() {
    let clock = clock();
    let app = app(limiter(
        config(vec![ip_rule("api", 1, 60)]),
        memory_store(&clock),
        &clock,
        Recorder::new(),
    ));
    assert_eq!(
        send(&app, get_from("/api/items", "2001:db8:1:2::1"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, get_from("/api/items", "2001:db8:1:2:ffff::9"))
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        send(&app, get_from("/api/items", "2001:db8:1:3::1"))
            .await
            .status,
        StatusCode::OK
    );
}

fn lists(allow: &[&str], deny: &[&str]) -> AccessLists {
    AccessLists {
        allow: allow.iter().map(|t| t.parse().unwrap()).collect(),
        deny: deny.iter().map(|t| t.parse().unwrap()).collect(),
    }
}

#[tokio::test]
async fn deny_list_is_a_403_for_v4_v6_and_headers() {
    let clock = clock();
    let recorder = Recorder::new();
    let mut config = config(vec![ip_rule("api", 100, 60)]);
    config.access = lists(
        &[],
        &[
            "ip:203.0.113.0/24",
            "ip:2001:db8:bad::/48",
            "header:x-api-key:leaked",
        ],
    );
    let app = app(limiter(
        config,
        memory_store(&clock),
        &clock,
        recorder.clone(),
    ));

    for ip in ["203.0.113.7", "::ffff:203.0.113.8", "2001:db8:bad:1::1"] {
        let reply = send(&app, get_from("/api/items", ip)).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{ip}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(reply.json()["status"], 403);
        assert!(reply.header("ratelimit").is_none());
    }
    let reply = send(&app, get_from("/api/items", "203.0.113.7")).await;
    assert_eq!(
        reply.json()["detail"],
        "ip:203.0.113.0/24 is on the deny list"
    );

    let leaked = request("GET", "/health", Some("192.0.2.1"))
        .header("x-api-key", "leaked")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, leaked).await.status, StatusCode::FORBIDDEN);
    let fine = request("GET", "/health", Some("192.0.2.1"))
        .header("x-api-key", "fine")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, fine).await.status, StatusCode::OK);
    assert_eq!(recorder.count(None, Outcome::Denied), 5);
    assert_eq!(
        recorder.count(Some("api"), Outcome::Allowed),
        1,
        "denied requests never reach the rules"
    );
}

#[tokio::test]
async fn allow_list_bypasses_lists_blocks_and_rules() {
    let clock = clock();
    let store = memory_store(&clock);
    let recorder = Recorder::new();
    let mut config = config(vec![ip_rule("api", 1, 60)]);
    config.access = lists(&["ip:10.0.0.0/8"], &["ip:10.1.0.0/16"]);
    let limiter = limiter(config, store.clone(), &clock, recorder.clone());
    store.add_block_now("ip:10.1.2.3", Duration::from_secs(600), "test");
    limiter.sync_blocks().await.unwrap();
    let app = app(limiter);

    for _ in 0..5 {
        let reply = send(&app, get_from("/api/items", "10.1.2.3")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.header("ratelimit").is_none(), "no rule was checked");
    }
    assert_eq!(recorder.count(None, Outcome::Bypassed), 5);
    assert!(store.is_empty(), "nothing was counted");
}

#[tokio::test]
async fn manual_blocks_apply_after_sync_and_lift_after_unblock() {
    let clock = clock();
    let store = memory_store(&clock);
    let recorder = Recorder::new();
    let limiter = limiter(config(vec![]), store.clone(), &clock, recorder.clone());
    let app = app(limiter.clone());

    // Made in the store by another instance: seen at the next sync.
    store.add_block_now("ip:192.0.2.0/24", Duration::from_secs(600), "scraping");
    store.add_block_now("header:x-api-key:stolen", Duration::from_secs(600), "abuse");
    assert_eq!(
        send(&app, get_from("/health", "192.0.2.7")).await.status,
        StatusCode::OK
    );
    assert_eq!(limiter.sync_blocks().await.unwrap(), 2);
    let reply = send(&app, get_from("/health", "192.0.2.7")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.json()["detail"], "ip:192.0.2.0/24 is blocked");
    assert!(
        !reply.body.contains("scraping"),
        "the operator's reason stays private"
    );
    let stolen = || {
        request("GET", "/health", Some("198.51.100.1"))
            .header("x-api-key", "stolen")
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(send(&app, stolen()).await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        send(&app, get_from("/health", "198.51.100.1")).await.status,
        StatusCode::OK
    );

    // Unblocked elsewhere: lifted at the next sync.
    store.remove_block_now("ip:192.0.2.0/24");
    limiter.sync_blocks().await.unwrap();
    assert_eq!(
        send(&app, get_from("/health", "192.0.2.7")).await.status,
        StatusCode::OK
    );

    // Blocks expire on their own.
    clock.advance(Duration::from_secs(601));
    assert_eq!(send(&app, stolen()).await.status, StatusCode::OK);
    assert_eq!(recorder.count(None, Outcome::Blocked), 2);
}

/// The background sync brings another instance's block here within a
/// sync interval, with no task or channel of the app's, and ends by itself
/// once the last handle to the limiter is gone.
#[tokio::test(start_paused = true)]
async fn the_background_block_sync_follows_the_store_and_ends_with_the_limiter() {
    let clock = clock();
    let store = memory_store(&clock);
    let a = limiter(config(vec![]), store.clone(), &clock, Recorder::new());
    let recorder = Recorder::new();
    let b = limiter(config(vec![]), store.clone(), &clock, recorder.clone());
    let app_b = app(b.clone());
    b.sync_blocks_in_background().unwrap();
    b.sync_blocks_in_background().unwrap();
    let syncs = || {
        recorder
            .store_calls
            .lock()
            .iter()
            .filter(|(call, _)| *call == floodgate_tower::StoreCall::Blocks)
            .count()
    };

    let target = "ip:192.0.2.7".parse().unwrap();
    a.block(&target, Duration::from_secs(60), "test")
        .await
        .unwrap();
    tokio::time::sleep(floodgate_tower::BLOCK_SYNC_INTERVAL * 2).await;
    assert_eq!(
        send(&app_b, get_from("/health", "192.0.2.7")).await.status,
        StatusCode::FORBIDDEN,
        "synced in the background"
    );
    let while_alive = syncs();
    assert!(
        (2..=4).contains(&while_alive),
        "one sync per interval, from one task however often it is asked: {while_alive}"
    );

    drop((app_b, b));
    tokio::time::sleep(floodgate_tower::BLOCK_SYNC_INTERVAL * 2).await;
    let after_drop = syncs();
    tokio::time::sleep(floodgate_tower::BLOCK_SYNC_INTERVAL * 10).await;
    assert_eq!(syncs(), after_drop, "no sync once the limiter is gone");
}

#[tokio::test]
async fn a_block_made_on_one_instance_reaches_the_other_through_the_store() {
    let clock = clock();
    let store = memory_store(&clock);
    let a = limiter(config(vec![]), store.clone(), &clock, Recorder::new());
    let b = limiter(config(vec![]), store.clone(), &clock, Recorder::new());
    let app_a = app(a.clone());
    let app_b = app(b.clone());
    let target = "ip:192.0.2.7".parse().unwrap();

    let block = a
        .block(&target, Duration::from_secs(60), "test")
        .await
        .unwrap();
    assert_eq!(block.target, "ip:192.0.2.7");
    assert_eq!(
        send(&app_a, get_from("/health", "192.0.2.7")).await.status,
        StatusCode::FORBIDDEN,
        "at once on the instance that made it"
    );
    assert_eq!(
        send(&app_b, get_from("/health", "192.0.2.7")).await.status,
        StatusCode::OK,
        "not yet synced"
    );
    b.sync_blocks().await.unwrap();
    assert_eq!(
        send(&app_b, get_from("/health", "192.0.2.7")).await.status,
        StatusCode::FORBIDDEN
    );

    assert!(a.unblock("ip:192.0.2.7").await.unwrap());
    assert_eq!(
        send(&app_a, get_from("/health", "192.0.2.7")).await.status,
        StatusCode::OK
    );
    b.sync_blocks().await.unwrap();
    assert_eq!(
        send(&app_b, get_from("/health", "192.0.2.7")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn shadow_rules_count_and_send_headers_but_never_refuse() {
    let clock = clock();
    let store = memory_store(&clock);
    let recorder = Recorder::new();
    let rule = ip_rule("trial", 2, 60).with_shadow(true);
    let app = app(limiter(
        config(vec![rule.clone()]),
        store.clone(),
        &clock,
        recorder.clone(),
    ));

    for _ in 0..5 {
        let reply = send(&app, get_from("/api/items", "192.0.2.7")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.header("ratelimit").is_some());
    }
    let last = send(&app, get_from("/api/items", "192.0.2.7")).await;
    assert_eq!(last.header("ratelimit"), Some(r#""trial";r=0;t=60"#));
    assert_eq!(recorder.count(Some("trial"), Outcome::Allowed), 2);
    assert_eq!(recorder.count(Some("trial"), Outcome::ShadowLimited), 4);
    let counted = store.peek_now("trial", &rule.policy, "ip:192.0.2.7");
    assert_eq!(counted.remaining, 0, "shadow requests were counted");
}

#[tokio::test]
async fn penalty_blocks_outlast_the_window_without_store_round_trips() {
    let clock = clock();
    let store = FlakyStore::new(memory_store(&clock));
    let recorder = Recorder::new();
    let policy = Policy::new(Algorithm::FixedWindow, 2, Duration::from_secs(10))
        .unwrap()
        .with_block_for(Duration::from_secs(60))
        .unwrap();
    let rule = Rule::new("login", "ip".parse().unwrap(), policy);
    let app = app(limiter(
        config(vec![rule]),
        store.clone(),
        &clock,
        recorder.clone(),
    ));

    for _ in 0..2 {
        assert_eq!(
            send(&app, get_from("/api/items", "192.0.2.7")).await.status,
            StatusCode::OK
        );
    }
    let reply = send(&app, get_from("/api/items", "192.0.2.7")).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("retry-after"), Some("60"));
    assert!(
        reply.json()["detail"]
            .as_str()
            .unwrap()
            .contains("blocked by rule \"login\"")
    );
    let calls = store.calls();

    // The window resets after 10 s; the penalty does not.
    clock.advance(Duration::from_secs(15));
    let reply = send(&app, get_from("/api/items", "192.0.2.7")).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("retry-after"), Some("45"));
    assert_eq!(reply.header("ratelimit"), Some(r#""login";r=0;t=45"#));
    assert_eq!(store.calls(), calls, "refused from the local cache");
    // Other clients are unaffected.
    assert_eq!(
        send(&app, get_from("/api/items", "192.0.2.8")).await.status,
        StatusCode::OK
    );

    clock.advance(Duration::from_secs(45));
    assert_eq!(
        send(&app, get_from("/api/items", "192.0.2.7")).await.status,
        StatusCode::OK
    );
    assert_eq!(recorder.count(Some("login"), Outcome::Blocked), 2);
}

#[tokio::test]
async fn an_unblock_elsewhere_lifts_a_cached_penalty_at_the_next_sync() {
    let clock = clock();
    let store = memory_store(&clock);
    let policy = Policy::new(Algorithm::FixedWindow, 1, Duration::from_secs(10))
        .unwrap()
        .with_block_for(Duration::from_secs(600))
        .unwrap();
    let rule = Rule::new("login", "ip".parse().unwrap(), policy);
    let limiter = limiter(config(vec![rule]), store.clone(), &clock, Recorder::new());
    let app = app(limiter.clone());

    send(&app, get_from("/api/items", "192.0.2.7")).await;
    let reply = send(&app, get_from("/api/items", "192.0.2.7")).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        store.remove_block_now("ip:192.0.2.7"),
        "the store holds the penalty"
    );
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        send(&app, get_from("/api/items", "192.0.2.7")).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "still cached here"
    );
    limiter.sync_blocks().await.unwrap();
    assert_eq!(
        send(&app, get_from("/api/items", "192.0.2.7")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_refused_batch_consumes_nothing_on_any_rule() {
    let clock = clock();
    let store = memory_store(&clock);
    let per_client = ip_rule("per-client", 5, 60);
    let global = Rule::new(
        "global",
        "global".parse().unwrap(),
        policy(Algorithm::FixedWindow, 2, 60),
    );
    let app = app(limiter(
        config(vec![per_client.clone(), global]),
        store.clone(),
        &clock,
        Recorder::new(),
    ));

    // Two requests use the global quota; the client has 3 left.
    for ip in ["192.0.2.1", "192.0.2.7"] {
        assert_eq!(
            send(&app, get_from("/api/items", ip)).await.status,
            StatusCode::OK
        );
    }
    let remaining = |store: &floodgate_core::MemoryStore| {
        store
            .peek_now("per-client", &per_client.policy, "ip:192.0.2.7")
            .remaining
    };
    assert_eq!(remaining(&store), 4);
    for _ in 0..3 {
        let reply = send(&app, get_from("/api/items", "192.0.2.7")).await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            reply.json()["violated-policies"],
            serde_json::json!(["global"])
        );
    }
    assert_eq!(remaining(&store), 4, "refused requests consumed nothing");
}

#[tokio::test]
async fn headers_describe_the_most_restrictive_rule() {
    let clock = clock();
    let roomy = ip_rule("roomy", 100, 60);
    let tight = ip_rule("tight", 3, 60);
    let app = app(limiter(
        config(vec![roomy, tight]),
        memory_store(&clock),
        &clock,
        Recorder::new(),
    ));
    let reply = send(&app, get_from("/api/items", "192.0.2.7")).await;
    assert_eq!(reply.header("ratelimit"), Some(r#""tight";r=2;t=60"#));
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some(r#""tight";q=3;w=60"#)
    );
}

#[tokio::test]
async fn rules_that_do_not_match_or_lack_their_header_do_not_apply() {
    let clock = clock();
    let rule = Rule::new(
        "writes-per-key",
        KeySpec::parse_list(["header:x-api-key"]).unwrap(),
        policy(Algorithm::FixedWindow, 1, 60),
    )
    .with_match(RequestMatch {
        path_prefix: Some("/api/".into()),
        methods: Some(vec![Method::POST]),
    });
    let app = app(limiter(
        config(vec![rule]),
        memory_store(&clock),
        &clock,
        Recorder::new(),
    ));
    let post = |path: &str, key: Option<&str>| {
        let mut builder = request("POST", path, Some("192.0.2.7"));
        if let Some(key) = key {
            builder = builder.header("x-api-key", key);
        }
        builder.body(Body::empty()).unwrap()
    };

    for _ in 0..3 {
        // Wrong method, wrong path, missing header: the rule does not apply.
        let reply = send(&app, get_from("/api/items", "192.0.2.7")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.header("ratelimit").is_none());
        let reply = send(&app, post("/api/items", None)).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.header("ratelimit").is_none());
    }
    let reply = send(&app, post("/api/items", Some("k1"))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "created");
    assert_eq!(
        reply.header("ratelimit"),
        Some(r#""writes-per-key";r=0;t=60"#)
    );
    assert_eq!(
        send(&app, post("/api/items", Some("k1"))).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        send(&app, post("/api/items", Some("k2"))).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_unknown_peer_skips_ip_rules_but_not_header_rules() {
    let clock = clock();
    let by_key = Rule::new(
        "per-key",
        "header:x-api-key".parse().unwrap(),
        policy(Algorithm::FixedWindow, 1, 60),
    );
    let app = app(limiter(
        config(vec![ip_rule("per-ip", 1, 60), by_key]),
        memory_store(&clock),
        &clock,
        Recorder::new(),
    ));
    for _ in 0..3 {
        let reply = send(
            &app,
            request("GET", "/health", None).body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.header("ratelimit").is_none());
    }
    let keyed = || {
        request("GET", "/health", None)
            .header("x-api-key", "k")
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(send(&app, keyed()).await.status, StatusCode::OK);
    assert_eq!(
        send(&app, keyed()).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn axum_connect_info_gives_the_peer() {
    let clock = clock();
    let app = app(limiter(
        config(vec![ip_rule("api", 1, 60)]),
        memory_store(&clock),
        &clock,
        Recorder::new(),
    ));
    let with_connect_info = || {
        let peer: std::net::SocketAddr = "192.0.2.7:5000".parse().unwrap();
        Request::builder()
            .uri("/health")
            .extension(axum::extract::ConnectInfo(peer))
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(send(&app, with_connect_info()).await.status, StatusCode::OK);
    assert_eq!(
        send(&app, with_connect_info()).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn reload_swaps_the_limits_and_keeps_them_on_a_bad_config() {
    let clock = clock();
    let limiter = limiter(
        config(vec![ip_rule("api", 1, 60)]),
        memory_store(&clock),
        &clock,
        Recorder::new(),
    );
    let app = app(limiter.clone());
    assert_eq!(
        send(&app, get_from("/health", "192.0.2.7")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, get_from("/health", "192.0.2.7")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );

    limiter.reload(config(vec![ip_rule("api", 3, 60)])).unwrap();
    let reply = send(&app, get_from("/health", "192.0.2.7")).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the new limit counts on the same key"
    );
    assert_eq!(reply.header("ratelimit-policy"), Some(r#""api";q=3;w=60"#));
    assert_eq!(reply.header("ratelimit"), Some(r#""api";r=1;t=60"#));

    let bad = config(vec![ip_rule("dup", 1, 60), ip_rule("dup", 2, 60)]);
    let err = limiter.reload(bad).unwrap_err();
    assert!(err.to_string().contains("rule \"dup\": name"), "{err}");
    assert_eq!(
        limiter.config().rules[0].name,
        "api",
        "the old config stays"
    );
    assert_eq!(
        send(&app, get_from("/health", "192.0.2.7")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, get_from("/health", "192.0.2.7")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn check_key_serves_the_decision_api() {
    let clock = clock();
    let store = memory_store(&clock);
    let shadow = ip_rule("shadow", 1, 60).with_shadow(true);
    let limiter = limiter(
        LimiterConfig {
            rules: vec![ip_rule("api", 3, 60), shadow],
            ..LimiterConfig::default()
        },
        store.clone(),
        &clock,
        Recorder::new(),
    );
    let d = limiter.check_key("api", "alice", 2).await.unwrap();
    assert!(d.allowed);
    assert_eq!((d.limit, d.remaining), (3, 1));
    assert_eq!(d.reset_after, Duration::from_secs(60));
    let d = limiter.check_key("api", "alice", 2).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Some(Duration::from_secs(60)));
    assert!(limiter.check_key("api", "bob", 1).await.unwrap().allowed);

    assert_eq!(
        limiter.check_key("nope", "alice", 1).await,
        Err(CheckError::UnknownRule("nope".into()))
    );
    assert_eq!(
        limiter.check_key("api", "alice", 0).await,
        Err(CheckError::ZeroCost)
    );
    assert_eq!(
        limiter.check_key("api", "alice", 4).await,
        Err(CheckError::InsufficientCapacity {
            rule: "api".into(),
            cost: 4,
            capacity: 3
        })
    );
    for _ in 0..3 {
        assert!(
            limiter
                .check_key("shadow", "carol", 1)
                .await
                .unwrap()
                .allowed
        );
    }

    // A huge key is stored under its hash, not as given.
    let huge = "k".repeat(5_000);
    assert!(limiter.check_key("api", &huge, 1).await.unwrap().allowed);
    let policy = &limiter.config().rules[0].policy;
    assert_eq!(
        store.peek_now("api", policy, &huge).remaining,
        3,
        "not stored raw"
    );
}

/// The app behind the layer is handed the canonical path the rules
/// matched: `/%61pi/./x/../items` routes to `/api/items` and counts there,
/// and a malformed escape or an encoded slash under `reject` never reaches
/// the app.
#[tokio::test]
async fn the_app_sees_the_path_the_rules_matched() {
    let clock = clock();
    let rule = ip_rule("api", 2, 60).with_match(RequestMatch {
        path_prefix: Some("/api/".into()),
        methods: None,
    });
    let mut cfg = config(vec![rule]);
    cfg.encoded_slashes = floodgate_tower::EncodedSlashes::Reject;
    let limiter = limiter(cfg, memory_store(&clock), &clock, Recorder::new());
    // Around the router, not inside it (`Router::layer` runs after routing):
    // the router then routes the canonical path.
    let routes = axum::Router::new().route("/api/items", axum::routing::get(|| async { "items" }));
    let app = axum::Router::new().fallback_service(tower::Layer::layer(
        &floodgate_tower::FloodgateLayer::new(limiter),
        routes,
    ));
    for (path, status) in [
        ("/%61pi/./x/../items", StatusCode::OK),
        ("//api//items?q=1", StatusCode::OK),
        ("/api/items", StatusCode::TOO_MANY_REQUESTS),
        ("/api/items%zz", StatusCode::BAD_REQUEST),
        ("/%2Fapi/items", StatusCode::BAD_REQUEST),
    ] {
        let reply = send(&app, get_from(path, "192.0.2.7")).await;
        assert_eq!(reply.status, status, "{path}: {}", reply.body);
        if status == StatusCode::OK {
            assert_eq!(reply.body, "items", "{path}");
        } else {
            assert_eq!(
                reply.header("content-type"),
                Some("application/problem+json")
            );
        }
    }
}

/// The layer's names before `FloodgateLayer` and `Floodgate` still build
/// the same middleware, so code written against them keeps compiling.
#[tokio::test]
#[allow(deprecated)]
async fn the_old_names_still_work() {
    let clock = clock();
    let limiter = limiter(
        config(vec![ip_rule("api", 1, 60)]),
        memory_store(&clock),
        &clock,
        Recorder::new(),
    );
    let layer: floodgate_tower::RateLimitLayer<_> = floodgate_tower::RateLimitLayer::new(limiter);
    let service: floodgate_tower::RateLimit<_, _> = tower::Layer::layer(
        &layer,
        axum::Router::new().route("/", axum::routing::get(|| async { "ok" })),
    );
    let app = axum::Router::new().fallback_service(service);
    assert_eq!(
        send(&app, get_from("/", "192.0.2.7")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, get_from("/", "192.0.2.7")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// The authenticated user an earlier layer found, as the app's own type.
#[derive(Clone)]
struct User(String);

impl std::fmt::Display for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A rule keyed by the request extension an authentication layer sets
/// limits each user wherever they come from; requests it left anonymous are
/// not counted by it; a rule keyed by a function of the request (the
/// tenant, from the host) counts per tenant.
#[tokio::test]
async fn rules_keyed_by_the_app_limit_per_user_and_per_tenant() {
    use floodgate_tower::{AppKey, KeyPart, KeySpec};

    let clock = clock();
    let per_user = Rule::new(
        "per-user",
        KeySpec::from(KeyPart::App(AppKey::extension::<User>("user").unwrap())),
        policy(Algorithm::FixedWindow, 2, 60),
    );
    let tenant = AppKey::new("tenant", |request| {
        let host = request.headers().get("host")?.to_str().ok()?;
        Some(host.split('.').next()?.to_ascii_lowercase())
    })
    .unwrap();
    let per_tenant = Rule::new(
        "per-tenant",
        KeySpec::from(KeyPart::App(tenant)),
        policy(Algorithm::FixedWindow, 3, 60),
    );
    let limiter = limiter(
        config(vec![per_user, per_tenant]),
        memory_store(&clock),
        &clock,
        Recorder::new(),
    );
    // The authentication layer runs first (added last) and turns the
    // `x-user` header into a `User`.
    let app = app(limiter).layer(axum::middleware::from_fn(
        |mut request: axum::extract::Request, next: axum::middleware::Next| async move {
            if let Some(user) = request
                .headers()
                .get("x-user")
                .and_then(|v| v.to_str().ok())
            {
                let user = User(user.to_owned());
                request.extensions_mut().insert(user);
            }
            next.run(request).await
        },
    ));
    let send_as = |user: Option<&str>, ip: &str, host: &str| {
        let mut builder = request("GET", "/api/items", Some(ip)).header("host", host);
        if let Some(user) = user {
            builder = builder.header("x-user", user);
        }
        builder.body(Body::empty()).unwrap()
    };

    // alice, from two addresses: her third request is refused by per-user.
    for ip in ["192.0.2.7", "198.51.100.9"] {
        let reply = send(&app, send_as(Some("alice"), ip, "acme.example")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    let reply = send(
        &app,
        send_as(Some("alice"), "203.0.113.5", "globex.example"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.json()["violated-policies"][0], "per-user");

    // bob has his own counter; an anonymous request is not counted by
    // per-user, only by per-tenant, which acme has now used up (alice 2, bob 1).
    let reply = send(&app, send_as(Some("bob"), "192.0.2.7", "ACME.example")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = send(&app, send_as(None, "192.0.2.7", "acme.example")).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.json()["violated-policies"][0], "per-tenant");
    let reply = send(&app, send_as(None, "192.0.2.7", "globex.example")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        reply.header("ratelimit"),
        Some(r#""per-tenant";r=2;t=60"#),
        "anonymous: only the tenant rule applies"
    );
}

/// On a tonic gRPC service (the standard health service, whose client and
/// server tonic-health ships), a refusal is a gRPC status the client reads:
/// `RESOURCE_EXHAUSTED` with the rule in its message and the retry in its
/// metadata, not an HTTP 429 a gRPC client would see as a broken call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_refusal_is_resource_exhausted_with_retry_metadata() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let limiter = floodgate_tower::LimiterConfig::builder()
        .rule(floodgate_tower::Rule::fixed_window("grpc-per-key", 2, "1m").key("header:x-api-key"))
        .deny("header:x-api-key:leaked")
        .build(floodgate_core::MemoryStore::new(1_000))
        .unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(floodgate_tower::FloodgateLayer::new(limiter))
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let check = |key: &str| {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        request
            .metadata_mut()
            .insert("x-api-key", key.parse().unwrap());
        request
    };

    for _ in 0..2 {
        let answer = client.check(check("alice")).await.unwrap();
        assert_eq!(
            answer.metadata().get("ratelimit-policy").unwrap(),
            r#""grpc-per-key";q=2;w=60"#,
            "admitted calls carry the RateLimit metadata"
        );
    }
    let refused = client.check(check("alice")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("\"grpc-per-key\""),
        "{}",
        refused.message()
    );
    let retry_after: u64 = refused
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(refused.metadata().get("ratelimit").is_some());

    client.check(check("bob")).await.unwrap();
    let denied = client.check(check("leaked")).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(
        denied.message().contains("deny list"),
        "{}",
        denied.message()
    );
    server.abort();
}

/// An app whose `/login` answers 200 to `x-password: right`, else 401, and
/// whose `/generate` names its cost in `x-cost` (from the query `?cost=N`).
fn answering_app<S: floodgate_core::Store>(limiter: floodgate_tower::Limiter<S>) -> axum::Router {
    use axum::routing::post;
    axum::Router::new()
        .route(
            "/login",
            post(|headers: http::HeaderMap| async move {
                if headers.get("x-password").is_some_and(|p| p == "right") {
                    (StatusCode::OK, "welcome")
                } else {
                    (StatusCode::UNAUTHORIZED, "no")
                }
            }),
        )
        .route(
            "/generate",
            post(|uri: http::Uri| async move {
                let cost = uri
                    .query()
                    .and_then(|q| q.strip_prefix("cost="))
                    .unwrap_or("")
                    .to_owned();
                ([("x-cost", cost)], "text")
            }),
        )
        .layer(floodgate_tower::FloodgateLayer::new(limiter))
}

fn post_as(path: &str, user: &str, password: &str) -> Request<Body> {
    request("POST", path, Some("192.0.2.9"))
        .header("x-user", user)
        .header("x-password", password)
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn count_status_charges_only_the_answers_that_count() {
    let clock = clock();
    let store = memory_store(&clock);
    let config = LimiterConfig::builder()
        .rule(
            Rule::fixed_window("login-failures", 2, "1h")
                .key("header:x-user")
                .path_prefix("/login")
                .count_status("401, 5xx"),
        )
        .rule(
            Rule::token_bucket("tokens", 10, "1h")
                .key("header:x-user")
                .path_prefix("/generate")
                .cost_header("x-cost"),
        )
        .build(store.clone())
        .unwrap();
    let app = answering_app(config);
    for _ in 0..5 {
        assert_eq!(
            send(&app, post_as("/login", "ann", "right")).await.status,
            StatusCode::OK
        );
    }
    for _ in 0..2 {
        assert_eq!(
            send(&app, post_as("/login", "ann", "wrong")).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let locked = send(&app, post_as("/login", "ann", "right")).await;
    assert_eq!(
        locked.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        locked.body
    );
    assert_eq!(
        send(&app, post_as("/login", "ben", "right")).await.status,
        StatusCode::OK
    );

    // The cost the answer names: 6, then 6 more goes past the 10 held
    // (admitted: 4 were left), then refused; the header never leaves.
    for cost in ["6", "6"] {
        let r = send(&app, post_as(&format!("/generate?cost={cost}"), "ann", "")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.header("x-cost"),
            None,
            "the cost header reached the client"
        );
    }
    let refused = send(&app, post_as("/generate?cost=1", "ann", "")).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let tokens = policy(Algorithm::TokenBucket, 10, 3600);
    assert_eq!(
        store
            .peek_now("tokens", &tokens, "header:x-user:ann")
            .remaining,
        0
    );
    // A malformed cost charges the rule's cost (1).
    send(&app, post_as("/generate?cost=x", "cat", "")).await;
    assert_eq!(
        store
            .peek_now("tokens", &tokens, "header:x-user:cat")
            .remaining,
        9
    );
}
