//! The `exec` readiness probe: a program from the release exits 0.
//!
//! Owns running one probe process: `root/program args`, started directly
//! (never through a shell, no PATH lookup), with the release root as its
//! working directory, stdin and stdout on /dev/null, the first
//! [`MAX_STDERR`] bytes of stderr kept for the failure reason, and in a
//! process group of its own.
//!
//! ```text
//! spawn (own group, kill_on_drop) ──exit──────> killpg(SIGKILL) stragglers ─> exit 0 = ready
//!                                  └─timeout──> killpg(SIGKILL), wait (reap) ─> TimedOut
//! future dropped early ─> GroupGuard kills the group, tokio reaps the leader
//! ```
//!
//! Must never: leave the probe or anything it started running after the
//! attempt, pass the agent's own systemd or socket-activation variables on,
//! or block the runtime waiting for the process.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use release::manifest::Command;
use tokio::io::AsyncReadExt;
use tokio::process::ChildStderr;

use super::ProbeFailure;

/// Stderr kept for the failure reason.
pub const MAX_STDERR: usize = 512;
/// How long to keep reading stderr after the process exited (its pipe closes
/// once the group is killed, so this is rarely reached).
const STDERR_DRAIN: Duration = Duration::from_millis(100);
/// Variables the agent's own environment may carry that a probe must not see.
const SCRUBBED_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// Runs `argv` from the release root and wants exit status 0.
#[derive(Debug, Clone)]
pub struct ExecProbe {
    shown: String,
    program: PathBuf,
    args: Vec<String>,
    root: PathBuf,
    credentials: Option<(u32, u32)>,
}

impl ExecProbe {
    pub fn new(argv: &Command, root: &Path) -> ExecProbe {
        ExecProbe {
            shown: format!("./{}", argv.program),
            program: argv.program.under(root),
            args: argv.args.clone(),
            root: root.to_owned(),
            credentials: None,
        }
    }

    /// Runs the probe as `uid`/`gid` (the release's user) instead of the agent's.
    pub fn set_credentials(&mut self, uid: u32, gid: u32) {
        self.credentials = Some((uid, gid));
    }

    /// One run, bounded by `timeout`; on timeout the whole process group is
    /// killed and the probe process reaped before this returns.
    pub async fn check(&self, timeout: Duration) -> Result<(), ProbeFailure> {
        let program = self.shown.clone();
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for var in SCRUBBED_ENV {
            cmd.env_remove(var);
        }
        if let Some((uid, gid)) = self.credentials {
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd.spawn().map_err(|e| ProbeFailure::ExecSpawn {
            program: program.clone(),
            detail: format!("{}: {e}", self.program.display()),
        })?;
        let Some(pid) = child.id() else {
            return Err(ProbeFailure::ExecSpawn {
                program,
                detail: "exited before its pid was known".to_owned(),
            });
        };
        let guard = GroupGuard(i32::try_from(pid).ok().map(Pid::from_raw));
        let mut stderr = Stderr::new(child.stderr.take());

        let waited = tokio::time::timeout(timeout, async {
            loop {
                tokio::select! {
                    status = child.wait() => break status,
                    () = stderr.read_some() => {}
                }
            }
        })
        .await;
        // Exited or not, nothing the probe started may outlive the attempt.
        guard.kill();
        let status = match waited {
            Ok(status) => status,
            Err(_) => {
                // The group is killed; reap the leader so no zombie stays.
                if let Err(e) = child.wait().await {
                    tracing::warn!(pid, error = %e, "cannot reap timed-out exec probe");
                }
                tracing::debug!(pid, program, "exec probe timed out; process group killed");
                return Err(ProbeFailure::TimedOut {
                    probe: self.to_string(),
                    after: timeout,
                });
            }
        };
        let status = status.map_err(|e| ProbeFailure::ExecSpawn {
            program: program.clone(),
            detail: format!("cannot wait for it: {e}"),
        })?;
        let _ = tokio::time::timeout(STDERR_DRAIN, stderr.drain()).await;
        verdict(program, status, stderr.text())
    }
}

impl fmt::Display for ExecProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exec {}", self.shown)
    }
}

fn verdict(program: String, status: ExitStatus, stderr: String) -> Result<(), ProbeFailure> {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        return Ok(());
    }
    match (status.code(), status.signal()) {
        (Some(code), _) => Err(ProbeFailure::ExecExit {
            program,
            code,
            stderr,
        }),
        (None, Some(sig)) => Err(ProbeFailure::ExecSignal {
            program,
            signal: Signal::try_from(sig)
                .map_or_else(|_| format!("signal {sig}"), |s| s.to_string()),
            stderr,
        }),
        (None, None) => Err(ProbeFailure::ExecExit {
            program,
            code: -1,
            stderr,
        }),
    }
}

/// Kills the probe's process group when the attempt ends, however it ends.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn kill(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        if let Some(pgid) = self.0.take() {
            match killpg(pgid, Signal::SIGKILL) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => {
                    tracing::warn!(pgid = pgid.as_raw(), error = %e, "cannot kill exec probe process group")
                }
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// The probe's stderr: keeps the first [`MAX_STDERR`] bytes, discards the
/// rest (still reading it, so the process never blocks on a full pipe).
struct Stderr {
    pipe: Option<ChildStderr>,
    kept: Vec<u8>,
}

impl Stderr {
    fn new(pipe: Option<ChildStderr>) -> Stderr {
        Stderr {
            pipe,
            kept: Vec::new(),
        }
    }

    /// Reads one chunk; pends forever once the pipe is closed (for `select!`).
    async fn read_some(&mut self) {
        let Some(pipe) = &mut self.pipe else {
            return std::future::pending().await;
        };
        let mut chunk = [0u8; 512];
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => self.pipe = None,
            Ok(n) => {
                let room = MAX_STDERR.saturating_sub(self.kept.len());
                self.kept.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }

    async fn drain(&mut self) {
        while self.pipe.is_some() {
            self.read_some().await;
        }
    }

    /// The kept stderr on one line.
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.kept)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }
}
