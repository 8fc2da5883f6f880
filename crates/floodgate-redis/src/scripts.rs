//! The Lua scripts, assembled from `src/lua/` at compile time.
//!
//! Each script is its helper files followed by its own file; the header of
//! each file gives its KEYS, ARGV and reply. [`redis::Script`] hashes a script
//! once; a [`ScriptCall`] sends `EVALSHA`, and on `NOSCRIPT` (a restarted or
//! flushed Redis) loads the script with `SCRIPT LOAD` and sends the `EVALSHA`
//! again.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind, ToRedisArgs};

/// A script made of the named files of `src/lua/`, in order.
macro_rules! lua_script {
    ($($file:literal),+ $(,)?) => {
        LazyLock::new(|| Script::new(concat!($(include_str!(concat!("lua/", $file, ".lua"))),+)))
    };
}

/// `check.lua`: one atomic call per batch of checks.
pub(crate) static CHECK: LazyLock<Script> = lua_script!("common", "limits", "check");

/// `peek.lua`: a check that records nothing.
pub(crate) static PEEK: LazyLock<Script> = lua_script!("common", "limits", "peek");

/// `block_put.lua`: records a manual or penalty block in the registry.
pub(crate) static BLOCK_PUT: LazyLock<Script> = lua_script!("common", "registry", "block_put");

/// `block_list.lua`: the blocks in force.
pub(crate) static BLOCK_LIST: LazyLock<Script> = lua_script!("common", "registry", "block_list");

/// `block_remove.lua`: lifts every block of a target from the registry.
pub(crate) static BLOCK_REMOVE: LazyLock<Script> =
    lua_script!("common", "registry", "block_remove");

/// One `EVALSHA` of a script, its keys and arguments written straight into
/// one command buffer.
///
/// Does what `redis::ScriptInvocation` does, without its cost on the hot
/// path: that keeps every key and argument in an allocation of its own, then
/// copies them all into a command on every call.
pub(crate) struct ScriptCall {
    script: &'static Script,
    cmd: Cmd,
    /// Keys declared in `new` but not pushed yet: every key goes before the
    /// first argument.
    keys_left: usize,
}

impl ScriptCall {
    /// A call of `script` with `keys` keys, then `args` arguments (the
    /// latter only sizes the buffer). Push the keys with [`ScriptCall::key`]
    /// first, then the arguments with [`ScriptCall::arg`].
    pub(crate) fn new(script: &'static Script, keys: usize, args: usize) -> Self {
        let mut cmd = Cmd::with_capacity(3 + keys + args, 64 + 48 * keys + 12 * args);
        cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys);
        ScriptCall {
            script,
            cmd,
            keys_left: keys,
        }
    }

    /// Appends the next key.
    pub(crate) fn key(&mut self, key: impl ToRedisArgs) -> &mut Self {
        debug_assert!(self.keys_left > 0, "more keys than declared");
        self.keys_left = self.keys_left.saturating_sub(1);
        self.cmd.arg(key);
        self
    }

    /// Appends the next argument.
    pub(crate) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        debug_assert_eq!(self.keys_left, 0, "an argument before the last key");
        self.cmd.arg(arg);
        self
    }

    /// Runs the script; after `NOSCRIPT` loads it and runs it once more.
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        conn: &mut impl ConnectionLike,
    ) -> RedisResult<T> {
        debug_assert_eq!(self.keys_left, 0, "fewer keys than declared");
        match self.cmd.query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.script.load_async(conn).await?;
                self.cmd.query_async(conn).await
            }
            result => result,
        }
    }
}
