//! The seed's own topology with floodgate beside the data path, end to end:
//! a real nginx in front of a Node.js app that PM2 runs in cluster mode (two
//! instances, support/node_app.js), nginx asking floodgate about every
//! request through `auth_request` as deploy/nginx-auth-request.conf and
//! deploy/nginx-auth-request-check.conf set it up, its auth subrequests
//! going round robin to an `upstream { }` block of two floodgate instances
//! that share a real Redis.
//!
//! One test, in phases (PM2 takes seconds to start): limits exact across the
//! two instances under concurrent clients, with 429, Retry-After and the
//! RateLimit headers reaching the client and the app seeing exactly the
//! admitted requests; a block made through one instance's admin API
//! refusing the client through nginx, on both instances, within 1 s, and
//! lifted likewise; one floodgate instance killed (nginx's default
//! `proxy_next_upstream error timeout` applies to the auth subrequest: it
//! tries the other instance, and the client never notices), then both (nginx
//! answers 500: an auth subrequest that fails is an error to nginx).
//!
//! The app appends every request it answers to a file, so what it saw is
//! checked against what the clients were admitted. The test's nginx also
//! passes the auth subrequest's `$upstream_addr` to the client as
//! `X-Auth-Upstream`: which floodgate instance decided, or both, in the
//! order nginx tried them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floodgate_testkit::unique_prefix;

use crate::support::host::{self, free_addr, repo_root};
use crate::support::http::{Http, Reply};
use crate::support::logs::LogsOnFailure;
use crate::support::nginx::Nginx;
use crate::support::pm2::{self, Pm2, Pm2Daemon, pids};
use crate::support::process::{AUTH, Floodgate, store_section};
use crate::support::raw::RawConn;
use crate::support::wait::wait_for;

const RULE: &str = "per-client";
/// Requests under /api/ each client may make per window.
const LIMIT: u64 = 10;
/// Clients sending at once in the limits phase.
const CLIENTS: usize = 4;
/// Requests each of them sends: more than twice its limit.
const SENT: usize = 25;
/// Connections each of them sends on at once.
const PER_CLIENT_AT_ONCE: usize = 5;
/// Node app instances PM2 runs.
const APP_INSTANCES: usize = 2;
/// What the issue asks of blocks and unblocks through nginx.
const PROPAGATION_BOUND: Duration = Duration::from_secs(1);

const CONFIG: &str = "[server]\nlisten = \"{listen}\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
                      {store}\n[admin]\nlisten = \"{admin}\"\n\
                      [[rule]]\nname = \"per-client\"\nmatch = { path_prefix = \"/api/\" }\n\
                      key = \"header:x-api-key\"\nalgorithm = \"sliding_log\"\nlimit = {limit}\nwindow = \"1h\"\n";

