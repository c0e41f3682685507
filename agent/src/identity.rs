//! Who holds this agent's id in etcd: the registration record, and the pure
//! judgement of a live holder found at claim time.
//!
//! A registration key still bound to a live lease is either this agent's
//! own predecessor (a killed or restarted agent on the same machine and
//! `data_dir`, or this process's own earlier session, whose lease has not
//! expired yet) or another agent configured with the same id. The first is
//! evicted at once (its lease revoked, which also frees the budget slots it
//! held); the second is refused, naming the holder. "The same install" is
//! machine id + canonical `data_dir`; "dead" is the recorded process gone
//! (or its pid reused, or the machine rebooted). An agent alive on the same
//! install is refused too: two agents must never share a data dir.
//!
//! Must never: evict a live agent, or let two live agents share an id.

use serde::{Deserialize, Serialize};

use crate::supervisor::record::Observed;

/// The registration record other components read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub agent: String,
    pub cluster: String,
    pub grpc_address: String,
    pub hostname: String,
    pub agent_version: String,
    /// `/etc/machine-id` (or `host:<hostname>` where there is none).
    #[serde(default)]
    pub machine_id: String,
    /// `/proc/sys/kernel/random/boot_id` when the agent started.
    #[serde(default)]
    pub boot_id: String,
    /// The canonical `data_dir`.
    #[serde(default)]
    pub data_dir: String,
    #[serde(default)]
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat`: tells the agent from a reused pid.
    #[serde(default)]
    pub pid_start_time: u64,
    /// When this agent process started.
    #[serde(default)]
    pub since_unix_ms: i64,
}

impl AgentRecord {
    /// This agent process, as it registers itself.
    pub fn current(
        agent: &str,
        cluster: &str,
        grpc_address: &str,
        data_dir: &std::path::Path,
    ) -> Self {
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let machine_id = std::fs::read_to_string("/etc/machine-id")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("host:{hostname}"));
        let pid = std::process::id();
        Self {
            agent: agent.to_owned(),
            cluster: cluster.to_owned(),
            grpc_address: grpc_address.to_owned(),
            hostname,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            machine_id,
            boot_id: crate::supervisor::record::boot_id(),
            data_dir: std::fs::canonicalize(data_dir)
                .unwrap_or_else(|_| data_dir.to_owned())
                .display()
                .to_string(),
            pid,
            pid_start_time: crate::supervisor::record::observe(pid).map_or(0, |o| o.start_time),
            since_unix_ms: crate::wire::now_unix_ms(),
        }
    }

    /// Same machine and same data dir as `other`.
    fn same_install(&self, other: &Self) -> bool {
        !self.machine_id.is_empty()
            && self.machine_id == other.machine_id
            && !self.data_dir.is_empty()
            && self.data_dir == other.data_dir
    }
}

/// What to do about a live holder of this agent's registration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderVerdict {
    /// Our own predecessor (or this process's earlier session): evict it.
    Predecessor,
    /// Another agent: refuse to start (or stay unregistered).
    Other,
}

/// Judges `holder` from `me`'s point of view; `observed` is what `/proc`
/// says now about the holder's pid (only meaningful on the same machine).
pub fn judge(me: &AgentRecord, holder: &AgentRecord, observed: Option<Observed>) -> HolderVerdict {
    if !me.same_install(holder) {
        return HolderVerdict::Other;
    }
    if holder.boot_id.is_empty() || holder.boot_id != me.boot_id {
        // Recorded before this machine's last boot: that process is gone.
        return if me.boot_id.is_empty() {
            HolderVerdict::Other
        } else {
            HolderVerdict::Predecessor
        };
    }
    if holder.pid == me.pid && holder.pid_start_time == me.pid_start_time {
        // This very process, on a session it has lost.
        return HolderVerdict::Predecessor;
    }
    match observed {
        Some(o) if o.state != 'Z' && o.state != 'X' && o.start_time == holder.pid_start_time => {
            HolderVerdict::Other
        }
        _ => HolderVerdict::Predecessor,
    }
}

/// Why the agent must not run with its configured id.
pub fn describe_holder(agent: &str, holder: &AgentRecord, now_unix_ms: i64) -> String {
    let ago = (now_unix_ms - holder.since_unix_ms).max(0) / 1000;
    format!(
        "agent id {agent:?} is already registered by a live agent at {address} (host {host}, pid {pid}, data_dir {data}) since unix ms {since} ({ago}s ago); two agents must not share an id: give this one its own `id` in agent.toml, or stop the other",
        address = holder.grpc_address,
        host = holder.hostname,
        pid = holder.pid,
        data = holder.data_dir,
        since = holder.since_unix_ms,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> AgentRecord {
        AgentRecord {
            agent: "eu-1".into(),
            cluster: "eu".into(),
            grpc_address: "10.0.0.1:7001".into(),
            hostname: "h1".into(),
            agent_version: "0".into(),
            machine_id: "m1".into(),
            boot_id: "b1".into(),
            data_dir: "/var/lib/lockstep".into(),
            pid: 100,
            pid_start_time: 5000,
            since_unix_ms: 1_000,
        }
    }

    fn alive(start_time: u64) -> Option<Observed> {
        Some(Observed {
            state: 'S',
            start_time,
        })
    }

    #[test]
    fn an_agent_on_another_machine_is_refused() {
        let holder = AgentRecord {
            machine_id: "m2".into(),
            ..me()
        };
        assert_eq!(judge(&me(), &holder, None), HolderVerdict::Other);
    }

    #[test]
    fn an_agent_with_another_data_dir_on_this_machine_is_refused() {
        let holder = AgentRecord {
            data_dir: "/srv/other".into(),
            pid: 7,
            ..me()
        };
        assert_eq!(judge(&me(), &holder, None), HolderVerdict::Other);
    }

    #[test]
    fn a_dead_predecessor_on_the_same_install_is_evicted() {
        let holder = AgentRecord { pid: 7, ..me() };
        assert_eq!(judge(&me(), &holder, None), HolderVerdict::Predecessor);
        let zombie = Some(Observed {
            state: 'Z',
            start_time: 5000,
        });
        assert_eq!(judge(&me(), &holder, zombie), HolderVerdict::Predecessor);
    }

    #[test]
    fn a_reused_pid_does_not_make_a_predecessor_look_alive() {
        let holder = AgentRecord { pid: 7, ..me() };
        assert_eq!(
            judge(&me(), &holder, alive(9999)),
            HolderVerdict::Predecessor
        );
    }

    #[test]
    fn a_live_agent_on_the_same_install_is_refused() {
        let holder = AgentRecord { pid: 7, ..me() };
        assert_eq!(judge(&me(), &holder, alive(5000)), HolderVerdict::Other);
    }

    #[test]
    fn a_holder_from_before_a_reboot_is_evicted() {
        let holder = AgentRecord {
            boot_id: "b0".into(),
            pid: 7,
            ..me()
        };
        assert_eq!(
            judge(&me(), &holder, alive(5000)),
            HolderVerdict::Predecessor
        );
    }

    #[test]
    fn this_process_s_own_earlier_session_is_evicted() {
        assert_eq!(judge(&me(), &me(), alive(5000)), HolderVerdict::Predecessor);
    }

    #[test]
    fn a_record_without_identity_is_refused() {
        let holder = AgentRecord {
            machine_id: String::new(),
            data_dir: String::new(),
            boot_id: String::new(),
            ..me()
        };
        assert_eq!(judge(&me(), &holder, None), HolderVerdict::Other);
    }

    #[test]
    fn the_refusal_names_the_holder_s_address_and_since_when() {
        let text = describe_holder("eu-1", &me(), 43_000);
        assert!(text.contains("10.0.0.1:7001"), "{text}");
        assert!(text.contains("42s ago"), "{text}");
    }
}
