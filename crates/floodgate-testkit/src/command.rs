//! Talking to a test's Redis: the `redis` crate's blocking client is the one
//! way the test kit sends a command, whether a readiness `PING`, a set-up
//! step (`CLUSTER MEET`, `SENTINEL ...`) or a test's own command through
//! [`crate::RedisServer::command`] and the topologies' `cli` methods.

use std::time::Duration;

use redis::{Client, Connection, FromRedisValue, RedisResult, Value};

/// How long connecting, connection set-up included, may take for a command.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a command's reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a readiness `PING` may take to connect, and then to be
/// answered: short, so a frozen server reads as down quickly.
const PING_TIMEOUT: Duration = Duration::from_millis(500);

/// A client for `url`, one of the loopback addresses the test kit makes.
///
/// # Panics
/// When `url` is not a Redis URL.
pub(crate) fn client(url: &str) -> Client {
    Client::open(url).unwrap_or_else(|e| panic!("a client for {url}: {e}"))
}

/// A connection to `client`, each read and write bounded by `reply`.
fn connect(client: &Client, connect: Duration, reply: Duration) -> RedisResult<Connection> {
    let conn = client.get_connection_with_timeout(connect)?;
    conn.set_read_timeout(Some(reply))?;
    conn.set_write_timeout(Some(reply))?;
    Ok(conn)
}

/// Whether the server of `client` answers `PING` within [`PING_TIMEOUT`]
/// (a frozen one accepts the connection but does not).
pub(crate) fn ping(client: &Client) -> bool {
    connect(client, PING_TIMEOUT, PING_TIMEOUT)
        .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn))
        .is_ok_and(|pong| pong == "PONG")
}

/// Sends `args` (a command and its arguments) on a connection of its own
/// and returns the reply as `T`; an error reply, a reply that is not a `T`
/// or no reply in time as the error's text.
pub(crate) fn query<T: FromRedisValue>(client: &Client, args: &[&str]) -> Result<T, String> {
    let Some((name, rest)) = args.split_first() else {
        return Err("no command to send".to_owned());
    };
    let mut cmd = redis::cmd(name);
    for arg in rest {
        cmd.arg(*arg);
    }
    connect(client, CONNECT_TIMEOUT, REPLY_TIMEOUT)
        .and_then(|mut conn| cmd.query::<T>(&mut conn))
        .map_err(|e| format!("{args:?} to {}: {e}", client.get_connection_info().addr()))
}

/// [`query`] with the reply as text: strings and numbers as themselves,
/// the elements of arrays, sets and maps one per line (nested ones
/// flattened), a nil as an empty string.
pub(crate) fn query_text(client: &Client, args: &[&str]) -> Result<String, String> {
    let reply: Value = query(client, args)?;
    let mut lines = Vec::new();
    push_text(&reply, &mut lines);
    Ok(lines.join("\n"))
}

/// The lines of `value` as [`query_text`] writes them.
fn push_text(value: &Value, lines: &mut Vec<String>) {
    match value {
        Value::Nil => lines.push(String::new()),
        Value::Int(n) => lines.push(n.to_string()),
        Value::BulkString(bytes) => lines.push(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => lines.push(s.clone()),
        Value::Okay => lines.push("OK".to_owned()),
        Value::Double(d) => lines.push(d.to_string()),
        Value::Boolean(b) => lines.push(b.to_string()),
        Value::VerbatimString { text, .. } => lines.push(text.clone()),
        Value::Array(items) | Value::Set(items) => {
            for item in items {
                push_text(item, lines);
            }
        }
        Value::Map(pairs) => {
            for (k, v) in pairs {
                push_text(k, lines);
                push_text(v, lines);
            }
        }
        other => lines.push(format!("{other:?}")),
    }
}
