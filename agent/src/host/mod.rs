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
//! `Host` (this file) is a registry of service handles plus what services
//! share (state file, release store, budget, fetcher, events). Each
//! service has an actor (`actor`, the commands in `command`) that owns its
//! runtime (`runtime`: instances, sockets, the switch in progress) and
//! runs one command at a time on it: a second is refused as busy, never
//! queued — unless it carries a higher fencing token, and then it
//! supersedes the one in flight (`admission` decides): the older switch or
//! restart is cancelled while it waits for a budget slot or for readiness,
//! brought back like a failed one, and the newer command runs after it.
//! Every outcome is written to the durable state (`durable`) before the
//! reply. Readers (status, logs, gauges) never touch a runtime: they read
//! the `ServiceView` it publishes after every change, so they never wait
//! for a switch.
//!
//! ```text
//!   mod.rs      registry: handles, entry points (install, apply, stage,
//!               rollback, restart), shutdown (retire every runtime)
//!   actor.rs    the per-service actor: admission, supersede, the runtime
//!   command.rs  the commands, and how each runs on the host
//!   runtime.rs  ServiceRuntime, the ServiceView readers see, status/logs
//!   switch.rs   a switch and a restart as the actor runs them
//!   uninstall.rs an uninstall as the actor runs it (first install undone)
//!   steps.rs    carrying out the planner's steps on instances
//!   launch.rs   starting or adopting one instance
//!   reconcile.rs agent start: adopt or start each current release
//!   durable.rs  state file, release store;  fence.rs  tokens vs etcd
//! ```
//!
//! At agent start (`reconcile`) every service runs its current release:
//! processes a previous agent left running (`supervisor::record`) are
//! **adopted** when they are of that release — their listening sockets
//! duplicated out of one of them (pidfd_getfd), missing slots started fresh
//! on those sockets — and stopped when they are not. If adoption fails,
//! the adopted processes are stopped and the release starts fresh. At agent
//! stop, `detach_all` leaves every instance running for the next agent
//! (`apps_on_agent_stop = "keep"`), `stop_all` stops them: each a message
//! to every actor, carried out once its command is over, within
//! `RETIRE_DEADLINE`.
//!
//! Must never: stop a serving release before its replacement is ready
//! (unless the release says it cannot overlap), leave a service with half
//! its instances on one release and half on another, or accept a fencing
//! token older than one already accepted, or let a superseded command
//! finish after the one that superseded it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use release::{Store, StoreError, TrustedKeys};
use tokio::sync::{Mutex, broadcast, mpsc, oneshot, watch};

use crate::cluster::{AgentRecord, ClusterLink};
use crate::config::AgentConfig;
use crate::fetch::ReleaseFetcher;
use crate::state::{AgentState, StaleToken, Trigger};
use crate::telemetry::AgentMetrics;

mod actor;
mod command;
mod durable;
mod error;
mod fence;
mod launch;
mod reconcile;
mod runtime;
mod steps;
mod switch;
mod uninstall;

pub use error::{HostError, Superseded, SwitchFailure};
pub use fence::{FenceReset, FenceView};

use actor::{Done, Message, Order, Retire};
use command::{Command, ServiceExecutor};
use durable::{of_service, record_of};
use error::with_kept;
use runtime::{Running, ServiceRuntime, ServiceView, ViewSender, stop_all};

/// Status events buffered for slow `WatchStatus` readers; a reader that
/// falls further behind gets a fresh snapshot instead.
const EVENT_BUFFER: usize = 1024;
/// How long agent shutdown waits for a service's actor to detach or stop
/// its instances (a switch in flight ends first): below systemd's default
/// stop timeout (90 s), so the agent exits rather than being killed.
const RETIRE_DEADLINE: Duration = Duration::from_secs(60);

/// A service's handle: its actor's inbox (the actor owns the service's
/// runtime and takes every command: `actor`), and the view the runtime
/// publishes, which readers (status, logs, gauges) read without waiting.
#[derive(Debug)]
struct ServiceHandle {
    actor: mpsc::Sender<Message<Command>>,
    view: watch::Receiver<ServiceView>,
}

/// An Apply the service's actor has taken: fenced (its mark durable), its
/// release stored. It runs unless a newer command supersedes it;
/// `Host::apply` waits for its outcome.
#[derive(Debug)]
pub struct AcceptedApply {
    done: Done,
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
    services: SyncMutex<BTreeMap<String, Arc<ServiceHandle>>>,
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
    /// The coordinator's number for the command (`admission::overtaken`).
    pub seq: u64,
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

