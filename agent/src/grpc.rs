//! `AgentService`: what the coordinator calls on every agent.
//!
//! `Apply` answers as soon as the command is accepted or refused (stale
//! token, release unavailable, busy); accepted means taken by the
//! service's actor, which carries it out unless a command with a higher
//! token supersedes it (as this one supersedes an older one in flight) —
//! after fetching the release from the
//! coordinators when this host lacks it, so the coordinator calls it with a
//! deadline longer than `fetch_timeout`; the switch itself runs in the
//! background and its progress arrives on `WatchStatus` (and the report
//! stream), ending with an event that carries the service's status.
//!
//! With `[tls]`, a command (Apply, Stage, Restart, Rollback) runs only for a
//! caller whose client certificate names one of `tls.trusted_coordinators`;
//! anyone else gets PERMISSION_DENIED naming the identity it presented. The
//! TLS layer already refused callers without a certificate chained to the
//! CA. Status and WatchStatus only read, and answer the trusted
//! coordinators and the names `tls.viewers` matches (the coordinator's
//! viewer role, on this side).
//!
//! Every token is checked against the service's deployment lock in etcd
//! before it changes anything durable (`host::fence`): a forged or deposed
//! holder's token is refused (STALE_FENCING_TOKEN), one that cannot be
//! checked now is refused for the coordinator to retry
//! (FENCING_UNVERIFIED).
//!
//! Must never: act on a command whose fencing token is below the
//! service's high-water mark or is not its deployment lock's, or from an untrusted caller when `[tls]` is
//! set; or answer a read to a certificate with no role here.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use cli::chain;
use proto::v1 as pb;
use proto::v1::agent_service_server::AgentService;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::host::{Host, HostError, RestartOrder};

/// A service a caller names must be one (`ids::ServiceName`: its alphabet,
/// at most 63 bytes), before it reaches the host, its state or a log.
fn well_formed(service: &str) -> Result<(), Status> {
    ids::ServiceName::parse(service)
        .map(drop)
        .map_err(|e| Status::invalid_argument(format!("`service`: {e}")))
}

/// As `well_formed`; empty means every service.
fn well_formed_filter(service: &str) -> Result<(), Status> {
    if service.is_empty() {
        Ok(())
    } else {
        well_formed(service)
    }
}

/// Serves `AgentService` over `host`; owns the switches Apply starts.
#[derive(Debug)]
pub struct AgentGrpc {
    host: Arc<Host>,
    switches: Mutex<JoinSet<()>>,
    /// `tls.trusted_coordinators`; `None`: plain text, commands from anyone.
    trusted: Option<Vec<String>>,
    /// `tls.viewers`: who else may read Status and WatchStatus.
    viewers: Vec<tls::NamePattern>,
}

impl AgentGrpc {
    pub fn new(host: Arc<Host>) -> Self {
        let tls = host.config().tls.as_ref();
        let trusted = tls.map(|t| t.trusted_coordinators.clone());
        let viewers = tls.map(|t| t.viewers.clone()).unwrap_or_default();
        Self {
            host,
            switches: Mutex::new(JoinSet::new()),
            trusted,
            viewers,
        }
    }

    /// Lets a read (Status, WatchStatus) through for a trusted coordinator
    /// or a name `tls.viewers` matches (or when the agent runs without TLS).
    fn authorize_read<T>(&self, request: &Request<T>, call: &str) -> Result<(), Status> {
        if self.trusted.is_none() {
            return Ok(());
        }
        match tls::PeerIdentity::of_request(request) {
            Some(Ok(peer)) if peer.matches_any(&self.viewers) => Ok(()),
            Some(Ok(peer)) => self.authorize(request, call).map_err(|_| {
                let agent = self.host.config().id.as_str();
                tracing::warn!(agent, call, peer = %peer, "refused a read from an identity without a role here");
                Status::permission_denied(format!(
                    "agent {agent} refuses {call} from `{peer}`: it needs to be a coordinator in tls.trusted_coordinators or a viewer in tls.viewers of its agent.toml"
                ))
            }),
            _ => self.authorize(request, call),
        }
    }

