//! What a deployment looks like in etcd: the `DeploymentRecord` (spec,
//! progress and the serialised engine, so a new leader resumes exactly where
//! the old one stopped), the small `DeploymentHeader` that answers status
//! without the engine, and its `EventRecord`s, plus their wire forms. How
//! the record is spread over etcd keys (header, step log, snapshots) is
//! `step_log.rs`.
//!
//! Must never: hold anything that cannot be rebuilt from etcd alone.

use std::collections::{BTreeMap, BTreeSet};

use proto::v1 as pb;
use rollout::{Command, Engine, Notice, Outcome, Reason, Status};
use serde::{Deserialize, Serialize};

/// Lifecycle of a deployment, as stored and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    Running,
    Paused,
    AwaitingApproval,
    RollingBack,
    Succeeded,
    RolledBack,
    Aborted,
    Failed,
}

impl DeploymentState {
    /// The state an engine is in now.
    pub fn of(engine: &Engine) -> Self {
        match engine.status() {
            Status::NotStarted | Status::Superseded => Self::Running,
            Status::Running { paused: true, .. } | Status::Halted(_) => Self::Paused,
            Status::Running {
                awaiting_approval: true,
                ..
            } => Self::AwaitingApproval,
            // Baking is still going forward: watched, not yet succeeded.
            Status::Running { .. } | Status::Baking { .. } => Self::Running,
            Status::RollingBack { .. } => Self::RollingBack,
            Status::Finished(Outcome::Succeeded) => Self::Succeeded,
            Status::Finished(Outcome::RolledBack { .. }) => Self::RolledBack,
            Status::Finished(Outcome::Aborted { .. }) => Self::Aborted,
            Status::Finished(Outcome::Failed { .. }) => Self::Failed,
        }
    }

    /// The state as a metric label (as stored: snake_case).
    pub fn label(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::AwaitingApproval => "awaiting_approval",
            Self::RollingBack => "rolling_back",
            Self::Succeeded => "succeeded",
            Self::RolledBack => "rolled_back",
            Self::Aborted => "aborted",
            Self::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::RolledBack | Self::Aborted | Self::Failed
        )
    }

    pub fn wire(self) -> pb::DeploymentState {
        match self {
            Self::Running => pb::DeploymentState::Running,
            Self::Paused => pb::DeploymentState::Paused,
            Self::AwaitingApproval => pb::DeploymentState::AwaitingApproval,
            Self::RollingBack => pb::DeploymentState::RollingBack,
            Self::Succeeded => pb::DeploymentState::Succeeded,
            Self::RolledBack => pb::DeploymentState::RolledBack,
            Self::Aborted => pb::DeploymentState::Aborted,
            Self::Failed => pb::DeploymentState::Failed,
        }
    }
}

/// What a deployment does: switch to a release, go back to one, or
/// restart the release the hosts run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentKind {
    #[default]
    Deploy,
    Rollback,
    /// Forward steps restart the instances (Agent.Restart) instead of
    /// switching them; undoing one is an Apply of the release they run.
    Restart,
}

impl DeploymentKind {
    /// The kind as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Deploy => "deploy",
            Self::Rollback => "rollback",
            Self::Restart => "restart",
        }
    }
}

/// Per-cluster progress for watchers. Sets (written as JSON arrays, as
/// format 1 wrote its lists), so noting an instance costs log n however
/// large the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterProgress {
    pub instances: u32,
    /// Instances confirmed ready on the target.
    pub on_target: BTreeSet<String>,
    pub failed: BTreeSet<String>,
}

