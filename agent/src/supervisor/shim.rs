//! The exec shim: the few steps between fork and the app's `exec`, in safe Rust.
//!
//! Safe Rust has no `pre_exec`, so the agent does not run code in a forked
//! copy of itself. It spawns a fresh process of its own binary instead
//! (`/proc/self/exe __exec-shim`) whose stdin is one end of a `SOCK_SEQPACKET`
//! socketpair. The agent has already queued one message there: a JSON
//! [`ShimRequest`] plus the listening sockets as `SCM_RIGHTS`. The shim, a
//! normal process where allocating is fine:
//!
//! ```text
//! setsid()                               own session = own process group (pgid = pid)
//! recvmsg(stdin) ──▶ request + fds       the fds land at 3, 4, … (only 0-2 are open); checked
//! dup2(/dev/null → stdin)                the control socket is gone
//! initgroups/setgroups, setgid, setuid   optional user/group drop (group first)
//! env = request env + LISTEN_FDS=n, LISTEN_PID=getpid(), LISTEN_FDNAMES=a:b
//! exec(root/program, argv) in working dir, no shell (std's exec resets SIGPIPE and the signal mask)
//! ```
//!
//! `exec` keeps the pid, so LISTEN_PID is the app's own pid and the agent's
//! child pid is the app's pid. stdout/stderr are the agent's log pipe.
//!
//! Contract with the binary: `main` must call [`run_exec_shim`] when
//! `argv[1] == "__exec-shim"`, *before* opening any file, socket or runtime
//! (the shim verifies that the sockets land at fd 3.. and refuses otherwise).
//! On any failure before exec the shim prints one line
//! `lockstep-exec-shim: <reason>` to stderr (the instance log) and exits with
//! [`SHIM_FAILURE_EXIT`] (127); the app is then never started.
//!
//! Must never: exec the app with the sockets at other fds than 3.., run the
//! command through a shell, pass the agent's own environment, or keep the
//! control socket open in the app.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use nix::unistd::{Gid, Group, Uid, User};
use serde::{Deserialize, Serialize};

/// The reserved first argument that makes the agent binary act as the shim.
pub const EXEC_SHIM_ARG: &str = "__exec-shim";
/// Exit code of a shim that could not exec the app (as a shell's "cannot execute").
pub const SHIM_FAILURE_EXIT: u8 = 127;
/// The most sockets one `SCM_RIGHTS` message carries on Linux (`SCM_MAX_FD`).
pub const MAX_SOCKETS: usize = 253;
/// Largest request: argv + env of a sane app are a few KiB; a `SOCK_SEQPACKET`
/// message must fit the socket buffer (`wmem_default`, ~208 KiB).
pub const MAX_REQUEST_BYTES: usize = 128 * 1024;
/// The first fd of the passed sockets (systemd's `SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;
/// PATH when the manifest gives none: the usual system directories.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Version of [`ShimRequest`]; a shim from another agent build refuses a mismatch.
const PROTOCOL_VERSION: u32 = 1;

/// What the shim must exec, sent by the agent over the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimRequest {
    pub protocol: u32,
    /// Absolute path of the program (the release root joined with `run.command[0]`).
    pub program: PathBuf,
    /// Full argv, argv[0] included (as written in the manifest).
    pub argv: Vec<String>,
    /// The whole environment of the app, except the LISTEN_* variables.
    pub env: BTreeMap<String, String>,
    pub working_dir: PathBuf,
    pub user: Option<String>,
    pub group: Option<String>,
    /// `[[listen]]` names, in the order of the fds.
    pub fd_names: Vec<String>,
}

impl ShimRequest {
    pub fn new(
        program: PathBuf,
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        working_dir: PathBuf,
        user: Option<String>,
        group: Option<String>,
        fd_names: Vec<String>,
    ) -> Self {
        Self {
            protocol: PROTOCOL_VERSION,
            program,
            argv,
            env,
            working_dir,
            user,
            group,
            fd_names,
        }
    }
}

