//! `ClusterLink`: the agent's presence in the fleet's etcd — its session,
//! its registration, the cluster's disruption budget, and the audit of
//! break-glass actions.
//!
//! ```text
//! keeper task: connect -> session (lease) -> claim the registration
//!              (held by our dead predecessor: revoke its lease, claim
//!              again; held by another live agent: refuse — at start the
//!              agent exits, later it stays unregistered) -> upload pending
//!              local audit records -> publish the session -> wait: lost
//!              -> publish none -> retry after a pause
//! slot release: one attempt; failed -> owned background task retrying
//!              with backoff until released or the session is lost
//! ```
//!
//! etcd being unreachable never touches the apps (fail static): only
//! planned disruptions wait for it, and `--force` goes on without it,
//! recorded in a local audit file that is uploaded once etcd is back.
//!
//! Must never: let a planned disruption proceed without a slot, keep a
//! slot it is done with, or lose a break-glass record.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use leases::{
    AuditLog, AuditRecord, Claim, DisruptionBudget, Etcd, EtcdTiming, FencedMutex, Holder,
    LockError, LockState, LossReason, Registration, SemaphoreError, Session, SlotGuard, Ttl,
};
use tokio::sync::watch;

use crate::config::{AgentConfig, EtcdSettings};
use crate::identity::{self, HolderVerdict};
use crate::task::OwnedTask;
use crate::telemetry::AgentMetrics;

