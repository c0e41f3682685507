//! The engine: one deployment's decisions as a pure, serialisable state machine.
//!
//! Owns every decision (which instances next, when to wait, when to stop,
//! what to roll back) and nothing else. `step(now, event)` updates the state
//! and returns the actions for the driver to carry out. Must never read a
//! clock, sleep, draw randomness or do I/O: "now" is an argument, timers are
//! ids the driver fires, agents and checks report back as events.
//!
//! ```text
//!  event ──► step(now, event) ──► facts updated ──► drive() ──► Vec<Action>
//!                                  (ready, failed,     (start batch, arm timer,
//!                                   unreachable ...)    run checks, roll back, finish)
//! ```
//!
//! Every `Apply` carries an `ApplyId`; agents echo it, so a late or duplicated
//! report about an older command is recognised and ignored. After a restart
//! the driver restores the serialised engine and sends `Event::Recovered`: the
//! engine re-issues the applies, checks and timers it is still waiting on, with
//! the same ids, which agents treat as no-ops when already done.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::analysis::{self, AnalysisRunId, OnInconclusive, Verdict};
use crate::fleet::{
    ApplyId, CheckRunId, ClusterName, DeploymentId, DurationMs, FencingToken, Installed,
    InstanceId, Millis, ReleaseDigest, TimerId,
};
use crate::plan::{Plan, WaveKind};
use crate::strategy::Check;

/// An operator's command, from `lockstep pause|resume|approve|abort|rollback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Command {
    /// Start no further batch until resumed; in-flight batches still complete or fail.
    Pause,
    /// Undo `Pause`.
    Resume,
    /// Let the next wave start when `pause_between_clusters` is set.
    Approve,
    /// Stop where it is: no further applies, nothing reverted.
    Abort,
    /// Revert every touched instance now, whatever `auto_rollback` says.
    Rollback,
}

/// Something that happened, as the driver saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    /// Begin the deployment.
    Start,
    /// A (new) coordinator restored this engine from persisted state and now
    /// holds `token`; re-issue whatever is in flight.
    Recovered {
        /// The new lock revision.
        token: FencingToken,
    },
    /// The agent started working on an apply.
    InstanceApplying {
        /// Which instance.
        instance: InstanceId,
        /// Which command.
        apply: ApplyId,
    },
    /// The instance runs `release` and passes its readiness probe.
    InstanceReady {
        /// Which instance.
        instance: InstanceId,
        /// Which command.
        apply: ApplyId,
        /// What it now runs.
        release: Installed,
    },
    /// The instance's new process failed to start or become ready.
    InstanceFailed {
        /// Which instance.
        instance: InstanceId,
        /// Which command.
        apply: ApplyId,
        /// The release that failed.
        release: Installed,
        /// The agent's explanation.
        detail: String,
    },
    /// The instance's process keeps exiting after it was started.
    InstanceCrashLooping {
        /// Which instance.
        instance: InstanceId,
        /// Which command.
        apply: ApplyId,
        /// The release that crash-loops.
        release: Installed,
    },
    /// An instance confirmed ready on `release` for `apply` exited, was
    /// restarted or stopped being ready since: the driver watches every
    /// switched instance until the deployment ends and reports this once.
    InstanceUnhealthy {
        /// Which instance.
        instance: InstanceId,
        /// The command it was confirmed ready for.
        apply: ApplyId,
        /// The release it runs.
        release: Installed,
        /// What the agent reported ("restarted 1 time(s)", "not ready: ...").
        detail: String,
    },
    /// The driver lost contact with the instance's agent.
    InstanceUnreachable {
        /// Which instance.
        instance: InstanceId,
    },
    /// A synthetic check passed.
    CheckPassed {
        /// Which run.
        run: CheckRunId,
    },
    /// A synthetic check failed.
    CheckFailed {
        /// Which run.
        run: CheckRunId,
        /// Its output or exit status.
        detail: String,
    },
    /// An analysis run reached its verdict (never `Pending`).
    AnalysisDone {
        /// Which run.
        run: AnalysisRunId,
        /// Passed, failed or inconclusive, with the values.
        verdict: Verdict,
    },
    /// A timer the engine asked for has fired.
    TimerFired(TimerId),
    /// An operator's command.
    Operator(Command),
    /// An agent refused an apply: it has seen a newer fencing token.
    AgentRefused {
        /// Which instance.
        instance: InstanceId,
        /// The token the refused command carried.
        token: FencingToken,
    },
}

/// Why a deployment stopped going forward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// An instance failed to start, crash-looped or flapped.
    InstanceFailed {
        /// Which instance.
        instance: InstanceId,
        /// On which release.
        release: Installed,
        /// The agent's explanation.
        detail: String,
    },
    /// A synthetic check failed or timed out.
    CheckFailed {
        /// The check's name.
        check: String,
        /// For which cluster.
        cluster: ClusterName,
        /// Output, exit status or "timed out".
        detail: String,
    },
    /// An analysis gate's measurements failed its condition.
    AnalysisFailed {
        /// The analysis's name.
        analysis: String,
        /// Where it ran.
        phase: analysis::Phase,
        /// The query as declared (placeholders unfilled).
        query: String,
        /// The measurements that failed, with values and condition.
        detail: String,
    },
    /// An analysis gate could not measure (Prometheus unreachable, errors,
    /// no data): not evidence against the release, but never a pass.
    AnalysisInconclusive {
        /// The analysis's name.
        analysis: String,
        /// Where it ran.
        phase: analysis::Phase,
        /// The query as declared.
        query: String,
        /// Why the measurements were inconclusive.
        detail: String,
    },
    /// A batch was not ready within `healthy_deadline`.
    HealthyDeadline {
        /// The deadline.
        deadline: DurationMs,
        /// Instances not ready.
        instances: Vec<InstanceId>,
        /// Of those, the ones whose agent was unreachable.
        unreachable: Vec<InstanceId>,
    },
    /// The deployment did not finish within `progress_deadline`.
    ProgressDeadline {
        /// The deadline.
        deadline: DurationMs,
    },
    /// An operator asked for it.
    Operator,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::InstanceFailed {
                instance,
                release,
                detail,
            } => write!(
                f,
                "instance {instance} failed on {}: {detail}",
                release.short()
            ),
            Reason::CheckFailed {
                check,
                cluster,
                detail,
            } => write!(f, "check {check} failed for cluster {cluster}: {detail}"),
            Reason::AnalysisFailed {
                analysis,
                phase,
                query,
                detail,
            } => write!(
                f,
                "analysis {analysis} failed ({phase}): {detail}; query: {query}"
            ),
            Reason::AnalysisInconclusive {
                analysis,
                phase,
                query,
                detail,
            } => write!(
                f,
                "analysis {analysis} inconclusive ({phase}): {detail}; query: {query}"
            ),
            Reason::HealthyDeadline {
                deadline,
                instances,
                unreachable,
            } => {
                write!(
                    f,
                    "not ready within healthy_deadline {deadline}: {}",
                    list(instances)
                )?;
                if !unreachable.is_empty() {
                    write!(f, " (unreachable: {})", list(unreachable))?;
                }
                Ok(())
            }
            Reason::ProgressDeadline { deadline } => {
                write!(
                    f,
                    "deployment did not finish within progress_deadline {deadline}"
                )
            }
            Reason::Operator => f.write_str("operator request"),
        }
    }
}

