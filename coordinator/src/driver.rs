//! `Driver`: runs one deployment's `rollout::Engine` with real IO.
//!
//! Each step: feed one event through `DeploymentRecord::advance` (the
//! same bookkeeping a resume replays), persist the step (its entry, the
//! header and its events: `step_log.rs`, fenced), now and then a snapshot,
//! then carry out the actions (Agent.Apply with the
//! fencing token, timers, synthetic checks). Results come back as events:
//! apply verdicts, timer expiry, check outcomes, and the fleet view's
//! reports, read as state ("the agent runs R and every instance is ready")
//! so a missed or repeated report cannot confuse it. Every instance the
//! engine watches (each switched host, until the deployment ends) is
//! compared with its `HealthBaseline` on every report; an exit, restart or
//! lost readiness goes to the engine as `InstanceUnhealthy`.
//!
//! Must never: act before the step that asked for it is persisted, or act
//! at all once a write was fenced off or an agent reported a newer token.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::Compare;
use leases::LossReason;
use proto::v1 as pb;
use rollout::Verdict as AnalysisVerdict;
use rollout::{
    Action, AnalysisRunId, AnalysisScope, ApplyId, Bindings, CheckRunId, Command, Event,
    FencingToken, Installed, InstanceId, Notice, ReleaseDigest, Step, TimerId,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::analysis::{AnalysisRun, PrometheusEndpoint, run_analysis};
use crate::checks::CheckCatalog;
use crate::deploy_lock::DeploymentLock;
use crate::effects::{AgentDialer, CheckContext, run_check};
use crate::fleet::{Changed, FleetView, names};
use crate::health::{HealthBaseline, health_change};
use crate::journal::{Journal, JournalError, Loaded};
use crate::record::{DeploymentKind, DeploymentRecord, EventKind, EventRecord, Happening};
use crate::staging::{StageOrder, StageTarget, Staging};
use crate::step_log::{StepEntry, driver_notes, snapshot_due};
use crate::telemetry::{ActiveDeployment, CoordinatorMetrics, RollbackReason};

/// An agent that cannot be reached this long is reported unreachable.
const UNREACHABLE_AFTER: Duration = Duration::from_secs(10);
/// Delay before re-sending an apply the agent could not take yet.
const APPLY_RETRY: Duration = Duration::from_millis(500);
/// An Apply may include fetching the bundle: allow for it.
const APPLY_TIMEOUT: Duration = Duration::from_secs(300);

/// What the leader needs to run drivers.
#[derive(Debug)]
pub struct DriverContext {
    pub journal: Journal,
    pub fleet: Arc<FleetView>,
    pub agents: AgentDialer,
    /// The leadership fence, checked by every write.
    pub leader_fence: Compare,
    /// `[[checks]]` of coordinator.toml: what a strategy's check runs.
    pub checks: CheckCatalog,
    /// `[prometheus] url`: where analysis gates query.
    pub prometheus: Option<PrometheusEndpoint>,
    pub metrics: CoordinatorMetrics,
    /// `[[notify]]` webhooks: handed each persisted event, never waited on.
    pub notifier: crate::notify::Notifier,
}

/// An operator's command with where to send the answer.
#[derive(Debug)]
pub struct OperatorCall {
    pub command: Command,
    /// Who gave it and why ("alice@ops-1: db migration pending"), recorded
    /// with the deployment; may be empty.
    pub said: String,
    pub reply: oneshot::Sender<Result<pb::Deployment, String>>,
}

/// Why a driver stopped.
#[derive(Debug)]
pub enum DriverExit {
    /// The deployment ended and its lock is released.
    Finished,
    /// Another coordinator holds it now (fenced write or newer token).
    Superseded,
    /// etcd failed; the leader may resume it from the journal.
    Interrupted(JournalError),
}

#[derive(Debug)]
struct Pending {
    apply: ApplyId,
    release: Installed,
    accepted: bool,
    /// The agent's report stream when the apply was sent: a later one
    /// means the agent came back and may not know of it (`apply_lost`).
    sent_epoch: Option<u64>,
    unreachable_since: Option<Instant>,
    reported_unreachable: bool,
}

#[derive(Debug)]
enum ApplyResult {
    Verdict(pb::CommandVerdict),
    Transport(String),
    /// The agent does not implement the command (an older agent): retrying
    /// cannot help.
    Unsupported(String),
}

enum Input {
    Operator(Option<OperatorCall>),
    /// Agents reported changes (`false`), or the periodic look at every
    /// instance (`true`).
    Fleet {
        everything: bool,
    },
    Timer(TimerId),
    Check(CheckRunId, Result<(), String>),
    Analysis(AnalysisRunId, AnalysisVerdict),
    Applied(InstanceId, ApplyId, ApplyResult),
    Retry(InstanceId, ApplyId),
}

/// One deployment being driven.
pub struct Driver {
    ctx: Arc<DriverContext>,
    record: DeploymentRecord,
    lock: Option<DeploymentLock>,
    pending: BTreeMap<InstanceId, Pending>,
    /// Instances the engine watches, as they were when it began to: a
    /// later exit, restart or lost readiness fails the deployment. Rebuilt
    /// from the engine after a restart, so a resumed driver watches too.
    baselines: BTreeMap<InstanceId, HealthBaseline>,
    /// Where this driver is in the fleet view's change log.
    fleet_cursor: u64,
    timers: JoinSet<TimerId>,
    checks: JoinSet<(CheckRunId, Result<(), String>)>,
    analyses: JoinSet<(AnalysisRunId, AnalysisVerdict)>,
    applies: JoinSet<(InstanceId, ApplyId, ApplyResult)>,
    retries: JoinSet<(InstanceId, ApplyId)>,
    /// Fetches of the target by agents ahead of their batch (best effort),
    /// begun once the first apply was accepted, so the first batch's own
    /// download does not share the coordinator with it.
    staging: Option<Staging>,
    /// This deployment in `lockstep_deployments_active` while `run` runs.
    active: Option<ActiveDeployment>,
    /// When each batch in flight (wave, batch, pass) sent its applies, for
    /// `lockstep_batch_duration_seconds` (a resumed driver does not know
    /// when its batch in flight began, and does not observe it).
    batches: Vec<((usize, usize, Step), Instant)>,
    /// A resumed deployment's last step's events: its further pages are
    /// written again if a crash left them out, before anything else.
    unsettled: Option<Vec<EventRecord>>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("deployment", &self.record.id)
            .finish_non_exhaustive()
    }
}