    /// Lets `command` through when the caller is a trusted coordinator (or
    /// the agent runs without TLS).
    fn authorize<T>(&self, request: &Request<T>, command: &str) -> Result<(), Status> {
        let Some(trusted) = &self.trusted else {
            return Ok(());
        };
        let agent = self.host.config().id.as_str();
        match tls::PeerIdentity::of_request(request) {
            Some(Ok(peer)) if peer.is_any_of(trusted) => Ok(()),
            Some(Ok(peer)) => {
                tracing::warn!(agent, command, peer = %peer, "refused a command from an untrusted identity");
                Err(Status::permission_denied(format!(
                    "agent {agent} refuses {command} from `{peer}`: that identity is not in tls.trusted_coordinators ({}) of its agent.toml; add it there if it is a coordinator of this fleet",
                    trusted.join(", ")
                )))
            }
            Some(Err(reason)) => Err(Status::permission_denied(format!(
                "agent {agent} refuses {command}: cannot read the caller's certificate ({reason})"
            ))),
            None => Err(Status::unauthenticated(format!(
                "agent {agent} refuses {command}: the caller presented no TLS client certificate; only coordinators in tls.trusted_coordinators may command this agent"
            ))),
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
                HostError::Superseded(superseded) => superseded.by_token,
                HostError::NotTheLock { held, .. } => held.unwrap_or(0),
                _ => 0,
            };
            pb::CommandVerdict {
                outcome: pb::CommandOutcome::Refused.into(),
                refusal: err.refusal().into(),
                message: chain(&err),
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
        self.authorize(&request, "Apply")?;
        well_formed(&request.get_ref().service)?;
        let r = request.into_inner();
        // Accepted means taken: the service's actor has the command and
        // carries it out (or it is superseded, and its outcome says so).
        let accepted = self
            .host
            .accept_apply(
                &r.service,
                &r.release_digest,
                (r.fencing_token, r.command_seq),
                &r.deployment_id,
            )
            .await;
        let accepted = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                return Ok(Response::new(pb::ApplyResponse {
                    verdict: Some(verdict(Err(err))),
                }));
            }
        };
        let host = self.host.clone();
        let (service, digest, deployment) = (
            r.service.clone(),
            r.release_digest.clone(),
            r.deployment_id.clone(),
        );
        self.switches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .spawn(async move {
                let result = host.apply(accepted).await;
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
        self.authorize_read(&request, "Status")?;
        well_formed_filter(&request.get_ref().service)?;
        let services = self
            .host
            .status(&request.get_ref().service)
            .await
            .map_err(|e| Status::not_found(chain(&e)))?;
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
        self.authorize_read(&request, "WatchStatus")?;
        well_formed_filter(&request.get_ref().service)?;
        let only = request.into_inner().service;
        let mut events = self.host.subscribe();
        let snapshot = self
            .host
            .status(&only)
            .await
            .map_err(|e| Status::not_found(chain(&e)))?;
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
        self.authorize(&request, "Restart")?;
        well_formed(&request.get_ref().service)?;
        let r = request.into_inner();
        let reason = format!("deployment {}: {}", r.deployment_id, r.reason);
        let order = RestartOrder {
            token: Some(r.fencing_token),
            forced: false,
            reason,
            actor_uid: None,
            seq: r.command_seq,
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
        self.authorize(&request, "Rollback")?;
        well_formed(&request.get_ref().service)?;
        let r = request.into_inner();
        let result = self.host.rollback(&r.service, Some(r.fencing_token)).await;
        Ok(Response::new(pb::RollbackResponse {
            verdict: Some(verdict(result)),
        }))
    }

    async fn uninstall(
        &self,
        request: Request<pb::UninstallRequest>,
    ) -> Result<Response<pb::UninstallResponse>, Status> {
        self.authorize(&request, "Uninstall")?;
        well_formed(&request.get_ref().service)?;
        let r = request.into_inner();
        let result = self
            .host
            .uninstall(
                &r.service,
                (r.fencing_token, r.command_seq),
                &r.deployment_id,
            )
            .await;
        match &result {
            Ok(message) => {
                tracing::info!(
                    service = r.service,
                    deployment = r.deployment_id,
                    reason = r.reason,
                    message,
                    "uninstall done"
                );
            }
            Err(err) => {
                tracing::warn!(service = r.service, deployment = r.deployment_id, error = %err, "uninstall failed");
            }
        }
        Ok(Response::new(pb::UninstallResponse {
            verdict: Some(verdict(result)),
        }))
    }

    async fn stage(
        &self,
        request: Request<pb::StageRequest>,
    ) -> Result<Response<pb::StageResponse>, Status> {
        self.authorize(&request, "Stage")?;
        well_formed(&request.get_ref().service)?;
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
