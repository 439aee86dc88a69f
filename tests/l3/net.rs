//! The network of an L3 run: a bridge in the harness's own namespace
//! (address `.1`, where the targets and the webhook receiver listen), and
//! one network namespace per node behind a veth on it (`.10` and up), with
//! addresses that exist only there. Faults are nftables rules in a
//! `bridge`-family table on the forward hook (the one that sees frames
//! between two ports of the bridge), and links set down.

use std::process::Command;

pub struct Hub {
    pub id: u32,
    pub prefix: String,
    bridge: String,
    table: String,
    pub namespaces: Vec<String>,
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn must(program: &str, args: &[&str]) {
    if let Err(e) = run(program, args) {
        panic!("{e}");
    }
}

impl Hub {
    /// A bridge and `nodes` namespaces, on the first free id.
    pub fn create(nodes: usize) -> Self {
        for offset in 0..200 {
            let id = (std::process::id() + offset) % 200 + 20;
            let bridge = format!("qul3br{id}");
            if run("ip", &["link", "add", &bridge, "type", "bridge"]).is_err() {
                continue;
            }
            let prefix = format!("10.233.{id}");
            let table = format!("qu_l3_{id}");
            let mut hub = Self { id, prefix, bridge, table, namespaces: Vec::new() };
            must("ip", &["addr", "add", &format!("{}.1/24", hub.prefix), "dev", &hub.bridge]);
            must("ip", &["link", "set", &hub.bridge, "up"]);
            must("nft", &["add", "table", "bridge", &hub.table]);
            must(
                "nft",
                &["add", "chain", "bridge", &hub.table, "forward", "{ type filter hook forward priority 0 ; }"],
            );
            for i in 0..nodes {
                hub.add_namespace(i);
            }
            return hub;
        }
        panic!("no free bridge id (ip link add qul3brN failed for every N; is this root?)");
    }

    fn add_namespace(&mut self, i: usize) {
        let ns = format!("qu-l3-{}-{i}", self.id);
        let (outer, inner) = (format!("ql{}h{i}", self.id), format!("ql{}n{i}", self.id));
        must("ip", &["netns", "add", &ns]);
        must("ip", &["link", "add", &outer, "type", "veth", "peer", "name", &inner]);
        must("ip", &["link", "set", &inner, "netns", &ns]);
        must("ip", &["link", "set", &outer, "master", &self.bridge]);
        must("ip", &["link", "set", &outer, "up"]);
        must("ip", &["-n", &ns, "addr", "add", &format!("{}/24", self.node_ip(i)), "dev", &inner]);
        must("ip", &["-n", &ns, "link", "set", &inner, "up"]);
        must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        self.namespaces.push(ns);
    }

    pub fn hub_ip(&self) -> String {
        format!("{}.1", self.prefix)
    }

    pub fn node_ip(&self, i: usize) -> String {
        format!("{}.{}", self.prefix, 10 + i)
    }

    pub fn wrapper(&self, i: usize) -> Vec<String> {
        ["ip", "netns", "exec", self.namespaces[i].as_str()].map(String::from).to_vec()
    }

    /// Drops every frame from node `a` to node `b` (one way).
    pub fn cut_one_way(&self, a: usize, b: usize) {
        let rule = format!("ip saddr {} ip daddr {} drop", self.node_ip(a), self.node_ip(b));
        must("nft", &["add", "rule", "bridge", &self.table, "forward", &rule]);
    }

    /// Drops new connections that node `a` dials to node `b`'s peer port,
    /// and nothing else (a one-way dial cut: `b` can still dial `a`).
    pub fn cut_dial(&self, a: usize, b: usize, port: u16) {
        let rule = format!(
            "ip saddr {} ip daddr {} tcp dport {port} tcp flags & (syn | ack) == syn drop",
            self.node_ip(a),
            self.node_ip(b)
        );
        must("nft", &["add", "rule", "bridge", &self.table, "forward", &rule]);
    }

    /// Splits the nodes into `side` and the rest: nothing crosses.
    pub fn partition(&self, side: &[usize], nodes: usize) {
        for a in side {
            for b in (0..nodes).filter(|b| !side.contains(b)) {
                self.cut_one_way(*a, b);
                self.cut_one_way(b, *a);
            }
        }
    }

    /// Takes node `i`'s link down or up (a flapping link).
    pub fn link(&self, i: usize, up: bool) {
        let outer = format!("ql{}h{i}", self.id);
        must("ip", &["link", "set", &outer, if up { "up" } else { "down" }]);
    }

    /// Removes every rule and brings every link up.
    pub fn heal(&self) {
        must("nft", &["flush", "chain", "bridge", &self.table, "forward"]);
        for i in 0..self.namespaces.len() {
            self.link(i, true);
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = run("nft", &["delete", "table", "bridge", &self.table]);
        for ns in &self.namespaces {
            let _ = run("ip", &["netns", "del", ns]);
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}
