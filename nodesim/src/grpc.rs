//! The AgentService of every virtual host, served by one tonic server: each
//! host listens on its own loopback address, and a call is routed to the
//! host whose address the connection reached (its local address).
//!
//! ```text
//! listener per host ─accept─► one queue ─► tonic server ─► SimAgentService
//!                                   (request.local_addr() -> VirtualHost)
//! ```
//!
//! Must never: answer for a host other than the one dialled, or accept a
//! command the host's model refused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ids::{ReleaseDigest, ServiceName};
use proto::v1 as pb;
use proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::host::VirtualHost;
use crate::model::{Fence, Order, Refusal};

/// Accepted connections waiting for the server.
const ACCEPT_QUEUE: usize = 1024;
/// A failed accept (out of file descriptors) is retried after this.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot bind virtual host {agent}'s AgentService on {address}: {source}")]
    Bind {
        agent: String,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Every host's AgentService, by the address it listens on.
#[derive(Debug, Clone)]
pub struct SimAgentService {
    hosts: Arc<HashMap<SocketAddr, Arc<VirtualHost>>>,
}

/// The bound listeners and the server; dropping it stops them all.
#[derive(Debug)]
pub struct Served {
    _tasks: JoinSet<()>,
}

/// Binds every host's address, then serves them all.
pub async fn serve(hosts: &[Arc<VirtualHost>]) -> Result<Served, ServeError> {
    let (tx, rx) = mpsc::channel::<Result<TcpStream, std::io::Error>>(ACCEPT_QUEUE);
    let mut tasks = JoinSet::new();
    for host in hosts {
        let listener =
            TcpListener::bind(host.address)
                .await
                .map_err(|source| ServeError::Bind {
                    agent: host.id.to_string(),
                    address: host.address,
                    source,
                })?;
        tasks.spawn(accept(listener, host.address, tx.clone()));
    }
    drop(tx);
    let service = SimAgentService {
        hosts: Arc::new(hosts.iter().map(|h| (h.address, h.clone())).collect()),
    };
    tasks.spawn(async move {
        let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
        if let Err(err) = tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(service))
            .serve_with_incoming(incoming)
            .await
        {
            tracing::error!(error = %cli::chain(&err), "the AgentService server ended");
        }
    });
    Ok(Served { _tasks: tasks })
}

async fn accept(
    listener: TcpListener,
    address: SocketAddr,
    queue: mpsc::Sender<Result<TcpStream, std::io::Error>>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(%address, error = %err, "cannot set TCP_NODELAY");
                }
                if queue.send(Ok(stream)).await.is_err() {
                    return;
                }
            }
            Err(err) => {
                tracing::warn!(%address, error = %err, "accept failed");
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
    }
}

impl SimAgentService {
    fn host<T>(&self, request: &Request<T>) -> Result<Arc<VirtualHost>, Status> {
        let local = request
            .local_addr()
            .ok_or_else(|| Status::internal("nodesim: the connection has no local address"))?;
        self.hosts
            .get(&local)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("nodesim: no virtual host on {local}")))
    }
}

/// The service named in a request, checked against the host's.
fn service_of(host: &VirtualHost, service: &str) -> Result<(), pb::CommandVerdict> {
    match ServiceName::parse(service) {
        Ok(name) if name == *host.service() => Ok(()),
        Ok(_) => Err(refused(
            pb::RefusalReason::UnknownService,
            format!("service `{service}` is not assigned to agent {}", host.id),
            host.high_water(),
        )),
        Err(e) => Err(refused(
            pb::RefusalReason::InvalidRequest,
            format!("`service`: {e}"),
            host.high_water(),
        )),
    }
}

fn refused(reason: pb::RefusalReason, message: String, high_water: u64) -> pb::CommandVerdict {
    pb::CommandVerdict {
        outcome: pb::CommandOutcome::Refused.into(),
        refusal: reason.into(),
        message,
        fencing_high_water: high_water,
    }
}

fn verdict(host: &VirtualHost, result: Result<(), Refusal>, done: &str) -> pb::CommandVerdict {
    match result {
        Ok(()) => pb::CommandVerdict {
            outcome: pb::CommandOutcome::Accepted.into(),
            refusal: pb::RefusalReason::Unspecified.into(),
            message: done.to_owned(),
            fencing_high_water: host.high_water(),
        },
        Err(refusal) => refused(refusal.reason(), refusal.to_string(), host.high_water()),
    }
}

/// Runs `order` on the host the request reached, as a verdict.
async fn run(
    host: &Arc<VirtualHost>,
    service: &str,
    order: Result<Order, pb::CommandVerdict>,
    fence: Fence,
    done: &str,
) -> pb::CommandVerdict {
    if let Err(v) = service_of(host, service) {
        return v;
    }
    match order {
        Ok(Order::Restart) => verdict(host, host.restart(fence).await, done),
        Ok(order) => verdict(host, host.command(order, fence).await, done),
        Err(v) => v,
    }
}

