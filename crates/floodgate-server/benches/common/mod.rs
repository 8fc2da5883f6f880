//! What the server benchmarks share: a floodgate process started from the
//! binary cargo built, its CPU time read from /proc, and timed rounds.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Callers each way in the server benches.
pub(crate) const CALLERS: usize = 64;
/// Client addresses the callers ask about in turn.
pub(crate) const KEYS: u64 = 10_000;
/// The admin token every bench instance runs with.
pub(crate) const TOKEN: &str = "bench-admin-token";
/// The gateway benches' rule: every `/api/` request, per client address,
/// far from its limit.
pub(crate) const GATEWAY_RULE: &str = "\
[[rule]]
name = \"per-client\"
match = { path_prefix = \"/api/\" }
key = \"ip\"
algorithm = \"sliding_window\"
limit = 1000000000
window = \"1m\"
";

/// A running `floodgate serve`, killed on drop.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) http: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) grpc: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first: a supervisor stops its workers with it.
        floodgate_testkit::send_signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], floodgate_testkit::free_port()))
}

/// Starts floodgate with its three listeners on free ports and `rest`
/// (the `[store]`, `[[rule]]` ... sections) in its config; `token` for the
/// admin API.
pub(crate) fn start(rest: &str, token: &str) -> Server {
    start_with(rest, token, &[])
}

/// [`start`] with more arguments after `serve --config FILE`.
pub(crate) fn start_with(rest: &str, token: &str, args: &[&str]) -> Server {
    let (http, admin, grpc) = (free(), free(), free());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("floodgate.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"{http}\"\n[admin]\nlisten = \"{admin}\"\ntoken = \"{token}\"\n[grpc]\nlisten = \"{grpc}\"\n{rest}"
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_floodgate"))
        .args(["serve", "--config"])
        .arg(&path)
        .args(args)
        .env("FLOODGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while [http, admin, grpc]
        .iter()
        .any(|a| std::net::TcpStream::connect(a).is_err())
    {
        assert!(Instant::now() < deadline, "floodgate did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server {
        child,
        http,
        admin,
        grpc,
        _dir: dir,
    }
}

/// A process's CPU time so far (user + system), from /proc.
pub(crate) fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command's closing parenthesis; utime and stime are
    // the 14th and 15th of the line, in clock ticks (USER_HZ, 100).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// The CPU time so far of a process and of every process below it (a
/// supervisor's workers), from /proc.
pub(crate) fn tree_cpu(pid: u32) -> Duration {
    let children: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    cpu(pid) + children.into_iter().map(tree_cpu).sum::<Duration>()
}

/// A round's operations per second and the server's CPU per operation.
pub(crate) struct Round {
    pub(crate) rate: f64,
    pub(crate) cpu_us: f64,
}

/// Runs `round` (which returns how many operations it made) and reads the
/// CPU time of the server `pid` (and its workers) around it.
pub(crate) async fn timed<F: std::future::Future<Output = u64>>(pid: u32, round: F) -> Round {
    let (started, cpu_before) = (Instant::now(), tree_cpu(pid));
    let done = round.await as f64;
    let (elapsed, used) = (started.elapsed(), tree_cpu(pid).saturating_sub(cpu_before));
    Round {
        rate: done / elapsed.as_secs_f64(),
        cpu_us: used.as_secs_f64() * 1e6 / done,
    }
}

/// `turns` turns of two ways, `a` first on even turns and `b` first on odd
/// ones, so a machine whose speed drifts hits both alike: each turn's pair.
pub(crate) async fn alternate(
    turns: usize,
    mut a: impl AsyncFnMut() -> Round,
    mut b: impl AsyncFnMut() -> Round,
) -> Vec<(Round, Round)> {
    let mut rows = Vec::with_capacity(turns);
    for turn in 0..turns {
        rows.push(if turn % 2 == 0 {
            let first = a().await;
            (first, b().await)
        } else {
            let second = b().await;
            (a().await, second)
        });
    }
    rows
}

/// The medians over paired turns: each way's rate and CPU per operation,
/// and the second's over the first's, taken within each turn.
pub(crate) struct Medians {
    pub(crate) a: Round,
    pub(crate) b: Round,
    pub(crate) rate_ratio: f64,
    pub(crate) cpu_ratio: f64,
}

/// [`Medians`] of `rows`.
pub(crate) fn medians(rows: &[(Round, Round)]) -> Medians {
    let median = |f: &dyn Fn(&(Round, Round)) -> f64| {
        floodgate_testkit::paired::median(rows.iter().map(f).collect())
    };
    Medians {
        a: Round {
            rate: median(&|r| r.0.rate),
            cpu_us: median(&|r| r.0.cpu_us),
        },
        b: Round {
            rate: median(&|r| r.1.rate),
            cpu_us: median(&|r| r.1.cpu_us),
        },
        rate_ratio: median(&|r| r.1.rate / r.0.rate),
        cpu_ratio: median(&|r| r.1.cpu_us / r.0.cpu_us),
    }
}

/// A client address of 10.0.0.0/8 for `i`.
pub(crate) fn address(i: u64) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

/// Runs `callers` tasks for `round`, each calling `op(caller, i)` over and
/// over (`i`: the caller's number, then stepping by `callers`, so callers
/// spread over keys); how many calls were made. Calls in flight when the
/// round ends finish and count.
pub(crate) async fn calls_for<F, Fut>(callers: usize, round: Duration, op: F) -> u64
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let (op, done, stop) = (op.clone(), done.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = c as u64;
                while !stop.load(Ordering::Relaxed) {
                    op(c, i).await;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += callers as u64;
                }
            })
        })
        .collect();
    tokio::time::sleep(round).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed)
}

/// An HTTP/1.1 client keeping its connections alive.
pub(crate) type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

/// A client keeping up to `idle` connections per host alive.
pub(crate) fn http_client(idle: usize) -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(idle)
        .build_http()
}

/// Requests answered by the gateway at `addr` during `round`, from
/// `callers` callers asking for the demo API's `/api/hello` as `keys`
/// client addresses in turn (`X-Forwarded-For`; loopback is a trusted
/// proxy).
pub(crate) async fn gateway_calls(
    client: &HttpClient,
    addr: SocketAddr,
    callers: usize,
    keys: u64,
    round: Duration,
) -> u64 {
    use http_body_util::BodyExt;
    let url: http::Uri = format!("http://{addr}/api/hello").parse().unwrap();
    let client = client.clone();
    calls_for(callers, round, move |_, i| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let request = http::Request::get(url)
                .header("x-forwarded-for", address(i % keys))
                .body(http_body_util::Empty::new())
                .unwrap();
            let r = client.request(request).await.unwrap();
            assert_eq!(r.status(), 200);
            r.into_body().collect().await.unwrap();
        }
    })
    .await
}

/// A bench's `main`: runs `body` on a two-thread runtime under
/// `cargo bench`; under `cargo test` (no `--bench`) only says how to run it.
pub(crate) fn bench_main<F: std::future::Future<Output = ()>>(
    name: &str,
    script: &str,
    body: impl FnOnce() -> F,
) {
    if !std::env::args().any(|a| a == "--bench") {
        println!("{name}: run with `cargo bench` ({script})");
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(body());
}
