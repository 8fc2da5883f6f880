//! The accept loop of floodgate's listeners: HTTP/1.1 and HTTP/2 (cleartext,
//! detected per connection) through hyper, with bounds on how long a client
//! may take over a request's head and how long a connection may sit idle,
//! and a graceful drain.
//!
//! Both bounds are kept by [`Watched`], around each connection's socket,
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

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use floodgate_tower::PeerAddr;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// Bytes of a connection after which its protocol is known: the length of
/// the HTTP/2 prior-knowledge preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
/// An HTTP/1 request line differs from it within its first bytes.
const PROTOCOL_KNOWN_AFTER: usize = 24;

/// How long a connection may take over its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To send a request's head (`[server] header_timeout`).
    pub header: Duration,
    /// To stay open with no bytes either way and no request in flight
    /// (`[server] idle_timeout`).
    pub idle: Duration,
}

/// Serves `router` on `listener` until `stop` resolves, then stops accepting
/// (and calls `stopped_accepting`) and waits for the open connections to
/// finish their requests (idle ones close at once). Every request carries
/// its TCP peer as a [`PeerAddr`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    timeouts: Timeouts,
    stop: impl Future<Output = ()>,
    stopped_accepting: impl FnOnce(),
) {
    let mut builder = Builder::new(TokioExecutor::new());
    // Both bounds are `Watched`'s (see above); hyper's HTTP/1 header read
    // timeout, on by default once a timer is set, stays off.
    builder.http1().header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol();
    let graceful = GracefulShutdown::new();
    let mut stop = pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
        };
        let activity = Arc::new(Activity::default());
        let service = {
            let (router, activity) = (router.clone(), Arc::clone(&activity));
            tower::service_fn(move |mut request: Request<_>| {
                request.extensions_mut().insert(PeerAddr(peer));
                let in_flight = InFlight::new(&activity);
                let answer = router.clone().oneshot(request);
                async move {
                    let response: Response = answer.await?;
                    Ok::<_, Infallible>(response.map(|body| {
                        Body::new(Answering {
                            body,
                            _in_flight: in_flight,
                        })
                    }))
                }
            })
        };
        let io = TokioIo::new(Watched::new(stream, timeouts, activity));
        let connection = builder
            .serve_connection_with_upgrades(io, TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    stopped_accepting();
    graceful.shutdown().await;
}

/// After a failed `accept`: a connection that failed before it was accepted
/// concerns that client only; anything else (out of file descriptors, say)
/// would fail again at once, so the loop pauses instead of spinning.
async fn accept_failed(e: &io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// What a connection's socket and its requests share.
#[derive(Default)]
struct Activity {
    /// Requests whose answer has not been sent in full.
    in_flight: AtomicUsize,
    /// Requests whose head hyper has read and handed on.
    started: AtomicU64,
}

/// Counts a request in flight until dropped (with its answer's body).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.started.fetch_add(1, Ordering::Relaxed);
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(activity))
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

/// A connection's socket under the header and idle timeouts (see the
/// module's documentation): a read fails with `TimedOut` once either has
/// passed.
struct Watched {
    io: TcpStream,
    timeouts: Timeouts,
    /// The connection's first bytes, until the protocol is known.
    first: [u8; PROTOCOL_KNOWN_AFTER],
    received: usize,
    http2: bool,
    /// The request head being received: since when, and the value of
    /// `Activity::started` then (the head is complete once it moves).
    head: Option<(Instant, u64)>,
    /// When bytes last went either way.
    last_io: Instant,
    /// Fires at or before the earliest deadline; re-armed when early.
    timer: Pin<Box<Sleep>>,
    activity: Arc<Activity>,
}

impl Watched {
    fn new(io: TcpStream, timeouts: Timeouts, activity: Arc<Activity>) -> Self {
        let now = Instant::now();
        Watched {
            io,
            timeouts,
            first: [0; PROTOCOL_KNOWN_AFTER],
            received: 0,
            http2: false,
            head: Some((now, 0)),
            last_io: now,
            timer: Box::pin(tokio::time::sleep_until(
                now + timeouts.header.min(timeouts.idle),
            )),
            activity,
        }
    }

    /// Notes bytes just read: the protocol once known, and the start of an
    /// HTTP/1 request head when none was pending or in flight.
    fn note_read(&mut self, bytes: &[u8]) {
        let now = Instant::now();
        self.last_io = now;
        if self.received < PROTOCOL_KNOWN_AFTER {
            let take = bytes.len().min(PROTOCOL_KNOWN_AFTER - self.received);
            self.first[self.received..self.received + take].copy_from_slice(&bytes[..take]);
            self.received += take;
            if self.received == PROTOCOL_KNOWN_AFTER && &self.first == HTTP2_PREFACE {
                // HTTP/2 requests are streams: the preface was the head.
                self.http2 = true;
                self.head = None;
            }
        }
        if self.http2 || self.activity.in_flight.load(Ordering::Relaxed) > 0 {
            return;
        }
        let started = self.activity.started.load(Ordering::Relaxed);
        if matches!(self.head, Some((_, seen)) if seen == started) {
            return;
        }
        self.head = Some((now, started));
        let due = now + self.timeouts.header;
        if due < self.timer.deadline() {
            self.timer.as_mut().reset(due);
        }
    }

    /// Notes a write's progress; hands the write's result back.
    fn note_written(&mut self, written: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.last_io = Instant::now();
        }
        written
    }

    /// Why the connection is to be closed, once a bound has passed; until
    /// then `None`, with the timer armed (and `cx` woken when it fires).
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let started = self.activity.started.load(Ordering::Relaxed);
            if matches!(self.head, Some((_, seen)) if seen != started) {
                self.head = None;
            }
            let head_due = self.head.map(|(since, _)| since + self.timeouts.header);
            if head_due.is_some_and(|due| due <= now) {
                return Some("no request head within the header timeout");
            }
            let idle_due = if self.activity.in_flight.load(Ordering::Relaxed) > 0 {
                now + self.timeouts.idle
            } else {
                self.last_io + self.timeouts.idle
            };
            if idle_due <= now {
                return Some("idle for the idle timeout");
            }
            let due = head_due.map_or(idle_due, |head| head.min(idle_due));
            self.timer.as_mut().reset(due);
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
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        this.note_written(written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.note_written(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
