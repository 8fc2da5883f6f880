//! Listening sockets: bound here, or inherited from a supervisor.
//!
//! `floodgate serve --workers N` binds each socket once and starts workers
//! that inherit it. All workers then accept from ONE kernel queue: a worker
//! that drains and exits leaves no queued connection behind, which is what
//! makes rolling restarts lose nothing. (Separate SO_REUSEPORT sockets would
//! each have their own queue, and connections queued on a closing socket are
//! reset.)

use std::net::SocketAddr;

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};

/// The environment variable naming the inherited main listener's fd.
pub const LISTEN_FD_ENV: &str = "FLOODGATE_LISTEN_FD";
/// The environment variable naming the inherited admin listener's fd.
pub const ADMIN_FD_ENV: &str = "FLOODGATE_ADMIN_FD";
/// The environment variable naming the inherited gRPC listener's fd.
pub const GRPC_FD_ENV: &str = "FLOODGATE_GRPC_FD";

/// Binds a listening TCP socket, with SO_REUSEPORT when asked.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> anyhow::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot listen on {addr}"))?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Lets `listener` survive `exec` into a worker; returns its fd number for
/// the worker's environment.
pub fn share_with_children(listener: &std::net::TcpListener) -> anyhow::Result<i32> {
    use std::os::fd::AsRawFd;
    socket2::SockRef::from(listener)
        .set_cloexec(false)
        .context("cannot share the listening socket")?;
    Ok(listener.as_raw_fd())
}

/// The listener a supervisor passed down in `env`, if any.
pub fn inherited(env: &str) -> anyhow::Result<Option<std::net::TcpListener>> {
    let Some(value) = std::env::var_os(env) else {
        return Ok(None);
    };
    let fd: i32 = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .filter(|fd| *fd > 2)
        .with_context(|| format!("{env} must be a file descriptor number above 2"))?;
    adopt(fd)
        .with_context(|| format!("{env}={fd} is not a listening TCP socket"))
        .map(Some)
}

/// Takes ownership of an inherited fd after checking it is a listening
/// TCP socket.
#[allow(unsafe_code)]
fn adopt(fd: i32) -> anyhow::Result<std::net::TcpListener> {
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
    // Check through a borrow first, so a wrong number is refused without
    // closing a descriptor this process does not own.
    // SAFETY: the fd is only borrowed for these calls; if it is not open the
    // calls fail with EBADF and nothing else is touched.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let probe = socket2::SockRef::from(&borrowed);
    let is_listener = probe.r#type().ok() == Some(Type::STREAM)
        && probe.is_listener().unwrap_or(false)
        && probe
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some();
    anyhow::ensure!(is_listener, "not a listening stream socket");
    // SAFETY: the supervisor passed this fd to this process alone for this
    // purpose, it is open (checked above), and nothing else in this process
    // refers to it, so owning it here is sound.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let listener = std::net::TcpListener::from(owned);
    listener.set_nonblocking(true)?;
    socket2::SockRef::from(&listener).set_cloexec(true)?;
    Ok(listener)
}
