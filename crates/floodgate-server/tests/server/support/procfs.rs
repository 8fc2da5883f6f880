//! What the kernel shows in /proc: processes (running or not, their parents,
//! groups and command lines), a process's memory and what it waits in, and a
//! listening socket's accept queue.

use std::collections::BTreeSet;
use std::net::SocketAddr;

/// A process as /proc shows it.
pub(crate) struct ProcInfo {
    pub(crate) pid: u32,
    pub(crate) ppid: u32,
    pub(crate) pgid: u32,
    /// The executable's name (at most 15 bytes).
    pub(crate) comm: String,
}

/// Every live (not zombie) process.
pub(crate) fn processes() -> Vec<ProcInfo> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(process)
        .collect()
}

/// Process `pid`, if it lives (exists and is not a zombie).
fn process(pid: u32) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp ..."
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    (state != "Z").then_some(ProcInfo {
        pid,
        ppid,
        pgid,
        comm,
    })
}

/// The command line of every process that has one (not kernel threads),
/// its arguments joined by spaces.
pub(crate) fn command_lines() -> Vec<String> {
    std::fs::read_dir("/proc")
        .expect("reading /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .filter(|c| !c.is_empty())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .collect()
}

/// Whether `pid` runs (exists and is not a zombie).
pub(crate) fn running(pid: u32) -> bool {
    process(pid).is_some()
}

/// The floodgate processes `parent` started (its workers; not the short-lived
/// `kill` commands it runs to signal them).
pub(crate) fn live_children(parent: u32) -> BTreeSet<u32> {
    processes()
        .into_iter()
        .filter(|p| p.ppid == parent && p.comm == "floodgate")
        .map(|p| p.pid)
        .collect()
}

/// The CPU time `pid` has spent, user and system, in clock ticks (fields 14
/// and 15 of /proc/<pid>/stat).
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/stat: {e}"));
    let (_, rest) = stat
        .rsplit_once(')')
        .unwrap_or_else(|| panic!("/proc/{pid}/stat has no command name: {stat}"));
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| {
            f.parse()
                .unwrap_or_else(|_| panic!("/proc/{pid}/stat: {stat}"))
        })
        .collect();
    fields.iter().sum()
}

/// One line of /proc/<pid>/status (`VmRSS`, `State`), without its name.
fn status_field(pid: u32, name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| Some(l.strip_prefix(name)?.strip_prefix(':')?.trim().to_owned()))
}

/// Resident memory of `pid`, from /proc/<pid>/status.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS")
        .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// What `pid` is doing, for a failure message: its state and the kernel
/// function it waits in.
pub(crate) fn describe(pid: u32) -> String {
    let state = status_field(pid, "State").unwrap_or_default();
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    format!("State: {state}, waiting in {wchan:?}")
}

/// Connections waiting in the accept queue of the IPv4 socket listening on
/// `addr` (from /proc/net/tcp, whose `rx_queue` of a listening socket is
/// its backlog); `None` when nothing listens there.
pub(crate) fn accept_queue(addr: SocketAddr) -> Option<u32> {
    let SocketAddr::V4(v4) = addr else {
        panic!("accept_queue reads /proc/net/tcp: IPv4 only, not {addr}");
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(v4.ip().octets()),
        v4.port()
    );
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        // sl, local_address, rem_address, st (0A: listening), tx_queue:rx_queue
        .find(|f| f.len() > 4 && f[1] == local && f[3] == "0A")
        .and_then(|f| f[4].split_once(':').map(|(_, rx)| rx.to_owned()))
        .and_then(|rx| u32::from_str_radix(&rx, 16).ok())
}
