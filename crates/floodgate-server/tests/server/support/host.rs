//! What a test takes from this machine: free loopback ports, a directory of
//! its own, an installed program, a file of the checkout.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use floodgate_testkit::free_port;
use tempfile::TempDir;

/// A loopback address with a port nobody listens on right now.
pub(crate) fn free_addr() -> SocketAddr {
    loopback(free_port())
}

/// `127.0.0.1:port`.
pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The first of `n` consecutive free loopback ports.
pub(crate) fn consecutive_free_ports(n: usize) -> u16 {
    for _ in 0..100 {
        let first = free_port();
        let held: Vec<_> = (0..n as u16)
            .map_while(|i| {
                first
                    .checked_add(i)
                    .and_then(|p| std::net::TcpListener::bind(loopback(p)).ok())
            })
            .collect();
        if held.len() == n {
            return first;
        }
    }
    panic!("no {n} consecutive free ports on 127.0.0.1");
}

/// A fresh directory under the system's temporary directory, named after
/// `label`, removed with everything in it when dropped.
pub(crate) fn temp_dir(label: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("floodgate-test-{label}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a temporary directory for {label}: {e}"))
}

/// The program `$var` names (which must exist), else `name` on `PATH`,
/// else the first of `fallbacks` that exists.
pub(crate) fn find_program(var: &str, name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{var}={} does not exist", path.display());
        return Some(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// The root of the checkout (deploy/, docs/).
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}