fn list(ids: &[InstanceId]) -> String {
    ids.iter()
        .map(InstanceId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a deployment ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Every instance runs the target.
    Succeeded,
    /// Every touched instance is back on its own previous release.
    RolledBack {
        /// What went wrong.
        reason: Reason,
    },
    /// Stopped where it was; nothing reverted.
    Aborted {
        /// Operator, or the failure that halted it before its deadline ran out.
        reason: Reason,
        /// Instances confirmed on the target.
        on_target: Vec<InstanceId>,
        /// Instances whose last apply was not confirmed; each runs the target
        /// or its own previous release.
        unsettled: Vec<InstanceId>,
    },
    /// The rollback itself failed.
    Failed {
        /// What made it roll back.
        reason: Reason,
        /// Instances not confirmed back on their previous release.
        instances: Vec<InstanceId>,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Succeeded => f.write_str("succeeded"),
            Outcome::RolledBack { reason } => write!(f, "rolled_back: {reason}"),
            Outcome::Aborted {
                reason,
                on_target,
                unsettled,
            } => write!(
                f,
                "aborted ({reason}): {} on target, unsettled: [{}]",
                on_target.len(),
                list(unsettled)
            ),
            Outcome::Failed { reason, instances } => write!(
                f,
                "failed: rollback after \"{reason}\" did not complete on {}",
                list(instances)
            ),
        }
    }
}

/// Which pass over the canary (or an ordinary batch: `Forward`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// To the target.
    Forward,
    /// Rehearsal: back to each canary's previous release.
    RehearseBack,
    /// Rehearsal: to the target again.
    RehearseForward,
}

/// A record for history and watchers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Notice {
    /// The deployment began.
    Started {
        /// Number of waves.
        waves: usize,
        /// Number of instances.
        instances: usize,
    },
    /// A batch's applies went out.
    BatchStarted {
        /// Wave index.
        wave: usize,
        /// Batch index within the wave.
        batch: usize,
        /// Canary rehearsal pass or forward.
        step: Step,
        /// Its instances.
        instances: Vec<InstanceId>,
    },
    /// Every instance of the batch is ready; the stable period begins.
    BatchReady {
        /// Wave index.
        wave: usize,
        /// Batch index.
        batch: usize,
    },
    /// The batch passed its gates.
    BatchPassed {
        /// Wave index.
        wave: usize,
        /// Batch index.
        batch: usize,
        /// Which pass.
        step: Step,
    },
    /// Every batch passed; every switched instance stays watched for
    /// `bake_time` before the deployment succeeds.
    BakeStarted {
        /// How long.
        bake_time: DurationMs,
        /// Instances watched.
        instances: usize,
    },
    /// Waiting for `lockstep approve` before the next wave.
    AwaitingApproval {
        /// The wave that will start.
        wave: usize,
        /// Its cluster.
        cluster: Option<ClusterName>,
    },
    /// An operator command took effect.
    Operator(Command),
    /// An operator command did not apply in the current state.
    Ignored {
        /// The command.
        command: Command,
        /// Why.
        why: String,
    },
    /// An instance reported a failure.
    InstanceFailed {
        /// Which instance.
        instance: InstanceId,
        /// What it said.
        detail: String,
    },
    /// The driver lost contact with an instance; its batch waits for it.
    InstanceUnreachable {
        /// Which instance.
        instance: InstanceId,
    },
    /// Stopped after a failure; auto_rollback is off, so waiting for an operator.
    Halted {
        /// The failure.
        reason: Reason,
    },
    /// Reverting every touched instance, in reverse order.
    RollbackStarted {
        /// The failure.
        reason: Reason,
        /// Instances to revert.
        instances: usize,
    },
    /// One instance is back on its previous release.
    InstanceRolledBack {
        /// Which instance.
        instance: InstanceId,
    },
    /// One instance could not be reverted.
    RollbackFailed {
        /// Which instance.
        instance: InstanceId,
        /// Why.
        detail: String,
    },
    /// A coordinator resumed the deployment from persisted state.
    Recovered {
        /// Its token.
        token: FencingToken,
    },
}

/// What a deployment waits for (`Engine::waits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitKind {
    /// An operator paused it.
    Paused,
    /// `require_approval`: an operator must approve the next cluster.
    Approval,
    /// A batch's instances becoming ready.
    Ready,
    /// A ready batch's stable period (`min_healthy_time`).
    Stable,
    /// A synthetic check's answer.
    Check,
    /// An analysis run's verdict.
    Analysis,
    /// The bake after the last batch.
    Bake,
    /// The whole deployment's deadline.
    Progress,
}

/// One thing a deployment waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wait {
    pub kind: WaitKind,
    /// When it ends by itself (a gate's timer); none for an approval or a
    /// pause, which wait for an operator.
    pub until: Option<Millis>,
    /// What it is, in words.
    pub detail: String,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Tell the instance's agent to run `release`. Idempotent for the agent
    /// when it already runs (or is switching to) that release.
    Apply {
        /// Which instance.
        instance: InstanceId,
        /// What to run.
        release: Installed,
        /// The lock revision; agents refuse older ones.
        token: FencingToken,
        /// Echo this in reports.
        apply: ApplyId,
    },
    /// Send `Event::TimerFired(id)` after this long.
    StartTimer {
        /// Timer id.
        id: TimerId,
        /// Delay.
        after: DurationMs,
    },
    /// Run a synthetic check and report `CheckPassed`/`CheckFailed` for `run`.
    RunCheck {
        /// The run's id.
        run: CheckRunId,
        /// The cluster it checks.
        cluster: ClusterName,
        /// What to run.
        check: Check,
    },
    /// Run an analysis (`count` measurements against Prometheus) and report
    /// `AnalysisDone` for `run`.
    RunAnalysis {
        /// The run's id.
        run: AnalysisRunId,
        /// What to measure and how to judge it.
        analysis: analysis::Analysis,
        /// Over which hosts.
        scope: AnalysisScope,
    },
    /// Record in history and show to watchers.
    Emit(Notice),
    /// The deployment is over; persist this and release the lock. Always the
    /// engine's last action.
    Finish(Outcome),
    /// An agent has seen a newer token: another coordinator drives this
    /// deployment now. Stop, persist nothing.
    StepDown {
        /// Our refused token.
        token: FencingToken,
    },
}

/// What one analysis run measures: the driver fills the query's
/// placeholders from it (and the service's name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnalysisScope {
    /// Where in the deployment.
    pub phase: analysis::Phase,
    /// `$hosts`: the instances measured.
    pub instances: Vec<InstanceId>,
    /// `$cluster`: their clusters.
    pub clusters: Vec<ClusterName>,
    /// `$release`: what they run (the target).
    pub release: ReleaseDigest,
    /// For the baseline form: the instances this deployment has not
    /// touched (so still on their previous release) and that release.
    pub baseline: Option<(Vec<InstanceId>, ReleaseDigest)>,
}

/// A switched instance the driver must watch (see `Engine::watched`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// Which instance.
    pub instance: InstanceId,
    /// The command it was confirmed ready for: echoed in `InstanceUnhealthy`.
    pub apply: ApplyId,
    /// What it runs.
    pub release: Installed,
}

