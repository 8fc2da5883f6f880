//! Steady load from many clients that records what each request met:
//! [`Load`] (async, through [`Http`]) and [`ChurnLoad`] (threads, through
//! [`RawConn`]s, new or kept-alive connections).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::http::Http;
use super::raw::RawConn;

/// One request of a [`Load`].
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// The index of the client that sent it, in the order given to
    /// [`Load::start`].
    pub(crate) client: usize,
    /// When it was sent, from the start of the load.
    pub(crate) sent: Duration,
    /// When its answer was complete (or it failed), from the start of the load.
    pub(crate) done: Duration,
    /// The status; 0 when no answer came: a connection error, or no answer
    /// within [`Load::REQUEST_LIMIT`].
    pub(crate) status: u16,
    /// Whether the answer was `application/problem+json`.
    pub(crate) problem: bool,
    /// Whether the answer carried `Retry-After`.
    pub(crate) retry_after: bool,
}

impl Sample {
    pub(crate) fn latency(&self) -> Duration {
        self.done.saturating_sub(self.sent)
    }
}

/// A steady gateway load: one task per client, each sending `GET path` with
/// its own key in a header to its own instance, one request at a time with
/// a pause between them, until [`Load::stop`]. Every request is recorded.
pub(crate) struct Load {
    origin: Instant,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

/// One client of a [`Load`].
#[derive(Debug, Clone)]
pub(crate) struct LoadClient {
    /// The instance it sends to: `http://host:port`.
    pub(crate) base: String,
    /// The header carrying its identity, and its value.
    pub(crate) header: (String, String),
}

impl Load {
    /// How long a request may take before it is recorded as unanswered and
    /// given up: far beyond any bound a test asserts.
    pub(crate) const REQUEST_LIMIT: Duration = Duration::from_secs(10);

    /// Starts `clients`, each sending `GET path` then pausing `pause`.
    pub(crate) fn start(clients: Vec<LoadClient>, path: &str, pause: Duration) -> Self {
        let origin = Instant::now();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let http = Http::new();
        let tasks = clients
            .into_iter()
            .enumerate()
            .map(|(client, c)| {
                let (http, stop) = (http.clone(), stop.clone());
                let url = format!("{}{path}", c.base);
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let sent = origin.elapsed();
                        let headers = [(c.header.0.as_str(), c.header.1.as_str())];
                        let answer = tokio::time::timeout(
                            Self::REQUEST_LIMIT,
                            http.send("GET", &url, &headers, None),
                        )
                        .await;
                        let done = origin.elapsed();
                        let (status, problem, retry_after) = match answer {
                            Ok(Ok(r)) => (
                                r.status,
                                r.header("content-type") == Some("application/problem+json"),
                                r.retry_after().is_some(),
                            ),
                            _ => (0, false, false),
                        };
                        samples.push(Sample {
                            client,
                            sent,
                            done,
                            status,
                            problem,
                            retry_after,
                        });
                        tokio::time::sleep(pause).await;
                    }
                    samples
                })
            })
            .collect();
        Load {
            origin,
            stop,
            tasks,
        }
    }

    /// The instant the load started; [`Sample`] times count from it.
    pub(crate) fn origin(&self) -> Instant {
        self.origin
    }

    /// Now, as a [`Sample`] time.
    pub(crate) fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Stops every client after its request in flight; every request made,
    /// ordered by the time its answer came.
    pub(crate) async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.unwrap());
        }
        all.sort_by_key(|s| s.done);
        all
    }
}

/// How the clients of a [`ChurnLoad`] use connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// Connect, send one request, read the answer, close: like
    /// `requests.get` or `curl` in a loop.
    NewConnectionPerRequest,
    /// Keep one connection for request after request; open a new one only
    /// after an answer that says `Connection: close`. Nothing else is
    /// forgiven: a connection that closes without that, under a request,
    /// is a failed request.
    KeepAlive,
}

/// What the clients of a [`ChurnLoad`] saw.
#[derive(Debug, Default)]
pub(crate) struct ChurnCount {
    /// Requests answered 200.
    pub(crate) ok: u64,
    /// Requests that failed: no connection, an error writing or reading,
    /// no answer within 10 s, or a status other than 200.
    pub(crate) failed: u64,
    /// The first few failures, described.
    pub(crate) failures: Vec<String>,
    /// Answers that said `Connection: close`.
    pub(crate) told_to_close: u64,
}

/// Clients on threads of their own, each sending `GET path` to `addr` one
/// request after another (with `pause` between them) until
/// [`ChurnLoad::stop`], and counting every outcome: for what happens to
/// connections while the server restarts.
pub(crate) struct ChurnLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<std::thread::JoinHandle<ChurnCount>>,
}

impl ChurnLoad {
    pub(crate) fn start(
        addr: SocketAddr,
        path: &str,
        clients: usize,
        reuse: Reuse,
        pause: Duration,
    ) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                let path = path.to_owned();
                std::thread::spawn(move || churn(addr, &path, reuse, pause, &stop))
            })
            .collect();
        ChurnLoad { stop, clients }
    }

    /// Stops every client after its request in flight: their counts, summed.
    pub(crate) fn stop(self) -> ChurnCount {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = ChurnCount::default();
        for client in self.clients {
            let count = client.join().unwrap();
            all.ok += count.ok;
            all.failed += count.failed;
            all.told_to_close += count.told_to_close;
            all.failures.extend(count.failures);
        }
        all.failures.truncate(10);
        all
    }
}

fn churn(
    addr: SocketAddr,
    path: &str,
    reuse: Reuse,
    pause: Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> ChurnCount {
    let mut count = ChurnCount::default();
    let mut kept: Option<RawConn> = None;
    let fail = |count: &mut ChurnCount, what: String| {
        count.failed += 1;
        if count.failures.len() < 10 {
            count.failures.push(what);
        }
    };
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut conn = match kept.take() {
            Some(conn) => conn,
            None => match RawConn::try_connect(addr) {
                Ok(conn) => conn,
                Err(e) => {
                    fail(&mut count, format!("connect: {e}"));
                    continue;
                }
            },
        };
        match conn.get(path, &[]) {
            Ok(reply) if reply.status == 200 => {
                count.ok += 1;
                let close = reply
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                count.told_to_close += u64::from(close);
                if reuse == Reuse::KeepAlive && !close {
                    kept = Some(conn);
                }
            }
            Ok(reply) => fail(
                &mut count,
                format!("status {}: {}", reply.status, reply.text()),
            ),
            Err(e) => fail(&mut count, e),
        }
        std::thread::sleep(pause);
    }
    count
}
