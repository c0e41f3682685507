//! `CoordinatorService`: the gRPC face of a `Coordinator`.
//!
//! Agent-facing calls (Report, FetchRelease) and read-only operator calls
//! are served by every coordinator. Calls that change a deployment are
//! served by the leader; a follower answers `FAILED_PRECONDITION` with the
//! leader's URL in the message and in the `lockstep-leader` metadata, and
//! the CLI retries there.
//!
//! Must never: change a deployment without being the leader.

use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cli::{Chain, chain};
use etcd_client::{EventType, GetOptions, WatchOptions};
use leases::{FencedMutex, Holder, keys};
use proto::v1 as pb;
use proto::v1::coordinator_service_server::CoordinatorService;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::admission::{Admission, verified_actor};
use crate::leader::{Coordinator, Deployed, NotServed};
use crate::push::PushGate;
use crate::record::EventRecord;
use crate::roles::{Caller, Method};
use crate::{agent_binding, bounds, release_read, wire};

/// Size of a FetchRelease chunk.
const CHUNK: usize = 256 * 1024;

/// Serves `CoordinatorService` over a `Coordinator`.
#[derive(Debug, Clone)]
pub struct CoordinatorGrpc {
    coordinator: Arc<Coordinator>,
    /// Who may call what: every handler asks it first.
    admission: Arc<Admission>,
    /// Turns true at shutdown: long-lived streams (Report, WatchDeployment)
    /// end then, so the server's graceful stop does not wait on them and
    /// their clients move to another coordinator.
    stopping: watch::Receiver<bool>,
    /// The push slots and limits (`[releases]`).
    pushes: PushGate,
}

impl CoordinatorGrpc {
    pub fn new(coordinator: Arc<Coordinator>, stopping: watch::Receiver<bool>) -> Self {
        let admission = Arc::new(Admission::new(
            coordinator.config.access.clone(),
            coordinator.config.tls.is_some(),
            coordinator.client.clone(),
        ));
        let pushes = PushGate::new(coordinator.config.push);
        Self {
            coordinator,
            admission,
            stopping,
            pushes,
        }
    }
}

/// How long an operator call may wait on etcd before the coordinator
/// answers UNAVAILABLE: under the CLI's default `--timeout` (5 s), so the
/// operator reads why rather than a bare timeout.
pub const ETCD_ANSWER_DEADLINE: Duration = Duration::from_secs(3);

/// What an operator call that ran out of time may have left behind, for
/// its message.
#[derive(Debug, Clone, Copy)]
enum Waits {
    /// Nothing: it only reads.
    Read,
    /// The command was handed to the deployment's driver, which applies it
    /// once etcd answers.
    Command,
    /// From taking the lock on, a deployment start runs to its end (a lock
    /// dropped half-way would stay held): it may still start.
    Deploy,
}

/// `call`'s answer, or UNAVAILABLE after [`ETCD_ANSWER_DEADLINE`]: every
/// operator call reads or writes etcd, and a hung etcd must not hang them.
async fn bounded<T>(
    waits: Waits,
    what: &str,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(ETCD_ANSWER_DEADLINE, call).await {
        Ok(answer) => answer,
        Err(_) => {
            let after = match waits {
                Waits::Read => "",
                Waits::Command => {
                    "; the command may still take effect once etcd answers: check `lockstep status ID`"
                }
                Waits::Deploy => {
                    "; the deployment may still start once etcd answers: check `lockstep status` before deploying again"
                }
            };
            tracing::warn!(what, deadline = ?ETCD_ANSWER_DEADLINE, "etcd did not answer an operator call in time");
            Err(Status::unavailable(format!(
                "{what}: etcd did not answer within {ETCD_ANSWER_DEADLINE:?}{after}; check etcd (`etcdctl endpoint health`) and retry"
            )))
        }
    }
}

/// What a stream's client hears when this coordinator stops: UNAVAILABLE,
/// which agents and `lockstep watch` take as "go to another coordinator".
pub(crate) fn shutting_down() -> Status {
    Status::unavailable("this coordinator is shutting down; use another coordinator")
}

