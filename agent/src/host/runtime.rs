//! What a service runs now — its `ServiceRuntime`, owned by the service's
//! actor and lent to the one command it runs — and what readers (status,
//! logs, gauges, `WatchStatus`) see of it: the `ServiceView` the runtime
//! publishes on a `watch` channel after every change.
//!
//! Must never: be shared (readers hold a view, never the runtime), or
//! change what runs without publishing the view.

use std::path::PathBuf;

use release::StoredRelease;
use tokio::sync::{broadcast, watch};

use super::actor::Retire;
use super::{Host, HostError};
use crate::instance::{HostedInstance, InstanceView};
use crate::supervisor::{InstanceState, ListenSockets};
use crate::wire;

/// The release a service runs, with its sockets and instances.
#[derive(Debug)]
pub(super) struct Running {
    pub(super) release: StoredRelease,
    pub(super) sockets: ListenSockets,
    pub(super) instances: Vec<HostedInstance>,
}

/// A service as readers see it: published by its runtime after every
/// change, so a reader never waits for a command.
#[derive(Debug, Clone, Default)]
pub(super) struct ServiceView {
    /// Every instance the service holds: during a switch, the old ones
    /// serving and the new ones started so far.
    pub(super) instances: Vec<InstanceView>,
    pub(super) switching: Option<proto::v1::SwitchState>,
    pub(super) last_error: String,
}

/// Where a service's views go; the readers' end is its handle's.
#[derive(Debug)]
pub(super) struct ViewSender(watch::Sender<ServiceView>);

impl ViewSender {
    pub(super) fn new() -> (Self, watch::Receiver<ServiceView>) {
        let (tx, rx) = watch::channel(ServiceView::default());
        (Self(tx), rx)
    }

    /// Shows `instances` beside those shown (a switch started them).
    pub(super) fn starting(&self, instances: &[HostedInstance]) {
        self.0.send_modify(|view| {
            view.instances
                .extend(instances.iter().map(HostedInstance::view));
        });
    }

    /// Stops showing `instances` (stopped before the switch commits).
    pub(super) fn gone(&self, instances: &[HostedInstance]) {
        let gone: Vec<(u32, String)> = instances
            .iter()
            .map(|i| {
                let view = i.view();
                (view.slot(), view.digest().to_owned())
            })
            .collect();
        self.0.send_modify(|view| {
            view.instances
                .retain(|i| !gone.iter().any(|(s, d)| *s == i.slot() && d == i.digest()));
        });
    }
}

/// A service's runtime: what runs, the switch in progress, the last error.
/// Its actor owns it; the command it runs has it for as long as it runs.
#[derive(Debug)]
pub(super) struct ServiceRuntime {
    pub(super) running: Option<Running>,
    pub(super) switching: Option<proto::v1::SwitchState>,
    pub(super) last_error: String,
    pub(super) view: ViewSender,
}

impl ServiceRuntime {
    pub(super) fn new(view: ViewSender) -> Self {
        Self {
            running: None,
            switching: None,
            last_error: String::new(),
            view,
        }
    }

    /// Publishes what the runtime holds now to its readers.
    pub(super) fn publish(&self) {
        let instances = self
            .running
            .as_ref()
            .map(|r| r.instances.iter().map(HostedInstance::view).collect())
            .unwrap_or_default();
        self.view.0.send_replace(ServiceView {
            instances,
            switching: self.switching,
            last_error: self.last_error.clone(),
        });
    }

    /// Agent shutdown: every instance left running for the next agent, or
    /// stopped; the service then shows none.
    pub(super) async fn retire(mut self, how: Retire) {
        if let Some(running) = self.running.take() {
            self.publish();
            match how {
                Retire::Detach => {
                    for instance in running.instances {
                        instance.detach().await;
                    }
                }
                Retire::Stop => stop_all(running.instances).await,
            }
        }
    }
}

impl Host {
    /// Brings the gauges read at scrape up to date: every service's
    /// instances by state (during a switch, the old and the new), and the
    /// etcd session.
    pub fn refresh_gauges(&self) {
        for (service, handle) in self.named_handles() {
            let states: Vec<InstanceState> = handle
                .view
                .borrow()
                .instances
                .iter()
                .map(InstanceView::state)
                .collect();
            self.metrics.set_instances(&service, &states);
        }
        self.metrics
            .set_etcd_session(self.cluster.as_ref().is_some_and(|c| c.session().is_some()));
    }

    /// Every instance state change, for `WatchStatus`.
    pub fn subscribe(&self) -> broadcast::Receiver<proto::v1::StatusEvent> {
        self.events.subscribe()
    }

    /// The wire status of one service, or of all (`service` empty): from
    /// each service's view, so it never waits for a switch.
    pub async fn status(&self, service: &str) -> Result<Vec<proto::v1::ServiceStatus>, HostError> {
        let views: Vec<(String, ServiceView)> = self
            .named_handles()
            .into_iter()
            .filter(|(name, _)| service.is_empty() || name.as_str() == service)
            .map(|(name, handle)| {
                let view = handle.view.borrow().clone();
                (name, view)
            })
            .collect();
        if !service.is_empty() && views.is_empty() {
            return Err(HostError::UnknownService {
                service: service.to_owned(),
            });
        }
        let state = self.state.lock().await;
        let mut out = Vec::with_capacity(views.len());
        for (name, view) in views {
            let durable = state.services.get(&name).cloned().unwrap_or_default();
            let instances = view
                .instances
                .iter()
                .map(InstanceView::wire_status)
                .collect();
            out.push(wire::service_status(
                &name,
                &durable,
                instances,
                view.switching,
                view.last_error,
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

    /// Log tails of a service's instances: (slot, path, lines); during a
    /// switch, the old instances' and the new ones'. From the service's
    /// view: never waits for a switch.
    pub async fn logs(
        &self,
        service: &str,
        lines: usize,
    ) -> Result<Vec<(u32, PathBuf, Vec<String>)>, HostError> {
        let view = self.existing_handle(service)?.view.borrow().clone();
        let tails = tokio::task::spawn_blocking(move || {
            view.instances
                .iter()
                .map(|i| (i.slot(), i.log_path().to_owned(), i.log_tail(lines)))
                .collect()
        })
        .await?;
        Ok(tails)
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
}

pub(super) async fn stop_all(instances: Vec<HostedInstance>) {
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
