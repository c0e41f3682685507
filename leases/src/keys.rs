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

/// The release index entry of one bundle.
pub fn release(service: &str, digest: &str) -> String {
    format!("{PREFIX}releases/{service}/{digest}")
}

pub fn releases_of(service: &str) -> String {
    format!("{PREFIX}releases/{service}/")
}

pub const RELEASES: &str = "/lockstep/v1/releases/";

/// A deployment's record: spec, engine state, progress.
pub fn deployment(id: &str) -> String {
    format!("{PREFIX}deployments/{id}")
}

/// Everything of a deployment's journal beyond its header key (format 2):
/// the step log and the engine snapshots.
pub fn deployment_dir(id: &str) -> String {
    format!("{PREFIX}deployments/{id}/")
}

/// One step of a deployment's log: the engine's input and what the driver
/// noted (zero-padded so keys sort in order).
pub fn deployment_step(id: &str, n: u64) -> String {
    format!("{PREFIX}deployments/{id}/steps/{n:012}")
}

/// One chunk of a snapshot generation of a deployment's record.
pub fn deployment_snapshot_chunk(id: &str, generation: u64, chunk: u32) -> String {
    format!("{PREFIX}deployments/{id}/snapshot/{generation:012}/{chunk:06}")
}

/// The chunks of one snapshot generation.
pub fn deployment_snapshot(id: &str, generation: u64) -> String {
    format!("{PREFIX}deployments/{id}/snapshot/{generation:012}/")
}

/// A deployment's events, one key per sequence number (zero-padded so keys
/// sort in order).
pub fn deployment_events(id: &str) -> String {
    format!("{PREFIX}deployment-events/{id}/")
}

pub fn deployment_event(id: &str, seq: u64) -> String {
    format!("{PREFIX}deployment-events/{id}/{seq:012}")
}

/// The active deployment of a service, if any: its id. A coordinator that
/// becomes leader resumes every deployment listed here.
pub fn active(service: &str) -> String {
    format!("{PREFIX}active/{service}")
}

pub const ACTIVE: &str = "/lockstep/v1/active/";

/// Every service's finished deployments.
pub const HISTORY: &str = "/lockstep/v1/history/";

/// Finished deployments of a service, oldest first.
pub fn history_of(service: &str) -> String {
    format!("{PREFIX}history/{service}/")
}

pub fn history(service: &str, finished_unix_ms: i64, id: &str) -> String {
    format!("{PREFIX}history/{service}/{finished_unix_ms:016}-{id}")
}