/// Why the shim could not exec the app (one line each, on the instance log).
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("setsid failed")]
    Setsid(#[source] nix::Error),
    #[error("cannot receive the spawn request on stdin (is this the agent's exec shim?)")]
    Receive(#[source] nix::Error),
    #[error(
        "spawn request is truncated (more than {MAX_REQUEST_BYTES} bytes or {MAX_SOCKETS} sockets)"
    )]
    Truncated,
    #[error("no spawn request on stdin")]
    Empty,
    #[error("spawn request is not valid")]
    Decode(#[source] serde_json::Error),
    #[error("spawn request has protocol {found}, this shim speaks {PROTOCOL_VERSION}")]
    Protocol { found: u32 },
    #[error("spawn request names {names} sockets but carries {fds}")]
    FdCount { names: usize, fds: usize },
    #[error(
        "sockets arrived at fds {got:?}, expected {expected:?}: another fd was open in the shim; refusing to start the app with wrong LISTEN_FDS"
    )]
    FdPlacement {
        got: Vec<RawFd>,
        expected: Vec<RawFd>,
    },
    #[error("cannot replace stdin with /dev/null")]
    DevNull(#[source] std::io::Error),
    #[error("cannot redirect stdin")]
    Dup2(#[source] nix::Error),
    #[error("unknown user `{0}`")]
    UnknownUser(String),
    #[error("unknown group `{0}`")]
    UnknownGroup(String),
    #[error("cannot look up `{name}`")]
    Lookup {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("`{name}` contains a NUL byte")]
    Nul { name: String },
    #[error("cannot set supplementary groups for gid {gid}")]
    Groups {
        gid: u32,
        #[source]
        source: nix::Error,
    },
    #[error("cannot setgid({gid})")]
    Setgid {
        gid: u32,
        #[source]
        source: nix::Error,
    },
    #[error("cannot setuid({uid})")]
    Setuid {
        uid: u32,
        #[source]
        source: nix::Error,
    },
    #[error("empty argv")]
    NoArgv,
    #[error("cannot exec {program} in {working_dir}")]
    Exec {
        program: PathBuf,
        working_dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why the agent could not hand a request to a shim.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("spawn request does not serialize")]
    Encode(#[source] serde_json::Error),
    #[error("spawn request is {size} bytes, more than {MAX_REQUEST_BYTES}")]
    TooLarge { size: usize },
    #[error("{count} sockets, more than the {MAX_SOCKETS} one message can carry")]
    TooManySockets { count: usize },
    #[error("names {names} sockets but passes {fds}")]
    FdCount { names: usize, fds: usize },
    #[error("sendmsg on the shim control socket failed")]
    Send(#[source] nix::Error),
}

/// Queues `req` and `fds` on the agent's end of the control socket (the shim
/// reads them when it starts; the message waits in the socket buffer).
pub fn send_request(sock: &OwnedFd, req: &ShimRequest, fds: &[RawFd]) -> Result<(), SendError> {
    if fds.len() > MAX_SOCKETS {
        return Err(SendError::TooManySockets { count: fds.len() });
    }
    if fds.len() != req.fd_names.len() {
        return Err(SendError::FdCount {
            names: req.fd_names.len(),
            fds: fds.len(),
        });
    }
    let body = serde_json::to_vec(req).map_err(SendError::Encode)?;
    if body.len() > MAX_REQUEST_BYTES {
        return Err(SendError::TooLarge { size: body.len() });
    }
    let iov = [IoSlice::new(&body)];
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(fds)]
    };
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None)
        .map_err(SendError::Send)?;
    Ok(())
}

/// The shim's whole life: returns only on failure (after printing the reason).
pub fn run_exec_shim() -> ExitCode {
    match exec_app() {
        Ok(never) => match never {},
        Err(e) => {
            let mut line = format!("lockstep-exec-shim: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                line.push_str(": ");
                line.push_str(&s.to_string());
                source = s.source();
            }
            eprintln!("{line}");
            ExitCode::from(SHIM_FAILURE_EXIT)
        }
    }
}

fn exec_app() -> Result<std::convert::Infallible, ShimError> {
    nix::unistd::setsid().map_err(ShimError::Setsid)?;
    let (req, fds) = receive()?;
    let expected: Vec<RawFd> = (0..fds.len())
        .map(|i| LISTEN_FDS_START + i as RawFd)
        .collect();
    if fds != expected {
        return Err(ShimError::FdPlacement { got: fds, expected });
    }
    if req.protocol != PROTOCOL_VERSION {
        return Err(ShimError::Protocol {
            found: req.protocol,
        });
    }
    if req.fd_names.len() != fds.len() {
        return Err(ShimError::FdCount {
            names: req.fd_names.len(),
            fds: fds.len(),
        });
    }
    warn_inherited_fds(fds.len());
    // The control socket goes away: stdin becomes /dev/null.
    let null = std::fs::File::open("/dev/null").map_err(ShimError::DevNull)?;
    nix::unistd::dup2_stdin(&null).map_err(ShimError::Dup2)?;
    drop(null);

    let mut env = req.env.clone();
    drop_privileges(&req, &mut env)?;
    env.entry("PATH".to_owned())
        .or_insert_with(|| DEFAULT_PATH.to_owned());
    if !fds.is_empty() {
        env.insert("LISTEN_FDS".to_owned(), fds.len().to_string());
        env.insert(
            "LISTEN_PID".to_owned(),
            nix::unistd::getpid().as_raw().to_string(),
        );
        env.insert("LISTEN_FDNAMES".to_owned(), req.fd_names.join(":"));
    }
    let (argv0, rest) = req.argv.split_first().ok_or(ShimError::NoArgv)?;
    let err = std::process::Command::new(&req.program)
        .arg0(argv0)
        .args(rest)
        .env_clear()
        .envs(&env)
        .current_dir(&req.working_dir)
        .exec();
    Err(ShimError::Exec {
        program: req.program,
        working_dir: req.working_dir,
        source: err,
    })
}

