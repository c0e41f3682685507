//! `VirtualHost`: one simulated agent — its service's `ServiceModel`
//! behind a lock, the status events its Report streams and WatchStatus
//! callers read, its etcd session (kept by `join`), and the switches it
//! runs as timed tasks.
//!
//! ```text
//! command -> precheck -> read the deployment lock (etcd, 3 s) -> take
//!   Switch -> task: budget slot -> start delay -> ready delay
//!             -> ready | fail | (never ready) -> slot released
//!             -> crash after ready, for a host fate chose
//! ```
//!
//! Must never: hold the model's lock across an await, or take a command
//! etcd has not vouched for.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agent::admission::LockReading;
use ids::{AgentId, ClusterName, ReleaseDigest, ServiceName};
use leases::{DisruptionBudget, FencedMutex, LockState, Session};
use proto::v1 as pb;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;

use crate::config::{HostSpec, SimConfig};
use crate::fate::{Fate, Outcome};
use crate::model::{Accepted, Fence, Order, Refusal, ServiceModel};

/// How long reading the deployment lock may take (as the agent's).
const LOCK_READ_TIMEOUT: Duration = Duration::from_secs(3);
/// Status events a slow reader may fall behind by before it is sent a
/// snapshot instead.
const EVENT_BUFFER: usize = 64;

/// What every host of a simulation shares.
#[derive(Debug)]
pub struct Behaviour {
    pub service: ServiceName,
    pub instances_per_host: u32,
    pub start_delay: Duration,
    pub ready_delay: Duration,
    pub crash_after: Duration,
    pub fate: Fate,
    pub budget_wait: Option<Duration>,
}

impl Behaviour {
    pub fn of(config: &SimConfig) -> Self {
        Self {
            service: config.service.clone(),
            instances_per_host: config.instances_per_host,
            start_delay: config.start_delay,
            ready_delay: config.ready_delay,
            crash_after: config.crash_after,
            fate: config.fate.clone(),
            budget_wait: config.budget_wait,
        }
    }
}

/// One simulated agent.
#[derive(Debug)]
pub struct VirtualHost {
    pub index: usize,
    pub id: AgentId,
    pub cluster: ClusterName,
    pub address: SocketAddr,
    behaviour: Arc<Behaviour>,
    model: Mutex<ServiceModel>,
    events: broadcast::Sender<pb::StatusEvent>,
    session: watch::Receiver<Option<Arc<Session>>>,
    switches: Mutex<JoinSet<()>>,
}

fn now_ms() -> i64 {
    agent::wire::now_unix_ms()
}

impl VirtualHost {
    /// A host with nothing installed; `session` is published by its keeper.
    pub fn new(
        spec: &HostSpec,
        behaviour: Arc<Behaviour>,
        session: watch::Receiver<Option<Arc<Session>>>,
    ) -> Self {
        let model = ServiceModel::new(
            spec.id.as_str(),
            behaviour.service.as_str(),
            behaviour.instances_per_host,
        );
        Self {
            index: spec.index,
            id: spec.id.clone(),
            cluster: spec.cluster.clone(),
            address: spec.address,
            behaviour,
            model: Mutex::new(model),
            events: broadcast::channel(EVENT_BUFFER).0,
            session,
            switches: Mutex::new(JoinSet::new()),
        }
    }