/// Pause before the first retry to reach etcd: quick to recover…
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);
/// …doubling up to this, gentle on an etcd that is struggling and on logs.
const RECONNECT_PAUSE_MAX: Duration = Duration::from_secs(10);
/// Pause before asking etcd again after a failed request during a wait.
const SLOT_RETRY_PAUSE: Duration = Duration::from_millis(250);
/// First pause before retrying a failed slot release…
const RELEASE_RETRY_PAUSE: Duration = Duration::from_millis(250);
/// …doubling up to this.
const RELEASE_RETRY_PAUSE_MAX: Duration = Duration::from_secs(5);
/// Per-request budget for the agent's etcd calls.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "etcd ({endpoints}) was unreachable for {waited:?}, so no slot in cluster {cluster}'s disruption budget could be taken; the apps keep running. To go ahead anyway: agentctl restart SERVICE --force --reason TEXT (audited)"
    )]
    EtcdUnreachable {
        endpoints: String,
        cluster: String,
        waited: Duration,
    },
    #[error("{0}")]
    DuplicateId(String),
    #[error("{0}; try again later, or --force --reason TEXT (audited) if it cannot wait")]
    Budget(#[source] SemaphoreError),
    #[error("cannot record the break-glass action in {path}: {source}")]
    LocalAudit {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why the cluster's budget could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum BudgetReadError {
    #[error("etcd ({endpoints}) is unreachable")]
    Unreachable { endpoints: String },
    #[error("etcd ({endpoints}) did not answer within {REQUEST_TIMEOUT:?}")]
    TimedOut { endpoints: String },
    #[error("cannot read cluster {cluster}'s disruption budget: {source}")]
    Read {
        cluster: String,
        #[source]
        source: SemaphoreError,
    },
}

impl BudgetReadError {
    /// The key whose record is not valid, when etcd answered with one:
    /// someone must fix the data, waiting will not help.
    pub fn malformed_key(&self) -> Option<&str> {
        match self {
            Self::Read {
                source: SemaphoreError::BadValue { key, .. },
                ..
            } => Some(key),
            _ => None,
        }
    }
}

/// Why a service's deployment lock could not be read (a coordinator's
/// fencing token is then refused for now: `admission::vouch`).
#[derive(Debug, thiserror::Error)]
pub enum LockReadError {
    #[error("etcd ({endpoints}) is unreachable: the agent has no session")]
    Unreachable { endpoints: String },
    #[error("etcd ({endpoints}) did not answer the read of {key} within {REQUEST_TIMEOUT:?}")]
    TimedOut { endpoints: String, key: String },
    #[error(transparent)]
    Read(#[from] LockError),
}

/// What `agentctl locks` shows.
#[derive(Debug, Clone, Default)]
pub struct BudgetView {
    pub max_disruptions: u32,
    pub holders: Vec<leases::SlotInfo>,
    pub waiters: Vec<leases::SlotInfo>,
}

pub use crate::identity::AgentRecord;

/// What the keeper's first registration attempt found: the agent's start
/// waits for it (bounded), so a duplicate id stops the agent before it
/// touches any app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstRegistration {
    Pending,
    Registered,
    /// etcd did not answer: the agent starts anyway (fail static).
    Unreachable(String),
    /// Another live agent holds this id.
    Refused(String),
}

/// The agent's link to etcd; cheap to share.
#[derive(Debug, Clone)]
pub struct ClusterLink {
    inner: Arc<Inner>,
    /// Where budget waits are observed.
    metrics: AgentMetrics,
}

#[derive(Debug)]
struct Inner {
    settings: EtcdSettings,
    agent: String,
    budget: DisruptionBudget,
    audit_file: PathBuf,
    session: watch::Receiver<Option<Arc<Session>>>,
    first: watch::Receiver<FirstRegistration>,
    pending: PendingReleases,
    _keeper: OwnedTask,
}

/// Background releases of slots whose release failed, by slot name
/// (`<agent>/<service>`); owned by the link, so none outlives the agent.
type PendingReleases = Arc<SyncMutex<HashMap<String, PendingRelease>>>;

#[derive(Debug)]
struct PendingRelease {
    /// Turns true once the slot is released or its lease is gone.
    done: watch::Receiver<bool>,
    _task: OwnedTask,
}

/// A held slot; release it when the disruption is over. A release that
/// fails, or a slot dropped without one, is retried in the background
/// until it is done or the session's lease is gone: a live session would
/// otherwise keep the slot held for good.
#[derive(Debug)]
pub struct Slot(Option<Held>);

#[derive(Debug)]
struct Held {
    guard: SlotGuard,
    name: String,
    loss: watch::Receiver<Option<LossReason>>,
    pending: PendingReleases,
}

impl Slot {
    /// No slot was taken (no etcd configured, or a forced action).
    pub fn none() -> Self {
        Self(None)
    }

    pub async fn release(mut self) {
        let Some(held) = self.0.take() else {
            return;
        };
        let key = held.guard.key().to_owned();
        match tokio::time::timeout(REQUEST_TIMEOUT, held.guard.try_release()).await {
            Ok(Ok(())) => return,
            Ok(Err(err)) => {
                tracing::warn!(key, error = %err, "cannot release a disruption slot; retrying in the background");
            }
            Err(_) => {
                tracing::warn!(key, timeout = ?REQUEST_TIMEOUT, "etcd did not answer a slot release; retrying in the background");
            }
        }
        held.release_in_background();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(held) = self.0.take() {
            tracing::warn!(
                key = held.guard.key(),
                "a disruption slot was dropped without release; releasing it in the background"
            );
            held.release_in_background();
        }
    }
}

impl Held {
    fn release_in_background(self) {
        // Without a runtime (the agent is exiting) the slot goes with the
        // lease, which nothing keeps alive any more.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let (done_tx, done) = watch::channel(false);
        let task = OwnedTask::spawn(release_until_done(self.guard, self.loss, done_tx));
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(self.name, PendingRelease { done, _task: task });
        }
    }
}

