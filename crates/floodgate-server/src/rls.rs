//! The Envoy rate limit service (RLS v3) on `[grpc] listen`:
//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, with
//! gRPC health checking and server reflection beside it.
//!
//! A request's descriptors are decided by the rules whose `descriptor`
//! matches them ([`Limiter::check_descriptors`]), through the same
//! limiter as the gateway: access lists, blocks, overrides, shadow rules,
//! `on_error`, metrics and reloads behave identically.
//!
//! - `statuses`: one per descriptor, in order; `OK` for one no rule
//!   decides. `current_limit` (named after the rule) when its window is
//!   exactly a second, minute, hour or day, as the protocol can only say
//!   those; `limit_remaining` and `duration_until_reset` always.
//! - `OVER_LIMIT`: `response_headers_to_add` carries `Retry-After`,
//!   `RateLimit-Policy` and `RateLimit` of the refusing rule, `raw_body`
//!   the same `application/problem+json` body as the gateway's 429. A
//!   client on the deny list or blocked gets `OVER_LIMIT` for every
//!   descriptor, with `X-Floodgate-Status: 403` and the 403 body.
//! - `OK`: the `RateLimit` headers of the rule with the least left
//!   (shadow rules included, so a shadow refusal shows as `r=0`).
//! - The store unreachable under `on_error = "deny"`: the gRPC status
//!   `UNAVAILABLE`, so Envoy's `failure_mode_deny` decides.
//! - The entry `remote_address` (Envoy's `remote_address` action) is the
//!   client's address for access lists and manual blocks.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus as Status, RateLimit, rate_limit::Unit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use floodgate_tower::descriptor::REMOTE_ADDRESS;
use floodgate_tower::{
    Descriptor, DescriptorStatus, DescriptorVerdict, RuleDecision, Verdict, verdict_response,
};
use http::HeaderMap;
use prost::Message;

use crate::metrics::{RouteKind, RouteMetrics, grpc_status_class};
use crate::state::AppState;

/// Descriptors one request may carry.
pub const MAX_DESCRIPTORS: usize = 64;
/// Entries one descriptor may carry.
pub const MAX_ENTRIES: usize = 32;
/// The longest a call may take, its message included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection accepted just before a drain has to send its
/// first call before every connection is told to finish.
const ACCEPTED_GRACE: Duration = Duration::from_millis(500);
/// Calls one connection may have open at once.
const MAX_STREAMS: u32 = 1024;
/// The largest request message (Envoy's are a few hundred bytes).
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The service's name, as gRPC routes and health checking know it.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
/// Its one method's path.
const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// The service, answering from the server's limiter.
///
/// A unary call is handled here on hyper's HTTP/2 server directly: the one
/// length-prefixed message is read whole, decoded, decided, and the answer
/// goes out as one data frame and the `grpc-status` trailer, without
/// tonic's streaming codec (a per-call decode buffer, an encode stream and
/// their boxed futures) between them. tonic still serves the listener,
/// health checking, reflection and `grpc-timeout`.
#[derive(Clone)]
pub struct Rls {
    state: Arc<AppState>,
    /// Counts calls by the HTTP class of their gRPC status
    /// ([`grpc_status_class`]): `OVER_LIMIT` is an answer, so 2xx.
    requests: Arc<RouteMetrics>,
}

impl Rls {
    /// The service for `state`.
    pub fn new(state: Arc<AppState>) -> Self {
        let requests = state.metrics.route(RouteKind::Rls);
        Rls { state, requests }
    }

