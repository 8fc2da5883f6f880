//! Hostile input against the real binary: huge and malformed forwarding
//! headers, invalid addresses, non-UTF-8 header values and request lines
//! (sent as raw bytes), very long paths, oversized bodies, and a flood of
//! distinct keys. Nothing may panic (every `Floodgate` fails its test when
//! its log says "panicked"), nothing may answer 5xx, the process must keep
//! serving, and its memory must stay bounded.

use crate::support::http::{Http, Reply};
use crate::support::logs::check_log_lines;
use crate::support::nginx::Nginx;
use crate::support::process::{AUTH, Floodgate, check_config};
use crate::support::raw::{RawConn, RawReply};
use crate::support::upstream::Upstream;

/// Behind a trusted loopback proxy; per-IP, per-key and per-path rules with
/// limits no test reaches; a memory store of at most 1000 keys.
fn config(upstream: &str) -> String {
    format!(
        "[server]\nlisten = \"{{listen}}\"\nupstream = \"{upstream}\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
         [store]\nbackend = \"memory\"\nmax_keys = 1000\n\
         [admin]\nlisten = \"{{admin}}\"\n\
         [[rule]]\nname = \"per-ip\"\nkey = \"ip\"\nlimit = 100000\nwindow = \"1h\"\n\
         [[rule]]\nname = \"per-key\"\nkey = \"header:x-api-key\"\nalgorithm = \"sliding_log\"\nlimit = 1000\nwindow = \"1h\"\n\
         [[rule]]\nname = \"per-path\"\nkey = [\"ip\", \"path\"]\nalgorithm = \"token_bucket\"\nlimit = 100000\nwindow = \"1h\"\n\
         [[rule]]\nname = \"flood\"\nmatch = {{ path_prefix = \"/flood/\" }}\nkey = \"ip\"\nalgorithm = \"fixed_window\"\nlimit = 1\nwindow = \"1h\"\n"
    )
}

/// How much of `per-ip` the client `key` has left.
async fn remaining(http: &Http, fg: &Floodgate, key: &str) -> u64 {
    http.counters(fg, "per-ip", key).await["remaining"]
        .as_u64()
        .unwrap()
}

