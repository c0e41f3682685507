//! The agent's Unix-socket API for `agentctl` (`AgentControl`).
//!
//! The socket is created mode 0660, owned by root and the configured
//! control group. Every call is checked again against the caller's
//! SO_PEERCRED: root, or a process whose groups include the control group.
//! Anyone else is refused with a message that says so.
//!
//! `logs --follow` streams from a task that belongs to the response stream
//! ([`follow`]); every follower ends when shutdown begins.
//!
//! Must never: open a path on a caller's behalf (bundles are streamed in),
//! serve a caller it could not identify, or keep a stream open past the
//! start of shutdown (the server's graceful shutdown waits for it).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use cli::{Chain, chain};
use nix::unistd::{Gid, Group};
use proto::v1 as pb;
use proto::v1::agent_control_server::{AgentControl, AgentControlServer};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::Stream;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status, Streaming};

use crate::admission::LockReading;
use crate::host::{FenceReset, FenceView, Host, HostError, RestartOrder};
use crate::wire;

mod follow;

/// `agentctl logs` without `-n`.
const DEFAULT_LOG_LINES: usize = 50;
/// A bundle upload larger than this is refused before it fills the disk.
const MAX_UPLOAD_BYTES: u64 = 8 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "control group `{group}` does not exist on this host (create it, or remove control.group)"
    )]
    UnknownGroup { group: String },
    #[error("cannot look up control group `{group}`: {source}")]
    GroupLookup {
        group: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot create the control socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Who may call.
#[derive(Debug, Clone)]
pub struct Access {
    group: Option<(String, Gid)>,
}

impl Access {
    pub fn new(group: Option<&str>) -> Result<Self, ControlError> {
        let group = match group {
            None => None,
            Some(name) => {
                let found = Group::from_name(name).map_err(|source| ControlError::GroupLookup {
                    group: name.to_owned(),
                    source,
                })?;
                let found = found.ok_or_else(|| ControlError::UnknownGroup {
                    group: name.to_owned(),
                })?;
                Some((name.to_owned(), found.gid))
            }
        };
        Ok(Self { group })
    }

    /// Allows the call or refuses it; returns the caller's uid.
    fn check<T>(&self, request: &Request<T>) -> Result<Option<u32>, Status> {
        let cred = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .ok_or_else(|| {
                Status::permission_denied("cannot identify the caller (no peer credentials)")
            })?;
        if cred.uid() == 0 {
            return Ok(Some(0));
        }
        let Some((name, gid)) = &self.group else {
            return Err(Status::permission_denied(format!(
                "uid {} is not root, and this agent has no control group",
                cred.uid()
            )));
        };
        let in_group = cred.gid() == gid.as_raw()
            || cred
                .pid()
                .is_some_and(|pid| supplementary_groups(pid).contains(&gid.as_raw()));
        if in_group {
            Ok(Some(cred.uid()))
        } else {
            Err(Status::permission_denied(format!(
                "uid {} is neither root nor in group `{name}`",
                cred.uid()
            )))
        }
    }
}

/// The caller's supplementary groups, from /proc (the socket only carries
/// the primary gid).
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|groups| {
                    groups
                        .split_whitespace()
                        .filter_map(|g| g.parse().ok())
                        .collect()
                })
        })
        .unwrap_or_default()
}

/// Creates the control socket at `path`, replacing one a previous agent
/// left: mode 0660, group-owned by the control group. The agent calls this
/// before it sends READY=1, so that agentctl can connect as soon as systemd
/// says the agent is up, and a socket that cannot be created fails the
/// start instead of leaving an agent nobody can reach.
pub async fn bind(path: &Path, access: &Access) -> Result<UnixListener, ControlError> {
    let socket_err = |source| ControlError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(socket_err)?;
    }
    // A socket file left by a previous agent: nothing listens on it.
    match tokio::fs::remove_file(path).await {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(socket_err(err)),
    }
    let listener = UnixListener::bind(path).map_err(socket_err)?;
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .await
        .map_err(socket_err)?;
    if let Some((_, gid)) = &access.group {
        nix::unistd::chown(path, None, Some(*gid))
            .map_err(|e| socket_err(std::io::Error::from(e)))?;
    }
    tracing::info!(path = %path.display(), "control socket listening");
    Ok(listener)
}

