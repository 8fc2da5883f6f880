//! Who the client is, through the real binary: forwarding headers count only
//! from trusted proxies, `[access]` allow and deny lists with IPv4 and IPv6
//! networks, and an IPv6 peer on a `[::1]` listener.

use crate::support::http::{Http, Reply};
use crate::support::process::Floodgate;

/// One rule, 2 requests per hour per client IP, on the demo API.
fn config(trusted_proxies: &str, access: &str) -> String {
    format!(
        "[server]\nlisten = \"{{listen}}\"\ntrusted_proxies = {trusted_proxies}\n\
         [admin]\nlisten = \"{{admin}}\"\n{access}\n\
         [[rule]]\nname = \"per-ip\"\nkey = \"ip\"\nalgorithm = \"sliding_log\"\nlimit = 2\nwindow = \"1h\"\n"
    )
}

async fn get(http: &Http, fg: &Floodgate, xff: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = xff.map(|v| ("x-forwarded-for", v)).into_iter().collect();
    http.get(&fg.url("/api/hello"), &headers).await
}

/// The counter `per-ip` keeps for `key`, through the admin API.
async fn remaining(http: &Http, fg: &Floodgate, key: &str) -> u64 {
    http.counters(fg, "per-ip", key).await["remaining"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_cannot_choose_its_identity_with_forwarding_headers() {
    let fg = Floodgate::launch(&config("[]", "")).await;
    let http = Http::new();
    let mut statuses = Vec::new();
    for spoof in ["1.2.3.4", "5.6.7.8", "9.10.11.12, 13.14.15.16"] {
        statuses.push(get(&http, &fg, Some(spoof)).await.status);
    }
    let forwarded = http
        .get(&fg.url("/api/hello"), &[("forwarded", "for=1.2.3.4")])
        .await;
    let real_ip = http
        .get(&fg.url("/api/hello"), &[("x-real-ip", "1.2.3.4")])
        .await;
    statuses.extend([forwarded.status, real_ip.status]);
    assert_eq!(
        statuses,
        [200, 200, 429, 429, 429],
        "every request counted on the peer, whatever it claimed"
    );
    assert_eq!(remaining(&http, &fg, "ip:127.0.0.1").await, 0);
    assert_eq!(
        remaining(&http, &fg, "ip:1.2.3.4").await,
        2,
        "the claimed address was never counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_rightmost_untrusted_address_counts() {
    let fg = Floodgate::launch(&config("[\"127.0.0.1/32\"]", "")).await;
    let http = Http::new();
    // The client wrote the left part; the trusted proxy (us, on loopback)
    // appended 1.2.3.4. The left part changes, the client does not.
    assert_eq!(get(&http, &fg, Some("6.6.6.6, 1.2.3.4")).await.status, 200);
    assert_eq!(get(&http, &fg, Some("7.7.7.7, 1.2.3.4")).await.status, 200);
    let third = get(&http, &fg, Some("1.2.3.4, 127.0.0.1")).await;
    assert_eq!(third.status, 429, "trusted hops are skipped from the right");
    // Another client behind the same proxy has its own counter.
    assert_eq!(get(&http, &fg, Some("1.2.3.4, 5.6.7.8")).await.status, 200);
    // Forwarded (RFC 7239) is read the same way when it is the header sent.
    let r = http
        .get(
            &fg.url("/api/hello"),
            &[("forwarded", "for=\"[2001:db8:1:2::9]:443\"")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(remaining(&http, &fg, "ip:1.2.3.4").await, 0);
    assert_eq!(remaining(&http, &fg, "ip:5.6.7.8").await, 1);
    assert_eq!(
        remaining(&http, &fg, "ip:2001:db8:1:2::/64").await,
        1,
        "an IPv6 client counts as its /64"
    );
    assert_eq!(
        remaining(&http, &fg, "ip:127.0.0.1").await,
        2,
        "the proxy itself is never the client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lists_with_ipv4_and_ipv6_networks() {
    let access = r#"[access]
allow = ["ip:198.51.100.0/24", "ip:2001:db8:900d::/48"]
deny = ["ip:203.0.113.0/24", "ip:2001:db8:bad::/48", "ip:192.0.2.66", "header:x-api-key:leaked"]
"#;
    let fg = Floodgate::launch(&config("[\"127.0.0.1/32\"]", access)).await;
    let http = Http::new();
    for denied in [
        "203.0.113.1",
        "203.0.113.254",
        "192.0.2.66",
        "2001:db8:bad::1",
        "2001:db8:bad:ffff::1",
        "[2001:db8:bad:1::2]:8443",
        "::ffff:203.0.113.9",
    ] {
        let r = get(&http, &fg, Some(denied)).await;
        assert_eq!(r.status, 403, "{denied}: {}", r.text());
        let problem = r.problem();
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("is on the deny list"),
            "{denied}: {problem}"
        );
    }
    let leaked = http
        .get(
            &fg.url("/api/hello"),
            &[("x-forwarded-for", "192.0.2.1"), ("x-api-key", "leaked")],
        )
        .await;
    assert_eq!(leaked.status, 403);
    leaked.problem();

    // The allow list bypasses every rule, far past the limit of 2.
    for allowed in ["198.51.100.7", "2001:db8:900d:42::1"] {
        for _ in 0..5 {
            let r = get(&http, &fg, Some(allowed)).await;
            assert_eq!(r.status, 200, "{allowed}: {}", r.text());
            assert_eq!(r.header("ratelimit"), None, "{allowed} bypasses the rules");
        }
    }

    // Neighbours just outside each network are ordinary clients.
    for ordinary in ["203.0.114.1", "2001:db8:bae::1", "192.0.2.67"] {
        let statuses = [
            get(&http, &fg, Some(ordinary)).await.status,
            get(&http, &fg, Some(ordinary)).await.status,
            get(&http, &fg, Some(ordinary)).await.status,
        ];
        assert_eq!(statuses, [200, 200, 429], "{ordinary}");
    }

    let metrics = http.get(&fg.admin_url("/metrics"), &[]).await.text();
    assert!(
        metrics.contains("floodgate_decisions_total{rule=\"\",outcome=\"denied\"} 8"),
        "{metrics}"
    );
    assert!(
        metrics.contains("floodgate_decisions_total{rule=\"\",outcome=\"bypassed\"} 10"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_peer_is_matched_by_ipv6_lists_and_grouped_by_its_prefix() {
    let http = Http::new();
    // ::1 is in ::/64, the identity per-ip counts it under.
    let limited = Floodgate::launch_on("[::1]", config("[]", "")).await;
    assert!(limited.addr.is_ipv6());
    let statuses = [
        get(&http, &limited, None).await.status,
        get(&http, &limited, None).await.status,
        get(&http, &limited, None).await.status,
    ];
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(remaining(&http, &limited, "ip:::/64").await, 0);

    let denied =
        Floodgate::launch_on("[::1]", config("[]", "[access]\ndeny = [\"ip:::1/128\"]\n")).await;
    let r = get(&http, &denied, None).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.problem()["detail"], "ip:::1/128 is on the deny list");

    let allowed =
        Floodgate::launch_on("[::1]", config("[]", "[access]\nallow = [\"ip:::/120\"]\n")).await;
    for _ in 0..4 {
        assert_eq!(get(&http, &allowed, None).await.status, 200);
    }
}