/// A deployment whole: format 1 kept it in `/lockstep/v1/deployments/<id>`;
/// format 2 keeps it in snapshots under `deployments/<id>/snapshot/` and
/// the steps after them (`step_log.rs`), with a [`DeploymentHeader`] in
/// that key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// [`RECORD_FORMAT`] when written; records written before the field
    /// existed are format 1.
    #[serde(default = "first_format")]
    pub format: u32,
    pub id: String,
    pub service: String,
    pub target_digest: String,
    pub target_version: String,
    pub actor_user: String,
    pub actor_host: String,
    pub reason: String,
    /// Records written before kinds existed are deployments.
    #[serde(default)]
    pub kind: DeploymentKind,
    pub created_unix_ms: i64,
    pub finished_unix_ms: i64,
    pub state: DeploymentState,
    /// Why it ended where it did.
    pub outcome: String,
    /// The token of the coordinator driving it now.
    pub token: u64,
    /// Sequence number of the next event.
    pub next_seq: u64,
    /// Instance id -> cluster, for progress and event labels.
    pub clusters_of: BTreeMap<String, String>,
    pub progress: BTreeMap<String, ClusterProgress>,
    /// The last operator command's "who: why", for the events and the
    /// outcome it causes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operator_said: String,
    pub engine: Engine,
    /// Where this record's journal stands in etcd (format 2): which
    /// snapshot holds it and which steps follow. Kept in the header key,
    /// never in the snapshot itself.
    #[serde(skip)]
    pub log: crate::step_log::LogPosition,
}

/// The format of [`DeploymentRecord`] (with its engine) this build writes
/// and reads; a change bumps it and keeps reading the older ones
/// (`record_format_1_still_loads_and_resumes`). Format 1 was the whole
/// record in one key, rewritten every step; format 2 is a header key, a
/// step log and rare snapshots (`step_log.rs`).
pub const RECORD_FORMAT: u32 = 2;

fn first_format() -> u32 {
    1
}

impl DeploymentRecord {
    /// Refreshes state and outcome from the engine.
    pub fn sync(&mut self, now_unix_ms: i64) {
        self.state = DeploymentState::of(&self.engine);
        self.outcome = match self.engine.status() {
            Status::Halted(reason) => format!("halted: {reason}"),
            Status::RollingBack { reason, .. } => format!("rolling back: {reason}"),
            Status::Finished(outcome) => self.describe(outcome),
            _ => String::new(),
        };
        if self.state.is_terminal() && self.finished_unix_ms == 0 {
            self.finished_unix_ms = now_unix_ms;
        }
    }

    /// An outcome in words, naming the operator and their reason when an
    /// operator ended it.
    pub fn describe(&self, outcome: &Outcome) -> String {
        let by_operator = matches!(
            outcome,
            Outcome::Aborted {
                reason: Reason::Operator,
                ..
            } | Outcome::RolledBack {
                reason: Reason::Operator
            } | Outcome::Failed {
                reason: Reason::Operator,
                ..
            }
        );
        if by_operator && !self.operator_said.is_empty() {
            format!("{outcome}; by {}", self.operator_said)
        } else {
            outcome.to_string()
        }
    }

    /// "paused by alice@ops-1: reason", or by "an operator" when unsaid.
    fn by_operator(&self, what: &str) -> String {
        if self.operator_said.is_empty() {
            format!("{what} by an operator")
        } else {
            format!("{what} by {}", self.operator_said)
        }
    }

    pub fn cluster_of(&self, instance: &str) -> String {
        self.clusters_of.get(instance).cloned().unwrap_or_default()
    }

    /// An apply to the instance is under way: it is on no release until
    /// the apply is confirmed (a rehearsal's switch back is not "on
    /// target"). A failed mark stays until a later outcome replaces it.
    pub fn note_applying(&mut self, instance: &str) {
        let cluster = self.cluster_of(instance);
        if let Some(progress) = self.progress.get_mut(&cluster) {
            progress.on_target.remove(instance);
        }
    }

    /// Records where an instance stands after an engine event.
    pub fn note_instance(&mut self, instance: &str, on_target: bool, failed: bool) {
        let cluster = self.cluster_of(instance);
        let progress = self.progress.entry(cluster).or_default();
        progress.on_target.remove(instance);
        progress.failed.remove(instance);
        if on_target {
            progress.on_target.insert(instance.to_owned());
        }
        if failed {
            progress.failed.insert(instance.to_owned());
        }
    }