impl Driver {
    pub fn new(ctx: Arc<DriverContext>, record: DeploymentRecord, lock: DeploymentLock) -> Self {
        Self {
            ctx,
            record,
            lock: Some(lock),
            pending: BTreeMap::new(),
            baselines: BTreeMap::new(),
            fleet_cursor: 0,
            timers: JoinSet::new(),
            checks: JoinSet::new(),
            analyses: JoinSet::new(),
            applies: JoinSet::new(),
            retries: JoinSet::new(),
            staging: None,
            active: None,
            batches: Vec::new(),
            unsettled: None,
        }
    }

    /// A driver for a deployment read back from the journal.
    pub fn resumed(ctx: Arc<DriverContext>, loaded: Loaded, lock: DeploymentLock) -> Self {
        let mut driver = Self::new(ctx, loaded.record, lock);
        driver.unsettled = Some(loaded.last_events);
        driver
    }

    fn fences(&self) -> Vec<Compare> {
        let mut fences = vec![self.ctx.leader_fence.clone()];
        if let Some(fence) = self.lock.as_ref().and_then(DeploymentLock::fence) {
            fences.push(fence);
        }
        fences
    }

    /// Writes the record as it stands (the first write of a new deployment).
    pub async fn create(&mut self) -> Result<(), JournalError> {
        self.record.sync(crate::now_unix_ms());
        let fences = self.fences();
        self.ctx.journal.create(&fences, &mut self.record).await
    }

    /// Makes a resumed journal whole before the first step: the last
    /// step's missing pages, and a first snapshot for a format-1 record.
    async fn settle(&mut self) -> Result<(), JournalError> {
        let Some(events) = self.unsettled.take() else {
            return Ok(());
        };
        let pages = [self.ctx.leader_fence.clone()];
        self.ctx
            .journal
            .complete_pages(&pages, &self.record.id, &events)
            .await?;
        if self.record.log.generation == 0 {
            let fences = self.fences();
            self.ctx.journal.snapshot(&fences, &mut self.record).await?;
        }
        Ok(())
    }

    /// Why a journal write stopped this driver.
    fn stopped_by(&self, err: JournalError) -> DriverExit {
        match err {
            JournalError::Fenced { .. } => {
                tracing::warn!(
                    deployment = self.record.id,
                    "journal write fenced off: another coordinator drives this deployment"
                );
                DriverExit::Superseded
            }
            err => DriverExit::Interrupted(err),
        }
    }

    /// Runs until the deployment ends or this coordinator loses it.
    /// `first` is `Start` for a new deployment, `Recovered` for a resumed one.
    /// Whatever the exit, the deployment lock is released before it returns
    /// (the finishing write deletes it; otherwise a fenced delete here, and
    /// if that fails the guard's drop retries in the background), so a
    /// leader resuming the deployment never finds its own lock held.
    pub async fn run(
        mut self,
        first: Vec<Event>,
        calls: mpsc::Receiver<OperatorCall>,
    ) -> DriverExit {
        self.active = Some(self.ctx.metrics.active(self.record.state.label()));
        let exit = self.drive(first, calls).await;
        self.active = None;
        if let Some(lock) = self.lock.take() {
            let token = lock.token().0;
            match lock.release().await {
                Ok(()) => {
                    tracing::info!(deployment = self.record.id, token, exit = ?exit, "driver stopped; deployment lock released");
                }
                Err(err) => {
                    tracing::warn!(deployment = self.record.id, token, exit = ?exit, error = %err, "driver stopped; deployment lock released in the background");
                }
            }
        }
        exit
    }