fn target(host: &VirtualHost, digest: &str) -> Result<ReleaseDigest, pb::CommandVerdict> {
    ReleaseDigest::parse(digest).map_err(|e| {
        refused(
            pb::RefusalReason::InvalidRequest,
            format!("`release_digest`: {e}"),
            host.high_water(),
        )
    })
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<pb::StatusEvent, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for SimAgentService {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let host = self.host(&request)?;
        let r = request.into_inner();
        let order = target(&host, &r.release_digest).map(|target| Order::Apply {
            target,
            deployment: r.deployment_id.clone(),
        });
        let fence = Fence {
            token: r.fencing_token,
            seq: r.command_seq,
        };
        let done = format!("applying {} to {}", r.release_digest, r.service);
        let verdict = run(&host, &r.service, order, fence, &done).await;
        Ok(Response::new(pb::ApplyResponse {
            verdict: Some(verdict),
        }))
    }

    async fn stage(
        &self,
        request: Request<pb::StageRequest>,
    ) -> Result<Response<pb::StageResponse>, Status> {
        let host = self.host(&request)?;
        let r = request.into_inner();
        let order = target(&host, &r.release_digest).map(|_| Order::Stage);
        let fence = Fence {
            token: r.fencing_token,
            seq: 0,
        };
        let done = format!("{} is stored", r.release_digest);
        let verdict = run(&host, &r.service, order, fence, &done).await;
        Ok(Response::new(pb::StageResponse {
            verdict: Some(verdict),
        }))
    }

    async fn restart(
        &self,
        request: Request<pb::RestartRequest>,
    ) -> Result<Response<pb::RestartResponse>, Status> {
        let host = self.host(&request)?;
        let r = request.into_inner();
        let fence = Fence {
            token: r.fencing_token,
            seq: r.command_seq,
        };
        let verdict = run(&host, &r.service, Ok(Order::Restart), fence, "restarted").await;
        Ok(Response::new(pb::RestartResponse {
            verdict: Some(verdict),
        }))
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::RollbackResponse>, Status> {
        let host = self.host(&request)?;
        let r = request.into_inner();
        let order = Ok(Order::Rollback {
            deployment: r.deployment_id.clone(),
        });
        let fence = Fence {
            token: r.fencing_token,
            seq: 0,
        };
        let verdict = run(&host, &r.service, order, fence, "rolling back").await;
        Ok(Response::new(pb::RollbackResponse {
            verdict: Some(verdict),
        }))
    }

    async fn uninstall(
        &self,
        request: Request<pb::UninstallRequest>,
    ) -> Result<Response<pb::UninstallResponse>, Status> {
        let host = self.host(&request)?;
        let r = request.into_inner();
        let order = Ok(Order::Uninstall {
            deployment: r.deployment_id.clone(),
        });
        let fence = Fence {
            token: r.fencing_token,
            seq: r.command_seq,
        };
        let verdict = run(&host, &r.service, order, fence, "uninstalled").await;
        Ok(Response::new(pb::UninstallResponse {
            verdict: Some(verdict),
        }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let host = self.host(&request)?;
        let only = &request.get_ref().service;
        if !only.is_empty() && only != host.service().as_str() {
            return Err(Status::not_found(format!(
                "no service `{only}` on {}",
                host.id
            )));
        }
        Ok(Response::new(pb::StatusResponse {
            agent: Some(host.identity()),
            services: vec![host.status()],
        }))
    }

    type WatchStatusStream = StatusStream;

    async fn watch_status(
        &self,
        request: Request<pb::WatchStatusRequest>,
    ) -> Result<Response<StatusStream>, Status> {
        let host = self.host(&request)?;
        let only = &request.get_ref().service;
        if !only.is_empty() && only != host.service().as_str() {
            return Err(Status::not_found(format!(
                "no service `{only}` on {}",
                host.id
            )));
        }
        let mut events = host.subscribe();
        let snapshot = host.status();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            for instance in snapshot.instances {
                let event = pb::StatusEvent {
                    at_unix_ms: agent::wire::now_unix_ms(),
                    instance: Some(instance),
                    service: None,
                };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            loop {
                let event = tokio::select! {
                    () = tx.closed() => return,
                    received = events.recv() => match received {
                        Ok(event) => event,
                        Err(RecvError::Lagged(_)) => pb::StatusEvent {
                            at_unix_ms: agent::wire::now_unix_ms(),
                            instance: None,
                            service: Some(host.status()),
                        },
                        Err(RecvError::Closed) => return,
                    },
                };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