    /// Answers one call.
    async fn call(
        self,
        request: http::Request<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        if request.uri().path() != SHOULD_RATE_LIMIT {
            return tonic::Status::unimplemented(format!(
                "{} is not a method of {SERVICE}",
                request.uri().path()
            ))
            .into_http();
        }
        if request
            .headers()
            .get("grpc-encoding")
            .is_some_and(|e| e != "identity")
        {
            return tonic::Status::unimplemented("compressed requests are not accepted")
                .into_http();
        }
        let message = match read_message(request.into_body()).await {
            Ok(m) => m,
            Err(status) => return status.into_http(),
        };
        let request = match RateLimitRequest::decode(message) {
            Ok(r) => r,
            Err(e) => {
                return tonic::Status::invalid_argument(format!("not a RateLimitRequest: {e}"))
                    .into_http();
            }
        };
        let (descriptors, client) = match read_request(&request) {
            Ok(read) => read,
            Err(status) => return status.into_http(),
        };
        let verdict = self
            .state
            .limiter
            .check_descriptors(&request.domain, &descriptors, client)
            .await;
        match answer(verdict, descriptors.len()) {
            Ok(response) => unary_response(&response),
            Err(status) => status.into_http(),
        }
    }
}

impl tonic::server::NamedService for Rls {
    const NAME: &'static str = SERVICE;
}

impl tower::Service<http::Request<tonic::body::Body>> for Rls {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let started = std::time::Instant::now();
            let requests = Arc::clone(&this.requests);
            let response = this.call(request).await;
            // A failed call carries its status in the head; an answered
            // one, in the trailer after its message: `OK`.
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| std::str::from_utf8(v.as_bytes()).ok()?.parse().ok())
                .unwrap_or(0);
            requests.record(grpc_status_class(code), started.elapsed());
            Ok(response)
        })
    }
}

/// The one message of a unary call: the body is a 5-byte prefix (not
/// compressed, the length) and the message.
async fn read_message(body: tonic::body::Body) -> Result<Bytes, tonic::Status> {
    use http_body_util::BodyExt;
    let bytes = http_body_util::Limited::new(body, 5 + MAX_MESSAGE_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                tonic::Status::resource_exhausted(format!(
                    "the request is over {MAX_MESSAGE_BYTES} bytes"
                ))
            } else {
                tonic::Status::cancelled(format!("the request broke off: {e}"))
            }
        })?
        .to_bytes();
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

/// `response` as a unary call's answer: one length-prefixed message, then
/// the trailer `grpc-status: 0`.
fn unary_response(response: &RateLimitResponse) -> http::Response<tonic::body::Body> {
    let len = response.encoded_len();
    let mut buf = bytes::BytesMut::with_capacity(5 + len);
    buf.extend_from_slice(&[0]);
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    response.encode_raw(&mut buf);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let mut http = http::Response::new(tonic::body::Body::new(Unary {
        data: Some(buf.freeze()),
        trailers: Some(trailers),
    }));
    http.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    http
}

