//! The Lua scripts, assembled from `src/lua/` at compile time.
//!
//! Each script is its helper files followed by its own file; the header of
//! each file gives its KEYS, ARGV and reply. Every script exists in two
//! forms (see `common.lua`):
//!
//! - a Redis function library (Redis 7 and later), loaded once with
//!   `FUNCTION LOAD` and called with `FCALL`: its helpers are defined once,
//!   when it is loaded, rather than on every call;
//! - an `EVALSHA` script, for servers without functions (Redis 6, or an ACL
//!   that does not allow them).
//!
//! A [`ScriptCall`] sends `FCALL` while its store's [`Dialect`] allows it.
//! When the function is missing (a restarted or flushed Redis, a new
//! cluster node) it loads the library and calls again; when the server
//! cannot run functions at all it turns the store to `EVALSHA` for good,
//! which after `NOSCRIPT` loads the script with `SCRIPT LOAD` and calls
//! again. Neither retry can apply a call twice: the server refused the first
//! before running anything.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};

use redis::aio::ConnectionLike;
use redis::{
    Arg, Cmd, ErrorKind, FromRedisValue, RedisError, RedisResult, Script, ServerErrorKind,
    ToRedisArgs,
};

/// A script made of the named files of `src/lua/`, in order, called `$name`,
/// whose function has the flags `$flags` (a Lua table of strings).
macro_rules! lua_script {
    ($name:literal $flags:literal: $($file:literal),+ $(,)?) => {
        LazyLock::new(|| {
            LuaScript::new(
                $name,
                $flags,
                concat!($(include_str!(concat!("lua/", $file, ".lua"))),+),
            )
        })
    };
}

/// `check.lua`: one atomic call per batch of checks.
pub(crate) static CHECK: LazyLock<LuaScript> =
    lua_script!("check" "{}": "common", "limits", "check");

/// `peek.lua`: a check that records nothing.
pub(crate) static PEEK: LazyLock<LuaScript> =
    lua_script!("peek" "{'no-writes'}": "common", "limits", "peek");

/// `overrides.lua`: per-key overrides.
pub(crate) static OVERRIDES: LazyLock<LuaScript> =
    lua_script!("overrides" "{}": "common", "overrides");

/// `top.lua`: every instance's top-clients summary.
pub(crate) static TOP: LazyLock<LuaScript> = lua_script!("top" "{}": "common", "top");

/// `block_put.lua`: records a manual or penalty block in the registry.
pub(crate) static BLOCK_PUT: LazyLock<LuaScript> =
    lua_script!("block_put" "{}": "common", "registry", "block_put");

/// `block_list.lua`: the blocks in force.
pub(crate) static BLOCK_LIST: LazyLock<LuaScript> =
    lua_script!("block_list" "{}": "common", "registry", "block_list");

/// `block_remove.lua`: lifts every block of a target from the registry.
pub(crate) static BLOCK_REMOVE: LazyLock<LuaScript> =
    lua_script!("block_remove" "{}": "common", "registry", "block_remove");

/// One script in both of its forms.
pub(crate) struct LuaScript {
    /// The `EVALSHA` form: the source, then a call of its `main`.
    eval: Script,
    /// The function's name in the `FCALL` form, also its library's:
    /// `floodgate_<script>_<SHA-1 of the EVALSHA form>`, so that instances
    /// of different floodgate versions sharing a Redis each call their own.
    function: String,
    /// The `FCALL` form: a library registering `function`.
    library: String,
}

