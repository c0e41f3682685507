//! Conversions from the agent's own types to the `lockstep.v1` wire types.
//!
//! Must never: carry behaviour; these are shape changes only.

use proto::v1 as pb;

use crate::state::{ServiceState, SwitchOutcome, Trigger};
use crate::supervisor::{InstanceState, InstanceStatus};

/// Which instance a status is about.
#[derive(Debug, Clone)]
pub struct InstanceLabel {
    pub service: String,
    pub slot: u32,
    pub release: pb::ReleaseRef,
}

pub fn now_unix_ms() -> i64 {
    unix_ms(std::time::SystemTime::now())
}

fn unix_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub fn instance_state(state: InstanceState) -> pb::InstanceState {
    match state {
        InstanceState::Starting | InstanceState::Backoff => pb::InstanceState::Starting,
        InstanceState::Ready => pb::InstanceState::Ready,
        InstanceState::Unhealthy => pb::InstanceState::Unhealthy,
        InstanceState::CrashLooping => pb::InstanceState::CrashLooping,
        InstanceState::Failed => pb::InstanceState::Failed,
        InstanceState::Stopping => pb::InstanceState::Stopping,
        InstanceState::Stopped => pb::InstanceState::Stopped,
    }
}

/// `app_status` is the app's own sd_notify STATUS= line, shown when the
/// supervisor has nothing more pressing to say.
pub fn instance_status(
    label: &InstanceLabel,
    status: &InstanceStatus,
    app_status: Option<&str>,
) -> pb::InstanceStatus {
    let detail = if status.detail.is_empty() {
        app_status.unwrap_or_default().to_owned()
    } else {
        status.detail.clone()
    };
    pb::InstanceStatus {
        instance: Some(pb::InstanceRef {
            agent_id: String::new(),
            service: label.service.clone(),
            slot: label.slot,
        }),
        release: Some(label.release.clone()),
        state: instance_state(status.state).into(),
        ready: status.ready,
        pid: status.pid.unwrap_or(0),
        restarts: status.restarts,
        started_unix_ms: status.started_at.map_or(0, unix_ms),
        detail,
    }
}

pub fn release_ref(service: &str, digest: &str, version: &str) -> pb::ReleaseRef {
    pb::ReleaseRef {
        service: service.to_owned(),
        digest: digest.to_owned(),
        version: version.to_owned(),
    }
}

/// The current release and the ones before it (most recent first).
fn release_refs(
    name: &str,
    durable: &ServiceState,
) -> (Option<pb::ReleaseRef>, Vec<pb::ReleaseRef>) {
    let to_ref = |r: &crate::state::ReleaseRecord| release_ref(name, &r.digest, &r.version);
    (
        durable.current.as_ref().map(to_ref),
        durable.previous.iter().map(to_ref).collect(),
    )
}

pub fn service_status(
    name: &str,
    durable: &ServiceState,
    instances: Vec<pb::InstanceStatus>,
    switching: Option<pb::SwitchState>,
    last_error: String,
) -> pb::ServiceStatus {
    let (current, previous) = release_refs(name, durable);
    pb::ServiceStatus {
        service: name.to_owned(),
        current,
        previous,
        instances,
        switch_state: switching.unwrap_or(pb::SwitchState::Idle).into(),
        fencing_high_water: durable.fencing_high_water,
        last_error,
        last_switch: durable.history.last().map(switch_record),
    }
}

fn switch_record(record: &crate::state::SwitchRecord) -> pb::SwitchRecord {
    let (deployment_id, fencing_token) = match &record.trigger {
        Trigger::Apply { deployment, token } | Trigger::Uninstall { deployment, token } => {
            (deployment.clone(), *token)
        }
        _ => (String::new(), 0),
    };
    let (succeeded, detail) = match &record.outcome {
        SwitchOutcome::Succeeded => (true, String::new()),
        SwitchOutcome::Failed { reason } => (false, reason.clone()),
    };
    pb::SwitchRecord {
        deployment_id,
        fencing_token,
        // Empty: to "not installed".
        to_digest: record.to.clone().unwrap_or_default(),
        succeeded,
        detail,
        at_unix_ms: record.at_unix_ms,
    }
}

pub fn trigger(trigger: &Trigger) -> String {
    match trigger {
        Trigger::Install => "install".to_owned(),
        Trigger::Apply { deployment, token } => format!("apply {deployment} (token {token})"),
        Trigger::Rollback => "rollback".to_owned(),
        Trigger::Uninstall { deployment, token } => {
            format!("uninstall {deployment} (token {token})")
        }
        Trigger::Restart {
            forced: true,
            reason,
        } => format!("restart (forced: {reason})"),
        Trigger::Restart {
            forced: false,
            reason,
        } => format!("restart ({reason})"),
    }
}

pub fn releases(name: &str, durable: &ServiceState) -> pb::ReleasesResponse {
    let (current, previous) = release_refs(name, durable);
    pb::ReleasesResponse {
        current,
        previous,
        history: durable
            .history
            .iter()
            .map(|h| {
                let (outcome, reason) = match &h.outcome {
                    SwitchOutcome::Succeeded => (pb::SwitchOutcomeKind::Succeeded, String::new()),
                    SwitchOutcome::Failed { reason } => {
                        (pb::SwitchOutcomeKind::Failed, reason.clone())
                    }
                };
                pb::SwitchEntry {
                    at_unix_ms: h.at_unix_ms,
                    from_digest: h.from.clone().unwrap_or_default(),
                    to_digest: h.to.clone().unwrap_or_default(),
                    trigger: trigger(&h.trigger),
                    outcome: outcome.into(),
                    reason,
                }
            })
            .collect(),
    }
}
