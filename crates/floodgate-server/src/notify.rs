//! systemd's service notifications (`sd_notify(3)`), for `Type=notify`.
//!
//! systemd names a datagram socket in `NOTIFY_SOCKET` (a path, or `@name` in
//! the abstract namespace). floodgate sends `READY=1` once it serves (with
//! `--workers`, once every worker serves), `RELOADING=1` then `READY=1`
//! around a SIGHUP reload, and `STOPPING=1` when it starts to drain, so
//! `systemctl start` returns when floodgate answers, and units ordered after
//! it (nginx) start only then. Run any other way, `NOTIFY_SOCKET` is unset
//! and every call here does nothing.
//!
//! The supervisor removes the variable from its workers' environment: only
//! the process systemd started speaks for the service.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// The environment variable systemd names the socket in.
pub const SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Called by a process once it serves: a worker tells its supervisor; a
/// process on its own tells systemd, if systemd started it.
pub fn announce_ready() {
    if crate::worker::is_worker() {
        crate::worker::announce_ready();
    } else {
        ready("serving");
    }
}

/// Serving: `READY=1`, with `status` for `systemctl status`.
pub fn ready(status: &str) {
    send(&format!(
        "READY=1\nSTATUS={status}\nMAINPID={}",
        std::process::id()
    ));
}

/// A reload begins; [`ready`] must follow once it is done (or refused).
/// `MONOTONIC_USEC` tells systemd (253 and later) which reload this is:
/// without it, it may not tie the notification to the reload it asked for.
pub fn reloading() {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let micros = u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000;
    send(&format!(
        "RELOADING=1\nMONOTONIC_USEC={micros}\nSTATUS=reloading the config"
    ));
}

/// Draining before exit.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=draining in-flight requests");
}

/// Sends `message` to `$NOTIFY_SOCKET`, if set. A failure is logged and
/// otherwise ignored: systemd then times the start out, which says more
/// than a floodgate that refuses to serve.
fn send(message: &str) {
    // The supervisor does not pass the socket on; a worker that found it
    // anyway (an environment set by hand) still keeps quiet.
    if crate::worker::is_worker() {
        return;
    }
    let Some(socket) = std::env::var_os(SOCKET_ENV) else {
        return;
    };
    if let Err(e) = send_to(&socket, message) {
        tracing::warn!(
            socket = %socket.to_string_lossy(),
            error = %e,
            "cannot notify systemd"
        );
    }
}

fn send_to(socket: &OsStr, message: &str) -> io::Result<()> {
    let datagram = UnixDatagram::unbound()?;
    let name = socket.as_bytes();
    if let Some(abstract_name) = name.strip_prefix(b"@") {
        send_abstract(&datagram, abstract_name, message)
    } else if name.starts_with(b"/") {
        datagram.send_to(message.as_bytes(), Path::new(socket))?;
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is neither an absolute path nor an @abstract name",
        ))
    }
}

#[cfg(target_os = "linux")]
fn send_abstract(datagram: &UnixDatagram, name: &[u8], message: &str) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    datagram.send_to_addr(message.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &str) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract socket names exist on Linux only",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_path_and_an_abstract_socket() {
        let dir = floodgate_testkit::unique_temp_path("notify");
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let path = dir.join("notify.sock");
        let by_path = UnixDatagram::bind(&path).expect("bind a datagram socket");
        send_to(path.as_os_str(), "READY=1").expect("send to a path");
        let mut buf = [0u8; 256];
        let n = by_path.recv(&mut buf).expect("receive");
        assert_eq!(&buf[..n], b"READY=1");

        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let name = format!("floodgate-notify-test-{}", std::process::id());
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name)
                .expect("an abstract name");
            let by_name = UnixDatagram::bind_addr(&addr).expect("bind an abstract socket");
            send_to(OsStr::new(&format!("@{name}")), "STOPPING=1")
                .expect("send to an abstract name");
            let n = by_name.recv(&mut buf).expect("receive");
            assert_eq!(&buf[..n], b"STOPPING=1");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_relative_or_missing_socket_is_an_error_not_a_panic() {
        let relative =
            send_to(OsStr::new("notify.sock"), "READY=1").expect_err("a relative path is refused");
        assert_eq!(relative.kind(), io::ErrorKind::InvalidInput);
        let missing = send_to(OsStr::new("/nonexistent/floodgate/notify.sock"), "READY=1");
        assert!(missing.is_err());
    }
}
