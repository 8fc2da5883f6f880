use tower::Layer;

use super::service::Floodgate;
use crate::limiter::Limiter;

/// Applies a [`Limiter`] to every request of the wrapped service.
///
/// Works with axum (`Router::layer`) and anything else built on tower and
/// `http` types. See [`Floodgate`] for what it does.
#[derive(Debug)]
pub struct FloodgateLayer<S> {
    limiter: Limiter<S>,
}

impl<S> FloodgateLayer<S> {
    /// A layer deciding with `limiter`.
    pub fn new(limiter: Limiter<S>) -> Self {
        FloodgateLayer { limiter }
    }
}

impl<S> Clone for FloodgateLayer<S> {
    fn clone(&self) -> Self {
        FloodgateLayer {
            limiter: self.limiter.clone(),
        }
    }
}

impl<S, Svc> Layer<Svc> for FloodgateLayer<S> {
    type Service = Floodgate<Svc, S>;

    fn layer(&self, inner: Svc) -> Self::Service {
        Floodgate::new(inner, self.limiter.clone())
    }
}
