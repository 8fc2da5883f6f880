//! The accept loop of floodgate's listeners: HTTP/1.1 and HTTP/2 (cleartext,
//! detected per connection) through hyper, with bounds on how long a client
//! may take over a request's head, how large the head may be, how long a
//! connection may sit idle and how many connections are open at once, and
//! a drain that drops no request.
//!
//! The time bounds are kept by `Watched`, around each connection's socket,
//! with one timer per connection:
//!
//! - `[server] header_timeout` closes connections that open and then send
//!   nothing, or trickle a request line and headers a few bytes at a time
//!   (slowloris): without it each such connection holds a task and a file
//!   descriptor for as long as the client likes, and a few thousand of them
//!   exhaust the process. The first request's head must be complete within
//!   the bound from the connection's start (whichever the protocol); each
//!   later HTTP/1 request's head within the bound from its first byte.
//! - `[server] idle_timeout` closes a connection that has carried no bytes
//!   either way for that long while no request on it was in flight:
//!   kept-alive HTTP/1 connections between requests, HTTP/2 connections
//!   without streams. A request counts as in flight until its answer's body
//!   has been sent, so a slow upstream or a quiet stream is never cut. The
//!   default (75 s) outlasts a proxy's idle upstream connections (nginx keeps
//!   them 60 s), so the proxy, which knows when it is about to reuse one, is
//!   the side that closes them.
//!
//! hyper's own HTTP/1 header read timeout is not used: it runs from the
//! moment a kept-alive connection turns idle, which would make the header
//! timeout an idle timeout too, and cut a proxy's idle upstream connections
//! long before the proxy drops them.
//!
//! # Heads
//!
//! `[server] max_header_bytes` is hyper's HTTP/1 read buffer bound
//! (`max_buf_size`), so a connection holding a half-sent head costs at most
//! that much, and HTTP/2's header list bound. hyper answers an HTTP/1 head
//! that outgrows its buffer by itself, with a 431 and an empty body, and
//! has no hook to change that answer; so `Watched` recognises it on its
//! way out (a `431` status line written while no request is in flight and
//! the pending head has filled the buffer: no answer of the router's can be
//! written then) and sends a problem+json 431 in its place, then reads and
//! discards what the client still sends for a moment before closing, so
//! the client reads the answer instead of a reset. More than 100 header
//! fields (hyper's count bound) get hyper's bare 431; an HTTP/2 header list
//! over the bound, the h2 library's answer (the stream refused,
//! `REFUSED_STREAM`). HTTP/2 heads up to the bound are accepted, where
//! hyper's default allowed 16 KiB.
//!
//! # Connections
//!
//! `[server] max_connections` bounds the sockets open at once: at the cap
//! the loop stops accepting until one closes, so further clients wait in
//! the kernel's listen backlog instead of being refused, and each time it
//! does the `at_capacity` callback counts it (a Prometheus counter). A
//! connection holds its place until its socket closes.
//!
//! # Draining
//!
//! Once `stop` resolves the loop stops accepting, and every connection
//! answers at most one more request, marked `Connection: close` (HTTP/1),
//! then closes:
//!
//! - a request in flight finishes;
//! - a connection accepted before the drain whose first request has not
//!   arrived yet gets it answered, if it comes within `header_timeout` of
//!   the connection's start, as it would anyway. hyper's `GracefulShutdown`,
//!   used before, closed such a connection at once: the client's request,
//!   already on its way, met a reset, about once in 40,000 requests during
//!   rolling restarts with a new connection per request (Go's `net/http`
//!   gives a new connection 5 s for this reason);
//! - a kept-alive HTTP/1 connection between requests is closed once it has
//!   been quiet for [`DRAIN_IDLE_GRACE`], at once if it already has: a
//!   busy client's next request, maybe already sent, is answered (and the
//!   client moves to a new connection) instead of racing the close (Envoy
//!   likewise keeps HTTP/1 connections through its drain time, each closing
//!   after its next answer). A client quiet for longer can still send just
//!   as the connection closes, as with `idle_timeout`; the close is never
//!   a reset, as it happens only while there is nothing left to read;
//! - HTTP/2 connections get a GOAWAY (hyper's graceful shutdown), which
//!   tells the client which streams were not served and may be retried.
//!
//! `serve` returns when every connection is closed; the caller bounds that
//! with `[server] drain_timeout`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, Version, header};
use axum::response::Response;
use bytes::Bytes;
use floodgate_tower::{PeerAddr, Problem};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower::{Service, ServiceExt};