    /// What the header key keeps of this record: everything status needs,
    /// with progress as counts, so it stays small however large the fleet.
    pub fn header(&self) -> DeploymentHeader {
        let plan = self.engine.plan();
        DeploymentHeader {
            format: RECORD_FORMAT,
            id: self.id.clone(),
            service: self.service.clone(),
            target_digest: self.target_digest.clone(),
            target_version: self.target_version.clone(),
            actor_user: self.actor_user.clone(),
            actor_host: self.actor_host.clone(),
            reason: self.reason.clone(),
            kind: self.kind,
            created_unix_ms: self.created_unix_ms,
            finished_unix_ms: self.finished_unix_ms,
            state: self.state,
            outcome: self.outcome.clone(),
            token: self.token,
            next_seq: self.next_seq,
            batches: plan.batch_count(),
            waiting_for: waiting_cluster(&self.engine),
            clusters: plan
                .clusters
                .iter()
                .map(|c| {
                    let progress = self.progress.get(c.name.as_str());
                    let count = |set: fn(&ClusterProgress) -> &BTreeSet<String>| {
                        progress.map_or(0, |p| u32::try_from(set(p).len()).unwrap_or(u32::MAX))
                    };
                    ClusterCount {
                        cluster: c.name.to_string(),
                        instances: u32::try_from(c.size).unwrap_or(u32::MAX),
                        on_target: count(|p| &p.on_target),
                        failed: count(|p| &p.failed),
                    }
                })
                .collect(),
            waits: self.engine.waits(),
            log: self.log.clone(),
        }
    }

    /// What history keeps of this deployment once its record and events
    /// are pruned.
    pub fn summary(&self) -> DeploymentSummary {
        self.header().summary()
    }

    pub fn wire(&self) -> pb::Deployment {
        self.header().wire()
    }
}

/// The cluster an engine waits for an operator's approval of, if any.
pub fn waiting_cluster(engine: &Engine) -> Option<String> {
    match engine.status() {
        Status::Running {
            wave,
            awaiting_approval: true,
            ..
        } => match engine.plan().waves.get(wave)?.kind {
            rollout::WaveKind::Cluster(c) => {
                engine.plan().clusters.get(c).map(|c| c.name.to_string())
            }
            rollout::WaveKind::Canary => None,
        },
        _ => None,
    }
}

/// One cluster's progress in a header: counts, never instance lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterCount {
    pub cluster: String,
    pub instances: u32,
    pub on_target: u32,
    pub failed: u32,
}

/// A deployment as its header key `/lockstep/v1/deployments/<id>` keeps it
/// (format 2): who, what, where it stands, progress as counts per cluster,
/// and where its journal stands (`log`). Answers status, watch and the web
/// view without loading the engine; its size grows with clusters, never
/// with instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentHeader {
    pub format: u32,
    pub id: String,
    pub service: String,
    pub target_digest: String,
    pub target_version: String,
    pub actor_user: String,
    pub actor_host: String,
    pub reason: String,
    pub kind: DeploymentKind,
    pub created_unix_ms: i64,
    pub finished_unix_ms: i64,
    pub state: DeploymentState,
    pub outcome: String,
    pub token: u64,
    pub next_seq: u64,
    /// Batches in the plan (every wave's).
    pub batches: usize,
    /// The cluster waiting for `lockstep approve`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    pub clusters: Vec<ClusterCount>,
    /// What it waits for now (`Engine::waits`: a gate's timer, an
    /// approval, a pause): a few, never one per instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waits: Vec<rollout::Wait>,
    pub log: crate::step_log::LogPosition,
}

impl DeploymentHeader {
    pub fn summary(&self) -> DeploymentSummary {
        DeploymentSummary {
            format: SUMMARY_FORMAT,
            id: self.id.clone(),
            service: self.service.clone(),
            kind: self.kind,
            target_digest: self.target_digest.clone(),
            target_version: self.target_version.clone(),
            actor_user: self.actor_user.clone(),
            actor_host: self.actor_host.clone(),
            reason: self.reason.clone(),
            created_unix_ms: self.created_unix_ms,
            finished_unix_ms: self.finished_unix_ms,
            state: self.state,
            outcome: self.outcome.clone(),
            token: self.token,
        }
    }

