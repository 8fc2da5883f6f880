//! `[grpc]`: where the Envoy rate limit service (RLS v3) listens.

use std::net::SocketAddr;

use serde::Deserialize;

use super::problems::{Problems, Unknown, parse_addr};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawGrpc {
    listen: Option<String>,
    #[serde(flatten)]
    unknown: Unknown,
}

/// `[grpc]`.
#[derive(Debug, Clone, Default)]
pub struct GrpcSettings {
    /// Where `envoy.service.ratelimit.v3.RateLimitService`, gRPC health
    /// checking and server reflection listen; `None` (the default) serves
    /// no gRPC.
    pub listen: Option<SocketAddr>,
}

pub(super) fn validate_grpc(raw: RawGrpc, p: &mut Problems) -> GrpcSettings {
    p.unknown("grpc", &raw.unknown, &["listen"]);
    let listen = match raw.listen.as_deref() {
        None | Some("") => None,
        Some(text) => parse_addr(p, "grpc.listen", text),
    };
    GrpcSettings { listen }
}
