//! `NetnsLab`: a private network of Linux network namespaces for fault
//! tests (#18 item 7). Every node (an etcd member, a coordinator, an agent,
//! the operator) gets a namespace of its own with one veth into a bridge
//! that lives in the lab's own "switch" namespace, so a fault between two
//! nodes is a fault of the network, not of loopback: a partition drops
//! packets silently (nftables in the node's namespace), a cut link makes a
//! node vanish, and each heals again.
//!
//! The test's own code reaches the nodes from the operator namespace:
//! [`NetnsLab::run`] runs a future on a thread that joined it (a network
//! namespace is per thread, and threads and processes started from there
//! inherit it), with a runtime of its own.
//!
//! Nothing touches the host's namespaces: the bridge and every address
//! (10.213.0.0/24, the same in every lab, since labs never share a link)
//! live in namespaces the lab made. Dropping the lab kills what runs in
//! them and deletes them.
//!
//! Must never: change the host's own network, or leave a namespace or a
//! process behind.

use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::HarnessError;

/// The lab's subnet; node n is 10.213.0.(n + 10).
const SUBNET_PREFIX: u8 = 24;
const FIRST_HOST: u8 = 10;

static LABS: AtomicU32 = AtomicU32::new(0);

/// One node: its namespace and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabNode {
    pub name: String,
    pub namespace: String,
    pub ip: Ipv4Addr,
}

impl LabNode {
    /// `ip netns exec <ns>`: the prefix that runs a program in the node.
    pub fn exec_prefix(&self) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.namespace.clone(),
        ]
    }
}

/// A lab of namespaces on one bridge.
#[derive(Debug)]
pub struct NetnsLab {
    /// Unique per lab: `ls<pid>x<n>`, short enough for interface names.
    tag: String,
    switch: String,
    nodes: Vec<LabNode>,
}

fn run(args: &[&str]) -> Result<Output, HarnessError> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|source| HarnessError::Spawn {
            program: args[0].to_owned(),
            source,
        })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(HarnessError::Fixture(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

impl NetnsLab {
    /// Why namespace labs cannot run here, if they cannot (not root, no
    /// `ip` or `nft`, or namespaces refused): the suite skips with it.
    pub fn unavailable() -> Option<String> {
        if !nix::unistd::Uid::effective().is_root() {
            return Some("network-namespace fault tests need root".into());
        }
        for tool in ["ip", "nft"] {
            if run(&["sh", "-c", &format!("command -v {tool}")]).is_err() {
                return Some(format!(
                    "network-namespace fault tests need `{tool}` (scripts/lib/setup.sh installs it)"
                ));
            }
        }
        match NetnsLab::new() {
            Ok(_) => None,
            Err(e) => Some(format!("cannot make network namespaces here: {e}")),
        }
    }

    /// An empty lab: the switch namespace with its bridge.
    pub fn new() -> Result<Self, HarnessError> {
        let tag = format!(
            "ls{}x{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let switch = format!("{tag}-sw");
        run(&["ip", "netns", "add", &switch])?;
        let lab = Self {
            tag,
            switch,
            nodes: Vec::new(),
        };
        lab.in_switch(&["ip", "link", "add", "br0", "type", "bridge"])?;
        lab.in_switch(&["ip", "link", "set", "br0", "up"])?;
        Ok(lab)
    }

    fn in_switch(&self, args: &[&str]) -> Result<Output, HarnessError> {
        let mut full = vec!["ip", "netns", "exec", &self.switch];
        full.extend_from_slice(args);
        run(&full)
    }

    fn in_node(&self, node: &LabNode, args: &[&str]) -> Result<Output, HarnessError> {
        let mut full = vec!["ip", "netns", "exec", node.namespace.as_str()];
        full.extend_from_slice(args);
        run(&full)
    }

    /// A new node on the bridge, with loopback and its address up.
    pub fn add_node(&mut self, name: &str) -> Result<LabNode, HarnessError> {
        let n = u8::try_from(self.nodes.len())
            .ok()
            .and_then(|n| n.checked_add(FIRST_HOST))
            .filter(|n| *n < 250)
            .ok_or_else(|| HarnessError::Fixture("a lab holds at most 240 nodes".into()))?;
        let node = LabNode {
            name: name.to_owned(),
            namespace: format!("{}-n{n}", self.tag),
            ip: Ipv4Addr::new(10, 213, 0, n),
        };
        run(&["ip", "netns", "add", &node.namespace])?;
        // Created in the switch namespace, one end moved into the node.
        let outer = format!("v{n}");
        self.in_switch(&[
            "ip", "link", "add", &outer, "type", "veth", "peer", "name", "eth0",
        ])?;
        self.in_switch(&["ip", "link", "set", "eth0", "netns", &node.namespace])?;
        self.in_switch(&["ip", "link", "set", &outer, "master", "br0", "up"])?;
        let cidr = format!("{}/{SUBNET_PREFIX}", node.ip);
        self.in_node(&node, &["ip", "addr", "add", &cidr, "dev", "eth0"])?;
        self.in_node(&node, &["ip", "link", "set", "eth0", "up"])?;
        self.in_node(&node, &["ip", "link", "set", "lo", "up"])?;
        self.nodes.push(node.clone());
        Ok(node)
    }

    /// Silently drops every packet between `a` and `b`, both ways (a
    /// partition: connections hang until their deadlines, as on a real
    /// network).
    pub fn partition(&self, a: &LabNode, b: &LabNode) -> Result<(), HarnessError> {
        for (node, peer) in [(a, b), (b, a)] {
            let peer_ip = peer.ip.to_string();
            self.in_node(node, &["nft", "add", "table", "inet", "lab"])?;
            self.in_node(
                node,
                &[
                    "nft", "add", "chain", "inet", "lab", "cut", "{", "type", "filter", "hook",
                    "input", "priority", "0", ";", "}",
                ],
            )?;
            self.in_node(
                node,
                &[
                    "nft", "add", "rule", "inet", "lab", "cut", "ip", "saddr", &peer_ip, "drop",
                ],
            )?;
        }
        Ok(())
    }

    /// Undoes every partition of `node` (both directions must be healed
    /// by calling this for both nodes).
    pub fn heal(&self, node: &LabNode) -> Result<(), HarnessError> {
        // Deleting a table that is not there is fine: nothing to heal.
        let _ = self.in_node(node, &["nft", "delete", "table", "inet", "lab"]);
        Ok(())
    }

    /// Cuts the node's link: it vanishes from the network (its processes
    /// keep running).
    pub fn unplug(&self, node: &LabNode) -> Result<(), HarnessError> {
        self.in_node(node, &["ip", "link", "set", "eth0", "down"])
            .map(drop)
    }

    pub fn plug(&self, node: &LabNode) -> Result<(), HarnessError> {
        self.in_node(node, &["ip", "link", "set", "eth0", "up"])
            .map(drop)
    }

    /// Runs `future` on a thread inside `node`'s namespace, on a runtime of
    /// its own: every socket it opens, and every process it starts without
    /// a prefix, is in that namespace.
    pub fn run<F, T>(&self, node: &LabNode, future: F) -> Result<T, HarnessError>
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let path = format!("/run/netns/{}", node.namespace);
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let ns = std::fs::File::open(&path).map_err(HarnessError::TempDir)?;
                    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                        HarnessError::Fixture(format!("cannot enter namespace {path}: {e}"))
                    })?;
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .map_err(HarnessError::TempDir)?;
                    Ok(runtime.block_on(future))
                })
                .join()
                .map_err(|_| HarnessError::Fixture("the lab's test thread panicked".into()))?
        })
    }

    fn remove_namespace(namespace: &str) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", namespace])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", namespace])
            .output();
    }
}

