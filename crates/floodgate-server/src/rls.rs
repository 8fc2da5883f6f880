//! The Envoy rate limit service (RLS v3) on `[grpc] listen`:
//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, with
//! gRPC health checking and server reflection beside it.
//!
//! A request's descriptors are decided by the rules whose `descriptor`
//! matches them ([`floodgate_tower::Limiter::check_descriptors`]), through
//! the same limiter as the gateway: access lists, blocks, overrides, shadow
//! rules, `on_error`, metrics and reloads behave identically.
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
use crate::serve::accept_failed;
use crate::state::AppState;

mod conn;

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
/// A unary call is read, decided and answered on the connection's own task
/// (the `conn` module): the one length-prefixed message is read whole, decoded,
/// decided, and the answer goes out as one data frame and the
/// `grpc-status` trailer, without a task, a router or a streaming codec
/// between them.
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

    /// Answers one call of `ShouldRateLimit` on `respond`, within its
    /// deadline (then `CANCELLED`), and counts it; drops it, uncounted, if
    /// the caller resets the stream while it waits.
    async fn answer(
        &self,
        mut request: http::Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
    ) {
        let started = std::time::Instant::now();
        let limit = conn::deadline_of(request.headers());
        let mut decide = std::pin::pin!(conn::Bounded::new(
            self.decide(&mut request),
            limit,
            started
        ));
        let decided = std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(decided) = decide.as_mut().poll(cx) {
                return std::task::Poll::Ready(Some(decided));
            }
            respond.poll_reset(cx).map(|_| None)
        })
        .await;
        let Some(decided) = decided else {
            return;
        };
        let code = match decided {
            Some(Ok(message)) => {
                conn::send_message(respond, message);
                0
            }
            Some(Err(status)) => {
                let code = status.code() as i32;
                conn::send_status(respond, status);
                code
            }
            None => {
                conn::send_status(respond, tonic::Status::cancelled("Timeout expired"));
                tonic::Code::Cancelled as i32
            }
        };
        self.requests
            .record(grpc_status_class(code), started.elapsed());
    }

    /// A call of a method the service does not have.
    fn unimplemented(
        &self,
        request: http::Request<h2::RecvStream>,
        respond: h2::server::SendResponse<Bytes>,
    ) {
        let started = std::time::Instant::now();
        let status = tonic::Status::unimplemented(format!(
            "{} is not a method of {SERVICE}",
            request.uri().path()
        ));
        let code = status.code() as i32;
        conn::send_status(respond, status);
        self.requests
            .record(grpc_status_class(code), started.elapsed());
    }

    /// The answer to one call: its message, length-prefixed; or its
    /// status.
    async fn decide(
        &self,
        request: &mut http::Request<h2::RecvStream>,
    ) -> Result<Bytes, tonic::Status> {
        if request
            .headers()
            .get("grpc-encoding")
            .is_some_and(|e| e != "identity")
        {
            return Err(tonic::Status::unimplemented(
                "compressed requests are not accepted",
            ));
        }
        let message = conn::read_message(request.body_mut(), MAX_MESSAGE_BYTES).await?;
        let request = RateLimitRequest::decode(message)
            .map_err(|e| tonic::Status::invalid_argument(format!("not a RateLimitRequest: {e}")))?;
        let (descriptors, client) = read_request(&request)?;
        let verdict = self
            .state
            .limiter
            .check_descriptors(&request.domain, &descriptors, client)
            .await;
        let response = answer(verdict, descriptors.len())?;
        Ok(unary_message(&response))
    }
}

/// `response` as a unary call's one message: a 5-byte prefix (not
/// compressed, the length), then the message.
fn unary_message(response: &RateLimitResponse) -> Bytes {
    let len = response.encoded_len();
    let mut buf = bytes::BytesMut::with_capacity(5 + len);
    buf.extend_from_slice(&[0]);
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    response.encode_raw(&mut buf);
    buf.freeze()
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
    let mut routes = tonic::service::Routes::new(health_service);
    if let Some(reflection) = reflection {
        routes = routes.add_service(reflection);
    }
    if let Some(reflection) = reflection_alpha {
        routes = routes.add_service(reflection);
    }
    let routes = routes.prepare();
    let rls = Rls::new(state);
    // The drain in two steps. First this process stops accepting (another
    // worker sharing the socket takes new connections; alone, the socket
    // closes) and health says NOT_SERVING. Then, ACCEPTED_GRACE later,
    // every connection is told to finish (GOAWAY) and the calls in flight
    // run to their end. A connection accepted just before the drain thus
    // gets its first call answered, not a GOAWAY before it could send it.
    let (draining_tx, mut draining) = tokio::sync::watch::channel(false);
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
    let (finish_tx, finish) = tokio::sync::watch::channel(false);
    // Every connection's task holds a sender: the drain ends when all are
    // gone.
    let (open_tx, mut open) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = draining.wait_for(|d| *d) => break,
            accepted = listener.accept() => accepted,
        };
        let io = match accepted {
            Ok((io, _)) => io,
            Err(e) => {
                accept_failed("gRPC", &e).await;
                continue;
            }
        };
        let _ = io.set_nodelay(true);
        let (rls, routes, finish, open) =
            (rls.clone(), routes.clone(), finish.clone(), open_tx.clone());
        tokio::spawn(async move {
            conn::serve_connection(io, rls, routes, finish).await;
            drop(open);
        });
    }
    // This process's copy of the socket closes at once.
    drop(listener);
    drop(open_tx);
    tokio::time::sleep(ACCEPTED_GRACE).await;
    let _ = finish_tx.send(true);
    let _ = open.recv().await;
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