use crate::config::{MIN_MAX_HEADER_BYTES, ServerSettings};

/// Bytes of a connection after which its protocol is known: the length of
/// the HTTP/2 prior-knowledge preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
/// An HTTP/1 request line differs from it within its first bytes.
const PROTOCOL_KNOWN_AFTER: usize = 24;

/// During a drain, how long a kept-alive HTTP/1 connection between requests
/// may stay quiet before it is closed: long enough for a busy client's next
/// request (or one already on the wire) to arrive and be answered with
/// `Connection: close`, short enough that idle pools (a proxy's upstream
/// connections) do not hold the drain up. Never longer than
/// `header_timeout`.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);

/// How long a connection refused for its head's size is read from (and
/// what comes discarded) after the answer, before it is closed: closing a
/// socket with unread bytes sends a reset, and the client might lose the
/// answer with it.
const LINGER: Duration = Duration::from_secs(2);

/// Connections the admin listener serves at once: a few scrapers, health
/// checks and operators; kept apart from the gateway's so `/metrics` and
/// `/healthz` answer while the gateway is at its cap.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// File descriptors kept back when `max_connections` is sized from the fd
/// limit: standard streams, listeners, the store's connections, log files
/// and resolver sockets (64), and the admin listener's connections.
const FD_RESERVE: u64 = 64 + ADMIN_MAX_CONNECTIONS as u64;

/// The least `max_connections` sized from a small fd limit.
const MIN_DEFAULT_MAX_CONNECTIONS: usize = 32;

/// How long a connection may take over its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To send a request's head (`[server] header_timeout`).
    pub header: Duration,
    /// To stay open with no bytes either way and no request in flight
    /// (`[server] idle_timeout`).
    pub idle: Duration,
}

/// What one listener allows its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a connection may take over its parts.
    pub timeouts: Timeouts,
    /// The largest request head, in bytes (`[server] max_header_bytes`).
    pub max_header_bytes: usize,
    /// Connections open at once (`[server] max_connections`).
    pub max_connections: usize,
}

impl Limits {
    /// The main listener's limits: `max_connections` as configured, or
    /// sized from this process's file descriptor limit (see
    /// [`default_max_connections`]).
    pub fn gateway(server: &ServerSettings) -> Self {
        let fd_limit = fd_limit();
        let proxying = server.upstream.is_some();
        let max_connections = match server.max_connections {
            Some(n) => {
                let n = usize::try_from(n.get()).unwrap_or(usize::MAX);
                if let Some(limit) = fd_limit
                    && n > default_max_connections(Some(limit), proxying)
                {
                    tracing::warn!(
                        max_connections = n,
                        fd_limit = limit,
                        "server.max_connections is more than the file descriptor limit allows: accepting or reaching the upstream will fail first (raise LimitNOFILE)"
                    );
                }
                n
            }
            None => default_max_connections(fd_limit, proxying),
        };
        Limits {
            timeouts: timeouts(server),
            max_header_bytes: server.max_header_bytes,
            max_connections,
        }
    }

    /// The admin listener's limits: the gateway's, but at most
    /// [`ADMIN_MAX_CONNECTIONS`] connections.
    pub fn admin(server: &ServerSettings) -> Self {
        Limits {
            timeouts: timeouts(server),
            max_header_bytes: server.max_header_bytes,
            max_connections: ADMIN_MAX_CONNECTIONS,
        }
    }
}

fn timeouts(server: &ServerSettings) -> Timeouts {
    Timeouts {
        header: server.header_timeout,
        idle: server.idle_timeout,
    }
}

