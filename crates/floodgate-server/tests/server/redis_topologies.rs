//! The floodgate binary on Redis topologies other than one server: four
//! instances sharing a 3-primary Redis Cluster, instances on a primary
//! behind Sentinels through a failover, and an instance on `rediss://` with
//! a client certificate, logged in as a least-privilege ACL user.

use std::sync::Arc;
use std::time::{Duration, Instant};

use floodgate_testkit::topology::{self, RedisCluster, SentinelSet, TlsRedis};
use floodgate_testkit::unique_prefix;

use crate::support::http::Http;
use crate::support::process::{AUTH, Floodgate};

/// `[server]`, `[admin]` and a `[store]` with `store` lines, then the rules.
fn config(store: &str, rules: &str) -> String {
    format!(
        "[server]\nlisten = \"{{listen}}\"\n\
         [store]\nbackend = \"redis\"\n{store}\n\
         [admin]\nlisten = \"{{admin}}\"\n\
         {rules}"
    )
}

/// A TOML array of strings.
fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// Starts `config` with `env` without blocking the runtime.
async fn launch_with(config: String, env: Vec<(&'static str, String)>) -> Floodgate {
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Floodgate::start_with(&config, &env)
    })
    .await
    .unwrap()
}

/// Rules of the cluster test: a per-client limit and a global one, so each
/// gateway request is a batch over two hash slots.
const CLUSTER_RULES: &str = "[[rule]]\nname = \"per-client\"\nmatch = { path_prefix = \"/api/\" }\n\
     key = \"header:x-api-key\"\nalgorithm = \"sliding_log\"\nlimit = 10\nwindow = \"1h\"\n\
     [[rule]]\nname = \"everyone\"\nmatch = { path_prefix = \"/api/\" }\n\
     key = \"global\"\nalgorithm = \"token_bucket\"\nlimit = 100000\nwindow = \"1h\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_on_a_cluster_admit_each_client_exactly_its_limit() {
    const CLIENTS: usize = 40;
    const REQUESTS: usize = 16;
    const LIMIT: usize = 10;
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap();
    let store = format!(
        "urls = {}\nprefix = \"{}\"\ntimeout = \"2s\"\non_error = \"deny\"",
        toml_list(&cluster.urls()),
        unique_prefix("e2e-cluster")
    );
    let mut instances = Vec::new();
    for _ in 0..4 {
        instances.push(launch_with(config(&store, CLUSTER_RULES), Vec::new()).await);
    }
    let instances = Arc::new(instances);
    let http = Http::new();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (instances, http) = (Arc::clone(&instances), http.clone());
        clients.push(tokio::spawn(async move {
            let key = format!("client-{c}");
            let mut statuses = Vec::new();
            for i in 0..REQUESTS {
                // Each request to the next instance.
                let fg = &instances[(c + i) % instances.len()];
                let r = http
                    .get(&fg.url("/api/hello"), &[("x-api-key", &key)])
                    .await;
                statuses.push(r.status);
            }
            statuses
        }));
    }
    let mut admitted_total = 0;
    for (c, client) in clients.into_iter().enumerate() {
        let statuses = client.await.unwrap();
        let admitted = statuses.iter().filter(|&&s| s == 200).count();
        let refused = statuses.iter().filter(|&&s| s == 429).count();
        assert_eq!(
            (admitted, refused),
            (LIMIT, REQUESTS - LIMIT),
            "client-{c}: {statuses:?}"
        );
        admitted_total += admitted;
    }
    eprintln!(
        "e2e cluster: 4 instances, {CLIENTS} clients x {REQUESTS} requests (two slots each): \
         {admitted_total} admitted, exactly {LIMIT} per client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_on_sentinel_answer_through_a_failover_then_share_limits_again() {
    const TIMEOUT_MS: u64 = 100;
    // A bound on hangs on a loaded 2-core machine, not a benchmark.
    const HANG_BOUND: Duration = Duration::from_millis(TIMEOUT_MS + 900);
    let set = tokio::task::spawn_blocking(SentinelSet::start)
        .await
        .unwrap();
    let store = format!(
        "sentinels = {}\nsentinel_master = \"{}\"\nprefix = \"{}\"\ntimeout = \"{TIMEOUT_MS}ms\"\non_error = \"allow\"",
        toml_list(&set.sentinel_urls()),
        set.master_name(),
        unique_prefix("e2e-sentinel")
    );
    let rules = "[[rule]]\nname = \"per-client\"\nkey = \"header:x-client\"\n\
                 algorithm = \"sliding_log\"\nlimit = 5\nwindow = \"1h\"\n";
    let a = launch_with(config(&store, rules), Vec::new()).await;
    let b = launch_with(config(&store, rules), Vec::new()).await;
    let http = Http::new();
    let alternate = async |key: &str, n: usize| {
        let mut statuses = Vec::new();
        let mut slowest = Duration::ZERO;
        for i in 0..n {
            let fg = if i % 2 == 0 { &a } else { &b };
            let started = Instant::now();
            let r = http.get(&fg.url("/api/hello"), &[("x-client", key)]).await;
            slowest = slowest.max(started.elapsed());
            statuses.push(r.status);
        }
        (statuses, slowest)
    };
    let (before, _) = alternate("before", 8).await;
    assert_eq!(before, [200, 200, 200, 200, 200, 429, 429, 429]);

    // Load during a kill -9 of the primary: every request is answered, as
    // allowed (on_error = "allow") or by the limit, without hanging.
    let set = Arc::new(std::sync::Mutex::new(set));
    let killer = Arc::clone(&set);
    let failover = tokio::task::spawn_blocking(move || killer.lock().unwrap().kill_primary());
    let started = Instant::now();
    let mut during = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut round = 0;
    while !failover.is_finished() {
        let (statuses, slow) = alternate(&format!("during-{round}"), 4).await;
        during.extend(statuses);
        slowest = slowest.max(slow);
        round += 1;
    }
    let sentinels_took = failover.await.unwrap();
    assert!(
        during.iter().all(|&s| s == 200 || s == 429),
        "during the failover: {during:?}"
    );
    assert!(slowest <= HANG_BOUND, "a request took {slowest:?}");

    // Shared limiting resumes on the new primary: a fresh client alternating
    // between the instances gets exactly the limit, once both have found it.
    let mut resumed = None;
    for attempt in 0..40 {
        let (statuses, _) = alternate(&format!("after-{attempt}"), 8).await;
        if statuses == [200, 200, 200, 200, 200, 429, 429, 429] {
            resumed = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let resumed = resumed.unwrap_or_else(|| panic!("shared limiting did not resume"));
    eprintln!(
        "e2e sentinel: kill -9 of the primary; Sentinels named the replica after {} ms; \
         {} requests during it all answered 200/429 (slowest {} ms, store timeout {TIMEOUT_MS} ms); \
         shared limiting back {} ms after the kill",
        sentinels_took.as_millis(),
        during.len(),
        slowest.as_millis(),
        resumed.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_over_rediss_as_an_acl_user() {
    // Only floodgate's keys and the commands it runs (see docs/DEPLOY.md).
    let acl = topology::acl_user(
        "floodgate",
        "s3cret",
        "fgtest:*",
        floodgate_redis::ACL_COMMANDS,
    );
    let tls = tokio::task::spawn_blocking(move || {
        TlsRedis::start(&acl.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    let store = format!(
        "prefix = \"{}\"\ntimeout = \"1s\"\non_error = \"deny\"\n\
         tls_ca_file = {:?}\ntls_cert_file = {:?}\ntls_key_file = {:?}",
        unique_prefix("e2e-tls"),
        tls.ca_file().display().to_string(),
        tls.client_cert_file().display().to_string(),
        tls.client_key_file().display().to_string(),
    );
    let rules = "[[rule]]\nname = \"per-client\"\nkey = \"header:x-client\"\n\
                 algorithm = \"fixed_window\"\nlimit = 3\nwindow = \"1h\"\nblock_for = \"1m\"\n";
    // The password goes in the environment, not the file.
    let fg = launch_with(
        config(&store, rules),
        vec![("FLOODGATE_REDIS_URL", tls.url_as("floodgate", "s3cret"))],
    )
    .await;
    let http = Http::new();
    assert_eq!(http.get(&fg.admin_url("/readyz"), &[]).await.status, 200);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = http
            .get(&fg.url("/api/hello"), &[("x-client", "alice")])
            .await;
        statuses.push(r.status);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // The penalty block is listed; a manual block goes through too.
    let blocks = http.get(&fg.admin_url("/admin/blocks"), &[AUTH]).await;
    assert_eq!(blocks.status, 200);
    assert!(
        blocks.text().contains("header:x-client:alice"),
        "{}",
        blocks.text()
    );
    let added = http
        .post_json(
            &fg.admin_url("/admin/blocks"),
            &[AUTH],
            r#"{"target": "header:x-client:bob", "ttl": "10m", "reason": "test"}"#,
        )
        .await;
    assert_eq!(added.status, 201, "{}", added.text());
    let bob = http
        .get(&fg.url("/api/hello"), &[("x-client", "bob")])
        .await;
    assert_eq!(bob.status, 403);
    let denied = tls.cli(&["acl", "log"]);
    assert!(denied.trim().is_empty(), "floodgate was denied:\n{denied}");
    assert!(!fg.log().contains("s3cret"), "the password reached the log");
}
