//! `CoordinatorFixture`: a real `lockstep-coordinator` in a temporary
//! directory (plain text, or mTLS with `start_tls`), and the `lockstep` CLI
//! pointed at it.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::daemon::Daemon;
use crate::{HarnessError, Place, TlsFiles, free_loopback_port, workspace_bin};

/// A coordinator whose port does not open within this long did not start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The roles of a `start_tls` coordinator: `operator.lockstep` operates,
/// `viewer.lockstep` reads, agents (`<id>.agents.lockstep`) and
/// coordinators (`coordinator.lockstep`, mirroring releases) fetch.
pub const TEST_ROLES: &str = "\n[[roles]]\nidentities = [\"operator.lockstep\"]\nrole = \"operator\"\n\n[[roles]]\nidentities = [\"viewer.lockstep\"]\nrole = \"viewer\"\n\n[[roles]]\nidentities = [\"*.agents.lockstep\", \"coordinator.lockstep\"]\nrole = \"agent\"\n";

/// A running coordinator. Dropping it kills it.
#[derive(Debug)]
pub struct CoordinatorFixture {
    dir: tempfile::TempDir,
    /// The address it listens on (loopback unless `start_on`).
    host: IpAddr,
    port: u16,
    daemon: Daemon,
    /// Its `[tls]` files; `None`: plain text.
    tls: Option<TlsFiles>,
}

impl CoordinatorFixture {
    /// Starts a coordinator on `endpoints` with an etcd lease of
    /// `lease_ttl_secs`; returns once its gRPC port accepts connections.
    pub async fn start(endpoints: &[String], lease_ttl_secs: u64) -> Result<Self, HarnessError> {
        Self::start_configured(
            endpoints,
            lease_ttl_secs,
            None,
            "",
            Place::loopback(),
            "",
            Vec::new(),
        )
        .await
    }

    /// Like `start`, with `etcd_lines` added to its `[etcd]` table (e.g.
    /// `journal_deadline = "1s"`).
    pub async fn start_with_etcd(
        endpoints: &[String],
        lease_ttl_secs: u64,
        etcd_lines: &str,
    ) -> Result<Self, HarnessError> {
        Self::start_configured(
            endpoints,
            lease_ttl_secs,
            None,
            etcd_lines,
            Place::loopback(),
            "",
            Vec::new(),
        )
        .await
    }

    /// Like `start`, with a `[tls]` table naming `tls`: its URL is
    /// `https://`, and every caller needs a certificate from the same CA;
    /// roles are [`TEST_ROLES`].
    pub async fn start_tls(
        endpoints: &[String],
        lease_ttl_secs: u64,
        tls: &TlsFiles,
    ) -> Result<Self, HarnessError> {
        Self::start_configured(
            endpoints,
            lease_ttl_secs,
            Some(tls),
            "",
            Place::loopback(),
            "",
            Vec::new(),
        )
        .await
    }

    /// Like `start` (or `start_tls` when `tls` is given), with `tables`
    /// appended to its coordinator.toml (e.g. `[[checks]]` tables, or
    /// `[[roles]]` replacing [`TEST_ROLES`]).
    pub async fn start_with_tables(
        endpoints: &[String],
        lease_ttl_secs: u64,
        tls: Option<&TlsFiles>,
        tables: &str,
    ) -> Result<Self, HarnessError> {
        Self::start_configured(
            endpoints,
            lease_ttl_secs,
            tls,
            &format!("\n{tables}"),
            Place::loopback(),
            "",
            Vec::new(),
        )
        .await
    }

    /// A plain-text coordinator listening on `host` (not loopback: its
    /// callers are not local either), with `top_lines` at the top of its
    /// coordinator.toml (e.g. `insecure_operators = true`).
    pub async fn start_on(
        endpoints: &[String],
        lease_ttl_secs: u64,
        host: IpAddr,
        top_lines: &str,
    ) -> Result<Self, HarnessError> {
        Self::start_configured(
            endpoints,
            lease_ttl_secs,
            None,
            "",
            Place::local(host),
            top_lines,
            Vec::new(),
        )
        .await
    }

    /// Like `start_on`, run at `place` (e.g. a lab node: its namespace,
    /// listening on its address), with `etcd_lines` added to its `[etcd]`
    /// table.
    pub async fn start_placed(
        endpoints: &[String],
        lease_ttl_secs: u64,
        place: &Place,
        top_lines: &str,
        etcd_lines: &str,
    ) -> Result<Self, HarnessError> {
        Self::start_configured(
            endpoints,
            lease_ttl_secs,
            None,
            etcd_lines,
            place.clone(),
            top_lines,
            Vec::new(),
        )
        .await
    }

    /// Like `start_placed`, with `env` set in the coordinator's
    /// environment (e.g. a fault-injection point's variable).
    pub async fn start_placed_with_env(
        endpoints: &[String],
        lease_ttl_secs: u64,
        place: &Place,
        top_lines: &str,
        env: &[(&str, &Path)],
    ) -> Result<Self, HarnessError> {
        let env = env
            .iter()
            .map(|(k, v)| (OsString::from(k), v.as_os_str().to_owned()))
            .collect();
        Self::start_configured(
            endpoints,
            lease_ttl_secs,
            None,
            "",
            place.clone(),
            top_lines,
            env,
        )
        .await
    }

