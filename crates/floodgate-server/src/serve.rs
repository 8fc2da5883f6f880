//! The accept loop of floodgate's listeners: HTTP/1.1 and HTTP/2 (cleartext,
//! detected per connection) through hyper, with a bound on how long a client
//! may take to send a request's head, and a graceful drain.
//!
//! The bound (`[server] header_timeout`) closes connections that open and
//! then send nothing, or trickle a request line and headers a few bytes at a
//! time (slowloris): without it each such connection holds a task and a file
//! descriptor for as long as the client likes, and a few thousand of them
//! exhaust the process. It applies in two places:
//!
//! - from the connection's start until it has sent enough bytes to tell
//!   HTTP/1 from HTTP/2 (hyper picks the protocol before any timer of its own
//!   runs), by [`HeadDeadline`] around the socket;
//! - from then on, by hyper's HTTP/1 header read timeout: the first request's
//!   head must be complete within the bound from the connection's start, and
//!   each later request's head within the bound from its first byte.
//!
//! An idle kept-alive connection between requests is not bounded here (as
//! with hyper's own servers); nginx or another proxy in front closes those
//! with its keepalive timeout.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use floodgate_tower::PeerAddr;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tower::ServiceExt;

/// Bytes of a connection after which its protocol is known: the length of
/// the HTTP/2 prior-knowledge preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
/// An HTTP/1 request line differs from it within its first bytes.
const PROTOCOL_KNOWN_AFTER: usize = 24;

/// Serves `router` on `listener` until `stop` resolves, then stops accepting
/// and waits for the open connections to finish their requests (idle ones
/// close at once). Every request carries its TCP peer as a [`PeerAddr`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    stop: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
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
        let service = router.clone().map_request(move |mut request: Request<_>| {
            request.extensions_mut().insert(PeerAddr(peer));
            request
        });
        let io = TokioIo::new(HeadDeadline::new(stream, header_timeout));
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

/// A socket whose reads fail with `TimedOut` when the client has not sent
/// [`PROTOCOL_KNOWN_AFTER`] bytes (or closed) within the bound from the
/// connection's start. After that it is the plain socket.
struct HeadDeadline {
    io: TcpStream,
    /// Running until the protocol is known.
    deadline: Option<Pin<Box<Sleep>>>,
    received: usize,
}

impl HeadDeadline {
    fn new(io: TcpStream, bound: Duration) -> Self {
        HeadDeadline {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(bound))),
            received: 0,
        }
    }
}

impl AsyncRead for HeadDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(deadline) = &mut this.deadline {
            match &read {
                Poll::Ready(Ok(())) => {
                    let got = buf.filled().len() - before;
                    this.received += got;
                    if got == 0 || this.received >= PROTOCOL_KNOWN_AFTER {
                        this.deadline = None;
                    }
                }
                Poll::Ready(Err(_)) => {}
                Poll::Pending => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no request head within the header timeout",
                        )));
                    }
                }
            }
        }
        read
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
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