/// Retries a failed slot release with backoff until it succeeds or the
/// session is lost (its lease, and the slot with it, then expires or is
/// revoked by the next registration).
async fn release_until_done(
    guard: SlotGuard,
    mut loss: watch::Receiver<Option<LossReason>>,
    done: watch::Sender<bool>,
) {
    let key = guard.key().to_owned();
    let mut pause = RELEASE_RETRY_PAUSE;
    let mut attempts: u32 = 1;
    loop {
        tokio::select! {
            _ = loss.wait_for(Option::is_some) => {
                tracing::info!(key, attempts, "the session is gone: the slot goes with its lease");
                break;
            }
            () = tokio::time::sleep(pause) => {}
        }
        attempts += 1;
        match tokio::time::timeout(REQUEST_TIMEOUT, guard.try_release()).await {
            Ok(Ok(())) => {
                tracing::info!(
                    key,
                    attempts,
                    "released a disruption slot after a failed attempt"
                );
                break;
            }
            Ok(Err(err)) => {
                tracing::warn!(key, attempts, error = %err, "slot release failed again; retrying");
            }
            Err(_) => {
                tracing::warn!(key, attempts, timeout = ?REQUEST_TIMEOUT, "etcd did not answer a slot release; retrying");
            }
        }
        pause = (pause * 2).min(RELEASE_RETRY_PAUSE_MAX);
    }
    done.send_replace(true);
}

impl ClusterLink {
    /// Starts keeping a session in the background; never waits for etcd.
    /// Budget waits and etcd requests are counted into `metrics`.
    pub fn start(
        config: &AgentConfig,
        settings: EtcdSettings,
        record: AgentRecord,
        metrics: AgentMetrics,
    ) -> Self {
        let (tx, session) = watch::channel(None);
        let (first_tx, first) = watch::channel(FirstRegistration::Pending);
        let keeper = OwnedTask::spawn(keep_session(
            settings.clone(),
            config.id.to_string(),
            record,
            config.local_audit_file(),
            (tx, first_tx),
            metrics.etcd(),
        ));
        Self {
            inner: Arc::new(Inner {
                budget: DisruptionBudget::new(config.cluster.as_str()),
                agent: config.id.to_string(),
                audit_file: config.local_audit_file(),
                settings,
                session,
                first,
                pending: PendingReleases::default(),
                _keeper: keeper,
            }),
            metrics,
        }
    }

    /// Waits up to `wait` for the first registration attempt: `Err` with
    /// the holder when another live agent has this id. An etcd that does
    /// not answer in time is no reason not to start (fail static).
    pub async fn registered_at_start(&self, wait: Duration) -> Result<(), ClusterError> {
        let mut first = self.inner.first.clone();
        let outcome =
            tokio::time::timeout(wait, first.wait_for(|f| *f != FirstRegistration::Pending))
                .await
                .ok()
                .and_then(Result::ok)
                .map(|f| f.clone());
        match outcome {
            Some(FirstRegistration::Refused(holder)) => Err(ClusterError::DuplicateId(holder)),
            Some(FirstRegistration::Registered) => Ok(()),
            Some(FirstRegistration::Unreachable(error)) => {
                tracing::warn!(agent = %self.inner.agent, error, "etcd unreachable at start: starting without a checked registration; registering when etcd is back");
                Ok(())
            }
            Some(FirstRegistration::Pending) | None => {
                tracing::warn!(agent = %self.inner.agent, waited = ?wait, "etcd did not answer at start: starting without a checked registration; registering when etcd is back");
                Ok(())
            }
        }
    }

    /// Changes whenever a session is published or lost (`/readyz`).
    pub fn session_changes(&self) -> watch::Receiver<Option<Arc<Session>>> {
        self.inner.session.clone()
    }

    /// The live session, if etcd is reachable now.
    pub fn session(&self) -> Option<Arc<Session>> {
        self.inner.session.borrow().clone().filter(|s| !s.is_lost())
    }

    /// Waits (up to `budget_wait` in all) for etcd and then for a slot in
    /// the cluster's disruption budget.
    pub async fn take_slot(&self, service: &str, purpose: &str) -> Result<Slot, ClusterError> {
        let started = tokio::time::Instant::now();
        let taken = self.wait_for_slot(service, purpose).await;
        self.metrics.budget_waited(started.elapsed());
        taken
    }

