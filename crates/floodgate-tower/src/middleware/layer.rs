use tower::Layer;

use super::service::RateLimit;
use crate::limiter::Limiter;

/// Applies a [`Limiter`] to every request of the wrapped service.
///
/// Works with axum (`Router::layer`) and anything else built on tower and
/// `http` types. See [`RateLimit`] for what it does.
#[derive(Debug)]
pub struct RateLimitLayer<S> {
    limiter: Limiter<S>,
}

impl<S> RateLimitLayer<S> {
    /// A layer deciding with `limiter`.
    pub fn new(limiter: Limiter<S>) -> Self {
        RateLimitLayer { limiter }
    }
}

impl<S> Clone for RateLimitLayer<S> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            limiter: self.limiter.clone(),
        }
    }
}

impl<S, Svc> Layer<Svc> for RateLimitLayer<S> {
    type Service = RateLimit<Svc, S>;

    fn layer(&self, inner: Svc) -> Self::Service {
        RateLimit::new(inner, self.limiter.clone())
    }
}
