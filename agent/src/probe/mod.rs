//! Readiness probes: one attempt at a time against one instance.
//!
//! Owns the four probe kinds a release manifest can ask for (`[readiness]`):
//! `http` (GET answers 2xx), `tcp` (a connect succeeds), `exec` (a program
//! from the release exits 0) and `notify` (the instance sent sd_notify
//! `READY=1` to the `NOTIFY_SOCKET` the agent gave it, see [`notify`]).
//!
//! ```text
//! supervisor ──every interval──> Probe::check(pid) ──> Ok(()) | Err(ProbeFailure)
//!                                   │ bounded by the probe timeout
//!                                   ├─ http   GET url, status line 2xx
//!                                   ├─ tcp    connect addr
//!                                   ├─ exec   root/program args, exit 0 (own process group)
//!                                   └─ notify latest NotifyState: READY=1, not STOPPING=1
//! ```
//!
//! A check is one attempt: retries, the interval, the healthy deadline and
//! the liveness threshold (restart a ready instance whose probe keeps
//! failing) belong to the supervisor.
//!
//! [`ProbeFailure`] is a verdict, not an error chain: it renders the whole
//! reason in its `Display` (the supervisor reports it as one line) and keeps
//! the cause as text so it is `Clone + Eq` for the supervisor's events.
//! [`ProbeError`] is for setting a probe up (binding a notify socket, a
//! notify probe without one).
//!
//! Must never: follow an HTTP redirect, run a probe through a shell or from
//! outside the release root, leave a probe process (or anything it started)
//! running after the attempt, or count an sd_notify message whose sender is
//! not the instance.

pub mod exec;
pub mod http;
pub mod notify;
pub mod tcp;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use release::manifest::{DEFAULT_PROBE_TIMEOUT, Readiness, format_duration};
use tokio::sync::watch;

pub use exec::ExecProbe;
pub use http::HttpProbe;
pub use notify::{NotifySocket, NotifyState};
pub use tcp::TcpProbe;

/// Why a probe could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("readiness probe is `notify` but the instance has no notify socket")]
    NotifyWithoutSocket,
    #[error("cannot remove stale notify socket {path}: {source}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} exists and is not a socket; refusing to replace it with a notify socket")]
    NotASocket { path: PathBuf },
    #[error("cannot bind notify socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enable SO_PASSCRED on notify socket {path}")]
    PassCred {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot set mode {mode:o} on notify socket {path}")]
    Permissions {
        path: PathBuf,
        mode: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot give notify socket {path} to uid {uid} gid {gid}")]
    Owner {
        path: PathBuf,
        uid: u32,
        gid: u32,
        #[source]
        source: io::Error,
    },
}

/// Why one probe attempt said "not ready". `Display` is the whole reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeFailure {
    #[error("http GET {url} answered {}", status_text(.code, .reason))]
    HttpStatus {
        url: String,
        code: u16,
        reason: String,
    },
    #[error("http GET {url} failed: {detail}")]
    Http { url: String, detail: String },
    #[error("tcp connect {addr} refused")]
    TcpRefused { addr: SocketAddr },
    #[error("tcp connect {addr} failed: {detail}")]
    Tcp { addr: SocketAddr, detail: String },
    #[error("exec {program} exited with {code}{}", stderr_suffix(.stderr))]
    ExecExit {
        program: String,
        code: i32,
        stderr: String,
    },
    #[error("exec {program} was killed by {signal}{}", stderr_suffix(.stderr))]
    ExecSignal {
        program: String,
        signal: String,
        stderr: String,
    },
    #[error("exec {program} cannot run: {detail}")]
    ExecSpawn { program: String, detail: String },
    #[error("no READY=1 yet{}", status_suffix(.status))]
    NotReady { status: Option<String> },
    #[error("instance sent STOPPING=1{}", status_suffix(.status))]
    Stopping { status: Option<String> },
    #[error("{probe} timed out after {}", shown_duration(.after))]
    TimedOut { probe: String, after: Duration },
}

fn status_text(code: &u16, reason: &str) -> String {
    if reason.is_empty() {
        code.to_string()
    } else {
        format!("{code} {reason}")
    }
}

fn shown_duration(d: &Duration) -> String {
    format_duration(*d)
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(" (stderr: {stderr})")
    }
}

fn status_suffix(status: &Option<String>) -> String {
    match status {
        Some(s) => format!(" (status: {s})"),
        None => String::new(),
    }
}

/// A readiness probe for one instance, built from the manifest's `[readiness]`.
#[derive(Debug)]
pub struct Probe {
    kind: Kind,
    timeout: Duration,
}

#[derive(Debug)]
enum Kind {
    Http(HttpProbe),
    Tcp(TcpProbe),
    Exec(ExecProbe),
    Notify(watch::Receiver<NotifyState>),
}

