//! `Coordinator`: one coordinator process's shared state, and its
//! leadership loop.
//!
//! ```text
//!  grant session ─► campaign ─► lead: resume active deployments (new lock, higher token)
//!        ▲                        │   start drivers for new ones (Deploy)
//!        └── close session ◄──────┘   until leadership or the session is lost
//! ```
//!
//! Each deployment lock is on a lease of its own (`deploy_lock`), granted
//! while leading: a driver's exit releases it and revokes that lease, so
//! breaking one deployment's lock never costs the leadership. Leaving
//! leadership closes the session and drops every driver, whose locks'
//! leases are revoked with them: the next leader takes them at once instead
//! of after a TTL, and a deposed coordinator commands nothing.
//!
//! It also drives `/readyz` (`readiness`): ready while this coordinator
//! has an etcd session and knows the leader (it leads, or a campaign that
//! waits reads another leader in the election key), and the
//! `lockstep_coordinator_leader` gauge.
//!
//! Must never: run a driver while not leading, or keep a session whose
//! leadership is gone.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use exposition::Readiness;
use leases::{Election, ElectionError, Etcd, LockError, Session};
use proto::v1 as pb;
use rollout::{
    DeploymentId, Engine, Event, FencingToken, Installed, PlanInput, ReleaseDigest, Strategy,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::config::CoordinatorConfig;
use crate::deploy_lock::{DeploymentLock, DeploymentLockError};
use crate::depot::ReleaseDepot;
use crate::driver::{Driver, DriverContext, DriverExit, OperatorCall};
use crate::effects::AgentDialer;
use crate::fleet::FleetView;
use crate::journal::{Journal, JournalError};
use crate::record::{DeploymentHeader, DeploymentKind, DeploymentRecord, DeploymentState};
use crate::release_choice::{Finished, NamedRelease, rollback_target};
use crate::telemetry::CoordinatorMetrics;

type DriverJob = Pin<Box<dyn Future<Output = (String, DriverExit)> + Send>>;

/// State while this coordinator leads.
#[derive(Debug)]
pub struct Leading {
    session: Arc<Session>,
    ctx: Arc<DriverContext>,
    calls: Mutex<HashMap<String, mpsc::Sender<OperatorCall>>>,
    jobs: mpsc::UnboundedSender<DriverJob>,
    /// Wakes the history pruner: a deployment finished.
    prune_now: Arc<tokio::sync::Notify>,
}

/// Why an operator call could not be served here.
#[derive(Debug, thiserror::Error)]
pub enum NotServed {
    #[error("this coordinator is not the leader{}", leader.as_ref().map(|l| format!("; the leader is at {l}")).unwrap_or_else(|| "; no leader is elected right now, retry shortly".to_owned()))]
    NotLeader { leader: Option<String> },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
    /// Something on the coordinator's side failed (etcd, the depot, a
    /// task): what it was doing, and why.
    #[error("{doing}")]
    Internal {
        doing: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl NotServed {
    fn internal<E>(doing: &'static str) -> impl FnOnce(E) -> NotServed
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        move |e| NotServed::Internal {
            doing,
            source: Box::new(e),
        }
    }
}

/// Why a deployment is planned: a rollback never rehearses; a restart
/// never rehearses either, may be limited to one cluster, and its undo is
/// the release it restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Purpose {
    Deploy,
    Rollback,
    Restart { cluster: Option<String> },
}

impl Purpose {
    fn kind(&self) -> DeploymentKind {
        match self {
            Self::Deploy => DeploymentKind::Deploy,
            Self::Rollback => DeploymentKind::Rollback,
            Self::Restart { .. } => DeploymentKind::Restart,
        }
    }
}

/// How often a campaigning coordinator reads who leads, for `/readyz`.
const LEADER_POLL: Duration = Duration::from_secs(2);

/// How a campaign ended.
enum Campaign {
    Won(Result<leases::Leadership, ElectionError>),
    SessionLost,
    Shutdown,
}

/// How many of a service's latest deployments a rollback looks through
/// for one that succeeded.
const ROLLBACK_HISTORY: usize = 50;
/// How often the leader prunes finished deployments past `[history]
/// retention` (and once as it starts leading).
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// The outcome of a Deploy request.
#[derive(Debug)]
pub enum Deployed {
    Started { id: String, token: u64 },
    Locked(Box<leases::LockInfo>),
    Invalid(Vec<String>),
}

/// One coordinator process.
pub struct Coordinator {
    pub config: CoordinatorConfig,
    pub client: Etcd,
    pub depot: ReleaseDepot,
    pub fleet: Arc<FleetView>,
    pub journal: Journal,
    /// Every coordinator metric (`[metrics] listen`).
    pub metrics: CoordinatorMetrics,
    leading: watch::Sender<Option<Arc<Leading>>>,
    /// What `/readyz` answers.
    readiness: watch::Sender<Readiness>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("advertise_url", &self.config.advertise_url)
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    pub fn new(config: CoordinatorConfig, client: Etcd, depot: ReleaseDepot) -> Self {
        let fleet = Arc::new(FleetView::new(config.status_interval));
        let metrics = CoordinatorMetrics::default();
        client.count_into(metrics.etcd());
        Self {
            journal: Journal::new(client.clone())
                .with_write_deadline(config.journal_deadline)
                .with_metrics(metrics.clone()),
            config,
            client,
            depot,
            fleet,
            metrics,
            leading: watch::Sender::new(None),
            readiness: watch::Sender::new(Readiness::NotReady(
                "starting: no etcd session yet".to_owned(),
            )),
        }
    }

    /// What the metrics endpoint serves: the registry, `/readyz`, and the
    /// agents' reachability read from the fleet view at each scrape.
    pub fn endpoint(&self) -> exposition::Endpoint {
        let fleet = self.fleet.clone();
        let metrics = self.metrics.clone();
        exposition::Endpoint {
            registry: self.metrics.registry(),
            readiness: self.readiness.subscribe(),
            before_scrape: Some(Arc::new(move || {
                let (connected, unreachable) = fleet.reachability();
                metrics.set_agents(connected, unreachable);
            })),
        }
    }

    fn not_ready(&self, why: String) {
        self.readiness.send_replace(Readiness::NotReady(why));
    }

    /// Leading (`Some`) or not: the drivers' gate, the leader gauge and
    /// readiness move together.
    fn set_leading(&self, leading: Option<Arc<Leading>>) {
        let is_leader = leading.is_some();
        self.leading.send_replace(leading);
        self.metrics.set_leader(is_leader);
        if is_leader {
            self.readiness.send_replace(Readiness::Ready);
        } else {
            self.not_ready("not leading: campaigning again".to_owned());
        }
    }

    /// Readiness while campaigning: ready when the election key names a
    /// leader. Bounded by `LEADER_POLL`, so the campaign's other signals
    /// (session lost, shutdown) are never kept waiting by a hung etcd.
    async fn follow_leader(&self) {
        let election = Election::new();
        let leader = tokio::time::timeout(LEADER_POLL, election.leader(&self.client));
        let readiness = match leader.await {
            Ok(Ok(Some(_))) => Readiness::Ready,
            Ok(Ok(None)) => {
                Readiness::NotReady("no coordinator leads: an election is under way".to_owned())
            }
            Ok(Err(err)) => Readiness::NotReady(format!("cannot read who leads from etcd: {err}")),
            Err(_) => {
                Readiness::NotReady(format!("etcd did not say who leads within {LEADER_POLL:?}"))
            }
        };
        self.readiness.send_replace(readiness);
    }

    /// Campaigns until this session leads, reading who leads meanwhile.
    async fn campaign(&self, session: &Session, shutdown: &mut watch::Receiver<bool>) -> Campaign {
        let election = Election::new();
        let won = election.campaign(session, &self.config.advertise_url);
        tokio::pin!(won);
        let mut look = tokio::time::interval(LEADER_POLL);
        loop {
            tokio::select! {
                won = &mut won => return Campaign::Won(won),
                _ = session.lost() => return Campaign::SessionLost,
                _ = shutdown.changed() => return Campaign::Shutdown,
                _ = look.tick() => self.follow_leader().await,
            }
        }
    }

    /// `Some` while leading.
    pub fn leading(&self) -> Option<Arc<Leading>> {
        self.leading.borrow().clone()
    }

    /// Waits until this coordinator leads (for tests and `--wait-leader`).
    pub fn leadership(&self) -> watch::Receiver<Option<Arc<Leading>>> {
        self.leading.subscribe()
    }

    /// The leader's advertised URL, as recorded in the election key.
    pub async fn leader_url(&self) -> Option<String> {
        Election::new()
            .leader(&self.client)
            .await
            .ok()
            .flatten()
            .map(|info| info.purpose)
    }

    async fn require_leader(&self) -> Result<Arc<Leading>, NotServed> {
        match self.leading() {
            Some(leading) => Ok(leading),
            None => Err(NotServed::NotLeader {
                leader: self
                    .leader_url()
                    .await
                    .filter(|url| *url != self.config.advertise_url),
            }),
        }
    }

    /// What drivers share while `leadership` lasts, and where operator
    /// calls hand the leadership loop new drivers.
    fn lead(
        &self,
        session: &Arc<Session>,
        leadership: &leases::Leadership,
    ) -> (Arc<Leading>, mpsc::UnboundedReceiver<DriverJob>) {
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel::<DriverJob>();
        let leading = Arc::new(Leading {
            session: session.clone(),
            ctx: Arc::new(DriverContext {
                journal: self.journal.clone(),
                fleet: self.fleet.clone(),
                agents: AgentDialer::new(self.config.tls.clone()),
                leader_fence: leadership.fence(),
                checks: self.config.checks.clone(),
                prometheus: self.config.prometheus.clone(),
                metrics: self.metrics.clone(),
                // Workers live as long as this leadership's drivers: they
                // deliver what is queued, then end.
                notifier: crate::notify::Notifier::start(&self.config.notify, self.metrics.clone()),
            }),
            calls: Mutex::new(HashMap::new()),
            jobs: jobs_tx,
            prune_now: Arc::new(tokio::sync::Notify::new()),
        });
        (leading, jobs_rx)
    }

    /// Campaigns, leads, and campaigns again, until `shutdown` fires.
    pub async fn run_leadership(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(200);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let session = match Session::grant(self.client.clone(), self.config.lease_ttl).await {
                Ok(session) => Arc::new(session),
                Err(err) => {
                    self.not_ready(format!("no etcd session: {err}"));
                    tracing::warn!(error = %err, retry_in_ms = backoff.as_millis(), "cannot open an etcd session; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(200);
            let leadership = match self.campaign(&session, &mut shutdown).await {
                Campaign::Won(Ok(l)) => l,
                Campaign::SessionLost => {
                    self.not_ready("the etcd session was lost; opening another".to_owned());
                    continue;
                }
                Campaign::Shutdown => {
                    close(session).await;
                    return;
                }
                Campaign::Won(Err(err)) => {
                    tracing::warn!(error = %err, "campaign failed; retrying");
                    close(session).await;
                    continue;
                }
            };
            let (leading, mut jobs_rx) = self.lead(&session, &leadership);
            self.set_leading(Some(leading.clone()));
            tracing::info!(url = self.config.advertise_url, token = %leadership.token(), "leading the fleet");
            let mut drivers: JoinSet<(String, DriverExit)> = JoinSet::new();
            match self.journal.active().await {
                Ok(ids) => {
                    for id in ids {
                        drivers.spawn(self.clone().resume(leading.clone(), id));
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot list active deployments; stepping down");
                    self.set_leading(None);
                    drop(drivers);
                    let _ = leadership.resign().await;
                    close(session).await;
                    continue;
                }
            }
            let pruner = tokio::spawn(prune_history(
                self.journal.clone(),
                leadership.fence(),
                self.config.history,
                leading.prune_now.clone(),
            ));
            let resign = loop {
                tokio::select! {
                    () = leadership.lost() => break false,
                    _ = session.lost() => break false,
                    _ = shutdown.changed() => break true,
                    Some(job) = jobs_rx.recv() => { drivers.spawn(job); }
                    Some(done) = drivers.join_next() => {
                        if let Ok((id, exit)) = done {
                            self.driver_ended(&leading, &mut drivers, id, exit);
                        }
                    }
                }
            };
            self.set_leading(None);
            pruner.abort();
            drivers.shutdown().await;
            if resign {
                if let Err(err) = leadership.resign().await {
                    tracing::warn!(error = %err, "cannot resign leadership; it expires with the session");
                }
            } else {
                tracing::warn!("leadership lost; every driver stopped");
                drop(leadership);
            }
            drop(leading);
            close(session).await;
            if resign {
                return;
            }
        }
    }

    fn driver_ended(
        self: &Arc<Self>,
        leading: &Arc<Leading>,
        drivers: &mut JoinSet<(String, DriverExit)>,
        id: String,
        exit: DriverExit,
    ) {
        leading
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        match exit {
            DriverExit::Finished => leading.prune_now.notify_one(),
            // Fenced while this coordinator still leads: only the lock can
            // have gone (`lockstep locks break` revoked its lease, or the
            // lease expired). Drive it again under a new lock; a finished
            // deployment is not resumed.
            DriverExit::Superseded => {
                tracing::warn!(
                    deployment = id,
                    "deployment lock lost while leading; resuming from the journal"
                );
                let me = self.clone();
                let leading = leading.clone();
                drivers.spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    me.resume(leading, id).await
                });
            }
            DriverExit::Interrupted(err) => {
                tracing::warn!(deployment = id, error = %err, "deployment interrupted; resuming from the journal");
                let me = self.clone();
                let leading = leading.clone();
                drivers.spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    me.resume(leading, id).await
                });
            }
        }
    }

    /// Takes over an active deployment: a new lock (higher token), the
    /// engine from the journal, `Recovered`, and on.
    async fn resume(self: Arc<Self>, leading: Arc<Leading>, id: String) -> (String, DriverExit) {
        let record = match self.journal.header(&id).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                return (
                    id.clone(),
                    DriverExit::Interrupted(JournalError::Fenced { id }),
                );
            }
            Err(err) => return (id, DriverExit::Interrupted(err)),
        };
        if record.state.is_terminal() {
            let exit = self.finish_journal(&leading, &record.service, &id).await;
            return (id, exit);
        }
        // The old leader's lock goes with its lease: wait up to two TTLs.
        let wait = self.config.lease_ttl.as_duration() * 2;
        let lock = match DeploymentLock::take(&leading.session, &record.service, &id, wait).await {
            Ok(lock) => lock,
            Err(err) => {
                tracing::error!(deployment = id, error = %err, "cannot take the deployment lock to resume");
                return (
                    id.clone(),
                    DriverExit::Interrupted(JournalError::Fenced { id }),
                );
            }
        };
        // Read the record again under the new lock: a write of an earlier
        // driver whose answer was lost either landed before the old lock
        // went (and is read now) or can never land (its lock fence names
        // the old key), so the engine resumed is the last one persisted.
        let loaded = match self.journal.load(&id).await {
            Ok(Some(loaded)) if !loaded.record.state.is_terminal() => loaded,
            Ok(Some(_)) => {
                let _ = lock.release().await;
                return (id, DriverExit::Finished);
            }
            Ok(None) => {
                let _ = lock.release().await;
                return (
                    id.clone(),
                    DriverExit::Interrupted(JournalError::Fenced { id }),
                );
            }
            Err(err) => {
                let _ = lock.release().await;
                return (id, DriverExit::Interrupted(err));
            }
        };
        let token = FencingToken(lock.token().0);
        tracing::info!(deployment = id, token = token.0, "resuming deployment");
        let started = !matches!(loaded.record.engine.status(), rollout::Status::NotStarted);
        let mut first = vec![Event::Recovered { token }];
        if !started {
            first.push(Event::Start);
        }
        let driver = Driver::resumed(leading.ctx.clone(), loaded, lock);
        let (tx, rx) = mpsc::channel(16);
        leading
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.clone(), tx);
        (id, driver.run(first, rx).await)
    }

    /// A finished deployment still marked active: its leader stopped
    /// between the finishing step's commit and its further pages. Writes
    /// them, clearing the marker with the last; a failure is retried as
    /// any interrupted resume is.
    async fn finish_journal(&self, leading: &Leading, service: &str, id: &str) -> DriverExit {
        match self.journal.active_of(service).await {
            Ok(Some(active)) if active == id => {}
            Ok(_) => return DriverExit::Finished,
            Err(err) => return DriverExit::Interrupted(err),
        }
        // A record pruned meanwhile has no events left to write: the
        // marker alone is cleared, or it would refuse every deployment.
        let events = match self.journal.load(id).await {
            Ok(loaded) => loaded.map(|l| l.last_events).unwrap_or_default(),
            Err(err) => return DriverExit::Interrupted(err),
        };
        let fences = [leading.ctx.leader_fence.clone()];
        match self
            .journal
            .finish_pages(&fences, id, service, &events)
            .await
        {
            Ok(()) => {
                tracing::info!(
                    deployment = id,
                    "a finished deployment's last events written and its active marker cleared"
                );
                DriverExit::Finished
            }
            Err(err) => DriverExit::Interrupted(err),
        }
    }

    /// Builds the plan of deploying `digest` to `service` with `strategy_toml`;
    /// a rollback (`purpose`) never rehearses.
    async fn planned(
        &self,
        service: &str,
        digest: &str,
        strategy_toml: &str,
        purpose: &Purpose,
    ) -> Result<Result<(rollout::Plan, crate::depot::ReleaseEntry), Vec<String>>, NotServed> {
        let target = ReleaseDigest::parse(digest).map_err(|e| NotServed::Invalid(e.to_string()))?;
        let entry = self
            .depot
            .entry(service, digest)
            .await
            .map_err(NotServed::internal("cannot read the release depot"))?
            .ok_or_else(|| {
                NotServed::NotFound(format!(
                    "release {digest} of {service} is not known: push it with `lockstep release push BUNDLE` (see `lockstep release list --service {service}`)"
                ))
            })?;
        let mut strategy = if strategy_toml.trim().is_empty() {
            Strategy::default()
        } else {
            match Strategy::from_toml(strategy_toml) {
                Ok(s) => s,
                Err(errors) => return Ok(Err(errors.0.iter().map(ToString::to_string).collect())),
            }
        };
        if let Err(problems) = self.config.checks.resolve(&mut strategy) {
            return Ok(Err(problems));
        }
        // Refused at plan time rather than discovered as "inconclusive" in
        // the middle of a rollout.
        if !strategy.analyses.is_empty() && self.config.prometheus.is_none() {
            return Ok(Err(vec![format!(
                "the strategy declares analyses ({}) but this coordinator has no [prometheus] url in coordinator.toml to run them against",
                strategy
                    .analyses
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )]));
        }
        let mut hosts = self.fleet.service_fleet(service, &target);
        if let Purpose::Restart {
            cluster: Some(only),
        } = purpose
        {
            hosts.fleet.clusters.retain(|c| c.name.as_str() == only);
            if hosts.fleet.clusters.is_empty() {
                return Ok(Err(vec![format!(
                    "no host of {service} is in cluster {only} (`lockstep agents` lists the clusters)"
                )]));
            }
        }
        for cluster in &mut hosts.fleet.clusters {
            let policy = leases::DisruptionBudget::new(cluster.name.as_str())
                .policy(&self.client)
                .await
                .map_err(|e| match e {
                    // The operator's own key: say which and what is wrong,
                    // not that the coordinator is unavailable.
                    leases::SemaphoreError::BadValue { key, source } => NotServed::Refused(format!(
                        "cluster {}'s budget policy {key} is malformed ({source}); write it as `etcdctl put {key} '{{\"max_disruptions\": N}}'`, or delete it for the default",
                        cluster.name
                    )),
                    other => NotServed::internal("cannot read a cluster's disruption budget")(other),
                })?;
            cluster.max_disruptions = usize::try_from(policy.max_disruptions).ok();
        }
        if !hosts.unreachable.is_empty() {
            return Ok(Err(vec![format!(
                "agent(s) {} host {service} but are unreachable: a deployment would leave them behind; bring them back or remove {service} from their `services`",
                hosts.unreachable.join(", ")
            )]));
        }
        let previous = hosts.previous.unwrap_or(Installed::Nothing);
        if previous == Installed::Nothing {
            // A first install has nothing to rehearse a rollback to.
            strategy.rehearse_rollback = false;
        }
        if *purpose != Purpose::Deploy {
            // Going back in an emergency must not re-apply what it leaves
            // (the rehearsal's "previous" is the release being left); a
            // restart has nothing to rehearse.
            strategy.rehearse_rollback = false;
        }
        let input = PlanInput {
            fleet: &hosts.fleet,
            strategy: &strategy,
            target: &target,
            previous: &previous,
            overlap: entry.overlap,
        };
        Ok(match rollout::plan(&input) {
            Ok(mut plan) => {
                if let Purpose::Restart { .. } = purpose {
                    // Undoing a restart is being on the release it
                    // restarted (the plan refuses previous == target).
                    plan.previous = Installed::Release(target);
                    for instance in &mut plan.instances {
                        instance.original = Installed::Release(target);
                    }
                }
                Ok((plan, entry))
            }
            Err(errors) => Err(errors.0.iter().map(ToString::to_string).collect()),
        })
    }

    /// `lockstep plan`.
    pub async fn plan(
        &self,
        service: &str,
        digest: &str,
        strategy_toml: &str,
    ) -> Result<pb::PlanResponse, NotServed> {
        Ok(
            match self
                .planned(service, digest, strategy_toml, &Purpose::Deploy)
                .await?
            {
                Ok((plan, _)) => crate::wire::plan(&plan),
                Err(problems) => pb::PlanResponse {
                    problems,
                    ..Default::default()
                },
            },
        )
    }

    /// `lockstep deploy`: refuses at once when the service's lock is held.
    pub async fn deploy(&self, request: &pb::DeployRequest) -> Result<Deployed, NotServed> {
        self.deploy_for(request, &Purpose::Deploy).await
    }

    async fn deploy_for(
        &self,
        request: &pb::DeployRequest,
        purpose: &Purpose,
    ) -> Result<Deployed, NotServed> {
        let leading = self.require_leader().await?;
        let (plan, entry) = match self
            .planned(
                &request.service,
                &request.release_digest,
                &request.strategy_toml,
                purpose,
            )
            .await?
        {
            Ok(planned) => planned,
            Err(problems) => return Ok(Deployed::Invalid(problems)),
        };
        // From the lock on, the start runs to its end even if the caller
        // stops waiting (a hung etcd): a lock taken and then dropped would
        // stay held for as long as this leader's session lives.
        let request = request.clone();
        let kind = purpose.kind();
        tokio::spawn(async move { start(leading, request, kind, plan, entry).await })
            .await
            .map_err(NotServed::internal("the deployment start failed"))?
    }

    /// `lockstep rollback SERVICE`: deploys the release `rollback_target`
    /// chooses, without a rehearsal.
    pub async fn rollback(
        &self,
        request: &pb::RollbackServiceRequest,
    ) -> Result<Deployed, NotServed> {
        let target = self.rollback_target(request).await?;
        let digest = target.release.map(|r| r.digest).unwrap_or_default();
        let request = pb::DeployRequest {
            service: request.service.clone(),
            release_digest: digest,
            strategy_toml: request.strategy_toml.clone(),
            actor: request.actor.clone(),
            reason: if request.reason.is_empty() {
                "rollback".to_owned()
            } else {
                format!("rollback: {}", request.reason)
            },
        };
        self.deploy_for(&request, &Purpose::Rollback).await
    }

    /// `lockstep restart SERVICE [--cluster C]`: a deployment of the release
    /// the hosts run, whose forward steps restart them.
    pub async fn restart(
        &self,
        request: &pb::RestartServiceRequest,
    ) -> Result<Deployed, NotServed> {
        let service = &request.service;
        let cluster = Some(request.cluster.as_str()).filter(|c| !c.is_empty());
        let current = match self.fleet.current_releases(service, cluster).as_slice() {
            [Some(only)] => only.clone(),
            [] => {
                return Err(NotServed::NotFound(format!(
                    "no host{} reports running {service}",
                    cluster
                        .map(|c| format!(" in cluster {c}"))
                        .unwrap_or_default()
                )));
            }
            several => {
                return Err(NotServed::Refused(format!(
                    "hosts of {service} run {} different releases (or none): a restart keeps each on its release, so deploy one release first",
                    several.len()
                )));
            }
        };
        let deploy = pb::DeployRequest {
            service: service.clone(),
            release_digest: current,
            strategy_toml: request.strategy_toml.clone(),
            actor: request.actor.clone(),
            reason: if request.reason.is_empty() {
                "restart".to_owned()
            } else {
                format!("restart: {}", request.reason)
            },
        };
        let purpose = Purpose::Restart {
            cluster: cluster.map(str::to_owned),
        };
        self.deploy_for(&deploy, &purpose).await
    }

    /// The release a rollback goes to: the one named (`release_digest`), or
    /// the last release that succeeded on the service, other than the one
    /// every host already runs (history, newest first).
    pub async fn rollback_target(
        &self,
        request: &pb::RollbackServiceRequest,
    ) -> Result<pb::RollbackTargetResponse, NotServed> {
        let service = &request.service;
        if !request.release_digest.is_empty() {
            let entry = self
                .depot
                .entry(service, &request.release_digest)
                .await
                .map_err(NotServed::internal("cannot read the release depot"))?
                .ok_or_else(|| {
                    NotServed::NotFound(format!(
                        "release {} of {service} is not known (see `lockstep release list --service {service}`)",
                        request.release_digest
                    ))
                })?;
            return Ok(pb::RollbackTargetResponse {
                release: Some(pb::ReleaseRef {
                    service: service.clone(),
                    digest: entry.digest,
                    version: entry.version,
                }),
                why: "the release named with --to".to_owned(),
            });
        }
        let history: Vec<Finished> = self
            .journal
            .history(service, ROLLBACK_HISTORY)
            .await
            .map_err(NotServed::internal("cannot read the deployment history"))?
            .into_iter()
            .map(|(_, r)| Finished {
                deployment: r.id,
                succeeded: r.state == DeploymentState::Succeeded,
                release: NamedRelease {
                    digest: r.target_digest,
                    version: r.target_version,
                },
            })
            .collect();
        let fleet_on = self.fleet.uniform_current(service);
        let chosen = rollback_target(&history, fleet_on.as_deref()).ok_or_else(|| {
            NotServed::NotFound(format!(
                "no earlier release of {service} succeeded in its last {ROLLBACK_HISTORY} deployments: name one with `lockstep rollback {service} --to VERSION|DIGEST`"
            ))
        })?;
        Ok(pb::RollbackTargetResponse {
            release: Some(pb::ReleaseRef {
                service: service.clone(),
                digest: chosen.release.digest.clone(),
                version: chosen.release.version.clone(),
            }),
            why: format!(
                "the last release that succeeded on {service} (deployment {})",
                chosen.deployment
            ),
        })
    }

    /// Pause, resume, approve, abort, rollback of a running deployment.
    pub async fn command(
        &self,
        id: &str,
        command: rollout::Command,
        cluster: Option<&str>,
        said: String,
    ) -> Result<pb::Deployment, NotServed> {
        let leading = self.require_leader().await?;
        if let Some(cluster) = cluster.filter(|c| !c.is_empty()) {
            let record = self.record(id).await?;
            let waiting_for = record.waiting_for;
            if waiting_for.as_deref() != Some(cluster) {
                return Err(NotServed::Refused(format!(
                    "deployment {id} is not waiting for approval of cluster {cluster}{}",
                    waiting_for
                        .map(|c| format!(" (it waits for {c})"))
                        .unwrap_or_default()
                )));
            }
        }
        let tx = leading
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned();
        let Some(tx) = tx else {
            let record = self.record(id).await?;
            return Err(NotServed::Refused(format!(
                "deployment {id} is {:?}: nothing to {}",
                record.state,
                format!("{command:?}").to_lowercase()
            )));
        };
        let (reply, answer) = oneshot::channel();
        tx.send(OperatorCall {
            command,
            said,
            reply,
        })
        .await
        .map_err(|_| NotServed::Refused(format!("deployment {id} has just ended")))?;
        answer
            .await
            .map_err(|_| NotServed::Refused(format!("deployment {id} has just ended")))?
            .map_err(NotServed::Refused)
    }

    /// What status shows of deployment `id`: its header, never the engine.
    pub async fn record(&self, id: &str) -> Result<DeploymentHeader, NotServed> {
        self.journal
            .header(id)
            .await
            .map_err(NotServed::internal("cannot read the deployment"))?
            .ok_or_else(|| NotServed::NotFound(format!("no deployment {id}")))
    }
}