    async fn drive(
        &mut self,
        first: Vec<Event>,
        mut calls: mpsc::Receiver<OperatorCall>,
    ) -> DriverExit {
        let mut fleet = self.ctx.fleet.subscribe();
        if let Err(err) = self.settle().await {
            return self.stopped_by(err);
        }
        for event in first {
            if let Some(exit) = self.step(event, Vec::new()).await {
                return exit;
            }
        }
        if self.pending.is_empty() {
            self.stage_ahead();
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut lock_loss = self.lock.as_ref().and_then(DeploymentLock::loss_signal);
        loop {
            let input = tokio::select! {
                reason = lock_lost(&mut lock_loss) => {
                    // Every later write would be fenced; waiting for one
                    // to find out stalled the deployment for a whole TTL
                    // (#18, seen in the fault lab). Stop now: the leader
                    // resumes it under a new lock.
                    tracing::warn!(deployment = self.record.id, reason = ?reason, "the deployment lock's lease is lost; stopping so the leader resumes under a new lock");
                    return DriverExit::Interrupted(JournalError::Fenced { id: self.record.id.clone() });
                }
                call = calls.recv() => Input::Operator(call),
                changed = fleet.changed() => {
                    if changed.is_err() {
                        return DriverExit::Interrupted(JournalError::Fenced { id: self.record.id.clone() });
                    }
                    Input::Fleet { everything: false }
                }
                // A look at everything each second: the safety net under
                // the change log (and the first look, at once).
                _ = tick.tick() => Input::Fleet { everything: true },
                Some(Ok(id)) = self.timers.join_next() => Input::Timer(id),
                Some(Ok((run, result))) = self.checks.join_next() => Input::Check(run, result),
                Some(Ok((run, verdict))) = self.analyses.join_next() => Input::Analysis(run, verdict),
                Some(Ok((i, a, r))) = self.applies.join_next() => Input::Applied(i, a, r),
                Some(Ok((i, a))) = self.retries.join_next() => Input::Retry(i, a),
            };
            let exit = match input {
                Input::Operator(None) => return DriverExit::Superseded,
                Input::Operator(Some(call)) => self.operator(call).await,
                Input::Fleet { everything } => {
                    let changed = if everything {
                        self.fleet_cursor = self.ctx.fleet.cursor();
                        Changed::Everything
                    } else {
                        let (changed, next) = self.ctx.fleet.changes_since(self.fleet_cursor);
                        self.fleet_cursor = next;
                        changed
                    };
                    self.observe(&changed).await
                }
                Input::Timer(id) => self.step(Event::TimerFired(id), Vec::new()).await,
                Input::Check(run, result) => self.check_done(run, result).await,
                Input::Analysis(run, verdict) => self.analysis_done(run, verdict).await,
                Input::Applied(instance, apply, result) => {
                    self.applied(instance, apply, result).await
                }
                Input::Retry(instance, apply) => {
                    if let Some(p) = self.pending.get(&instance).filter(|p| p.apply == apply) {
                        let release = p.release;
                        self.send_apply(instance, apply, release);
                    }
                    None
                }
            };
            if let Some(exit) = exit {
                return exit;
            }
        }
    }

    async fn operator(&mut self, call: OperatorCall) -> Option<DriverExit> {
        // Read by the events and the outcome this command produces; put
        // back by `advance` if the engine ignores the command.
        let entry = StepEntry::new(
            crate::now_unix_ms(),
            Some(Event::Operator(call.command)),
            Vec::new(),
            Some(call.said),
        );
        let (exit, ignored) = self.carry_out(entry).await;
        let answer = match ignored {
            Some(why) => Err(why),
            None => Ok(self.record.wire()),
        };
        let _ = call.reply.send(answer);
        exit
    }

    async fn check_done(
        &mut self,
        run: CheckRunId,
        result: Result<(), String>,
    ) -> Option<DriverExit> {
        let event = match result {
            Ok(()) => Event::CheckPassed { run },
            Err(detail) => Event::CheckFailed { run, detail },
        };
        let notes = driver_notes(&event);
        self.step(event, notes).await
    }

    async fn analysis_done(
        &mut self,
        run: AnalysisRunId,
        verdict: AnalysisVerdict,
    ) -> Option<DriverExit> {
        let event = Event::AnalysisDone { run, verdict };
        let notes = driver_notes(&event);
        self.step(event, notes).await
    }

    /// Starts one analysis run: its placeholders are this deployment's
    /// service, the scope's hosts, clusters and release.
    fn start_analysis(
        &mut self,
        run: AnalysisRunId,
        analysis: rollout::Analysis,
        scope: AnalysisScope,
    ) {
        let plan = self.record.engine.plan();
        let cluster_of = |id: &InstanceId| {
            plan.position(id)
                .and_then(|ix| plan.instances.get(ix))
                .and_then(|i| plan.clusters.get(i.cluster))
                .map(|c| c.name.to_string())
        };
        let bindings = Bindings {
            service: self.record.service.clone(),
            clusters: scope.clusters.iter().map(ToString::to_string).collect(),
            hosts: scope.instances.iter().map(ToString::to_string).collect(),
            release: scope.release.to_string(),
        };
        let baseline = scope.baseline.as_ref().map(|(hosts, release)| {
            let mut clusters: Vec<String> = hosts.iter().filter_map(cluster_of).collect();
            clusters.sort();
            clusters.dedup();
            Bindings {
                service: self.record.service.clone(),
                clusters,
                hosts: hosts.iter().map(ToString::to_string).collect(),
                release: release.to_string(),
            }
        });
        let job = AnalysisRun {
            deployment: self.record.id.clone(),
            analysis,
            bindings,
            baseline,
        };
        let endpoint = self.ctx.prometheus.clone();
        self.analyses
            .spawn(async move { (run, run_analysis(endpoint, job).await) });
    }

    async fn applied(
        &mut self,
        instance: InstanceId,
        apply: ApplyId,
        result: ApplyResult,
    ) -> Option<DriverExit> {
        let p = self
            .pending
            .get_mut(&instance)
            .filter(|p| p.apply == apply)?;
        match result {
            ApplyResult::Verdict(v) if v.outcome() == pb::CommandOutcome::Accepted => {
                p.accepted = true;
                p.unreachable_since = None;
                self.stage_ahead();
                // Its report may have come before this answer.
                let only = Changed::Agents([instance.as_str().to_owned()].into());
                self.observe(&only).await
            }
            ApplyResult::Verdict(v) => match v.refusal() {
                pb::RefusalReason::StaleFencingToken => {
                    let token = self.record.engine.token();
                    tracing::warn!(deployment = self.record.id, instance = %instance, token = token.0, high_water = v.fencing_high_water, "an agent has seen a newer fencing token; stepping down");
                    self.step(Event::AgentRefused { instance, token }, Vec::new())
                        .await
                }
                // FencingUnverified: the agent could not read the lock in
                // etcd just now; the token may well be ours.
                pb::RefusalReason::Busy
                | pb::RefusalReason::BudgetExhausted
                | pb::RefusalReason::FencingUnverified => {
                    self.retry_later(instance, apply);
                    None
                }
                _ => {
                    let release = p.release;
                    self.pending.remove(&instance);
                    let detail = format!("agent refused the apply: {}", v.message);
                    self.fail(instance, apply, release, detail).await
                }
            },
            ApplyResult::Unsupported(detail) => {
                let release = p.release;
                self.pending.remove(&instance);
                self.fail(instance, apply, release, detail).await
            }
            ApplyResult::Transport(error) => {
                let since = *p.unreachable_since.get_or_insert_with(Instant::now);
                let report = since.elapsed() >= UNREACHABLE_AFTER && !p.reported_unreachable;
                if report {
                    p.reported_unreachable = true;
                }
                tracing::debug!(deployment = self.record.id, instance = %instance, error, "apply not delivered; retrying");
                self.retry_later(instance.clone(), apply);
                if report {
                    return self
                        .step(Event::InstanceUnreachable { instance }, Vec::new())
                        .await;
                }
                None
            }
        }
    }

    async fn fail(
        &mut self,
        instance: InstanceId,
        apply: ApplyId,
        release: Installed,
        detail: String,
    ) -> Option<DriverExit> {
        // The engine's InstanceFailed notice becomes the event; `advance`
        // marks the instance failed.
        self.step(
            Event::InstanceFailed {
                instance,
                apply,
                release,
                detail,
            },
            Vec::new(),
        )
        .await
    }

    fn retry_later(&mut self, instance: InstanceId, apply: ApplyId) {
        self.retries.spawn(async move {
            tokio::time::sleep(APPLY_RETRY).await;
            (instance, apply)
        });
    }

    /// Reads the fleet view for the instances among `changed` that have an
    /// apply in flight or are watched, and feeds what changed to the
    /// engine.
    async fn observe(&mut self, changed: &Changed) -> Option<DriverExit> {
        let service = self.record.service.clone();
        let ids: Vec<InstanceId> = match changed {
            Changed::Everything => self.pending.keys().cloned().collect(),
            Changed::Agents(agents) => agents
                .iter()
                .filter_map(|a| InstanceId::new(a.clone()).ok())
                .filter(|i| self.pending.contains_key(i))
                .collect(),
        };
        // Readinesses seen in one look are one step each MAX_TOGETHER: a
        // commit per instance, one after another, was most of a large
        // batch's time beyond its plan (nodesim_rollout's commit profile).
        let mut ready = Vec::new();
        for instance in ids {
            let Some(p) = self.pending.get(&instance) else {
                continue;
            };
            if self.restarts(&p.release) && !p.accepted {
                // Already on the release: only the agent's answer says
                // the restart happened.
                continue;
            }
            let status = self.ctx.fleet.service(instance.as_str(), &service);
            let verdict = judge(
                status.as_ref(),
                &p.release,
                p.accepted,
                &self.record.id,
                self.record.engine.token(),
            );
            let (apply, release) = (p.apply, p.release);
            let lost = p.accepted
                && !self.restarts(&release)
                && apply_lost(
                    p.sent_epoch,
                    self.ctx.fleet.stream_epoch(instance.as_str()),
                    status.as_ref(),
                    &release,
                );
            let exit = match verdict {
                Judgement::Waiting if lost => self.send_again(instance, apply, release).await,
                Judgement::Waiting => None,
                Judgement::Ready => {
                    self.pending.remove(&instance);
                    // Watched from the status that confirmed it ready: a
                    // later look may already see it crash.
                    if let Some(status) = &status {
                        let baseline = HealthBaseline::new(apply, status, &release);
                        self.baselines.insert(instance.clone(), baseline);
                    }
                    ready.push(Event::InstanceReady {
                        instance,
                        apply,
                        release,
                    });
                    None
                }
                Judgement::Failed(detail) => {
                    self.pending.remove(&instance);
                    self.fail(instance, apply, release, detail).await
                }
                Judgement::CrashLooping => {
                    self.pending.remove(&instance);
                    self.crash_looping(instance, apply, release).await
                }
            };
            if exit.is_some() {
                // The driver ends: a resuming one judges these again.
                return exit;
            }
        }
        for step in StepEntry::together(crate::now_unix_ms(), ready) {
            if let exit @ Some(_) = self.carry_out(step).await.0 {
                return exit;
            }
        }
        self.watch_health(&service, changed).await
    }

    /// Compares the watched instances among `changed` with their
    /// baselines (taken when each was confirmed ready, or the first time
    /// it is seen watched) and reports the first change.
    async fn watch_health(&mut self, service: &str, changed: &Changed) -> Option<DriverExit> {
        let watched = match changed {
            Changed::Everything => {
                let watched = self.record.engine.watched();
                // A lookup, not a scan per baseline: at 10,000 watched
                // instances the scan was most of the coordinator's CPU.
                let applies: HashMap<&InstanceId, ApplyId> =
                    watched.iter().map(|w| (&w.instance, w.apply)).collect();
                self.baselines
                    .retain(|instance, b| applies.get(instance) == Some(&b.apply));
                watched
            }
            Changed::Agents(agents) => agents
                .iter()
                .filter_map(|a| InstanceId::new(a.clone()).ok())
                .filter_map(|i| self.record.engine.watching(&i))
                .collect(),
        };
        for w in watched {
            // No report yet (a resumed driver, an agent reconnecting):
            // nothing to judge, and the baseline waits for one.
            let Some(status) = self.ctx.fleet.service(w.instance.as_str(), service) else {
                continue;
            };
            let baseline = self
                .baselines
                .entry(w.instance.clone())
                .and_modify(|b| {
                    if b.apply != w.apply {
                        *b = HealthBaseline::new(w.apply, &status, &w.release);
                    }
                })
                .or_insert_with(|| HealthBaseline::new(w.apply, &status, &w.release));
            let Some(detail) = health_change(baseline, Some(&status), &w.release) else {
                continue;
            };
            tracing::warn!(deployment = self.record.id, instance = %w.instance, detail, "a switched instance is unhealthy");
            self.baselines.remove(&w.instance);
            // The engine's InstanceFailed notice is the event.
            // One at a time: the engine's answer changes what is watched.
            return self
                .step(
                    Event::InstanceUnhealthy {
                        instance: w.instance,
                        apply: w.apply,
                        release: w.release,
                        detail,
                    },
                    Vec::new(),
                )
                .await;
        }
        None
    }

    async fn crash_looping(
        &mut self,
        instance: InstanceId,
        apply: ApplyId,
        release: Installed,
    ) -> Option<DriverExit> {
        // The engine's InstanceFailed notice ("crash-looping") is the event.
        self.step(
            Event::InstanceCrashLooping {
                instance,
                apply,
                release,
            },
            Vec::new(),
        )
        .await
    }

    /// Feeds one event and carries out what the engine answers.
    async fn step(&mut self, event: Event, notes: Vec<Happening>) -> Option<DriverExit> {
        let entry = StepEntry::new(crate::now_unix_ms(), Some(event), notes, None);
        self.carry_out(entry).await.0
    }

    /// Does the step (`advance`), persists it, counts it in the metrics,
    /// then acts. Answers why the engine ignored an operator's command.
    async fn carry_out(&mut self, entry: StepEntry) -> (Option<DriverExit>, Option<String>) {
        let unhealthy = matches!(entry.event, Some(Event::InstanceUnhealthy { .. }));
        let advanced = self.record.advance(&entry);
        let ignored = advanced.ignored.clone();
        if advanced.stepped_down {
            return (Some(DriverExit::Superseded), ignored);
        }
        (self.persisted(entry, advanced, unhealthy).await, ignored)
    }

    async fn persisted(
        &mut self,
        entry: StepEntry,
        advanced: crate::step_log::Advanced,
        unhealthy: bool,
    ) -> Option<DriverExit> {
        let crate::step_log::Advanced {
            actions,
            events,
            finish,
            ..
        } = advanced;
        let release = if finish {
            self.lock.as_ref().and_then(DeploymentLock::guard)
        } else {
            None
        };
        let fences = self.fences();
        let pages = [self.ctx.leader_fence.clone()];
        if let Err(err) = self
            .ctx
            .journal
            .append(
                &fences,
                &pages,
                &mut self.record,
                (&entry, &events),
                finish,
                release,
            )
            .await
        {
            return Some(self.stopped_by(err));
        }
        // Only persisted events are sent: what a webhook hears, `lockstep
        // watch` shows too, under the same sequence number.
        let halted = matches!(self.record.engine.status(), rollout::Status::Halted(_));
        self.ctx
            .notifier
            .notify(&self.record.id, &self.record.service, &events, halted);
        for event in &events {
            tracing::info!(deployment = self.record.id, seq = event.seq, kind = ?event.kind, instance = event.instance, message = event.message, "deployment event");
        }
        self.count(&actions, unhealthy);
        for action in actions {
            match action {
                Action::Apply {
                    instance,
                    release,
                    apply,
                    ..
                } => {
                    self.baselines.remove(&instance);
                    if let Some(staging) = &self.staging {
                        staging.applied(&instance);
                    }
                    self.pending.insert(
                        instance.clone(),
                        Pending {
                            apply,
                            release,
                            accepted: false,
                            sent_epoch: None,
                            unreachable_since: None,
                            reported_unreachable: false,
                        },
                    );
                    self.send_apply(instance, apply, release);
                }
                Action::StartTimer { id, after } => {
                    self.timers.spawn(async move {
                        tokio::time::sleep(Duration::from_millis(after.0)).await;
                        id
                    });
                }
                Action::RunCheck {
                    run,
                    cluster,
                    check,
                } => {
                    let context = CheckContext {
                        cluster: cluster.to_string(),
                        service: self.record.service.clone(),
                        release: self.record.target_digest.clone(),
                        deployment: self.record.id.clone(),
                    };
                    // Resolved again from this coordinator's own config: a
                    // record (from etcd) names a check, never a command.
                    let command = self.ctx.checks.command(&check);
                    self.checks.spawn(async move {
                        let result = match command {
                            Ok(command) => run_check(&check.name, &command, &context).await,
                            Err(why) => Err(format!("check {}: {why}", check.name)),
                        };
                        (run, result)
                    });
                }
                Action::RunAnalysis {
                    run,
                    analysis,
                    scope,
                } => self.start_analysis(run, analysis, scope),
                Action::Emit(_) | Action::StepDown { .. } | Action::Finish(_) => {}
            }
        }
        if finish {
            // The finishing write deleted the lock's key.
            if let Some(lock) = self.lock.take() {
                lock.deleted_by_holder().await;
            }
            tracing::info!(
                deployment = self.record.id,
                outcome = self.record.outcome,
                "deployment finished"
            );
            return Some(DriverExit::Finished);
        }
        // After acting: the step is persisted already, and a snapshot of
        // a large record (dozens of chunks) should not hold its applies.
        if snapshot_due(&self.record.log) {
            if let Err(err) = self.ctx.journal.snapshot(&fences, &mut self.record).await {
                return Some(self.stopped_by(err));
            }
        }
        None
    }

    /// Counts a persisted step in the metrics: once per deployment across
    /// leaders, since a step is persisted once (a resumed driver replays
    /// nothing already written).
    fn count(&mut self, actions: &[Action], unhealthy: bool) {
        let metrics = &self.ctx.metrics;
        for action in actions {
            match action {
                Action::Emit(Notice::Started { .. }) => {
                    metrics.deployment_started(self.record.kind.label());
                }
                Action::Emit(Notice::BatchStarted {
                    wave, batch, step, ..
                }) => {
                    let key = (*wave, *batch, *step);
                    self.batches.retain(|(k, _)| *k != key);
                    self.batches.push((key, Instant::now()));
                }
                Action::Emit(Notice::BatchPassed { wave, batch, step }) => {
                    let key = (*wave, *batch, *step);
                    if let Some(i) = self.batches.iter().position(|(k, _)| *k == key) {
                        metrics.batch_passed(self.batches.swap_remove(i).1.elapsed());
                    }
                }
                Action::Emit(Notice::RollbackStarted { reason, .. }) => {
                    metrics.rolled_back(RollbackReason::of(reason, unhealthy));
                }
                Action::Finish(_) => {
                    let took = self.record.finished_unix_ms - self.record.created_unix_ms;
                    metrics.deployment_finished(
                        self.record.state.label(),
                        Duration::from_millis(u64::try_from(took).unwrap_or(0)),
                    );
                    // Not active from the moment it counts as finished.
                    self.active = None;
                }
                _ => {}
            }
        }
        if let Some(active) = self
            .active
            .as_mut()
            .filter(|_| !self.record.state.is_terminal())
        {
            active.set(self.record.state.label());
        }
    }

    /// Asks every planned agent that lacks the target, in rollout order, to
    /// fetch it now, so that its Apply is a switch and not a download
    /// (`staging.rs`, paced by the applies). Once per driver.
    fn stage_ahead(&mut self) {
        if self.staging.is_some() {
            return;
        }
        let plan = self.record.engine.plan();
        let target = plan.target;
        let service = self.record.service.clone();
        let order = plan
            .waves
            .iter()
            .flat_map(|w| w.batches.iter().flatten())
            .filter_map(|&i| plan.instances.get(i).map(|p| p.id.clone()));
        let mut positions = HashMap::new();
        let mut targets = Vec::new();
        for (position, instance) in order.enumerate() {
            positions.insert(instance.clone(), position);
            let status = self.ctx.fleet.service(instance.as_str(), &service);
            let current = status.as_ref().and_then(|s| s.current.as_ref());
            if self.pending.contains_key(&instance) || names(current, &target) {
                continue;
            }
            if let Some(address) = self.ctx.fleet.address(instance.as_str()) {
                targets.push(StageTarget {
                    position,
                    instance,
                    address,
                });
            }
        }
        let order = StageOrder {
            deployment: self.record.id.clone(),
            service,
            release_digest: target.to_string(),
            fencing_token: self.record.engine.token().0,
        };
        self.staging = Some(Staging::start(
            self.ctx.clone(),
            order,
            positions,
            targets,
            self.pending.keys(),
        ));
    }

    /// Whether an apply of `release` is carried out as a restart: a
    /// restart deployment's forward steps (its undo is an Apply).
    fn restarts(&self, release: &Installed) -> bool {
        self.record.kind == DeploymentKind::Restart
            && release.is(&self.record.engine.plan().target)
            && !matches!(
                self.record.engine.status(),
                rollout::Status::RollingBack { .. }
            )
    }

    /// The agent came back without the apply it had accepted: sends it
    /// again (same token) and records that in the deployment's events.
    async fn send_again(
        &mut self,
        instance: InstanceId,
        apply: ApplyId,
        release: Installed,
    ) -> Option<DriverExit> {
        if let Some(p) = self.pending.get_mut(&instance) {
            p.accepted = false;
        }
        tracing::info!(deployment = self.record.id, instance = %instance, release = %release, "the agent came back without the apply in progress; sending it again");
        let note = Happening::new(
            EventKind::InstanceApplying,
            instance.as_str(),
            format!(
                "the agent came back without the switch to {} in progress: apply sent again",
                release.short()
            ),
        );
        let entry = StepEntry::new(crate::now_unix_ms(), None, vec![note], None);
        let (exit, _) = self.carry_out(entry).await;
        if exit.is_none() {
            self.send_apply(instance, apply, release);
        }
        exit
    }

    fn send_apply(&mut self, instance: InstanceId, apply: ApplyId, release: Installed) {
        if let Some(p) = self.pending.get_mut(&instance) {
            p.sent_epoch = self.ctx.fleet.stream_epoch(instance.as_str());
        }
        if self.restarts(&release) {
            self.send_restart(instance, apply);
            return;
        }
        let Installed::Release(release) = release else {
            self.send_uninstall(instance, apply);
            return;
        };
        let request = pb::ApplyRequest {
            service: self.record.service.clone(),
            release_digest: release.to_string(),
            fencing_token: self.record.engine.token().0,
            deployment_id: self.record.id.clone(),
            command_seq: apply.0,
        };
        let client = self.agent_client(&instance);
        #[cfg(feature = "fault-injection")]
        let (release_text, token) = (request.release_digest.clone(), request.fencing_token);
        let deliver: Pin<Box<dyn Future<Output = ApplyResult> + Send>> = Box::pin(async move {
            match client {
                Err(e) => ApplyResult::Transport(e),
                Ok(mut client) => {
                    let mut request = tonic::Request::new(request);
                    request.set_timeout(APPLY_TIMEOUT);
                    command_result(client.apply(request).await.map(|r| r.into_inner().verdict))
                }
            }
        });
        #[cfg(feature = "fault-injection")]
        let deliver = crate::fault_injection::maybe_hold(
            instance.as_str(),
            &release_text,
            token,
            deliver,
            ApplyResult::Transport("the held Apply was dropped".into()),
        );
        self.applies
            .spawn(async move { (instance, apply, deliver.await) });
    }
}

impl Driver {
    /// Agent.Restart of every instance of the service on `instance`'s host,
    /// slot by slot through its budget; it answers when done, so its
    /// verdict is the step's (accepted: then judged from state as usual).
    fn send_restart(&mut self, instance: InstanceId, apply: ApplyId) {
        let request = pb::RestartRequest {
            service: self.record.service.clone(),
            slot: None,
            fencing_token: self.record.engine.token().0,
            deployment_id: self.record.id.clone(),
            reason: self.record.reason.clone(),
            command_seq: apply.0,
        };
        let client = self.agent_client(&instance);
        self.applies.spawn(async move {
            let result = match client {
                Err(e) => ApplyResult::Transport(e),
                Ok(mut client) => {
                    let mut request = tonic::Request::new(request);
                    request.set_timeout(APPLY_TIMEOUT);
                    command_result(
                        client
                            .restart(request)
                            .await
                            .map(|r| r.into_inner().verdict),
                    )
                }
            };
            (instance, apply, result)
        });
    }

