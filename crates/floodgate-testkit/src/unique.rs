//! What no other test has: a free port, a key prefix, a temporary path.

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A TCP port on 127.0.0.1 that was free when this was called.
///
/// Another process may take it before the caller binds it;
/// [`crate::RedisServer::start`] retries with a new port when that happens.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("binding 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("local address of a bound listener")
        .port()
}

/// A key prefix no other test (in this or any concurrent test process) uses,
/// so tests can share one Redis without seeing each other's keys.
///
/// `label` should name the test; it must not contain `{`, `}`, `*`, `?` or
/// `[` so the prefix stays usable as a hash-tag-free, glob-safe key prefix.
pub fn unique_prefix(label: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "fgtest:{label}:{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A path under the system temp directory that no other call returns, in
/// this process or in any other running one: the process id and a
/// per-process counter make it unique (a port number does not: the kernel
/// may hand the same free port to two threads one after the other).
///
/// Nothing is created there, and nothing removes it: for callers that
/// create the file, socket or directory themselves (or check that
/// something else does). A directory of a test's own that is removed when
/// done is a `tempfile::TempDir`, as the test kit's servers use.
pub fn unique_temp_path(label: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "floodgate-{label}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_prefixes_differ() {
        assert_ne!(unique_prefix("a"), unique_prefix("a"));
    }
}
