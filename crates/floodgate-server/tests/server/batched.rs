//! `consistency = "batched"` through the binary: four gateway instances on
//! one Redis admit a hot client's limit and no more, a client spread
//! thinly over them gets all of it, and the refusals carry the usual
//! headers.

use std::sync::Arc;

use floodgate_testkit::{shared_redis_url, unique_prefix};

use crate::support::http::Http;
use crate::support::process::Floodgate;

const LIMIT: usize = 400;

fn config(prefix: &str) -> String {
    format!(
        "[server]\nlisten = \"{{listen}}\"\n\
         [store]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"\ntimeout = \"2s\"\n\
         [admin]\nlisten = \"{{admin}}\"\n\
         [[rule]]\nname = \"batched\"\nmatch = {{ path_prefix = \"/api/\" }}\n\
         key = \"header:x-api-key\"\nalgorithm = \"sliding_window\"\nlimit = {LIMIT}\n\
         window = \"1h\"\nconsistency = \"batched\"\n",
        shared_redis_url()
    )
}

async fn four_instances(prefix: &str) -> Arc<Vec<Floodgate>> {
    let mut instances = Vec::new();
    for _ in 0..4 {
        instances.push(Floodgate::launch(config(prefix)).await);
    }
    Arc::new(instances)
}

/// The most a sliding window of 1 h lets back in while a test runs (a few
/// seconds): when the test crosses the hour, the last window's count
/// weighs a little less. Less than one unit, which can round to one.
const SLIDE: usize = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_gateways_admit_a_hot_clients_limit_and_no_more() {
    let instances = four_instances(&unique_prefix("e2e-batched-hot")).await;
    let http = Http::new();
    // 2 000 requests of one client: 32 callers, each request to the next
    // instance.
    let mut callers = Vec::new();
    for c in 0..32 {
        let (instances, http) = (Arc::clone(&instances), http.clone());
        callers.push(tokio::spawn(async move {
            let mut admitted = 0;
            let mut refusal = None;
            for i in 0..(2_000 / 32) {
                let fg = &instances[(c + i) % instances.len()];
                let r = http
                    .get(&fg.url("/api/hello"), &[("x-api-key", "hot")])
                    .await;
                match r.status {
                    200 => admitted += 1,
                    429 => refusal = Some(r),
                    other => panic!("status {other}"),
                }
            }
            (admitted, refusal)
        }));
    }
    let mut admitted = 0;
    let mut refusal = None;
    for caller in callers {
        let (n, r) = caller.await.unwrap();
        admitted += n;
        refusal = refusal.or(r);
    }
    assert!(
        (LIMIT..=LIMIT + SLIDE).contains(&admitted),
        "{admitted} of 2000 admitted, limit {LIMIT}"
    );
    let refusal = refusal.expect("some requests were refused");
    assert!(refusal.retry_after().is_some_and(|s| s >= 1));
    assert_eq!(refusal.ratelimit("batched").map(|(r, _)| r), Some(0));
    assert_eq!(
        refusal.ratelimit_policy("batched"),
        Some((LIMIT as u64, 3600))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_spread_thinly_over_four_gateways_gets_its_whole_limit() {
    let instances = four_instances(&unique_prefix("e2e-batched-thin")).await;
    let http = Http::new();
    let mut admitted = 0;
    let mut last_remaining = None;
    for i in 0..(LIMIT + 100) {
        let fg = &instances[i % instances.len()];
        let r = http
            .get(&fg.url("/api/hello"), &[("x-api-key", "thin")])
            .await;
        if r.status == 200 {
            admitted += 1;
            last_remaining = r.ratelimit("batched").map(|(r, _)| r);
        }
    }
    assert!(
        (LIMIT..=LIMIT + SLIDE).contains(&admitted),
        "{admitted} admitted, limit {LIMIT}"
    );
    // The last admitted request saw (almost) nothing left.
    assert!(
        last_remaining.is_some_and(|r| r <= 4 * 25),
        "{last_remaining:?}"
    );
}