    pub fn wire(&self) -> pb::Deployment {
        pb::Deployment {
            clusters: self
                .clusters
                .iter()
                .map(|c| pb::ClusterProgress {
                    cluster: c.cluster.clone(),
                    instances: c.instances,
                    on_target: c.on_target,
                    failed: c.failed,
                })
                .collect(),
            ..self.summary().wire()
        }
    }
}

/// Kinds of recorded events (mirrors the wire enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Started,
    WaveStarted,
    InstanceApplying,
    InstanceReady,
    InstanceFailed,
    CheckPassed,
    CheckFailed,
    WaveDone,
    AwaitingApproval,
    Paused,
    Resumed,
    RollbackStarted,
    Finished,
    Baking,
    AnalysisStarted,
    AnalysisPassed,
    AnalysisFailed,
    AnalysisInconclusive,
}

impl EventKind {
    fn wire(self) -> pb::DeploymentEventKind {
        use pb::DeploymentEventKind as K;
        match self {
            Self::Started => K::Started,
            Self::WaveStarted => K::WaveStarted,
            Self::InstanceApplying => K::InstanceApplying,
            Self::InstanceReady => K::InstanceReady,
            Self::InstanceFailed => K::InstanceFailed,
            Self::CheckPassed => K::CheckPassed,
            Self::CheckFailed => K::CheckFailed,
            Self::WaveDone => K::WaveDone,
            Self::AwaitingApproval => K::AwaitingApproval,
            Self::Paused => K::Paused,
            Self::Resumed => K::Resumed,
            Self::RollbackStarted => K::RollbackStarted,
            Self::Finished => K::Finished,
            Self::Baking => K::Baking,
            Self::AnalysisStarted => K::AnalysisStarted,
            Self::AnalysisPassed => K::AnalysisPassed,
            Self::AnalysisFailed => K::AnalysisFailed,
            Self::AnalysisInconclusive => K::AnalysisInconclusive,
        }
    }
}

/// One event, in a page of its step's events under
/// `/lockstep/v1/deployment-events/<id>/<first seq of the page>` (format 1:
/// one event a key, under its own seq).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    pub at_unix_ms: i64,
    pub kind: EventKind,
    pub state: DeploymentState,
    pub cluster: String,
    pub instance: String,
    pub message: String,
}

impl EventRecord {
    pub fn wire(&self, deployment: &str, service: &str) -> pb::DeploymentEvent {
        pb::DeploymentEvent {
            seq: self.seq,
            at_unix_ms: self.at_unix_ms,
            deployment_id: deployment.to_owned(),
            kind: self.kind.wire().into(),
            state: self.state.wire().into(),
            cluster: self.cluster.clone(),
            instance: (!self.instance.is_empty()).then(|| pb::InstanceRef {
                agent_id: self.instance.clone(),
                service: service.to_owned(),
                slot: 0,
            }),
            message: self.message.clone(),
        }
    }
}

/// An event before it has a sequence number and state. The driver's own
/// (a check's verdict, an instance ready) are kept in the step log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Happening {
    pub kind: EventKind,
    pub instance: String,
    pub message: String,
}

