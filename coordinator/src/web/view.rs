//! What the web view shows, shaped for the page: the fleet grid, a
//! deployment, its events, history and locks, from the same wire types
//! the CLI reads; and the bounds on what a page may ask for.
//!
//! Pure: no IO, no clock (the caller passes `now`). Must never decide
//! anything about the fleet: it only describes what it is given.

use proto::v1 as pb;
use serde::Serialize;

use crate::bounds;

/// History rows a page may ask for, per service.
pub const MAX_HISTORY_LIMIT: usize = 50;
/// History rows per service when the page does not say.
pub const DEFAULT_HISTORY_LIMIT: usize = 10;
/// Services whose history one request reads (each is an etcd read).
pub const MAX_HISTORY_SERVICES: usize = 32;
/// Digits of a sequence number (`u64::MAX` has 20).
const MAX_SEQ_DIGITS: usize = 20;
/// A digest shown in a grid cell: `sha256:` and this many hex digits.
const SHORT_DIGEST_HEX: usize = 12;

/// A query the page sent that the web view will not answer, and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadQuery {
    #[error("limit must be a whole number from 1 to {MAX_HISTORY_LIMIT}, not {0:?}")]
    Limit(String),
    #[error("{field} must be a whole number (an event's seq), not {value:?}")]
    Seq { field: &'static str, value: String },
    #[error("{0}")]
    Malformed(#[source] bounds::Malformed),
}

/// `?limit=`: history rows per service.
pub fn history_limit(raw: Option<&str>) -> Result<usize, BadQuery> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_HISTORY_LIMIT);
    };
    match raw.parse::<usize>() {
        Ok(n) if (1..=MAX_HISTORY_LIMIT).contains(&n) => Ok(n),
        _ => Err(BadQuery::Limit(clip(raw))),
    }
}

/// The first event seq a stream sends: after the browser's `Last-Event-ID`
/// (a reconnect), else `?from=`, else the first event.
pub fn first_seq(last_event_id: Option<&str>, from: Option<&str>) -> Result<u64, BadQuery> {
    let seq = |field: &'static str, raw: &str| {
        let raw = raw.trim();
        if raw.len() > MAX_SEQ_DIGITS {
            return Err(BadQuery::Seq {
                field,
                value: clip(raw),
            });
        }
        raw.parse::<u64>().map_err(|_| BadQuery::Seq {
            field,
            value: clip(raw),
        })
    };
    match (last_event_id, from) {
        (Some(last), _) => Ok(seq("Last-Event-ID", last)?.saturating_add(1)),
        (None, Some(from)) => Ok(seq("from", from)?.max(1)),
        (None, None) => Ok(1),
    }
}

/// At most 40 characters of what a caller sent, for an error message.
fn clip(raw: &str) -> String {
    raw.chars().take(40).collect()
}

/// The fleet as clusters of hosts.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct FleetGrid {
    pub clusters: Vec<ClusterColumn>,
    pub hosts: usize,
    pub unreachable: usize,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ClusterColumn {
    pub name: String,
    pub hosts: Vec<HostCell>,
}

/// One host: what it runs and how that is going, in words as well as a
/// `health` the page colours.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct HostCell {
    pub id: String,
    pub hostname: String,
    pub reachable: bool,
    pub last_report_unix_ms: i64,
    /// `ok`, `starting`, `switching`, `crash-looping`, `unreachable` or
    /// `idle` (no service reported).
    pub health: &'static str,
    pub services: Vec<ServiceCell>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ServiceCell {
    pub service: String,
    /// The release's version, or `nothing installed`.
    pub version: String,
    /// `sha256:` and the first hex digits; empty when nothing is installed.
    pub digest: String,
    pub ready: usize,
    pub total: usize,
    pub crash_looping: usize,
    pub switching: bool,
    pub last_error: String,
}

impl FleetGrid {
    /// Groups `agents` (sorted by cluster, then id, as the fleet view
    /// lists them) into columns.
    pub fn of(agents: &[pb::AgentSummary]) -> Self {
        let mut clusters: Vec<ClusterColumn> = Vec::new();
        let mut unreachable = 0;
        for agent in agents {
            let identity = agent.identity.clone().unwrap_or_default();
            let cell = host_cell(agent, &identity);
            if !cell.reachable {
                unreachable += 1;
            }
            match clusters.last_mut() {
                Some(column) if column.name == identity.cluster => column.hosts.push(cell),
                _ => clusters.push(ClusterColumn {
                    name: identity.cluster,
                    hosts: vec![cell],
                }),
            }
        }
        Self {
            clusters,
            hosts: agents.len(),
            unreachable,
        }
    }
}