/// A read-only summary for `lockstep watch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status<'a> {
    /// `Start` not yet received.
    NotStarted,
    /// Going forward.
    Running {
        /// Wave index.
        wave: usize,
        /// Batch index.
        batch: usize,
        /// Pass.
        step: Step,
        /// Operator paused.
        paused: bool,
        /// Waiting for approval.
        awaiting_approval: bool,
    },
    /// Every batch passed; watching every switched instance before succeeding.
    Baking {
        /// The whole bake.
        bake_time: DurationMs,
    },
    /// Stopped after a failure, waiting for an operator.
    Halted(&'a Reason),
    /// Reverting.
    RollingBack {
        /// Why.
        reason: &'a Reason,
        /// Instances still queued or in flight.
        remaining: usize,
    },
    /// Over.
    Finished(&'a Outcome),
    /// Fenced out by a newer coordinator.
    Superseded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Sel {
    Target,
    Original,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Rb {
    No,
    Queued,
    InFlight(TimerId),
    Done,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Inst {
    /// Last command sent; `None` means untouched.
    apply: Option<ApplyId>,
    sel: Sel,
    /// Ready on `sel` for `apply`, and not lost since.
    ready: bool,
    /// Holds one unit of its cluster's budget: an apply went out and no
    /// ready came back for it yet. Only a ready for the current apply frees
    /// it; a flap or a lost agent after that does not take it again, since
    /// those outages are not Lockstep's doing.
    unit: bool,
    failed: bool,
    unreachable: bool,
    rb: Rb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Gate {
    /// Not started: waits for pause, approval or capacity.
    Pending,
    Applying {
        deadline: TimerId,
    },
    Stabilizing {
        timer: TimerId,
    },
    Checking,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    wave: usize,
    batch: usize,
    step: Step,
    gate: Gate,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Rollback {
    reason: Reason,
    /// Touched instances needing a revert, most recently touched first.
    queue: Vec<usize>,
    next: usize,
    in_flight: usize,
    failed: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Phase {
    Created,
    Running(Cursor),
    /// After the last batch: waits for the bake timer and the bake's
    /// analyses, watching everything.
    Baking {
        timer: TimerId,
        /// The bake timer has fired; only analyses are left.
        #[serde(default)]
        elapsed: bool,
    },
    Halted(Reason),
    RollingBack(Rollback),
    Finished(Outcome),
    Superseded,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum Purpose {
    Progress,
    Healthy,
    Stable,
    Check(CheckRunId),
    Analysis(AnalysisRunId),
    Rollback(usize),
    Bake,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Timer {
    due: Millis,
    purpose: Purpose,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingCheck {
    cluster: usize,
    check: usize,
    timer: TimerId,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingAnalysis {
    /// Index into `Plan::analyses`.
    analysis: usize,
    timer: TimerId,
    scope: AnalysisScope,
}

/// One deployment's state machine. Serialise it after every step; a new
/// coordinator deserialises it and sends `Event::Recovered`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Engine {
    deployment: DeploymentId,
    plan: Plan,
    token: FencingToken,
    phase: Phase,
    insts: Vec<Inst>,
    /// Per cluster: instances holding a unit of its budget.
    units: Vec<usize>,
    /// Instances in the order they were first touched.
    touched: Vec<usize>,
    timers: BTreeMap<TimerId, Timer>,
    checks: BTreeMap<CheckRunId, PendingCheck>,
    /// Every run ever issued: (cluster, check) for naming late failures.
    issued_checks: BTreeMap<CheckRunId, (usize, usize)>,
    /// Analysis runs in flight.
    #[serde(default)]
    analyses: BTreeMap<AnalysisRunId, PendingAnalysis>,
    #[serde(default)]
    next_analysis: u64,
    paused: bool,
    awaiting_approval: bool,
    /// Set at the first failure; from then on the target is never applied.
    frozen: bool,
    next_timer: u64,
    next_apply: u64,
    next_check: u64,
    #[serde(skip)]
    index: HashMap<InstanceId, usize>,
}

impl Engine {
    /// A new engine for `plan`, holding `token`. Nothing happens until `Event::Start`.
    pub fn new(deployment: DeploymentId, plan: Plan, token: FencingToken) -> Self {
        let n = plan.instances.len();
        let clusters = plan.clusters.len();
        let mut e = Self {
            deployment,
            plan,
            token,
            phase: Phase::Created,
            insts: vec![
                Inst {
                    apply: None,
                    sel: Sel::Target,
                    ready: false,
                    unit: false,
                    failed: false,
                    unreachable: false,
                    rb: Rb::No,
                };
                n
            ],
            units: vec![0; clusters],
            touched: Vec::new(),
            timers: BTreeMap::new(),
            checks: BTreeMap::new(),
            issued_checks: BTreeMap::new(),
            analyses: BTreeMap::new(),
            next_analysis: 1,
            paused: false,
            awaiting_approval: false,
            frozen: false,
            next_timer: 1,
            next_apply: 1,
            next_check: 1,
            index: HashMap::new(),
        };
        e.rebuild_index();
        e
    }

    /// The deployment's id.
    pub fn deployment(&self) -> &DeploymentId {
        &self.deployment
    }

    /// The plan it follows.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The token its applies carry.
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// The outcome, once finished.
    pub fn outcome(&self) -> Option<&Outcome> {
        match &self.phase {
            Phase::Finished(o) => Some(o),
            _ => None,
        }
    }

    /// True once finished or superseded: it will emit nothing more.
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Finished(_) | Phase::Superseded)
    }

    /// A summary for watchers.
    pub fn status(&self) -> Status<'_> {
        match &self.phase {
            Phase::Created => Status::NotStarted,
            Phase::Running(c) => Status::Running {
                wave: c.wave,
                batch: c.batch,
                step: c.step,
                paused: self.paused,
                awaiting_approval: self.awaiting_approval,
            },
            Phase::Baking { .. } => Status::Baking {
                bake_time: self.plan.gates.bake_time,
            },
            Phase::Halted(r) => Status::Halted(r),
            Phase::RollingBack(rb) => Status::RollingBack {
                reason: &rb.reason,
                remaining: rb.queue.len() - rb.next + rb.in_flight,
            },
            Phase::Finished(o) => Status::Finished(o),
            Phase::Superseded => Status::Superseded,
        }
    }

    /// What the deployment waits for now, soonest deadline first: each
    /// gate's timer (stable period, checks, analyses, bake, the batch's
    /// healthy deadline, the progress deadline) with the time it ends, and
    /// an approval or an operator's pause, which have none. For watchers:
    /// a page counts down to `until` itself.
    pub fn waits(&self) -> Vec<Wait> {
        let mut waits: Vec<Wait> = Vec::new();
        if matches!(self.phase, Phase::Finished(_) | Phase::Superseded) {
            return waits;
        }
        for (id, t) in &self.timers {
            let (gate, detail) = match t.purpose {
                Purpose::Stable => match self.phase {
                    Phase::Running(Cursor {
                        gate: Gate::Stabilizing { timer },
                        ..
                    }) if timer == *id => (
                        WaitKind::Stable,
                        format!(
                            "the batch stays ready for min_healthy_time {} before its checks",
                            self.plan.gates.min_healthy_time
                        ),
                    ),
                    _ => continue,
                },
                Purpose::Bake => match self.phase {
                    Phase::Baking { elapsed: false, .. } => (
                        WaitKind::Bake,
                        format!(
                            "every switched instance stays healthy for bake_time {} before the deployment succeeds",
                            self.plan.gates.bake_time
                        ),
                    ),
                    _ => continue,
                },
                Purpose::Check(run) => {
                    let Some(pc) = self.checks.get(&run) else {
                        continue;
                    };
                    let cluster = &self.plan.clusters[pc.cluster];
                    let name = cluster
                        .checks
                        .get(pc.check)
                        .map_or("?", |c| c.name.as_str());
                    (
                        WaitKind::Check,
                        format!(
                            "check {name} on cluster {} (fails at its timeout)",
                            cluster.name
                        ),
                    )
                }
                Purpose::Analysis(run) => {
                    let Some(a) = self
                        .analyses
                        .get(&run)
                        .and_then(|pa| self.plan.analyses.get(pa.analysis))
                    else {
                        continue;
                    };
                    (
                        WaitKind::Analysis,
                        format!(
                            "analysis {}: {} measurement(s) every {} (inconclusive if no verdict by then)",
                            a.name, a.count, a.interval
                        ),
                    )
                }
                Purpose::Healthy => match self.phase {
                    Phase::Running(Cursor {
                        gate: Gate::Applying { deadline },
                        ..
                    }) if deadline == *id => (
                        WaitKind::Ready,
                        format!(
                            "the batch's instances become ready (healthy_deadline {})",
                            self.plan.gates.healthy_deadline
                        ),
                    ),
                    _ => continue,
                },
                Purpose::Progress => (
                    WaitKind::Progress,
                    format!(
                        "progress_deadline {}: the deployment {} if it has not finished by then",
                        self.plan.gates.progress_deadline,
                        if self.plan.gates.auto_rollback {
                            "rolls back"
                        } else {
                            "stops"
                        }
                    ),
                ),
                Purpose::Rollback(_) => continue,
            };
            waits.push(Wait {
                kind: gate,
                until: Some(t.due),
                detail,
            });
        }
        waits.sort_by_key(|w| w.until);
        if let Phase::Running(c) = &self.phase {
            if self.awaiting_approval {
                let cluster = match self.plan.waves.get(c.wave).map(|w| w.kind) {
                    Some(WaveKind::Cluster(ix)) => self
                        .plan
                        .clusters
                        .get(ix)
                        .map(|c| format!(" before cluster {}", c.name))
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                waits.insert(
                    0,
                    Wait {
                        kind: WaitKind::Approval,
                        until: None,
                        detail: format!("an operator's approval{cluster}"),
                    },
                );
            }
        }
        if self.paused {
            waits.insert(
                0,
                Wait {
                    kind: WaitKind::Paused,
                    until: None,
                    detail: "paused by an operator: waits for resume".to_owned(),
                },
            );
        }
        waits
    }

    /// The instances the driver must watch now: every switched instance
    /// confirmed ready for its current command, while the deployment goes
    /// forward or bakes. An exit, restart or lost readiness of one of them
    /// is reported as `Event::InstanceUnhealthy`.
    pub fn watched(&self) -> Vec<Watched> {
        if !matches!(self.phase, Phase::Running(_) | Phase::Baking { .. }) {
            return Vec::new();
        }
        self.touched
            .iter()
            .filter_map(|&ix| self.watched_at(ix))
            .collect()
    }

    /// `instance` as [`Self::watched`] lists it, if it does: one lookup,
    /// for a driver that judges only the hosts that reported a change.
    pub fn watching(&self, instance: &InstanceId) -> Option<Watched> {
        if !matches!(self.phase, Phase::Running(_) | Phase::Baking { .. }) {
            return None;
        }
        let ix = match self.index.get(instance) {
            Some(&ix) => ix,
            // Not rebuilt yet after loading (the index is not stored).
            None if self.index.len() != self.plan.instances.len() => {
                self.plan.instances.iter().position(|i| i.id == *instance)?
            }
            None => return None,
        };
        self.watched_at(ix)
    }

    fn watched_at(&self, ix: usize) -> Option<Watched> {
        let i = self.insts.get(ix)?;
        // `apply` is set exactly for the touched instances.
        let apply = i.apply.filter(|_| i.ready && !i.failed)?;
        Some(Watched {
            instance: self.plan.instances.get(ix)?.id.clone(),
            apply,
            release: self.release(ix, i.sel),
        })
    }

    /// Feeds one event at time `now`; returns what the driver must do.
    pub fn step(&mut self, now: Millis, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if self.is_done() {
            return out;
        }
        if self.index.len() != self.plan.instances.len() {
            self.rebuild_index();
        }
        match event {
            Event::Start => {
                if matches!(self.phase, Phase::Created) {
                    self.arm(
                        now,
                        self.plan.gates.progress_deadline,
                        Purpose::Progress,
                        &mut out,
                    );
                    out.push(Action::Emit(Notice::Started {
                        waves: self.plan.waves.len(),
                        instances: self.plan.instances.len(),
                    }));
                    if self.plan.waves.is_empty() {
                        self.finish(Outcome::Succeeded, &mut out);
                    } else {
                        self.phase = Phase::Running(Cursor {
                            wave: 0,
                            batch: 0,
                            step: Step::Forward,
                            gate: Gate::Pending,
                        });
                    }
                }
            }
            Event::Recovered { token } => self.recovered(now, token, &mut out),
            Event::InstanceApplying { .. } => {}
            Event::InstanceReady {
                instance,
                apply,
                release,
            } => self.on_ready(&instance, apply, &release, &mut out),
            Event::InstanceFailed {
                instance,
                apply,
                release,
                detail,
            } => self.on_failed(now, &instance, apply, &release, detail, &mut out),
            Event::InstanceCrashLooping {
                instance,
                apply,
                release,
            } => self.on_failed(
                now,
                &instance,
                apply,
                &release,
                "crash-looping".to_owned(),
                &mut out,
            ),
            Event::InstanceUnhealthy {
                instance,
                apply,
                release,
                detail,
            } => self.on_failed(now, &instance, apply, &release, detail, &mut out),
            Event::InstanceUnreachable { instance } => {
                if let Some(&ix) = self.index.get(&instance) {
                    // It blocks its batch until it reports ready again; its
                    // budget unit is untouched (its outage is not ours).
                    self.insts[ix].unreachable = true;
                    self.insts[ix].ready = false;
                    out.push(Action::Emit(Notice::InstanceUnreachable { instance }));
                }
            }
            Event::CheckPassed { run } => {
                if let Some(pc) = self.checks.remove(&run) {
                    self.timers.remove(&pc.timer);
                }
            }
            Event::CheckFailed { run, detail } => {
                // A failed run counts even when late or repeated after a
                // restart: it is evidence against the release.
                if let Some(&(cl, ci)) = self.issued_checks.get(&run) {
                    if let Some(pc) = self.checks.remove(&run) {
                        self.timers.remove(&pc.timer);
                    }
                    let c = &self.plan.clusters[cl];
                    let check = c.checks.get(ci).map(|c| c.name.clone()).unwrap_or_default();
                    let cluster = c.name.clone();
                    self.fail(
                        now,
                        Reason::CheckFailed {
                            check,
                            cluster,
                            detail,
                        },
                        &mut out,
                    );
                }
            }
            Event::AnalysisDone { run, verdict } => self.on_analysis(now, run, verdict, &mut out),
            Event::TimerFired(id) => self.on_timer(now, id, &mut out),
            Event::Operator(cmd) => self.on_command(cmd, &mut out),
            Event::AgentRefused { token, .. } => {
                if token >= self.token {
                    self.phase = Phase::Superseded;
                    self.timers.clear();
                    self.checks.clear();
                    self.analyses.clear();
                    out.push(Action::StepDown { token });
                    return out;
                }
            }
        }
        self.drive(now, &mut out);
        out
    }

    fn rebuild_index(&mut self) {
        self.index = self
            .plan
            .instances
            .iter()
            .enumerate()
            .map(|(ix, i)| (i.id.clone(), ix))
            .collect();
    }

    fn release(&self, ix: usize, sel: Sel) -> Installed {
        match sel {
            Sel::Target => Installed::Release(self.plan.target),
            Sel::Original => self.plan.instances[ix].original,
        }
    }

    fn set_unit(&mut self, ix: usize, unit: bool) {
        let c = self.plan.instances[ix].cluster;
        let i = &mut self.insts[ix];
        match (i.unit, unit) {
            (false, true) => self.units[c] += 1,
            (true, false) => self.units[c] -= 1,
            _ => {}
        }
        i.unit = unit;
    }

    fn arm(
        &mut self,
        now: Millis,
        after: DurationMs,
        purpose: Purpose,
        out: &mut Vec<Action>,
    ) -> TimerId {
        let id = TimerId(self.next_timer);
        self.next_timer += 1;
        self.timers.insert(
            id,
            Timer {
                due: now.plus(after),
                purpose,
            },
        );
        out.push(Action::StartTimer { id, after });
        id
    }

    fn issue_apply(&mut self, ix: usize, sel: Sel, out: &mut Vec<Action>) -> bool {
        if sel == Sel::Target && self.frozen {
            return false;
        }
        let apply = ApplyId(self.next_apply);
        self.next_apply += 1;
        let first = self.insts[ix].apply.is_none();
        let i = &mut self.insts[ix];
        i.apply = Some(apply);
        i.sel = sel;
        i.ready = false;
        i.failed = false;
        self.set_unit(ix, true);
        if first {
            self.touched.push(ix);
        }
        out.push(Action::Apply {
            instance: self.plan.instances[ix].id.clone(),
            release: self.release(ix, sel),
            token: self.token,
            apply,
        });
        true
    }

    fn members(&self, c: &Cursor) -> &[usize] {
        self.plan
            .waves
            .get(c.wave)
            .and_then(|w| w.batches.get(c.batch))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    fn step_sel(step: Step) -> Sel {
        match step {
            Step::RehearseBack => Sel::Original,
            Step::Forward | Step::RehearseForward => Sel::Target,
        }
    }

    fn all_ready(&self, c: &Cursor) -> bool {
        let sel = Self::step_sel(c.step);
        self.members(c).iter().all(|&ix| {
            let i = &self.insts[ix];
            i.apply.is_some() && i.ready && i.sel == sel
        })
    }

    fn room_for(&self, c: &Cursor) -> bool {
        let mut extra: Vec<(usize, usize)> = Vec::new();
        for &ix in self.members(c) {
            if self.insts[ix].unit {
                continue;
            }
            let cl = self.plan.instances[ix].cluster;
            match extra.iter_mut().find(|(k, _)| *k == cl) {
                Some((_, n)) => *n += 1,
                None => extra.push((cl, 1)),
            }
        }
        extra
            .iter()
            .all(|&(cl, n)| self.units[cl] + n <= self.plan.clusters[cl].budget)
    }

    fn set_gate(&mut self, gate: Gate) {
        if let Phase::Running(c) = &mut self.phase {
            c.gate = gate;
        }
    }

    /// Makes whatever progress the current facts allow.
    fn drive(&mut self, now: Millis, out: &mut Vec<Action>) {
        loop {
            let cur = match &self.phase {
                Phase::Running(c) => *c,
                Phase::RollingBack(_) => {
                    self.walk_rollback(now, out);
                    return;
                }
                Phase::Baking { elapsed: true, .. } if self.analyses.is_empty() => {
                    self.finish(Outcome::Succeeded, out);
                    return;
                }
                _ => return,
            };
            match cur.gate {
                Gate::Pending => {
                    if self.paused || self.awaiting_approval || !self.room_for(&cur) {
                        return;
                    }
                    let sel = Self::step_sel(cur.step);
                    let members = self.members(&cur).to_vec();
                    for &ix in &members {
                        self.issue_apply(ix, sel, out);
                    }
                    let deadline =
                        self.arm(now, self.plan.gates.healthy_deadline, Purpose::Healthy, out);
                    out.push(Action::Emit(Notice::BatchStarted {
                        wave: cur.wave,
                        batch: cur.batch,
                        step: cur.step,
                        instances: members
                            .iter()
                            .map(|&ix| self.plan.instances[ix].id.clone())
                            .collect(),
                    }));
                    self.set_gate(Gate::Applying { deadline });
                    return;
                }
                Gate::Applying { deadline } => {
                    if !self.all_ready(&cur) {
                        return;
                    }
                    self.timers.remove(&deadline);
                    out.push(Action::Emit(Notice::BatchReady {
                        wave: cur.wave,
                        batch: cur.batch,
                    }));
                    if self.plan.gates.min_healthy_time.0 == 0 {
                        self.start_checks(now, &cur, out);
                    } else {
                        let timer =
                            self.arm(now, self.plan.gates.min_healthy_time, Purpose::Stable, out);
                        self.set_gate(Gate::Stabilizing { timer });
                    }
                }
                Gate::Stabilizing { timer } => {
                    if self.all_ready(&cur) {
                        return;
                    }
                    // Someone stopped being ready (or became unreachable): the
                    // stable period starts over once they are back.
                    self.timers.remove(&timer);
                    self.restart_applying(now, out);
                    return;
                }
                Gate::Checking => {
                    if !self.all_ready(&cur) {
                        self.restart_applying(now, out);
                        return;
                    }
                    if !self.checks.is_empty() || !self.analyses.is_empty() {
                        return;
                    }
                    self.batch_passed(now, &cur, out);
                }
            }
        }
    }

    fn restart_applying(&mut self, now: Millis, out: &mut Vec<Action>) {
        for pc in std::mem::take(&mut self.checks).into_values() {
            self.timers.remove(&pc.timer);
        }
        for pa in std::mem::take(&mut self.analyses).into_values() {
            self.timers.remove(&pa.timer);
        }
        let deadline = self.arm(now, self.plan.gates.healthy_deadline, Purpose::Healthy, out);
        self.set_gate(Gate::Applying { deadline });
    }

    fn start_checks(&mut self, now: Millis, cur: &Cursor, out: &mut Vec<Action>) {
        let mut clusters: Vec<usize> = self
            .members(cur)
            .iter()
            .map(|&ix| self.plan.instances[ix].cluster)
            .collect();
        clusters.sort_unstable();
        clusters.dedup();
        for cl in clusters {
            for ci in 0..self.plan.clusters[cl].checks.len() {
                let check = self.plan.clusters[cl].checks[ci].clone();
                let run = CheckRunId(self.next_check);
                self.next_check += 1;
                let timer = self.arm(now, check.timeout, Purpose::Check(run), out);
                self.issued_checks.insert(run, (cl, ci));
                self.checks.insert(
                    run,
                    PendingCheck {
                        cluster: cl,
                        check: ci,
                        timer,
                    },
                );
                out.push(Action::RunCheck {
                    run,
                    cluster: self.plan.clusters[cl].name.clone(),
                    check,
                });
            }
        }
        // Analyses judge the target: the forward pass measures it; the
        // rehearsal's passes only prove the switch back and forth works.
        if cur.step == Step::Forward {
            let canary = self
                .plan
                .waves
                .get(cur.wave)
                .is_some_and(|w| w.kind == WaveKind::Canary);
            let phase = if canary {
                analysis::Phase::Canary
            } else {
                analysis::Phase::Clusters
            };
            let members = self.members(cur).to_vec();
            self.start_analyses(now, phase, &members, out);
        }
        self.set_gate(Gate::Checking);
    }

    /// Starts every analysis of `phase` over `members`, each with a timer
    /// that makes a run without a verdict inconclusive.
    fn start_analyses(
        &mut self,
        now: Millis,
        phase: analysis::Phase,
        members: &[usize],
        out: &mut Vec<Action>,
    ) {
        let chosen: Vec<usize> = self.plan.analyses_in(phase).map(|(ai, _)| ai).collect();
        if chosen.is_empty() {
            return;
        }
        let mut clusters: Vec<ClusterName> = members
            .iter()
            .map(|&ix| {
                self.plan.clusters[self.plan.instances[ix].cluster]
                    .name
                    .clone()
            })
            .collect();
        clusters.sort();
        clusters.dedup();
        let untouched: Vec<InstanceId> = self
            .insts
            .iter()
            .enumerate()
            .filter(|(_, i)| i.apply.is_none())
            .map(|(ix, _)| self.plan.instances[ix].id.clone())
            .collect();
        for ai in chosen {
            let a = self.plan.analyses[ai].clone();
            let scope = AnalysisScope {
                phase,
                instances: members
                    .iter()
                    .map(|&ix| self.plan.instances[ix].id.clone())
                    .collect(),
                clusters: clusters.clone(),
                release: self.plan.target,
                // A first install has nothing to compare with: no baseline.
                baseline: a.baseline.and_then(|_| {
                    self.plan
                        .previous
                        .release()
                        .map(|previous| (untouched.clone(), *previous))
                }),
            };
            let run = AnalysisRunId(self.next_analysis);
            self.next_analysis += 1;
            let timer = self.arm(now, a.deadline(), Purpose::Analysis(run), out);
            self.analyses.insert(
                run,
                PendingAnalysis {
                    analysis: ai,
                    timer,
                    scope: scope.clone(),
                },
            );
            out.push(Action::RunAnalysis {
                run,
                analysis: a,
                scope,
            });
        }
    }

    fn on_analysis(
        &mut self,
        now: Millis,
        run: AnalysisRunId,
        verdict: Verdict,
        out: &mut Vec<Action>,
    ) {
        // Only a run still pending counts: a run dropped by a failure,
        // a restart of the batch or the end is no longer asked about.
        let Some(pa) = self.analyses.remove(&run) else {
            return;
        };
        self.timers.remove(&pa.timer);
        let Some(a) = self.plan.analyses.get(pa.analysis) else {
            return;
        };
        let (name, query, phase) = (a.name.clone(), a.query.clone(), pa.scope.phase);
        match verdict {
            Verdict::Passed => {}
            Verdict::Failed(detail) => self.fail(
                now,
                Reason::AnalysisFailed {
                    analysis: name,
                    phase,
                    query,
                    detail,
                },
                out,
            ),
            Verdict::Pending => self.stop(
                now,
                Reason::AnalysisInconclusive {
                    analysis: name,
                    phase,
                    query,
                    detail: "the run ended without a verdict".to_owned(),
                },
                a.on_inconclusive == OnInconclusive::Rollback,
                out,
            ),
            Verdict::Inconclusive(detail) => {
                let rollback = a.on_inconclusive == OnInconclusive::Rollback;
                let reason = Reason::AnalysisInconclusive {
                    analysis: name,
                    phase,
                    query,
                    detail,
                };
                self.stop(now, reason, rollback, out);
            }
        }
    }

    fn batch_passed(&mut self, now: Millis, cur: &Cursor, out: &mut Vec<Action>) {
        out.push(Action::Emit(Notice::BatchPassed {
            wave: cur.wave,
            batch: cur.batch,
            step: cur.step,
        }));
        let canary = self
            .plan
            .waves
            .get(cur.wave)
            .is_some_and(|w| w.kind == WaveKind::Canary);
        let rehearse = canary && self.plan.gates.rehearse_rollback;
        let next_step = match cur.step {
            Step::Forward if rehearse => Some(Step::RehearseBack),
            Step::RehearseBack => Some(Step::RehearseForward),
            _ => None,
        };
        let next = if let Some(step) = next_step {
            Cursor {
                step,
                gate: Gate::Pending,
                ..*cur
            }
        } else if cur.batch + 1 < self.plan.waves[cur.wave].batches.len() {
            Cursor {
                batch: cur.batch + 1,
                step: Step::Forward,
                gate: Gate::Pending,
                ..*cur
            }
        } else if cur.wave + 1 < self.plan.waves.len() {
            let wave = cur.wave + 1;
            if self.plan.gates.pause_between_clusters {
                self.awaiting_approval = true;
                let cluster = match self.plan.waves[wave].kind {
                    WaveKind::Cluster(ci) => Some(self.plan.clusters[ci].name.clone()),
                    WaveKind::Canary => None,
                };
                out.push(Action::Emit(Notice::AwaitingApproval { wave, cluster }));
            }
            Cursor {
                wave,
                batch: 0,
                step: Step::Forward,
                gate: Gate::Pending,
            }
        } else {
            self.begin_bake(now, out);
            return;
        };
        self.phase = Phase::Running(next);
    }

    /// After the last batch: keep watching every switched instance for
    /// `bake_time`, then succeed. The progress deadline bounds the rollout,
    /// not the bake (which bounds itself), so its timer goes.
    fn begin_bake(&mut self, now: Millis, out: &mut Vec<Action>) {
        let bake_time = self.plan.gates.bake_time;
        let analysed = self
            .plan
            .analyses_in(analysis::Phase::Bake)
            .next()
            .is_some();
        if bake_time.0 == 0 && !analysed {
            self.finish(Outcome::Succeeded, out);
            return;
        }
        self.timers
            .retain(|_, t| !matches!(t.purpose, Purpose::Progress));
        // With bake_time 0 the timer fires at once: the bake lasts as long
        // as its analyses.
        let timer = self.arm(now, bake_time, Purpose::Bake, out);
        out.push(Action::Emit(Notice::BakeStarted {
            bake_time,
            instances: self.touched.len(),
        }));
        self.phase = Phase::Baking {
            timer,
            elapsed: false,
        };
        let everyone: Vec<usize> = self.touched.clone();
        self.start_analyses(now, analysis::Phase::Bake, &everyone, out);
    }

    fn on_ready(
        &mut self,
        instance: &InstanceId,
        apply: ApplyId,
        release: &Installed,
        out: &mut Vec<Action>,
    ) {
        let Some(&ix) = self.index.get(instance) else {
            return;
        };
        let i = &self.insts[ix];
        if i.apply != Some(apply) || self.release(ix, i.sel) != *release || i.ready || i.failed {
            return;
        }
        self.insts[ix].unreachable = false;
        self.insts[ix].ready = true;
        self.set_unit(ix, false);
        if let (Phase::RollingBack(rb), Rb::InFlight(timer)) = (&mut self.phase, self.insts[ix].rb)
        {
            if self.insts[ix].sel == Sel::Original {
                rb.in_flight -= 1;
                self.insts[ix].rb = Rb::Done;
                self.timers.remove(&timer);
                out.push(Action::Emit(Notice::InstanceRolledBack {
                    instance: instance.clone(),
                }));
            }
        }
    }

    fn on_failed(
        &mut self,
        now: Millis,
        instance: &InstanceId,
        apply: ApplyId,
        release: &Installed,
        detail: String,
        out: &mut Vec<Action>,
    ) {
        let Some(&ix) = self.index.get(instance) else {
            return;
        };
        let i = &self.insts[ix];
        let current = i.apply == Some(apply) && self.release(ix, i.sel) == *release;
        // A failure of the target counts even when late: it is evidence
        // against the release, whatever the instance runs now.
        let against_target = i.apply.is_some() && release == &self.plan.target;
        if !current && !against_target {
            return;
        }
        if current {
            if self.insts[ix].failed {
                return;
            }
            self.insts[ix].failed = true;
            self.insts[ix].ready = false;
        }
        out.push(Action::Emit(Notice::InstanceFailed {
            instance: instance.clone(),
            detail: detail.clone(),
        }));
        match &self.phase {
            Phase::Running(_) | Phase::Baking { .. } => self.fail(
                now,
                Reason::InstanceFailed {
                    instance: instance.clone(),
                    release: *release,
                    detail,
                },
                out,
            ),
            Phase::RollingBack(_) if current => self.rollback_failed(ix, detail, out),
            _ => {}
        }
    }

    fn rollback_failed(&mut self, ix: usize, detail: String, out: &mut Vec<Action>) {
        let Rb::InFlight(timer) = self.insts[ix].rb else {
            return;
        };
        if self.insts[ix].sel != Sel::Original {
            return;
        }
        self.timers.remove(&timer);
        self.insts[ix].rb = Rb::Failed;
        if let Phase::RollingBack(rb) = &mut self.phase {
            rb.in_flight -= 1;
            rb.failed.push(ix);
        }
        out.push(Action::Emit(Notice::RollbackFailed {
            instance: self.plan.instances[ix].id.clone(),
            detail,
        }));
    }

    fn on_timer(&mut self, now: Millis, id: TimerId, out: &mut Vec<Action>) {
        let Some(t) = self.timers.remove(&id) else {
            return;
        };
        match t.purpose {
            Purpose::Progress => {
                let reason = Reason::ProgressDeadline {
                    deadline: self.plan.gates.progress_deadline,
                };
                match &self.phase {
                    Phase::Running(_) if self.plan.gates.auto_rollback => {
                        self.fail(now, reason, out)
                    }
                    // Without auto_rollback nobody may be there to decide:
                    // stop where we are rather than wait for ever.
                    Phase::Running(_) => self.abort(reason, out),
                    Phase::Halted(r) => {
                        let r = r.clone();
                        self.abort(r, out);
                    }
                    _ => {}
                }
            }
            Purpose::Healthy => {
                if let Phase::Running(c) = &self.phase {
                    let sel = Self::step_sel(c.step);
                    let mut instances = Vec::new();
                    let mut unreachable = Vec::new();
                    for &ix in self.members(c) {
                        let i = &self.insts[ix];
                        if !(i.ready && i.sel == sel) {
                            instances.push(self.plan.instances[ix].id.clone());
                            if i.unreachable {
                                unreachable.push(self.plan.instances[ix].id.clone());
                            }
                        }
                    }
                    let reason = Reason::HealthyDeadline {
                        deadline: self.plan.gates.healthy_deadline,
                        instances,
                        unreachable,
                    };
                    self.fail(now, reason, out);
                }
            }
            Purpose::Stable => {
                if let Phase::Running(c) = self.phase {
                    if matches!(c.gate, Gate::Stabilizing { timer } if timer == id) {
                        self.start_checks(now, &c, out);
                    }
                }
            }
            Purpose::Check(run) => {
                if let Some(pc) = self.checks.remove(&run) {
                    let c = &self.plan.clusters[pc.cluster];
                    let reason = Reason::CheckFailed {
                        check: c
                            .checks
                            .get(pc.check)
                            .map(|c| c.name.clone())
                            .unwrap_or_default(),
                        cluster: c.name.clone(),
                        detail: format!(
                            "timed out after {}",
                            c.checks
                                .get(pc.check)
                                .map(|c| c.timeout)
                                .unwrap_or_default()
                        ),
                    };
                    self.fail(now, reason, out);
                }
            }
            Purpose::Bake => {
                if let Phase::Baking { timer, elapsed } = &mut self.phase {
                    if *timer == id {
                        *elapsed = true;
                    }
                }
            }
            Purpose::Analysis(run) => {
                if self.analyses.contains_key(&run) {
                    // Put the timer back so on_analysis can find and drop it.
                    self.timers.insert(id, t);
                    let detail = self
                        .analyses
                        .get(&run)
                        .and_then(|pa| self.plan.analyses.get(pa.analysis))
                        .map(|a| format!("no verdict within {}", a.deadline()))
                        .unwrap_or_default();
                    self.on_analysis(now, run, Verdict::Inconclusive(detail), out);
                }
            }
            Purpose::Rollback(ix) => {
                let detail = format!(
                    "not ready on its previous release within healthy_deadline {}{}",
                    self.plan.gates.healthy_deadline,
                    if self.insts[ix].unreachable {
                        " (unreachable)"
                    } else {
                        ""
                    }
                );
                // Put the timer back so rollback_failed can find and drop it.
                self.timers.insert(id, t);
                self.rollback_failed(ix, detail, out);
            }
        }
    }

    fn on_command(&mut self, cmd: Command, out: &mut Vec<Action>) {
        let running = matches!(self.phase, Phase::Running(_));
        let why = match cmd {
            Command::Pause if running && !self.paused => {
                self.paused = true;
                None
            }
            Command::Pause if matches!(self.phase, Phase::Baking { .. }) => {
                Some("baking: no batch is left to hold back; abort or rollback instead")
            }
            Command::Pause => Some("only a running deployment that is not paused can be paused"),
            Command::Resume if self.paused => {
                self.paused = false;
                None
            }
            Command::Resume if matches!(self.phase, Phase::Halted(_)) => Some(
                "halted on a gate (its reason is in the deployment's events), not paused by an operator: resume cannot undo the gate's verdict; roll back or abort",
            ),
            Command::Resume => Some("not paused"),
            Command::Approve if running && self.awaiting_approval => {
                self.awaiting_approval = false;
                None
            }
            Command::Approve => Some("not waiting for approval"),
            Command::Abort => match &self.phase {
                Phase::Running(_)
                | Phase::Baking { .. }
                | Phase::RollingBack(_)
                | Phase::Created => {
                    out.push(Action::Emit(Notice::Operator(cmd)));
                    self.abort(Reason::Operator, out);
                    return;
                }
                Phase::Halted(_) => {
                    out.push(Action::Emit(Notice::Operator(cmd)));
                    self.abort(Reason::Operator, out);
                    return;
                }
                _ => Some("already over"),
            },
            Command::Rollback => match &self.phase {
                Phase::Running(_) | Phase::Baking { .. } | Phase::Halted(_) => {
                    out.push(Action::Emit(Notice::Operator(cmd)));
                    self.frozen = true;
                    self.begin_rollback(Reason::Operator, out);
                    return;
                }
                Phase::RollingBack(_) => Some("already rolling back"),
                _ => Some("nothing to roll back"),
            },
        };
        out.push(Action::Emit(match why {
            None => Notice::Operator(cmd),
            Some(why) => Notice::Ignored {
                command: cmd,
                why: why.to_owned(),
            },
        }));
    }

    fn fail(&mut self, now: Millis, reason: Reason, out: &mut Vec<Action>) {
        self.stop(now, reason, self.plan.gates.auto_rollback, out);
    }

    /// Stops going forward: rolls back, or halts for an operator.
    fn stop(&mut self, now: Millis, reason: Reason, rollback: bool, out: &mut Vec<Action>) {
        if !matches!(self.phase, Phase::Running(_) | Phase::Baking { .. }) {
            return;
        }
        // Stop every further apply of the target, at once.
        self.frozen = true;
        for pc in std::mem::take(&mut self.checks).into_values() {
            self.timers.remove(&pc.timer);
        }
        self.analyses.clear();
        self.timers
            .retain(|_, t| matches!(t.purpose, Purpose::Progress));
        if rollback {
            self.begin_rollback(reason, out);
        } else {
            // The bake dropped the progress timer; a halt still must end
            // without a human, so it gets a deadline of its own.
            if !self
                .timers
                .values()
                .any(|t| matches!(t.purpose, Purpose::Progress))
            {
                self.arm(
                    now,
                    self.plan.gates.progress_deadline,
                    Purpose::Progress,
                    out,
                );
            }
            out.push(Action::Emit(Notice::Halted {
                reason: reason.clone(),
            }));
            self.phase = Phase::Halted(reason);
        }
    }

    fn begin_rollback(&mut self, reason: Reason, out: &mut Vec<Action>) {
        self.frozen = true;
        self.timers.clear();
        self.checks.clear();
        self.analyses.clear();
        self.paused = false;
        self.awaiting_approval = false;
        let queue: Vec<usize> = self
            .touched
            .iter()
            .rev()
            .copied()
            .filter(|&ix| {
                let i = &self.insts[ix];
                i.sel == Sel::Target || !i.ready
            })
            .collect();
        for &ix in &queue {
            self.insts[ix].rb = Rb::Queued;
        }
        out.push(Action::Emit(Notice::RollbackStarted {
            reason: reason.clone(),
            instances: queue.len(),
        }));
        self.phase = Phase::RollingBack(Rollback {
            reason,
            queue,
            next: 0,
            in_flight: 0,
            failed: Vec::new(),
        });
    }

    /// Issues reverts in queue order while the clusters' budgets allow; an
    /// instance already holding a unit (apply in flight, or failed) costs
    /// nothing more to revert.
    fn walk_rollback(&mut self, now: Millis, out: &mut Vec<Action>) {
        // Rollback is bounded by one healthy_deadline per instance, not by
        // the progress deadline: a revert must get its chance to finish.
        loop {
            let Phase::RollingBack(rb) = &self.phase else {
                return;
            };
            let Some(&ix) = rb.queue.get(rb.next) else {
                break;
            };
            let cl = self.plan.instances[ix].cluster;
            if !self.insts[ix].unit && self.units[cl] >= self.plan.clusters[cl].budget {
                break;
            }
            self.issue_apply(ix, Sel::Original, out);
            let timer = self.arm(
                now,
                self.plan.gates.healthy_deadline,
                Purpose::Rollback(ix),
                out,
            );
            self.insts[ix].rb = Rb::InFlight(timer);
            if let Phase::RollingBack(rb) = &mut self.phase {
                rb.next += 1;
                rb.in_flight += 1;
            }
        }
        let Phase::RollingBack(rb) = &self.phase else {
            return;
        };
        if rb.in_flight > 0 {
            return;
        }
        let outcome = if rb.failed.is_empty() && rb.next == rb.queue.len() {
            Outcome::RolledBack {
                reason: rb.reason.clone(),
            }
        } else {
            let mut instances: Vec<InstanceId> = rb
                .failed
                .iter()
                .chain(&rb.queue[rb.next..])
                .map(|&ix| self.plan.instances[ix].id.clone())
                .collect();
            instances.sort();
            Outcome::Failed {
                reason: rb.reason.clone(),
                instances,
            }
        };
        self.finish(outcome, out);
    }

    fn abort(&mut self, reason: Reason, out: &mut Vec<Action>) {
        self.frozen = true;
        let mut on_target = Vec::new();
        let mut unsettled = Vec::new();
        for (ix, i) in self.insts.iter().enumerate() {
            if i.apply.is_none() {
                continue;
            }
            let id = self.plan.instances[ix].id.clone();
            if !i.ready {
                unsettled.push(id);
            } else if i.sel == Sel::Target {
                on_target.push(id);
            }
        }
        self.finish(
            Outcome::Aborted {
                reason,
                on_target,
                unsettled,
            },
            out,
        );
    }

    fn finish(&mut self, outcome: Outcome, out: &mut Vec<Action>) {
        self.timers.clear();
        self.checks.clear();
        self.analyses.clear();
        out.push(Action::Finish(outcome.clone()));
        self.phase = Phase::Finished(outcome);
    }

    fn recovered(&mut self, now: Millis, token: FencingToken, out: &mut Vec<Action>) {
        if token < self.token {
            return;
        }
        self.token = token;
        out.push(Action::Emit(Notice::Recovered { token }));
        // Analyses start over (their measurements died with the old
        // driver), so each gets its whole deadline again.
        for pa in self.analyses.values() {
            if let (Some(t), Some(a)) = (
                self.timers.get_mut(&pa.timer),
                self.plan.analyses.get(pa.analysis),
            ) {
                t.due = now.plus(a.deadline());
            }
        }
        // The old driver's timers died with it: re-arm with the time left.
        for (&id, t) in &self.timers {
            out.push(Action::StartTimer {
                id,
                after: now.until(t.due),
            });
        }
        for (&run, pc) in &self.checks {
            let c = &self.plan.clusters[pc.cluster];
            if let Some(check) = c.checks.get(pc.check) {
                out.push(Action::RunCheck {
                    run,
                    cluster: c.name.clone(),
                    check: check.clone(),
                });
            }
        }
        for (&run, pa) in &self.analyses {
            if let Some(a) = self.plan.analyses.get(pa.analysis) {
                out.push(Action::RunAnalysis {
                    run,
                    analysis: a.clone(),
                    scope: pa.scope.clone(),
                });
            }
        }
        let waiting: Vec<usize> = match &self.phase {
            Phase::Running(c) if c.gate != Gate::Pending => self.members(c).to_vec(),
            Phase::RollingBack(rb) => rb.queue[..rb.next]
                .iter()
                .copied()
                .filter(|&ix| matches!(self.insts[ix].rb, Rb::InFlight(_)))
                .collect(),
            _ => Vec::new(),
        };
        for ix in waiting {
            let i = &self.insts[ix];
            if let (Some(apply), false, false) = (i.apply, i.ready, i.failed) {
                if i.sel == Sel::Target && self.frozen {
                    continue;
                }
                out.push(Action::Apply {
                    instance: self.plan.instances[ix].id.clone(),
                    release: self.release(ix, i.sel),
                    token: self.token,
                    apply,
                });
            }
        }
    }
}
