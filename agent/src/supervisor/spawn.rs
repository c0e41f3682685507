//! Spawning one app process through the exec shim (agent side).
//!
//! Owns turning an instance's run spec into a [`ShimRequest`] (absolute
//! program inside the release root, argv as written, the exact environment,
//! working dir, user/group, socket names) and starting the shim with the
//! control socket as its stdin and the instance log (`O_APPEND`) as its
//! stdout and stderr.
//!
//! ```text
//! socketpair(SEQPACKET) ── sendmsg(request JSON + SCM_RIGHTS sockets) ──▶ queued
//! LogFile::app_output ──▶ shim stdout + stderr (no reader needed: see logs)
//! spawn(shim __exec-shim, env cleared, stdin = control socket) ──▶ pid (= app pid after exec)
//! ```
//!
//! Must never: use a shell, or fork and run code in the child (no `pre_exec`).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

use super::shim::{EXEC_SHIM_ARG, SendError, ShimRequest, send_request};
use super::sockets::ListenSockets;

/// Where the shim is by default: the running agent binary itself.
pub const DEFAULT_SHIM: &str = "/proc/self/exe";

/// Why a process could not be spawned.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot create the shim control socket")]
    Socketpair(#[source] nix::Error),
    #[error("cannot pass the spawn request to the shim")]
    Send(#[source] SendError),
    #[error("cannot spawn the exec shim {shim}")]
    Spawn {
        shim: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("exec shim {shim} exited before its pid was known")]
    NoPid { shim: PathBuf },
}

/// A spawned process: its (reapable) child handle and pid.
#[derive(Debug)]
pub struct Spawned {
    pub child: tokio::process::Child,
    pub pid: u32,
}

/// The environment an app gets: the manifest's env, then the agent's
/// variables (they win; the manifest cannot set `LOCKSTEP_*` anyway). The
/// shim adds PATH if missing and the LISTEN_* variables.
pub fn app_env(
    manifest_env: &BTreeMap<String, String>,
    agent_env: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = manifest_env.clone();
    env.extend(agent_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// Spawns `req` through the shim at `shim`, handing it `sockets` (fds 3..)
/// and `output` (stdout, stderr). Must run inside a tokio runtime (the
/// child registers with it).
pub fn spawn(
    shim: &Path,
    req: &ShimRequest,
    sockets: &ListenSockets,
    output: (File, File),
) -> Result<Spawned, SpawnError> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(SpawnError::Socketpair)?;
    // Queued before the shim exists; it reads the message when it starts.
    send_request(&ours, req, &sockets.raw_fds()).map_err(SpawnError::Send)?;
    drop(ours);

    let (stdout, stderr) = output;
    let child = {
        // The Command (and with it the agent's copies of the output files and
        // of the shim's control socket) is dropped at the end of this block.
        let mut cmd = tokio::process::Command::new(shim);
        cmd.arg(EXEC_SHIM_ARG)
            .env_clear()
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .kill_on_drop(false);
        cmd.spawn().map_err(|source| SpawnError::Spawn {
            shim: shim.to_owned(),
            source,
        })?
    };
    let pid = child.id().ok_or_else(|| SpawnError::NoPid {
        shim: shim.to_owned(),
    })?;
    Ok(Spawned { child, pid })
}
