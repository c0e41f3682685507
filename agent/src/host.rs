//! `Host`: the services on this host and every change to them — install,
//! apply, restart, rollback — each a start-before-stop switch.
//!
//! ```text
//! switch(service, target):
//!   overlap socket-handover | reuseport          overlap none
//!   ─────────────────────────────────            ─────────────────────────────
//!   start every target instance beside the old   stop the old instances
//!   wait: all ready within healthy_deadline      start the target, wait ready
//!   ok   → target is current (durable, reported) ok   → target is current
//!          then the old ones stop
//!   fail → stop the new ones, old keeps serving  fail → stop it, start the old
//!                                                       release again (supervised)
//! ```
//!
//! The steps, and what a failure leaves, come from the pure planner in
//! `plan` (shared with restarts, which go slot by slot): a slot whose old
//! instance was stopped first is started again and kept supervised, ready
//! in time or not.
//!
//! `Host` is a registry of service handles: each service's commands go to
//! its actor (`actor`, the commands in `command`), which runs one at a
//! time: a second is refused as busy, never queued — unless it carries a
//! higher fencing token, and then it supersedes the one in flight
//! (`admission` decides): the older switch or restart is cancelled while
//! it waits for a budget slot or for readiness, brought back like a failed
//! one, and the newer command runs after it. Every outcome is written to
//! the durable state before the reply.
//!
//! At agent start (`reconcile`) every service runs its current release:
//! processes a previous agent left running (`supervisor::record`) are
//! **adopted** when they are of that release — their listening sockets
//! duplicated out of one of them (pidfd_getfd), missing slots started fresh
//! on those sockets — and stopped when they are not. If adoption fails,
//! the adopted processes are stopped and the release starts fresh. At agent
//! stop, `detach_all` leaves every instance running for the next agent
//! (`apps_on_agent_stop = "keep"`), `stop_all` stops them.
//!
//! Must never: stop a serving release before its replacement is ready
//! (unless the release says it cannot overlap), leave a service with half
//! its instances on one release and half on another, or accept a fencing
//! token older than one already accepted, or let a superseded command
//! finish after the one that superseded it.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use cli::chain;
use release::{ReleaseDigest, Store, StoreError, StoredRelease, TrustedKeys};
use tokio::sync::{Mutex, broadcast, watch};
use tokio::time::Instant;

use crate::cluster::{AgentRecord, ClusterError, ClusterLink, Slot};
use crate::config::AgentConfig;
use crate::fetch::ReleaseFetcher;
use crate::instance::{HostedInstance, InstanceError, InstanceSite};
use crate::plan;
use crate::state::{AgentState, ReleaseRecord, StaleToken, StateError, SwitchOutcome, Trigger};
use crate::supervisor::record::{self, ProcessRecord, Verdict};
use crate::supervisor::{
    AdoptedProcess, InstanceState, InstanceStatus, ListenSockets, SocketError,
};
use crate::telemetry::AgentMetrics;
use crate::wire;

mod actor;
mod command;
mod fence;

pub use fence::{FenceReset, FenceView};

use actor::{Cancel, Done, Joined, Message, Order};
use command::{Command, ServiceExecutor};

/// Lines of the failed release's log quoted in a switch failure.
const FAILURE_LOG_LINES: usize = 20;
/// Beyond the release's healthy_deadline, how long a switch waits for the
/// supervisor's own verdict before calling the start failed.
const READY_GRACE: Duration = Duration::from_secs(1);
/// How long an unrecorded app process (see `stop_strays`) gets after
/// SIGTERM: its manifest, and so its own stop_timeout, is unknown.
const STRAY_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Status events buffered for slow `WatchStatus` readers; a reader that
/// falls further behind gets a fresh snapshot instead.
const EVENT_BUFFER: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("no service `{service}` on this host (agentctl status lists them)")]
    UnknownService { service: String },
    #[error(
        "service `{service}` has no previous release to roll back to (agentctl releases {service})"
    )]
    NoPreviousRelease { service: String },
    #[error(transparent)]
    StaleToken(#[from] StaleToken),
    #[error(
        "service `{service}` is already switching; wait for it to finish (agentctl status {service})"
    )]
    Busy { service: String },
    #[error("release {digest} is not on this host: {reason}")]
    ReleaseUnavailable { digest: String, reason: String },
    #[error("bundle rejected: {0}")]
    Bundle(#[source] StoreError),
    #[error("{0}")]
    SwitchFailed(Box<SwitchFailure>),
    #[error("{0}")]
    Superseded(Box<Superseded>),
    #[error("cannot bind the sockets of `{service}`: {source}")]
    Sockets {
        service: String,
        #[source]
        source: SocketError,
    },
    #[error("cannot start an instance of `{service}`: {source}")]
    Instance {
        service: String,
        #[source]
        source: InstanceError,
    },
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot create {path}: {source}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent's blocking worker failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
    #[error("cannot adopt the running instances of `{service}`: {reason}")]
    Adopt { service: String, reason: String },
    #[error("{what} is gone: the agent is stopping")]
    ActorGone { what: String },
    #[error(
        "fencing token {offered} for `{service}` is not the token of its deployment lock {key} in etcd ({}): refused, nothing recorded",
        held_by(*.held)
    )]
    NotTheLock {
        service: String,
        offered: u64,
        key: String,
        /// The lock's token; `None`: nobody holds it.
        held: Option<u64>,
    },
    #[error(
        "cannot check fencing token {offered} for `{service}` against its deployment lock {key} in etcd: refused for now, nothing recorded; the coordinator tries again"
    )]
    FenceUnverified {
        service: String,
        offered: u64,
        key: String,
        #[source]
        source: Option<Box<crate::cluster::LockReadError>>,
    },
    #[error(
        "etcd cannot say what the fencing high-water mark {high_water} of `{service}` may be lowered to ({etcd}); to reset it to 0 anyway: agentctl fence reset {service} --force --reason TEXT (audited)"
    )]
    FenceResetNeedsForce {
        service: String,
        high_water: u64,
        etcd: String,
    },
    #[error(
        "the fencing high-water mark of `{service}` moved from {read} to {now} while resetting it (a command arrived): nothing reset; run agentctl fence again"
    )]
    FenceMoved {
        service: String,
        read: u64,
        now: u64,
    },
}

/// How a refusal names the deployment lock etcd holds.
fn held_by(held: Option<u64>) -> String {
    match held {
        Some(token) => format!("held with token {token}"),
        None => "nobody holds it".to_owned(),
    }
}

impl HostError {
    /// The wire refusal reason for this error.
    pub fn refusal(&self) -> proto::v1::RefusalReason {
        use proto::v1::RefusalReason as R;
        match self {
            Self::UnknownService { .. } => R::UnknownService,
            Self::NoPreviousRelease { .. } => R::NoPreviousRelease,
            Self::StaleToken(_) | Self::Superseded(_) | Self::NotTheLock { .. } => {
                R::StaleFencingToken
            }
            Self::FenceUnverified { .. } => R::FencingUnverified,
            Self::Busy { .. } => R::Busy,
            Self::ReleaseUnavailable { .. } | Self::Bundle(_) => R::ReleaseUnavailable,
            Self::Cluster(_) => R::BudgetExhausted,
            Self::SwitchFailed(_)
            | Self::Sockets { .. }
            | Self::Instance { .. }
            | Self::State(_)
            | Self::Directory { .. }
            | Self::Worker(_)
            | Self::Adopt { .. }
            | Self::ActorGone { .. }
            | Self::FenceResetNeedsForce { .. }
            | Self::FenceMoved { .. } => R::Unspecified,
        }
    }
}

/// Why a release did not take over, and what kept serving.
#[derive(Debug)]
pub struct SwitchFailure {
    pub service: String,
    pub version: String,
    pub digest: String,
    pub reason: String,
    /// What serves now: the old release, restored or untouched.
    pub kept: String,
    /// The new release's last log lines.
    pub log_tail: String,
}