/// Resolves once `stopping` turns true (or its sender is gone).
async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn status(err: NotServed) -> Status {
    match &err {
        NotServed::NotLeader { leader } => {
            let mut status = Status::failed_precondition(err.to_string());
            if let Some(url) = leader {
                if let Ok(value) = url.parse() {
                    status.metadata_mut().insert("lockstep-leader", value);
                }
            }
            status
        }
        NotServed::Invalid(m) => Status::invalid_argument(m.clone()),
        NotServed::NotFound(m) => Status::not_found(m.clone()),
        NotServed::Refused(m) => Status::failed_precondition(m.clone()),
        NotServed::Internal { .. } => Status::internal(chain(&err)),
    }
}

/// Verifies and indexes a received push.
async fn commit_push(
    depot: &crate::depot::ReleaseDepot,
    header: pb::PushReleaseHeader,
    incoming: crate::depot::Incoming,
) -> Result<pb::PushReleaseResponse, Status> {
    let expected = if header.expected_digest.is_empty() {
        None
    } else {
        Some(
            header
                .expected_digest
                .parse::<release::ReleaseDigest>()
                .map_err(|e| Status::invalid_argument(chain(&e)))?,
        )
    };
    let (entry, already_present) = bounded(Waits::Read, "indexing the release", async {
        depot.commit(incoming, expected).await.map_err(|e| match e {
            refused @ crate::depot::DepotError::Refused(_) => {
                Status::invalid_argument(chain(&refused))
            }
            other => internal(other),
        })
    })
    .await?;
    tracing::info!(
        service = entry.service,
        version = entry.version,
        digest = entry.digest,
        already_present,
        "release pushed"
    );
    Ok(pb::PushReleaseResponse {
        release: Some(pb::ReleaseRef {
            service: entry.service,
            digest: entry.digest,
            version: entry.version,
        }),
        already_present,
        signed: entry.signed,
    })
}

/// A request naming something that cannot be a name: refused before it
/// reaches etcd or a log (`bounds`).
fn malformed(e: bounds::Malformed) -> Status {
    Status::invalid_argument(chain(&e))
}

/// A release read's refusal: a bad or unknown name is the caller's, the
/// rest this coordinator's.
fn read_refused(err: release_read::ReadError) -> Status {
    let text = chain(&err);
    if err.is_bad_name() {
        Status::invalid_argument(text)
    } else if err.is_unknown() {
        Status::not_found(text)
    } else if matches!(err, release_read::ReadError::Busy) {
        Status::resource_exhausted(text)
    } else if matches!(
        err,
        release_read::ReadError::Deadline | release_read::ReadError::NotHere { .. }
    ) {
        Status::unavailable(text)
    } else {
        tracing::warn!(error = %cli::Chain(&err), "cannot read a release");
        Status::internal(text)
    }
}

fn internal<E: std::error::Error>(err: E) -> Status {
    Status::internal(chain(&err))
}

fn actor_holder(actor: Option<&pb::Actor>) -> Holder {
    let actor = actor.cloned().unwrap_or_default();
    Holder {
        host: actor.host,
        pid: 0,
        user: actor.user,
    }
}

fn deploy_response(deployed: Deployed) -> pb::DeployResponse {
    match deployed {
        Deployed::Started { id, token } => pb::DeployResponse {
            outcome: pb::DeployOutcome::Started.into(),
            deployment_id: id,
            fencing_token: token,
            ..Default::default()
        },
        Deployed::Locked(info) => pb::DeployResponse {
            outcome: pb::DeployOutcome::RefusedLocked.into(),
            deployment_id: info.purpose.clone(),
            lock: Some(crate::wire::lock(&info, pb::LockKind::Deployment)),
            ..Default::default()
        },
        Deployed::Invalid(problems) => pb::DeployResponse {
            outcome: pb::DeployOutcome::RefusedInvalid.into(),
            problems,
            ..Default::default()
        },
    }
}

#[tonic::async_trait]
impl CoordinatorService for CoordinatorGrpc {
    type ReportStream = BoxStream<pb::ReportAck>;

