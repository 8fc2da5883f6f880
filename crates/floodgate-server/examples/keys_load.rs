//! A load generator for `bench/keys_scale.sh`: pushes many distinct client
//! keys through the decision API (`POST /v1/check`), each key checked once,
//! over many keep-alive HTTP/1.1 connections.
//!
//! ```text
//! cargo run --release -p floodgate-server --example keys_load -- \
//!     --addr 127.0.0.1:8080 --rule keys --keys 10000000 [--connections 64] \
//!     [--prefix k] [--progress 10] [--verify ADMIN_ADDR --token TOKEN --stride 500]
//! ```
//!
//! Keys are `<prefix><n>` for n in 0..keys, handed out in order to whichever
//! connection is free. Every `--progress` seconds it prints a progress line
//! (`keys_load: t=<s> sent=<n> ...`); at the end a summary line with every
//! decision counted as allowed, refused or failed (any status but 200, or
//! a connection error).
//!
//! With `--verify`, it then reads the counters of every `stride`-th key
//! through the admin API (`GET /admin/rules/<rule>/keys/<key>`, which does
//! not count) and reports how many of those keys the store still holds: a
//! key that was checked once under a limit of 1 and is still held has
//! nothing `remaining`; a forgotten key has its whole quota again. Times
//! `stride`, that estimates the keys held.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

/// What the command line asked for.
struct Args {
    /// The main listener of the floodgate under load.
    addr: SocketAddr,
    /// The rule every check names.
    rule: String,
    /// How many distinct keys to check.
    keys: u64,
    /// Concurrent keep-alive connections.
    connections: usize,
    /// Keys are `<prefix><n>`.
    prefix: String,
    /// The admin listener, for `--verify`.
    verify: Option<SocketAddr>,
    /// The admin bearer token, for `--verify`.
    token: String,
    /// Every how many keys `--verify` reads one.
    stride: u64,
    /// Seconds between progress lines.
    progress: u64,
}