    async fn wait_for_slot(&self, service: &str, purpose: &str) -> Result<Slot, ClusterError> {
        let wait = self.inner.settings.budget_wait;
        let deadline = tokio::time::Instant::now() + wait;
        let name = format!("{}/{service}", self.inner.agent);
        self.wait_for_pending_release(&name, deadline, wait).await?;
        let mut sessions = self.inner.session.clone();
        loop {
            let session = tokio::time::timeout_at(
                deadline,
                sessions.wait_for(|s| s.as_ref().is_some_and(|s| !s.is_lost())),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|s| s.clone())
            .ok_or_else(|| self.unreachable(wait))?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            tracing::info!(
                service,
                purpose,
                "waiting for a slot in the disruption budget"
            );
            match self
                .inner
                .budget
                .acquire(&session, &name, purpose, left)
                .await
            {
                Ok(guard) => {
                    return Ok(Slot(Some(Held {
                        guard,
                        name,
                        loss: session.loss_signal(),
                        pending: self.inner.pending.clone(),
                    })));
                }
                // etcd went away under us: wait for the next session, within
                // the same deadline.
                Err(SemaphoreError::SessionLost { .. } | SemaphoreError::Etcd { .. }) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(self.unreachable(wait));
                    }
                    tokio::time::sleep(SLOT_RETRY_PAUSE.min(left)).await;
                }
                Err(err) => return Err(ClusterError::Budget(err)),
            }
        }
    }

    /// This host's own earlier slot for `name`, still being released in
    /// the background, is waited for (within the same deadline) rather
    /// than reported as "already holds a slot".
    async fn wait_for_pending_release(
        &self,
        name: &str,
        deadline: tokio::time::Instant,
        wait: Duration,
    ) -> Result<(), ClusterError> {
        let pending = self
            .inner
            .pending
            .lock()
            .ok()
            .and_then(|p| p.get(name).map(|r| r.done.clone()));
        if let Some(mut done) = pending {
            if !*done.borrow() {
                tracing::info!(
                    slot = name,
                    "waiting for this host's earlier slot to be released"
                );
            }
            tokio::time::timeout_at(deadline, done.wait_for(|d| *d))
                .await
                .map_err(|_| self.unreachable(wait))?
                .map(drop)
                .unwrap_or(());
            if let Ok(mut pending) = self.inner.pending.lock() {
                pending.retain(|_, r| !*r.done.borrow());
            }
        }
        Ok(())
    }

    fn unreachable(&self, waited: Duration) -> ClusterError {
        ClusterError::EtcdUnreachable {
            endpoints: self.inner.settings.endpoints.join(","),
            cluster: self.inner.budget.cluster().to_owned(),
            waited,
        }
    }

    /// Records a break-glass action: in etcd when reachable, otherwise in
    /// the local audit file, uploaded when etcd is back.
    pub async fn audit(&self, record: AuditRecord) -> Result<(), ClusterError> {
        if let Some(session) = self.session() {
            match AuditLog::append(session.client(), &record).await {
                Ok(_) => return Ok(()),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot write the audit record to etcd; keeping it locally")
                }
            }
        }
        let path = self.inner.audit_file.clone();
        tokio::task::spawn_blocking(move || append_local(&path, &record))
            .await
            .map_err(|e| ClusterError::LocalAudit {
                path: self.inner.audit_file.clone(),
                source: std::io::Error::other(e),
            })?
    }

    /// The cluster's budget as etcd sees it now.
    pub async fn budget(&self) -> Result<BudgetView, BudgetReadError> {
        let endpoints = || self.inner.settings.endpoints.join(",");
        let session = self.session().ok_or_else(|| BudgetReadError::Unreachable {
            endpoints: endpoints(),
        })?;
        let client = session.client();
        let budget = &self.inner.budget;
        let read = async {
            Ok::<_, SemaphoreError>(BudgetView {
                max_disruptions: budget.policy(client).await?.max_disruptions,
                holders: budget.holders(client).await?,
                waiters: budget.waiters(client).await?,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, read)
            .await
            .map_err(|_| BudgetReadError::TimedOut {
                endpoints: endpoints(),
            })?
            .map_err(|source| BudgetReadError::Read {
                cluster: budget.cluster().to_owned(),
                source,
            })
    }

    pub fn cluster(&self) -> &str {
        self.inner.budget.cluster()
    }

    /// `service`'s deployment lock as etcd holds it now: one
    /// linearizable read, bounded by `REQUEST_TIMEOUT`.
    pub async fn deploy_lock(&self, service: &str) -> Result<LockState, LockReadError> {
        let endpoints = || self.inner.settings.endpoints.join(",");
        let session = self.session().ok_or_else(|| LockReadError::Unreachable {
            endpoints: endpoints(),
        })?;
        let lock = FencedMutex::deployment(service);
        tokio::time::timeout(REQUEST_TIMEOUT, lock.state(session.client()))
            .await
            .map_err(|_| LockReadError::TimedOut {
                endpoints: endpoints(),
                key: lock.key().to_owned(),
            })?
            .map_err(LockReadError::Read)
    }
}

/// A record of a break-glass action, made by this agent's caller.
pub fn break_glass(
    actor_uid: Option<u32>,
    action: &str,
    target: &str,
    reason: &str,
) -> AuditRecord {
    let mut actor = Holder::current();
    if let Some(uid) = actor_uid {
        actor.user = nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map_or_else(|| format!("uid {uid}"), |u| u.name);
        actor.pid = 0;
    }
    AuditRecord::new(actor, action, target, reason)
}

pub fn append_local(path: &Path, record: &AuditRecord) -> Result<(), ClusterError> {
    let err = |source| ClusterError::LocalAudit {
        path: path.to_owned(),
        source,
    };
    let mut line = serde_json::to_vec(record).map_err(|e| err(std::io::Error::other(e)))?;
    line.push(b'\n');
    let mut file = std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    // One write of one line, then fsync: a crash loses no record already
    // reported as written.
    file.write_all(&line).map_err(err)?;
    file.sync_all().map_err(err)
}

/// Uploads the local audit file to etcd, then removes it. A record is
/// uploaded at least once: a crash between upload and removal uploads it
/// again, which an audit log tolerates better than a lost record.
async fn upload_local_audit(client: &Etcd, path: &Path) -> Result<usize, String> {
    let text = match tokio::fs::read_to_string(path).await {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(format!("cannot read {}: {err}", path.display())),
    };
    let mut uploaded = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let record: AuditRecord = serde_json::from_str(line)
            .map_err(|e| format!("{} holds a bad record ({e}): {line}", path.display()))?;
        AuditLog::append(client, &record)
            .await
            .map_err(|e| e.to_string())?;
        uploaded += 1;
    }
    tokio::fs::remove_file(path)
        .await
        .map_err(|e| format!("cannot remove {} after upload: {e}", path.display()))?;
    Ok(uploaded)
}

