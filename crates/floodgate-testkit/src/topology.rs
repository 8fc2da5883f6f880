//! Multi-process Redis set-ups for tests: a Redis Cluster, a primary with a
//! replica watched by Sentinels, a TLS-enabled server.
//!
//! Every process listens on free loopback ports, works in a temporary
//! directory of its own, and is killed (its directory removed) when the
//! set-up is dropped. Set-ups are driven with `redis-cli` (Debian's
//! `redis-tools`) and, for certificates, the `openssl` command.
//!
//! ```no_run
//! use floodgate_testkit::topology::{RedisCluster, SentinelSet, TlsRedis};
//!
//! let cluster = RedisCluster::start(3);
//! let seeds = cluster.urls(); // redis://127.0.0.1:<port> × 3
//! let slot = cluster.key_slot("floodgate:{ip:192.0.2.1}:api:state");
//! cluster.move_slot(slot, (cluster.slot_owner(slot) + 1) % 3);
//!
//! let mut sentinels = SentinelSet::start();
//! let gap = sentinels.failover(); // SENTINEL FAILOVER, until the replica is primary
//!
//! let tls = TlsRedis::start(&[]);
//! let url = tls.url(); // rediss://127.0.0.1:<port>/0, trusting tls.ca_file()
//! # let _ = (seeds, gap, url);
//! ```

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{ensure_redis_server_installed, free_port, ping, read_tail, send_signal, temp_dir};

/// How long a set-up may take to come up before the test fails.
const SETUP_DEADLINE: Duration = Duration::from_secs(30);

/// One `redis-server` process (a data node or a Sentinel) of a set-up.
#[derive(Debug)]
struct Node {
    /// Its (TLS, for a TLS node) port.
    port: u16,
    /// Working directory and log; removed on drop.
    dir: PathBuf,
    /// The process.
    child: Child,
}

impl Node {
    /// Starts `redis-server <args>` in `dir` (created) with its log there;
    /// does not wait for it.
    fn spawn(port: u16, dir: PathBuf, args: &[OsString]) -> Node {
        ensure_redis_server_installed();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let child = Command::new("redis-server")
            .args(args)
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning redis-server: {e}"));
        Node { port, dir, child }
    }