    /// Agent.Uninstall of the service on `instance`'s host: a failed first
    /// install rolled back (#15). It answers when done, so its verdict is
    /// the step's; "not installed" is then confirmed from the agent's
    /// durable state (`judge`). An agent older than the RPC answers
    /// UNIMPLEMENTED: the step fails saying so.
    fn send_uninstall(&mut self, instance: InstanceId, apply: ApplyId) {
        let request = pb::UninstallRequest {
            service: self.record.service.clone(),
            fencing_token: self.record.engine.token().0,
            deployment_id: self.record.id.clone(),
            reason: "rolling back a first install".to_owned(),
            command_seq: apply.0,
        };
        let client = self.agent_client(&instance);
        let agent = instance.clone();
        self.applies.spawn(async move {
            let result = match client {
                Err(e) => ApplyResult::Transport(e),
                Ok(mut client) => {
                    let mut request = tonic::Request::new(request);
                    request.set_timeout(APPLY_TIMEOUT);
                    match client.uninstall(request).await {
                        Err(status) if status.code() == tonic::Code::Unimplemented => {
                            ApplyResult::Unsupported(too_old_to_uninstall(&agent, &status))
                        }
                        answer => command_result(answer.map(|r| r.into_inner().verdict)),
                    }
                }
            };
            (instance, apply, result)
        });
    }