impl Happening {
    pub fn new(kind: EventKind, instance: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            instance: instance.to_owned(),
            message: message.into(),
        }
    }

    /// What a watcher should see for an engine notice (`None`: nothing).
    pub fn of_notice(notice: &Notice, record: &DeploymentRecord) -> Option<Self> {
        let plan = record.engine.plan();
        Some(match notice {
            Notice::Started { waves, instances } => Self::new(
                EventKind::Started,
                "",
                format!(
                    "deploying {} ({}) to {instances} instance(s) in {waves} wave(s)",
                    record.target_version,
                    short(&record.target_digest)
                ),
            ),
            Notice::BatchStarted {
                wave,
                batch,
                step,
                instances,
            } => {
                let label = match plan.waves.get(*wave).map(|w| w.kind) {
                    Some(rollout::WaveKind::Canary) => "canary".to_owned(),
                    Some(rollout::WaveKind::Cluster(c)) => plan
                        .clusters
                        .get(c)
                        .map(|c| format!("cluster {}", c.name))
                        .unwrap_or_default(),
                    None => String::new(),
                };
                Self::new(
                    EventKind::WaveStarted,
                    "",
                    format!(
                        "wave {} ({label}) batch {}{}: {}",
                        wave + 1,
                        batch + 1,
                        match step {
                            rollout::Step::Forward => "",
                            rollout::Step::RehearseBack => " rehearsing rollback",
                            rollout::Step::RehearseForward => " after rehearsal",
                        },
                        listed(instances.iter().map(|i| i.as_str()))
                    ),
                )
            }
            Notice::BatchReady { .. } => return None,
            Notice::BatchPassed { wave, batch, .. } => Self::new(
                EventKind::WaveDone,
                "",
                format!("wave {} batch {} passed its gates", wave + 1, batch + 1),
            ),
            Notice::BakeStarted {
                bake_time,
                instances,
            } => Self::new(
                EventKind::Baking,
                "",
                format!(
                    "baking: every batch passed; watching all {instances} switched instance(s) for {bake_time} (bake_time) before succeeding"
                ),
            ),
            Notice::AwaitingApproval { cluster, .. } => Self::new(
                EventKind::AwaitingApproval,
                "",
                format!(
                    "waiting for `lockstep approve {}` before cluster {}",
                    record.id,
                    cluster.as_ref().map(|c| c.as_str()).unwrap_or("?")
                ),
            ),
            Notice::Operator(Command::Pause) => {
                Self::new(EventKind::Paused, "", record.by_operator("paused"))
            }
            Notice::Operator(Command::Resume) => {
                Self::new(EventKind::Resumed, "", record.by_operator("resumed"))
            }
            Notice::Operator(Command::Approve) => {
                Self::new(EventKind::Resumed, "", record.by_operator("approved"))
            }
            Notice::Operator(Command::Abort | Command::Rollback) | Notice::Ignored { .. } => {
                return None;
            }
            Notice::InstanceFailed { instance, detail } => {
                Self::new(EventKind::InstanceFailed, instance.as_str(), detail.clone())
            }
            Notice::InstanceUnreachable { instance } => Self::new(
                EventKind::InstanceFailed,
                instance.as_str(),
                "agent unreachable; its batch waits until healthy_deadline",
            ),
            Notice::Halted { reason } => Self::new(
                EventKind::Paused,
                "",
                format!(
                    "halted (auto_rollback is off): {reason}; run `lockstep rollback` or `lockstep abort`"
                ),
            ),
            Notice::RollbackStarted { reason, instances } => Self::new(
                EventKind::RollbackStarted,
                "",
                format!("rolling back {instances} instance(s): {reason}"),
            ),
            Notice::InstanceRolledBack { instance } => Self::new(
                EventKind::InstanceReady,
                instance.as_str(),
                "back on its previous release",
            ),
            Notice::RollbackFailed { instance, detail } => Self::new(
                EventKind::InstanceFailed,
                instance.as_str(),
                format!("rollback failed: {detail}"),
            ),
            Notice::Recovered { token } => Self::new(
                EventKind::Resumed,
                "",
                format!("resumed by a new leader ({token})"),
            ),
        })
    }
}

/// Instances named in one event's message: the first [`NAMED_IN_MESSAGE`],
/// then how many more, so a batch of thousands stays one short line (each
/// instance has its own `InstanceApplying` event anyway).
pub fn listed<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> String {
    let total = names.len();
    let mut text = names.take(NAMED_IN_MESSAGE).collect::<Vec<_>>().join(", ");
    if total > NAMED_IN_MESSAGE {
        text.push_str(&format!(" and {} more", total - NAMED_IN_MESSAGE));
    }
    text
}

/// How many instances one event's message names.
pub const NAMED_IN_MESSAGE: usize = 20;

/// The first 19 characters of a digest: `sha256:` and 12 hex digits.
pub fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

/// The format of [`DeploymentSummary`]; a change bumps it and keeps
/// reading the older ones (`summary_format_1_still_loads`).
pub const SUMMARY_FORMAT: u32 = 1;