fn host_cell(agent: &pb::AgentSummary, identity: &pb::AgentIdentity) -> HostCell {
    let services: Vec<ServiceCell> = agent.services.iter().map(service_cell).collect();
    let health = if !agent.reachable {
        "unreachable"
    } else if services.iter().any(|s| s.crash_looping > 0) {
        "crash-looping"
    } else if services.iter().any(|s| s.switching) {
        "switching"
    } else if services.is_empty() {
        "idle"
    } else if services.iter().any(|s| s.ready < s.total || s.total == 0) {
        "starting"
    } else {
        "ok"
    };
    HostCell {
        id: identity.agent_id.clone(),
        hostname: identity.hostname.clone(),
        reachable: agent.reachable,
        last_report_unix_ms: agent.last_report_unix_ms,
        health,
        services,
    }
}

fn service_cell(status: &pb::ServiceStatus) -> ServiceCell {
    let (version, digest) = match &status.current {
        Some(r) if !r.digest.is_empty() && !is_nothing(&r.digest) => {
            (r.version.clone(), short_digest(&r.digest))
        }
        _ => ("nothing installed".to_owned(), String::new()),
    };
    let crash_looping = status
        .instances
        .iter()
        .filter(|i| i.state == pb::InstanceState::CrashLooping as i32)
        .count();
    ServiceCell {
        service: status.service.clone(),
        version,
        digest,
        ready: status.instances.iter().filter(|i| i.ready).count(),
        total: status.instances.len(),
        crash_looping,
        switching: status.switch_state != pb::SwitchState::Idle as i32
            && status.switch_state != pb::SwitchState::Unspecified as i32,
        last_error: status.last_error.clone(),
    }
}

/// The wire's spelling of "not installed": the all-zero digest.
fn is_nothing(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.bytes().all(|b| b == b'0'))
}

/// `sha256:0123456789ab` from a whole digest.
pub fn short_digest(digest: &str) -> String {
    match digest.strip_prefix("sha256:") {
        Some(hex) => format!("sha256:{}", hex.get(..SHORT_DIGEST_HEX).unwrap_or(hex)),
        None => digest.chars().take(SHORT_DIGEST_HEX + 7).collect(),
    }
}

/// `rolled_back` from `DEPLOYMENT_STATE_ROLLED_BACK`.
fn enum_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
}

pub fn state_name(state: i32) -> String {
    pb::DeploymentState::try_from(state).map_or_else(
        |_| format!("unknown state {state}"),
        |s| enum_name(s.as_str_name(), "DEPLOYMENT_STATE_"),
    )
}

fn kind_name(kind: i32) -> String {
    pb::DeploymentEventKind::try_from(kind).map_or_else(
        |_| format!("unknown event {kind}"),
        |k| enum_name(k.as_str_name(), "DEPLOYMENT_EVENT_KIND_"),
    )
}

/// A deployment as the timeline's header and a history row show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeploymentView {
    pub id: String,
    pub service: String,
    pub version: String,
    /// Short, as shown.
    pub digest: String,
    /// Full: what the release panel asks for.
    pub release_digest: String,
    /// As stored (`rolled_back`) and as read (`rolled back`).
    pub state: String,
    pub state_text: String,
    pub terminal: bool,
    /// How it ended, or where it stands ("rolled_back: …", "halted: …").
    pub outcome: String,
    pub reason: String,
    pub actor: String,
    pub created_unix_ms: i64,
    pub finished_unix_ms: i64,
    /// Finished minus created; `None` while it runs.
    pub duration_ms: Option<i64>,
    pub clusters: Vec<ClusterProgressView>,
    /// What it waits for now (only a running deployment read from its
    /// record has any).
    pub waits: Vec<WaitView>,
}

/// One gate a running deployment waits for; the page counts down to
/// `until_unix_ms` itself.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WaitView {
    pub kind: String,
    pub kind_text: &'static str,
    /// When its timer ends; none for an approval or a pause.
    pub until_unix_ms: Option<i64>,
    pub detail: String,
}