    /// A client of the agent behind `instance`, at the address it reported.
    fn agent_client(
        &self,
        instance: &InstanceId,
    ) -> Result<pb::agent_service_client::AgentServiceClient<tonic::transport::Channel>, String>
    {
        self.ctx
            .fleet
            .address(instance.as_str())
            .ok_or_else(|| format!("agent {instance} has not reported its address"))
            .and_then(|a| self.ctx.agents.client(&a))
    }
}

/// The step's failure when an agent does not know the Uninstall RPC.
fn too_old_to_uninstall(agent: &InstanceId, status: &tonic::Status) -> String {
    format!(
        "agent {agent} cannot uninstall (it answered UNIMPLEMENTED: {}): it is older than this coordinator; upgrade it, then roll back again, or stop the service on it by hand",
        status.message()
    )
}

/// An agent's answer to a command (Apply, Restart, Uninstall) as the
/// step's result.
fn command_result(answer: Result<Option<pb::CommandVerdict>, tonic::Status>) -> ApplyResult {
    match answer {
        Ok(Some(verdict)) => ApplyResult::Verdict(verdict),
        Ok(None) => ApplyResult::Transport("agent sent no verdict".into()),
        Err(status) => ApplyResult::Transport(status.message().to_owned()),
    }
}

/// What an instance's reported status says about an apply of `release`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    Waiting,
    Ready,
    Failed(String),
    CrashLooping,
}