/// A finished deployment as its history key keeps it: who, why, what, how
/// it ended and when; no engine, progress or events. Written when the
/// deployment finishes, so history outlives the pruning of its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentSummary {
    pub format: u32,
    pub id: String,
    pub service: String,
    pub kind: DeploymentKind,
    pub target_digest: String,
    pub target_version: String,
    pub actor_user: String,
    pub actor_host: String,
    pub reason: String,
    pub created_unix_ms: i64,
    pub finished_unix_ms: i64,
    pub state: DeploymentState,
    pub outcome: String,
    pub token: u64,
}

impl DeploymentSummary {
    pub fn wire(&self) -> pb::Deployment {
        pb::Deployment {
            id: self.id.clone(),
            service: self.service.clone(),
            target: Some(pb::ReleaseRef {
                service: self.service.clone(),
                digest: self.target_digest.clone(),
                version: self.target_version.clone(),
            }),
            state: self.state.wire().into(),
            reason: self.reason.clone(),
            outcome: self.outcome.clone(),
            fencing_token: self.token,
            actor: Some(pb::Actor {
                user: self.actor_user.clone(),
                host: self.actor_host.clone(),
            }),
            created_unix_ms: self.created_unix_ms,
            finished_unix_ms: self.finished_unix_ms,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;

    /// A record as format 1 wrote it (captured from a real deployment,
    /// before records carried `format`): every later build must load it,
    /// its engine must answer as it did, and a resume writes it on in
    /// format 2 (a first snapshot, then steps) from which it rebuilds the
    /// same.
    #[test]
    fn record_format_1_still_loads_and_resumes() {
        let text = include_str!("../tests/fixtures/deployment-record-v1.json");
        let mut record: DeploymentRecord = serde_json::from_str(text).unwrap();
        assert_eq!(record.format, 1);
        assert_eq!(record.state, DeploymentState::Succeeded);
        assert_eq!(record.reason, "JIRA-2");
        assert_eq!(
            DeploymentState::of(&record.engine),
            DeploymentState::Succeeded
        );
        assert_eq!(record.engine.plan().instances.len(), 1);
        assert_eq!(record.header().clusters[0].on_target, 1);
        assert!(crate::step_log::snapshot_due(&record.log));
        let (chunks, _switch) = crate::step_log::plan_snapshot(&mut record).unwrap();
        assert_eq!(record.format, RECORD_FORMAT);
        assert_eq!(record.log.generation, 1);
        let chunks: Vec<Vec<u8>> = chunks
            .iter()
            .flat_map(|t| &t.ops)
            .map(|op| match op {
                crate::step_log::Op::Put(_, v) => v.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        let (again, last) = crate::step_log::rebuild(&record.header(), &chunks, &[]).unwrap();
        assert!(last.is_empty());
        assert_eq!(again.engine.plan(), record.engine.plan());
        assert_eq!(again.format, RECORD_FORMAT);
        assert_eq!(again.progress, record.progress);
        assert_eq!(again.next_seq, 16);
    }

    /// A summary as format 1 wrote it: every later build must read it.
    const FORMAT_1: &str = r#"{"format":1,"id":"web-1709210096000-3f2a","service":"web","kind":"deploy","target_digest":"sha256:abab","target_version":"2.0.0","actor_user":"operator.lockstep (claims: alice@laptop)","actor_host":"laptop","reason":"JIRA-123","created_unix_ms":1709210096000,"finished_unix_ms":1709210196000,"state":"rolled_back","outcome":"rolled back: canary failed","token":41}"#;

    #[test]
    fn summary_format_1_still_loads() {
        let summary: DeploymentSummary = serde_json::from_str(FORMAT_1).unwrap();
        assert_eq!(summary.format, 1);
        assert_eq!(summary.state, DeploymentState::RolledBack);
        assert_eq!(summary.reason, "JIRA-123");
        let wire = summary.wire();
        assert_eq!(wire.finished_unix_ms, 1_709_210_196_000);
        assert_eq!(wire.target.unwrap().version, "2.0.0");
    }
}
