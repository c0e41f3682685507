//! What a service runs now, and how readers (status, logs, gauges,
//! `WatchStatus`) see it.

use std::path::PathBuf;
use std::sync::Arc;

use release::StoredRelease;
use tokio::sync::broadcast;

use super::{Host, HostError, ServiceEntry};
use crate::instance::HostedInstance;
use crate::supervisor::{InstanceState, ListenSockets};
use crate::wire;

/// The release a service runs, with its sockets and instances.
#[derive(Debug)]
pub(super) struct Running {
    pub(super) release: StoredRelease,
    pub(super) sockets: ListenSockets,
    pub(super) instances: Vec<HostedInstance>,
}

#[derive(Debug, Default)]
pub(super) struct ServiceRuntime {
    pub(super) running: Option<Running>,
    pub(super) switching: Option<proto::v1::SwitchState>,
    pub(super) last_error: String,
}

impl Host {
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