/// The soft `RLIMIT_NOFILE` of this process; `None` when unlimited.
fn fd_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// `max_connections` when the config leaves it out: the file descriptor
/// limit less 128 (`FD_RESERVE`), halved when proxying (each client connection
/// may hold an upstream connection too), and at least
/// 32 (`MIN_DEFAULT_MAX_CONNECTIONS`). An unlimited fd limit counts as
/// 1,048,576, Linux's default ceiling (`fs.nr_open`).
pub fn default_max_connections(fd_limit: Option<u64>, proxying: bool) -> usize {
    let limit = fd_limit.unwrap_or(1 << 20);
    let per_connection = if proxying { 2 } else { 1 };
    let budget = limit.saturating_sub(FD_RESERVE) / per_connection;
    usize::try_from(budget)
        .unwrap_or(usize::MAX)
        .max(MIN_DEFAULT_MAX_CONNECTIONS)
}

/// Serves `router` on `listener` until `stop` resolves, then stops accepting
/// (and calls `stopped_accepting`) and drains: every open connection
/// answers at most one more request and closes (see the module's
/// documentation); returns once all are closed. `at_capacity` is called
/// each time `limits.max_connections` stops the loop from accepting.
/// Every request carries its TCP peer as a [`PeerAddr`].
pub async fn serve<S>(
    listener: TcpListener,
    router: S,
    limits: Limits,
    at_capacity: impl Fn(),
    stop: impl Future<Output = ()>,
    stopped_accepting: impl FnOnce(),
) where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    // Both time bounds are `Watched`'s (see above); hyper's HTTP/1 header
    // read timeout, on by default once a timer is set, stays off.
    builder
        .http1()
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(MIN_MAX_HEADER_BYTES));
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    // `acquire_many` takes a u32: the drain waits for every place back.
    let places = limits
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let open = Arc::new(Semaphore::new(places));
    let (drain, _) = watch::channel(false);
    let mut stop = pin!(stop);
    loop {
        let place = match Arc::clone(&open).try_acquire_owned() {
            Ok(place) => place,
            Err(_) => {
                at_capacity();
                tracing::debug!(
                    max_connections = places,
                    "at max_connections: not accepting until a connection closes"
                );
                tokio::select! {
                    biased;
                    () = &mut stop => break,
                    place = Arc::clone(&open).acquire_owned() => match place {
                        Ok(place) => place,
                        Err(_) => break,
                    },
                }
            }
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed("HTTP", &e).await;
                    continue;
                }
            },
        };
        spawn_connection(
            &builder,
            &router,
            &limits,
            (stream, peer),
            place,
            drain.subscribe(),
        );
    }
    drop(listener);
    stopped_accepting();
    drain.send_replace(true);
    // Each connection gives its place back when its socket closes.
    let _ = open
        .acquire_many(u32::try_from(places).unwrap_or(u32::MAX))
        .await;
}

/// Serves one accepted connection on a task of its own, until it closes;
/// once `drain` turns true, drains it (see the module's documentation).
fn spawn_connection<S>(
    builder: &Builder<TokioExecutor>,
    router: &S,
    limits: &Limits,
    (stream, peer): (TcpStream, SocketAddr),
    place: OwnedSemaphorePermit,
    mut drain: watch::Receiver<bool>,
) where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let service = {
        let (router, activity) = (router.clone(), Arc::clone(&activity));
        tower::service_fn(move |mut request: Request<_>| {
            request.extensions_mut().insert(PeerAddr(peer));
            let http1 = request.version() < Version::HTTP_2;
            let in_flight = InFlight::new(&activity);
            let answer = router.clone().oneshot(request.map(Body::new));
            async move {
                let mut response: Response = answer.await?;
                if http1 && in_flight.draining() {
                    mark_last(&mut response);
                }
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(Answering {
                        body,
                        _in_flight: in_flight,
                    })
                }))
            }
        })
    };
    let io = TokioIo::new(Watched::new(stream, limits, Arc::clone(&activity), place));
    let connection = builder
        .serve_connection_with_upgrades(io, TowerToHyperService::new(service))
        .into_owned();
    tokio::spawn(async move {
        let mut connection = pin!(connection);
        let ended = tokio::select! {
            biased;
            // An error means the loop is gone: drain all the same.
            _ = drain.wait_for(|draining| *draining) => None,
            ended = connection.as_mut() => Some(ended),
        };
        let ended = match ended {
            Some(ended) => ended,
            None => {
                // HTTP/1 drains through `Watched` and the service (see
                // the module's documentation), once they see this.
                let _ = activity.drain_began.set(Instant::now());
                loop {
                    match activity.protocol() {
                        Protocol::Http2 => {
                            connection.as_mut().graceful_shutdown();
                            break connection.as_mut().await;
                        }
                        Protocol::Http1 => break connection.as_mut().await,
                        // Shutting down before the protocol is known would
                        // close the connection under its first request.
                        Protocol::Unknown => tokio::select! {
                            ended = connection.as_mut() => break ended,
                            () = activity.protocol_known.notified() => {}
                        },
                    }
                }
            }
        };
        if let Err(e) = ended {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    });
}

