//! `PrometheusFixture`: a real Prometheus (Debian's `prometheus` package)
//! scraping the given targets on loopback every second, its TSDB in a
//! temporary directory, and its HTTP query API, plain or https
//! (`start_tls`: its own `--web.config.file` TLS with a `TestPki`
//! certificate); plus `promtool check metrics` for exposition text.
//!
//! Must never: scrape or listen on anything but loopback, or outlive its
//! test (the daemon runs under `--pdeathsig KILL` and is stopped on drop).

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use coordinator::analysis::PrometheusEndpoint;
use rollout::analysis::Sample;

use crate::daemon::Daemon;
use crate::http::request;
use crate::{HarnessError, TlsFiles, free_loopback_port};

/// Where Debian installs the server and its checker.
const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One scrape job: a name (`job` label) and the addresses it scrapes.
#[derive(Debug, Clone)]
pub struct ScrapeJob {
    pub name: String,
    pub targets: Vec<SocketAddr>,
}

/// A running Prometheus.
#[derive(Debug)]
pub struct PrometheusFixture {
    daemon: Daemon,
    addr: SocketAddr,
    /// Serving https: `query` and `scalar` (plain HTTP) are refused.
    tls: bool,
    _dir: tempfile::TempDir,
}

impl PrometheusFixture {
    /// Starts Prometheus scraping `jobs` every second; returns once it
    /// answers `/-/ready`.
    pub async fn start(jobs: &[ScrapeJob]) -> Result<Self, HarnessError> {
        Self::start_at(([127, 0, 0, 1], free_loopback_port()?).into(), jobs).await
    }

    /// Like `start`, listening on `addr`: a coordinator configured with
    /// that URL may start before Prometheus does (its scrape targets, the
    /// fleet, need the coordinator first).
    pub async fn start_at(addr: SocketAddr, jobs: &[ScrapeJob]) -> Result<Self, HarnessError> {
        let dir = tempdir()?;
        let mut daemon = daemon(&dir, addr, jobs, Vec::new())?;
        daemon
            .start(START_TIMEOUT, || async move {
                Ok(matches!(
                    request(addr, "GET", "/-/ready", "").await,
                    Ok((200, _))
                ))
            })
            .await?;
        Ok(Self {
            daemon,
            addr,
            tls: false,
            _dir: dir,
        })
    }

    /// Like `start`, serving its API over https only, with `files.cert`
    /// and `files.key`; ready once the coordinator's own Prometheus
    /// client, trusting `files.ca`, has an answer to a query from it.
    pub async fn start_tls(jobs: &[ScrapeJob], files: &TlsFiles) -> Result<Self, HarnessError> {
        let addr: SocketAddr = ([127, 0, 0, 1], free_loopback_port()?).into();
        let dir = tempdir()?;
        let web = dir.path().join("web.yml");
        std::fs::write(
            &web,
            format!(
                "tls_server_config:\n  cert_file: \"{}\"\n  key_file: \"{}\"\n",
                files.cert.display(),
                files.key.display()
            ),
        )
        .map_err(HarnessError::TempDir)?;
        let web_arg = format!("--web.config.file={}", web.display()).into();
        let mut daemon = daemon(&dir, addr, jobs, vec![web_arg])?;
        let endpoint = PrometheusEndpoint::parse(&format!("https://{addr}"), Some(&files.ca))
            .map_err(|e| HarnessError::Fixture(format!("prometheus https endpoint: {e}")))?;
        let endpoint = &endpoint;
        daemon
            .start(START_TIMEOUT, || async move {
                let answer =
                    coordinator::analysis::query(endpoint, "vector(1)", Duration::from_secs(5))
                        .await;
                Ok(answer == Sample::Value(1.0))
            })
            .await?;
        Ok(Self {
            daemon,
            addr,
            tls: true,
            _dir: dir,
        })
    }

    /// The base URL of its HTTP API (what `[[analysis]]` points at).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// An instant query: the `data.result` array of the answer (plain
    /// HTTP only: a `start_tls` fixture is queried through the
    /// coordinator's client).
    pub async fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, HarnessError> {
        if self.tls {
            return Err(HarnessError::Fixture(
                "this Prometheus serves https: query it with coordinator::analysis::query"
                    .to_owned(),
            ));
        }
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (status, body) = request(self.addr, "GET", &path, "")
            .await
            .map_err(|e| HarnessError::Fixture(format!("prometheus query {promql}: {e}")))?;
        let answer: serde_json::Value = serde_json::from_str(&body).map_err(|e| {
            HarnessError::Fixture(format!(
                "prometheus answered {status}, not JSON ({e}): {body}"
            ))
        })?;
        if answer["status"] != "success" {
            return Err(HarnessError::Fixture(format!(
                "prometheus query {promql} failed ({status}): {body}"
            )));
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The single value an instant query returns, if it returns one sample.
    pub async fn scalar(&self, promql: &str) -> Result<Option<f64>, HarnessError> {
        let result = self.query(promql).await?;
        Ok(match result.as_slice() {
            [sample] => sample["value"][1].as_str().and_then(|v| v.parse().ok()),
            _ => None,
        })
    }

    /// SIGKILL: Prometheus is gone, as for an outage.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }
}

impl Drop for PrometheusFixture {
    fn drop(&mut self) {
        self.daemon.kill();
    }
}

fn tempdir() -> Result<tempfile::TempDir, HarnessError> {
    tempfile::Builder::new()
        .prefix("lockstep-prometheus-")
        .tempdir()
        .map_err(HarnessError::TempDir)
}

/// The daemon (not started): its config scraping `jobs`, its TSDB in
/// `dir`, listening on `addr`, with `extra` arguments.
fn daemon(
    dir: &tempfile::TempDir,
    addr: SocketAddr,
    jobs: &[ScrapeJob],
    extra: Vec<OsString>,
) -> Result<Daemon, HarnessError> {
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, config_text(jobs)).map_err(HarnessError::TempDir)?;
    let mut args: Vec<OsString> = vec![
        format!("--config.file={}", config.display()).into(),
        format!("--storage.tsdb.path={}", dir.path().join("data").display()).into(),
        format!("--web.listen-address={addr}").into(),
        "--log.level=warn".into(),
    ];
    args.extend(extra);
    Ok(Daemon::system(
        "prometheus",
        PathBuf::from(PROMETHEUS),
        args,
        dir.path().join("prometheus.log"),
    ))
}

fn config_text(jobs: &[ScrapeJob]) -> String {
    let mut text = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
    );
    for job in jobs {
        let targets: Vec<String> = job.targets.iter().map(|t| format!("\"{t}\"")).collect();
        text.push_str(&format!(
            "  - job_name: \"{}\"\n    static_configs:\n      - targets: [{}]\n",
            job.name,
            targets.join(", ")
        ));
    }
    text
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `promtool check metrics` on exposition `text`: its complaints, if any.
pub fn promtool_check_metrics(text: &str) -> Result<(), HarnessError> {
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| HarnessError::Spawn {
            program: PROMTOOL.to_owned(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| HarnessError::Fixture(format!("promtool stdin: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| HarnessError::Fixture(format!("promtool: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Fixture(format!(
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            percent_encode(r#"sum(x{code="500"})"#),
            "sum%28x%7Bcode%3D%22500%22%7D%29"
        );
    }
}