#[test]
fn nginx_asks_two_floodgates_on_redis_in_front_of_node_under_pm2() {
    let dir = host::temp_dir("auth-request-pm2");
    let mut logs = LogsOnFailure::default();
    let app = NodeApp::start(dir.path(), &mut logs);
    let config = CONFIG
        .replace(
            "{store}",
            &store_section(Some(&unique_prefix("auth-request-pm2"))),
        )
        .replace("{limit}", &LIMIT.to_string());
    let (a, b) = (Floodgate::start(&config), Floodgate::start(&config));
    let nginx = nginx_for(&[a.addr, b.addr], app.addr);
    logs.watch(nginx.error_log());
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    eprintln!(
        "nginx {} -> app {} (pids {:?}); auth_request -> floodgate {a_addr}, {b_addr}",
        nginx.addr, app.addr, app.pids
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let front = Front::new(&nginx);
    rt.block_on(async {
        limits_are_exact_across_both_instances(&front, &app, &a_addr, &b_addr).await;
        a_block_refuses_within_a_second(&front, &a, &b, &a_addr, &b_addr).await;
        drop(a);
        one_instance_down_is_ridden_out(&front, &a_addr, &b_addr).await;
        drop(b);
        both_down_is_a_500(&front, &nginx.error_log()).await;
    });

    // Whatever the phase, the app saw exactly the requests nginx admitted.
    let saw = app.saw();
    let admitted = front.admitted.lock().unwrap().clone();
    assert_eq!(
        saw.per_client, admitted,
        "the Node app saw (left) other requests than the clients were admitted (right)"
    );
    drop(nginx);
}

/// [`CLIENTS`] clients at once, each sending [`SENT`] requests under /api/
/// on [`PER_CLIENT_AT_ONCE`] connections: each is admitted exactly
/// [`LIMIT`], whichever instance decided, and refused the rest with 429,
/// Retry-After and the RateLimit headers; admitted answers come from both
/// app instances, with the RateLimit headers, decided by both floodgate
/// instances.
async fn limits_are_exact_across_both_instances(
    front: &Front,
    app: &NodeApp,
    a_addr: &str,
    b_addr: &str,
) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        for _ in 0..PER_CLIENT_AT_ONCE {
            let front = front.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("client-{client}");
                let mut replies = Vec::new();
                for _ in 0..SENT / PER_CLIENT_AT_ONCE {
                    replies.push((key.clone(), front.get(&key, "/api/items").await));
                }
                replies
            }));
        }
    }
    let mut by_client: BTreeMap<String, Vec<Reply>> = BTreeMap::new();
    for task in tasks {
        for (key, reply) in task.await.unwrap() {
            by_client.entry(key).or_default().push(reply);
        }
    }
    let took = started.elapsed();

    let (mut deciders, mut app_pids) = (BTreeSet::new(), BTreeSet::new());
    for (key, replies) in &by_client {
        let (admitted, refused): (Vec<&Reply>, Vec<&Reply>) =
            replies.iter().partition(|r| r.status == 200);
        assert_eq!(
            admitted.len() as u64,
            LIMIT,
            "{key}: statuses {:?}",
            replies.iter().map(|r| r.status).collect::<Vec<_>>()
        );
        // One decision per request, on one shared counter: each admitted
        // answer has a remaining of its own, LIMIT - 1 down to 0.
        let remaining: BTreeSet<u64> = admitted
            .iter()
            .map(|r| {
                r.ratelimit(RULE)
                    .unwrap_or_else(|| panic!("{key}: no RateLimit: {:?}", r.headers))
                    .0
            })
            .collect();
        assert_eq!(remaining, (0..LIMIT).collect(), "{key}: remaining values");
        for r in &admitted {
            assert_eq!(r.ratelimit_policy(RULE), Some((LIMIT, 3600)), "{key}");
            let pid = r.header("x-app-pid");
            assert!(pid.is_some(), "{key}: not answered by the app: {r:?}");
            app_pids.extend(pid.map(str::to_owned));
            deciders.insert(auth_upstream(r).to_owned());
        }
        for r in &refused {
            assert_eq!(r.status, 429, "{key}: {}", r.text());
            assert!(
                r.retry_after().is_some_and(|s| s > 0),
                "{key}: {:?}",
                r.headers
            );
            assert_eq!(r.ratelimit(RULE).map(|(left, _)| left), Some(0), "{key}");
            assert_eq!(r.ratelimit_policy(RULE), Some((LIMIT, 3600)), "{key}");
            assert_eq!(r.problem()["status"], 429);
            assert_eq!(r.header("x-app-pid"), None, "{key}: a 429 from the app");
        }
    }
    assert_eq!(
        deciders,
        BTreeSet::from([a_addr.to_owned(), b_addr.to_owned()]),
        "the auth subrequests did not go to both floodgate instances, one each"
    );
    let expected_pids: BTreeSet<String> = app.pids.iter().map(u32::to_string).collect();
    assert_eq!(
        app_pids, expected_pids,
        "the admitted requests were not answered by both PM2 instances"
    );
    // What the app saw of each client: exactly LIMIT requests under /api/.
    let saw = app.saw();
    for key in by_client.keys() {
        assert_eq!(
            saw.api.get(key).copied(),
            Some(LIMIT),
            "the app saw of {key}"
        );
    }
    eprintln!(
        "limits: {CLIENTS} clients x {SENT} requests ({PER_CLIENT_AT_ONCE} at once each) in {} ms: \
         {LIMIT} admitted each, the rest 429; decided by {deciders:?}, answered by app pids {app_pids:?}",
        took.as_millis()
    );
}