/// Takes the service's lock, writes the deployment record and hands the
/// driver to the leadership loop.
async fn start(
    leading: Arc<Leading>,
    request: pb::DeployRequest,
    kind: DeploymentKind,
    plan: rollout::Plan,
    entry: crate::depot::ReleaseEntry,
) -> Result<Deployed, NotServed> {
    let now = crate::now_unix_ms();
    let id = format!("{}-{}", request.service, now);
    let lock = match DeploymentLock::try_take(&leading.session, &request.service, &id).await {
        Ok(lock) => lock,
        Err(DeploymentLockError::Lock(LockError::Held(info))) => {
            return Ok(Deployed::Locked(info));
        }
        Err(err) => return Err(NotServed::internal("cannot take the deployment lock")(err)),
    };
    let token = lock.token().0;
    let actor = request.actor.clone().unwrap_or_default();
    let clusters_of = plan
        .instances
        .iter()
        .filter_map(|i| {
            plan.clusters
                .get(i.cluster)
                .map(|c| (i.id.to_string(), c.name.to_string()))
        })
        .collect();
    let record = DeploymentRecord {
        format: crate::record::RECORD_FORMAT,
        id: id.clone(),
        service: request.service.clone(),
        target_digest: entry.digest.clone(),
        target_version: entry.version.clone(),
        actor_user: actor.user,
        actor_host: actor.host,
        reason: request.reason.clone(),
        kind,
        created_unix_ms: now,
        finished_unix_ms: 0,
        state: DeploymentState::Running,
        outcome: String::new(),
        token,
        next_seq: 1,
        clusters_of,
        progress: Default::default(),
        operator_said: String::new(),
        engine: Engine::new(DeploymentId(id.clone()), plan, FencingToken(token)),
        log: Default::default(),
    };
    let mut driver = Driver::new(leading.ctx.clone(), record, lock);
    if let Err(err) = driver.create().await {
        return Err(NotServed::Refused(err.to_string()));
    }
    let (tx, rx) = mpsc::channel(16);
    leading
        .calls
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(id.clone(), tx);
    let job_id = id.clone();
    let job: DriverJob =
        Box::pin(async move { (job_id, driver.run(vec![Event::Start], rx).await) });
    if leading.jobs.send(job).is_err() {
        return Err(NotServed::NotLeader { leader: None });
    }
    tracing::info!(
        deployment = id,
        service = request.service,
        release = request.release_digest,
        token,
        "deployment started"
    );
    Ok(Deployed::Started { id, token })
}

/// Ends a session now: revoking its lease frees every lock it held (the
/// deployment locks included) for the next leader, without waiting a TTL.
async fn close(session: Arc<Session>) {
    let lease = session.lease_id();
    if let Err(err) = session.client().clone().lease_revoke(lease).await {
        tracing::warn!(lease, error = %err, "cannot revoke the session's lease; it expires by itself");
    }
}

/// While this coordinator leads: prunes finished deployments past their
/// retention, at once, after each deployment that finishes, and every
/// [`PRUNE_EVERY`]. A failed pass is logged and tried again later.
async fn prune_history(
    journal: Journal,
    fence: etcd_client::Compare,
    retention: crate::journal::Retention,
    finished: Arc<tokio::sync::Notify>,
) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = finished.notified() => {}
        }
        loop {
            match journal
                .prune(&fence, crate::now_unix_ms(), &retention)
                .await
            {
                Ok(n) if n == crate::journal::PRUNE_BATCH => continue,
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    pruned = n,
                    "pruned finished deployments past their retention"
                ),
                Err(err) => {
                    tracing::warn!(error = %cli::chain(&err), "cannot prune finished deployments; trying again later")
                }
            }
            break;
        }
    }
}
