//! The connection to the agent, and what a failure means for the exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hyper_util::rt::TokioIo;
use proto::v1::agent_control_client::AgentControlClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

pub type Client = AgentControlClient<Channel>;

/// EX_UNAVAILABLE from sysexits.h.
const EXIT_UNREACHABLE: u8 = 69;
/// EX_NOPERM from sysexits.h.
const EXIT_NOT_ALLOWED: u8 = 77;

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(
        "no lockstep-agent answers on {path} ({detail}); is it running? (`systemctl status lockstep-agent`; or pass --socket)"
    )]
    Unreachable { path: PathBuf, detail: String },
    #[error(
        "not allowed to use {path} ({detail}); run as root or as a member of the agent's control group"
    )]
    NotAllowed { path: PathBuf, detail: String },
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Local(String),
}

impl Failure {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Unreachable { .. } => ExitCode::from(EXIT_UNREACHABLE),
            Self::NotAllowed { .. } => ExitCode::from(EXIT_NOT_ALLOWED),
            Self::Refused(_) | Self::Local(_) => ExitCode::FAILURE,
        }
    }

    /// Maps an RPC error to what the operator should do about it.
    pub fn from_status(socket: &Path, status: &tonic::Status) -> Self {
        match status.code() {
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => Self::NotAllowed {
                path: socket.to_owned(),
                detail: status.message().to_owned(),
            },
            tonic::Code::Unavailable => Self::Unreachable {
                path: socket.to_owned(),
                detail: status.message().to_owned(),
            },
            _ => Self::Refused(status.message().to_owned()),
        }
    }
}

/// Connects to the control socket, telling "not running" from "not allowed".
pub async fn control_client(socket: &Path) -> Result<Connected, Failure> {
    // Probe once ourselves: tonic's lazy errors lose the errno.
    if let Err(err) = UnixStream::connect(socket).await {
        let detail = err.to_string();
        return Err(if err.kind() == std::io::ErrorKind::PermissionDenied {
            Failure::NotAllowed {
                path: socket.to_owned(),
                detail,
            }
        } else {
            Failure::Unreachable {
                path: socket.to_owned(),
                detail,
            }
        });
    }
    let path = socket.to_owned();
    // The URI is required by the API and ignored by the connector.
    let channel = Endpoint::from_static("http://agent.local")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|e| Failure::Unreachable {
            path: socket.to_owned(),
            detail: e.to_string(),
        })?;
    Ok(Connected {
        client: AgentControlClient::new(channel),
        socket: socket.to_owned(),
    })
}

/// A client plus the socket path, for error messages.
#[derive(Debug)]
pub struct Connected {
    pub client: Client,
    pub socket: PathBuf,
}

impl Connected {
    pub fn fail(&self, status: &tonic::Status) -> Failure {
        Failure::from_status(&self.socket, status)
    }
}