/// A block on one client made through instance `a`'s admin API: nginx
/// refuses it (403) on both instances within [`PROPAGATION_BOUND`] while
/// another client goes on; lifted through `b`'s, it is let back on both
/// within the same bound. On a path outside the rule, so that only the
/// block decides.
async fn a_block_refuses_within_a_second(
    front: &Front,
    a: &Floodgate,
    b: &Floodgate,
    a_addr: &str,
    b_addr: &str,
) {
    let (key, bystander, path) = ("blocked-client", "bystander", "/page");
    for _ in 0..2 {
        assert_eq!(front.get(key, path).await.status, 200);
    }
    let target = format!("header:x-api-key:{key}");
    let started = Instant::now();
    let r = front
        .http
        .post_json(
            &a.admin_url("/admin/blocks"),
            &[AUTH],
            &format!(r#"{{"target": "{target}", "ttl": "10m", "reason": "auth_request_pm2"}}"#),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let blocked = until_both_answer(front, key, path, 403, started, a_addr, b_addr).await;
    assert_eq!(front.get(bystander, path).await.status, 200, "a bystander");
    assert_eq!(
        front.get(key, "/api/items").await.status,
        403,
        "blocked under the rule too"
    );

    let started = Instant::now();
    let r = front
        .http
        .delete(&b.admin_url(&format!("/admin/blocks/{target}")), &[AUTH])
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let lifted = until_both_answer(front, key, path, 200, started, a_addr, b_addr).await;
    eprintln!(
        "block made through {a_addr}'s admin API: refused through nginx by both instances after {} ms \
         (first 403 after {} ms); lifted through {b_addr}'s: let back by both after {} ms",
        blocked.both.as_millis(),
        blocked.first.as_millis(),
        lifted.both.as_millis()
    );
}

/// When both floodgate instances first gave `key` the answer `status`.
struct Turned {
    /// After this long, the first answer with `status` (from either).
    first: Duration,
    /// After this long, both had given it.
    both: Duration,
}

/// Sends `key`'s requests to `path` through nginx until both instances
/// (`a_addr`, `b_addr`) have answered `status`; fails unless that is within
/// [`PROPAGATION_BOUND`] of `since`, or if an instance goes back on it.
async fn until_both_answer(
    front: &Front,
    key: &str,
    path: &str,
    status: u16,
    since: Instant,
    a_addr: &str,
    b_addr: &str,
) -> Turned {
    let mut turned: BTreeMap<String, Duration> = BTreeMap::new();
    let mut seen = Vec::new();
    while turned.len() < 2 && since.elapsed() < 5 * PROPAGATION_BOUND {
        let r = front.get(key, path).await;
        let at = since.elapsed();
        let decider = auth_upstream(&r).to_owned();
        assert!(
            decider == a_addr || decider == b_addr,
            "decided by {decider:?}: {r:?}"
        );
        seen.push((at.as_millis(), r.status, decider.clone()));
        if r.status == status {
            turned.entry(decider).or_insert(at);
        } else {
            assert!(
                !turned.contains_key(&decider),
                "{decider} went back on answering {status}: {seen:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        turned.len(),
        2,
        "not both floodgate instances answered {status} within {:?}: {seen:?}",
        5 * PROPAGATION_BOUND
    );
    let both = *turned.values().max().unwrap();
    assert!(
        both < PROPAGATION_BOUND,
        "both instances answered {status} only after {both:?}: {seen:?}"
    );
    Turned {
        first: *turned.values().min().unwrap(),
        both,
    }
}

/// One floodgate instance (`a_addr`) killed: every request is still decided
/// (by `b_addr`) and answered by the app, nginx having tried the dead
/// instance and gone on to the other (`X-Auth-Upstream: A, B`: the default
/// `proxy_next_upstream error timeout` at work on the auth subrequest), and
/// charged once.
async fn one_instance_down_is_ridden_out(front: &Front, a_addr: &str, b_addr: &str) {
    let key = "survivor";
    let mut deciders = Vec::new();
    for sent in 1..=6 {
        let r = front.get(key, "/api/items").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.header("x-app-pid").is_some(), "{r:?}");
        assert_eq!(
            r.ratelimit(RULE).map(|(left, _)| left),
            Some(LIMIT - sent),
            "charged once per request"
        );
        deciders.push(auth_upstream(&r).to_owned());
    }
    let retried = format!("{a_addr}, {b_addr}");
    assert!(
        deciders.contains(&retried),
        "nginx never tried the dead instance and then the other: {deciders:?}"
    );
    assert!(
        deciders.iter().all(|d| d == b_addr || *d == retried),
        "{deciders:?}"
    );
    eprintln!("one floodgate instance killed: 6 requests, all 200; X-Auth-Upstream {deciders:?}");
}

/// Both floodgate instances killed: nginx answers 500, because the auth
/// subrequest failed (its error log says so), and the app sees nothing
/// (checked at the end of the test).
async fn both_down_is_a_500(front: &Front, nginx_error_log: &Path) {
    let mut tried = Vec::new();
    for _ in 0..3 {
        let r = front.get("stranded", "/api/items").await;
        assert_eq!(r.status, 500, "{}", r.text());
        assert_eq!(r.header("x-app-pid"), None);
        tried.push(auth_upstream(&r).to_owned());
    }
    let log = std::fs::read_to_string(nginx_error_log).unwrap_or_default();
    assert!(
        log.contains("auth request unexpected status: 502"),
        "nginx's error log does not say the auth subrequest failed:\n{log}"
    );
    eprintln!("both floodgate instances killed: 3 requests, all 500; X-Auth-Upstream {tried:?}");
}

/// The auth subrequest's `$upstream_addr`: the floodgate instances nginx
/// tried, in order; "" when the answer does not say.
fn auth_upstream(r: &Reply) -> &str {
    r.header("x-auth-upstream").unwrap_or("")
}

/// The clients' side: requests through nginx as one client (`x-api-key`),
/// and how many of each client's were answered 200.
#[derive(Clone)]
struct Front {
    url: String,
    http: Http,
    admitted: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Front {
    fn new(nginx: &Nginx) -> Self {
        Front {
            url: nginx.url(),
            http: Http::new(),
            admitted: Arc::default(),
        }
    }

    async fn get(&self, key: &str, path: &str) -> Reply {
        let r = self
            .http
            .get(&format!("{}{path}", self.url), &[("x-api-key", key)])
            .await;
        if r.status == 200 {
            *self
                .admitted
                .lock()
                .unwrap()
                .entry(key.to_owned())
                .or_default() += 1;
        }
        r
    }
}

/// nginx as the shipped snippets set it up, with `floodgates` in an
/// `upstream { }` block in place of the snippet's one address, in front of
/// the app at `app`; it adds the auth subrequest's `$upstream_addr` to every
/// answer as `X-Auth-Upstream` (also at the server level, for the
/// snippet's 403 location, which has no `add_header` of its own).
fn nginx_for(floodgates: &[SocketAddr], app: SocketAddr) -> Nginx {
    let deploy = repo_root().join("deploy");
    let snippet = std::fs::read_to_string(deploy.join("nginx-auth-request.conf")).unwrap();
    assert!(
        snippet.contains("proxy_pass http://127.0.0.1:8080/v1/authorize;"),
        "deploy/nginx-auth-request.conf no longer asks floodgate at 127.0.0.1:8080"
    );
    let server_part = snippet.replace("127.0.0.1:8080", "floodgate");
    let check = deploy.join("nginx-auth-request-check.conf");
    let servers: String = floodgates
        .iter()
        .map(|a| format!("        server {a};\n"))
        .collect();
    // `upstream` belongs in `http`, and Nginx::start writes only inside
    // `server { }`: the server block is closed here, and the brace
    // Nginx::start ends the server block with closes the upstream block.
    Nginx::start(&format!(
        "{server_part}\n\
         \x20   add_header X-Auth-Upstream $auth_upstream always;\n\
         \x20   location / {{\n\
         \x20       include {};\n\
         \x20       auth_request_set $auth_upstream $upstream_addr;\n\
         \x20       add_header X-Auth-Upstream $auth_upstream always;\n\
         \x20       proxy_pass http://{app};\n\
         \x20   }}\n\
         }}\n\
         upstream floodgate {{\n{servers}",
        check.display(),
    ))
}

/// support/node_app.js run by PM2 in cluster mode, [`APP_INSTANCES`]
/// instances on one port; PM2 and the app are stopped on drop.
struct NodeApp {
    addr: SocketAddr,
    pids: Vec<u32>,
    seen_log: PathBuf,
    _daemon: Pm2Daemon,
}

/// What the app's log says it saw.
struct Seen {
    /// Requests of each client (`x-api-key`).
    per_client: BTreeMap<String, u64>,
    /// Requests under /api/ of each client.
    api: BTreeMap<String, u64>,
}

impl NodeApp {
    /// Starts it from an ecosystem file written in `dir` and waits until
    /// every instance has answered.
    fn start(dir: &Path, logs: &mut LogsOnFailure) -> Self {
        let addr = free_addr();
        let seen_log = dir.join("seen.log");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/server/support/node_app.js");
        let (out, err) = (dir.join("app-out.log"), dir.join("app-err.log"));
        let ecosystem = dir.join("ecosystem.config.js");
        let apps = serde_json::json!({ "apps": [{
            "name": "app",
            "script": script,
            "exec_mode": "cluster",
            "instances": APP_INSTANCES,
            "merge_logs": true,
            "out_file": out,
            "error_file": err,
            "env": { "PORT": addr.port().to_string(), "SEEN_LOG": seen_log },
        }]});
        std::fs::write(&ecosystem, format!("module.exports = {apps};\n")).unwrap();
        let pm2 = Pm2::new(&pm2::binary(), dir.join("pm2-home"), &[]);
        logs.watch(pm2.home.join("pm2.log"));
        logs.watch(err);
        let daemon = Pm2Daemon(pm2.clone());
        pm2.run_ok(&["start", &ecosystem.display().to_string()]);
        let instances = wait_for(
            Duration::from_secs(30),
            "PM2's app instances online",
            || {
                let list = pm2.instances();
                (list.len() == APP_INSTANCES && list.iter().all(|p| p.online)).then_some(list)
            },
        );
        let app = NodeApp {
            addr,
            pids: pids(&instances),
            seen_log,
            _daemon: daemon,
        };
        app.wait_until_every_instance_answers();
        app
    }

    /// Asks the app directly, a new connection each time (the cluster
    /// primary hands connections out in turn), until every instance has
    /// answered.
    fn wait_until_every_instance_answers(&self) {
        let mut answered = BTreeSet::new();
        wait_for(
            Duration::from_secs(30),
            "every app instance to answer",
            || {
                let pid = RawConn::try_connect(self.addr)
                    .ok()
                    .and_then(|mut c| c.get("/ready", &["Connection: close"]).ok())
                    .and_then(|r| r.header("x-app-pid").and_then(|p| p.parse::<u32>().ok()));
                answered.extend(pid);
                (answered.len() == APP_INSTANCES).then_some(())
            },
        );
        let expected: BTreeSet<u32> = self.pids.iter().copied().collect();
        assert_eq!(answered, expected, "app pids answering vs pm2 jlist");
    }

    fn saw(&self) -> Seen {
        let text = std::fs::read_to_string(&self.seen_log).unwrap_or_default();
        let (mut per_client, mut api) = (BTreeMap::new(), BTreeMap::new());
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let [_pid, client, _method, url] = fields[..] else {
                panic!("the app's log has a line of another form: {line:?}");
            };
            if client == "-" {
                continue;
            }
            *per_client.entry(client.to_owned()).or_default() += 1;
            if url.starts_with("/api/") {
                *api.entry(client.to_owned()).or_default() += 1;
            }
        }
        Seen { per_client, api }
    }
}
