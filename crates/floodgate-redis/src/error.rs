//! Redis failures as floodgate's typed store errors.

use floodgate_core::{Error, StoreError, StoreErrorKind};
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// Sorts a redis error into the kind that tells a caller whether retrying
/// helps: timeouts and lost connections may pass; script errors will not.
pub(crate) fn store_error(what: &str, e: RedisError) -> Error {
    let kind = if e.is_timeout() {
        StoreErrorKind::Timeout
    } else if e.is_connection_dropped() || e.is_connection_refusal() || e.is_io_error() {
        StoreErrorKind::ConnectionDropped
    } else if matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::ReadOnly
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::TryAgain
                | ServerErrorKind::BusyLoading
        )
    ) {
        // The node answering is not (yet, or any more) the one that can
        // serve: a failover or resharding in progress, as passing as a
        // dropped connection.
        StoreErrorKind::ConnectionDropped
    } else {
        match e.kind() {
            ErrorKind::Server(
                ServerErrorKind::ResponseError
                | ServerErrorKind::ExecAbort
                | ServerErrorKind::NoScript
                | ServerErrorKind::CrossSlot,
            )
            | ErrorKind::Extension
            | ErrorKind::UnexpectedReturnType
            | ErrorKind::Parse => StoreErrorKind::Script,
            _ => StoreErrorKind::Other,
        }
    };
    Error::Store(StoreError::with_source(
        kind,
        format!("redis {what} failed"),
        e,
    ))
}

/// A reply that does not have the shape the script promises.
pub(crate) fn bad_reply(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::Store(StoreError::new(
        StoreErrorKind::Script,
        format!("redis {what}: unexpected reply: {detail}"),
    ))
}

/// The error of a call that found no primary to talk to.
pub(crate) fn no_primary(detail: &str) -> Error {
    Error::Store(StoreError::new(
        StoreErrorKind::ConnectionDropped,
        format!("no Redis primary known: {detail}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(e: RedisError) -> StoreErrorKind {
        match store_error("test", e) {
            Error::Store(s) => s.kind(),
            other => panic!("not a store error: {other:?}"),
        }
    }

    #[test]
    fn sorts_errors_by_whether_retrying_helps() {
        let io = |k| RedisError::from(std::io::Error::new(k, "x"));
        assert_eq!(
            kind_of(io(std::io::ErrorKind::TimedOut)),
            StoreErrorKind::Timeout
        );
        assert_eq!(
            kind_of(io(std::io::ErrorKind::ConnectionRefused)),
            StoreErrorKind::ConnectionDropped
        );
        assert_eq!(
            kind_of(io(std::io::ErrorKind::BrokenPipe)),
            StoreErrorKind::ConnectionDropped
        );
        assert_eq!(
            kind_of(RedisError::from((
                ErrorKind::Server(ServerErrorKind::ResponseError),
                "ERR user_script:1: boom"
            ))),
            StoreErrorKind::Script
        );
        assert_eq!(
            kind_of(RedisError::from((
                ErrorKind::Server(ServerErrorKind::ReadOnly),
                "READONLY You can't write against a read only replica."
            ))),
            StoreErrorKind::ConnectionDropped
        );
        assert_eq!(
            kind_of(RedisError::from((ErrorKind::AuthenticationFailed, "no"))),
            StoreErrorKind::Other
        );
    }
}
