//! The tower middleware: [`RateLimitLayer`] wraps a service in [`RateLimit`].

mod future;
mod layer;
mod service;

pub use self::future::ResponseFuture;
pub use self::layer::RateLimitLayer;
pub use self::service::{RateLimit, ResponseBody};
