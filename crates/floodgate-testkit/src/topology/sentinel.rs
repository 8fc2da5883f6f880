//! [`SentinelSet`]: a primary, its replica, and three Sentinels watching them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::InfoDict;

use super::node::{Node, SETUP_DEADLINE};
use crate::command;

/// The name the Sentinels of a [`SentinelSet`] monitor the primary under.
pub const SENTINEL_MASTER: &str = "mymaster";

/// A primary, its replica, and three Sentinels watching them (quorum 2).
#[derive(Debug)]
pub struct SentinelSet {
    /// The two data nodes; which one is the primary changes on failover.
    data: Vec<Node>,
    /// The Sentinels.
    sentinels: Vec<Node>,
}

impl SentinelSet {
    /// Starts a primary, a replica of it, and three Sentinels, and waits
    /// until the replica is in sync and every Sentinel knows the primary,
    /// the replica and the other Sentinels.
    ///
    /// # Panics
    /// When the set does not come up within 30 s (with the logs).
    pub fn start() -> Self {
        let primary = Node::data("primary", |_| Vec::new());
        let primary_port = primary.port;
        let mut replica = Node::data("replica", |_| {
            ["--replicaof", "127.0.0.1", &primary_port.to_string()]
                .map(String::from)
                .to_vec()
        });
        replica.wait("replica", |n| {
            n.query::<InfoDict>(&["INFO", "replication"])
                .is_ok_and(|info| info.get::<String>("master_link_status").as_deref() == Some("up"))
        });
        let replica_port = replica.port.to_string();
        let mut sentinels: Vec<Node> = (0..3)
            .map(|_| {
                Node::launch(
                    "sentinel",
                    |port, dir| {
                        let conf = dir.join("sentinel.conf");
                        let text = format!(
                            "port {port}\nbind 127.0.0.1\n\
                             sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {primary_port} 2\n\
                             sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                             sentinel failover-timeout {SENTINEL_MASTER} 10000\n\
                             sentinel parallel-syncs {SENTINEL_MASTER} 1\n"
                        );
                        std::fs::write(&conf, text)
                            .unwrap_or_else(|e| panic!("writing {}: {e}", conf.display()));
                        vec![conf.into_os_string(), "--sentinel".into()]
                    },
                    |n| command::ping(&n.client()),
                )
            })
            .collect();
        for s in &mut sentinels {
            s.wait("sentinel", |s| {
                type Entries = Vec<HashMap<String, String>>;
                let replicas = s.query::<Entries>(&["SENTINEL", "REPLICAS", SENTINEL_MASTER]);
                let others = s.query::<Entries>(&["SENTINEL", "SENTINELS", SENTINEL_MASTER]);
                replicas.is_ok_and(|r| r.iter().any(|r| r.get("port") == Some(&replica_port)))
                    && others.is_ok_and(|o| o.len() >= 2)
            });
        }
        SentinelSet {
            data: vec![primary, replica],
            sentinels,
        }
    }

    /// `redis://127.0.0.1:<port>` of each Sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect()
    }

    /// The master name the Sentinels use, [`SENTINEL_MASTER`].
    pub fn master_name(&self) -> &'static str {
        SENTINEL_MASTER
    }

    /// The port of the primary as the first Sentinel names it.
    pub fn primary_port(&self) -> u16 {
        self.named_primary(0)
            .unwrap_or_else(|| panic!("sentinel 1 names no primary"))
    }

    /// `redis://127.0.0.1:<port>/0` of the current primary.
    pub fn primary_url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.primary_port())
    }

    /// The primary's port per Sentinel `i`, if it answers.
    fn named_primary(&self, i: usize) -> Option<u16> {
        let addr: Option<(String, u16)> = self.sentinels[i]
            .query(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER])
            .ok()?;
        addr.map(|(_, port)| port)
    }

    /// Runs `SENTINEL FAILOVER` and waits until every Sentinel names the
    /// replica as the primary and it answers `ROLE` as master. Returns how
    /// long that took.
    ///
    /// # Panics
    /// When the failover does not complete within 30 s.
    pub fn failover(&mut self) -> Duration {
        self.fail_over_by(|set| {
            set.sentinels[0].must::<()>(&["SENTINEL", "FAILOVER", SENTINEL_MASTER]);
        })
    }

    /// Kills the primary (SIGKILL) and waits until the Sentinels have
    /// noticed (`down-after-milliseconds` is 1 s), promoted the replica, and
    /// every one of them names it. Returns how long that took.
    ///
    /// # Panics
    /// When the failover does not complete within 30 s.
    pub fn kill_primary(&mut self) -> Duration {
        self.fail_over_by(|set| {
            let port = set.primary_port();
            if let Some(node) = set.data.iter_mut().find(|n| n.port == port) {
                let _ = node.child.kill();
                let _ = node.child.wait();
            }
        })
    }

    /// Freezes the primary (SIGSTOP: its connections stay open, nothing is
    /// answered) and waits until the Sentinels have noticed, promoted the
    /// replica, and every one of them names it. The old primary stays
    /// frozen until [`SentinelSet::thaw`]. Returns how long the failover
    /// took.
    ///
    /// # Panics
    /// When the failover does not complete within 30 s.
    pub fn freeze_primary(&mut self) -> Duration {
        self.fail_over_by(|set| {
            let port = set.primary_port();
            if let Some(node) = set.data.iter().find(|n| n.port == port) {
                node.pause();
            }
        })
    }

    /// Lets every data node that [`SentinelSet::freeze_primary`] froze run
    /// again. An old primary comes back believing it is the primary, until
    /// the Sentinels make it a replica of the new one.
    pub fn thaw(&mut self) {
        for node in &mut self.data {
            if matches!(node.child.try_wait(), Ok(None)) {
                node.resume();
            }
        }
    }

    /// Runs `trigger`, then waits until every Sentinel names the other data
    /// node and it answers `ROLE` as master.
    fn fail_over_by(&mut self, trigger: impl FnOnce(&mut Self)) -> Duration {
        let before = self.primary_port();
        let after = self
            .data
            .iter()
            .map(|n| n.port)
            .find(|&p| p != before)
            .unwrap_or_else(|| panic!("no replica to fail over to"));
        let started = Instant::now();
        trigger(self);
        let deadline = started + SETUP_DEADLINE;
        loop {
            let named = (0..self.sentinels.len()).all(|i| self.named_primary(i) == Some(after));
            if named
                && self
                    .try_cli(after, &["ROLE"])
                    .is_ok_and(|r| r.starts_with("master"))
            {
                return started.elapsed();
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = self.sentinels.iter().map(Node::log_tail).collect();
                panic!(
                    "failover from {before} to {after} did not complete; sentinel logs:\n{}",
                    logs.join("\n---\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `args` (a command and its arguments) to the data node at
    /// `port`; the reply as text, the way `redis-cli` prints it: one line
    /// per element of an array, a nil as an empty line.
    ///
    /// # Panics
    /// When the node cannot be reached or answers an error.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        self.try_cli(port, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`SentinelSet::cli`] that returns the failure (a killed node, an
    /// error reply) instead of panicking.
    pub fn try_cli(&self, port: u16, args: &[&str]) -> Result<String, String> {
        command::query_text(&command::client(&format!("redis://127.0.0.1:{port}")), args)
    }
}
