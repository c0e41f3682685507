//! `AgentService`: what the coordinator calls on every agent.
//!
//! `Apply` answers as soon as the command is accepted or refused (stale
//! token, release unavailable, busy) — after fetching the release from the
//! coordinators when this host lacks it, so the coordinator calls it with a
//! deadline longer than `fetch_timeout`; the switch itself runs in the
//! background and its progress arrives on `WatchStatus` (and the report
//! stream), ending with an event that carries the service's status.
//!
//! Must never: act on a command whose fencing token is below the
//! service's high-water mark.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use proto::v1 as pb;
use proto::v1::agent_service_server::AgentService;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::host::{Host, HostError, RestartOrder};

/// Serves `AgentService` over `host`; owns the switches Apply starts.
#[derive(Debug)]
pub struct AgentGrpc {
    host: Arc<Host>,
    switches: Mutex<JoinSet<()>>,
}

impl AgentGrpc {
    pub fn new(host: Arc<Host>) -> Self {
        Self {
            host,
            switches: Mutex::new(JoinSet::new()),
        }
    }

    /// Waits for switches still in flight (agent shutdown).
    pub async fn drain(&self) {
        let mut switches = std::mem::take(
            &mut *self
                .switches
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        while switches.join_next().await.is_some() {}
    }
}

fn verdict(result: Result<String, HostError>) -> pb::CommandVerdict {
    match result {
        Ok(message) => pb::CommandVerdict {
            outcome: pb::CommandOutcome::Accepted.into(),
            refusal: pb::RefusalReason::Unspecified.into(),
            message,
            fencing_high_water: 0,
        },
        Err(err) => {
            let high_water = match &err {
                HostError::StaleToken(stale) => stale.high_water,
                _ => 0,
            };
            pb::CommandVerdict {
                outcome: pb::CommandOutcome::Refused.into(),
                refusal: err.refusal().into(),
                message: err.to_string(),
                fencing_high_water: high_water,
            }
        }
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<pb::StatusEvent, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentGrpc {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let r = request.into_inner();
        let accepted = self
            .host
            .prepare_apply(&r.service, &r.release_digest, r.fencing_token)
            .await;
        if let Err(err) = accepted {
            return Ok(Response::new(pb::ApplyResponse {
                verdict: Some(verdict(Err(err))),
            }));
        }
        let host = self.host.clone();
        let (service, digest, deployment) = (
            r.service.clone(),
            r.release_digest.clone(),
            r.deployment_id.clone(),
        );
        let token = r.fencing_token;
        self.switches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .spawn(async move {
                let result = host.apply(&service, &digest, token, &deployment).await;
                if let Err(err) = &result {
                    tracing::warn!(service, digest, deployment, error = %err, "apply failed");
                }
                host.publish_service(&service).await;
            });
        Ok(Response::new(pb::ApplyResponse {
            verdict: Some(verdict(Ok(format!(
                "applying {} to {}",
                r.release_digest, r.service
            )))),
        }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let services = self
            .host
            .status(&request.get_ref().service)
            .await
            .map_err(|e| Status::not_found(e.to_string()))?;
        Ok(Response::new(pb::StatusResponse {
            agent: Some(self.host.identity()),
            services,
        }))
    }

    type WatchStatusStream = StatusStream;

    async fn watch_status(
        &self,
        request: Request<pb::WatchStatusRequest>,
    ) -> Result<Response<StatusStream>, Status> {
        let only = request.into_inner().service;
        let mut events = self.host.subscribe();
        let snapshot = self
            .host
            .status(&only)
            .await
            .map_err(|e| Status::not_found(e.to_string()))?;
        let host = self.host.clone();
        let stream = async_stream(move |tx| async move {
            for service in snapshot {
                for instance in service.instances {
                    let event = pb::StatusEvent {
                        at_unix_ms: crate::wire::now_unix_ms(),
                        instance: Some(instance),
                        service: None,
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            }
            loop {
                let received = tokio::select! {
                    () = tx.closed() => return,
                    received = events.recv() => received,
                };
                let event = match received {
                    Ok(event) => event,
                    // Fell behind: the watcher gets a fresh snapshot instead.
                    Err(RecvError::Lagged(_)) => match host.status(&only).await {
                        Ok(services) => pb::StatusEvent {
                            at_unix_ms: crate::wire::now_unix_ms(),
                            instance: None,
                            service: services.into_iter().next(),
                        },
                        Err(_) => continue,
                    },
                    Err(RecvError::Closed) => return,
                };
                let relevant = only.is_empty()
                    || event
                        .instance
                        .as_ref()
                        .and_then(|i| i.instance.as_ref())
                        .is_some_and(|i| i.service == only)
                    || event.service.as_ref().is_some_and(|s| s.service == only);
                if relevant && tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn restart(
        &self,
        request: Request<pb::RestartRequest>,
    ) -> Result<Response<pb::RestartResponse>, Status> {
        let r = request.into_inner();
        let reason = format!("deployment {}: {}", r.deployment_id, r.reason);
        let order = RestartOrder {
            token: Some(r.fencing_token),
            forced: false,
            reason,
            actor_uid: None,
        };
        let result = self.host.restart(&r.service, order).await;
        Ok(Response::new(pb::RestartResponse {
            verdict: Some(verdict(result)),
        }))
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::RollbackResponse>, Status> {
        let r = request.into_inner();
        let result = self.host.rollback(&r.service, Some(r.fencing_token)).await;
        Ok(Response::new(pb::RollbackResponse {
            verdict: Some(verdict(result)),
        }))
    }

    async fn stage(
        &self,
        request: Request<pb::StageRequest>,
    ) -> Result<Response<pb::StageResponse>, Status> {
        let r = request.into_inner();
        let result = self
            .host
            .stage(&r.service, &r.release_digest, r.fencing_token)
            .await
            .map(|()| format!("{} is stored", r.release_digest));
        Ok(Response::new(pb::StageResponse {
            verdict: Some(verdict(result)),
        }))
    }
}

/// A stream fed by a producer task; the task ends when the receiver (the
/// RPC) is dropped, because its next send fails.
fn async_stream<F, Fut>(produce: F) -> StatusStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::StatusEvent, Status>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(produce(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