/// Why one attempt to join etcd failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinError {
    Unreachable(String),
    /// Another live agent holds this id.
    Refused(String),
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(why) => write!(f, "etcd unreachable: {why}"),
            Self::Refused(why) => f.write_str(why),
        }
    }
}

/// Claims the agent's registration; a holder that is this agent's own
/// predecessor (see `identity`) is evicted first. Shared with
/// `lockstep-nodesim`, whose virtual agents register exactly like this.
pub async fn register(
    session: &Session,
    agent: &str,
    record: &AgentRecord,
) -> Result<Registration, JoinError> {
    let failed = |e: leases::RegistrationError| JoinError::Unreachable(e.to_string());
    // One eviction, then one more claim: a holder that comes back after
    // its eviction is somebody else.
    for _ in 0..2 {
        match Registration::claim(session, agent, record)
            .await
            .map_err(failed)?
        {
            Claim::Registered(registration) => return Ok(*registration),
            Claim::Held(held) => {
                let observed = crate::supervisor::record::observe(held.record.pid);
                match identity::judge(record, &held.record, observed) {
                    HolderVerdict::Predecessor => {
                        tracing::info!(
                            agent,
                            key = held.key,
                            lease = format_args!("{:x}", held.lease),
                            pid = held.record.pid,
                            "the registration is held by this agent's dead predecessor; revoking its lease (and the slots it held)"
                        );
                        Registration::evict(session.client(), &held.key, held.lease)
                            .await
                            .map_err(failed)?;
                    }
                    HolderVerdict::Other => {
                        return Err(JoinError::Refused(identity::describe_holder(
                            agent,
                            &held.record,
                            crate::wire::now_unix_ms(),
                        )));
                    }
                }
            }
        }
    }
    Err(JoinError::Unreachable(format!(
        "the registration of {agent} was taken again right after its holder was evicted"
    )))
}

