//! The Lua scripts, assembled from `src/lua/` at compile time.
//!
//! Each script is its helper files followed by its own file; the header of
//! each file gives its KEYS, ARGV and reply. [`redis::Script`] hashes a script
//! once, sends `EVALSHA`, and on `NOSCRIPT` (a restarted or flushed Redis)
//! loads it with `SCRIPT LOAD` and sends the `EVALSHA` again.

use std::sync::LazyLock;

use redis::Script;

/// `check.lua`: one atomic call per batch of checks.
pub(crate) static CHECK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/common.lua"),
        include_str!("lua/limits.lua"),
        include_str!("lua/check.lua"),
    ))
});

/// `peek.lua`: a check that records nothing.
pub(crate) static PEEK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/common.lua"),
        include_str!("lua/limits.lua"),
        include_str!("lua/peek.lua"),
    ))
});

/// `block_put.lua`: records a manual or penalty block in the registry.
pub(crate) static BLOCK_PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/common.lua"),
        include_str!("lua/registry.lua"),
        include_str!("lua/block_put.lua"),
    ))
});

/// `block_list.lua`: the blocks in force.
pub(crate) static BLOCK_LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/common.lua"),
        include_str!("lua/registry.lua"),
        include_str!("lua/block_list.lua"),
    ))
});

/// `block_remove.lua`: lifts every block of a target from the registry.
pub(crate) static BLOCK_REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/common.lua"),
        include_str!("lua/registry.lua"),
        include_str!("lua/block_remove.lua"),
    ))
});
