//! What a host command ends with when it does not succeed: `HostError`,
//! and the two stories told whole, `SwitchFailure` and `Superseded`.

use std::path::PathBuf;

use release::StoreError;

use crate::cluster::ClusterError;
use crate::instance::InstanceError;
use crate::state::{StaleToken, StateError};
use crate::supervisor::SocketError;

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

pub(super) fn with_kept(err: HostError, kept: &str) -> HostError {
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