/// Serves `AgentControl` on `listener` (from [`bind`]) until `shutdown`
/// resolves.
pub async fn serve(
    host: Arc<Host>,
    access: Access,
    listener: UnixListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControlError> {
    // Followers end as shutdown begins: the server's graceful shutdown
    // waits for every open stream.
    let (stopping_tx, stopping) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    let service = ControlService {
        host,
        access,
        stopping,
    };
    tonic::transport::Server::builder()
        .add_service(AgentControlServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

#[derive(Debug)]
struct ControlService {
    host: Arc<Host>,
    access: Access,
    /// Turns true when the agent starts shutting down.
    stopping: watch::Receiver<bool>,
}

/// A host refusal as a reply (not an RPC error): agentctl prints the message.
fn refused(err: &HostError) -> pb::CommandVerdict {
    pb::CommandVerdict {
        outcome: pb::CommandOutcome::Refused.into(),
        refusal: err.refusal().into(),
        message: chain(err),
        fencing_high_water: 0,
    }
}

fn accepted(message: String) -> pb::CommandVerdict {
    pb::CommandVerdict {
        outcome: pb::CommandOutcome::Accepted.into(),
        refusal: pb::RefusalReason::Unspecified.into(),
        message,
        fencing_high_water: 0,
    }
}

/// `agentctl fence`'s answer, on the wire.
fn fence_response(view: FenceView) -> pb::ControlFenceResponse {
    use pb::FenceLockState as S;
    let (state, token) = match view.lock {
        LockReading::Held(token) => (S::Held, token),
        LockReading::Free { revision } => (S::Free, revision),
        LockReading::Unreadable => (S::Unreadable, 0),
        LockReading::Unchecked => (S::Unchecked, 0),
    };
    pb::ControlFenceResponse {
        lock_key: leases::keys::deploy_lock(&view.service),
        service: view.service,
        high_water: view.high_water,
        lock_state: state.into(),
        lock_token: token,
        unread: view.unread.as_ref().map(|e| chain(e)).unwrap_or_default(),
        reset: view.reset_to.is_some(),
        reset_to: view.reset_to.unwrap_or_default(),
    }
}

fn not_found(err: &HostError) -> Status {
    match err {
        HostError::UnknownService { .. } => Status::not_found(chain(err)),
        _ => Status::internal(chain(err)),
    }
}

impl ControlService {
    async fn reply(&self, service: &str, result: Result<String, HostError>) -> pb::SwitchReply {
        let verdict = match &result {
            Ok(message) => accepted(message.clone()),
            Err(err) => refused(err),
        };
        let service = self
            .host
            .status(service)
            .await
            .ok()
            .and_then(|mut s| s.pop());
        pb::SwitchReply {
            verdict: Some(verdict),
            service,
        }
    }

    async fn spool(
        &self,
        mut stream: Streaming<pb::InstallChunk>,
    ) -> Result<(tempfile::TempPath, String), Status> {
        let first = stream
            .message()
            .await?
            .and_then(|c| c.body)
            .ok_or_else(|| Status::invalid_argument("empty upload"))?;
        let pb::install_chunk::Body::Header(header) = first else {
            return Err(Status::invalid_argument(
                "the first message must be the header",
            ));
        };
        let dir = self.host.config().data_dir.join("spool");
        let (file, path) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            tempfile::Builder::new()
                .prefix("upload-")
                .tempfile_in(&dir)
                .map(tempfile::NamedTempFile::into_parts)
        })
        .await
        .map_err(|e| Status::internal(chain(&e)))?
        .map_err(|e| Status::internal(format!("cannot spool the bundle: {}", Chain(&e))))?;
        let mut file = tokio::fs::File::from_std(file);
        let mut total: u64 = 0;
        while let Some(chunk) = stream.message().await? {
            let Some(pb::install_chunk::Body::Data(data)) = chunk.body else {
                return Err(Status::invalid_argument("only data may follow the header"));
            };
            total += data.len() as u64;
            if total > MAX_UPLOAD_BYTES {
                return Err(Status::resource_exhausted(format!(
                    "bundle larger than {MAX_UPLOAD_BYTES} bytes"
                )));
            }
            file.write_all(&data)
                .await
                .map_err(|e| Status::internal(format!("cannot spool the bundle: {e}")))?;
        }
        file.flush()
            .await
            .map_err(|e| Status::internal(format!("cannot spool the bundle: {e}")))?;
        tracing::info!(source = %header.source, reason = %header.reason, bytes = total, "bundle uploaded");
        Ok((path, header.source))
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogLine, Status>> + Send>>;

#[tonic::async_trait]
impl AgentControl for ControlService {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.access.check(&request)?;
        let services = self
            .host
            .status(&request.get_ref().service)
            .await
            .map_err(|e| not_found(&e))?;
        Ok(Response::new(pb::StatusResponse {
            agent: Some(self.host.identity()),
            services,
        }))
    }

    async fn install(
        &self,
        request: Request<Streaming<pb::InstallChunk>>,
    ) -> Result<Response<pb::SwitchReply>, Status> {
        self.access.check(&request)?;
        let (path, _source) = self.spool(request.into_inner()).await?;
        let result = self.host.install(path.to_path_buf()).await;
        let service = match &result {
            Ok((service, _)) => Some(service.clone()),
            Err(HostError::SwitchFailed(failure)) => Some(failure.service.clone()),
            Err(_) => None,
        };
        let result = result.map(|(_, message)| message);
        let reply = match service {
            Some(service) => self.reply(&service, result).await,
            // Nothing was switched: the bundle itself was refused.
            None => pb::SwitchReply {
                verdict: Some(match &result {
                    Ok(message) => accepted(message.clone()),
                    Err(err) => refused(err),
                }),
                service: None,
            },
        };
        Ok(Response::new(reply))
    }

    async fn restart(
        &self,
        request: Request<pb::ControlRestartRequest>,
    ) -> Result<Response<pb::SwitchReply>, Status> {
        let actor_uid = self.access.check(&request)?;
        let r = request.into_inner();
        if r.force && r.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "--force needs --reason: it is recorded",
            ));
        }
        let order = RestartOrder {
            token: None,
            forced: r.force,
            reason: r.reason.clone(),
            actor_uid,
            seq: 0,
        };
        let result = self.host.restart(&r.service, order).await;
        Ok(Response::new(self.reply(&r.service, result).await))
    }

    async fn fence(
        &self,
        request: Request<pb::ControlFenceRequest>,
    ) -> Result<Response<pb::ControlFenceResponse>, Status> {
        let actor_uid = self.access.check(&request)?;
        let r = request.into_inner();
        let reset = match (r.reset, r.force) {
            (false, false) => None,
            (false, true) => {
                return Err(Status::invalid_argument(
                    "--force goes only with fence reset",
                ));
            }
            (true, _) if r.reason.trim().is_empty() => {
                return Err(Status::invalid_argument(
                    "fence reset needs --reason: it is recorded in the audit log",
                ));
            }
            (true, force) => Some(FenceReset {
                force,
                reason: r.reason.clone(),
                actor_uid,
            }),
        };
        match self.host.fence(&r.service, reset).await {
            Ok(view) => Ok(Response::new(fence_response(view))),
            Err(err @ HostError::UnknownService { .. }) => Err(Status::not_found(err.to_string())),
            Err(err @ (HostError::FenceResetNeedsForce { .. } | HostError::FenceMoved { .. })) => {
                Err(Status::failed_precondition(err.to_string()))
            }
            Err(err) => Err(Status::internal(chain(&err))),
        }
    }

    async fn rollback(
        &self,
        request: Request<pb::ControlRollbackRequest>,
    ) -> Result<Response<pb::SwitchReply>, Status> {
        self.access.check(&request)?;
        let r = request.into_inner();
        let result = self.host.rollback(&r.service, None).await;
        Ok(Response::new(self.reply(&r.service, result).await))
    }

    async fn releases(
        &self,
        request: Request<pb::ReleasesRequest>,
    ) -> Result<Response<pb::ReleasesResponse>, Status> {
        self.access.check(&request)?;
        let service = &request.get_ref().service;
        let durable = self
            .host
            .releases(service)
            .await
            .map_err(|e| not_found(&e))?;
        Ok(Response::new(wire::releases(service, &durable)))
    }

    type LogsStream = LogStream;

    async fn logs(&self, request: Request<pb::LogsRequest>) -> Result<Response<LogStream>, Status> {
        self.access.check(&request)?;
        let r = request.into_inner();
        let lines = if r.lines == 0 {
            DEFAULT_LOG_LINES
        } else {
            r.lines as usize
        };
        if r.follow {
            let stream = follow::start(
                self.host.clone(),
                r.service,
                r.slot,
                lines,
                self.stopping.clone(),
            )
            .await?;
            return Ok(Response::new(stream));
        }
        let tails = self
            .host
            .logs(&r.service, lines)
            .await
            .map_err(|e| not_found(&e))?;
        let wanted = |slot: u32| r.slot.is_none_or(|s| s == slot);
        let mut out = Vec::new();
        for (slot, _path, tail) in tails.into_iter().filter(|(slot, _, _)| wanted(*slot)) {
            out.extend(tail.into_iter().map(|line| Ok(pb::LogLine { slot, line })));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(out))))
    }

    async fn locks(
        &self,
        request: Request<pb::ControlLocksRequest>,
    ) -> Result<Response<pb::ControlLocksResponse>, Status> {
        self.access.check(&request)?;
        let cluster = self.host.config().cluster.to_string();
        let Some(link) = self.host.cluster() else {
            return Ok(Response::new(pb::ControlLocksResponse {
                cluster,
                unavailable:
                    "this agent has no [etcd] configured: it runs without a disruption budget"
                        .to_owned(),
                ..Default::default()
            }));
        };
        let response = match link.budget().await {
            Ok(view) => pb::ControlLocksResponse {
                cluster,
                budget: view.max_disruptions,
                holders: view.holders.iter().map(slot_info).collect(),
                waiters: view.waiters.iter().map(slot_info).collect(),
                unavailable: String::new(),
            },
            // Bad data in etcd is not an outage: name it and fail, so
            // that nobody mistakes it for "etcd is down, wait".
            Err(err) if err.malformed_key().is_some() => {
                let policy = leases::keys::cluster_policy(&cluster);
                let hint = if err.malformed_key() == Some(policy.as_str()) {
                    format!("; fix it, e.g. etcdctl put {policy} '{{\"max_disruptions\": 1}}'")
                } else {
                    String::new()
                };
                return Err(Status::failed_precondition(format!(
                    "{}{hint}",
                    chain(&err)
                )));
            }
            Err(err) => pb::ControlLocksResponse {
                cluster,
                unavailable: chain(&err),
                ..Default::default()
            },
        };
        Ok(Response::new(response))
    }
}

fn slot_info(slot: &leases::SlotInfo) -> pb::LockInfo {
    pb::LockInfo {
        kind: pb::LockKind::DisruptionSlot.into(),
        key: slot.name.clone(),
        holder: Some(pb::LockHolder {
            host: slot.holder.host.clone(),
            pid: slot.holder.pid,
            user: slot.holder.user.clone(),
        }),
        purpose: slot.purpose.clone(),
        since_unix_ms: slot.since_unix_ms,
        ttl_left_ms: 0,
        fencing_token: u64::try_from(slot.create_revision).unwrap_or(0),
        leaseless: slot.lease == 0,
    }
}
