//! `--output json`: the proto messages as JSON, field for field (prost types
//! do not derive `Serialize`). Field names are the proto's; enum values are
//! their lower-case names without the type prefix (`"rolled_back"`), an
//! unknown value from a newer coordinator is `"unknown(N)"`; times stay Unix
//! milliseconds.
//!
//! Must never: drop or rename a field, or add one the wire does not carry
//! (scripts rely on the proto being the schema).

use proto::v1::{
    Actor, AgentIdentity, AgentSummary, Batch, BreakLockResponse, ClusterProgress, DeployOutcome,
    DeployResponse, Deployment, DeploymentEvent, DeploymentEventKind, DeploymentState,
    HistoryEntry, InstanceRef, InstanceState, InstanceStatus, LockHolder, LockInfo, LockKind,
    PlanResponse, PushReleaseResponse, ReleaseRef, ReleaseSummary, ServiceStatus, SwitchRecord,
    SwitchState, Wave, WaveKind,
};
use serde_json::{Value, json};

/// `DEPLOYMENT_STATE_ROLLED_BACK` -> `rolled_back`.
fn lower(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
}

macro_rules! enum_name {
    ($fn:ident, $ty:ty, $prefix:literal) => {
        pub fn $fn(value: i32) -> String {
            <$ty>::try_from(value).map_or_else(
                |_| format!("unknown({value})"),
                |v| lower(v.as_str_name(), $prefix),
            )
        }
    };
}

enum_name!(deployment_state, DeploymentState, "DEPLOYMENT_STATE_");
enum_name!(event_kind, DeploymentEventKind, "DEPLOYMENT_EVENT_KIND_");
enum_name!(deploy_outcome, DeployOutcome, "DEPLOY_OUTCOME_");
enum_name!(lock_kind, LockKind, "LOCK_KIND_");
enum_name!(wave_kind, WaveKind, "WAVE_KIND_");
enum_name!(instance_state, InstanceState, "INSTANCE_STATE_");
enum_name!(switch_state, SwitchState, "SWITCH_STATE_");

fn opt<T>(v: Option<&T>, f: impl Fn(&T) -> Value) -> Value {
    v.map_or(Value::Null, f)
}

pub fn actor(a: &Actor) -> Value {
    json!({ "user": a.user, "host": a.host })
}

pub fn release_ref(r: &ReleaseRef) -> Value {
    json!({ "service": r.service, "digest": r.digest, "version": r.version })
}

pub fn instance_ref(i: &InstanceRef) -> Value {
    json!({ "agent_id": i.agent_id, "service": i.service, "slot": i.slot })
}

pub fn lock_holder(h: &LockHolder) -> Value {
    json!({ "host": h.host, "pid": h.pid, "user": h.user })
}

pub fn lock(l: &LockInfo) -> Value {
    json!({
        "kind": lock_kind(l.kind),
        "key": l.key,
        "holder": opt(l.holder.as_ref(), lock_holder),
        "purpose": l.purpose,
        "since_unix_ms": l.since_unix_ms,
        "ttl_left_ms": l.ttl_left_ms,
        "fencing_token": l.fencing_token,
        "leaseless": l.leaseless,
    })
}

pub fn cluster_progress(c: &ClusterProgress) -> Value {
    json!({
        "cluster": c.cluster,
        "instances": c.instances,
        "on_target": c.on_target,
        "failed": c.failed,
    })
}

pub fn deployment(d: &Deployment) -> Value {
    json!({
        "id": d.id,
        "service": d.service,
        "target": opt(d.target.as_ref(), release_ref),
        "state": deployment_state(d.state),
        "reason": d.reason,
        "outcome": d.outcome,
        "fencing_token": d.fencing_token,
        "actor": opt(d.actor.as_ref(), actor),
        "created_unix_ms": d.created_unix_ms,
        "finished_unix_ms": d.finished_unix_ms,
        "clusters": d.clusters.iter().map(cluster_progress).collect::<Vec<_>>(),
    })
}

pub fn event(e: &DeploymentEvent) -> Value {
    json!({
        "seq": e.seq,
        "at_unix_ms": e.at_unix_ms,
        "deployment_id": e.deployment_id,
        "kind": event_kind(e.kind),
        "state": deployment_state(e.state),
        "cluster": e.cluster,
        "instance": opt(e.instance.as_ref(), instance_ref),
        "message": e.message,
    })
}

fn batch(b: &Batch) -> Value {
    json!({ "instances": b.instances.iter().map(instance_ref).collect::<Vec<_>>() })
}

fn wave(w: &Wave) -> Value {
    json!({
        "kind": wave_kind(w.kind),
        "cluster": w.cluster,
        "batches": w.batches.iter().map(batch).collect::<Vec<_>>(),
        "needs_approval": w.needs_approval,
    })
}

pub fn plan_response(p: &PlanResponse) -> Value {
    json!({
        "waves": p.waves.iter().map(wave).collect::<Vec<_>>(),
        "rendered": p.rendered,
        "problems": p.problems,
    })
}