/// Fds above the sockets were inherited by the agent without close-on-exec
/// (safe Rust cannot close an fd it does not own); say so in the instance
/// log rather than pass them silently.
fn warn_inherited_fds(sockets: usize) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let first_extra = LISTEN_FDS_START + sockets as RawFd;
    let listed: Vec<RawFd> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<RawFd>().ok())
        .filter(|&fd| fd >= first_extra)
        .collect();
    // The directory handle is one of the listed fds: it is closed once the
    // scan is done (above), so only fds still open now were inherited.
    let mut extra: Vec<RawFd> = listed
        .into_iter()
        .filter(|&fd| std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok())
        .collect();
    extra.sort_unstable();
    if !extra.is_empty() {
        eprintln!(
            "lockstep-exec-shim: warning: fds {extra:?} were inherited by the agent without close-on-exec and stay open in the app"
        );
    }
}

fn receive() -> Result<(ShimRequest, Vec<RawFd>), ShimError> {
    let mut buf = vec![0u8; MAX_REQUEST_BYTES + 1];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_SOCKETS]);
    let (bytes, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            std::io::stdin().as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .map_err(ShimError::Receive)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(ShimError::Receive)? {
            if let ControlMessageOwned::ScmRights(received) = c {
                fds.extend(received);
            }
        }
        if msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
        {
            return Err(ShimError::Truncated);
        }
        (msg.bytes, fds)
    };
    if bytes == 0 {
        return Err(ShimError::Empty);
    }
    let req: ShimRequest = serde_json::from_slice(&buf[..bytes]).map_err(ShimError::Decode)?;
    Ok((req, fds))
}

/// Group first (setgid needs the privilege setuid gives up), then user; sets
/// HOME/USER/LOGNAME for a named user unless the manifest set them.
fn drop_privileges(req: &ShimRequest, env: &mut BTreeMap<String, String>) -> Result<(), ShimError> {
    let user = match &req.user {
        Some(name) => Some(lookup_user(name)?),
        None => None,
    };
    let gid = match (&req.group, &user) {
        (Some(name), _) => Some(lookup_group(name)?),
        (None, Some(u)) => Some(u.gid),
        (None, None) => None,
    };
    let root = Uid::effective().is_root();
    if let Some(gid) = gid {
        if root {
            let groups = match &user {
                Some(u) => {
                    let name = CString::new(u.name.clone()).map_err(|_| ShimError::Nul {
                        name: u.name.clone(),
                    })?;
                    nix::unistd::initgroups(&name, gid)
                }
                None => nix::unistd::setgroups(&[gid]),
            };
            groups.map_err(|source| ShimError::Groups {
                gid: gid.as_raw(),
                source,
            })?;
        }
        if gid != Gid::effective() || root {
            nix::unistd::setgid(gid).map_err(|source| ShimError::Setgid {
                gid: gid.as_raw(),
                source,
            })?;
        }
    }
    if let Some(u) = user {
        if u.uid != Uid::effective() || root {
            nix::unistd::setuid(u.uid).map_err(|source| ShimError::Setuid {
                uid: u.uid.as_raw(),
                source,
            })?;
        }
        env.entry("USER".to_owned())
            .or_insert_with(|| u.name.clone());
        env.entry("LOGNAME".to_owned())
            .or_insert_with(|| u.name.clone());
        env.entry("HOME".to_owned())
            .or_insert_with(|| u.dir.to_string_lossy().into_owned());
    }
    Ok(())
}

fn lookup_user(name: &str) -> Result<User, ShimError> {
    let found = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(name),
    };
    found
        .map_err(|source| ShimError::Lookup {
            name: name.to_owned(),
            source,
        })?
        .ok_or_else(|| ShimError::UnknownUser(name.to_owned()))
}

fn lookup_group(name: &str) -> Result<Gid, ShimError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(Gid::from_raw(gid));
    }
    Group::from_name(name)
        .map_err(|source| ShimError::Lookup {
            name: name.to_owned(),
            source,
        })?
        .map(|g| g.gid)
        .ok_or_else(|| ShimError::UnknownGroup(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_through_json() {
        let req = ShimRequest::new(
            "/r/bin/app".into(),
            vec!["bin/app".into(), "$(touch x)".into()],
            BTreeMap::from([("A".to_owned(), "1".to_owned())]),
            "/r".into(),
            Some("nobody".into()),
            None,
            vec!["http".into()],
        );
        let back: ShimRequest = serde_json::from_slice(&serde_json::to_vec(&req).unwrap()).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn send_refuses_mismatched_names_and_fds() {
        let (a, _b) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let req = ShimRequest::new(
            "/bin/true".into(),
            vec!["true".into()],
            BTreeMap::new(),
            "/".into(),
            None,
            None,
            vec!["http".into()],
        );
        assert!(matches!(
            send_request(&a, &req, &[]),
            Err(SendError::FdCount { names: 1, fds: 0 })
        ));
    }
}