fn usage() -> ! {
    eprintln!(
        "usage: keys_load --addr HOST:PORT --rule RULE --keys N [--connections C] [--prefix P] \
         [--progress SECONDS] [--verify ADMIN_HOST:PORT --token TOKEN --stride S]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
        rule: String::new(),
        keys: 0,
        connections: 64,
        prefix: "k".into(),
        verify: None,
        token: String::new(),
        stride: 500,
        progress: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        let bad = |_| usage();
        match flag.as_str() {
            "--addr" => args.addr = value.parse().unwrap_or_else(bad),
            "--rule" => args.rule = value,
            "--keys" => args.keys = value.parse().unwrap_or_else(|_| usage()),
            "--connections" => args.connections = value.parse().unwrap_or_else(|_| usage()),
            "--prefix" => args.prefix = value,
            "--verify" => args.verify = Some(value.parse().unwrap_or_else(bad)),
            "--token" => args.token = value,
            "--stride" => args.stride = value.parse().unwrap_or_else(|_| usage()),
            "--progress" => args.progress = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if args.rule.is_empty()
        || args.keys == 0
        || args.connections == 0
        || args.stride == 0
        || args.progress == 0
    {
        usage();
    }
    args
}

/// Decisions counted so far, shared by every connection.
#[derive(Default)]
struct Tally {
    /// The next key to hand out.
    next: AtomicU64,
    /// Answered `200` with `"allowed": true`.
    allowed: AtomicU64,
    /// Answered `200` with `"allowed": false`.
    refused: AtomicU64,
    /// Any other status, or a connection that failed.
    failed: AtomicU64,
}

impl Tally {
    fn done(&self) -> u64 {
        self.allowed.load(Ordering::Relaxed)
            + self.refused.load(Ordering::Relaxed)
            + self.failed.load(Ordering::Relaxed)
    }
}

/// One HTTP/1.1 keep-alive connection to `addr`.
async fn connect<B>(addr: SocketAddr) -> Result<http1::SendRequest<B>, String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends `request` on `sender` once it is ready: the status and the whole
/// body.
async fn fetch<B>(
    sender: &mut http1::SendRequest<B>,
    request: http::Request<B>,
) -> Result<(u16, Bytes), String>
where
    B: hyper::body::Body + 'static,
{
    sender.ready().await.map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// Checks keys until none are left, on one connection (re-opened after a
/// failure).
async fn checker(args: Arc<Args>, tally: Arc<Tally>) {
    let uri = format!("http://{}/v1/check", args.addr);
    let mut sender: Option<http1::SendRequest<Full<Bytes>>> = None;
    loop {
        let n = tally.next.fetch_add(1, Ordering::Relaxed);
        if n >= args.keys {
            return;
        }
        if sender.is_none() {
            match connect(args.addr).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    eprintln!("keys_load: {e}");
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let body = format!(
            "{{\"rule\":\"{}\",\"key\":\"{}{n}\"}}",
            args.rule, args.prefix
        );
        let request = http::Request::post(uri.as_str())
            .header("host", "floodgate")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let Some(s) = sender.as_mut() else { continue };
        match fetch(s, request).await {
            Ok((200, body)) if contains(&body, b"\"allowed\":true") => {
                tally.allowed.fetch_add(1, Ordering::Relaxed);
            }
            Ok((200, _)) => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
            }
            Ok((status, body)) => {
                if tally.failed.fetch_add(1, Ordering::Relaxed) < 10 {
                    eprintln!(
                        "keys_load: status {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
            }
            Err(e) => {
                if tally.failed.fetch_add(1, Ordering::Relaxed) < 10 {
                    eprintln!("keys_load: {e}");
                }
                sender = None;
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Reads the counters of every `stride`-th key; returns (keys read, keys
/// still held).
async fn verify(args: &Args, admin: SocketAddr) -> Result<(u64, u64), String> {
    let mut sender: http1::SendRequest<Empty<Bytes>> = connect(admin).await?;
    let (mut read, mut held) = (0, 0);
    let mut n = 0;
    while n < args.keys {
        let request = http::Request::get(format!(
            "http://{admin}/admin/rules/{}/keys/{}{n}",
            args.rule, args.prefix
        ))
        .header("host", "floodgate")
        .header("authorization", format!("Bearer {}", args.token))
        .body(Empty::new())
        .unwrap();
        let (status, body) = fetch(&mut sender, request).await?;
        if status != 200 {
            return Err(format!(
                "GET counters of {}{n}: {status} {}",
                args.prefix,
                String::from_utf8_lossy(&body)
            ));
        }
        read += 1;
        if contains(&body, b"\"remaining\":0") {
            held += 1;
        }
        n += args.stride;
    }
    Ok((read, held))
}

#[tokio::main]
async fn main() {
    let args = Arc::new(parse_args());
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let workers: Vec<_> = (0..args.connections)
        .map(|_| tokio::spawn(checker(args.clone(), tally.clone())))
        .collect();
    let progress = tokio::spawn({
        let tally = tally.clone();
        let every = args.progress;
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(every));
            tick.tick().await;
            let mut last = 0;
            loop {
                tick.tick().await;
                let done = tally.done();
                println!(
                    "keys_load: t={}s sent={done} rate={}/s failed={}",
                    started.elapsed().as_secs(),
                    (done - last) / every,
                    tally.failed.load(Ordering::Relaxed)
                );
                last = done;
            }
        }
    });
    for w in workers {
        w.await.unwrap();
    }
    progress.abort();
    let took = started.elapsed();
    let done = tally.done();
    println!(
        "keys_load: done keys={done} allowed={} refused={} failed={} seconds={:.1} rate={:.0}/s",
        tally.allowed.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        took.as_secs_f64(),
        done as f64 / took.as_secs_f64()
    );
    if let Some(admin) = args.verify {
        match verify(&args, admin).await {
            Ok((read, held)) => println!(
                "keys_load: verify read={read} held={held} stride={} held_estimate={}",
                args.stride,
                held * args.stride
            ),
            Err(e) => {
                eprintln!("keys_load: verify failed: {e}");
                std::process::exit(1);
            }
        }
    }
}
