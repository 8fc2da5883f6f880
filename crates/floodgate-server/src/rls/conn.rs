//! The HTTP/2 server of `[grpc] listen`, on the `h2` crate directly.
//!
//! Each connection is one task. The calls of the rate limit service are
//! futures that task polls beside the connection itself (no task per
//! call): a call is read, decided and answered (headers, one data frame,
//! the `grpc-status` trailer) within the poll that read it when the store
//! answers at once, and the answers of every call decided in one poll go
//! out in one write. Any other path (gRPC health checking, reflection) is
//! handed to tonic's services on a task of its own, its body adapted from
//! and to h2's streams.
//!
//! What the connection keeps from the hyper server it replaces: the same
//! HTTP/2 settings (1 MiB windows, 16 KiB frames, 16 KiB header lists,
//! 400 KiB send buffers, 1 024 streams, 1 024 locally caused resets), a
//! deadline per call (10 s or the caller's `grpc-timeout`, whichever is
//! shorter; then `CANCELLED`), a PING after 30 s without a new call that
//! must be answered within 10 s, and a graceful shutdown (GOAWAY, the
//! calls in flight answered) when told to finish.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use h2::server::SendResponse;
use h2::{Ping, PingPong, RecvStream, SendStream};
use http::{HeaderMap, HeaderValue};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tower::ServiceExt;

use super::{CALL_TIMEOUT, MAX_STREAMS, Rls, SHOULD_RATE_LIMIT};

/// How long a connection may stay without a new call before it is pinged.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long the ping's answer may take before the connection is closed.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP/2 settings: hyper's server defaults, which the listener had
/// before, and the stream bound.
fn builder() -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(1024 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_frame_size(16 * 1024)
        .max_header_list_size(16 * 1024)
        .max_local_error_reset_streams(Some(1024))
        .max_send_buffer_size(400 * 1024)
        .max_concurrent_streams(MAX_STREAMS);
    builder
}

/// Serves one accepted connection until it closes; once `finish` turns
/// true, shuts it down gracefully.
pub(super) async fn serve_connection(
    io: TcpStream,
    rls: Rls,
    routes: tonic::service::Routes,
    mut finish: watch::Receiver<bool>,
) {
    let handshake = builder().handshake::<_, Bytes>(io);
    let mut conn = tokio::select! {
        conn = handshake => match conn {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!(error = %e, "gRPC connection: no HTTP/2 handshake");
                return;
            }
        },
        _ = finish.wait_for(|f| *f) => return,
    };
    let rls = &rls;
    let mut calls = FuturesUnordered::new();
    let mut finishing = false;
    let mut finish = std::pin::pin!(async move {
        let _ = finish.wait_for(|f| *f).await;
    });
    let mut keepalive = Keepalive::new(conn.ping_pong());
    let ended = poll_fn(|cx| {
        if !finishing && finish.as_mut().poll(cx).is_ready() {
            finishing = true;
            conn.graceful_shutdown();
        }
        if keepalive.poll_expired(cx) {
            return Poll::Ready(Err("no answer to a keepalive ping".into()));
        }
        // Until neither the connection nor a call moves: each round reads
        // what has come (new calls are polled at once, most answer in that
        // poll), then flushes what the calls answered.
        loop {
            let mut moved = false;
            loop {
                match conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((request, respond)))) => {
                        moved = true;
                        keepalive.called();
                        if request.uri().path() == SHOULD_RATE_LIMIT {
                            calls.push(rls.answer(request, respond));
                        } else {
                            tokio::spawn(other(rls.clone(), routes.clone(), request, respond));
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(
                            Box::new(e) as Box<dyn std::error::Error + Send + Sync>
                        ));
                    }
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => break,
                }
            }
            while let Poll::Ready(Some(())) = calls.poll_next_unpin(cx) {
                moved = true;
            }
            if !moved {
                return Poll::Pending;
            }
        }
    })
    .await;
    if let Err(e) = ended {
        tracing::debug!(error = %e, "gRPC connection ended with an error");
    }
}

