//! [`TlsRedis`]: a `redis-server` serving TLS only, with certificates made
//! for it by the `openssl` command.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use redis::{Client, ClientTlsConfig, TlsCertificates};
use tempfile::TempDir;

use super::node::{Node, data_args, os_args};
use crate::command;
use crate::process::work_dir;

/// A `redis-server` serving TLS only (`--port 0 --tls-port <port>`), with a
/// CA, a server certificate for 127.0.0.1 and localhost, and a client
/// certificate made at start with the `openssl` command. Clients must present a certificate signed by
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
    /// When `openssl` is missing or fails, or the server does not come up.
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
/// and `client.{crt,key}` into `dir`, all signed by the CA, valid one day.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running openssl (apt-get install openssl): {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let days = ["-days", "1"];
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=floodgate test CA",
        days[0],
        days[1],
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
         basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap_or_else(|e| panic!("writing server.ext: {e}"));
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap_or_else(|e| panic!("writing client.ext: {e}"));
    for (name, cn) in [("server", "localhost"), ("client", "floodgate")] {
        let (key, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={cn}"),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-extfile",
            &ext,
            days[0],
            days[1],
        ]);
    }
}
