//! `AgentFixture`: a real `lockstep-agent` in a temporary directory, and
//! `agentctl` pointed at it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use crate::daemon::Daemon;
use crate::{HarnessError, Place, free_loopback_port, workspace_bin};

/// An agent that does not answer within this long did not start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A graceful agent stop may stop every app too (`apps_on_agent_stop =
/// "stop"`); each has its stop timeout.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running agent. Dropping it stops the agent and kills anything still
/// running from its directory: by default the apps outlive the agent (a
/// restarted agent adopts them), so the fixture, not the agent, ends them.
#[derive(Debug)]
pub struct AgentFixture {
    dir: tempfile::TempDir,
    config: PathBuf,
    socket: PathBuf,
    grpc: SocketAddr,
    daemon: Daemon,
}

impl AgentFixture {
    /// Writes an `agent.toml` and starts the agent; returns once
    /// `agentctl status` answers.
    pub async fn start(id: &str, cluster: &str) -> Result<Self, HarnessError> {
        Self::start_with(id, cluster, "").await
    }

    /// Like `start`, with `extra` appended to `agent.toml` (e.g. an
    /// `[etcd]` table).
    pub async fn start_with(id: &str, cluster: &str, extra: &str) -> Result<Self, HarnessError> {
        Self::start_configured(id, cluster, "", extra).await
    }

    /// Like `start_with`, with `top` (top-level keys such as `services`)
    /// written before the first table.
    pub async fn start_configured(
        id: &str,
        cluster: &str,
        top: &str,
        extra: &str,
    ) -> Result<Self, HarnessError> {
        Self::start_placed(id, cluster, top, extra, &Place::loopback()).await
    }

    /// Like `start_configured`, run at `place` (e.g. a lab node), its
    /// gRPC service listening on that place's address.
    pub async fn start_placed(
        id: &str,
        cluster: &str,
        top: &str,
        extra: &str,
        place: &Place,
    ) -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("lockstep-agent-")
            .tempdir()
            .map_err(HarnessError::TempDir)?;
        let socket = dir.path().join("agent.sock");
        let grpc = SocketAddr::new(place.ip(), free_loopback_port()?);
        let config = dir.path().join("agent.toml");
        let text = format!(
            "id = \"{id}\"\ncluster = \"{cluster}\"\ndata_dir = \"{data}\"\n{top}\n[control]\nsocket = \"{socket}\"\n\n[grpc]\nlisten = \"{grpc}\"\n",
            data = dir.path().join("data").display(),
            socket = socket.display(),
        ) + extra;
        std::fs::write(&config, text).map_err(HarnessError::TempDir)?;
        let daemon = Daemon::new(
            "lockstep-agent",
            vec!["--config".into(), config.clone().into()],
            dir.path().join("agent.log"),
        )
        .at(place.clone());
        let mut fixture = Self {
            dir,
            config,
            socket,
            grpc,
            daemon,
        };
        fixture.spawn().await?;
        Ok(fixture)
    }

    /// Starts the agent; returns once `agentctl status` answers.
    async fn spawn(&mut self) -> Result<(), HarnessError> {
        let socket = self.socket.clone();
        self.daemon
            .start(START_TIMEOUT, || {
                let socket = socket.clone();
                async move { Ok(agentctl_at(&socket, &["status"]).await?.status.success()) }
            })
            .await
    }

    /// Runs `agentctl --socket <ours> ARGS`.
    pub async fn agentctl(&self, args: &[&str]) -> Result<Output, HarnessError> {
        agentctl_at(&self.socket, args).await
    }

    /// `agentctl install BUNDLE`; fails unless the agent switched to it.
    pub async fn install(&self, bundle: &Path) -> Result<(), HarnessError> {
        let output = self
            .agentctl(&["install", &bundle.display().to_string()])
            .await?;
        if output.status.success() {
            Ok(())
        } else {
            Err(HarnessError::Fixture(format!(
                "agentctl install {} failed ({}): {}",
                bundle.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )))
        }
    }

    /// The version of `service` the agent runs now, as `agentctl releases`
    /// says (empty when none).
    pub async fn current_version(&self, service: &str) -> Result<String, HarnessError> {
        let releases = self.agentctl_json(&["releases", service]).await?;
        Ok(releases["current"]["version"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// `agentctl --output json ARGS`, parsed; fails unless it exits 0.
    pub async fn agentctl_json(&self, args: &[&str]) -> Result<serde_json::Value, HarnessError> {
        let mut full = vec!["--output", "json"];
        full.extend_from_slice(args);
        let output = self.agentctl(&full).await?;
        if !output.status.success() {
            return Err(HarnessError::Fixture(format!(
                "agentctl {args:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        serde_json::from_slice(&output.stdout).map_err(|e| {
            HarnessError::Fixture(format!(
                "agentctl {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            ))
        })
    }

    /// SIGKILL the agent (its apps keep running) and reap it.
    pub async fn kill(&mut self) -> Result<(), HarnessError> {
        self.daemon.kill();
        Ok(())
    }

    /// Starts the agent after `stop` or `kill`, on the same config, data
    /// and socket; returns once `agentctl status` answers.
    pub async fn start_again(&mut self) -> Result<(), HarnessError> {
        if self.daemon.running() {
            return Err(HarnessError::Fixture(
                "start_again: the agent is still running".to_owned(),
            ));
        }
        self.spawn().await
    }

    /// SIGTERM, then wait for the agent (and the apps it stops, if it is
    /// configured to) to exit.
    pub async fn stop(&mut self) -> Result<(), HarnessError> {
        self.daemon.terminate(STOP_TIMEOUT)
    }

    /// Starts the agent again on the same config, data and socket.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop().await?;
        self.spawn().await
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    /// The agent's pid while it runs (e.g. to enter its mount namespace).
    pub fn pid(&self) -> Option<u32> {
        self.daemon.pid()
    }

    /// Its `data_dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_text(&self) -> String {
        self.daemon.log_text()
    }
}

/// Runs `agentctl --socket SOCKET ARGS`.
async fn agentctl_at(socket: &Path, args: &[&str]) -> Result<Output, HarnessError> {
    let program = workspace_bin("agentctl")?;
    tokio::process::Command::new(&program)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| HarnessError::Spawn {
            program: program.display().to_string(),
            source,
        })
}

/// Kills every process whose working directory is inside `dir`: apps
/// that outlived a killed agent must not outlive the test.
fn kill_strays(dir: &Path) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let inside =
            std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir));
        if inside {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for AgentFixture {
    fn drop(&mut self) {
        if let Err(err) = self.daemon.terminate(STOP_TIMEOUT) {
            tracing::error!(error = %err, "agent fixture stop");
        }
        kill_strays(self.dir.path());
    }
}
