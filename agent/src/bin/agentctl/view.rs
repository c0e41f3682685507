//! What agentctl prints: plain structs that serialise to `--output json`
//! and render as text, built from the wire types.

use proto::v1::{
    CommandOutcome, InstanceState, InstanceStatus, ReleaseRef, ServiceStatus, SwitchState,
};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct ServiceView {
    pub service: String,
    pub release: Option<ReleaseView>,
    pub switch: &'static str,
    pub fencing_high_water: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    pub instances: Vec<InstanceView>,
}

#[derive(Debug, Serialize)]
pub struct ReleaseView {
    pub digest: String,
    pub version: String,
}

#[derive(Debug, Serialize)]
pub struct InstanceView {
    pub slot: u32,
    pub release_version: String,
    pub state: &'static str,
    pub ready: bool,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub uptime_secs: Option<u64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

pub fn release(r: Option<&ReleaseRef>) -> Option<ReleaseView> {
    r.filter(|r| !r.digest.is_empty()).map(|r| ReleaseView {
        digest: r.digest.clone(),
        version: r.version.clone(),
    })
}

pub fn state_name(state: InstanceState) -> &'static str {
    match state {
        InstanceState::Unspecified => "unknown",
        InstanceState::Starting => "starting",
        InstanceState::Ready => "ready",
        InstanceState::Unhealthy => "unhealthy",
        InstanceState::Stopping => "stopping",
        InstanceState::Stopped => "stopped",
        InstanceState::CrashLooping => "crash_looping",
        InstanceState::Failed => "failed",
    }
}

fn switch_name(state: SwitchState) -> &'static str {
    match state {
        SwitchState::Unspecified | SwitchState::Idle => "idle",
        SwitchState::Switching => "switching",
        SwitchState::RollingBack => "rolling_back",
    }
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn instance(status: &InstanceStatus) -> InstanceView {
    let uptime_secs = (status.started_unix_ms > 0 && status.pid != 0).then(|| {
        u64::try_from(now_unix_ms().saturating_sub(status.started_unix_ms) / 1000).unwrap_or(0)
    });
    InstanceView {
        slot: status.instance.as_ref().map_or(0, |i| i.slot),
        release_version: status
            .release
            .as_ref()
            .map(|r| r.version.clone())
            .unwrap_or_default(),
        state: state_name(status.state()),
        ready: status.ready,
        pid: (status.pid != 0).then_some(status.pid),
        restarts: status.restarts,
        uptime_secs,
        detail: status.detail.clone(),
    }
}

pub fn service(status: &ServiceStatus) -> ServiceView {
    ServiceView {
        service: status.service.clone(),
        release: release(status.current.as_ref()),
        switch: switch_name(status.switch_state()),
        fencing_high_water: status.fencing_high_water,
        last_error: status.last_error.clone(),
        instances: status.instances.iter().map(instance).collect(),
    }
}

pub fn render_service(view: &ServiceView) -> String {
    let mut out = String::new();
    let release = view.release.as_ref().map_or_else(
        || "no release".to_owned(),
        |r| format!("{} {}", r.version, r.digest),
    );
    out.push_str(&format!(
        "{}  {}  ({})\n",
        view.service, release, view.switch
    ));
    for i in &view.instances {
        let pid = i.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
        let uptime = i
            .uptime_secs
            .map_or_else(|| "-".to_owned(), |s| format!("{s}s"));
        out.push_str(&format!(
            "  #{:<3} {:<14} ready={:<5} pid={:<8} restarts={:<4} up={:<8} {}\n",
            i.slot, i.state, i.ready, pid, i.restarts, uptime, i.release_version
        ));
        if !i.detail.is_empty() {
            out.push_str(&format!("        {}\n", i.detail));
        }
    }
    if !view.last_error.is_empty() {
        out.push_str(&format!("  last switch failed: {}\n", view.last_error));
    }
    out
}

/// Whether a verdict accepted the command.
pub fn accepted(outcome: CommandOutcome) -> bool {
    outcome == CommandOutcome::Accepted
}