impl LuaScript {
    /// Redis runs a function without the `no-writes` flag only when it
    /// could write: not over `maxmemory` under `noeviction`, nor while
    /// writes are stopped (a failed save, too few replicas). An `EVALSHA`
    /// script would fail only at its first write; `peek`, which never
    /// writes, is flagged so and runs whatever the server's state.
    fn new(name: &str, flags: &str, source: &str) -> Self {
        // The globals KEYS and ARGV are taken before common.lua declares
        // locals of the same names.
        let eval = Script::new(&format!(
            "local call_keys, call_argv = KEYS, ARGV\n{source}\nenter(call_keys, call_argv)\nreturn main()\n"
        ));
        let function = format!("floodgate_{name}_{}", eval.get_hash());
        let library = format!(
            "#!lua name={function}\n{source}\nredis.register_function{{\n  function_name = '{function}',\n  callback = function(keys, argv)\n    enter(keys, argv)\n    return main()\n  end,\n  flags = {flags},\n}}\n"
        );
        LuaScript {
            eval,
            function,
            library,
        }
    }
}

/// `check.lua`'s function library, as a store loads it.
pub(crate) fn check_library() -> &'static str {
    &CHECK.library
}

/// How a store calls its scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `FCALL`, after loading the library when the function is missing.
    Fcall,
    /// `EVALSHA`, after `SCRIPT LOAD` when the script is missing.
    Evalsha,
}

/// A store's [`Dialect`]: `FCALL` until its server shows that it cannot run
/// functions, then `EVALSHA` for the store's life.
#[derive(Debug, Default)]
pub(crate) struct DialectSwitch {
    evalsha: AtomicBool,
}

impl DialectSwitch {
    /// The dialect to call in now.
    pub(crate) fn get(&self) -> Dialect {
        if self.evalsha.load(Ordering::Relaxed) {
            Dialect::Evalsha
        } else {
            Dialect::Fcall
        }
    }

    fn fall_back(&self) {
        self.evalsha.store(true, Ordering::Relaxed);
    }
}

/// Whether `e` says the function called does not exist on that server.
fn function_missing(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
        && e.detail()
            .is_some_and(|d| d.starts_with("Function not found"))
}

/// Whether `e` says the server cannot, or may not, run functions: a server
/// older than Redis 7 (or one that only speaks part of its protocol), or an
/// ACL that denies `FCALL` or `FUNCTION LOAD`. Not a command the function
/// ran being denied: that call may have written, and must not run again.
fn functions_unavailable(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::Server(ServerErrorKind::NoPerm) => e.detail().is_some_and(|d| {
            d.contains("run the 'fcall' command") || d.contains("run the 'function|load' command")
        }),
        ErrorKind::Server(ServerErrorKind::ResponseError) => e.detail().is_some_and(|d| {
            d.starts_with("unknown command") || d.starts_with("unknown subcommand")
        }),
        _ => false,
    }
}

/// One call of a script, its keys and arguments written straight into one
/// command buffer.
///
/// Does what `redis::ScriptInvocation` does, without its cost on the hot
/// path: that keeps every key and argument in an allocation of its own, then
/// copies them all into a command on every call.
pub(crate) struct ScriptCall {
    script: &'static LuaScript,
    dialect: Dialect,
    cmd: Cmd,
    /// Keys declared in `new` but not pushed yet: every key goes before the
    /// first argument.
    keys_left: usize,
}