/// Decides from state alone, so a late, repeated or missed report cannot
/// mislead: ready means the agent's current release is `release`, every
/// instance of it is ready and no instance of another release is left (an
/// old one draining still serves); failed means the agent recorded this very apply
/// (deployment, token, release) as a failed switch.
pub fn judge(
    status: Option<&pb::ServiceStatus>,
    release: &Installed,
    accepted: bool,
    deployment: &str,
    token: FencingToken,
) -> Judgement {
    let Installed::Release(release) = release else {
        return judge_nothing(status, accepted, deployment, token);
    };
    let Some(status) = status else {
        return Judgement::Waiting;
    };
    if status.switch_state() == pb::SwitchState::Switching {
        return Judgement::Waiting;
    }
    let current = status.current.as_ref();
    let mine: Vec<&pb::InstanceStatus> = status
        .instances
        .iter()
        .filter(|i| names(i.release.as_ref(), release))
        .collect();
    // Every instance the host lists must be of the release: an old one
    // still draining serves on the shared socket, so the host is not on
    // the release until it is gone.
    let only_mine = mine.len() == status.instances.len();
    if names(current, release) && !mine.is_empty() && only_mine && mine.iter().all(|i| i.ready) {
        return Judgement::Ready;
    }
    if let Some(last) = &status.last_switch {
        if accepted
            && !last.succeeded
            && last.deployment_id == deployment
            && last.fencing_token == token.0
            && ReleaseDigest::parse(&last.to_digest).is_ok_and(|d| d == *release)
        {
            return Judgement::Failed(last.detail.clone());
        }
    }
    if names(current, release) && crash_looping(Some(status), release) {
        return Judgement::CrashLooping;
    }
    Judgement::Waiting
}