    fn with_model<T>(&self, f: impl FnOnce(&mut ServiceModel) -> T) -> T {
        f(&mut self.model.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn service(&self) -> &ServiceName {
        &self.behaviour.service
    }

    /// Who this host is, as its registration on a Report stream says.
    pub fn identity(&self) -> pb::AgentIdentity {
        pb::AgentIdentity {
            agent_id: self.id.to_string(),
            cluster: self.cluster.to_string(),
            hostname: format!("nodesim-{}", self.id),
            grpc_address: self.address.to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            services: vec![self.behaviour.service.to_string()],
        }
    }

    pub fn status(&self) -> pb::ServiceStatus {
        self.with_model(|m| m.status())
    }

    pub fn high_water(&self) -> u64 {
        self.with_model(|m| m.high_water())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<pb::StatusEvent> {
        self.events.subscribe()
    }

    /// The live session, once registered.
    pub fn session(&self) -> Option<Arc<Session>> {
        self.session.borrow().clone().filter(|s| !s.is_lost())
    }

    /// Resolves once the host holds a live session (it is registered).
    pub async fn registered(&self) {
        let mut session = self.session.clone();
        // An Err means the keeper is gone (shutdown): nothing to wait for.
        let _ = session
            .wait_for(|s| s.as_ref().is_some_and(|s| !s.is_lost()))
            .await;
    }

    fn publish(&self) {
        let event = pb::StatusEvent {
            at_unix_ms: now_ms(),
            instance: None,
            service: Some(self.status()),
        };
        // No subscriber (no stream open now) is not an error.
        let _ = self.events.send(event);
    }

    /// The deployment lock as etcd shows it now.
    async fn lock_reading(&self) -> LockReading {
        let Some(session) = self.session() else {
            return LockReading::Unreadable;
        };
        let lock = FencedMutex::deployment(self.behaviour.service.as_str());
        match tokio::time::timeout(LOCK_READ_TIMEOUT, lock.state(session.client())).await {
            Ok(Ok(LockState::Held { token, .. })) => LockReading::Held(token.0),
            Ok(Ok(LockState::Free { revision })) => LockReading::Free { revision },
            Ok(Err(err)) => {
                tracing::warn!(agent = %self.id, error = %cli::chain(&err), "cannot read the deployment lock");
                LockReading::Unreadable
            }
            Err(_) => {
                tracing::warn!(agent = %self.id, "reading the deployment lock timed out");
                LockReading::Unreadable
            }
        }
    }

    /// Takes a coordinator's command (or refuses it, changing nothing);
    /// a switch runs on in the background.
    pub async fn command(self: &Arc<Self>, order: Order, fence: Fence) -> Result<(), Refusal> {
        self.with_model(|m| m.precheck(fence))?;
        let lock = self.lock_reading().await;
        let accepted = self.with_model(|m| m.take(order, fence, lock, now_ms()))?;
        self.publish();
        if let Accepted::Switch { ticket, target } = accepted {
            let host = self.clone();
            let mut switches = self.switches.lock().unwrap_or_else(PoisonError::into_inner);
            while switches.try_join_next().is_some() {}
            switches.spawn(async move { host.switch(ticket, target).await });
        }
        Ok(())
    }

    /// A restart: its instances come back after the ready delay.
    pub async fn restart(self: &Arc<Self>, fence: Fence) -> Result<(), Refusal> {
        self.command(Order::Restart, fence).await?;
        tokio::time::sleep(self.behaviour.ready_delay).await;
        self.publish();
        Ok(())
    }

    /// One switch: a budget slot, the delays, then the outcome fate chose.
    async fn switch(self: Arc<Self>, ticket: u64, target: ReleaseDigest) {
        let outcome = self.behaviour.fate.outcome(self.index, &target);
        let slot = match self.take_slot(&target).await {
            Ok(slot) => slot,
            Err(detail) => {
                if self.with_model(|m| m.fail(ticket, &detail, now_ms())) {
                    self.publish();
                }
                return;
            }
        };
        tokio::time::sleep(self.behaviour.start_delay + self.behaviour.ready_delay).await;
        let changed = match outcome {
            Outcome::Ready | Outcome::CrashesAfterReady => {
                self.with_model(|m| m.ready(ticket, now_ms()))
            }
            Outcome::Fails => self.with_model(|m| {
                m.fail(
                    ticket,
                    &format!("nodesim: release {target} fails on this host (--fail-rate)"),
                    now_ms(),
                )
            }),
            Outcome::NeverReady => false,
        };
        if changed {
            self.publish();
        }
        if let Some(slot) = slot {
            if let Err(err) = slot.release().await {
                tracing::warn!(agent = %self.id, error = %cli::chain(&err), "cannot release the budget slot; it goes with the lease");
            }
        }
        if changed && outcome == Outcome::CrashesAfterReady {
            tokio::time::sleep(self.behaviour.crash_after).await;
            if self.with_model(|m| m.crash(&target, now_ms())) {
                tracing::info!(agent = %self.id, release = %target, "instances crashed after ready (--crash-rate)");
                self.publish();
            }
        }
    }

    /// A slot in the cluster's disruption budget, as the real agent takes
    /// one for every switch; `None` with `--no-budget`.
    async fn take_slot(&self, target: &ReleaseDigest) -> Result<Option<leases::SlotGuard>, String> {
        let Some(wait) = self.behaviour.budget_wait else {
            return Ok(None);
        };
        let session = self
            .session()
            .ok_or_else(|| "no etcd session: cannot take a budget slot".to_owned())?;
        let budget = DisruptionBudget::new(self.cluster.as_str());
        let name = format!("{}/{}", self.id, self.behaviour.service);
        budget
            .acquire(&session, &name, &format!("switch to {target}"), wait)
            .await
            .map(Some)
            .map_err(|e| format!("no budget slot: {}", cli::chain(&e)))
    }
}