impl std::fmt::Display for SwitchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "release {} ({}) of `{}` did not become ready: {}",
            self.version, self.digest, self.service, self.reason
        )?;
        if !self.kept.is_empty() {
            write!(f, "; {}", self.kept)?;
        }
        write!(f, "\nlast log lines of the new release:\n{}", self.log_tail)
    }
}

/// A command cancelled because one with a higher fencing token arrived
/// (see `admission`), and what serves instead.
#[derive(Debug)]
pub struct Superseded {
    pub service: String,
    /// The newer command's token.
    pub by_token: u64,
    /// What was cancelled: "the switch to 2.0.0 (sha256:…)", "the restart".
    pub what: String,
    /// What serves now.
    pub kept: String,
}

impl std::fmt::Display for Superseded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of `{}` was superseded by a command with fencing token {}",
            self.what, self.service, self.by_token
        )?;
        if !self.kept.is_empty() {
            write!(f, "; {}", self.kept)?;
        }
        Ok(())
    }
}

/// The release a service runs, with its sockets and instances.
#[derive(Debug)]
struct Running {
    release: StoredRelease,
    sockets: ListenSockets,
    instances: Vec<HostedInstance>,
}

/// What carrying out a plan left.
enum Executed {
    /// The target runs (the caller makes it durable); the old instances
    /// still to stop (they drain after the target is durable).
    Committed {
        running: Running,
        retiring: Vec<HostedInstance>,
    },
    /// A step failed and the service was brought back: what runs now.
    Failed {
        running: Option<Running>,
        error: HostError,
    },
}

/// The instances a failed plan leaves, by slot.
struct Bench {
    /// What ran before, with its sockets.
    old_release: Option<(StoredRelease, ListenSockets)>,
    old_slots: BTreeMap<u32, HostedInstance>,
    new_slots: BTreeMap<u32, HostedInstance>,
}

fn by_slot(instances: Vec<HostedInstance>) -> BTreeMap<u32, HostedInstance> {
    instances.into_iter().map(|i| (i.slot(), i)).collect()
}

fn take_slots(from: &mut BTreeMap<u32, HostedInstance>, slots: &[u32]) -> Vec<HostedInstance> {
    slots.iter().filter_map(|s| from.remove(s)).collect()
}

/// A service's handle: its actor (`actor`), which takes every command
/// and runs one at a time (a second is refused as busy, or supersedes the
/// one in flight: `admission`), and its runtime, which the command running
/// writes and readers (status, logs) take only briefly — so a reader can
/// never make a command look busy.
#[derive(Debug)]
struct ServiceEntry {
    actor: tokio::sync::mpsc::Sender<Message<Command>>,
    runtime: Mutex<ServiceRuntime>,
}

/// An Apply the service's actor has taken: fenced (its mark durable), its
/// release stored. It runs unless a newer command supersedes it;
/// `Host::apply` waits for its outcome.
#[derive(Debug)]
pub struct AcceptedApply {
    done: Done,
}

#[derive(Debug, Default)]
struct ServiceRuntime {
    running: Option<Running>,
    switching: Option<proto::v1::SwitchState>,
    last_error: String,
}

/// Every service on this host: a registry of service handles, plus what
/// they share (state file, release store, budget, fetcher, events).
#[derive(Debug)]
pub struct Host {
    /// Itself, for the service actors it spawns.
    me: std::sync::Weak<Host>,
    config: AgentConfig,
    store: Store,
    state: Mutex<AgentState>,
    services: SyncMutex<BTreeMap<String, Arc<ServiceEntry>>>,
    events: broadcast::Sender<proto::v1::StatusEvent>,
    /// Where instances' exec shim lives: the agent binary itself.
    shim: PathBuf,
    /// The fleet's etcd, when configured: registration and the budget.
    cluster: Option<ClusterLink>,
    /// Gets releases an Apply names from the coordinators, when configured.
    fetcher: Option<ReleaseFetcher>,
    /// The agent's Prometheus metrics (`telemetry`).
    metrics: AgentMetrics,
}

/// Who asked for a restart, and whether it skips the budget.
#[derive(Debug, Clone, Default)]
pub struct RestartOrder {
    /// The coordinator's fencing token; `None` for agentctl.
    pub token: Option<u64>,
    /// Break-glass: no slot is taken; the action is audited.
    pub forced: bool,
    pub reason: String,
    /// The caller's uid (agentctl), for the audit record.
    pub actor_uid: Option<u32>,
}

impl Host {
    /// Opens the release store and the durable state. Blocking work runs on
    /// the blocking pool.
    pub async fn open(config: AgentConfig, shim: PathBuf) -> Result<Arc<Self>, HostError> {
        Self::open_with_metrics(config, shim, AgentMetrics::default()).await
    }