impl WaitView {
    pub fn of(wait: &rollout::Wait) -> Self {
        use rollout::WaitKind as K;
        let (kind, kind_text) = match wait.kind {
            K::Paused => ("paused", "Paused"),
            K::Approval => ("approval", "Waiting for approval"),
            K::Ready => ("ready", "Waiting for instances to become ready"),
            K::Stable => ("stable", "Stable period"),
            K::Check => ("check", "Check running"),
            K::Analysis => ("analysis", "Analysis running"),
            K::Bake => ("bake", "Baking"),
            K::Progress => ("progress", "Progress deadline"),
        };
        Self {
            kind: kind.to_owned(),
            kind_text,
            until_unix_ms: wait.until.map(|m| i64::try_from(m.0).unwrap_or(i64::MAX)),
            detail: wait.detail.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClusterProgressView {
    pub cluster: String,
    pub instances: u32,
    pub on_target: u32,
    pub failed: u32,
}

impl DeploymentView {
    pub fn of(d: &pb::Deployment) -> Self {
        let state = state_name(d.state);
        let terminal = matches!(
            pb::DeploymentState::try_from(d.state),
            Ok(pb::DeploymentState::Succeeded
                | pb::DeploymentState::RolledBack
                | pb::DeploymentState::Aborted
                | pb::DeploymentState::Failed)
        );
        let target = d.target.clone().unwrap_or_default();
        let actor = d.actor.as_ref().map_or_else(String::new, |a| {
            if a.host.is_empty() {
                a.user.clone()
            } else {
                format!("{}@{}", a.user, a.host)
            }
        });
        Self {
            id: d.id.clone(),
            service: d.service.clone(),
            version: target.version,
            digest: short_digest(&target.digest),
            release_digest: target.digest.clone(),
            state_text: state.replace('_', " "),
            state,
            terminal,
            outcome: d.outcome.clone(),
            reason: d.reason.clone(),
            actor,
            created_unix_ms: d.created_unix_ms,
            finished_unix_ms: d.finished_unix_ms,
            duration_ms: (terminal && d.finished_unix_ms >= d.created_unix_ms)
                .then(|| d.finished_unix_ms - d.created_unix_ms),
            clusters: d
                .clusters
                .iter()
                .map(|c| ClusterProgressView {
                    cluster: c.cluster.clone(),
                    instances: c.instances,
                    on_target: c.on_target,
                    failed: c.failed,
                })
                .collect(),
            waits: Vec::new(),
        }
    }
}

/// What the timeline follows: the newest deployment, running or not, so
/// a page opened after a deployment ended still shows how it ended.
pub fn current<'a>(
    active: &'a [DeploymentView],
    latest_finished: Option<&'a DeploymentView>,
) -> Option<&'a DeploymentView> {
    active
        .iter()
        .chain(latest_finished)
        .max_by_key(|d| (d.created_unix_ms, !d.terminal))
}

/// One timeline entry, sent as an SSE `data:` line with `id:` its seq.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct EventView {
    pub seq: u64,
    pub at_unix_ms: i64,
    pub kind: String,
    pub kind_text: String,
    /// The deployment's state after this event.
    pub state: String,
    pub state_text: String,
    pub finished: bool,
    pub cluster: String,
    /// `host/service#slot`, or empty.
    pub instance: String,
    pub message: String,
}

impl EventView {
    pub fn of(e: &pb::DeploymentEvent) -> Self {
        let kind = kind_name(e.kind);
        let state = state_name(e.state);
        Self {
            seq: e.seq,
            at_unix_ms: e.at_unix_ms,
            kind_text: kind.replace('_', " "),
            finished: e.kind == pb::DeploymentEventKind::Finished as i32,
            kind,
            state_text: state.replace('_', " "),
            state,
            cluster: e.cluster.clone(),
            instance: e.instance.as_ref().map_or_else(String::new, |i| {
                format!("{}/{}#{}", i.agent_id, i.service, i.slot)
            }),
            message: e.message.clone(),
        }
    }
}

/// A lock or budget slot: who holds it, since when, how long its lease has.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct LockView {
    /// `deployment`, `disruption slot`, `instance` or `leader`.
    pub kind: String,
    pub key: String,
    pub holder: String,
    pub purpose: String,
    pub age_ms: i64,
    pub ttl_left_ms: i64,
    pub fencing_token: u64,
}

