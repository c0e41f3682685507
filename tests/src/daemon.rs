//! `Daemon`: one of the workspace's daemons (or a system one, such as
//! Prometheus) as a child of the test process,
//! the part every fixture of a daemon shares: started under `setpriv
//! --pdeathsig KILL` with its output appended to a log file, waited for
//! until the fixture's own check says it serves, stopped with SIGTERM (then
//! SIGKILL) or killed, and always reaped.
//!
//! Must never: leave a child unreaped, or wait without a deadline.

use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{HarnessError, Place, workspace_bin};

const POLL: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub(crate) struct Daemon {
    /// The workspace binary, e.g. `lockstep-agent`, or the system program's
    /// name.
    name: &'static str,
    /// The system program to run; `None`: the workspace binary `name`.
    program: Option<PathBuf>,
    args: Vec<OsString>,
    /// Set in its environment besides `RUST_LOG`.
    env: Vec<(OsString, OsString)>,
    log: PathBuf,
    /// Where it runs: its command prefix goes before `setpriv`.
    place: Place,
    child: Option<Child>,
}

impl Daemon {
    pub(crate) fn new(name: &'static str, args: Vec<OsString>, log: PathBuf) -> Self {
        Self {
            name,
            program: None,
            args,
            env: Vec::new(),
            log,
            place: Place::loopback(),
            child: None,
        }
    }

    /// A program installed on the system (not built by the workspace).
    pub(crate) fn system(
        name: &'static str,
        program: PathBuf,
        args: Vec<OsString>,
        log: PathBuf,
    ) -> Self {
        Self {
            program: Some(program),
            ..Self::new(name, args, log)
        }
    }

    /// The same daemon, run at `place` (e.g. in a lab node).
    pub(crate) fn at(self, place: Place) -> Self {
        Self { place, ..self }
    }

    /// The same daemon, with `env` set in its environment.
    pub(crate) fn with_env(self, env: Vec<(OsString, OsString)>) -> Self {
        Self { env, ..self }
    }

    /// Starts the daemon and waits until `serving` says yes, failing with
    /// its log when it exits first or `start_timeout` runs out.
    pub(crate) async fn start<F, Fut>(
        &mut self,
        start_timeout: Duration,
        mut serving: F,
    ) -> Result<(), HarnessError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<bool, HarnessError>>,
    {
        let program = match &self.program {
            Some(program) => program.clone(),
            None => workspace_bin(self.name)?,
        };
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(HarnessError::TempDir)?;
        let log_err = log.try_clone().map_err(HarnessError::TempDir)?;
        let child = self
            .place
            .command("setpriv")
            .args(["--pdeathsig", "KILL"])
            .arg(&program)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                program: self.place.describe(&program.display().to_string()),
                source,
            })?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + start_timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(HarnessError::Fixture(format!(
                        "{} exited at start ({status}):\n{}",
                        self.name,
                        self.log_text()
                    )));
                }
            }
            if serving().await? {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HarnessError::Fixture(format!(
                    "{} did not serve within {start_timeout:?}:\n{}",
                    self.name,
                    self.log_text()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The running daemon's pid (its command prefix execs it in place).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub(crate) fn running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL and reap (no-op when not running).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` to the running daemon.
    pub(crate) fn signal(&self, signal: Signal) -> Result<(), HarnessError> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| HarnessError::Fixture(format!("{} is not running", self.name)))?;
        kill(pid_of(child)?, signal).map_err(|e| {
            HarnessError::Fixture(format!("cannot send {signal} to {}: {e}", self.name))
        })
    }

    /// SIGCONT (a paused daemon must see it) and SIGTERM, then wait up to
    /// `stop_timeout` for it to exit; SIGKILL after that, which is an error.
    pub(crate) fn terminate(&mut self, stop_timeout: Duration) -> Result<(), HarnessError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = pid_of(&child)?;
        let _ = kill(pid, Signal::SIGCONT);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = std::time::Instant::now() + stop_timeout;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(POLL),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(HarnessError::Fixture(format!(
                        "{} pid {pid} ignored SIGTERM for {stop_timeout:?}; killed",
                        self.name
                    )));
                }
            }
        }
    }

    /// SIGTERM (after SIGCONT), then wait up to `limit` for the daemon to
    /// exit, without blocking the runtime; returns how long it took. Past
    /// `limit` it is killed and that is an error: for a daemon that
    /// promises to exit in time.
    pub(crate) async fn terminate_within(
        &mut self,
        limit: Duration,
    ) -> Result<Duration, HarnessError> {
        let Some(mut child) = self.child.take() else {
            return Ok(Duration::ZERO);
        };
        let pid = pid_of(&child)?;
        let _ = kill(pid, Signal::SIGCONT);
        let started = tokio::time::Instant::now();
        let _ = kill(pid, Signal::SIGTERM);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(started.elapsed()),
                Ok(None) if started.elapsed() < limit => tokio::time::sleep(POLL).await,
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(HarnessError::Fixture(format!(
                        "{} pid {pid} did not exit within {limit:?} of SIGTERM; killed:\n{}",
                        self.name,
                        self.log_text()
                    )));
                }
            }
        }
    }

    /// SIGCONT and SIGTERM, without waiting: for a test that watches what
    /// happens while the daemon stops ([`Self::wait_exit`] reaps it).
    pub(crate) fn begin_terminate(&self) -> Result<(), HarnessError> {
        let _ = self.signal(Signal::SIGCONT);
        self.signal(Signal::SIGTERM)
    }

    /// Waits up to `timeout` for the daemon to exit and reaps it; an error
    /// (the daemon left running) when it has not exited by then.
    pub(crate) async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> Result<std::process::ExitStatus, HarnessError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let child = self
                .child
                .as_mut()
                .ok_or_else(|| HarnessError::Fixture(format!("{} is not running", self.name)))?;
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Ok(status);
                }
                Ok(None) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(POLL).await;
                }
                Ok(None) => {
                    return Err(HarnessError::Fixture(format!(
                        "{} still runs {timeout:?} later",
                        self.name
                    )));
                }
                Err(e) => {
                    return Err(HarnessError::Fixture(format!(
                        "cannot wait for {}: {e}",
                        self.name
                    )));
                }
            }
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn pid_of(child: &Child) -> Result<Pid, HarnessError> {
    i32::try_from(child.id())
        .map(Pid::from_raw)
        .map_err(|e| HarnessError::Fixture(format!("pid: {e}")))
}