    /// Like `open`, counting into `metrics` (the daemon serves them).
    pub async fn open_with_metrics(
        config: AgentConfig,
        shim: PathBuf,
        metrics: AgentMetrics,
    ) -> Result<Arc<Self>, HostError> {
        let cfg = config.clone();
        let (store, state) = tokio::task::spawn_blocking(move || {
            let trusted = TrustedKeys::load(&cfg.trusted_keys)
                .map_err(|e| HostError::Bundle(StoreError::Signature(e)))?;
            let store =
                Store::open(cfg.release_store(), cfg.limits, trusted).map_err(HostError::Bundle)?;
            let state = AgentState::load(&cfg.state_file())?;
            for dir in [cfg.log_dir(), cfg.runtime_dir(), cfg.process_dir()] {
                std::fs::create_dir_all(&dir).map_err(|source| HostError::Directory {
                    path: dir.clone(),
                    source,
                })?;
            }
            Ok::<_, HostError>((store, state))
        })
        .await??;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let cluster = config.etcd.clone().map(|settings| {
            let record = AgentRecord::current(
                config.id.as_str(),
                config.cluster.as_str(),
                &config.grpc_advertise,
                &config.data_dir,
            );
            ClusterLink::start(&config, settings, record, metrics.clone())
        });
        let fetcher = config.coordinator.as_ref().map(|c| {
            ReleaseFetcher::new(c, config.incoming_dir(), store.clone())
                .with_tls(config.tls.as_ref().map(|t| t.material.clone()))
                .counting_into(metrics.fetch_bytes())
        });
        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            cluster,
            fetcher,
            config,
            store,
            state: Mutex::new(state),
            services: SyncMutex::new(BTreeMap::new()),
            events,
            shim,
            metrics,
        }))
    }

    /// The agent's metrics.
    pub fn metrics(&self) -> &AgentMetrics {
        &self.metrics
    }

    /// Brings the gauges read at scrape up to date: every service's
    /// instances by state, and the etcd session. A service whose runtime a
    /// command holds now (a switch) keeps its previous counts.
    pub fn refresh_gauges(&self) {
        for (service, entry) in self.named_entries() {
            if let Ok(rt) = entry.runtime.try_lock() {
                let states: Vec<InstanceState> = rt
                    .running
                    .as_ref()
                    .map(|r| r.instances.iter().map(HostedInstance::state).collect())
                    .unwrap_or_default();
                self.metrics.set_instances(&service, &states);
            }
        }
        self.metrics
            .set_etcd_session(self.cluster.as_ref().is_some_and(|c| c.session().is_some()));
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Runs every service's current release (agent start): adopting the
    /// processes a previous agent left running where they are of that
    /// release, stopping those that are not, starting the rest. A service
    /// whose release cannot start is reported and left stopped; the others
    /// start.
    pub async fn reconcile(&self) -> Vec<(String, HostError)> {
        let found = self.recorded_processes().await;
        self.stop_strays(found.iter().map(|f| f.record.pid).collect())
            .await;
        let mut recorded: BTreeMap<String, Vec<Recorded>> = BTreeMap::new();
        for found in found {
            recorded
                .entry(found.record.service.clone())
                .or_default()
                .push(found);
        }
        let current: Vec<(String, String)> = {
            let state = self.state.lock().await;
            state
                .services
                .iter()
                .filter_map(|(name, s)| {
                    s.current.as_ref().map(|c| (name.clone(), c.digest.clone()))
                })
                .collect()
        };
        let mut failures = Vec::new();
        for (service, digest) in current {
            let found = recorded.remove(&service).unwrap_or_default();
            let result = async {
                let release = match self.stored(&digest).await {
                    Ok(release) => release,
                    Err(err) => {
                        stop_unwanted(&self.config.process_dir(), found).await;
                        return Err(err);
                    }
                };
                let slots = release.manifest.run().instances;
                let (adopt, unwanted): (Vec<_>, Vec<_>) = found.into_iter().partition(|f| {
                    record::verdict(&f.record, true, Some(&digest), slots) == Verdict::Adopt
                });
                stop_unwanted(&self.config.process_dir(), unwanted).await;
                if !adopt.is_empty() {
                    let adopting = Command::Adopt {
                        release: release.clone(),
                        found: adopt,
                    };
                    match self.carry_out(&service, None, adopting).await {
                        Ok(message) => return Ok(message),
                        Err(err) => tracing::warn!(
                            service,
                            error = %err,
                            "adoption failed; the adopted processes were stopped, starting the release fresh"
                        ),
                    }
                }
                self.carry_out(&service, None, Command::Start(release)).await
            }
            .await;
            match result {
                Ok(_) => {
                    tracing::info!(service, digest, "service reconciled to its current release")
                }
                Err(err) => {
                    tracing::error!(service, digest, error = %err, "cannot start the current release");
                    failures.push((service, err));
                }
            }
        }
        // Services with no current release keep nothing running.
        for (_, found) in recorded {
            stop_unwanted(&self.config.process_dir(), found).await;
        }
        failures
    }

    /// Stops app processes a previous agent started but never recorded (it
    /// died in between): nothing could adopt them, and they would hold the
    /// service's port.
    async fn stop_strays(&self, known: Vec<u32>) {
        let runtime_dir = self.config.runtime_dir();
        let strays =
            tokio::task::spawn_blocking(move || record::find_strays(&runtime_dir, &known)).await;
        let strays = match strays {
            Ok(strays) => strays,
            Err(err) => {
                tracing::error!(error = %err, "looking for unrecorded app processes failed");
                return;
            }
        };
        let mut stops = tokio::task::JoinSet::new();
        for (pid, pidfd) in strays {
            tracing::warn!(pid, "stopping an app process that no record names");
            stops.spawn(record::stop_process(
                pid,
                pidfd,
                nix::sys::signal::Signal::SIGTERM,
                STRAY_STOP_TIMEOUT,
            ));
        }
        while let Some(result) = stops.join_next().await {
            if let Err(err) = result {
                tracing::error!(error = %err, "a stray process stop task failed");
            }
        }
    }

    /// The live processes a previous agent recorded (records of processes
    /// that are gone are removed).
    async fn recorded_processes(&self) -> Vec<Recorded> {
        let dir = self.config.process_dir();
        let loaded = tokio::task::spawn_blocking(move || {
            let boot_id = record::boot_id();
            let mut alive = Vec::new();
            for (path, parsed) in record::load_all(&dir)? {
                let found = match parsed {
                    Ok(r) => record::open_if_alive(&r, &boot_id)
                        .map(|pidfd| Recorded { record: r, pidfd }),
                    Err(err) => {
                        tracing::warn!(error = %err, "ignoring an unreadable process record");
                        None
                    }
                };
                match found {
                    Some(found) => alive.push(found),
                    None => {
                        if let Err(err) = record::remove(&path) {
                            tracing::warn!(error = %err, "cannot remove a stale process record");
                        }
                    }
                }
            }
            Ok::<_, record::RecordError>(alive)
        })
        .await;
        match loaded {
            Ok(Ok(alive)) => {
                if !alive.is_empty() {
                    tracing::info!(
                        processes = alive.len(),
                        "found instance processes left running by a previous agent"
                    );
                }
                alive
            }
            Ok(Err(err)) => {
                tracing::error!(error = %err, "cannot read process records; nothing is adopted");
                Vec::new()
            }
            Err(err) => {
                tracing::error!(error = %err, "process record reader failed; nothing is adopted");
                Vec::new()
            }
        }
    }

    /// Takes over `found` (live processes of `release`): sockets from the
    /// first, an adopted instance per recorded slot, fresh ones for the
    /// others, all ready within the healthy deadline. On failure every
    /// process is stopped (none is left unsupervised).
    async fn adopt(
        &self,
        service: &str,
        release: &StoredRelease,
        mut found: Vec<Recorded>,
    ) -> Result<String, HostError> {
        let runtime = self.runtime(service);
        let mut rt = runtime.runtime.lock().await;
        let listen = self.listen(service, release);
        let adopt_err = |reason: String| HostError::Adopt {
            service: service.to_owned(),
            reason,
        };
        let names: Vec<String> = listen.iter().map(|l| l.name.clone()).collect();
        let sockets = match found.first() {
            Some(first) if first.record.sockets == names => {
                record::take_sockets(&first.record, &first.pidfd)
                    .map_err(|e| {
                        // EPERM: a seccomp filter refuses pidfd_getfd (a
                        // container's default one, e.g. systemd-nspawn's)
                        // or the agent lacks CAP_SYS_PTRACE over the app.
                        let hint =
                            if e.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) {
                                "; the agent needs the pidfd_getfd system call and CAP_SYS_PTRACE \
                             (in a container, allow them: see the operator guide)"
                            } else {
                                ""
                            };
                        adopt_err(format!(
                            "cannot duplicate the sockets of pid {}: {e}{hint}",
                            first.record.pid
                        ))
                    })
                    .and_then(|fds| {
                        ListenSockets::recover(&listen, fds).map_err(|e| adopt_err(e.to_string()))
                    })
            }
            Some(first) => Err(adopt_err(format!(
                "pid {} was handed sockets {:?}, the release listens on {names:?}",
                first.record.pid, first.record.sockets
            ))),
            None => Err(adopt_err("no process to adopt".to_owned())),
        };
        let sockets = match sockets {
            Ok(sockets) => sockets,
            Err(err) => {
                stop_unwanted(&self.config.process_dir(), found).await;
                return Err(err);
            }
        };
        let count = release.manifest.run().instances;
        let mut instances = Vec::new();
        for slot in 0..count {
            let adopted = found
                .iter()
                .position(|f| f.record.slot == slot)
                .map(|i| found.swap_remove(i));
            let started = match adopted {
                Some(f) => {
                    tracing::info!(
                        service,
                        slot,
                        pid = f.record.pid,
                        "adopting instance process"
                    );
                    self.adopt_instance(release, &sockets, f)
                }
                None => self.start_instance(release, &sockets, slot),
            };
            match started {
                Ok(instance) => instances.push(instance),
                Err(err) => {
                    stop_all(instances).await;
                    stop_unwanted(&self.config.process_dir(), found).await;
                    return Err(err);
                }
            }
        }
        // Two records for one slot cannot both be adopted.
        stop_unwanted(&self.config.process_dir(), found).await;
        let instances = self.wait_ready(service, release, instances).await?;
        rt.running = Some(Running {
            release: release.clone(),
            sockets,
            instances,
        });
        rt.last_error.clear();
        Ok(format!(
            "{service} keeps running {} ({}): adopted",
            release.manifest.version(),
            release.digest
        ))
    }

    /// Verifies and unpacks a bundle, then switches its service to it.
    /// Returns the service and what happened.
    pub async fn install(&self, bundle: PathBuf) -> Result<(String, String), HostError> {
        let store = self.store.clone();
        let digest = tokio::task::spawn_blocking(move || store.put(&bundle))
            .await?
            .map_err(HostError::Bundle)?;
        let release = self.stored(&digest.to_string()).await?;
        let service = release.manifest.service().to_string();
        let message = self
            .carry_out(&service, None, Command::Install(release))
            .await?;
        Ok((service, message))
    }

    /// Who this agent is, on the wire.
    pub fn identity(&self) -> proto::v1::AgentIdentity {
        let hostname = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        proto::v1::AgentIdentity {
            agent_id: self.config.id.to_string(),
            cluster: self.config.cluster.to_string(),
            hostname,
            grpc_address: self.config.grpc_advertise.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            services: self
                .config
                .services
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }

    /// The outcome of an Apply `accept_apply` got taken: its switch, or
    /// why it did not happen (failed, superseded).
    pub async fn apply(&self, accepted: AcceptedApply) -> Result<String, HostError> {
        accepted.done.outcome().await
    }

    /// Gets an Apply taken by its service's actor or refuses it: token not
    /// stale, release present (fetched from the coordinators first if it
    /// is not) and of this service, the token the one of the service's
    /// deployment lock in etcd (`fence`), then admitted by the supersede
    /// rule (`admission`: the mark raised and durable, a command with an
    /// older token in flight cancelled; busy or stale refused). A refused
    /// Apply writes nothing durable.
    pub async fn accept_apply(
        &self,
        service: &str,
        digest: &str,
        token: u64,
        deployment: &str,
    ) -> Result<AcceptedApply, HostError> {
        // A stale command is refused before the caller waits for a fetch.
        self.refuse_stale(service, token).await?;
        let release = self.stored_or_fetched(digest).await?;
        of_service(&release, service)?;
        self.vouched(service, token).await?;
        let trigger = Trigger::Apply {
            deployment: deployment.to_owned(),
            token,
        };
        let done = self
            .order(service, Some(token), Command::Apply { release, trigger })
            .await?;
        Ok(AcceptedApply { done })
    }

    /// A token older than the service's mark, refused before anything else.
    async fn refuse_stale(&self, service: &str, token: u64) -> Result<(), HostError> {
        let high_water = self.high_water(service).await;
        if token < high_water {
            return Err(HostError::StaleToken(StaleToken {
                service: service.to_owned(),
                offered: token,
                high_water,
            }));
        }
        Ok(())
    }

    /// Gives `command` to the service's actor: `Done` once it is taken.
    async fn order(
        &self,
        service: &str,
        token: Option<u64>,
        command: Command,
    ) -> Result<Done, HostError> {
        let actor = self.runtime(service).actor.clone();
        let gone = || HostError::ActorGone {
            what: format!("the actor of `{service}`"),
        };
        let (taken, answer) = tokio::sync::oneshot::channel();
        let order = Order {
            token,
            command,
            taken,
        };
        actor
            .send(Message::Order(order))
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// `order`, then its outcome.
    async fn carry_out(
        &self,
        service: &str,
        token: Option<u64>,
        command: Command,
    ) -> Result<String, HostError> {
        self.order(service, token, command).await?.outcome().await
    }

    /// The coordinator's Stage: the release is fetched (unless stored) and
    /// verified, so that its Apply needs no download; then, its token
    /// vouched for by etcd, the mark is raised. A refused Stage (stale or
    /// unvouched token, a release that is not there or not this
    /// service's) writes nothing durable.
    pub async fn stage(&self, service: &str, digest: &str, token: u64) -> Result<(), HostError> {
        // Refused before the caller waits for a fetch.
        self.refuse_stale(service, token).await?;
        let release = self.stored_or_fetched(digest).await?;
        of_service(&release, service)?;
        self.vouched(service, token).await?;
        self.raise_mark(service, token).await
    }

    /// Sends the service's status to `WatchStatus` watchers (a switch ended).
    pub async fn publish_service(&self, service: &str) {
        if let Ok(mut services) = self.status(service).await {
            let event = proto::v1::StatusEvent {
                at_unix_ms: wire::now_unix_ms(),
                instance: None,
                service: services.pop(),
            };
            // No receivers is fine: nobody is watching.
            let _ = self.events.send(event);
        }
    }

    /// Switches back to the release that ran before the current one.
    pub async fn rollback(&self, service: &str, token: Option<u64>) -> Result<String, HostError> {
        self.known(service).await?;
        if let Some(token) = token {
            let has_previous = self
                .state
                .lock()
                .await
                .services
                .get(service)
                .is_some_and(|s| !s.previous.is_empty());
            if !has_previous {
                return Err(HostError::NoPreviousRelease {
                    service: service.to_owned(),
                });
            }
            self.vouched(service, token).await?;
        }
        self.carry_out(service, token, Command::Rollback).await
    }

    /// The rollback, as the service's actor runs it: the previous release
    /// is read now (a superseded switch is over by then).
    async fn rollback_now(
        &self,
        service: &str,
        steer: (Cancel, Joined<Command>),
    ) -> Result<String, HostError> {
        let previous = {
            let state = self.state.lock().await;
            let known = state
                .services
                .get(service)
                .ok_or_else(|| HostError::UnknownService {
                    service: service.to_owned(),
                })?;
            known
                .previous
                .first()
                .map(|r| r.digest.clone())
                .ok_or_else(|| HostError::NoPreviousRelease {
                    service: service.to_owned(),
                })?
        };
        let release = self.stored(&previous).await?;
        self.switch_taken(service, release, Some(Trigger::Rollback), steer)
            .await
    }

    /// Refuses a service the durable state does not know.
    async fn known(&self, service: &str) -> Result<(), HostError> {
        if self.state.lock().await.services.contains_key(service) {
            Ok(())
        } else {
            Err(HostError::UnknownService {
                service: service.to_owned(),
            })
        }
    }

    /// Restarts every instance of a service one by one, each replacement
    /// ready before its predecessor stops (where the overlap mode allows).
    pub async fn restart(&self, service: &str, order: RestartOrder) -> Result<String, HostError> {
        self.existing_runtime(service)?;
        let token = order.token;
        if let Some(token) = token {
            self.vouched(service, token).await?;
        }
        self.carry_out(service, token, Command::Restart(order))
            .await
    }

    /// The restart, as the service's actor runs it.
    async fn restart_now(
        &self,
        service: &str,
        order: RestartOrder,
        mut cancel: Cancel,
    ) -> Result<String, HostError> {
        let runtime = self.existing_runtime(service)?;
        let mut rt = runtime.runtime.lock().await;
        if rt.running.is_none() {
            return Err(HostError::UnknownService {
                service: service.to_owned(),
            });
        }
        let disruption = if order.forced {
            self.audit_forced(service, &order).await?;
            Slot::none()
        } else {
            self.take_slot(
                service,
                &format!("restart {service}: {}", order.reason),
                &mut cancel,
            )
            .await?
        };
        let Some(running) = rt.running.take() else {
            disruption.release().await;
            return Err(HostError::UnknownService {
                service: service.to_owned(),
            });
        };
        let release = running.release.clone();
        let sockets = running.sockets.clone();
        let trigger = Trigger::Restart {
            forced: order.forced,
            reason: order.reason.clone(),
        };
        let executed = self
            .execute(
                service,
                plan::Command::Restart,
                Some(running),
                (&release, sockets),
                cancel,
            )
            .await;
        let outcome = match executed {
            Executed::Committed { running, retiring } => {
                rt.running = Some(running);
                stop_all(retiring).await;
                Ok(())
            }
            Executed::Failed { running, error } => {
                rt.running = running;
                Err(error)
            }
        };
        disruption.release().await;
        let record = record_of(&release);
        match outcome {
            Ok(()) => {
                rt.last_error.clear();
                self.persist(service, record, trigger, SwitchOutcome::Succeeded)
                    .await?;
                Ok(format!(
                    "restarted every instance of {service} on {}",
                    release.manifest.version()
                ))
            }
            Err(err) => {
                rt.last_error = chain(&err);
                let failed = SwitchOutcome::Failed {
                    reason: rt.last_error.clone(),
                };
                self.persist(service, record, trigger, failed).await?;
                Err(err)
            }
        }
    }

    /// A budget slot for a planned disruption; waiting for one ends when
    /// a newer command supersedes this one.
    async fn take_slot(
        &self,
        service: &str,
        purpose: &str,
        cancel: &mut Cancel,
    ) -> Result<Slot, HostError> {
        let Some(cluster) = &self.cluster else {
            return Ok(Slot::none());
        };
        tokio::select! {
            slot = cluster.take_slot(service, purpose) => Ok(slot?),
            by_token = cancel.superseded() => Err(HostError::Superseded(Box::new(Superseded {
                service: service.to_owned(),
                by_token,
                what: format!("the {purpose}"),
                kept: "it was waiting for a budget slot; nothing was touched".to_owned(),
            }))),
        }
    }

    /// A forced restart skips the budget, so it is recorded first: in etcd
    /// when reachable, else locally until it is.
    async fn audit_forced(&self, service: &str, order: &RestartOrder) -> Result<(), HostError> {
        let target = format!("{}/{service}", self.config.id);
        let record =
            crate::cluster::break_glass(order.actor_uid, "forced-restart", &target, &order.reason);
        self.audit(record).await
    }

    /// Records a break-glass action: in etcd when reachable, else locally
    /// until it is.
    async fn audit(&self, record: leases::AuditRecord) -> Result<(), HostError> {
        match &self.cluster {
            Some(cluster) => cluster.audit(record).await?,
            None => {
                let path = self.config.local_audit_file();
                tokio::task::spawn_blocking(move || crate::cluster::append_local(&path, &record))
                    .await??;
            }
        }
        Ok(())
    }

    /// The cluster link, when this agent uses etcd.
    pub fn cluster(&self) -> Option<&ClusterLink> {
        self.cluster.as_ref()
    }

    /// The core: switch `service` to `target` (see the module doc), as the
    /// service's actor runs it; over when the old instances have drained.
    /// `trigger` is `None` when reconciling at start (nothing to record).
    /// A newer command superseding this one cancels it while it waits for
    /// a budget slot or for the new instances to be ready; one rolling it
    /// forward (same target) is `joined`: the switch is recorded as its.
    async fn switch_taken(
        &self,
        service: &str,
        target: StoredRelease,
        trigger: Option<Trigger>,
        (mut cancel, joined): (Cancel, Joined<Command>),
    ) -> Result<String, HostError> {
        // Recorded as the newest command it was rolled forward to; nothing
        // joins once the outcome is known (`close`).
        let cause =
            |trigger: Option<Trigger>| joined.close().and_then(Command::into_trigger).or(trigger);
        let runtime = self.runtime(service);
        let mut rt = runtime.runtime.lock().await;
        if rt
            .running
            .as_ref()
            .is_some_and(|r| r.release.digest == target.digest)
        {
            drop(rt);
            return self.already_running(service, &target, cause(trigger)).await;
        }
        let disruption = match (&trigger, rt.running.is_some()) {
            (Some(trigger), true) => {
                self.switch_slot(service, &target, trigger, &mut cancel)
                    .await?
            }
            // Starting a service that is not running (agent start)
            // disrupts nothing.
            _ => Slot::none(),
        };
        let old = rt.running.take();
        rt.switching = Some(proto::v1::SwitchState::Switching);
        let result = self
            .switch_locked(service, old, &target, &mut rt, cancel)
            .await;
        rt.switching = None;
        let trigger = cause(trigger);
        let record = record_of(&target);
        let recorded = trigger.is_some();
        match result {
            Ok(retiring) => {
                rt.last_error.clear();
                let persisted = match trigger {
                    Some(trigger) => {
                        self.persist(service, record, trigger, SwitchOutcome::Succeeded)
                            .await
                    }
                    None => Ok(()),
                };
                drop(rt);
                // The target serves and is durable: say so before the old
                // instances drain, so a rollout need not wait for their
                // stop. The budget slot and the command stay held until
                // they are gone: the disruption lasts that long.
                if persisted.is_ok() {
                    self.publish_service(service).await;
                }
                stop_all(retiring).await;
                disruption.release().await;
                persisted?;
                if recorded {
                    self.collect_garbage().await;
                }
                Ok(format!(
                    "{service} now runs {} ({})",
                    target.manifest.version(),
                    target.digest
                ))
            }
            Err(err) => {
                disruption.release().await;
                // The whole story, log tail included: this is what the
                // coordinator's history and `agentctl status` show.
                rt.last_error = chain(&err);
                if let Some(trigger) = trigger {
                    let failed = SwitchOutcome::Failed {
                        reason: rt.last_error.clone(),
                    };
                    self.persist(service, record, trigger, failed).await?;
                }
                Err(err)
            }
        }
    }

    /// The budget slot of a switch: a planned disruption.
    async fn switch_slot(
        &self,
        service: &str,
        target: &StoredRelease,
        trigger: &Trigger,
        cancel: &mut Cancel,
    ) -> Result<Slot, HostError> {
        let purpose = format!(
            "{} {service} to {}",
            wire::trigger(trigger),
            target.manifest.version()
        );
        self.take_slot(service, &purpose, cancel).await
    }

    /// The target already runs: a re-issued command (a new coordinator
    /// resuming), or one that superseded a switch away from it. Nothing to
    /// do but say so, durably for a command (its deployment and token are
    /// what the coordinator reads back).
    async fn already_running(
        &self,
        service: &str,
        target: &StoredRelease,
        trigger: Option<Trigger>,
    ) -> Result<String, HostError> {
        if let Some(trigger) = trigger {
            self.runtime(service)
                .runtime
                .lock()
                .await
                .last_error
                .clear();
            self.persist(
                service,
                record_of(target),
                trigger,
                SwitchOutcome::Succeeded,
            )
            .await?;
            self.publish_service(service).await;
        }
        Ok(format!(
            "{service} already runs {} ({})",
            target.manifest.version(),
            target.digest
        ))
    }

    async fn switch_locked(
        &self,
        service: &str,
        old: Option<Running>,
        target: &StoredRelease,
        rt: &mut ServiceRuntime,
        cancel: Cancel,
    ) -> Result<Vec<HostedInstance>, HostError> {
        // The agent keeps the sockets across versions when the addresses
        // stay the same: that is what lets old and new serve together.
        let sockets = match &old {
            Some(o) if self.listen(service, &o.release) == self.listen(service, target) => {
                o.sockets.clone()
            }
            _ => match self.bind(service, target) {
                Ok(sockets) => sockets,
                Err(err) => {
                    rt.running = old;
                    return Err(err);
                }
            },
        };
        match self
            .execute(
                service,
                plan::Command::Switch,
                old,
                (target, sockets),
                cancel,
            )
            .await
        {
            Executed::Committed { running, retiring } => {
                rt.running = Some(running);
                Ok(retiring)
            }
            Executed::Failed { running, error } => {
                rt.running = running;
                Err(error)
            }
        }
    }

    /// Carries out `command` (see `plan`): `old` is what runs, `target`
    /// the release to run on its sockets (a restart: the same release).
    /// Superseded while new instances start: they are stopped and the
    /// service brought back like after any failed step.
    async fn execute(
        &self,
        service: &str,
        command: plan::Command,
        old: Option<Running>,
        (target, sockets): (&StoredRelease, ListenSockets),
        mut cancel: Cancel,
    ) -> Executed {
        let (old_release, mut old_slots) = match old {
            Some(r) => (Some((r.release, r.sockets)), by_slot(r.instances)),
            None => (None, BTreeMap::new()),
        };
        let running = u32::try_from(old_slots.len()).unwrap_or(u32::MAX);
        let view = plan::View {
            running,
            target: match command {
                plan::Command::Switch => target.manifest.run().instances,
                plan::Command::Restart => running,
            },
            overlap: target.manifest.overlap(),
        };
        let mut new_slots = BTreeMap::new();
        let mut committed = false;
        let mut retiring = Vec::new();
        for step in plan::plan(command, view) {
            match step {
                plan::Step::StartNew(slots) => {
                    let started = self
                        .start_slots(service, target, (&sockets, &slots), &mut cancel)
                        .await;
                    match started {
                        Ok(started) => new_slots.extend(by_slot(started)),
                        Err(error) => {
                            let occupancy = plan::Occupancy {
                                old: old_slots.keys().copied().collect(),
                                new: new_slots.keys().copied().collect(),
                            };
                            let steps = plan::recover(command, view, &occupancy);
                            let bench = Bench {
                                old_release,
                                old_slots,
                                new_slots,
                            };
                            let (running, kept) =
                                self.recover(service, command, steps, bench).await;
                            return Executed::Failed {
                                running,
                                error: with_kept(error, &kept),
                            };
                        }
                    }
                }
                plan::Step::StopOld(slots) if committed => {
                    retiring.extend(take_slots(&mut old_slots, &slots));
                }
                plan::Step::StopOld(slots) => stop_all(take_slots(&mut old_slots, &slots)).await,
                plan::Step::Commit => committed = true,
                // Recovery steps: `plan` never returns them.
                plan::Step::StopNew(_) | plan::Step::StartOld(_) => {}
            }
        }
        retiring.extend(old_slots.into_values());
        Executed::Committed {
            running: Running {
                release: target.clone(),
                sockets,
                instances: new_slots.into_values().collect(),
            },
            retiring,
        }
    }

    /// Brings the service back after a failed step (`plan::recover`);
    /// returns what runs now and what to tell about it.
    async fn recover(
        &self,
        service: &str,
        command: plan::Command,
        steps: Vec<plan::Step>,
        bench: Bench,
    ) -> (Option<Running>, String) {
        let Bench {
            old_release,
            mut old_slots,
            mut new_slots,
        } = bench;
        let what = match command {
            plan::Command::Switch => "the old release",
            plan::Command::Restart => "the old instance",
        };
        let mut kept = match old_release {
            Some(_) => format!("{what} keeps serving"),
            None => String::new(),
        };
        for step in steps {
            match step {
                plan::Step::StopNew(slots) => stop_all(take_slots(&mut new_slots, &slots)).await,
                plan::Step::StartOld(slots) => {
                    let Some((release, sockets)) = &old_release else {
                        continue;
                    };
                    let (started, verdict) =
                        self.restore_slots(service, release, sockets, &slots).await;
                    old_slots.extend(by_slot(started));
                    kept = match verdict {
                        Ok(()) => format!("{what} was started again and serves"),
                        Err(reason) => format!(
                            "{what} was started again but is not ready ({reason}); its supervisor keeps restarting it"
                        ),
                    };
                }
                plan::Step::StartNew(_) | plan::Step::StopOld(_) | plan::Step::Commit => {}
            }
        }
        let Some((release, sockets)) = old_release else {
            stop_all(new_slots.into_values().collect()).await;
            return (None, kept);
        };
        // A restart's already restarted slots run the same release.
        old_slots.extend(new_slots);
        let running = Running {
            release,
            sockets,
            instances: old_slots.into_values().collect(),
        };
        (Some(running), kept)
    }

    /// Starts `release` again in `slots` and keeps every instance that
    /// started, ready in time or not: its supervisor restarts it with
    /// backoff, so a slot never stays empty. The verdict says whether all
    /// became ready.
    async fn restore_slots(
        &self,
        service: &str,
        release: &StoredRelease,
        sockets: &ListenSockets,
        slots: &[u32],
    ) -> (Vec<HostedInstance>, Result<(), String>) {
        let mut started = Vec::new();
        let mut verdict = Ok(());
        for &slot in slots {
            match self.start_instance(release, sockets, slot) {
                Ok(instance) => started.push(instance),
                Err(err) => {
                    tracing::error!(service, slot, error = %err, "cannot start the old instance again");
                    verdict = Err(chain(&err));
                }
            }
        }
        let deadline =
            Instant::now() + release.manifest.readiness().timing.healthy_deadline + READY_GRACE;
        for instance in &started {
            if let Err(reason) = wait_instance_ready(instance.subscribe(), deadline).await {
                if verdict.is_ok() {
                    verdict = Err(reason);
                }
            }
        }
        (started, verdict)
    }

    /// Starts `release` in `slots` and waits until all are ready; on
    /// failure, or superseded meanwhile, every one of them is stopped.
    async fn start_slots(
        &self,
        service: &str,
        release: &StoredRelease,
        (sockets, slots): (&ListenSockets, &[u32]),
        cancel: &mut Cancel,
    ) -> Result<Vec<HostedInstance>, HostError> {
        let mut started = Vec::new();
        for &slot in slots {
            match self.start_instance(release, sockets, slot) {
                Ok(instance) => started.push(instance),
                Err(err) => {
                    stop_all(started).await;
                    return Err(err);
                }
            }
        }
        let failed = tokio::select! {
            ready = all_ready(service, release, &started) => match ready {
                Ok(()) => return Ok(started),
                Err(failure) => HostError::SwitchFailed(failure),
            },
            by_token = cancel.superseded() => HostError::Superseded(Box::new(Superseded {
                service: service.to_owned(),
                by_token,
                what: format!(
                    "the start of {} ({})",
                    release.manifest.version(),
                    release.digest
                ),
                kept: String::new(),
            })),
        };
        stop_all(started).await;
        Err(failed)
    }

    fn start_instance(
        &self,
        release: &StoredRelease,
        sockets: &ListenSockets,
        slot: u32,
    ) -> Result<HostedInstance, HostError> {
        self.launch_instance(release, sockets, slot, None)
    }

    fn adopt_instance(
        &self,
        release: &StoredRelease,
        sockets: &ListenSockets,
        found: Recorded,
    ) -> Result<HostedInstance, HostError> {
        let slot = found.record.slot;
        let process = AdoptedProcess {
            pid: found.record.pid,
            pidfd: found.pidfd,
            ready: found.record.ready,
        };
        self.launch_instance(release, sockets, slot, Some(process))
    }

    fn launch_instance(
        &self,
        release: &StoredRelease,
        sockets: &ListenSockets,
        slot: u32,
        adopted: Option<AdoptedProcess>,
    ) -> Result<HostedInstance, HostError> {
        let probe = retarget(
            &release.manifest.readiness().probe,
            release.manifest.listen(),
            &self.listen(release.manifest.service().as_str(), release),
        );
        let (log_dir, runtime_dir, records) = (
            self.config.log_dir(),
            self.config.runtime_dir(),
            self.config.process_dir(),
        );
        let site = InstanceSite {
            log_dir: &log_dir,
            runtime_dir: &runtime_dir,
            shim: &self.shim,
            records: &records,
            events: &self.events,
            metrics: &self.metrics,
        };
        let launched = match adopted {
            Some(process) => {
                HostedInstance::adopt(release, &probe, slot, sockets.clone(), site, process)
            }
            None => HostedInstance::start(release, &probe, slot, sockets.clone(), site),
        };
        launched.map_err(|source| HostError::Instance {
            service: release.manifest.service().to_string(),
            source,
        })
    }

    /// Waits until every instance is ready; on the first failure stops them
    /// all and reports the failing one's log.
    async fn wait_ready(
        &self,
        service: &str,
        release: &StoredRelease,
        instances: Vec<HostedInstance>,
    ) -> Result<Vec<HostedInstance>, HostError> {
        match all_ready(service, release, &instances).await {
            Ok(()) => Ok(instances),
            Err(failure) => {
                stop_all(instances).await;
                Err(HostError::SwitchFailed(failure))
            }
        }
    }

    /// The release's `[[listen]]` sockets with this host's overrides applied.
    fn listen(&self, service: &str, release: &StoredRelease) -> Vec<release::manifest::Listen> {
        let overrides = self.config.listen_overrides.get(service);
        release
            .manifest
            .listen()
            .iter()
            .map(|l| release::manifest::Listen {
                name: l.name.clone(),
                address: overrides
                    .and_then(|o| o.get(&l.name))
                    .copied()
                    .unwrap_or(l.address),
            })
            .collect()
    }

    fn bind(&self, service: &str, release: &StoredRelease) -> Result<ListenSockets, HostError> {
        ListenSockets::bind(&self.listen(service, release), release.manifest.overlap()).map_err(
            |source| HostError::Sockets {
                service: service.to_owned(),
                source,
            },
        )
    }

    /// Refuses a token older than the service's high-water mark, else
    /// raises the mark (durable before the command acts).
    async fn raise_mark(&self, service: &str, token: u64) -> Result<(), HostError> {
        let mut state = self.state.lock().await;
        let before = state.service_mut(service).fencing_high_water;
        state.service_mut(service).admit(service, token)?;
        if state.service_mut(service).fencing_high_water != before {
            // The mark must survive a crash before the command acts.
            self.save(&state).await?;
        }
        Ok(())
    }

    /// The service's durable fencing high-water mark.
    async fn high_water(&self, service: &str) -> u64 {
        let state = self.state.lock().await;
        state
            .services
            .get(service)
            .map_or(0, |s| s.fencing_high_water)
    }

    /// Answers once the service's actor runs and holds no command (agent
    /// shutdown: a finished switch's old instances have drained).
    async fn idle(entry: &ServiceEntry) {
        let (reply, idle) = tokio::sync::oneshot::channel();
        if entry.actor.send(Message::Idle(reply)).await.is_ok() {
            // Err: the actor is gone, so nothing runs.
            let _ = idle.await;
        }
    }

    async fn persist(
        &self,
        service: &str,
        record: ReleaseRecord,
        trigger: Trigger,
        outcome: SwitchOutcome,
    ) -> Result<(), HostError> {
        let mut state = self.state.lock().await;
        state
            .service_mut(service)
            .record_switch(record, trigger, outcome);
        self.save(&state).await
    }

    async fn save(&self, state: &AgentState) -> Result<(), HostError> {
        let snapshot = state.clone();
        let path = self.config.state_file();
        tokio::task::spawn_blocking(move || snapshot.save(&path)).await??;
        Ok(())
    }

    /// Drops unpacked releases no service needs any more.
    async fn collect_garbage(&self) {
        let pinned: Vec<ReleaseDigest> = {
            let state = self.state.lock().await;
            state
                .services
                .values()
                .flat_map(|s| s.pinned())
                .filter_map(|d| d.parse().ok())
                .collect()
        };
        let store = self.store.clone();
        let keep = self.config.keep_releases;
        match tokio::task::spawn_blocking(move || store.gc(keep, &pinned)).await {
            Ok(Ok(removed)) if !removed.is_empty() => {
                tracing::info!(removed = removed.len(), "removed unused releases");
            }
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "release garbage collection failed"),
            Err(err) => tracing::warn!(error = %err, "release garbage collection panicked"),
        }
    }

    async fn stored(&self, digest: &str) -> Result<StoredRelease, HostError> {
        self.lookup(digest)
            .await?
            .ok_or_else(|| HostError::ReleaseUnavailable {
                digest: digest.to_owned(),
                reason: "not in the local release store (install or push it first)".to_owned(),
            })
    }

    /// Like `stored`, fetching the release from the coordinators first when
    /// it is not on this host and coordinators are configured.
    async fn stored_or_fetched(&self, digest: &str) -> Result<StoredRelease, HostError> {
        let Some(fetcher) = &self.fetcher else {
            return self.stored(digest).await;
        };
        if let Some(release) = self.lookup(digest).await? {
            return Ok(release);
        }
        let parsed = parse_digest(digest)?;
        let mut fetched = fetcher.fetch(&parsed).await;
        if let Err(crate::fetch::FetchError::NoSpace { .. }) = &fetched {
            // Space is short: drop the releases no service needs, once.
            tracing::warn!(
                digest,
                "not enough free space for a release; collecting unused releases and trying again"
            );
            self.collect_garbage().await;
            fetched = fetcher.fetch(&parsed).await;
        }
        fetched.map_err(|err| HostError::ReleaseUnavailable {
            digest: digest.to_owned(),
            reason: chain(&err),
        })?;
        self.stored(digest).await
    }

    /// The release, `None` when the store does not have it.
    async fn lookup(&self, digest: &str) -> Result<Option<StoredRelease>, HostError> {
        let parsed = parse_digest(digest)?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.get(&parsed))
            .await?
            .map_err(|e| HostError::ReleaseUnavailable {
                digest: digest.to_owned(),
                reason: chain(&e),
            })
    }

    /// The service's handle; the first use spawns its actor.
    fn runtime(&self, service: &str) -> Arc<ServiceEntry> {
        let mut services = self
            .services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        services
            .entry(service.to_owned())
            .or_insert_with(|| {
                let (actor, inbox) = tokio::sync::mpsc::channel(actor::INBOX);
                let executor = ServiceExecutor {
                    host: self.me.clone(),
                    service: service.to_owned(),
                };
                // Ends when the handle (and so its sender) is dropped.
                tokio::spawn(actor::run(executor, inbox));
                Arc::new(ServiceEntry {
                    actor,
                    runtime: Mutex::default(),
                })
            })
            .clone()
    }

    fn existing_runtime(&self, service: &str) -> Result<Arc<ServiceEntry>, HostError> {
        let services = self
            .services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        services
            .get(service)
            .cloned()
            .ok_or_else(|| HostError::UnknownService {
                service: service.to_owned(),
            })
    }

    /// Every instance state change, for `WatchStatus`.
    pub fn subscribe(&self) -> broadcast::Receiver<proto::v1::StatusEvent> {
        self.events.subscribe()
    }

    /// The wire status of one service, or of all (`service` empty).
    pub async fn status(&self, service: &str) -> Result<Vec<proto::v1::ServiceStatus>, HostError> {
        let runtimes: Vec<(String, Arc<ServiceEntry>)> = {
            let services = self
                .services
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            services
                .iter()
                .filter(|(name, _)| service.is_empty() || name.as_str() == service)
                .map(|(n, r)| (n.clone(), r.clone()))
                .collect()
        };
        if !service.is_empty() && runtimes.is_empty() {
            return Err(HostError::UnknownService {
                service: service.to_owned(),
            });
        }
        let state = self.state.lock().await.clone();
        let mut out = Vec::with_capacity(runtimes.len());
        for (name, runtime) in runtimes {
            let durable = state.services.get(&name).cloned().unwrap_or_default();
            // A switching service reports from its durable state and what the
            // switch has shown so far, without waiting for the switch.
            let (instances, switching, last_error) = match runtime.runtime.try_lock() {
                Ok(rt) => (
                    rt.running
                        .as_ref()
                        .map(|r| r.instances.iter().map(|i| i.wire_status()).collect())
                        .unwrap_or_default(),
                    rt.switching,
                    rt.last_error.clone(),
                ),
                Err(_) => (
                    Vec::new(),
                    Some(proto::v1::SwitchState::Switching),
                    String::new(),
                ),
            };
            out.push(wire::service_status(
                &name, &durable, instances, switching, last_error,
            ));
        }
        Ok(out)
    }

    /// The durable record of one service (for `agentctl releases`).
    pub async fn releases(&self, service: &str) -> Result<crate::state::ServiceState, HostError> {
        let state = self.state.lock().await;
        state
            .services
            .get(service)
            .cloned()
            .ok_or_else(|| HostError::UnknownService {
                service: service.to_owned(),
            })
    }

    /// Log tails of a service's instances: (slot, lines).
    pub async fn logs(
        &self,
        service: &str,
        lines: usize,
    ) -> Result<Vec<(u32, PathBuf, Vec<String>)>, HostError> {
        let runtime = self.existing_runtime(service)?;
        let rt = runtime.runtime.lock().await;
        Ok(rt
            .running
            .as_ref()
            .map(|r| {
                r.instances
                    .iter()
                    .map(|i| (i.slot(), i.log_path().to_owned(), i.log_tail(lines)))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Every service's entry with its name, as it stands now.
    fn named_entries(&self) -> Vec<(String, Arc<ServiceEntry>)> {
        self.services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(name, entry)| (name.clone(), entry.clone()))
            .collect()
    }

    /// Every service's entry, as it stands now.
    fn entries(&self) -> Vec<Arc<ServiceEntry>> {
        self.services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Leaves every instance running, its record durable, for the next
    /// agent to adopt (agent shutdown with `apps_on_agent_stop = "keep"`).
    /// A command in flight holds its service: this waits for it.
    pub async fn detach_all(&self) {
        for runtime in self.entries() {
            // Old instances of a finished switch drain while its command
            // is in flight, and they must be gone before we leave.
            Self::idle(&runtime).await;
            let mut rt = runtime.runtime.lock().await;
            if let Some(running) = rt.running.take() {
                for instance in running.instances {
                    instance.detach().await;
                }
            }
        }
    }

    /// Stops every instance (agent shutdown with `apps_on_agent_stop = "stop"`).
    pub async fn stop_all(&self) {
        for runtime in self.entries() {
            // As in `detach_all`: a finished switch's old instances first.
            Self::idle(&runtime).await;
            let mut rt = runtime.runtime.lock().await;
            if let Some(running) = rt.running.take() {
                stop_all(running.instances).await;
            }
        }
    }
}

/// The readiness probe aimed where this host serves: an http or tcp probe
/// of a `[[listen]]` address that `listen_overrides` moves follows it.
fn retarget(
    probe: &release::manifest::Readiness,
    manifest: &[release::manifest::Listen],
    here: &[release::manifest::Listen],
) -> release::manifest::Readiness {
    use release::manifest::Readiness;
    let moved = |host: &str, port: u16| {
        let ip = match host {
            "localhost" => Some(std::net::IpAddr::from([127, 0, 0, 1])),
            h => h.parse().ok(),
        };
        manifest.iter().zip(here).find_map(|(from, to)| {
            let same = from.address.port() == port
                && (from.address.ip().is_unspecified() || Some(from.address.ip()) == ip);
            (same && from.address != to.address).then_some(to.address)
        })
    };
    match probe {
        Readiness::Http { url } => match moved(url.host(), url.port()) {
            Some(to) => Readiness::Http { url: url.at(to) },
            None => probe.clone(),
        },
        Readiness::Tcp { addr } => match moved(&addr.ip().to_string(), addr.port()) {
            Some(to) => Readiness::Tcp { addr: to },
            None => probe.clone(),
        },
        Readiness::Exec { .. } | Readiness::Notify => probe.clone(),
    }
}

fn record_of(release: &StoredRelease) -> ReleaseRecord {
    ReleaseRecord {
        digest: release.digest.to_string(),
        version: release.manifest.version().to_string(),
        since_unix_ms: wire::now_unix_ms(),
    }
}

fn parse_digest(digest: &str) -> Result<ReleaseDigest, HostError> {
    digest
        .parse()
        .map_err(|e: release::DigestError| HostError::ReleaseUnavailable {
            digest: digest.to_owned(),
            reason: e.to_string(),
        })
}

/// An Apply names both the service and the release: they must agree.
fn of_service(release: &StoredRelease, service: &str) -> Result<(), HostError> {
    if release.manifest.service().as_str() == service {
        return Ok(());
    }
    Err(HostError::ReleaseUnavailable {
        digest: release.digest.to_string(),
        reason: format!(
            "it is a release of `{}`, not of `{service}`",
            release.manifest.service()
        ),
    })
}

fn with_kept(err: HostError, kept: &str) -> HostError {
    match err {
        HostError::SwitchFailed(mut failure) => {
            kept.clone_into(&mut failure.kept);
            HostError::SwitchFailed(failure)
        }
        HostError::Superseded(mut superseded) => {
            kept.clone_into(&mut superseded.kept);
            HostError::Superseded(superseded)
        }
        other => other,
    }
}

/// A live process a previous agent recorded.
#[derive(Debug)]
struct Recorded {
    record: ProcessRecord,
    pidfd: OwnedFd,
}

/// Stops recorded processes nobody adopts, in parallel, and drops their records.
async fn stop_unwanted(dir: &std::path::Path, found: Vec<Recorded>) {
    let mut stops = tokio::task::JoinSet::new();
    for f in found {
        let path = f.record.path_in(dir);
        stops.spawn(async move {
            record::stop_unwanted(&f.record, f.pidfd).await;
            match tokio::task::spawn_blocking(move || record::remove(&path)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(error = %err, "cannot remove a process record"),
                Err(err) => tracing::warn!(error = %err, "process record removal failed"),
            }
        });
    }
    while let Some(result) = stops.join_next().await {
        if let Err(err) = result {
            tracing::error!(error = %err, "a left-over process stop task failed");
        }
    }
}

async fn stop_all(instances: Vec<HostedInstance>) {
    // In parallel: each may wait out its own stop timeout.
    let mut stops = tokio::task::JoinSet::new();
    for instance in instances {
        stops.spawn(instance.stop());
    }
    while let Some(result) = stops.join_next().await {
        if let Err(err) = result {
            tracing::error!(error = %err, "an instance stop task failed");
        }
    }
}

/// Waits until every instance is ready within the release's healthy
/// deadline; the first one that is not, and its log, otherwise. Borrows
/// the instances: whoever owns them stops them.
async fn all_ready(
    service: &str,
    release: &StoredRelease,
    instances: &[HostedInstance],
) -> Result<(), Box<SwitchFailure>> {
    let deadline =
        Instant::now() + release.manifest.readiness().timing.healthy_deadline + READY_GRACE;
    for instance in instances {
        if let Err(reason) = wait_instance_ready(instance.subscribe(), deadline).await {
            return Err(Box::new(SwitchFailure {
                service: service.to_owned(),
                version: release.manifest.version().to_string(),
                digest: release.digest.to_string(),
                reason,
                kept: String::new(),
                log_tail: instance.log_tail(FAILURE_LOG_LINES).join("\n"),
            }));
        }
    }
    Ok(())
}

/// Ready, or why not: it exited, crash-loops, failed, or missed the deadline.
async fn wait_instance_ready(
    mut status: watch::Receiver<InstanceStatus>,
    deadline: Instant,
) -> Result<(), String> {
    let verdict = |s: &InstanceStatus| -> Option<Result<(), String>> {
        if s.restarts > 0
            || matches!(
                s.state,
                InstanceState::CrashLooping | InstanceState::Failed | InstanceState::Stopped
            )
        {
            let exit = s.last_exit.clone().unwrap_or_else(|| s.state.to_string());
            return Some(Err(format!("it {exit}")));
        }
        s.ready.then_some(Ok(()))
    };
    let waited = tokio::time::timeout_at(deadline, status.wait_for(|s| verdict(s).is_some()))
        .await
        .map(|r| r.map(|s| verdict(&s).unwrap_or(Ok(()))));
    match waited {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err("its supervisor ended".to_owned()),
        Err(_) => {
            let s = status.borrow();
            Err(format!(
                "not ready within its healthy_deadline (state {}, {})",
                s.state, s.detail
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use release::manifest::{HttpUrl, Listen, Readiness};

    use super::retarget;

    fn listen(addr: &str) -> Vec<Listen> {
        vec![Listen {
            name: "http".into(),
            address: addr.parse().unwrap(),
        }]
    }

    fn http(url: &str) -> Readiness {
        Readiness::Http {
            url: HttpUrl::parse(url).unwrap(),
        }
    }

    #[test]
    fn a_probe_of_a_moved_listen_address_follows_it() {
        let manifest = listen("127.0.0.1:8080");
        let here = listen("127.0.0.1:9001");
        assert_eq!(
            retarget(&http("http://127.0.0.1:8080/ready?x=1"), &manifest, &here),
            http("http://127.0.0.1:9001/ready?x=1")
        );
        assert_eq!(
            retarget(&http("http://localhost:8080/"), &manifest, &here),
            http("http://127.0.0.1:9001/")
        );
        let tcp = Readiness::Tcp {
            addr: "127.0.0.1:8080".parse().unwrap(),
        };
        assert_eq!(
            retarget(&tcp, &manifest, &here),
            Readiness::Tcp {
                addr: "127.0.0.1:9001".parse().unwrap()
            }
        );
    }

    #[test]
    fn a_wildcard_listen_address_matches_a_probe_of_any_local_ip() {
        let manifest = listen("0.0.0.0:8080");
        let here = listen("127.0.0.1:9001");
        assert_eq!(
            retarget(&http("http://127.0.0.1:8080/"), &manifest, &here),
            http("http://127.0.0.1:9001/")
        );
    }

    #[test]
    fn other_probes_are_left_alone() {
        let manifest = listen("127.0.0.1:8080");
        let here = listen("127.0.0.1:9001");
        let other_port = http("http://127.0.0.1:8081/");
        assert_eq!(retarget(&other_port, &manifest, &here), other_port);
        let unmoved = http("http://127.0.0.1:8080/");
        assert_eq!(retarget(&unmoved, &manifest, &manifest), unmoved);
        assert_eq!(
            retarget(&Readiness::Notify, &manifest, &here),
            Readiness::Notify
        );
    }
}