/// The keepalive of one connection: a PING once `KEEPALIVE_INTERVAL`
/// passes without a new call, to be answered within `KEEPALIVE_TIMEOUT`.
struct Keepalive {
    pings: Option<PingPong>,
    tick: tokio::time::Interval,
    called: bool,
    awaiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Keepalive {
    fn new(pings: Option<PingPong>) -> Self {
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + KEEPALIVE_INTERVAL,
            KEEPALIVE_INTERVAL,
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Keepalive {
            pings,
            tick,
            called: false,
            awaiting: None,
        }
    }

    fn called(&mut self) {
        self.called = true;
    }

    /// Whether a ping went unanswered for too long.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(pings) = self.pings.as_mut() else {
            return false;
        };
        while self.tick.poll_tick(cx).is_ready() {
            if !std::mem::take(&mut self.called)
                && self.awaiting.is_none()
                && pings.send_ping(Ping::opaque()).is_ok()
            {
                self.awaiting = Some(Box::pin(tokio::time::sleep(KEEPALIVE_TIMEOUT)));
            }
        }
        if let Some(deadline) = self.awaiting.as_mut() {
            match pings.poll_pong(cx) {
                Poll::Ready(_) => self.awaiting = None,
                Poll::Pending => return deadline.as_mut().poll(cx).is_ready(),
            }
        }
        false
    }
}

/// The deadline of a call whose head is `headers`: the caller's
/// `grpc-timeout` when shorter than `CALL_TIMEOUT`.
pub(super) fn deadline_of(headers: &HeaderMap) -> Duration {
    headers
        .get("grpc-timeout")
        .and_then(|v| parse_grpc_timeout(v.as_bytes()))
        .map_or(CALL_TIMEOUT, |d| d.min(CALL_TIMEOUT))
}

/// A `grpc-timeout` value: at most 8 digits and a unit.
fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

pin_project_lite::pin_project! {
    /// `call` bounded to `limit` from the first poll; the timer is only
    /// armed if the call does not finish in that poll.
    pub(super) struct Bounded<F> {
        #[pin]
        call: F,
        limit: Duration,
        started: Instant,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<F> Bounded<F> {
    pub(super) fn new(call: F, limit: Duration, started: Instant) -> Self {
        Bounded {
            call,
            limit,
            started,
            timer: None,
        }
    }
}

impl<F: Future> Future for Bounded<F> {
    /// `None` once the time is up.
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.call.poll(cx) {
            return Poll::Ready(Some(out));
        }
        let timer = this.timer.get_or_insert_with(|| {
            Box::pin(tokio::time::sleep_until(
                (*this.started + *this.limit).into(),
            ))
        });
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(None)
    }
}

/// The one message of a unary call: the body is a 5-byte prefix (not
/// compressed, the length) and the message, up to `limit` bytes.
pub(super) async fn read_message(
    body: &mut RecvStream,
    limit: usize,
) -> Result<Bytes, tonic::Status> {
    let mut whole: Option<Bytes> = None;
    let mut joined: Option<bytes::BytesMut> = None;
    while let Some(chunk) = body.data().await {
        let chunk =
            chunk.map_err(|e| tonic::Status::cancelled(format!("the request broke off: {e}")))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        let read = whole.as_ref().map_or(0, Bytes::len)
            + joined.as_ref().map_or(0, bytes::BytesMut::len)
            + chunk.len();
        if read > 5 + limit {
            return Err(tonic::Status::resource_exhausted(format!(
                "the request is over {limit} bytes"
            )));
        }
        match (&mut whole, &mut joined) {
            (None, None) => whole = Some(chunk),
            (Some(first), None) => {
                let mut buf = bytes::BytesMut::with_capacity(read);
                buf.extend_from_slice(first);
                buf.extend_from_slice(&chunk);
                whole = None;
                joined = Some(buf);
            }
            (_, Some(buf)) => buf.extend_from_slice(&chunk),
        }
    }
    let bytes = match joined {
        Some(buf) => buf.freeze(),
        None => whole.unwrap_or_default(),
    };
    let Some((&flag, rest)) = bytes.split_first() else {
        return Err(tonic::Status::invalid_argument("no message"));
    };
    if flag != 0 {
        return Err(tonic::Status::unimplemented(
            "compressed requests are not accepted",
        ));
    }
    let len = rest
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| tonic::Status::invalid_argument("a broken message prefix"))?;
    if bytes.len() != 5 + len {
        return Err(tonic::Status::invalid_argument(
            "a unary call carries exactly one message",
        ));
    }
    Ok(bytes.slice(5..))
}

