//! [`RedisCluster`]: primaries without replicas, every slot assigned.

use redis::InfoDict;

use super::node::Node;
use crate::unique::free_port;

/// The hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// A Redis Cluster of primaries without replicas, every slot assigned.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    /// Each node's cluster id, in `nodes` order.
    ids: Vec<String>,
}

impl RedisCluster {
    /// Starts `primaries` nodes with `cluster-enabled yes`, joins them as
    /// `redis-cli --cluster create` does (an even share of the slots each,
    /// distinct config epochs, `CLUSTER MEET`), and waits until every node
    /// reports `cluster_state:ok` and knows every other.
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
        if let Err(e) = create(&nodes) {
            let logs: Vec<String> = nodes.iter().map(Node::log_tail).collect();
            panic!("creating the cluster failed: {e}\n{}", logs.join("\n---\n"));
        }
        let ids = nodes
            .iter()
            .map(|n| n.must::<String>(&["CLUSTER", "MYID"]))
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
                let Ok(info) = node.query::<InfoDict>(&["CLUSTER", "INFO"]) else {
                    return false;
                };
                let Ok(nodes) = node.query::<String>(&["CLUSTER", "NODES"]) else {
                    return false;
                };
                info.get::<String>("cluster_state").as_deref() == Some("ok")
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

    /// Sends `args` (a command and its arguments) to node `node`; the reply
    /// as text, the way `redis-cli` prints it: one line per element of an
    /// array, a nil as an empty line.
    ///
    /// # Panics
    /// When the node cannot be reached or answers an error.
    pub fn cli(&self, node: usize, args: &[&str]) -> String {
        crate::command::query_text(&self.nodes[node].client(), args)
            .unwrap_or_else(|e| panic!("{e}"))
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
        self.nodes[0].must(&["CLUSTER", "KEYSLOT", key])
    }

    /// Which node (index) owns `slot`, as node 0 sees it.
    pub fn slot_owner(&self, slot: u16) -> usize {
        let nodes: String = self.nodes[0].must(&["CLUSTER", "NODES"]);
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
        let (from_node, to_node) = (&self.nodes[from], &self.nodes[to]);
        let setslot = |node: &Node, args: &[&str]| {
            let mut all = vec!["CLUSTER", "SETSLOT", &slot_s];
            all.extend_from_slice(args);
            node.must::<()>(&all);
        };
        setslot(to_node, &["IMPORTING", from_id]);
        setslot(from_node, &["MIGRATING", to_id]);
        let to_port = to_node.port.to_string();
        loop {
            let keys: Vec<String> = from_node.must(&["CLUSTER", "GETKEYSINSLOT", &slot_s, "100"]);
            if keys.is_empty() {
                break;
            }
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            migrate.extend(keys.iter().map(String::as_str));
            from_node.must::<()>(&migrate);
        }
        // The new owner first, then the old one, then the rest, as
        // redis-cli does: no moment where no node claims the slot.
        setslot(to_node, &["NODE", to_id]);
        setslot(from_node, &["NODE", to_id]);
        for node in (0..self.nodes.len())
            .filter(|&i| i != from && i != to)
            .map(|i| &self.nodes[i])
        {
            setslot(node, &["NODE", to_id]);
        }
    }
}

/// Joins `nodes` into one cluster the way `redis-cli --cluster create`
/// does, with commands rather than redis-cli itself: each node takes its
/// share of the slots (redis-cli's split) and its own config epoch, then
/// the first node meets every other (gossip does the rest).
fn create(nodes: &[Node]) -> Result<(), String> {
    let per_node = f64::from(SLOTS) / nodes.len() as f64;
    let mut first: u16 = 0;
    let mut cursor = 0.0;
    for (i, node) in nodes.iter().enumerate() {
        let last = if i == nodes.len() - 1 {
            SLOTS - 1
        } else {
            // As redis-cli rounds; always within 0..SLOTS.
            ((cursor + per_node - 1.0).round() as u16).clamp(first, SLOTS - 1)
        };
        node.query::<()>(&[
            "CLUSTER",
            "ADDSLOTSRANGE",
            &first.to_string(),
            &last.to_string(),
        ])?;
        node.query::<()>(&["CLUSTER", "SET-CONFIG-EPOCH", &(i + 1).to_string()])?;
        first = last + 1;
        cursor += per_node;
    }
    let (meeting, others) = nodes.split_first().ok_or("no nodes")?;
    for node in others {
        let bus: Vec<String> = node.query(&["CONFIG", "GET", "cluster-port"])?;
        let bus = bus.get(1).ok_or("CONFIG GET cluster-port: no value")?;
        meeting.query::<()>(&["CLUSTER", "MEET", "127.0.0.1", &node.port.to_string(), bus])?;
    }
    Ok(())
}