    pub fn config(&self) -> &AgentConfig {
        &self.config
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
            .carry_out(&service, (None, 0), Command::Install(release))
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
        (token, seq): (u64, u64),
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
            .order(
                service,
                (Some(token), seq),
                Command::Apply { release, trigger },
            )
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
        (token, seq): (Option<u64>, u64),
        command: Command,
    ) -> Result<Done, HostError> {
        let actor = self.handle(service).actor.clone();
        let gone = || HostError::ActorGone {
            what: format!("the actor of `{service}`"),
        };
        let (taken, answer) = tokio::sync::oneshot::channel();
        let order = Order {
            token,
            seq,
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
        fence: (Option<u64>, u64),
        command: Command,
    ) -> Result<String, HostError> {
        self.order(service, fence, command).await?.outcome().await
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
        self.carry_out(service, (token, 0), Command::Rollback).await
    }

    /// The coordinator's Uninstall (rolling back a first install): fenced
    /// like Apply, then run by the service's actor (`uninstall`), which
    /// stops the instances and records "not installed" durably — also
    /// when nothing is installed: the forward Apply may still be fetching
    /// its release, and the record is what keeps it from installing the
    /// service after the rollback (`ServiceState::uninstalled_by`).
    pub async fn uninstall(
        &self,
        service: &str,
        (token, seq): (u64, u64),
        deployment: &str,
    ) -> Result<String, HostError> {
        self.refuse_stale(service, token).await?;
        self.vouched(service, token).await?;
        let trigger = Trigger::Uninstall {
            deployment: deployment.to_owned(),
            token,
        };
        self.carry_out(service, (Some(token), seq), Command::Uninstall(trigger))
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
        self.existing_handle(service)?;
        let token = order.token;
        if let Some(token) = token {
            self.vouched(service, token).await?;
        }
        let seq = order.seq;
        self.carry_out(service, (token, seq), Command::Restart(order))
            .await
    }

    /// The cluster link, when this agent uses etcd.
    pub fn cluster(&self) -> Option<&ClusterLink> {
        self.cluster.as_ref()
    }

    /// The service's handle; the first use spawns its actor, which owns
    /// the service's runtime.
    fn handle(&self, service: &str) -> Arc<ServiceHandle> {
        let mut services = self
            .services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        services
            .entry(service.to_owned())
            .or_insert_with(|| {
                let (actor, inbox) = mpsc::channel(actor::INBOX);
                let (views, view) = ViewSender::new();
                let executor = ServiceExecutor {
                    host: self.me.clone(),
                    service: service.to_owned(),
                };
                // Ends when the handle (and so its sender) is dropped.
                tokio::spawn(actor::run(executor, ServiceRuntime::new(views), inbox));
                Arc::new(ServiceHandle { actor, view })
            })
            .clone()
    }

    fn existing_handle(&self, service: &str) -> Result<Arc<ServiceHandle>, HostError> {
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

    /// Every service's handle with its name, as it stands now.
    fn named_handles(&self) -> Vec<(String, Arc<ServiceHandle>)> {
        self.services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(name, handle)| (name.clone(), handle.clone()))
            .collect()
    }

    /// Leaves every instance running, its record durable, for the next
    /// agent to adopt (agent shutdown with `apps_on_agent_stop = "keep"`).
    /// A command in flight holds its service: this waits for it, up to
    /// `RETIRE_DEADLINE`.
    pub async fn detach_all(&self) {
        self.retire_all(Retire::Detach).await;
    }

    /// Stops every instance (agent shutdown with `apps_on_agent_stop = "stop"`).
    pub async fn stop_all(&self) {
        self.retire_all(Retire::Stop).await;
    }

    /// Asks every service's actor to retire its runtime once nothing runs
    /// (a finished switch's old instances drain while its command is in
    /// flight, and they must be gone before we leave), all at once, each
    /// within `RETIRE_DEADLINE`.
    async fn retire_all(&self, how: Retire) {
        let mut retiring = tokio::task::JoinSet::new();
        for (service, handle) in self.named_handles() {
            retiring.spawn(async move {
                let (reply, retired) = oneshot::channel();
                if handle.actor.send(Message::Retire(how, reply)).await.is_err() {
                    // The actor is gone, and its runtime with it.
                    return;
                }
                match tokio::time::timeout(RETIRE_DEADLINE, retired).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        tracing::error!(service, "the service's actor ended before retiring its instances");
                    }
                    Err(_) => tracing::error!(
                        service,
                        deadline_s = RETIRE_DEADLINE.as_secs(),
                        action = ?how,
                        "the service's instances were not retired in time (a command still runs); leaving them"
                    ),
                }
            });
        }
        while let Some(result) = retiring.join_next().await {
            if let Err(err) = result {
                tracing::error!(error = %err, "a service retirement task failed");
            }
        }
    }
}