impl Drop for NetnsLab {
    fn drop(&mut self) {
        for node in &self.nodes {
            Self::remove_namespace(&node.namespace);
        }
        Self::remove_namespace(&self.switch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener on `node`'s address, made from inside its namespace.
    fn listener_in(lab: &NetnsLab, node: &LabNode) -> std::net::TcpListener {
        let ip = node.ip;
        lab.run(node, async move { std::net::TcpListener::bind((ip, 0)) })
            .unwrap()
            .unwrap()
    }

    /// Whether `from` can open a connection to `to` within a second.
    fn reaches(lab: &NetnsLab, from: &LabNode, to: std::net::SocketAddr) -> bool {
        lab.run(from, async move {
            matches!(
                tokio::time::timeout(
                    std::time::Duration::from_secs(1),
                    tokio::net::TcpStream::connect(to)
                )
                .await,
                Ok(Ok(_))
            )
        })
        .unwrap()
    }

    /// Two nodes reach each other over the bridge; a partition stops that
    /// and healing restores it; unplugging cuts a node off; a node cannot
    /// use another's address. Skips (with the reason) where namespaces
    /// cannot be made.
    #[test]
    fn nodes_talk_over_the_bridge_until_partitioned() {
        if let Some(why) = NetnsLab::unavailable() {
            eprintln!("skipped: {why}");
            return;
        }
        let mut lab = NetnsLab::new().unwrap();
        let a = lab.add_node("a").unwrap();
        let b = lab.add_node("b").unwrap();
        let listener = listener_in(&lab, &b);
        let at_b = listener.local_addr().unwrap();
        assert!(reaches(&lab, &a, at_b));
        lab.partition(&a, &b).unwrap();
        assert!(!reaches(&lab, &a, at_b));
        lab.heal(&a).unwrap();
        lab.heal(&b).unwrap();
        assert!(reaches(&lab, &a, at_b));
        lab.unplug(&b).unwrap();
        assert!(!reaches(&lab, &a, at_b));
        lab.plug(&b).unwrap();
        let ip = b.ip;
        let bound = lab
            .run(
                &a,
                async move { std::net::TcpListener::bind((ip, 0)).is_ok() },
            )
            .unwrap();
        assert!(!bound, "node a cannot bind node b's address");
    }
}
