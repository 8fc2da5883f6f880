//! [`TlsRedis`]: a `redis-server` serving TLS only, with certificates made
//! for it by `rcgen`.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use redis::{Client, ClientTlsConfig, TlsCertificates};
use tempfile::TempDir;

use super::node::{Node, data_args, os_args};
use crate::command;
use crate::process::work_dir;

/// A `redis-server` serving TLS only (`--port 0 --tls-port <port>`), with a
/// CA, a server certificate for 127.0.0.1 and localhost, and a client
/// certificate made at start. Clients must present a certificate signed by
/// the CA (`tls-auth-clients yes`, Redis' default).
#[derive(Debug)]
pub struct TlsRedis {
    node: Node,
    /// Where the certificates are: a directory of their own, removed on drop.
    certs: TempDir,
}

impl TlsRedis {
    /// Makes the certificates, starts the server with `extra` arguments
    /// (e.g. `["--user", "floodgate", "on", ">secret", "~floodgate:*",
    /// "+@all"]`) and waits until it answers `PING` over TLS.
    ///
    /// # Panics
    /// When the certificates cannot be made or the server does not come up.
    pub fn start(extra: &[&str]) -> Self {
        // The certificates live outside the node's directory, which a retry
        // on another port replaces.
        let certs = work_dir("redis-certs", false);
        make_certificates(certs.path());
        let node = Node::launch(
            "TLS redis-server",
            |port, _| tls_args(port, certs.path(), extra),
            |n| command::ping(&tls_client(n.port, certs.path())),
        );
        TlsRedis { node, certs }
    }

    /// Its TLS port.
    pub fn port(&self) -> u16 {
        self.node.port
    }

    /// `rediss://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.node.port)
    }

    /// `rediss://<user>:<password>@127.0.0.1:<port>/0`.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("rediss://{user}:{password}@127.0.0.1:{}/0", self.node.port)
    }

    /// The CA certificate (PEM) that signed the server and client certificates.
    pub fn ca_file(&self) -> PathBuf {
        self.certs.path().join("ca.crt")
    }

    /// A client certificate (PEM) the server accepts.
    pub fn client_cert_file(&self) -> PathBuf {
        self.certs.path().join("client.crt")
    }

    /// The key (PEM) of [`TlsRedis::client_cert_file`].
    pub fn client_key_file(&self) -> PathBuf {
        self.certs.path().join("client.key")
    }

    /// Sends `args` (a command and its arguments) over TLS as the default
    /// user, with the client certificate; the reply as text, the way
    /// `redis-cli` prints it: one line per element of an array, a nil as
    /// an empty line.
    ///
    /// # Panics
    /// When the server cannot be reached or answers an error.
    pub fn cli(&self, args: &[&str]) -> String {
        command::query_text(&tls_client(self.node.port, self.certs.path()), args)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// `redis-server` arguments for a TLS-only node on `port` using the
/// certificates in `certs`, plus `extra`.
fn tls_args(port: u16, certs: &Path, extra: &[&str]) -> Vec<std::ffi::OsString> {
    let mut args = data_args(port, true);
    args.extend(os_args(&["--tls-auth-clients", "yes"]));
    for (flag, file) in [
        ("--tls-cert-file", "server.crt"),
        ("--tls-key-file", "server.key"),
        ("--tls-ca-cert-file", "ca.crt"),
    ] {
        args.push(flag.into());
        args.push(certs.join(file).into_os_string());
    }
    args.extend(os_args(extra));
    args
}

/// A client of the TLS node on `port`, trusting the CA in `certs` and
/// presenting its client certificate.
fn tls_client(port: u16, certs: &Path) -> Client {
    // The redis crate's rustls needs a process-wide crypto provider; where
    // another crate enabled a second one, rustls will not pick one itself.
    // Losing a race to another thread installing one is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |file: &str| {
        let path = certs.join(file);
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    };
    let url = format!("rediss://127.0.0.1:{port}/0");
    Client::build_with_tls(
        url.as_str(),
        TlsCertificates {
            client_tls: Some(ClientTlsConfig {
                client_cert: read("client.crt"),
                client_key: read("client.key"),
            }),
            root_cert: Some(read("ca.crt")),
        },
    )
    .unwrap_or_else(|e| panic!("a TLS client for {url}: {e}"))
}

/// Writes `ca.{crt,key}`, `server.{crt,key}` (for 127.0.0.1 and localhost)
/// and `client.{crt,key}` into `dir`, the latter two signed by the CA.
fn make_certificates(dir: &Path) {
    let write = |file: &str, pem: String| {
        let path = dir.join(file);
        std::fs::write(&path, pem).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    };

    let ca_key = made("CA key", KeyPair::generate());
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "floodgate test CA");
    let ca_cert = made("CA certificate", ca.self_signed(&ca_key));
    write("ca.crt", ca_cert.pem());
    write("ca.key", ca_key.serialize_pem());
    let issuer = Issuer::new(ca, ca_key);

    for (name, cn, names, usage) in [
        (
            "server",
            "localhost",
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        (
            "client",
            "floodgate",
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
    ] {
        let key = made("key", KeyPair::generate());
        let mut params = made("names", CertificateParams::new(names));
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![usage];
        let cert = made("certificate", params.signed_by(&key, &issuer));
        write(&format!("{name}.crt"), cert.pem());
        write(&format!("{name}.key"), key.serialize_pem());
    }
}

/// What `made` holds, or a panic saying which certificate piece failed.
fn made<T>(what: &str, made: Result<T, rcgen::Error>) -> T {
    made.unwrap_or_else(|e| panic!("making the {what}: {e}"))
}
