use std::borrow::Cow;
use std::task::{Context, Poll};

use bytes::Bytes;
use floodgate_core::Store;
use http::{Request, Response, Uri};
use http_body_util::{Either, Full};
use tower::Service;

use super::Leased;
use super::future::ResponseFuture;
use crate::limiter::{Limiter, Pending};
use crate::peer::peer_addr;
use crate::response::{grpc_verdict_response, is_grpc, verdict_response};
use crate::verdict::{BadRequestReason, Verdict};

/// The body of a [`Floodgate`] response: the inner service's (holding the
/// request's concurrency slots until it ends), or the limiter's own
/// problem+json.
pub type ResponseBody<B> = Either<Leased<B>, Full<Bytes>>;

/// Decides each request with a [`Limiter`] before the inner service sees it.
///
/// Refused requests are answered here, in `call` (429, 403 or 503 with a
/// problem+json body; see [`verdict_response`]), and never reach the inner
/// service. Admitted requests go on, and their responses get the
/// `RateLimit-Policy` and `RateLimit` headers of the most restrictive rule.
/// `poll_ready` is the inner service's: the limiter never makes a caller
/// wait for readiness.
///
/// The peer address is read from the [`PeerAddr`](crate::PeerAddr)
/// extension, else from axum's `ConnectInfo<SocketAddr>`.
#[derive(Debug)]
pub struct Floodgate<Svc, S> {
    inner: Svc,
    limiter: Limiter<S>,
}

impl<Svc, S> Floodgate<Svc, S> {
    /// `inner`, limited by `limiter`.
    pub fn new(inner: Svc, limiter: Limiter<S>) -> Self {
        Floodgate { inner, limiter }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &Svc {
        &self.inner
    }
}

impl<Svc: Clone, S> Clone for Floodgate<Svc, S> {
    fn clone(&self) -> Self {
        Floodgate {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
        }
    }
}

impl<Svc, S, ReqBody, ResBody> Service<Request<ReqBody>> for Floodgate<Svc, S>
where
    Svc: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    Svc::Future: Send + 'static,
    S: Store,
    ReqBody: Send + 'static,
    ResBody: http_body::Body + Send,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = Svc::Error;
    type Future = ResponseFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready handles this request; the clone
        // stays behind for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limiter = self.limiter.clone();
        let mut request = request;
        // The inner service is given the path the rules match, so no
        // spelling reaches it that the rules did not see; the check is given
        // it too, canonical already. A path with no canonical form is
        // refused.
        let (snapshot, canonical) = limiter.canonicalise(request.uri().path());
        // Whether the request now carries its canonical path.
        let canonical = match canonical {
            Ok(Cow::Owned(path)) => match with_path(request.uri(), &path) {
                Some(uri) => {
                    *request.uri_mut() = uri;
                    Ok(true)
                }
                None => Ok(false),
            },
            Ok(Cow::Borrowed(_)) => Ok(true),
            Err(e) => Err(e),
        };
        let grpc = is_grpc(request.headers());
        ResponseFuture::new(async move {
            let (verdict, mut pending) = match canonical {
                Ok(true) => {
                    limiter
                        .check_canonical(
                            snapshot,
                            request.method(),
                            request.uri().path(),
                            request.headers(),
                            Some(request.extensions()),
                            peer_addr(request.extensions()),
                        )
                        .await
                }
                // Not rewritten: the check canonicalises it itself. Rare,
                // so its future is boxed rather than sized into every
                // request's.
                Ok(false) => {
                    Box::pin(limiter.check_request_for_answer(
                        request.method(),
                        request.uri().path(),
                        request.headers(),
                        request.extensions(),
                        peer_addr(request.extensions()),
                    ))
                    .await
                }
                Err(e) => (
                    limiter.malformed(BadRequestReason::Path(e)),
                    Pending::default(),
                ),
            };
            let refusal = if grpc {
                grpc_verdict_response(&verdict)
            } else {
                verdict_response(&verdict)
            };
            if let Some(refusal) = refusal {
                return Ok(refusal.map(Either::Right));
            }
            // Dropped with this future if the inner service fails or the
            // client goes away first: the slots go back.
            let lease = pending.take_lease();
            let mut response = inner.call(request).await?;
            if !pending.is_empty() {
                // Charged before the answer goes out: a client that sees
                // its answer finds it counted.
                let status = response.status();
                // Only rules charged on the answer get here: boxed, as
                // above.
                Box::pin(limiter.charge_answer(pending, status, response.headers_mut())).await;
            }
            limiter.remove_cost_headers(response.headers_mut());
            if let Verdict::Allow(Some(decision)) = &verdict {
                decision.insert_rate_limit_headers(response.headers_mut());
            }
            Ok(response.map(|body| Either::Left(Leased::new(body, lease))))
        })
    }
}

/// `uri` with its path replaced by `path` (query, scheme and authority
/// kept); `None` if the result is not a URI, which a canonical path of a
/// valid URI always is.
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
}
