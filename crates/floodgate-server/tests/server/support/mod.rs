//! What the server tests drive, one module each: the processes they start
//! and the machine they share, the clients they send with, the upstream
//! behind the gateway, nginx and PM2 in front of it.
//!
//! From the top (each uses only those below it): `nginx`, `pm2` and `load`;
//! `http`, `raw` and `grpc` (clients); `process` (the `floodgate` binary, process
//! groups); `upstream`, `logs`, `wait`, `procfs`, `machine`, `host`.

pub(crate) mod grpc;
pub(crate) mod host;
pub(crate) mod http;
pub(crate) mod load;
pub(crate) mod logs;
pub(crate) mod machine;
pub(crate) mod nginx;
pub(crate) mod pm2;
pub(crate) mod process;
pub(crate) mod procfs;
pub(crate) mod raw;
pub(crate) mod upstream;
pub(crate) mod wait;