    async fn start_configured(
        endpoints: &[String],
        lease_ttl_secs: u64,
        tls: Option<&TlsFiles>,
        etcd_lines: &str,
        place: Place,
        top_lines: &str,
        env: Vec<(OsString, OsString)>,
    ) -> Result<Self, HarnessError> {
        let host = place.ip();
        let dir = tempfile::Builder::new()
            .prefix("lockstep-coordinator-")
            .tempdir()
            .map_err(HarnessError::TempDir)?;
        let port = free_loopback_port()?;
        let config = dir.path().join("coordinator.toml");
        let endpoints = endpoints
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut text = format!(
            "{top_lines}\nlisten = \"{host}:{port}\"\nstore_dir = \"{store}\"\nstatus_interval = \"1s\"\n\n[etcd]\nendpoints = [{endpoints}]\nlease_ttl = \"{lease_ttl_secs}s\"\n{etcd_lines}\n",
            store = dir.path().join("releases").display(),
        );
        if let Some(tls) = tls {
            text.push_str("\n[tls]\n");
            text.push_str(&tls.toml_lines());
            if !etcd_lines.contains("[[roles]]") {
                text.push_str(TEST_ROLES);
            }
        }
        std::fs::write(&config, text).map_err(HarnessError::TempDir)?;
        let daemon = Daemon::new(
            "lockstep-coordinator",
            vec!["--config".into(), config.into()],
            dir.path().join("coordinator.log"),
        )
        .at(place)
        .with_env(env);
        let mut fixture = Self {
            dir,
            host,
            port,
            daemon,
            tls: tls.cloned(),
        };
        fixture.spawn().await?;
        Ok(fixture)
    }

    /// Starts the coordinator; returns once its port accepts connections.
    async fn spawn(&mut self) -> Result<(), HarnessError> {
        let (host, port) = (self.host, self.port);
        self.daemon
            .start(START_TIMEOUT, || async move {
                Ok(tokio::net::TcpStream::connect((host, port)).await.is_ok())
            })
            .await
    }

    /// `http://127.0.0.1:<port>`, or `https://` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }

    /// Runs `lockstep --coordinator <ours> ARGS`.
    pub async fn lockstep(&self, args: &[&str]) -> Result<Output, HarnessError> {
        lockstep(&[self.url()], args).await
    }

    /// The coordinator's pid while it runs (for /proc figures).
    pub fn pid(&self) -> Option<u32> {
        self.daemon.pid()
    }

    /// SIGKILL: the coordinator dies without resigning or releasing.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Starts the coordinator again on the same config, port and release
    /// store (as systemd's `Restart=always` would).
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill();
        self.spawn().await
    }

    /// SIGSTOP / SIGCONT: a coordinator that freezes, then wakes up.
    pub fn pause(&self) -> Result<(), HarnessError> {
        self.daemon.signal(Signal::SIGSTOP)
    }

    pub fn resume(&self) -> Result<(), HarnessError> {
        self.daemon.signal(Signal::SIGCONT)
    }

    /// SIGTERM and wait: the coordinator resigns and exits.
    pub fn stop(&mut self) -> Result<(), HarnessError> {
        self.daemon.terminate(STOP_TIMEOUT)
    }

    /// SIGTERM, then wait up to `limit` for the coordinator to exit;
    /// how long it took, or an error (and a SIGKILL) past `limit`.
    pub async fn stop_within(&mut self, limit: Duration) -> Result<Duration, HarnessError> {
        self.daemon.terminate_within(limit).await
    }

    /// SIGTERM without waiting (see `wait_exit`): a test can watch what
    /// the fleet and the CLI do while the coordinator stops.
    pub fn begin_stop(&self) -> Result<(), HarnessError> {
        self.daemon.begin_terminate()
    }

    /// Waits up to `timeout` for the coordinator to exit; an error when it
    /// still runs then (it is killed on drop).
    pub async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> Result<std::process::ExitStatus, HarnessError> {
        self.daemon.wait_exit(timeout).await
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_text(&self) -> String {
        self.daemon.log_text()
    }
}

/// Runs `lockstep --coordinator URL... ARGS` (the CLI tries each URL and
/// follows the leader).
pub async fn lockstep(urls: &[String], args: &[&str]) -> Result<Output, HarnessError> {
    lockstep_command(urls, &[], args).await
}

/// Runs `lockstep --ca … --cert … --tls-key … --coordinator URL... ARGS`: the
/// CLI as the operator whose certificate `operator` holds.
pub async fn lockstep_tls(
    urls: &[String],
    operator: &TlsFiles,
    args: &[&str],
) -> Result<Output, HarnessError> {
    lockstep_command(urls, &operator.cli_args(), args).await
}

async fn lockstep_command(
    urls: &[String],
    global: &[String],
    args: &[&str],
) -> Result<Output, HarnessError> {
    let program = workspace_bin("lockstep")?;
    let mut command = tokio::process::Command::new(&program);
    for url in urls {
        command.arg("--coordinator").arg(url);
    }
    // The operator's environment must not leak into a test.
    command
        .env_remove("LOCKSTEP_CA")
        .env_remove("LOCKSTEP_CERT")
        .env_remove("LOCKSTEP_KEY")
        .env_remove("LOCKSTEP_TLS_KEY")
        .env_remove("LOCKSTEP_TIMEOUT")
        .args(global)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| HarnessError::Spawn {
            program: program.display().to_string(),
            source,
        })
}

impl Drop for CoordinatorFixture {
    fn drop(&mut self) {
        self.daemon.kill();
    }
}
