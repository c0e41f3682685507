//! Process supervision for lockstep-agent.
//!
//! Owns running one release's processes on this host: spawning each
//! instance in its own session and process group with the manifest's argv,
//! env, working dir and user/group (never through a shell), handing it the
//! agent-held `[[listen]]` sockets by the systemd socket-activation protocol,
//! writing its output to size-rotated log files, restarting it with
//! exponential backoff and jitter, detecting crash loops, probing readiness
//! and liveness, stopping it gracefully (stop signal to the group,
//! `stop_timeout`, SIGKILL, every child reaped), and recording each running
//! process durably so that a restarted agent can adopt it (or, on
//! `detach`, leaving it running for that agent).
//!
//! ```text
//!                 ┌──────── policy (pure: step(now, jitter, event) -> actions) ─────────┐
//! Instance ──▶ driver task ──▶ spawn ──▶ exec shim (`agent __exec-shim`) ──▶ app (pgid = pid)
//!   status ◀── watch          │           setsid, fds 3.., LISTEN_*, uid/gid, exec
//!   log_tail ◀── logs ◀── the app's stdout + stderr (the file, O_APPEND)
//!   record ──▶ DIR/SERVICE-SLOT-DIGEST12.json (pid, start time, ready)
//!   ListenSockets (bound once, shared by the old and the new release;
//!                  recovered from an adopted process with pidfd_getfd)
//! ```
//!
//! | module | owns |
//! |---|---|
//! | [`policy`] | every decision: restart or not, backoff, crash loop, readiness, stop escalation |
//! | [`instance`] | the driver: effects of the policy's actions on a tokio task, status channel |
//! | [`spawn`] / [`shim`] | starting a process without `unsafe` (the shim re-exec), the wire request |
//! | [`sockets`] | binding and holding the `[[listen]]` sockets |
//! | [`logs`] | per-instance log files, rotation, `tail` |
//! | [`record`] | durable process records, "is it still the same process", the adoption verdict |
//! | [`readiness`] | the probe interface the supervisor calls |
//!
//! No `unsafe` here: work that must happen between fork and exec runs in
//! the exec shim, a fresh process of the agent binary (see [`shim`]).
//!
//! Must never: run an app through a shell, leave a process of a stopped
//! instance alive or a child unreaped, sleep before a restart the policy
//! wants now, or stop an instance on its own initiative (only on `stop`).

pub mod instance;
pub mod logs;
pub mod policy;
pub mod readiness;
pub mod record;
pub mod shim;
pub mod sockets;
pub mod spawn;

use std::path::PathBuf;

pub use instance::{AdoptedProcess, Instance, InstanceSpec, InstanceStatus, StopReport};
pub use logs::{LOG_KEEP, LOG_MAX_BYTES, LogConfig, LogError, LogFile, ROTATE_CHECK};
pub use policy::{InstanceState, PolicyConfig};
pub use readiness::{AlwaysReady, ReadinessCheck};
pub use shim::{EXEC_SHIM_ARG, SHIM_FAILURE_EXIT, run_exec_shim};
pub use sockets::{ListenSocket, ListenSockets, SocketError};
pub use spawn::{DEFAULT_SHIM, SpawnError};

/// Why an instance could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("instances must be started inside a tokio runtime")]
    NoRuntime,
    #[error("{path} does not exist or cannot be read")]
    Missing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("cannot open the instance log")]
    Log(#[source] LogError),
    #[error("the instance task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error("the instance task ended without a stop report")]
    Gone,
}
