//! floodgate's layer on a tonic gRPC server: the standard health service,
//! limited per API key sent as metadata. A refused call is the gRPC status
//! `RESOURCE_EXHAUSTED`, with `retry-after` and the RateLimit entries in its
//! metadata.
//!
//! ```sh
//! cargo run -p floodgate-tower --example tonic_health
//! # then, with grpcurl: 4 calls, the 4th refused
//! for i in 1 2 3 4; do grpcurl -plaintext -H 'x-api-key: alice' 127.0.0.1:50051 grpc.health.v1.Health/Check; done
//! ```
//!
//! tonic puts the peer in its own `TcpConnectInfo`, which the layer does not
//! read: key gRPC rules by metadata (as here), or set a
//! [`PeerAddr`](floodgate_tower::PeerAddr) extension in a layer before
//! floodgate's for `ip` rules.

use floodgate_core::MemoryStore;
use floodgate_tower::{FloodgateLayer, LimiterConfig, Rule};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let limiter = LimiterConfig::builder()
        .rule(Rule::token_bucket("grpc-per-key", 3, "1m").key("header:x-api-key"))
        .build(MemoryStore::new(100_000))?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    let addr = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:50051".into());
    eprintln!("gRPC health service on {addr}, 3 calls a minute per x-api-key");
    tonic::transport::Server::builder()
        .layer(FloodgateLayer::new(limiter))
        .add_service(health)
        .serve(addr.parse()?)
        .await?;
    Ok(())
}