async fn still_serves(http: &Http, fg: &Floodgate) {
    let r = http.get(&fg.url("/still/alive"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(http.get(&fg.admin_url("/healthz"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_huge_forwarding_headers_fall_back_to_the_peer() {
    let upstream = Upstream::start().await;
    let fg = Floodgate::launch(config(&upstream.url())).await;
    let http = Http::new();
    let before = remaining(&http, &fg, "ip:127.0.0.1").await;
    // More trusted hops than are ever walked (32): the client is unknown.
    let long_chain = format!("192.0.2.1, {}", vec!["127.0.0.1"; 40].join(", "));
    let malformed = [
        ("x-forwarded-for", "not-an-ip".to_owned()),
        ("x-forwarded-for", ",,,, ,".to_owned()),
        ("x-forwarded-for", "[::1".to_owned()),
        ("x-forwarded-for", "1.2.3.4:99999".to_owned()),
        ("x-forwarded-for", "999.1.1.1".to_owned()),
        ("x-forwarded-for", "1.2.3.4 5.6.7.8".to_owned()),
        ("x-forwarded-for", "\"1.2.3.4\"".to_owned()),
        ("x-forwarded-for", "unknown".to_owned()),
        ("x-forwarded-for", "fe80::1%eth0".to_owned()),
        ("x-forwarded-for", "1.2.3.4, garbage".to_owned()),
        ("x-forwarded-for", "x".repeat(8000)),
        ("x-forwarded-for", long_chain),
        ("forwarded", "for=\"[2001:db8::1\"".to_owned()),
        ("forwarded", "for=".to_owned()),
        ("forwarded", "for=\";;;,,,".to_owned()),
        ("forwarded", "for=\"\\".to_owned()),
        ("forwarded", format!("for=\"{}\"", "a".repeat(4000))),
        ("forwarded", "by=1.2.3.4;proto=http".to_owned()),
        ("x-real-ip", "300.300.300.300".to_owned()),
        ("x-real-ip", "".to_owned()),
    ];
    for (name, value) in &malformed {
        let r = http.get(&fg.url("/xff"), &[(name, value.as_str())]).await;
        assert_eq!(r.status, 200, "{name}: {value:.60}: {}", r.text());
    }
    assert_eq!(
        remaining(&http, &fg, "ip:127.0.0.1").await,
        before - malformed.len() as u64,
        "every unreadable chain counted on the peer itself"
    );

    // A chain of 10,000 hops (~110 KB): answered (or refused as too large),
    // never a crash.
    let huge = vec!["203.0.113.9"; 10_000].join(", ");
    match http
        .send("GET", &fg.url("/huge"), &[("x-forwarded-for", &huge)], None)
        .await
    {
        Ok(r) => assert!(
            r.status == 200 || r.status == 431,
            "huge X-Forwarded-For: {}",
            r.status
        ),
        Err(e) => assert!(
            e.contains("IncompleteMessage") || e.contains("reset") || e.contains("closed"),
            "{e}"
        ),
    }
    // An IPv4-mapped IPv6 client is the IPv4 client.
    http.get(&fg.url("/m"), &[("x-forwarded-for", "::ffff:198.51.100.4")])
        .await;
    assert!(remaining(&http, &fg, "ip:198.51.100.4").await < 100_000);
    still_serves(&http, &fg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_bytes_in_headers_and_request_lines() {
    let upstream = Upstream::start().await;
    let fg = Floodgate::launch(config(&upstream.url())).await;
    let addr = fg.addr;
    let replies = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for header in [
            b"X-Forwarded-For: \xff\xfe1.2.3.4".as_slice(),
            b"X-Forwarded-For: 1.2.3.4, \xc3\x28",
            b"Forwarded: for=\xff\xff",
            b"X-Real-IP: \xe2\x82",
            b"X-Api-Key: \xc3\x28\xa0\xa1",
            b"X-Api-Key: \xc3\x28\xa0\xa1",
            b"X-Api-Key: caf\xc3\xa9",
            b"X-Whatever: \x80\x81\x82",
        ] {
            let mut request = b"GET /bytes HTTP/1.1\r\nHost: test\r\n".to_vec();
            request.extend_from_slice(header);
            request.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
            let r = RawConn::connect(addr).roundtrip(&request);
            out.push((String::from_utf8_lossy(header).into_owned(), r));
        }
        out
    })
    .await
    .unwrap();
    let mut key_remaining = Vec::new();
    for (header, r) in &replies {
        let r = r.as_ref().unwrap_or_else(|e| panic!("{header}: {e}"));
        assert_eq!(r.status, 200, "{header}: {}", r.text());
        if header.starts_with("X-Api-Key: \u{fffd}(") {
            // RateLimit: "per-key";r=<remaining>;t=<seconds>
            key_remaining.push(r.header("ratelimit").and_then(|v| {
                v.split(',')
                    .find(|i| i.trim().starts_with("\"per-key\""))?
                    .split(';')
                    .find_map(|p| p.strip_prefix("r="))?
                    .parse::<u64>()
                    .ok()
            }));
        }
    }
    assert_eq!(key_remaining.len(), 2);
    assert_eq!(
        key_remaining,
        [Some(999), Some(998)],
        "the same invalid bytes are the same (hashed) key"
    );

    // Invalid bytes and controls where HTTP forbids them: a 4xx or a closed
    // connection, never a 5xx.
    let broken = tokio::task::spawn_blocking(move || {
        [
            b"GET /\xff\xfe HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".as_slice(),
            b"GET / HTTP/1.1\r\nHost: test\r\nX-A: a\x01b\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: test\r\nX-\xff: 1\r\nConnection: close\r\n\r\n",
            b"\xff\xfe\xfd\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: test\r\nContent-Length: -5\r\n\r\n",
        ]
        .iter()
        .map(|req| {
            let r = RawConn::connect(addr).roundtrip(req);
            (String::from_utf8_lossy(req).into_owned(), r)
        })
        .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (request, r) in &broken {
        if let Ok(r) = r {
            assert!(
                (400..500).contains(&r.status),
                "{request:?}: {} {}",
                r.status,
                r.text()
            );
        }
    }
    still_serves(&Http::new(), &fg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn very_long_paths_and_bodies_and_bad_admin_paths() {
    let upstream = Upstream::start().await;
    let fg = Floodgate::launch(config(&upstream.url())).await;
    let http = Http::new();
    for len in [300, 8_000, 60_000] {
        let path = format!("/{}", "p".repeat(len));
        let r = http.send("GET", &fg.url(&path), &[], None).await;
        match r {
            Ok(r) => {
                assert!(
                    r.status == 200 || r.status == 414 || r.status == 431,
                    "path of {len}: {}",
                    r.status
                );
                if r.status == 200 {
                    assert_eq!(r.json()["uri"].as_str().unwrap().len(), len + 1);
                    assert!(
                        r.ratelimit_policy("per-path").is_some() || r.header("ratelimit").is_some()
                    );
                }
            }
            Err(e) => panic!("path of {len}: {e}"),
        }
    }
    // A path key over 256 bytes is stored hashed, and still counts.
    let long = format!("/{}", "q".repeat(1000));
    let a = http.get(&fg.url(&long), &[]).await;
    let b = http.get(&fg.url(&long), &[]).await;
    let left = |r: &Reply| r.ratelimit("per-path").map(|x| x.0);
    if let (Some(x), Some(y)) = (left(&a), left(&b)) {
        assert_eq!(x, y + 1);
    }

    // Refused without being read, so the server closes those connections:
    // a client of their own keeps them out of the shared pool.
    let big = "x".repeat(3 << 20);
    for (what, url, headers) in [
        ("check", fg.url("/v1/check"), &[][..]),
        ("block", fg.admin_url("/admin/blocks"), &[AUTH][..]),
    ] {
        let r = Http::new().post_json(&url, headers, &big).await;
        assert!(
            (400..500).contains(&r.status),
            "3 MiB {what} body: {}",
            r.status
        );
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "{what}: {}",
            r.text()
        );
    }

    for path in [
        "/admin/blocks/%FF%FE",
        "/admin/blocks/ip%3A%00",
        "/admin/rules/per-ip/keys/%FF",
        "/admin/rules/%FF/keys/x",
        "/admin/rules/per-ip/keys/",
        "/admin/blocks/",
    ] {
        for method in ["GET", "DELETE"] {
            let r = http
                .send(method, &fg.admin_url(path), &[AUTH], None)
                .await
                .unwrap();
            assert!(r.status < 500, "{method} {path}: {} {}", r.status, r.text());
            if r.status >= 400 {
                assert_eq!(
                    r.header("content-type"),
                    Some("application/problem+json"),
                    "{method} {path}: {} {}",
                    r.status,
                    r.text()
                );
            }
        }
    }
    // A method the decision API does not take.
    let r = http.get(&fg.url("/v1/check"), &[]).await;
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    still_serves(&http, &fg).await;
}

/// `POST /v1/check` for rule `flood` and `key`, as bytes.
fn check_request(key: &str) -> Vec<u8> {
    let body = format!("{{\"rule\":\"flood\",\"key\":\"{key}\"}}");
    format!(
        "POST /v1/check HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends `requests` pipelined over 8 connections; returns every reply.
async fn flood(addr: std::net::SocketAddr, requests: Vec<Vec<u8>>) -> Vec<RawReply> {
    let per_connection = requests.len().div_ceil(8);
    let mut chunks = Vec::new();
    let mut requests = requests.into_iter().peekable();
    while requests.peek().is_some() {
        chunks.push(requests.by_ref().take(per_connection).collect::<Vec<_>>());
    }
    let threads: Vec<_> = chunks
        .into_iter()
        .map(|chunk| tokio::task::spawn_blocking(move || RawConn::connect(addr).pipeline(chunk)))
        .collect();
    let mut replies = Vec::new();
    for t in threads {
        replies.extend(t.await.unwrap().unwrap());
    }
    replies
}

fn allowed(reply: &RawReply) -> bool {
    assert_eq!(reply.status, 200, "{}", reply.text());
    serde_json::from_slice::<serde_json::Value>(&reply.body).unwrap()["allowed"] == true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_distinct_keys_keep_memory_bounded() {
    let upstream = Upstream::start().await;
    let fg = Floodgate::launch(config(&upstream.url())).await;
    let http = Http::new();
    still_serves(&http, &fg).await;
    let rss_before = fg.rss_kib();

    // 10,000 distinct keys through the decision API, as fast as the
    // server takes them; each key's first request is admitted.
    let keys: Vec<Vec<u8>> = (0..10_000)
        .map(|i| check_request(&format!("key-{i}")))
        .collect();
    let replies = flood(fg.addr, keys).await;
    assert_eq!(replies.len(), 10_000);
    assert!(replies.iter().all(allowed), "a new key was refused");

    // 1,000 distinct client addresses through the gateway.
    let clients: Vec<Vec<u8>> = (0..1_000u32)
        .map(|i| {
            format!(
                "GET /flood/x HTTP/1.1\r\nHost: test\r\nX-Forwarded-For: 10.0.{}.{}\r\n\r\n",
                i >> 8,
                i & 255
            )
            .into_bytes()
        })
        .collect();
    for reply in flood(fg.addr, clients).await {
        assert_eq!(reply.status, 200, "{}", reply.text());
    }

    // The store holds at most 1000 keys: of the first 2000, at least 1000
    // were forgotten, and are admitted again.
    let again: Vec<Vec<u8>> = (0..2_000)
        .map(|i| check_request(&format!("key-{i}")))
        .collect();
    let readmitted = flood(fg.addr, again)
        .await
        .iter()
        .filter(|r| allowed(r))
        .count();
    assert!(
        readmitted >= 1000,
        "only {readmitted} of 2000 old keys were evicted: the store holds more than max_keys"
    );

    let rss_after = fg.rss_kib();
    assert!(
        rss_after < 256 * 1024,
        "RSS {rss_after} KiB after the flood (was {rss_before} KiB)"
    );
    assert!(
        rss_after < rss_before + 128 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    let metrics = http.get(&fg.admin_url("/metrics"), &[]).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .text()
            .contains("floodgate_decisions_total{rule=\"flood\",outcome=\"allowed\"}")
    );
    still_serves(&http, &fg).await;
}

/// How long after `started` the server closed `conn` (a read returning end
/// of stream or an error), waiting at most `within`; `None` if still open.
async fn closed_after(
    conn: &mut tokio::net::TcpStream,
    started: std::time::Instant,
    within: std::time::Duration,
) -> Option<std::time::Duration> {
    read_to_close(conn, started, within).await.1
}

/// Everything `conn` receives until the peer closes it, and when (since
/// `started`) it did; `None` when still open after `within`.
async fn read_to_close(
    conn: &mut (impl tokio::io::AsyncRead + Unpin),
    started: std::time::Instant,
    within: std::time::Duration,
) -> (Vec<u8>, Option<std::time::Duration>) {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return (received, None),
            Ok(Ok(0) | Err(_)) => return (received, Some(started.elapsed())),
            // An answer (or a 408) before the close: keep reading.
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// Writes `bytes` one at a time, 100 ms apart, until done or the peer has
/// closed.
async fn trickle_out(conn: &mut (impl tokio::io::AsyncWrite + Unpin), bytes: &[u8]) {
    use tokio::io::AsyncWriteExt;
    for byte in bytes {
        if conn.write_all(std::slice::from_ref(byte)).await.is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `idle_timeout` closes a kept-alive connection once it has been quiet
/// that long with no request in flight, and `header_timeout` (shorter) does
/// not; a request waiting longer for its upstream, and an answer streamed
/// with longer pauses, go through whole. On a kept-alive connection, a
/// later request's head trickled a byte at a time is cut at the header
/// timeout from its first byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    let upstream = Upstream::start().await;
    let config = config(&upstream.url()).replacen(
        "[store]",
        "header_timeout = \"1s\"\nidle_timeout = \"2s\"\n[store]",
        1,
    );
    let fg = Floodgate::launch(config).await;
    let http = Http::new();
    let (header, idle) = (Duration::from_secs(1), Duration::from_secs(2));
    let slack = Duration::from_secs(3);

    let mut requests = Vec::new();
    for path in ["/api/quick", "/slow?ms=3000", "/drip?chunks=2&ms=2500"] {
        let mut conn = TcpStream::connect(fg.addr).await.unwrap();
        let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        conn.write_all(head.as_bytes()).await.unwrap();
        requests.push((path, conn, Instant::now()));
    }
    let waits: Vec<_> = requests
        .into_iter()
        .map(|(path, mut conn, started)| {
            tokio::spawn(async move {
                let (received, closed) =
                    read_to_close(&mut conn, started, Duration::from_secs(15)).await;
                (
                    path,
                    String::from_utf8_lossy(&received).into_owned(),
                    closed,
                )
            })
        })
        .collect();

    // One request answered, then the next one's head trickled.
    let (mut reader, mut writer) = TcpStream::connect(fg.addr).await.unwrap().into_split();
    writer
        .write_all(b"GET /api/first HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let trickle_started = Instant::now();
    let trickler = tokio::spawn(async move {
        trickle_out(
            &mut writer,
            b"GET /api/second HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa",
        )
        .await;
    });
    let trickle = tokio::spawn(async move {
        let (received, closed) = read_to_close(&mut reader, trickle_started, slack).await;
        (String::from_utf8_lossy(&received).into_owned(), closed)
    });

    for wait in waits {
        let (path, received, closed) = wait.await.unwrap();
        let closed = closed.unwrap_or_else(|| panic!("{path}: still open after 15 s"));
        assert!(received.starts_with("HTTP/1.1 200"), "{path}: {received}");
        // The whole answer, then the close: at least the idle timeout after
        // the answer's last byte, and not much later.
        let (least, whole) = match path {
            "/api/quick" => (idle, received.contains("\"uri\":\"/api/quick\"")),
            "/slow?ms=3000" => (
                Duration::from_millis(3000) + idle,
                received.ends_with("slow done"),
            ),
            // Two chunks, then the last, empty one.
            _ => (
                Duration::from_millis(5000) + idle,
                received.matches("\r\ndrip\n\r\n").count() == 2
                    && received.ends_with("\r\n0\r\n\r\n"),
            ),
        };
        assert!(whole, "{path}: not the whole answer: {received}");
        assert!(
            closed >= least && closed < least + slack,
            "{path}: closed after {closed:?}, expected from {least:?} to {:?}",
            least + slack
        );
    }

    let (received, closed) = trickle.await.unwrap();
    trickler.await.unwrap();
    let closed = closed.unwrap_or_else(|| panic!("trickle: still open: {received}"));
    assert_eq!(received.matches("HTTP/1.1 ").count(), 1, "{received}");
    assert!(received.starts_with("HTTP/1.1 200"), "{received}");
    // The trickle lasts over 5 s: the connection was cut while it went on,
    // at the header timeout from the head's first byte.
    assert!(
        closed >= header && closed < header + slack,
        "trickle: closed after {closed:?}"
    );
    still_serves(&http, &fg).await;
}

/// Slowloris: a connection that sends nothing, one that trickles its
/// request head a byte at a time, and one that stops inside the HTTP/2
/// preface are each closed once `header_timeout` has passed; the process
/// keeps serving, and a client that sends its head at once is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_cut_off_at_the_header_timeout() {
    use std::time::{Duration, Instant};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    let upstream = Upstream::start().await;
    let config = config(&upstream.url()).replacen("[store]", "header_timeout = \"1s\"\n[store]", 1);
    let fg = Floodgate::launch(config).await;
    let http = Http::new();
    let bound = Duration::from_secs(1);
    let slack = Duration::from_secs(3);

    let started = Instant::now();
    let mut silent = TcpStream::connect(fg.addr).await.unwrap();
    let mut preface = TcpStream::connect(fg.addr).await.unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    // The request line at once (the protocol is known), then one byte of a
    // header every 100 ms for 4 s.
    let mut trickle = TcpStream::connect(fg.addr).await.unwrap();
    trickle
        .write_all(b"GET /api/trickle HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let trickler = tokio::spawn(async move {
        trickle_out(&mut trickle, b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").await;
        trickle
    });
    for (name, conn) in [("silent", &mut silent), ("preface", &mut preface)] {
        let closed = closed_after(conn, started, bound + slack).await;
        let closed =
            closed.unwrap_or_else(|| panic!("{name}: still open after {:?}", bound + slack));
        assert!(
            closed >= bound,
            "{name}: closed after {closed:?}, before the bound"
        );
    }
    // The bound is 1 s from the connection's start.
    let mut trickle = trickler.await.unwrap();
    let closed = closed_after(&mut trickle, started, slack).await;
    let closed = closed.unwrap_or_else(|| panic!("trickle: still open"));
    assert!(
        closed < bound + slack,
        "trickle: closed only after {closed:?}"
    );

    // A head sent at once is answered.
    let addr = fg.addr;
    let prompt =
        tokio::task::spawn_blocking(move || RawConn::connect(addr).get("/still/alive", &[]))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(prompt.status, 200, "{}", prompt.text());
    still_serves(&http, &fg).await;
}

/// nginx routing `/api/` apart from everything else, as the API behind
/// floodgate would.
const NGINX_ROUTES: &str =
    "location /api/ { return 200 \"api\\n\"; }\n    location / { return 200 \"other\\n\"; }";

/// Spellings of paths under `/api/` and near it, sent as they are.
const SPELLINGS: [&str; 34] = [
    "/api/x",
    "/%61pi/x",
    "/%61%70%69/x",
    "/ap%69/x",
    "/api/%78",
    "/./api/x",
    "/./././api/x",
    "/%2e/api/x",
    "/x/../api/x",
    "/x/%2e%2e/api/x",
    "/x/%2E%2E/api/x",
    "/x/.%2e/api/x",
    "/x/y/../../api/x",
    "/x/../../api/x",
    "/../api/x",
    "/%2e%2e/api/x",
    "//api/x",
    "///api//x",
    "/api/./x",
    "/api/y/../x",
    "/api/x/..",
    "/api/x/%2e%2e",
    "/api/../api/x",
    "/%2Fapi/x",
    "/%2fapi/x",
    "/api%2Fx",
    "/x/..%2Fapi/x",
    "/%5Capi/x",
    "/API/x",
    "/%41PI/x",
    "/apix",
    "/api",
    "/api;/x",
    "/api%3B/x",
];

fn one_request(addr: std::net::SocketAddr, path: &str) -> Result<RawReply, String> {
    RawConn::connect(addr).get(path, &["Connection: close"])
}

fn is_problem(r: &RawReply) -> bool {
    r.header("content-type") == Some("application/problem+json")
}

/// Issue: path spellings walked past `path_prefix` rules and reached the
/// API behind. Each spelling is sent as it is, to nginx directly and through
/// floodgate in front of the same nginx: what nginx serves as `/api/`
/// through floodgate was counted by the `/api/` rule, what it serves as
/// anything else was not, and what nginx alone routes to `/api/` is either
/// counted or refused by floodgate (400) before it gets there.
#[test]
fn every_spelling_of_an_api_path_meets_the_api_rule() {
    let nginx = Nginx::start(NGINX_ROUTES);
    let fg = Floodgate::start(&format!(
        "[server]\nlisten = \"{{listen}}\"\nupstream = \"{}\"\n[admin]\nlisten = \"{{admin}}\"\n\
         [[rule]]\nname = \"api\"\nmatch = {{ path_prefix = \"/api/\" }}\nkey = \"global\"\nalgorithm = \"sliding_log\"\nlimit = 100000\nwindow = \"1h\"\n",
        nginx.url()
    ));
    let mut counted_total = 0;
    let mut report = Vec::new();
    for spelling in SPELLINGS {
        let direct = one_request(nginx.addr, spelling);
        let nginx_says_api = matches!(&direct, Ok(r) if r.status == 200 && r.text() == "api\n");
        let via = one_request(fg.addr, spelling).unwrap_or_else(|e| panic!("{spelling}: {e}"));
        let counted = via
            .header("ratelimit")
            .is_some_and(|v| v.starts_with("\"api\""));
        let served_api = via.status == 200 && via.text() == "api\n";
        report.push(format!(
            "{spelling:<18} nginx alone: {:<6} via floodgate: {} {}{}",
            direct.as_ref().map_or_else(
                |e| e.clone(),
                |r| if r.status == 200 {
                    r.text().trim().to_owned()
                } else {
                    r.status.to_string()
                }
            ),
            via.status,
            via.text().trim().chars().take(40).collect::<String>(),
            if counted { " (counted)" } else { "" }
        ));
        if via.status == 400 {
            assert!(is_problem(&via), "{spelling}: a 400 without problem+json");
            assert!(!counted, "{spelling}: refused, yet counted");
            continue;
        }
        assert_eq!(via.status, 200, "{spelling}: {}", via.text());
        assert_eq!(
            counted,
            served_api,
            "{spelling}: counted {counted}, nginx served {:?}",
            via.text()
        );
        if nginx_says_api {
            assert!(
                counted,
                "{spelling}: nginx routes it to /api/, floodgate did not count it"
            );
        }
        counted_total += u64::from(counted);
    }
    eprintln!("{}", report.join("\n"));
    let left: u64 = one_request(fg.addr, "/api/final")
        .unwrap()
        .header("ratelimit")
        .and_then(|v| v.split(";r=").nth(1))
        .and_then(|v| v.split(';').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert_eq!(
        left,
        100_000 - counted_total - 1,
        "one count per counted spelling"
    );
    assert!(
        counted_total >= 20,
        "only {counted_total} spellings reached /api/"
    );
}

/// The issue's own example: limit 2, five spellings of one path, five
/// clients' worth of `curl --path-as-is`: two admitted, three refused.
#[test]
fn a_limit_holds_across_spellings() {
    let nginx = Nginx::start(NGINX_ROUTES);
    let fg = Floodgate::start(&format!(
        "[server]\nlisten = \"{{listen}}\"\nupstream = \"{}\"\n[admin]\nlisten = \"{{admin}}\"\n\
         [[rule]]\nname = \"api\"\nmatch = {{ path_prefix = \"/api/\" }}\nkey = \"ip\"\nlimit = 2\nwindow = \"1h\"\n",
        nginx.url()
    ));
    let statuses: Vec<u16> = [
        "/api/x",
        "/%61pi/x",
        "/./api/x",
        "/x/../api/x",
        "/x/%2e%2e/api/x",
    ]
    .iter()
    .map(|p| one_request(fg.addr, p).unwrap().status)
    .collect();
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
}

fn keyed_config(upstream: &str) -> String {
    format!(
        "[server]\nlisten = \"{{listen}}\"\nupstream = \"{upstream}\"\n[admin]\nlisten = \"{{admin}}\"\n\
         [access]\nallow = [\"header:x-api-key:vip\"]\n\
         [[rule]]\nname = \"per-key\"\nmatch = {{ path_prefix = \"/api/\" }}\nkey = \"header:x-api-key\"\nlimit = 100\nwindow = \"1h\"\n\
         [[rule]]\nname = \"reads\"\nmatch = {{ path_prefix = \"/reads/\", methods = [\"GET\"] }}\nkey = \"ip\"\nlimit = 2\nwindow = \"1h\"\n"
    )
}

/// Issue: `x-api-key: real` and `x-api-key: r<i>` on one request made a
/// fresh counter each time, while the upstream read the first line. A
/// header that names the client, sent twice, is now a 400; nothing is
/// forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_header_sent_twice_is_refused() {
    let upstream = Upstream::start().await;
    let fg = Floodgate::launch(keyed_config(&upstream.url())).await;
    let http = Http::new();
    let before = upstream.hits();
    for i in 0..5 {
        let fresh = format!("r{i}");
        let r = http
            .send(
                "GET",
                &fg.url("/api/x"),
                &[("x-api-key", "real"), ("x-api-key", &fresh)],
                None,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert!(
            r.problem()["detail"]
                .as_str()
                .unwrap()
                .contains("x-api-key"),
            "{}",
            r.text()
        );
    }
    // The allow list reads the same header: a second line must not buy a bypass.
    let r = http
        .send(
            "GET",
            &fg.url("/other"),
            &[("x-api-key", "vip"), ("x-api-key", "me")],
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(upstream.hits(), before, "nothing forwarded");

    let r = http.get(&fg.url("/api/x"), &[("x-api-key", "real")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.ratelimit("per-key").map(|(left, _)| left), Some(99));
    // A repeated header nobody reads is the upstream's business.
    let r = http
        .send(
            "GET",
            &fg.url("/api/x"),
            &[("x-api-key", "real"), ("x-other", "1"), ("x-other", "2")],
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let metrics = http.get(&fg.admin_url("/metrics"), &[]).await.text();
    assert!(metrics.contains("outcome=\"malformed\""), "{metrics}");

    // `methods = ["GET"]` also meets HEAD, the same request without a body.
    let statuses: Vec<u16> = futures_statuses(&http, &fg, "HEAD", "/reads/x", 3).await;
    assert_eq!(statuses, [200, 200, 429]);
}

async fn futures_statuses(
    http: &Http,
    fg: &Floodgate,
    method: &str,
    path: &str,
    n: usize,
) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            http.send(method, &fg.url(path), &[], None)
                .await
                .unwrap()
                .status,
        );
    }
    out
}

/// Issue: a reload to a file with no token, or an empty file, left the
/// running 0.0.0.0 admin listener open. The token rule now holds for the
/// listener as bound, and a reload that would take a protection away is
/// refused whole.
#[test]
fn no_reload_opens_the_admin_api() {
    let with_token = "[server]\nlisten = \"{listen}\"\nupstream = \"http://127.0.0.1:9\"\n\
         [admin]\nlisten = \"0.0.0.0:{admin_port}\"\ntoken = \"test-admin-token\"\n\
         [[rule]]\nname = \"per-ip\"\nkey = \"ip\"\nlimit = 10\nwindow = \"1m\"\n";
    // The token comes from the file alone here.
    let fg = Floodgate::start_with(with_token, &[("FLOODGATE_ADMIN_TOKEN", "")]);
    let blocks = fg.admin_url("/admin/blocks");
    let status = |auth: Option<&str>| {
        let mut conn = RawConn::connect(fg.admin);
        let extra: Vec<String> = auth
            .map(|a| format!("Authorization: {a}"))
            .into_iter()
            .collect();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        conn.get("/admin/blocks", &extra).unwrap().status
    };
    assert_eq!(status(None), 401, "{blocks}");
    // The scheme is case-insensitive (RFC 9110 §11.1).
    for scheme in ["Bearer", "bearer", "BEARER"] {
        assert_eq!(
            status(Some(&format!("{scheme} test-admin-token"))),
            200,
            "{scheme}"
        );
    }

    let refusals = [
        // The issue's file: loopback listen (ignored until a restart), no token.
        "[server]\nlisten = \"{listen}\"\nupstream = \"http://127.0.0.1:9\"\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\
         [[rule]]\nname = \"per-ip\"\nkey = \"ip\"\nlimit = 10\nwindow = \"1m\"\n",
        // Empty.
        "",
        "# only a comment\n",
        // No upstream.
        "[server]\nlisten = \"{listen}\"\n[admin]\nlisten = \"0.0.0.0:{admin_port}\"\ntoken = \"test-admin-token\"\n\
         [[rule]]\nname = \"per-ip\"\nkey = \"ip\"\nlimit = 10\nwindow = \"1m\"\n",
        // No rule.
        "[server]\nlisten = \"{listen}\"\nupstream = \"http://127.0.0.1:9\"\n[admin]\nlisten = \"0.0.0.0:{admin_port}\"\ntoken = \"test-admin-token\"\n",
    ];
    for (i, config) in refusals.iter().enumerate() {
        fg.rewrite_config(config);
        fg.signal("HUP");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while fg.log().matches("config reload refused").count() < i + 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "reload {i} not refused:\n{}",
                fg.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(status(None), 401, "after reload {i}:\n{}", fg.log());
        let mut conn = RawConn::connect(fg.admin);
        let body = r#"{"target":"ip:0.0.0.0/0","ttl":"1m"}"#;
        let post = conn
            .roundtrip(format!("POST /admin/blocks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes())
            .unwrap();
        assert_eq!(post.status, 401, "a block without a token after reload {i}");
    }
    let log = fg.log();
    for reason in [
        "not a loopback address",
        "sets nothing",
        "no server.upstream",
        "no [[rule]]",
    ] {
        assert!(log.contains(reason), "no {reason:?} in the log:\n{log}");
    }
    // The old config still decides: a 10-per-minute rule on the upstream.
    assert!(!log.contains("config reloaded"), "{log}");

    let (code, _, err) = check_config("# nothing\n");
    assert_eq!(code, 1, "check-config of an empty file: {err}");
    assert!(err.contains("sets nothing"), "{err}");
}

/// The same under `--workers`: the supervisor weighs the new file against
/// the workers' config and the admin socket it bound, and replaces no
/// worker when the file would open the admin API.
#[test]
fn no_rolling_restart_opens_the_admin_api() {
    let with_token = "[server]\nlisten = \"{listen}\"\nupstream = \"http://127.0.0.1:9\"\n\
         [admin]\nlisten = \"0.0.0.0:{admin_port}\"\ntoken = \"test-admin-token\"\n\
         [[rule]]\nname = \"per-ip\"\nkey = \"ip\"\nlimit = 10\nwindow = \"1m\"\n";
    let fg = Floodgate::start_with_args(
        with_token,
        &["--workers", "2"],
        &[("FLOODGATE_ADMIN_TOKEN", "")],
    );
    let status = || {
        RawConn::connect(fg.admin)
            .get("/admin/blocks", &[])
            .unwrap()
            .status
    };
    assert_eq!(status(), 401);
    fg.rewrite_config(
        "[server]\nlisten = \"{listen}\"\nupstream = \"http://127.0.0.1:9\"\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\
         [[rule]]\nname = \"per-ip\"\nkey = \"ip\"\nlimit = 10\nwindow = \"1m\"\n",
    );
    fg.signal("HUP");
    assert!(
        fg.wait_for_log("config reload refused", std::time::Duration::from_secs(20)),
        "{}",
        fg.log()
    );
    for _ in 0..20 {
        assert_eq!(status(), 401, "{}", fg.log());
    }
    assert!(!fg.log().contains("rolling restart done"), "{}", fg.log());
}

/// Issue: a malformed chunked body was answered 502 "upstream could not be
/// reached", with an upstream-failure warning. It is the client's 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_body_is_the_clients_error_and_connect_is_refused() {
    let upstream = Upstream::start().await;
    let fg = Floodgate::launch(config(&upstream.url())).await;
    let http = Http::new();
    let before = remaining(&http, &fg, "ip:127.0.0.1").await;
    let addr = fg.addr;
    let replies = tokio::task::spawn_blocking(move || {
        let chunked = RawConn::connect(addr)
            .roundtrip(b"POST /chunks HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n")
            .unwrap();
        let connect = RawConn::connect(addr)
            .roundtrip(b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n")
            .unwrap();
        let trace = RawConn::connect(addr)
            .roundtrip(b"TRACE /x HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        (chunked, connect, trace)
    })
    .await
    .unwrap();
    let (chunked, connect, trace) = replies;
    assert_eq!(chunked.status, 400, "{}", chunked.text());
    assert!(is_problem(&chunked));
    for r in [&connect, &trace] {
        assert_eq!(r.status, 405, "{}", r.text());
        assert!(is_problem(r));
        assert!(
            r.header("allow").is_some_and(|a| a.contains("GET")),
            "{:?}",
            r.headers
        );
    }
    assert!(
        !fg.log().contains("upstream request failed"),
        "{}",
        fg.log()
    );
    // The chunked POST counted (it was forwarded); CONNECT and TRACE did not.
    assert_eq!(remaining(&http, &fg, "ip:127.0.0.1").await, before - 1);
    still_serves(&http, &fg).await;

    // The demo API's own errors are problem+json too.
    let demo = tokio::task::spawn_blocking(Floodgate::start_demo)
        .await
        .unwrap();
    let r = http
        .send("DELETE", &demo.url("/api/hello"), &[], None)
        .await
        .unwrap();
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
}

/// `Forwarded` and `X-Real-IP` reach the upstream only from a trusted
/// proxy: from anyone else they would name a client floodgate did not
/// believe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_of_untrusted_peers_are_not_passed_on() {
    let upstream = Upstream::start().await;
    let forged = [("forwarded", "for=192.0.2.60"), ("x-real-ip", "192.0.2.60")];
    for (trusted, expect_kept) in [("10.9.9.9/32", false), ("127.0.0.1/32", true)] {
        let fg = Floodgate::launch(format!(
            "[server]\nlisten = \"{{listen}}\"\nupstream = \"{}\"\ntrusted_proxies = [\"{trusted}\"]\n[admin]\nlisten = \"{{admin}}\"\n",
            upstream.url()
        ))
        .await;
        let r = Http::new().get(&fg.url("/echo"), &forged).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let headers = &r.json()["headers"];
        for (name, _) in forged {
            assert_eq!(
                headers.get(name).is_some(),
                expect_kept,
                "{name} with trusted {trusted}: {headers}"
            );
        }
    }
}

/// The log check every test's floodgate is held to refuses what the issue
/// found: a JSON line with `target` twice, and colour codes in a file.
#[test]
fn the_log_check_refuses_duplicate_keys_and_colour_codes() {
    let good = r#"{"timestamp":"t","level":"INFO","message":"block added","block":"ip:192.0.2.7","target":"floodgate_server::admin"}"#;
    assert_eq!(check_log_lines(good), Ok(()));
    let twice = r#"{"level":"INFO","target":"ip:192.0.2.7","nested":{"a":1},"target":"floodgate_server::admin"}"#;
    assert!(check_log_lines(twice).is_err());
    let nested_twice = r#"{"span":{"a":1,"a":2}}"#;
    assert!(check_log_lines(nested_twice).is_err());
    assert!(check_log_lines("2026-12-05 \u{1b}[32m INFO\u{1b}[0m serving").is_err());
}