/// Marks an HTTP/1 answer as the connection's last: hyper then closes the
/// connection after it, and the client knows not to send another request
/// on it. A protocol switch (101) keeps its own `Connection` header.
fn mark_last(response: &mut Response) {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// After a failed `accept`: a connection that failed before it was accepted
/// concerns that client only; anything else (out of file descriptors, say)
/// would fail again at once, so the loop pauses instead of spinning. `what`
/// names the listener in the log ("HTTP", "gRPC").
pub(crate) async fn accept_failed(what: &str, e: &io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, listener = what, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// What a connection's socket and its requests share.
#[derive(Default)]
struct Activity {
    /// Requests whose answer has not been sent in full.
    in_flight: AtomicUsize,
    /// Requests whose head hyper has read and handed on.
    started: AtomicU64,
    /// The connection's [`Protocol`], once its first bytes tell.
    protocol: AtomicU8,
    /// Woken when `protocol` becomes known (a drain waits for it).
    protocol_known: Notify,
    /// When this connection learnt of the drain.
    drain_began: OnceLock<Instant>,
}

/// What a connection speaks, as told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Unknown = 0,
    Http1 = 1,
    Http2 = 2,
}

impl Activity {
    fn protocol(&self) -> Protocol {
        match self.protocol.load(Ordering::Acquire) {
            1 => Protocol::Http1,
            2 => Protocol::Http2,
            _ => Protocol::Unknown,
        }
    }

    fn set_protocol(&self, protocol: Protocol) {
        self.protocol.store(protocol as u8, Ordering::Release);
        self.protocol_known.notify_one();
    }

    fn in_flight(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }
}

/// Counts a request in flight until dropped (with its answer's body).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.started.fetch_add(1, Ordering::Relaxed);
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(activity))
    }

    /// Whether the connection is draining: this answer is its last.
    fn draining(&self) -> bool {
        self.0.drain_began.get().is_some()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An answer's body, its request counted in flight until it is done.
struct Answering {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Answering {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The HTTP/2 prior-knowledge preface.
const HTTP2_PREFACE: &[u8; PROTOCOL_KNOWN_AFTER] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection's socket under the time bounds and the drain (see the
/// module's documentation): a read fails with `TimedOut` once a bound has
/// passed. It also puts a problem+json answer in place of hyper's bare 431,
/// and holds the connection's place under `max_connections`.
struct Watched {
    io: TcpStream,
    timeouts: Timeouts,
    /// `max_header_bytes`: a pending head this large is one hyper refuses.
    max_header_bytes: usize,
    /// The connection's first bytes, until the protocol is known.
    first: [u8; PROTOCOL_KNOWN_AFTER],
    received: usize,
    /// The request head being received: since when, and the value of
    /// `Activity::started` then (the head is complete once it moves).
    head: Option<(Instant, u64)>,
    /// Bytes of the pending head received so far.
    head_bytes: usize,
    /// When bytes last went either way.
    last_io: Instant,
    /// Whether the drain has been applied to the deadlines.
    drain_noted: bool,
    /// Fires at or before the earliest deadline; re-armed when early.
    timer: Pin<Box<Sleep>>,
    activity: Arc<Activity>,
    /// Once hyper refused a head as too large: the answer sent instead.
    refusal: Option<Refusal>,
    /// The connection's place under `max_connections`, given back when the
    /// socket closes.
    _place: OwnedSemaphorePermit,
}

/// The problem+json 431 that replaces hyper's bare one.
struct Refusal {
    answer: Vec<u8>,
    /// Bytes of `answer` written so far.
    sent: usize,
    /// Whether the write side is shut and the rest is being read away.
    lingering: bool,
}

impl Refusal {
    fn new(max_header_bytes: usize) -> Self {
        let body = Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request line and headers are larger than this server accepts ({max_header_bytes} bytes)"
            ),
        )
        .to_json();
        let answer = format!(
            "HTTP/1.1 431 Request Header Fields Too Large\r\n\
             content-type: application/problem+json\r\n\
             content-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
        Refusal {
            answer: answer.into_bytes(),
            sent: 0,
            lingering: false,
        }
    }
}

impl Watched {
    fn new(
        io: TcpStream,
        limits: &Limits,
        activity: Arc<Activity>,
        place: OwnedSemaphorePermit,
    ) -> Self {
        let now = Instant::now();
        let timeouts = limits.timeouts;
        Watched {
            io,
            timeouts,
            max_header_bytes: limits.max_header_bytes.max(MIN_MAX_HEADER_BYTES),
            first: [0; PROTOCOL_KNOWN_AFTER],
            received: 0,
            head: Some((now, 0)),
            head_bytes: 0,
            last_io: now,
            drain_noted: false,
            timer: Box::pin(tokio::time::sleep_until(
                now + timeouts.header.min(timeouts.idle),
            )),
            activity,
            refusal: None,
            _place: place,
        }
    }

    fn http2(&self) -> bool {
        self.activity.protocol() == Protocol::Http2
    }

    /// Notes bytes just read: the protocol once known, and the start and
    /// size of an HTTP/1 request head when none was in flight.
    fn note_read(&mut self, bytes: &[u8]) {
        let now = Instant::now();
        self.last_io = now;
        if self.received < PROTOCOL_KNOWN_AFTER {
            let take = bytes.len().min(PROTOCOL_KNOWN_AFTER - self.received);
            self.first[self.received..self.received + take].copy_from_slice(&bytes[..take]);
            self.received += take;
            if self.first[..self.received] != HTTP2_PREFACE[..self.received] {
                if self.activity.protocol() == Protocol::Unknown {
                    self.activity.set_protocol(Protocol::Http1);
                }
            } else if self.received == PROTOCOL_KNOWN_AFTER {
                // HTTP/2 requests are streams: the preface was the head.
                self.activity.set_protocol(Protocol::Http2);
                self.head = None;
            }
        }
        if self.http2() || self.activity.in_flight() {
            return;
        }
        let started = self.activity.started.load(Ordering::Relaxed);
        if matches!(self.head, Some((_, seen)) if seen == started) {
            self.head_bytes = self.head_bytes.saturating_add(bytes.len());
            return;
        }
        self.head = Some((now, started));
        self.head_bytes = bytes.len();
        let due = now + self.timeouts.header;
        if due < self.timer.deadline() {
            self.timer.as_mut().reset(due);
        }
    }

    /// Whether `first`, the start of a write, is hyper refusing the
    /// pending head as too large: a 431 while no request is in flight and
    /// the head has filled hyper's buffer. No answer of the router's can
    /// be written then: each holds its request in flight until sent.
    fn is_head_refusal(&self, first: &[u8]) -> bool {
        let started = self.activity.started.load(Ordering::Relaxed);
        (first.starts_with(b"HTTP/1.1 431 ") || first.starts_with(b"HTTP/1.0 431 "))
            && !self.http2()
            && !self.activity.in_flight()
            && matches!(self.head, Some((_, seen)) if seen == started)
            && self.head_bytes >= self.max_header_bytes
    }

    /// A write of hyper's: passed on, or, once hyper refused the head,
    /// swallowed (the refusal goes out instead, on flush).
    fn write(
        &mut self,
        cx: &mut Context<'_>,
        first: &[u8],
        len: usize,
        write: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if self.refusal.is_none() && self.is_head_refusal(first) {
            tracing::debug!(
                max_header_bytes = self.max_header_bytes,
                "request head too large: 431"
            );
            self.refusal = Some(Refusal::new(self.max_header_bytes));
        }
        if self.refusal.is_some() {
            return Poll::Ready(Ok(len));
        }
        let written = write(Pin::new(&mut self.io), cx);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.last_io = Instant::now();
        }
        written
    }

    /// Writes what is left of the refusal, if any.
    fn send_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(refusal) = self.refusal.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while refusal.sent < refusal.answer.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.io).poll_write(cx, &refusal.answer[refusal.sent..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            refusal.sent += n;
        }
        Poll::Ready(Ok(()))
    }

    /// After a refusal: reads and discards what the client still sends,
    /// until it closes or [`LINGER`] has passed.
    fn linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut scratch = [0u8; 8192];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {}
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => {
                    return if self.timer.as_mut().poll(cx).is_ready() {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    };
                }
            }
        }
    }

    /// Why the connection is to be closed, once a bound has passed; until
    /// then `None`, with the timer armed (and `cx` woken when it fires).
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        // The drain can make a deadline earlier than the one armed.
        let drain_news = !self.drain_noted && self.activity.drain_began.get().is_some();
        self.drain_noted |= drain_news;
        let mut check = drain_news || self.timer.as_mut().poll(cx).is_ready();
        while check {
            let now = Instant::now();
            let started = self.activity.started.load(Ordering::Relaxed);
            if matches!(self.head, Some((_, seen)) if seen != started) {
                self.head = None;
            }
            let head_due = self.head.map(|(since, _)| since + self.timeouts.header);
            if head_due.is_some_and(|due| due <= now) {
                return Some("no request head within the header timeout");
            }
            let in_flight = self.activity.in_flight();
            let idle_due = if in_flight {
                now + self.timeouts.idle
            } else {
                self.last_io + self.timeouts.idle
            };
            if idle_due <= now {
                return Some("idle for the idle timeout");
            }
            // Draining, an HTTP/1 connection between requests closes once
            // quiet for the grace (a new one keeps its head deadline). Until
            // then the timer fires at least once per grace: a request in
            // flight that ends does not re-arm it.
            let grace = DRAIN_IDLE_GRACE.min(self.timeouts.header);
            let drain_due = match self.activity.drain_began.get() {
                Some(&began) if !self.http2() => Some(if !in_flight && self.head.is_none() {
                    began.max(self.last_io + grace)
                } else {
                    now + grace
                }),
                _ => None,
            };
            if !in_flight && self.head.is_none() && drain_due.is_some_and(|due| due <= now) {
                return Some("draining, and no request came");
            }
            let due = [head_due, drain_due]
                .into_iter()
                .flatten()
                .fold(idle_due, Instant::min);
            self.timer.as_mut().reset(due);
            check = self.timer.as_mut().poll(cx).is_ready();
        }
        None
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        match &read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.note_read(&buf.filled()[before..]);
            }
            Poll::Pending => {
                if let Some(why) = this.expired(cx) {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)));
                }
            }
            Poll::Ready(_) => {}
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .write(cx, buf, buf.len(), |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        let len = bufs.iter().map(|b| b.len()).sum();
        self.get_mut()
            .write(cx, first, len, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.send_refusal(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.send_refusal(cx))?;
        if this.refusal.as_ref().is_some_and(|r| !r.lingering) {
            std::task::ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
            this.timer.as_mut().reset(Instant::now() + LINGER);
            if let Some(refusal) = this.refusal.as_mut() {
                refusal.lingering = true;
            }
        }
        if this.refusal.is_some() {
            std::task::ready!(this.linger(cx));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_connection_cap_leaves_room_for_upstream_and_other_fds() {
        // systemd's default soft limit, and the unit in deploy/.
        assert_eq!(default_max_connections(Some(1024), false), 1024 - 128);
        assert_eq!(default_max_connections(Some(1024), true), (1024 - 128) / 2);
        assert_eq!(default_max_connections(Some(65_536), true), 32_704);
        // A tiny limit still serves a few; an unlimited one is bounded.
        assert_eq!(default_max_connections(Some(100), true), 32);
        assert_eq!(default_max_connections(Some(0), false), 32);
        assert_eq!(default_max_connections(None, false), (1 << 20) - 128);
    }
}
