//! floodgate as nginx's `auth_request`, with a real nginx configured by
//! deploy/nginx-auth-request.conf and deploy/nginx-auth-request-check.conf
//! in front of a real upstream: nginx asks floodgate about every request
//! and serves the upstream itself. Admitted requests reach the upstream
//! with floodgate's RateLimit headers on their answers; over the limit the
//! client gets 429 with Retry-After and the RateLimit headers, and the
//! upstream never sees the request; a block made through the admin API is
//! a 403; with floodgate gone nginx answers 500 (what nginx does with a
//! failed auth subrequest); and `/v1/authorize` itself answers as nginx
//! needs.

use std::time::Duration;

use crate::support::host::repo_root;
use crate::support::http::Http;
use crate::support::nginx::Nginx;
use crate::support::process::{AUTH, Floodgate, store_section};
use crate::support::upstream::Upstream;
use crate::support::wait::eventually;

const CONFIG: &str = "[server]\nlisten = \"{listen}\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
                      {store}\n[admin]\nlisten = \"{admin}\"\n\
                      [[rule]]\nname = \"per-client\"\nmatch = { path_prefix = \"/api/\" }\nkey = \"ip\"\n\
                      algorithm = \"fixed_window\"\nlimit = 3\nwindow = \"1h\"\n";

/// nginx with the deployed snippets, asking `floodgate` and serving
/// `upstream` at `/`.
fn nginx_for(floodgate: &Floodgate, upstream: &Upstream) -> Nginx {
    let deploy = repo_root().join("deploy");
    let server_part = std::fs::read_to_string(deploy.join("nginx-auth-request.conf"))
        .unwrap()
        .replace("127.0.0.1:8080", &floodgate.addr.to_string());
    let check = deploy.join("nginx-auth-request-check.conf");
    Nginx::start(&format!(
        "{server_part}\n    location / {{\n        include {};\n        proxy_pass {};\n    }}",
        check.display(),
        upstream.url()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_asks_floodgate_and_turns_its_answers_into_429_and_403() {
    let upstream = Upstream::start().await;
    let fg = Floodgate::launch(&CONFIG.replace("{store}", &store_section(None))).await;
    let nginx = nginx_for(&fg, &upstream);
    let http = Http::new();
    for left in [2, 1, 0] {
        let r = http.get(&format!("{}/api/hello", nginx.url()), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.header("x-upstream"),
            Some("echo"),
            "served by the upstream"
        );
        assert_eq!(
            r.header("ratelimit-policy"),
            Some(r#""per-client";q=3;w=3600"#)
        );
        assert!(
            r.header("ratelimit")
                .is_some_and(|v| v.contains(&format!("r={left}"))),
            "{:?}",
            r.headers
        );
    }
    let limited = http.get(&format!("{}/api/hello", nginx.url()), &[]).await;
    assert_eq!(limited.status, 429, "{}", limited.text());
    assert!(
        limited.retry_after().is_some_and(|s| s > 0),
        "{:?}",
        limited.headers
    );
    assert!(
        limited
            .header("ratelimit")
            .is_some_and(|v| v.contains("r=0"))
    );
    assert_eq!(
        limited.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(
        upstream.hits(),
        3,
        "the refused request reached the upstream"
    );
    // Paths outside the rule are not limited.
    assert_eq!(
        http.get(&format!("{}/other", nginx.url()), &[])
            .await
            .status,
        200
    );

    // A block made through the admin API: 403 from nginx.
    let r = http
        .post_json(
            &fg.admin_url("/admin/blocks"),
            &[AUTH],
            r#"{"target": "ip:127.0.0.1", "ttl": "1m", "reason": "test"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let blocked = eventually(Duration::from_secs(1), || async {
        http.get(&format!("{}/other", nginx.url()), &[])
            .await
            .status
            == 403
    })
    .await;
    assert!(
        blocked,
        "the block did not reach nginx's clients within 1 s"
    );

    // floodgate gone: nginx answers 500 (an auth subrequest that fails is
    // an error to nginx), and the upstream sees nothing.
    let hits = upstream.hits();
    drop(fg);
    let r = http.get(&format!("{}/api/hello", nginx.url()), &[]).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(upstream.hits(), hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorize_endpoint_answers_as_nginx_needs() {
    let fg = Floodgate::launch(&CONFIG.replace("{store}", &store_section(None))).await;
    let http = Http::new();
    let ask = async |headers: &[(&str, &str)]| http.get(&fg.url("/v1/authorize"), headers).await;
    let original = [
        ("x-original-uri", "/api/x?y=1"),
        ("x-original-method", "POST"),
    ];
    for _ in 0..3 {
        let r = ask(&original).await;
        assert_eq!(r.status, 204, "{}", r.text());
        assert!(r.header("ratelimit").is_some());
    }
    let over = ask(&original).await;
    assert_eq!(over.status, 401);
    assert_eq!(over.header("x-floodgate-status"), Some("429"));
    assert!(over.retry_after().is_some());
    // Another path, another method: outside the rule.
    assert_eq!(ask(&[("x-original-uri", "/health")]).await.status, 204);
    // nginx not set up: a clear 400 (nginx makes it a 500 for the client).
    let bad = ask(&[]).await;
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("X-Original-URI"), "{}", bad.text());
    assert_eq!(ask(&[("x-original-uri", "http://evil/")]).await.status, 400);
    assert_eq!(
        ask(&[("x-original-uri", "/a"), ("x-original-method", "G E T")])
            .await
            .status,
        400
    );
}