async fn keep_session(
    settings: EtcdSettings,
    agent: String,
    record: AgentRecord,
    audit_file: PathBuf,
    (publish, first): (
        watch::Sender<Option<Arc<Session>>>,
        watch::Sender<FirstRegistration>,
    ),
    etcd_metrics: leases::EtcdMetrics,
) {
    let ttl = Ttl::from_secs(settings.lease_ttl.as_secs()).ok();
    let mut pause = RECONNECT_PAUSE;
    loop {
        let attempt = async {
            let timing = EtcdTiming {
                request_deadline: REQUEST_TIMEOUT,
                ..EtcdTiming::default()
            };
            let client = Etcd::connect_with(&settings.endpoints, timing, &settings.access)
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            client.count_into(etcd_metrics.clone());
            let ttl = ttl.ok_or_else(|| "bad lease ttl".to_owned())?;
            let session = Session::grant(client, ttl)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(session)
        };
        let joined = match attempt.await {
            Ok(session) => match register(&session, &agent, &record).await {
                Ok(registration) => Ok((session, registration)),
                Err(err) => {
                    // An unused lease: let it go now rather than in a TTL.
                    if let Err(close) = session.close().await {
                        tracing::debug!(error = %close, "cannot revoke an unused lease; it expires by itself");
                    }
                    Err(err)
                }
            },
            Err(err) => Err(JoinError::Unreachable(err)),
        };
        first.send_if_modified(|f| {
            let pending = *f == FirstRegistration::Pending;
            if pending {
                *f = match &joined {
                    Ok(_) => FirstRegistration::Registered,
                    Err(JoinError::Unreachable(e)) => FirstRegistration::Unreachable(e.clone()),
                    Err(JoinError::Refused(e)) => FirstRegistration::Refused(e.clone()),
                };
            }
            pending
        });
        match joined {
            Ok((session, _registration)) => {
                tracing::info!(
                    agent,
                    lease = format_args!("{:x}", session.lease_id()),
                    "registered in etcd"
                );
                match upload_local_audit(session.client(), &audit_file).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        records = n,
                        "uploaded break-glass records kept while etcd was unreachable"
                    ),
                    Err(err) => {
                        tracing::error!(error = %err, "cannot upload the local audit records; will retry")
                    }
                }
                pause = RECONNECT_PAUSE;
                let session = Arc::new(session);
                publish.send_replace(Some(session.clone()));
                let reason = session.lost().await;
                publish.send_replace(None);
                tracing::warn!(agent, reason = %reason, "etcd session lost; apps keep running, planned disruptions wait");
            }
            Err(JoinError::Unreachable(err)) => {
                tracing::warn!(agent, error = %err, "etcd unreachable; apps keep running, planned disruptions wait")
            }
            // Found after a start without etcd, or after this agent's lease
            // expired: stay unregistered (no slots, so no planned
            // disruption) and keep the apps running; an operator must fix
            // the id.
            Err(JoinError::Refused(err)) => {
                tracing::error!(agent, error = %err, "cannot register: apps keep running, planned disruptions wait")
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RECONNECT_PAUSE_MAX);
    }
}