impl LockView {
    pub fn of(lock: &pb::LockInfo, now_unix_ms: i64) -> Self {
        let kind = pb::LockKind::try_from(lock.kind).map_or_else(
            |_| format!("unknown kind {}", lock.kind),
            |k| enum_name(k.as_str_name(), "LOCK_KIND_").replace('_', " "),
        );
        let holder = lock.holder.as_ref().map_or_else(String::new, |h| {
            let who = if h.user.is_empty() {
                h.host.clone()
            } else {
                format!("{}@{}", h.user, h.host)
            };
            if h.pid == 0 {
                who
            } else {
                format!("{who} (pid {})", h.pid)
            }
        });
        Self {
            kind,
            key: lock.key.clone(),
            holder,
            purpose: lock.purpose.clone(),
            age_ms: now_unix_ms.saturating_sub(lock.since_unix_ms).max(0),
            ttl_left_ms: lock.ttl_left_ms,
            fencing_token: lock.fencing_token,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// #17 item 2: a gate's deadline goes to the page as unix ms, to count
    /// down from; an approval has none.
    #[test]
    fn a_wait_carries_its_deadline_and_says_what_it_is() {
        let bake = WaitView::of(&rollout::Wait {
            kind: rollout::WaitKind::Bake,
            until: Some(rollout::Millis(1_796_000_000_000)),
            detail: "every switched instance stays healthy".into(),
        });
        assert_eq!(bake.kind, "bake");
        assert_eq!(bake.kind_text, "Baking");
        assert_eq!(bake.until_unix_ms, Some(1_796_000_000_000));
        let approval = WaitView::of(&rollout::Wait {
            kind: rollout::WaitKind::Approval,
            until: None,
            detail: "an operator's approval before cluster west".into(),
        });
        let json = serde_json::to_value(&approval).unwrap();
        assert_eq!(json["until_unix_ms"], serde_json::Value::Null);
        assert_eq!(json["kind_text"], "Waiting for approval");
    }

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn instance(ready: bool, state: pb::InstanceState) -> pb::InstanceStatus {
        pb::InstanceStatus {
            ready,
            state: state as i32,
            ..Default::default()
        }
    }

    fn agent(
        id: &str,
        cluster: &str,
        reachable: bool,
        instances: Vec<pb::InstanceStatus>,
    ) -> pb::AgentSummary {
        pb::AgentSummary {
            identity: Some(pb::AgentIdentity {
                agent_id: id.into(),
                cluster: cluster.into(),
                hostname: format!("{id}.example"),
                ..Default::default()
            }),
            reachable,
            last_report_unix_ms: 5,
            services: vec![pb::ServiceStatus {
                service: "web".into(),
                current: Some(pb::ReleaseRef {
                    service: "web".into(),
                    digest: DIGEST.into(),
                    version: "1.4.2".into(),
                }),
                instances,
                switch_state: pb::SwitchState::Idle as i32,
                ..Default::default()
            }],
        }
    }

    #[test]
    fn the_grid_groups_hosts_by_cluster_and_says_how_each_is() {
        let ready = || instance(true, pb::InstanceState::Ready);
        let grid = FleetGrid::of(&[
            agent("a-1", "a", true, vec![ready(), ready()]),
            agent(
                "a-2",
                "a",
                true,
                vec![ready(), instance(false, pb::InstanceState::CrashLooping)],
            ),
            agent("b-1", "b", false, vec![ready()]),
            agent(
                "b-2",
                "b",
                true,
                vec![instance(false, pb::InstanceState::Starting)],
            ),
        ]);
        assert_eq!((grid.hosts, grid.unreachable), (4, 1));
        let names: Vec<_> = grid.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let health: Vec<_> = grid
            .clusters
            .iter()
            .flat_map(|c| c.hosts.iter().map(|h| (h.id.as_str(), h.health)))
            .collect();
        assert_eq!(
            health,
            [
                ("a-1", "ok"),
                ("a-2", "crash-looping"),
                ("b-1", "unreachable"),
                ("b-2", "starting")
            ]
        );
        let cell = &grid.clusters[0].hosts[1].services[0];
        assert_eq!(
            (
                cell.version.as_str(),
                cell.digest.as_str(),
                cell.ready,
                cell.total,
                cell.crash_looping
            ),
            ("1.4.2", "sha256:0123456789ab", 1, 2, 1)
        );
    }

    #[test]
    fn nothing_installed_is_said_not_shown_as_a_zero_digest() {
        let mut a = agent("a-1", "a", true, vec![]);
        a.services[0].current = Some(pb::ReleaseRef {
            digest: format!("sha256:{}", "0".repeat(64)),
            ..Default::default()
        });
        let grid = FleetGrid::of(&[a]);
        let cell = &grid.clusters[0].hosts[0].services[0];
        assert_eq!(
            (cell.version.as_str(), cell.digest.as_str()),
            ("nothing installed", "")
        );
        assert_eq!(grid.clusters[0].hosts[0].health, "starting");
    }

    #[test]
    fn a_deployment_reads_its_state_duration_and_actor() {
        let d = pb::Deployment {
            id: "d-1".into(),
            service: "web".into(),
            target: Some(pb::ReleaseRef {
                digest: DIGEST.into(),
                version: "2.0.0".into(),
                ..Default::default()
            }),
            state: pb::DeploymentState::RolledBack as i32,
            outcome: "rolled_back: canary failed".into(),
            actor: Some(pb::Actor {
                user: "alice".into(),
                host: "laptop".into(),
            }),
            created_unix_ms: 1_000,
            finished_unix_ms: 4_500,
            ..Default::default()
        };
        let view = DeploymentView::of(&d);
        assert_eq!(
            (
                view.state.as_str(),
                view.state_text.as_str(),
                view.terminal,
                view.duration_ms
            ),
            ("rolled_back", "rolled back", true, Some(3_500))
        );
        assert_eq!(view.actor, "alice@laptop");
        let running = DeploymentView::of(&pb::Deployment {
            state: pb::DeploymentState::Running as i32,
            ..d
        });
        assert_eq!((running.terminal, running.duration_ms), (false, None));
    }

    #[test]
    fn the_timeline_follows_the_newest_deployment_running_or_not() {
        let view = |id: &str, created: i64, state: pb::DeploymentState| {
            DeploymentView::of(&pb::Deployment {
                id: id.into(),
                created_unix_ms: created,
                state: state as i32,
                ..Default::default()
            })
        };
        let old_running = view("a", 10, pb::DeploymentState::Running);
        let newer_done = view("b", 20, pb::DeploymentState::Succeeded);
        let active = [old_running];
        assert_eq!(
            current(&active, Some(&newer_done)).map(|d| d.id.as_str()),
            Some("b")
        );
        assert_eq!(current(&active, None).map(|d| d.id.as_str()), Some("a"));
        assert_eq!(current(&[], None), None);
    }

    #[test]
    fn an_event_names_its_kind_state_and_instance() {
        let e = EventView::of(&pb::DeploymentEvent {
            seq: 7,
            kind: pb::DeploymentEventKind::Finished as i32,
            state: pb::DeploymentState::Succeeded as i32,
            instance: Some(pb::InstanceRef {
                agent_id: "a-1".into(),
                service: "web".into(),
                slot: 0,
            }),
            ..Default::default()
        });
        assert_eq!(
            (
                e.kind.as_str(),
                e.state_text.as_str(),
                e.finished,
                e.instance.as_str()
            ),
            ("finished", "succeeded", true, "a-1/web#0")
        );
    }

    #[test]
    fn queries_are_bounded_and_a_bad_one_says_what_is_wrong() {
        assert_eq!(history_limit(None), Ok(DEFAULT_HISTORY_LIMIT));
        assert_eq!(history_limit(Some("50")), Ok(50));
        for bad in ["0", "51", "-1", "ten", &"9".repeat(100)] {
            let err = history_limit(Some(bad)).unwrap_err().to_string();
            assert!(
                err.starts_with("limit must be a whole number from 1 to 50"),
                "{err}"
            );
            assert!(err.len() < 120, "{err}");
        }
        assert_eq!(first_seq(None, None), Ok(1));
        assert_eq!(first_seq(None, Some("0")), Ok(1));
        assert_eq!(first_seq(None, Some("5")), Ok(5));
        assert_eq!(
            first_seq(Some("7"), Some("2")),
            Ok(8),
            "a reconnect resumes after its last event"
        );
        assert_eq!(first_seq(Some(&u64::MAX.to_string()), None), Ok(u64::MAX));
        let err = first_seq(Some("x".repeat(500).as_str()), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("Last-Event-ID must be a whole number"),
            "{err}"
        );
        assert!(first_seq(None, Some("1e3")).is_err());
    }

    #[test]
    fn a_lock_says_who_holds_it_for_how_long() {
        let lock = LockView::of(
            &pb::LockInfo {
                kind: pb::LockKind::DisruptionSlot as i32,
                key: "/lockstep/v1/clusters/a/budget/a-1".into(),
                holder: Some(pb::LockHolder {
                    host: "a-1".into(),
                    pid: 42,
                    user: "lockstep".into(),
                }),
                since_unix_ms: 1_000,
                ttl_left_ms: 2_500,
                ..Default::default()
            },
            4_000,
        );
        assert_eq!(
            (
                lock.kind.as_str(),
                lock.holder.as_str(),
                lock.age_ms,
                lock.ttl_left_ms
            ),
            ("disruption slot", "lockstep@a-1 (pid 42)", 3_000, 2_500)
        );
    }
}