impl Probe {
    /// Builds the probe `readiness` asks for. `root` is the unpacked release
    /// (exec probes run from it); `notify` is the instance's notify socket
    /// state ([`NotifySocket::subscribe`]), required for `notify` probes and
    /// ignored by the others. Each attempt is bounded by
    /// [`DEFAULT_PROBE_TIMEOUT`] until [`Probe::with_timeout`] says otherwise.
    pub fn new(
        readiness: &Readiness,
        root: &Path,
        notify: Option<watch::Receiver<NotifyState>>,
    ) -> Result<Probe, ProbeError> {
        let kind = match readiness {
            Readiness::Http { url } => Kind::Http(HttpProbe::new(url.clone())),
            Readiness::Tcp { addr } => Kind::Tcp(TcpProbe::new(*addr)),
            Readiness::Exec { argv } => Kind::Exec(ExecProbe::new(argv, root)),
            Readiness::Notify => Kind::Notify(notify.ok_or(ProbeError::NotifyWithoutSocket)?),
        };
        Ok(Probe {
            kind,
            timeout: DEFAULT_PROBE_TIMEOUT,
        })
    }

    /// Bounds every attempt by `timeout` (the manifest's `readiness.timeout`).
    /// The probe enforces it itself so an exec probe's processes are killed
    /// and reaped before `check` returns; a caller's own, longer bound is
    /// only a backstop.
    pub fn with_timeout(mut self, timeout: Duration) -> Probe {
        self.timeout = timeout;
        self
    }

    /// Runs exec probes as this user and group (the release's `run.user` /
    /// `run.group`) instead of the agent's own. No effect on other kinds.
    pub fn with_credentials(mut self, uid: u32, gid: u32) -> Probe {
        if let Kind::Exec(e) = &mut self.kind {
            e.set_credentials(uid, gid);
        }
        self
    }

    /// The per-attempt bound.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// One probe attempt against the instance whose main pid is `pid`.
    pub async fn check(&mut self, pid: u32) -> Result<(), ProbeFailure> {
        let timeout = self.timeout;
        let result = match &mut self.kind {
            Kind::Http(p) => bounded(timeout, p.to_string(), p.check()).await,
            Kind::Tcp(p) => bounded(timeout, p.to_string(), p.check()).await,
            // Enforces the timeout itself: it must kill and reap its process group.
            Kind::Exec(p) => p.check(timeout).await,
            // Marks the state seen, so `changed` waits for the next datagram.
            Kind::Notify(rx) => notify::check_state(&rx.borrow_and_update(), pid),
        };
        if let Err(failure) = &result {
            tracing::debug!(pid, %failure, "readiness probe failed");
        }
        result
    }
}

impl Probe {
    /// Resolves when an attempt made now would pass although the next
    /// interval is not due: a notify probe's socket received a datagram and
    /// the instance says READY=1 (and not STOPPING=1), so readiness is acted
    /// on at once, not at the next poll. Only a passing state wakes it: a
    /// chatty app's STATUS= lines must not count failures faster than the
    /// interval. Never resolves for the other kinds, which can only be polled.
    pub async fn changed(&mut self) {
        match &mut self.kind {
            Kind::Notify(rx) => loop {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                let state = rx.borrow();
                if state.ready && !state.stopping {
                    return;
                }
            },
            Kind::Http(_) | Kind::Tcp(_) | Kind::Exec(_) => std::future::pending().await,
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Http(p) => p.fmt(f),
            Kind::Tcp(p) => p.fmt(f),
            Kind::Exec(p) => p.fmt(f),
            Kind::Notify(_) => f.write_str("notify READY=1"),
        }
    }
}

async fn bounded(
    after: Duration,
    probe: String,
    attempt: impl Future<Output = Result<(), ProbeFailure>>,
) -> Result<(), ProbeFailure> {
    match tokio::time::timeout(after, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ProbeFailure::TimedOut { probe, after }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_as_one_line_reasons() {
        let f = ProbeFailure::HttpStatus {
            url: "http://127.0.0.1:8080/healthz".into(),
            code: 503,
            reason: "Service Unavailable".into(),
        };
        assert_eq!(
            f.to_string(),
            "http GET http://127.0.0.1:8080/healthz answered 503 Service Unavailable"
        );
        let f = ProbeFailure::TcpRefused {
            addr: "127.0.0.1:8080".parse().unwrap(),
        };
        assert_eq!(f.to_string(), "tcp connect 127.0.0.1:8080 refused");
        let f = ProbeFailure::ExecExit {
            program: "./check.sh".into(),
            code: 1,
            stderr: String::new(),
        };
        assert_eq!(f.to_string(), "exec ./check.sh exited with 1");
        let f = ProbeFailure::NotReady {
            status: Some("starting".into()),
        };
        assert_eq!(f.to_string(), "no READY=1 yet (status: starting)");
        let f = ProbeFailure::TimedOut {
            probe: "tcp connect 10.0.0.1:80".into(),
            after: Duration::from_millis(1500),
        };
        assert_eq!(
            f.to_string(),
            "tcp connect 10.0.0.1:80 timed out after 1500ms"
        );
    }

    #[test]
    fn notify_probe_needs_a_socket() {
        let err = Probe::new(&Readiness::Notify, Path::new("/nonexistent"), None).unwrap_err();
        assert!(matches!(err, ProbeError::NotifyWithoutSocket));
        let (_tx, rx) = watch::channel(NotifyState::default());
        let tcp = Readiness::Tcp {
            addr: "127.0.0.1:1".parse().unwrap(),
        };
        let p = Probe::new(&tcp, Path::new("/nonexistent"), Some(rx)).unwrap();
        assert_eq!(p.to_string(), "tcp connect 127.0.0.1:1");
        assert_eq!(p.timeout(), DEFAULT_PROBE_TIMEOUT);
    }
}
