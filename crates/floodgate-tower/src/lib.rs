//! # floodgate-tower
//!
//! Rate limiting for tower services (axum, hyper, tonic).
//!
//! - [`ClientIpConfig`]: who the client is; forwarding headers count only
//!   from trusted proxies.
//! - [`Target`]: `ip:<addr>`, `ip:<cidr>`, `header:<name>:<value>`, the one
//!   syntax for lists, blocks, logs and the admin API.
//! - [`Rule`]: which requests a limit applies to and whose counter they
//!   count on.

mod digest;
pub mod identity;
pub mod rule;
pub mod target;

pub use identity::{ClientIpConfig, ForwardedHeader};
pub use rule::{KeyPart, KeySpec, KeySpecError, RequestMatch, Rule};
pub use target::{Target, TargetError};
