//! Where the TCP peer's address comes from.

use std::net::SocketAddr;

use http::Extensions;

/// The TCP peer of a request, as a request extension.
///
/// Servers that do not use axum's `ConnectInfo` insert this into each
/// request (hyper: per connection, from the accepted socket's address).
/// Without it (or `ConnectInfo<SocketAddr>` with the `axum` feature) the
/// client address is unknown: IP access-list entries and IP blocks never
/// match, and rules keyed by `ip` do not apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// The peer address of a request: [`PeerAddr`], else axum's
/// `ConnectInfo<SocketAddr>` (with the `axum` feature), else unknown.
pub fn peer_addr(extensions: &Extensions) -> Option<SocketAddr> {
    if let Some(PeerAddr(addr)) = extensions.get::<PeerAddr>() {
        return Some(*addr);
    }
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) =
        extensions.get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(*addr);
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn peer_addr_prefers_the_explicit_extension() {
        let mut ext = Extensions::new();
        assert_eq!(peer_addr(&ext), None);
        let a: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        #[cfg(feature = "axum")]
        {
            ext.insert(axum::extract::ConnectInfo(a));
            assert_eq!(peer_addr(&ext), Some(a));
        }
        let b: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        ext.insert(PeerAddr(b));
        assert_eq!(peer_addr(&ext), Some(b));
        let _ = a;
    }
}
