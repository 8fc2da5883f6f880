//! Clients for one Redis address: a `rediss://` address gets the configured
//! certificates, and TLS gets a crypto provider whichever other crates in
//! the process enabled one. Used by every topology's connection code (the
//! standalone and cluster links, the Sentinels and the primary they name).

use redis::{Client, IntoConnectionInfo};

use crate::config::TlsOptions;

/// A client for `info`, trusting `tls` when it is a `rediss://` address.
pub(crate) fn client(
    info: impl IntoConnectionInfo,
    tls: &TlsOptions,
) -> redis::RedisResult<Client> {
    let info = info.into_connection_info()?;
    if matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        install_crypto_provider();
        Client::build_with_tls(info, tls.certificates())
    } else {
        Client::open(info)
    }
}

/// Makes ring rustls' process-wide crypto provider unless one is set, so
/// TLS works even where another crate enabled a second rustls provider
/// (rustls then refuses to pick one itself).
pub(crate) fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another thread installing one is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