/// A body of one data frame and trailers.
struct Unary {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl hyper::body::Body for Unary {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let frame = match self.data.take() {
            Some(data) => Some(hyper::body::Frame::data(data)),
            None => self.trailers.take().map(hyper::body::Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

/// The request's descriptors with their costs, and the client's address;
/// or why the request is malformed.
fn read_request(
    request: &RateLimitRequest,
) -> Result<(Vec<Descriptor<'_>>, Option<IpAddr>), tonic::Status> {
    if request.domain.is_empty() {
        return Err(tonic::Status::invalid_argument("the domain is empty"));
    }
    if request.descriptors.is_empty() {
        return Err(tonic::Status::invalid_argument("no descriptors"));
    }
    if request.descriptors.len() > MAX_DESCRIPTORS {
        return Err(tonic::Status::invalid_argument(format!(
            "{} descriptors, more than {MAX_DESCRIPTORS}",
            request.descriptors.len()
        )));
    }
    let request_cost = u64::from(request.hits_addend.max(1));
    let mut client = None;
    let mut descriptors = Vec::with_capacity(request.descriptors.len());
    for (i, d) in request.descriptors.iter().enumerate() {
        if d.entries.is_empty() || d.entries.len() > MAX_ENTRIES {
            return Err(tonic::Status::invalid_argument(format!(
                "descriptor #{} has {} entries (1 to {MAX_ENTRIES})",
                i + 1,
                d.entries.len()
            )));
        }
        if d.is_negative_hits {
            return Err(tonic::Status::invalid_argument(format!(
                "descriptor #{}: is_negative_hits is not supported",
                i + 1
            )));
        }
        let entries: Vec<(&str, &str)> = d
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        if client.is_none() {
            client = entries
                .iter()
                .find(|(key, _)| *key == REMOTE_ADDRESS)
                .and_then(|(_, value)| value.parse::<IpAddr>().ok());
        }
        let cost = d
            .hits_addend
            .as_ref()
            .map_or(request_cost, |h| h.value)
            .max(1);
        descriptors.push(Descriptor { entries, cost });
    }
    Ok((descriptors, client))
}

/// The protocol's answer to `verdict` on `count` descriptors.
fn answer(verdict: DescriptorVerdict, count: usize) -> Result<RateLimitResponse, tonic::Status> {
    let mut response = RateLimitResponse {
        overall_code: Code::Ok as i32,
        ..RateLimitResponse::default()
    };
    match verdict {
        DescriptorVerdict::Unavailable => {
            return Err(tonic::Status::unavailable(
                "the rate limiter cannot reach its store",
            ));
        }
        DescriptorVerdict::Bypassed => {
            response.statuses = (0..count).map(|_| ok_status()).collect();
        }
        DescriptorVerdict::Forbidden { reason } => {
            response.overall_code = Code::OverLimit as i32;
            response.statuses = (0..count)
                .map(|_| Status {
                    code: Code::OverLimit as i32,
                    ..Status::default()
                })
                .collect();
            refusal(&mut response, &Verdict::Forbidden { reason });
        }
        DescriptorVerdict::Decided(statuses) => {
            response.statuses = statuses.iter().map(status_of).collect();
            let refusing = statuses
                .iter()
                .filter(|s| !s.allowed)
                .filter_map(|s| s.decision.as_ref())
                .max_by_key(|d| d.decision().retry_after);
            if let Some(refusing) = refusing {
                response.overall_code = Code::OverLimit as i32;
                refusal(&mut response, &Verdict::Limited(refusing.clone()));
            } else if let Some(tightest) = statuses
                .iter()
                .filter_map(|s| s.decision.as_ref())
                .min_by_key(|d| d.decision().remaining)
            {
                let mut headers = HeaderMap::new();
                tightest.insert_rate_limit_headers(&mut headers);
                response.response_headers_to_add = header_values(&headers);
            }
        }
    }
    Ok(response)
}

fn ok_status() -> Status {
    Status {
        code: Code::Ok as i32,
        ..Status::default()
    }
}

/// One descriptor's status.
fn status_of(s: &DescriptorStatus) -> Status {
    let code = if s.allowed { Code::Ok } else { Code::OverLimit };
    let Some(d) = &s.decision else {
        return Status {
            code: code as i32,
            ..Status::default()
        };
    };
    let decision = d.decision();
    Status {
        code: code as i32,
        current_limit: current_limit(d),
        limit_remaining: u32::try_from(decision.remaining).unwrap_or(u32::MAX),
        duration_until_reset: Some(proto_duration(if s.allowed {
            decision.reset_after
        } else {
            decision.retry_after.unwrap_or(decision.reset_after)
        })),
        ..Status::default()
    }
}

/// The rule's limit, when its window is one unit the protocol can say.
fn current_limit(d: &RuleDecision) -> Option<RateLimit> {
    let unit = match d.window() {
        w if w == Duration::from_secs(1) => Unit::Second,
        w if w == Duration::from_secs(60) => Unit::Minute,
        w if w == Duration::from_secs(3600) => Unit::Hour,
        w if w == Duration::from_secs(86_400) => Unit::Day,
        _ => return None,
    };
    Some(RateLimit {
        name: d.rule().to_owned(),
        requests_per_unit: u32::try_from(d.decision().limit).unwrap_or(u32::MAX),
        unit: unit as i32,
    })
}

/// The gateway's own refusal of `verdict`, as headers and body for Envoy
/// to answer with.
fn refusal(response: &mut RateLimitResponse, verdict: &Verdict) {
    let Some(http) = verdict_response(verdict) else {
        return;
    };
    let status = http.status();
    let mut headers = http.headers().clone();
    if let Ok(value) = http::HeaderValue::try_from(status.as_str()) {
        headers.insert("x-floodgate-status", value);
    }
    response.response_headers_to_add = header_values(&headers);
    response.raw_body = match verdict {
        Verdict::Limited(_) | Verdict::Forbidden { .. } => body_of(http),
        _ => Vec::new(),
    };
    if let Verdict::Forbidden { reason } = verdict {
        tracing::debug!(?reason, "rate limit service: client refused");
    }
}

fn body_of(response: http::Response<http_body_util::Full<bytes::Bytes>>) -> Vec<u8> {
    use http_body_util::BodyExt;
    // A `Full` body is one frame, ready at once.
    let body = response.into_body();
    ready_now(body.collect())
        .and_then(Result::ok)
        .map(|c| c.to_bytes().to_vec())
        .unwrap_or_default()
}

/// Polls a future that is ready at once.
fn ready_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

fn header_values(headers: &HeaderMap) -> Vec<HeaderValue> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            Some(HeaderValue {
                key: name.as_str().to_owned(),
                value: value.to_str().ok()?.to_owned(),
                ..HeaderValue::default()
            })
        })
        .collect()
}

fn proto_duration(d: Duration) -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Serves the rate limit service, gRPC health checking and server
/// reflection on `listener` until `stop` resolves; then health says
/// `NOT_SERVING`, no new connection is accepted, and the RPCs in flight
/// finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    let (reflection, reflection_alpha) = reflection_services();
    // The drain in two steps. First this process stops accepting (another
    // worker sharing the socket takes new connections; alone, the socket
    // closes) and health says NOT_SERVING. Then, ACCEPTED_GRACE later,
    // every connection is told to finish (GOAWAY) and the calls in flight
    // run to their end. A connection accepted just before the drain thus
    // gets its first call answered, not a GOAWAY before it could send it.
    let (draining_tx, draining) = tokio::sync::watch::channel(false);
    tokio::spawn({
        let health = health.clone();
        async move {
            stop.await;
            let _ = draining_tx.send(true);
            health
                .set_service_status(SERVICE, tonic_health::ServingStatus::NotServing)
                .await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        }
    });
    let shutdown = {
        let mut draining = draining.clone();
        async move {
            let _ = draining.wait_for(|d| *d).await;
            tokio::time::sleep(ACCEPTED_GRACE).await;
        }
    };
    let accepting = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let incoming = futures_util::stream::unfold(
        (Some(accepting), draining),
        |(accepting, mut draining)| async move {
            let mut accepting = accepting?;
            let accepted = tokio::select! {
                accepted = futures_util::StreamExt::next(&mut accepting) => Some(accepted),
                _ = draining.wait_for(|d| *d) => None,
            };
            match accepted {
                Some(accepted) => Some((accepted?, (Some(accepting), draining))),
                None => {
                    // Closes this process's copy of the socket, then waits
                    // for the shutdown to end the serving.
                    drop(accepting);
                    std::future::pending().await
                }
            }
        },
    );
    let served = tonic::transport::Server::builder()
        // A call is one decision, bounded by the store's timeout: one that
        // takes longer (a client sending its message slowly) is cut off,
        // and one connection cannot open streams without end.
        .timeout(CALL_TIMEOUT)
        .max_concurrent_streams(MAX_STREAMS)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_optional_service(reflection)
        .add_optional_service(reflection_alpha)
        .add_service(Rls::new(state))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "the gRPC listener failed");
    }
}

/// gRPC server reflection, v1 and v1alpha (tools still ask either),
/// describing the rate limit service and health checking from the
/// descriptor sets compiled in; none when the build had no set.
#[allow(clippy::type_complexity)]
fn reflection_services() -> (
    Option<
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
    >,
    Option<
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    >,
) {
    let set: &'static [u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rls_descriptors.bin"));
    if set.is_empty() {
        return (None, None);
    }
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(set)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let off = |e: tonic_reflection::server::Error| {
        tracing::warn!(error = %e, "gRPC server reflection is off");
    };
    (
        builder().build_v1().map_err(off).ok(),
        builder().build_v1alpha().map_err(off).ok(),
    )
}