/// `judge` for "not installed" (a first install rolled back): confirmed
/// once the agent has done this Uninstall (`accepted`: it answers when
/// its record is durable) and reports no current release and no instance
/// of the service (or does not report the service at all); failed when
/// the agent recorded this very uninstall (deployment, token) as failed.
/// Before the Uninstall is done, "nothing installed" proves nothing: the
/// forward Apply may still be fetching its release (#15: a host left on
/// the release of a deployment that ended `rolled_back`); once it is
/// done, the agent refuses that Apply.
fn judge_nothing(
    status: Option<&pb::ServiceStatus>,
    accepted: bool,
    deployment: &str,
    token: FencingToken,
) -> Judgement {
    if !accepted {
        return Judgement::Waiting;
    }
    let Some(status) = status else {
        return Judgement::Ready;
    };
    if status.switch_state() == pb::SwitchState::Switching {
        return Judgement::Waiting;
    }
    if status.current.is_none() && status.instances.is_empty() {
        return Judgement::Ready;
    }
    match &status.last_switch {
        Some(last)
            if !last.succeeded
                && last.to_digest.is_empty()
                && last.deployment_id == deployment
                && last.fencing_token == token.0 =>
        {
            Judgement::Failed(last.detail.clone())
        }
        _ => Judgement::Waiting,
    }
}

/// Resolves once the lock's lease is lost; never without a lease to lose.
async fn lock_lost(signal: &mut Option<watch::Receiver<Option<LossReason>>>) -> LossReason {
    if let Some(rx) = signal {
        if let Ok(seen) = rx.wait_for(Option::is_some).await {
            if let Some(reason) = *seen {
                return reason;
            }
        }
        // The session is gone without a reason: nothing more to see.
        *signal = None;
    }
    std::future::pending().await
}

/// Whether an accepted apply was lost with the agent that took it: the
/// agent opened a new report stream since the apply was sent (it restarted
/// or reconnected), and its state shows the switch neither in progress nor
/// done. A failed attempt is the agent's record (`judge`), never lost.
pub fn apply_lost(
    sent_epoch: Option<u64>,
    epoch_now: Option<u64>,
    status: Option<&pb::ServiceStatus>,
    release: &Installed,
) -> bool {
    let (Some(sent), Some(now), Some(status), Installed::Release(release)) =
        (sent_epoch, epoch_now, status, release)
    else {
        return false;
    };
    now != sent
        && status.switch_state() == pb::SwitchState::Idle
        && !names(status.current.as_ref(), release)
}