pub fn deploy_response(r: &DeployResponse) -> Value {
    json!({
        "outcome": deploy_outcome(r.outcome),
        "deployment_id": r.deployment_id,
        "fencing_token": r.fencing_token,
        "lock": opt(r.lock.as_ref(), lock),
        "problems": r.problems,
    })
}

pub fn push_response(r: &PushReleaseResponse) -> Value {
    json!({
        "release": opt(r.release.as_ref(), release_ref),
        "already_present": r.already_present,
        "signed": r.signed,
    })
}

pub fn release_summary(r: &ReleaseSummary) -> Value {
    json!({
        "release": opt(r.release.as_ref(), release_ref),
        "size": r.size,
        "pushed_unix_ms": r.pushed_unix_ms,
        "signed": r.signed,
        "holders": r.holders,
    })
}

fn identity(i: &AgentIdentity) -> Value {
    json!({
        "agent_id": i.agent_id,
        "cluster": i.cluster,
        "hostname": i.hostname,
        "grpc_address": i.grpc_address,
        "agent_version": i.agent_version,
        "services": i.services,
    })
}

fn instance_status(i: &InstanceStatus) -> Value {
    json!({
        "instance": opt(i.instance.as_ref(), instance_ref),
        "release": opt(i.release.as_ref(), release_ref),
        "state": instance_state(i.state),
        "ready": i.ready,
        "pid": i.pid,
        "restarts": i.restarts,
        "started_unix_ms": i.started_unix_ms,
        "detail": i.detail,
    })
}

fn switch_record(s: &SwitchRecord) -> Value {
    json!({
        "deployment_id": s.deployment_id,
        "fencing_token": s.fencing_token,
        "to_digest": s.to_digest,
        "succeeded": s.succeeded,
        "detail": s.detail,
        "at_unix_ms": s.at_unix_ms,
    })
}

fn service_status(s: &ServiceStatus) -> Value {
    json!({
        "service": s.service,
        "current": opt(s.current.as_ref(), release_ref),
        "previous": s.previous.iter().map(release_ref).collect::<Vec<_>>(),
        "instances": s.instances.iter().map(instance_status).collect::<Vec<_>>(),
        "switch_state": switch_state(s.switch_state),
        "fencing_high_water": s.fencing_high_water,
        "last_error": s.last_error,
        "last_switch": opt(s.last_switch.as_ref(), switch_record),
    })
}

pub fn agent(a: &AgentSummary) -> Value {
    json!({
        "identity": opt(a.identity.as_ref(), identity),
        "reachable": a.reachable,
        "last_report_unix_ms": a.last_report_unix_ms,
        "services": a.services.iter().map(service_status).collect::<Vec<_>>(),
    })
}

pub fn history_entry(h: &HistoryEntry) -> Value {
    json!({
        "seq": h.seq,
        "deployment": opt(h.deployment.as_ref(), deployment),
    })
}

pub fn break_lock_response(r: &BreakLockResponse) -> Value {
    json!({
        "broken": opt(r.broken.as_ref(), lock),
        "audit_seq": r.audit_seq,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn enums_are_lower_case_names() {
        assert_eq!(
            deployment_state(DeploymentState::RolledBack as i32),
            "rolled_back"
        );
        assert_eq!(
            deployment_state(DeploymentState::AwaitingApproval as i32),
            "awaiting_approval"
        );
        assert_eq!(
            event_kind(DeploymentEventKind::WaveStarted as i32),
            "wave_started"
        );
        assert_eq!(
            deploy_outcome(DeployOutcome::RefusedLocked as i32),
            "refused_locked"
        );
        assert_eq!(
            lock_kind(LockKind::DisruptionSlot as i32),
            "disruption_slot"
        );
        assert_eq!(deployment_state(99), "unknown(99)");
    }

    #[test]
    fn deployment_keeps_every_field() {
        let d = Deployment {
            id: "d-1".to_owned(),
            service: "web".to_owned(),
            target: Some(ReleaseRef {
                service: "web".to_owned(),
                digest: "sha256:00".to_owned(),
                version: "1.0".to_owned(),
            }),
            state: DeploymentState::Paused as i32,
            reason: "JIRA-9".to_owned(),
            outcome: "halted: canary failed".to_owned(),
            fencing_token: 7,
            actor: None,
            created_unix_ms: 5,
            finished_unix_ms: 0,
            clusters: vec![ClusterProgress {
                cluster: "eu".to_owned(),
                instances: 4,
                on_target: 1,
                failed: 0,
            }],
        };
        let v = deployment(&d);
        assert_eq!(v["state"], "paused");
        assert_eq!(v["reason"], "JIRA-9");
        assert_eq!(v["outcome"], "halted: canary failed");
        assert_eq!(v["target"]["version"], "1.0");
        assert_eq!(v["actor"], Value::Null);
        assert_eq!(v["clusters"][0]["on_target"], 1);
        assert_eq!(v["fencing_token"], 7);
        assert_eq!(v.as_object().map(|o| o.len()), Some(11));
    }
}
