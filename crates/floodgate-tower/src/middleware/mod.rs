//! The tower middleware: [`FloodgateLayer`] wraps a service in [`Floodgate`].

mod future;
mod layer;
mod leased;
mod service;

pub use self::future::ResponseFuture;
pub use self::layer::FloodgateLayer;
pub use self::leased::Leased;
pub use self::service::{Floodgate, ResponseBody};
