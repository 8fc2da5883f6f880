//! The Lua scripts, assembled from `src/lua/` at compile time.
//!
//! Each script is its helper files followed by its own file; the header of
//! each file gives its KEYS, ARGV and reply. [`redis::Script`] hashes a script
//! once, sends `EVALSHA`, and on `NOSCRIPT` (a restarted or flushed Redis)
//! loads it with `SCRIPT LOAD` and sends the `EVALSHA` again.

use std::sync::LazyLock;

use redis::Script;

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