impl ScriptCall {
    /// A call of `script` in `dialect` with `keys` keys, then `args`
    /// arguments (the latter only sizes the buffer). Push the keys with
    /// [`ScriptCall::key`] first, then the arguments with
    /// [`ScriptCall::arg`].
    pub(crate) fn new(
        script: &'static LuaScript,
        dialect: Dialect,
        keys: usize,
        args: usize,
    ) -> Self {
        let mut cmd = Cmd::with_capacity(3 + keys + args, 80 + 48 * keys + 12 * args);
        match dialect {
            Dialect::Fcall => cmd.arg("FCALL").arg(script.function.as_str()),
            Dialect::Evalsha => cmd.arg("EVALSHA").arg(script.eval.get_hash()),
        };
        cmd.arg(keys);
        ScriptCall {
            script,
            dialect,
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

    /// Runs the script (see the module's documentation for the retries);
    /// turns `switch` to `EVALSHA` if the server cannot run functions.
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        conn: &mut impl ConnectionLike,
        switch: &DialectSwitch,
    ) -> RedisResult<T> {
        debug_assert_eq!(self.keys_left, 0, "fewer keys than declared");
        if self.dialect == Dialect::Evalsha {
            return evalsha(&self.cmd, self.script, conn).await;
        }
        match self.cmd.query_async(conn).await {
            Err(e) if function_missing(&e) => {
                let load = redis::cmd("FUNCTION")
                    .arg("LOAD")
                    .arg("REPLACE")
                    .arg(self.script.library.as_str())
                    .query_async::<()>(conn)
                    .await;
                match load {
                    Ok(()) => return self.cmd.query_async(conn).await,
                    Err(e) if !functions_unavailable(&e) => return Err(e),
                    Err(_) => {}
                }
            }
            Err(e) if functions_unavailable(&e) => {}
            result => return result,
        }
        switch.fall_back();
        evalsha(&self.as_evalsha(), self.script, conn).await
    }

    /// This call as `EVALSHA`: the same keys and arguments.
    fn as_evalsha(&self) -> Cmd {
        let args = self.cmd.args_iter().skip(2).filter_map(|arg| match arg {
            Arg::Simple(bytes) => Some(bytes),
            // Cursors are for SCAN; a script call has none.
            _ => None,
        });
        let size = args.clone().map(<[u8]>::len).sum::<usize>();
        let mut cmd = Cmd::with_capacity(args.clone().count() + 2, 64 + size);
        cmd.arg("EVALSHA").arg(self.script.eval.get_hash());
        for bytes in args {
            cmd.arg(bytes);
        }
        cmd
    }
}

/// Runs `cmd`, an `EVALSHA` of `script`; after `NOSCRIPT` loads the script
/// and runs it once more.
async fn evalsha<T: FromRedisValue>(
    cmd: &Cmd,
    script: &LuaScript,
    conn: &mut impl ConnectionLike,
) -> RedisResult<T> {
    match cmd.query_async(conn).await {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.eval.load_async(conn).await?;
            cmd.query_async(conn).await
        }
        result => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(reply: &str) -> RedisError {
        match redis::parse_redis_value(reply.as_bytes()) {
            Ok(redis::Value::ServerError(e)) => e.into(),
            other => panic!("{reply:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn errors_are_told_apart() {
        let missing = server_error("-ERR Function not found\r\n");
        assert!(function_missing(&missing));
        assert!(!functions_unavailable(&missing));
        for reply in [
            // Redis 6.
            "-ERR unknown command 'FCALL', with args beginning with: 'floodgate_check_x' '2' \r\n",
            "-ERR unknown subcommand 'LOAD'. Try FUNCTION HELP.\r\n",
            "-NOPERM User floodgate has no permissions to run the 'fcall' command\r\n",
            "-NOPERM this user has no permissions to run the 'function|load' command\r\n",
        ] {
            let e = server_error(reply);
            assert!(functions_unavailable(&e), "{reply}");
            assert!(!function_missing(&e), "{reply}");
        }
        for reply in [
            "-ERR user_script:1: Script attempted to access nonexistent global variable\r\n",
            "-NOSCRIPT No matching script. Please use EVAL.\r\n",
            "-OOM command not allowed when used memory > 'maxmemory'.\r\n",
            // A command of the function's own denied: it may have written.
            "-NOPERM User floodgate has no permissions to run the 'set' command script: floodgate_check_x\r\n",
            "-NOPERM No permissions to access a key\r\n",
        ] {
            let e = server_error(reply);
            assert!(!functions_unavailable(&e), "{reply}");
            assert!(!function_missing(&e), "{reply}");
        }
    }

    #[test]
    fn both_forms_name_the_same_script() {
        let check = &*CHECK;
        assert_eq!(
            check.function,
            format!("floodgate_check_{}", check.eval.get_hash())
        );
        assert!(
            check
                .library
                .starts_with(&format!("#!lua name={}\n", check.function))
        );
        assert!(
            check
                .library
                .contains(&format!("function_name = '{}'", check.function))
        );
        assert_ne!(CHECK.function, PEEK.function);
    }
}
