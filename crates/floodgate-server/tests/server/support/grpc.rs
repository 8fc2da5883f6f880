//! A client of floodgate's Envoy rate limit service, from the types the
//! `envoy-types` crate generates.

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use tonic::transport::Channel;

/// A connected client of the service at `addr`, each call bounded to 5 s.
pub(crate) async fn rls_client(addr: SocketAddr) -> RateLimitServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    RateLimitServiceClient::new(channel)
}