    /// Starts a node on a free port and waits until `up` holds. `make` gives
    /// the working directory and arguments for a port. A free port can be
    /// taken (by another test's server, or as the local port of any outgoing
    /// connection) between being picked and being bound; when the process
    /// exits before it is up, another port is tried, up to 5 in all.
    fn launch(
        what: &str,
        make: impl Fn(u16) -> (PathBuf, Vec<OsString>),
        mut up: impl FnMut(&Node) -> bool,
    ) -> Node {
        let mut logs = Vec::new();
        for _ in 0..5 {
            let port = free_port();
            let (dir, args) = make(port);
            let mut node = Node::spawn(port, dir, &args);
            let deadline = Instant::now() + SETUP_DEADLINE;
            loop {
                if up(&node) {
                    return node;
                }
                if !matches!(node.child.try_wait(), Ok(None)) {
                    logs.push(format!("port {port}:\n{}", node.log_tail()));
                    break;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "{what} on port {port} did not come up; log:\n{}",
                        node.log_tail()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!(
            "{what} exited before coming up on 5 ports; logs:\n{}",
            logs.join("\n---\n")
        );
    }

    /// Launches a plain data node (no persistence, loopback only, plus
    /// `extra(port)`) and waits until it answers `PING`.
    fn data(what: &str, extra: impl Fn(u16) -> Vec<String>) -> Node {
        Node::launch(
            what,
            |port| {
                let mut args = os_args(&["--port", &port.to_string()]);
                args.extend(os_args(&LOOPBACK_NO_PERSISTENCE));
                args.extend(extra(port).into_iter().map(OsString::from));
                (temp_dir(port), args)
            },
            |n| ping(n.addr()),
        )
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Waits until `ready` holds, failing with the log when the process
    /// exits or the deadline passes.
    fn wait(&mut self, what: &str, mut ready: impl FnMut(&Node) -> bool) {
        let deadline = Instant::now() + SETUP_DEADLINE;
        loop {
            if ready(self) {
                return;
            }
            if !matches!(self.child.try_wait(), Ok(None)) || Instant::now() >= deadline {
                panic!(
                    "{what} on port {} did not come up; log:\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes the process (SIGSTOP): its connections stay open and nothing
    /// is answered. Dropping the node still kills it.
    fn pause(&self) {
        send_signal(self.child.id(), "STOP");
    }

    /// Lets a paused process run again (SIGCONT).
    fn resume(&self) {
        send_signal(self.child.id(), "CONT");
    }

    fn log_tail(&self) -> String {
        read_tail(&self.dir.join("redis.log"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-server` arguments for a TLS-only node on `port` using the
/// certificates in `certs`, plus `extra`.
fn tls_args(port: u16, certs: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut args = os_args(&["--port", "0", "--tls-port", &port.to_string()]);
    args.extend(os_args(&LOOPBACK_NO_PERSISTENCE));
    args.extend(os_args(&["--tls-auth-clients", "yes"]));
    for (flag, file) in [
        ("--tls-cert-file", "server.crt"),
        ("--tls-key-file", "server.key"),
        ("--tls-ca-cert-file", "ca.crt"),
    ] {
        args.push(flag.into());
        args.push(certs.join(file).into_os_string());
    }
    args.extend(os_args(extra));
    args
}

/// Every node listens on loopback only and keeps nothing on disk.
const LOOPBACK_NO_PERSISTENCE: [&str; 6] =
    ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];

fn os_args(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// Runs `redis-cli <args>`; its standard output, or an error with both
/// outputs.
fn redis_cli(args: &[&str]) -> Result<String, String> {
    let out = Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running redis-cli (install Debian's redis-tools): {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // redis-cli exits 0 on an error reply; errors start with ERR or (error).
    if out.status.success() && !stdout.starts_with("ERR") && !stdout.starts_with("(error)") {
        Ok(stdout)
    } else {
        Err(format!(
            "redis-cli {args:?}: {}{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `redis-cli -p <port> <args>` on plain TCP.
fn try_cli(port: u16, args: &[&str]) -> Result<String, String> {
    let port = port.to_string();
    let mut all = vec!["-p", port.as_str()];
    all.extend_from_slice(args);
    redis_cli(&all)
}

/// [`try_cli`], panicking on failure.
fn cli(port: u16, args: &[&str]) -> String {
    try_cli(port, args).unwrap_or_else(|e| panic!("{e}"))
}

/// A Redis Cluster of primaries without replicas, every slot assigned.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    /// Each node's cluster id, in `nodes` order.
    ids: Vec<String>,
}

impl RedisCluster {
    /// Starts `primaries` nodes with `cluster-enabled yes`, joins them with
    /// `redis-cli --cluster create`, and waits until every node reports
    /// `cluster_state:ok` and knows every other.
    ///
    /// # Panics
    /// When the cluster does not form within 30 s (with the node logs).
    pub fn start(primaries: usize) -> Self {
        assert!(primaries >= 3, "a Redis Cluster needs at least 3 primaries");
        let nodes: Vec<Node> = (0..primaries)
            .map(|_| {
                Node::data("cluster node", |_| {
                    let bus = free_port().to_string();
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        &bus,
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                    ]
                    .map(String::from)
                    .to_vec()
                })
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addrs.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        if let Err(e) = redis_cli(&create) {
            let logs: Vec<String> = nodes.iter().map(Node::log_tail).collect();
            panic!("creating the cluster failed: {e}\n{}", logs.join("\n---\n"));
        }
        let ids = nodes
            .iter()
            .map(|n| cli(n.port, &["cluster", "myid"]).trim().to_owned())
            .collect();
        let mut cluster = RedisCluster { nodes, ids };
        cluster.wait_until_consistent();
        cluster
    }

    /// Waits until every node says `cluster_state:ok` and sees every node
    /// connected with the same slot owners.
    fn wait_until_consistent(&mut self) {
        let n = self.nodes.len();
        let ports: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        for node in &mut self.nodes {
            node.wait("cluster", |node| {
                let info = cli(node.port, &["cluster", "info"]);
                let nodes = cli(node.port, &["cluster", "nodes"]);
                info.contains("cluster_state:ok")
                    && nodes.lines().filter(|l| l.contains("connected")).count() == n
                    && ports.iter().all(|p| nodes.contains(&format!(":{p}@")))
            });
        }
    }

    /// `redis://127.0.0.1:<port>` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Every node's port, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// `redis-cli -p <port of node> <args>`'s output.
    ///
    /// # Panics
    /// When redis-cli fails or answers an error.
    pub fn cli(&self, node: usize, args: &[&str]) -> String {
        cli(self.nodes[node].port, args)
    }

    /// Freezes node `node` (SIGSTOP), as a server stuck in a long command or
    /// swapped out: connections to it stay open and nothing is answered.
    /// After `--cluster-node-timeout` (2 s) the other nodes count it as
    /// failed and, with no replica to promote, the cluster refuses every
    /// command until it is [`RedisCluster::resume`]d.
    pub fn pause(&self, node: usize) {
        self.nodes[node].pause();
    }

    /// Lets a [`RedisCluster::pause`]d node run again (SIGCONT).
    pub fn resume(&self, node: usize) {
        self.nodes[node].resume();
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub fn key_slot(&self, key: &str) -> u16 {
        let out = self.cli(0, &["cluster", "keyslot", key]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT answered {out:?}"))
    }

    /// Which node (index) owns `slot`, as node 0 sees it.
    pub fn slot_owner(&self, slot: u16) -> usize {
        let nodes = self.cli(0, &["cluster", "nodes"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let owns = fields.iter().skip(8).any(|range| {
                let range = range.trim_start_matches('[');
                match range.split_once('-') {
                    _ if range.contains("->") || range.contains("-<") => false,
                    Some((a, b)) => {
                        a.parse::<u16>().is_ok_and(|a| a <= slot)
                            && b.parse::<u16>().is_ok_and(|b| slot <= b)
                    }
                    None => range.parse::<u16>() == Ok(slot),
                }
            });
            if owns && let Some(i) = self.ids.iter().position(|id| id == fields[0]) {
                return i;
            }
        }
        panic!("no node owns slot {slot}:\n{nodes}");
    }

    /// Moves `slot`, with its keys, to node `to`, the way `redis-cli
    /// --cluster reshard` does: importing/migrating states, `MIGRATE` of
    /// every key, then `CLUSTER SETSLOT <slot> NODE` on every node. Clients
    /// meanwhile get ASK (keys already moved) and then MOVED.
    ///
    /// # Panics
    /// When a step fails.
    pub fn move_slot(&self, slot: u16, to: usize) {
        let from = self.slot_owner(slot);
        if from == to {
            return;
        }
        let slot_s = slot.to_string();
        let (from_id, to_id) = (self.ids[from].as_str(), self.ids[to].as_str());
        self.cli(to, &["cluster", "setslot", &slot_s, "importing", from_id]);
        self.cli(from, &["cluster", "setslot", &slot_s, "migrating", to_id]);
        let to_port = self.nodes[to].port.to_string();
        loop {
            let keys = self.cli(from, &["cluster", "getkeysinslot", &slot_s, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut migrate = vec!["migrate", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            migrate.extend(keys);
            self.cli(from, &migrate);
        }
        // The new owner first, then the old one, then the rest, as
        // redis-cli does: no moment where no node claims the slot.
        self.cli(to, &["cluster", "setslot", &slot_s, "node", to_id]);
        self.cli(from, &["cluster", "setslot", &slot_s, "node", to_id]);
        for i in (0..self.nodes.len()).filter(|&i| i != from && i != to) {
            self.cli(i, &["cluster", "setslot", &slot_s, "node", to_id]);
        }
    }
}

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
            cli(n.port, &["info", "replication"]).contains("master_link_status:up")
        });
        let replica_port = replica.port;
        let mut sentinels: Vec<Node> = (0..3)
            .map(|_| {
                Node::launch(
                    "sentinel",
                    |port| {
                        let dir = temp_dir(port);
                        std::fs::create_dir_all(&dir)
                            .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
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
                        (dir, vec![conf.into_os_string(), "--sentinel".into()])
                    },
                    |n| ping(n.addr()),
                )
            })
            .collect();
        for s in &mut sentinels {
            s.wait("sentinel", |s| {
                let Ok(replicas) = redis_cli(&[
                    "-p",
                    &s.port.to_string(),
                    "sentinel",
                    "replicas",
                    SENTINEL_MASTER,
                ]) else {
                    return false;
                };
                let others = cli(s.port, &["sentinel", "sentinels", SENTINEL_MASTER]);
                replicas.contains(&replica_port.to_string())
                    && others.lines().filter(|l| *l == "name").count() >= 2
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
        let port = self.sentinels[i].port.to_string();
        let out = redis_cli(&[
            "-p",
            &port,
            "sentinel",
            "get-master-addr-by-name",
            SENTINEL_MASTER,
        ])
        .ok()?;
        out.lines().nth(1)?.trim().parse().ok()
    }

    /// Runs `SENTINEL FAILOVER` and waits until every Sentinel names the
    /// replica as the primary and it answers `ROLE` as master. Returns how
    /// long that took.
    ///
    /// # Panics
    /// When the failover does not complete within 30 s.
    pub fn failover(&mut self) -> Duration {
        self.fail_over_by(|set| {
            cli(
                set.sentinels[0].port,
                &["sentinel", "failover", SENTINEL_MASTER],
            );
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
            if named && cli(after, &["role"]).starts_with("master") {
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

    /// `redis-cli -p <port> <args>` on the data node at `port`.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        cli(port, args)
    }

    /// [`SentinelSet::cli`] that returns the failure (a killed node, an
    /// error reply) instead of panicking.
    pub fn try_cli(&self, port: u16, args: &[&str]) -> Result<String, String> {
        try_cli(port, args)
    }
}

/// redis-server arguments creating ACL user `name` with `password`, allowed
/// keys matching `keys` and exactly `commands` (ACL SETUSER spelling, e.g.
/// `floodgate_redis::ACL_COMMANDS`), nothing else.
pub fn acl_user(name: &str, password: &str, keys: &str, commands: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--user".to_owned(),
        name.to_owned(),
        "on".to_owned(),
        format!(">{password}"),
        "resetkeys".to_owned(),
        format!("~{keys}"),
        "resetchannels".to_owned(),
        "-@all".to_owned(),
    ];
    args.extend(commands.iter().map(|c| format!("+{c}")));
    args
}

/// A `redis-server` serving TLS only (`--port 0 --tls-port <port>`), with a
/// CA, a server certificate for 127.0.0.1 and localhost, and a client
/// certificate made at start with the `openssl` command. Clients must
/// present a certificate signed by the CA (`tls-auth-clients yes`, Redis'
/// default).
#[derive(Debug)]
pub struct TlsRedis {
    node: Node,
    /// Where the certificates are: a directory of their own, removed on drop.
    certs: PathBuf,
}

impl TlsRedis {
    /// Makes the certificates, starts the server with `extra` arguments
    /// (e.g. `["--user", "floodgate", "on", ">secret", "~floodgate:*",
    /// "+@all"]`) and waits until it answers `PING` over TLS.
    ///
    /// # Panics
    /// When `openssl` is missing or fails, or the server does not come up.
    pub fn start(extra: &[&str]) -> Self {
        // The certificates live outside the node's directory, which a retry
        // on another port replaces.
        let certs = temp_dir(0).join("certs");
        std::fs::create_dir_all(&certs)
            .unwrap_or_else(|e| panic!("creating {}: {e}", certs.display()));
        make_certificates(&certs);
        let node = Node::launch(
            "TLS redis-server",
            |port| (temp_dir(port), tls_args(port, &certs, extra)),
            |n| tls_cli(n.port, &certs, &["ping"]).is_ok_and(|out| out.trim() == "PONG"),
        );
        TlsRedis { node, certs }
    }

    /// Its TLS port.
    pub fn port(&self) -> u16 {
        self.node.port
    }

    /// `rediss://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.node.port)
    }

    /// `rediss://<user>:<password>@127.0.0.1:<port>/0`.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("rediss://{user}:{password}@127.0.0.1:{}/0", self.node.port)
    }

    /// The CA certificate (PEM) that signed the server and client certificates.
    pub fn ca_file(&self) -> PathBuf {
        self.certs.join("ca.crt")
    }

    /// A client certificate (PEM) the server accepts.
    pub fn client_cert_file(&self) -> PathBuf {
        self.certs.join("client.crt")
    }

    /// The key (PEM) of [`TlsRedis::client_cert_file`].
    pub fn client_key_file(&self) -> PathBuf {
        self.certs.join("client.key")
    }

    /// `redis-cli --tls ... <args>` as the default user.
    ///
    /// # Panics
    /// When redis-cli fails or answers an error.
    pub fn cli(&self, args: &[&str]) -> String {
        tls_cli(self.node.port, &self.certs, args).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        if let Some(dir) = self.certs.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `redis-cli --tls` with the certificates in `certs`.
fn tls_cli(port: u16, certs: &Path, args: &[&str]) -> Result<String, String> {
    let port = port.to_string();
    let path = |f: &str| certs.join(f).to_string_lossy().into_owned();
    let (ca, cert, key) = (path("ca.crt"), path("client.crt"), path("client.key"));
    let mut all = vec![
        "--tls", "--cacert", &ca, "--cert", &cert, "--key", &key, "-p", &port,
    ];
    all.extend_from_slice(args);
    redis_cli(&all)
}

/// Writes `ca.{crt,key}`, `server.{crt,key}` (for 127.0.0.1 and localhost)
/// and `client.{crt,key}` into `dir`, all signed by the CA, valid one day.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running openssl (apt-get install openssl): {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let days = ["-days", "1"];
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=floodgate test CA",
        days[0],
        days[1],
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
         basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap_or_else(|e| panic!("writing server.ext: {e}"));
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap_or_else(|e| panic!("writing client.ext: {e}"));
    for (name, cn) in [("server", "localhost"), ("client", "floodgate")] {
        let (key, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={cn}"),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-extfile",
            &ext,
            days[0],
            days[1],
        ]);
    }
}