    async fn report(
        &self,
        request: Request<Streaming<pb::AgentReport>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        self.admission.admit(&request, Method::Report)?;
        let stream = ReportStream {
            caller: self.admission.caller(&request),
            from: request.remote_addr(),
            admission: self.admission.clone(),
            coordinator: self.coordinator.clone(),
        };
        let inbound = request.into_inner();
        // A channel allocates its slots 32 at a time, each the size of
        // its item: boxing the rare Status (message, details, metadata
        // map) keeps the slots small, and there is one such channel per
        // agent, 10,000 on a large fleet's coordinator.
        let (tx, rx) = mpsc::channel::<Result<pb::ReportAck, Box<Status>>>(16);
        // The stream's lifetime is the agent's connection: the task ends
        // when the agent goes away, the response stream is dropped, or this
        // coordinator stops (the agent then reports to the others).
        tokio::spawn(stream.serve(inbound, tx, self.stopping.clone()));
        let acks = ReceiverStream::new(rx).map(|ack| ack.map_err(|status| *status));
        Ok(Response::new(Box::pin(acks)))
    }

    type FetchReleaseStream = BoxStream<pb::ReleaseChunk>;

    async fn fetch_release(
        &self,
        request: Request<pb::FetchReleaseRequest>,
    ) -> Result<Response<Self::FetchReleaseStream>, Status> {
        self.admission.admit(&request, Method::FetchRelease)?;
        let r = request.into_inner();
        let digest: release::ReleaseDigest = r
            .digest
            .parse()
            .map_err(|e: release::DigestError| Status::invalid_argument(e.to_string()))?;
        let path = self.coordinator.depot.blob_path(&digest);
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Status::not_found(format!(
                    "this coordinator has no release {digest}: push it with `lockstep release push`"
                )));
            }
            Err(e) => return Err(internal(e)),
        };
        let total = file.metadata().map_err(internal)?.len();
        if r.offset > total {
            return Err(Status::out_of_range(format!(
                "offset {} is past the end of {digest} ({total} bytes)",
                r.offset
            )));
        }
        let (tx, rx) = mpsc::channel(4);
        let mut offset = r.offset;
        let metrics = self.coordinator.metrics.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = file.seek(SeekFrom::Start(offset)) {
                let _ = tx.blocking_send(Err(internal(e)));
                return;
            }
            let mut buf = vec![0u8; CHUNK];
            loop {
                match file.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        let chunk = pb::ReleaseChunk {
                            offset,
                            data: buf[..n].to_vec(),
                            total_size: total,
                        };
                        offset += n as u64;
                        if tx.blocking_send(Ok(chunk)).is_err() {
                            return;
                        }
                        metrics.fetch_served(n as u64);
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(internal(e)));
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn push_release(
        &self,
        request: Request<Streaming<pb::PushReleaseChunk>>,
    ) -> Result<Response<pb::PushReleaseResponse>, Status> {
        self.admission.admit(&request, Method::PushRelease)?;
        let _slot = self.pushes.enter()?;
        let depot = self.coordinator.depot.clone();
        let incoming = depot.incoming().map_err(internal)?;
        let (header, incoming) = self.pushes.receive(request.into_inner(), incoming).await?;
        let received = incoming.written();
        let pushed = commit_push(&depot, header, incoming).await;
        self.coordinator.metrics.push(pushed.is_ok(), received);
        pushed.map(Response::new)
    }

    async fn list_releases(
        &self,
        request: Request<pb::ListReleasesRequest>,
    ) -> Result<Response<pb::ListReleasesResponse>, Status> {
        self.admission.admit(&request, Method::ListReleases)?;
        bounds::service_filter(&request.get_ref().service).map_err(malformed)?;
        bounded(Waits::Read, "listing releases", async move {
            let entries = self
                .coordinator
                .depot
                .list(&request.get_ref().service)
                .await
                .map_err(internal)?;
            Ok(Response::new(pb::ListReleasesResponse {
                releases: entries
                    .into_iter()
                    .map(|e| pb::ReleaseSummary {
                        release: Some(pb::ReleaseRef {
                            service: e.service,
                            digest: e.digest,
                            version: e.version,
                        }),
                        size: e.size,
                        pushed_unix_ms: e.pushed_unix_ms,
                        signed: e.signed,
                        holders: e.holders,
                    })
                    .collect(),
            }))
        })
        .await
    }

    async fn show_release(
        &self,
        request: Request<pb::ShowReleaseRequest>,
    ) -> Result<Response<pb::ReleaseContents>, Status> {
        self.admission.admit(&request, Method::ShowRelease)?;
        let request = request.into_inner();
        bounds::service_filter(&request.service).map_err(malformed)?;
        let (entry, contents) =
            release_read::show(&self.coordinator.depot, &request.service, &request.name)
                .await
                .map_err(read_refused)?;
        Ok(Response::new(wire::release_contents(&entry, &contents)))
    }

    async fn diff_releases(
        &self,
        request: Request<pb::DiffReleasesRequest>,
    ) -> Result<Response<pb::ReleaseDiff>, Status> {
        self.admission.admit(&request, Method::DiffReleases)?;
        let request = request.into_inner();
        bounds::service_filter(&request.service).map_err(malformed)?;
        let diff = release_read::diff(
            &self.coordinator.depot,
            &request.service,
            &request.from,
            &request.to,
        )
        .await
        .map_err(read_refused)?;
        Ok(Response::new(wire::release_diff(&diff)))
    }

    async fn plan(
        &self,
        request: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        self.admission.admit(&request, Method::Plan)?;
        bounds::service(&request.get_ref().service).map_err(malformed)?;
        bounded(Waits::Read, "planning", async move {
            let r = request.into_inner();
            self.coordinator
                .plan(&r.service, &r.release_digest, &r.strategy_toml)
                .await
                .map(Response::new)
                .map_err(status)
        })
        .await
    }

    async fn deploy(
        &self,
        request: Request<pb::DeployRequest>,
    ) -> Result<Response<pb::DeployResponse>, Status> {
        let granted = self.admission.admit(&request, Method::Deploy)?;
        bounds::service(&request.get_ref().service).map_err(malformed)?;
        let mut request = request.into_inner();
        request.actor = Some(verified_actor(&granted, request.actor.as_ref()));
        bounded(Waits::Deploy, "starting the deployment", async move {
            self.coordinator
                .deploy(&request)
                .await
                .map(|d| Response::new(deploy_response(d)))
                .map_err(status)
        })
        .await
    }

    async fn get_deployment(
        &self,
        request: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        self.admission.admit(&request, Method::GetDeployment)?;
        bounds::deployment_id(&request.get_ref().deployment_id).map_err(malformed)?;
        bounded(Waits::Read, "reading the deployment", async move {
            self.coordinator
                .record(&request.get_ref().deployment_id)
                .await
                .map(|r| Response::new(r.wire()))
                .map_err(status)
        })
        .await
    }

    type WatchDeploymentStream = BoxStream<pb::DeploymentEvent>;

    async fn watch_deployment(
        &self,
        request: Request<pb::WatchDeploymentRequest>,
    ) -> Result<Response<Self::WatchDeploymentStream>, Status> {
        self.admission.admit(&request, Method::WatchDeployment)?;
        bounds::deployment_id(&request.get_ref().deployment_id).map_err(malformed)?;
        let r = request.into_inner();
        let record = bounded(Waits::Read, "reading the deployment", async {
            self.coordinator
                .record(&r.deployment_id)
                .await
                .map_err(status)
        })
        .await?;
        let journal = self.coordinator.journal.clone();
        let (tx, rx) = mpsc::channel(64);
        let id = r.deployment_id.clone();
        let service = record.service.clone();
        let stopping = self.stopping.clone();
        // Events come from etcd, not from a driver: a watch survives a
        // change of leader and can be served by any coordinator; when this
        // one stops, the watcher resumes on another from its last seq.
        tokio::spawn(async move {
            let shutdown = tx.clone();
            tokio::select! {
                () = forward_events(journal, id, service, r.from_seq, tx) => {}
                () = stopped(stopping) => {
                    let _ = shutdown.send(Err(shutting_down())).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn pause(
        &self,
        request: Request<pb::PauseRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let granted = self.admission.admit(&request, Method::Pause)?;
        bounds::deployment_id(&request.get_ref().deployment_id).map_err(malformed)?;
        bounded(Waits::Command, "pausing", async move {
            let r = request.get_ref();
            let actor = verified_actor(&granted, r.actor.as_ref());
            let said = said(Some(&actor), &r.reason);
            self.command(&r.deployment_id, rollout::Command::Pause, None, said)
                .await
        })
        .await
    }

    async fn resume(
        &self,
        request: Request<pb::ResumeRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let granted = self.admission.admit(&request, Method::Resume)?;
        bounds::deployment_id(&request.get_ref().deployment_id).map_err(malformed)?;
        bounded(Waits::Command, "resuming", async move {
            let r = request.get_ref();
            let actor = verified_actor(&granted, r.actor.as_ref());
            let said = said(Some(&actor), "");
            self.command(&r.deployment_id, rollout::Command::Resume, None, said)
                .await
        })
        .await
    }

    async fn approve(
        &self,
        request: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let granted = self.admission.admit(&request, Method::Approve)?;
        bounds::deployment_id(&request.get_ref().deployment_id).map_err(malformed)?;
        bounds::cluster_filter(&request.get_ref().cluster).map_err(malformed)?;
        bounded(Waits::Command, "approving", async move {
            let r = request.get_ref();
            let actor = verified_actor(&granted, r.actor.as_ref());
            let said = said(Some(&actor), "");
            self.command(
                &r.deployment_id,
                rollout::Command::Approve,
                Some(&r.cluster),
                said,
            )
            .await
        })
        .await
    }

    async fn abort(
        &self,
        request: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let granted = self.admission.admit(&request, Method::Abort)?;
        bounds::deployment_id(&request.get_ref().deployment_id).map_err(malformed)?;
        bounded(Waits::Command, "aborting", async move {
            let r = request.get_ref();
            let actor = verified_actor(&granted, r.actor.as_ref());
            let said = said(Some(&actor), &r.reason);
            self.command(&r.deployment_id, rollout::Command::Abort, None, said)
                .await
        })
        .await
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackServiceRequest>,
    ) -> Result<Response<pb::DeployResponse>, Status> {
        let granted = self.admission.admit(&request, Method::Rollback)?;
        bounds::service(&request.get_ref().service).map_err(malformed)?;
        let mut request = request.into_inner();
        request.actor = Some(verified_actor(&granted, request.actor.as_ref()));
        bounded(Waits::Deploy, "starting the rollback", async move {
            self.coordinator
                .rollback(&request)
                .await
                .map(|d| Response::new(deploy_response(d)))
                .map_err(status)
        })
        .await
    }

    async fn restart(
        &self,
        request: Request<pb::RestartServiceRequest>,
    ) -> Result<Response<pb::DeployResponse>, Status> {
        let granted = self.admission.admit(&request, Method::Restart)?;
        bounds::service(&request.get_ref().service).map_err(malformed)?;
        bounds::cluster_filter(&request.get_ref().cluster).map_err(malformed)?;
        let mut request = request.into_inner();
        request.actor = Some(verified_actor(&granted, request.actor.as_ref()));
        bounded(Waits::Deploy, "starting the restart", async move {
            self.coordinator
                .restart(&request)
                .await
                .map(|d| Response::new(deploy_response(d)))
                .map_err(status)
        })
        .await
    }

    async fn rollback_target(
        &self,
        request: Request<pb::RollbackServiceRequest>,
    ) -> Result<Response<pb::RollbackTargetResponse>, Status> {
        self.admission.admit(&request, Method::RollbackTarget)?;
        bounds::service(&request.get_ref().service).map_err(malformed)?;
        bounded(Waits::Read, "choosing the rollback target", async move {
            self.coordinator
                .rollback_target(request.get_ref())
                .await
                .map(Response::new)
                .map_err(status)
        })
        .await
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.admission.admit(&request, Method::ListAgents)?;
        let r = request.get_ref();
        let limit = match r.page_size {
            0 => usize::MAX,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let (agents, more) =
            self.coordinator
                .fleet
                .agents_page(&r.cluster, r.after.as_ref(), limit);
        let next = more
            .then(|| agents.last().and_then(|a| a.identity.as_ref()))
            .flatten()
            .map(|i| pb::AgentKey {
                cluster: i.cluster.clone(),
                agent_id: i.agent_id.clone(),
            });
        Ok(Response::new(pb::ListAgentsResponse { agents, next }))
    }

    async fn list_locks(
        &self,
        request: Request<pb::ListLocksRequest>,
    ) -> Result<Response<pb::ListLocksResponse>, Status> {
        self.admission.admit(&request, Method::ListLocks)?;
        bounded(Waits::Read, "listing locks", async move {
            let locks = list_locks(&self.coordinator.client, &request.get_ref().cluster)
                .await
                .map_err(internal)?;
            Ok(Response::new(pb::ListLocksResponse { locks }))
        })
        .await
    }

    async fn break_lock(
        &self,
        request: Request<pb::BreakLockRequest>,
    ) -> Result<Response<pb::BreakLockResponse>, Status> {
        let granted = self.admission.admit(&request, Method::BreakLock)?;
        bounds::service(&request.get_ref().service).map_err(malformed)?;
        bounded(Waits::Read, "breaking the lock", async move {
        let r = request.into_inner();
        let actor = verified_actor(&granted, r.actor.as_ref());
        if r.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "breaking a lock needs a reason (--reason): it goes into the audit log",
            ));
        }
        let broken = FencedMutex::deployment(&r.service)
            .break_lock(
                &self.coordinator.client,
                actor_holder(Some(&actor)),
                &r.reason,
            )
            .await
            .map_err(internal)?;
        match broken {
            None => Err(Status::not_found(format!(
                "no deployment lock is held for {}",
                r.service
            ))),
            Some((info, seq)) => {
                tracing::warn!(service = r.service, holder = %info.holder, reason = r.reason, audit_seq = seq, "deployment lock broken");
                Ok(Response::new(pb::BreakLockResponse {
                    broken: Some(crate::wire::lock(&info, pb::LockKind::Deployment)),
                    audit_seq: seq,
                }))
            }
        }
            })
        .await
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        self.admission.admit(&request, Method::History)?;
        bounds::service_filter(&request.get_ref().service).map_err(malformed)?;
        bounded(Waits::Read, "reading history", async move {
            let r = request.into_inner();
            let limit = if r.limit == 0 { 20 } else { r.limit as usize };
            let entries = self
                .coordinator
                .journal
                .history(&r.service, limit)
                .await
                .map_err(internal)?;
            Ok(Response::new(pb::HistoryResponse {
                entries: entries
                    .into_iter()
                    .map(|(seq, record)| pb::HistoryEntry {
                        seq,
                        deployment: Some(record.wire()),
                    })
                    .collect(),
            }))
        })
        .await
    }
}

/// One agent's Report stream: who opened it, and what it needs to bind
/// the agent it registers and record its reports.
struct ReportStream {
    caller: Caller,
    from: Option<std::net::SocketAddr>,
    admission: Arc<Admission>,
    coordinator: Arc<Coordinator>,
}

impl ReportStream {
    async fn serve(
        self,
        mut inbound: Streaming<pb::AgentReport>,
        tx: mpsc::Sender<Result<pb::ReportAck, Box<Status>>>,
        stopping: watch::Receiver<bool>,
    ) {
        let fleet = self.coordinator.fleet.clone();
        let mut agent: Option<String> = None;
        let stop = stopped(stopping);
        tokio::pin!(stop);
        loop {
            let message = tokio::select! {
                message = inbound.next() => message,
                () = &mut stop => {
                    let _ = tx.send(Err(Box::new(shutting_down()))).await;
                    break;
                }
            };
            let Some(message) = message else { break };
            let report = match message {
                Ok(report) => report,
                Err(err) => {
                    tracing::debug!(agent, error = %err, "report stream ended");
                    break;
                }
            };
            if let Err(status) = self.receive(report.body, &mut agent).await {
                let _ = tx.send(Err(Box::new(status))).await;
                break;
            }
            // Longer than configured in a large fleet (see
            // `fleet::status_interval`): each ack carries the current one.
            let interval = fleet.status_interval();
            let ack = pb::ReportAck {
                seq: report.seq,
                status_interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            };
            if tx.send(Ok(ack)).await.is_err() {
                break;
            }
        }
        if let Some(id) = agent {
            tracing::info!(agent = id, "agent disconnected");
            fleet.stream_closed(&id);
            let every = fleet.status_interval() * 3;
            tokio::spawn(agent_binding::expire_when_unregistered(
                self.coordinator.client.clone(),
                fleet,
                id,
                every,
            ));
        }
    }

    /// Records one report; the first must register the agent (`agent`
    /// names it from then on). `Err`: the stream ends with it.
    async fn receive(
        &self,
        body: Option<pb::agent_report::Body>,
        agent: &mut Option<String>,
    ) -> Result<(), Status> {
        let fleet = &self.coordinator.fleet;
        match (body, agent.as_deref()) {
            (Some(pb::agent_report::Body::Registration(claimed)), None) => {
                // Boxed: inline, the etcd read's future made every
                // stream's task (one per agent, held for the stream's
                // life) about 19 KB, 190 MB of a 10,000-host
                // coordinator's memory (heaptrack); it is needed once.
                let identity = Box::pin(self.bind(&claimed)).await?;
                let id = identity.agent_id.clone();
                let (cluster, address) = (identity.cluster.clone(), identity.grpc_address.clone());
                fleet.stream_opened(identity).map_err(|refused| {
                    tracing::warn!(agent = id, error = %refused, "report stream refused");
                    Status::resource_exhausted(refused.to_string())
                })?;
                tracing::info!(agent = id, cluster, address, "agent connected");
                *agent = Some(id);
            }
            (Some(pb::agent_report::Body::Registration(_)), Some(_)) | (None, Some(_)) => {}
            (Some(pb::agent_report::Body::Status(status)), Some(id)) => fleet.status(id, status),
            (Some(pb::agent_report::Body::Event(event)), Some(id)) => fleet.event(id, event),
            (_, None) => {
                return Err(Status::failed_precondition(
                    "the first report on a stream must be the agent's registration",
                ));
            }
        }
        Ok(())
    }

    /// The identity this stream may register for `claimed`: bound to the
    /// certificate and to the agent's etcd registration (`agent_binding`).
    async fn bind(&self, claimed: &pb::AgentIdentity) -> Result<pb::AgentIdentity, Status> {
        bounds::registration(claimed).map_err(|e| {
            Status::invalid_argument(format!("registration refused: {}", Chain(&e)))
        })?;
        let client = &self.coordinator.client;
        let registration = bounded(Waits::Read, "reading the agent's registration", async {
            agent_binding::read_registration(client, &claimed.agent_id)
                .await
                .map_err(|e| Status::unavailable(chain(&e)))
        })
        .await?;
        let certificate = match &self.caller {
            Caller::Certified(identity) => Some((self.admission.policy(), identity)),
            _ => None,
        };
        agent_binding::bind(claimed, certificate, registration.as_ref()).map_err(|refusal| {
            self.admission
                .refuse(&self.caller, self.from, Method::Report, &refusal)
        })
    }
}

/// Every deployment lock, the leader key and every budget slot (only
/// `cluster`'s slots when it is not empty), as `lockstep locks` and the
/// web view show them. Unbounded in time: callers put a deadline on it.
pub(crate) async fn list_locks(
    client: &leases::Etcd,
    cluster: &str,
) -> Result<Vec<pb::LockInfo>, etcd_client::Error> {
    let mut lock_keys = Vec::new();
    for prefix in [keys::LOCKS, keys::LEADER, "/lockstep/v1/clusters/"] {
        let response = client
            .clone()
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await?;
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let is_slot = key.contains("/budget/");
            if prefix.ends_with("clusters/") && !is_slot {
                continue;
            }
            let in_cluster = is_slot && key.contains(&format!("/clusters/{cluster}/"));
            if !cluster.is_empty() && !in_cluster {
                continue;
            }
            lock_keys.push(key);
        }
    }
    let mut locks = Vec::new();
    for key in lock_keys {
        match FencedMutex::at(key.clone()).inspect(client).await {
            Ok(Some(info)) => locks.push(crate::wire::lock(&info, crate::wire::lock_kind(&key))),
            // Released between the listing and this read.
            Ok(None) => {}
            // One unreadable key (a value Lockstep did not write) must not
            // hide the others: listed without it, and said in the log.
            Err(err) => {
                tracing::warn!(key, error = %chain(&err), "cannot read a lock key; it is left out of the list")
            }
        }
    }
    Ok(locks)
}

/// Sends a deployment's events from `from_seq` on, first those in etcd,
/// then new ones as etcd sees them; ends after `Finished`.
pub(crate) async fn forward_events(
    journal: crate::journal::Journal,
    id: String,
    service: String,
    from_seq: u64,
    tx: mpsc::Sender<Result<pb::DeploymentEvent, Status>>,
) {
    let send = |event: &EventRecord| tx.send(Ok(event.wire(&id, &service)));
    let (events, revision) = match journal.events(&id, from_seq.max(1)).await {
        Ok(x) => x,
        Err(e) => {
            let _ = tx.send(Err(internal(e))).await;
            return;
        }
    };
    for event in &events {
        if send(event).await.is_err() {
            return;
        }
        if event.kind == crate::record::EventKind::Finished {
            return;
        }
    }
    let client = journal.client().clone();
    let prefix = keys::deployment_events(&id);
    let watch = client
        .watch(
            prefix.as_str(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await;
    let mut stream = match watch {
        Ok(w) => w,
        Err(e) => {
            let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
            return;
        }
    };
    while let Ok(Some(response)) = stream.message().await {
        for ev in response.events() {
            if ev.event_type() != EventType::Put {
                continue;
            }
            let Some(kv) = ev.kv() else { continue };
            // A page of one step's events (format 2) or one event.
            let page = match crate::step_log::events_in(kv.value()) {
                Ok(page) => page,
                Err(err) => {
                    tracing::warn!(deployment = id, key = %String::from_utf8_lossy(kv.key()), error = %err, "an event key holds invalid data; skipped");
                    continue;
                }
            };
            for event in page.iter().filter(|e| e.seq >= from_seq) {
                if send(event).await.is_err() {
                    return;
                }
                if event.kind == crate::record::EventKind::Finished {
                    return;
                }
            }
        }
    }
    let _ = tx
        .send(Err(Status::unavailable(
            "the event stream from etcd ended; watch again from the last seq",
        )))
        .await;
}

impl CoordinatorGrpc {
    async fn command(
        &self,
        id: &str,
        command: rollout::Command,
        cluster: Option<&str>,
        said: String,
    ) -> Result<Response<pb::Deployment>, Status> {
        self.coordinator
            .command(id, command, cluster, said)
            .await
            .map(Response::new)
            .map_err(status)
    }
}

/// "alice@ops-1: reason" from what an operator call carries; parts that
/// are missing are left out.
fn said(actor: Option<&pb::Actor>, reason: &str) -> String {
    let who = actor
        .map(|a| match (a.user.as_str(), a.host.as_str()) {
            ("", _) => String::new(),
            (user, "") => user.to_owned(),
            (user, host) => format!("{user}@{host}"),
        })
        .unwrap_or_default();
    match (who.is_empty(), reason.is_empty()) {
        (_, true) => who,
        (true, false) => format!("an operator: {reason}"),
        (false, false) => format!("{who}: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(user: &str, host: &str) -> pb::Actor {
        pb::Actor {
            user: user.into(),
            host: host.into(),
        }
    }

    #[test]
    fn said_names_whoever_and_whatever_the_call_carries() {
        let alice = actor("alice", "ops-1");
        assert_eq!(
            said(Some(&alice), "db migration"),
            "alice@ops-1: db migration"
        );
        assert_eq!(said(Some(&alice), ""), "alice@ops-1");
        assert_eq!(said(Some(&actor("bob", "")), "x"), "bob: x");
        assert_eq!(said(None, "x"), "an operator: x");
        assert_eq!(said(Some(&actor("", "h")), ""), "");
    }
}