fn crash_looping(status: Option<&pb::ServiceStatus>, release: &ReleaseDigest) -> bool {
    status.is_some_and(|s| {
        s.instances.iter().any(|i| {
            names(i.release.as_ref(), release)
                && matches!(
                    i.state(),
                    pb::InstanceState::CrashLooping | pb::InstanceState::Failed
                )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const R1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const R2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn status(current: &str, ready: bool, last: Option<pb::SwitchRecord>) -> pb::ServiceStatus {
        pb::ServiceStatus {
            service: "web".into(),
            current: Some(pb::ReleaseRef {
                service: "web".into(),
                digest: current.into(),
                version: "1".into(),
            }),
            instances: vec![pb::InstanceStatus {
                release: Some(pb::ReleaseRef {
                    service: "web".into(),
                    digest: current.into(),
                    version: "1".into(),
                }),
                ready,
                state: pb::InstanceState::Ready.into(),
                ..Default::default()
            }],
            switch_state: pb::SwitchState::Idle.into(),
            last_switch: last,
            ..Default::default()
        }
    }

    fn digest(d: &str) -> Installed {
        Installed::Release(ReleaseDigest::parse(d).unwrap())
    }

    #[test]
    fn ready_needs_the_release_current_and_every_instance_ready() {
        let r2 = digest(R2);
        let t = FencingToken(7);
        assert_eq!(
            judge(Some(&status(R2, true, None)), &r2, true, "d", t),
            Judgement::Ready
        );
        assert_eq!(
            judge(Some(&status(R2, false, None)), &r2, true, "d", t),
            Judgement::Waiting
        );
        assert_eq!(
            judge(Some(&status(R1, true, None)), &r2, true, "d", t),
            Judgement::Waiting
        );
        // R2 ready, but an R1 instance still drains: not yet.
        let mut draining = status(R2, true, None);
        let mut old = draining.instances[0].clone();
        old.release = status(R1, true, None).current;
        draining.instances.push(old);
        assert_eq!(
            judge(Some(&draining), &r2, true, "d", t),
            Judgement::Waiting
        );
    }

    #[test]
    fn only_this_applys_failed_switch_counts_as_failure() {
        let r2 = digest(R2);
        let failed = |deployment: &str, token: u64| pb::SwitchRecord {
            deployment_id: deployment.into(),
            fencing_token: token,
            to_digest: R2.into(),
            succeeded: false,
            detail: "config refused".into(),
            at_unix_ms: 1,
        };
        let t = FencingToken(7);
        assert_eq!(
            judge(
                Some(&status(R1, true, Some(failed("d", 7)))),
                &r2,
                true,
                "d",
                t
            ),
            Judgement::Failed("config refused".into())
        );
        // An older deployment's failure, or an older token's, is history.
        for (d, tok) in [("other", 7), ("d", 6)] {
            assert_eq!(
                judge(
                    Some(&status(R1, true, Some(failed(d, tok)))),
                    &r2,
                    true,
                    "d",
                    t
                ),
                Judgement::Waiting
            );
        }
        // Before the agent accepted, nothing it reports is about this apply.
        assert_eq!(
            judge(
                Some(&status(R1, true, Some(failed("d", 7)))),
                &r2,
                false,
                "d",
                t
            ),
            Judgement::Waiting
        );
    }

    /// Issue #15 deliver 1: a first install rolled back is confirmed
    /// from the agent's durable state (no current release, no instance);
    /// a host still on the release is waited for (it is being
    /// uninstalled), never failed "cannot be uninstalled".
    #[test]
    fn not_installed_is_confirmed_by_the_absence_of_a_current_release() {
        let none = Installed::Nothing;
        let t = FencingToken(1);
        assert_eq!(judge(None, &none, true, "d", t), Judgement::Ready);
        // Not done yet: the forward apply may still be on its way.
        assert_eq!(judge(None, &none, false, "d", t), Judgement::Waiting);
        assert_eq!(
            judge(Some(&status(R1, true, None)), &none, true, "d", t),
            Judgement::Waiting
        );
        let mut uninstalled = status(R1, true, None);
        uninstalled.current = None;
        // The old instances still stopping: not yet.
        assert_eq!(
            judge(Some(&uninstalled), &none, true, "d", t),
            Judgement::Waiting
        );
        uninstalled.instances.clear();
        assert_eq!(
            judge(Some(&uninstalled), &none, true, "d", t),
            Judgement::Ready
        );
        assert_eq!(
            judge(Some(&uninstalled), &none, false, "d", t),
            Judgement::Waiting
        );
        let mut switching = uninstalled.clone();
        switching.switch_state = pb::SwitchState::Switching.into();
        assert_eq!(
            judge(Some(&switching), &none, true, "d", t),
            Judgement::Waiting
        );
    }

    #[test]
    fn an_agent_without_uninstall_is_named_with_what_to_do() {
        let agent = InstanceId::new("west-4").unwrap();
        let status = tonic::Status::unimplemented("unknown method Uninstall");
        let said = too_old_to_uninstall(&agent, &status);
        for part in [
            "west-4",
            "UNIMPLEMENTED",
            "unknown method Uninstall",
            "upgrade it",
        ] {
            assert!(said.contains(part), "{part}: {said}");
        }
    }

    #[test]
    fn a_failed_uninstall_fails_only_when_it_is_this_deployments() {
        let none = Installed::Nothing;
        let t = FencingToken(4);
        let failed = |deployment: &str, token: u64, to: &str| pb::SwitchRecord {
            deployment_id: deployment.into(),
            fencing_token: token,
            to_digest: to.into(),
            succeeded: false,
            detail: "no budget slot".into(),
            at_unix_ms: 1,
        };
        let mine = status(R1, true, Some(failed("d", 4, "")));
        assert_eq!(
            judge(Some(&mine), &none, true, "d", t),
            Judgement::Failed("no budget slot".into())
        );
        // Not yet accepted, another deployment's, an older token, or a
        // failed switch to a release: not this uninstall's failure.
        assert_eq!(judge(Some(&mine), &none, false, "d", t), Judgement::Waiting);
        for other in [failed("e", 4, ""), failed("d", 3, ""), failed("d", 4, R1)] {
            assert_eq!(
                judge(Some(&status(R1, true, Some(other))), &none, true, "d", t),
                Judgement::Waiting
            );
        }
    }

    #[test]
    fn an_apply_is_lost_only_when_a_new_stream_shows_it_neither_running_nor_done() {
        let r2 = digest(R2);
        let back_on_r1 = status(R1, true, None);
        assert!(apply_lost(Some(3), Some(4), Some(&back_on_r1), &r2));
        // The same stream: the agent still has it, or will report it.
        assert!(!apply_lost(Some(4), Some(4), Some(&back_on_r1), &r2));
        // A new stream, but the switch runs, or is done.
        let mut switching = back_on_r1.clone();
        switching.switch_state = pb::SwitchState::Switching.into();
        assert!(!apply_lost(Some(3), Some(4), Some(&switching), &r2));
        assert!(!apply_lost(
            Some(3),
            Some(4),
            Some(&status(R2, false, None)),
            &r2
        ));
        // Nothing to judge: no report, or never sent on a known stream.
        assert!(!apply_lost(Some(3), Some(4), None, &r2));
        assert!(!apply_lost(None, Some(4), Some(&back_on_r1), &r2));
        // An Uninstall is answered once it is durable, so never lost.
        assert!(!apply_lost(
            Some(3),
            Some(4),
            Some(&back_on_r1),
            &Installed::Nothing
        ));
    }
}
