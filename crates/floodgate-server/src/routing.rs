//! The main listener's request path without a router's boxing: a request
//! for one of the decision endpoints goes to their router, every other one
//! straight down the gateway's stack of services, whose futures nest
//! without a heap allocation or a move per layer.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use pin_project_lite::pin_project;
use tower::util::Oneshot;
use tower::{Layer, Service, ServiceExt};

use crate::error::{ApiError, problems_only_response};

/// The paths the decision endpoints answer on; any method (a wrong one is
/// their router's 405).
const DECISION_PATHS: [&str; 3] = ["/v1/check", "/v1/charge", "/v1/authorize"];

/// Sends the decision endpoints' paths to `api`, everything else to
/// `gateway`.
#[derive(Clone)]
pub(crate) struct MainService<G> {
    api: Router,
    gateway: G,
}

impl<G> MainService<G> {
    /// The main listener's service.
    pub(crate) fn new(api: Router, gateway: G) -> Self {
        MainService { api, gateway }
    }
}

impl<G> Service<Request> for MainService<G>
where
    G: Service<Request, Response = Response, Error = Infallible> + Clone,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Oneshot<Router, Request>, Oneshot<G, Request>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if DECISION_PATHS.contains(&req.uri().path()) {
            Either::Left(self.api.clone().oneshot(req))
        } else {
            Either::Right(self.gateway.clone().oneshot(req))
        }
    }
}

/// What a `405` names as allowed: every method the gateway passes on.
const FORWARDED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// `CONNECT` would make floodgate a tunnel to anywhere the upstream's host
/// can reach, and `TRACE` echoes the request, credentials included: both
/// are answered 405 by this layer, never forwarded nor counted.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RefuseTunnelsLayer;

impl<S> Layer<S> for RefuseTunnelsLayer {
    type Service = RefuseTunnels<S>;

    fn layer(&self, inner: S) -> RefuseTunnels<S> {
        RefuseTunnels { inner }
    }
}

/// See [`RefuseTunnelsLayer`].
#[derive(Clone, Debug)]
pub(crate) struct RefuseTunnels<S> {
    inner: S,
}

impl<S> Service<Request> for RefuseTunnels<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if req.method() == Method::CONNECT || req.method() == Method::TRACE {
            let refusal = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} is not forwarded", req.method()),
            )
            .with_header(header::ALLOW, HeaderValue::from_static(FORWARDED_METHODS))
            .into_response();
            return Either::Left(ready(Ok(refusal)));
        }
        Either::Right(self.inner.call(req))
    }
}

/// Turns the framework's own error answers of floodgate's own endpoints
/// into problem+json (see [`crate::error::problems_only`]); an answer that
/// is not an error passes without a heap allocation.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ProblemsOnlyLayer;

impl<S> Layer<S> for ProblemsOnlyLayer {
    type Service = ProblemsOnly<S>;

    fn layer(&self, inner: S) -> ProblemsOnly<S> {
        ProblemsOnly { inner }
    }
}

/// See [`ProblemsOnlyLayer`].
#[derive(Clone, Debug)]
pub(crate) struct ProblemsOnly<S> {
    inner: S,
}

impl<S> Service<Request> for ProblemsOnly<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ProblemsOnlyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        ProblemsOnlyFuture::Inner {
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// The future of [`ProblemsOnly`]: the inner answer, then, for an
    /// error answer only, its conversion.
    #[project = ProblemsOnlyProj]
    pub(crate) enum ProblemsOnlyFuture<F> {
        /// Waiting for the inner service.
        Inner { #[pin] inner: F },
        /// Rewriting an error answer as problem+json.
        Converting { converting: Pin<Box<dyn Future<Output = Response> + Send>> },
    }
}

impl<F> Future for ProblemsOnlyFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                ProblemsOnlyProj::Inner { inner } => {
                    let Ok(response) = std::task::ready!(inner.poll(cx));
                    let status = response.status();
                    if !(status.is_client_error() || status.is_server_error()) {
                        return Poll::Ready(Ok(response));
                    }
                    self.set(ProblemsOnlyFuture::Converting {
                        converting: Box::pin(problems_only_response(response)),
                    });
                }
                ProblemsOnlyProj::Converting { converting } => {
                    return converting.as_mut().poll(cx).map(Ok);
                }
            }
        }
    }
}
