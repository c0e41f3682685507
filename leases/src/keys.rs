//! The etcd key layout, in one place. Every key Lockstep writes starts with
//! [`PREFIX`]; a new layout gets a new version segment, never a rewrite.

/// Root of every key; the version segment allows a side-by-side migration.
pub const PREFIX: &str = "/lockstep/v1/";

pub fn agent(agent: &str) -> String {
    format!("{PREFIX}agents/{agent}")
}

pub const AGENTS: &str = "/lockstep/v1/agents/";

pub fn lock(name: &str) -> String {
    format!("{PREFIX}locks/{name}")
}

/// The deployment lock of a service.
pub fn deploy_lock(service: &str) -> String {
    lock(&format!("deploy/{service}"))
}

pub const LOCKS: &str = "/lockstep/v1/locks/";

pub fn budget_holders(cluster: &str) -> String {
    format!("{PREFIX}clusters/{cluster}/budget/")
}

pub fn budget_waiters(cluster: &str) -> String {
    format!("{PREFIX}clusters/{cluster}/budget-queue/")
}

pub fn cluster_policy(cluster: &str) -> String {
    format!("{PREFIX}clusters/{cluster}/policy")
}

pub const LEADER: &str = "/lockstep/v1/leader";

pub const AUDIT: &str = "/lockstep/v1/audit/";

/// The audit log's sequence counter.
pub const AUDIT_SEQ: &str = "/lockstep/v1/audit-seq";