/// Answers with `message` (a length-prefixed message), then `grpc-status: 0`.
pub(super) fn send_message(mut respond: SendResponse<Bytes>, message: Bytes) {
    let mut head = http::Response::new(());
    head.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    let Ok(mut body) = respond.send_response(head, false) else {
        return;
    };
    // Small: buffered whole, capacity claimed as the window allows.
    if body.send_data(message, false).is_err() {
        return;
    }
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let _ = body.send_trailers(trailers);
}

/// Answers with `status` alone (a trailers-only response).
pub(super) fn send_status(mut respond: SendResponse<Bytes>, status: tonic::Status) {
    let (parts, ()) = status.into_http::<()>().into_parts();
    let mut head = http::Response::new(());
    *head.headers_mut() = parts.headers;
    let _ = respond.send_response(head, true);
}

/// A call to any path but the rate limit service's method: other methods
/// of the service are `UNIMPLEMENTED`; the rest goes to tonic's services
/// (health checking, reflection).
async fn other(
    rls: Rls,
    routes: tonic::service::Routes,
    request: http::Request<RecvStream>,
    respond: SendResponse<Bytes>,
) {
    if request
        .uri()
        .path()
        .strip_prefix('/')
        .and_then(|p| p.strip_prefix(super::SERVICE))
        .is_some_and(|p| p.starts_with('/'))
    {
        return rls.unimplemented(request, respond);
    }
    let started = Instant::now();
    let limit = deadline_of(request.headers());
    let request = request.map(|body| tonic::body::Body::new(Incoming { body, data: true }));
    let response = match Bounded::new(routes.oneshot(request), limit, started).await {
        Some(Ok(response)) => response,
        Some(Err(never)) => match never {},
        None => {
            return send_status(respond, tonic::Status::cancelled("Timeout expired"));
        }
    };
    send_body(respond, response).await;
}

/// Sends `response`, its body as it comes and as the stream's window
/// allows, until it ends or the caller resets the stream.
async fn send_body(mut respond: SendResponse<Bytes>, response: http::Response<tonic::body::Body>) {
    use hyper::body::Body as _;
    let (parts, body) = response.into_parts();
    let end = body.is_end_stream();
    let Ok(mut send) = respond.send_response(http::Response::from_parts(parts, ()), end) else {
        return;
    };
    if end {
        return;
    }
    let mut body = std::pin::pin!(body);
    loop {
        let frame = poll_fn(|cx| {
            if send.poll_reset(cx).is_ready() {
                return Poll::Ready(None);
            }
            body.as_mut().poll_frame(cx).map(Some)
        })
        .await;
        let frame = match frame {
            // Reset by the caller.
            None => return,
            Some(None) => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            Some(Some(Err(e))) => {
                tracing::debug!(error = %e, "a gRPC answer's body failed");
                send.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
            Some(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                if send_data(&mut send, data).await.is_err() {
                    return;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = send.send_trailers(trailers);
                    return;
                }
            }
        }
    }
}

/// Sends `data` as the stream's window opens.
async fn send_data(send: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), ()> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let capacity = match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            _ => return Err(()),
        };
        if capacity == 0 {
            continue;
        }
        let chunk = data.split_to(capacity.min(data.len()));
        send.send_data(chunk, false).map_err(|_| ())?;
    }
    Ok(())
}

/// A request body read from h2's stream, its window released as it is
/// read.
struct Incoming {
    body: RecvStream,
    /// Data frames may still come.
    data: bool,
}

impl hyper::body::Body for Incoming {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, h2::Error>>> {
        if self.data {
            match ready!(self.body.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.body.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(hyper::body::Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data = false,
            }
        }
        match ready!(self.body.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(hyper::body::Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
}
