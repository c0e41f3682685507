//! What an operator does and looks at in an end-to-end test: push and
//! deploy releases with the `lockstep` CLI, read a deployment's record in
//! etcd, ask every host what it serves, write a strategy file.
//!
//! Owns nothing but these steps, shared by every test file that drives
//! coordinators. Must never assert (a test decides what is wrong; these
//! return what they saw) or wait without a deadline.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::http::{json_field, request};
use crate::{
    CoordinatorFixture, DEMO_SERVICE, EtcdCluster, FleetFixture, HarnessError, WaitTimeout,
    lockstep, wait_for,
};

/// How long a deployment may take to end, or agents to report: generous,
/// for a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(120);

/// A step an operator took did not do what it should have.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error(transparent)]
    Harness(#[from] HarnessError),
    #[error(transparent)]
    Wait(#[from] WaitTimeout),
    #[error("`lockstep {args}` failed: {output}")]
    Command { args: String, output: String },
    #[error("{what}: {detail}")]
    Unexpected { what: String, detail: String },
}

fn unexpected(what: &str, detail: impl ToString) -> OperatorError {
    OperatorError::Unexpected {
        what: what.to_owned(),
        detail: detail.to_string(),
    }
}

/// Exit status, stdout and stderr, for an assertion message.
pub fn text(output: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The last line of stdout, trimmed (where the CLI prints an id or digest).
pub fn last_line(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// `lockstep release push BUNDLE` to every coordinator; the digest.
pub async fn push(urls: &[String], bundle: &Path) -> Result<String, OperatorError> {
    let bundle = bundle.display().to_string();
    let mut digest = String::new();
    for url in urls {
        let args = ["release", "push", bundle.as_str()];
        let output = lockstep(std::slice::from_ref(url), &args).await?;
        if !output.status.success() {
            return Err(OperatorError::Command {
                args: args.join(" "),
                output: text(&output),
            });
        }
        digest = last_line(&output);
    }
    if digest.starts_with("sha256:") {
        Ok(digest)
    } else {
        Err(unexpected("push printed no digest", format!("{digest:?}")))
    }
}

/// `lockstep deploy --service demo --release DIGEST --strategy FILE [EXTRA]`,
/// whatever its exit status.
pub async fn deploy(
    urls: &[String],
    digest: &str,
    strategy: &Path,
    extra: &[&str],
) -> Result<Output, OperatorError> {
    let strategy = strategy.display().to_string();
    let mut args = vec![
        "deploy",
        "--service",
        DEMO_SERVICE,
        "--release",
        digest,
        "--strategy",
        strategy.as_str(),
    ];
    args.extend_from_slice(extra);
    Ok(lockstep(urls, &args).await?)
}

/// `lockstep deploy` without waiting; the deployment id.
pub async fn start_deploy(
    urls: &[String],
    digest: &str,
    strategy: &Path,
) -> Result<String, OperatorError> {
    let output = deploy(urls, digest, strategy, &[]).await?;
    if output.status.success() {
        Ok(last_line(&output))
    } else {
        Err(OperatorError::Command {
            args: format!("deploy --release {digest}"),
            output: text(&output),
        })
    }
}

/// The JSON value at `key` and the lease it is bound to (0: none), or
/// `None` when the key does not exist.
async fn get_json(
    etcd: &EtcdCluster,
    key: &str,
) -> Result<Option<(i64, serde_json::Value)>, OperatorError> {
    let mut client = etcd.client().await?;
    let response = client
        .get(key, None)
        .await
        .map_err(|e| unexpected(&format!("get {key}"), e))?;
    let Some(kv) = response.kvs().first() else {
        return Ok(None);
    };
    let value = serde_json::from_slice(kv.value()).map_err(|e| unexpected(key, e))?;
    Ok(Some((kv.lease(), value)))
}

/// The deployment's header key as the coordinator persisted it in etcd
/// (format 2: status and counts; the engine is in its snapshot and steps).
pub async fn record(etcd: &EtcdCluster, id: &str) -> Result<serde_json::Value, OperatorError> {
    let key = format!("/lockstep/v1/deployments/{id}");
    match get_json(etcd, &key).await? {
        Some((_, value)) => Ok(value),
        None => Err(unexpected(&key, "no such key")),
    }
}

/// Waits until the deployment ends; returns its final record.
pub async fn finished(etcd: &EtcdCluster, id: &str) -> Result<serde_json::Value, OperatorError> {
    Ok(wait_for("the deployment to end", DEADLINE, || async {
        let r = record(etcd, id).await?;
        match r["state"].as_str() {
            Some("succeeded" | "rolled_back" | "aborted" | "failed") => Ok(r),
            other => Err(unexpected("state", format!("{other:?}"))),
        }
    })
    .await?)
}

/// What one demo instance says about itself on `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub version: String,
    /// `sha256:` of the config file the serving process loaded.
    pub config_digest: String,
    pub pid: u64,
}

pub async fn served(addr: SocketAddr) -> Result<Served, String> {
    let (status, body) = request(addr, "GET", "/version", "").await?;
    if status != 200 {
        return Err(format!("/version answered {status}"));
    }
    let value: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("/version is not JSON ({e}): {body}"))?;
    match (
        value["version"].as_str(),
        value["config_digest"].as_str(),
        value["pid"].as_u64(),
    ) {
        (Some(version), Some(config_digest), Some(pid)) => Ok(Served {
            version: version.to_owned(),
            config_digest: config_digest.to_owned(),
            pid,
        }),
        _ => Err(format!(
            "/version lacks version, config_digest or pid: {body}"
        )),
    }
}

pub async fn served_version(addr: SocketAddr) -> Result<String, String> {
    served(addr).await.map(|s| s.version)
}

/// What `POST /publish` echoes for `message`: the config's
/// `message_prefix` in front of it.
pub async fn published(addr: SocketAddr, message: &str) -> Result<String, String> {
    let (status, body) = request(addr, "POST", "/publish", message).await?;
    if status != 200 {
        return Err(format!("/publish answered {status}: {body}"));
    }
    json_field(&body, "published").ok_or_else(|| format!("no published in {body}"))
}

/// Fails naming the first host that does not serve `version`.
pub async fn every_host_serves(fleet: &FleetFixture, version: &str) -> Result<(), OperatorError> {
    for host in &fleet.hosts {
        let serving = served_version(host.addr())
            .await
            .map_err(|e| unexpected(&format!("host {}", host.id), e))?;
        if serving != version {
            return Err(unexpected(
                &format!("host {}", host.id),
                format!("serves {serving}, not {version}"),
            ));
        }
    }
    Ok(())
}

/// Waits until `count` agents are reachable through the coordinator(s).
pub async fn agents_known(urls: &[String], count: usize) -> Result<(), OperatorError> {
    wait_for("every agent to report", DEADLINE, || async {
        let output = lockstep(urls, &["--output", "json", "agents"])
            .await
            .map_err(|e| e.to_string())?;
        let listed: serde_json::Value = serde_json::from_slice(&output.stdout)
            .map_err(|e| format!("{e}: {}", text(&output)))?;
        let reachable = listed
            .as_array()
            .or_else(|| listed["agents"].as_array())
            .map(|a| a.iter().filter(|x| x["reachable"] == true).count())
            .unwrap_or(0);
        if reachable >= count {
            Ok(())
        } else {
            Err(format!("{reachable} of {count} reachable: {listed}"))
        }
    })
    .await?;
    Ok(())
}

/// `lockstep --output json ARGS`, parsed; fails unless it exits 0.
pub async fn lockstep_json(
    urls: &[String],
    args: &[&str],
) -> Result<serde_json::Value, OperatorError> {
    let mut full = vec!["--output", "json"];
    full.extend_from_slice(args);
    let output = lockstep(urls, &full).await?;
    if !output.status.success() {
        return Err(OperatorError::Command {
            args: full.join(" "),
            output: text(&output),
        });
    }
    serde_json::from_slice(&output.stdout).map_err(|e| unexpected(&full.join(" "), e))
}

/// A strategy file: batches stay under observation for `min_healthy_time`
/// (the demo app itself is ready in milliseconds).
pub fn strategy(dir: &Path, name: &str, min_healthy_time: &str) -> Result<PathBuf, HarnessError> {
    strategy_with(dir, name, min_healthy_time, "")
}

/// Like `strategy`, with `extra` keys (e.g. `order = [...]`) in its
/// `[strategy]` table; the TOML keys are in `rollout/src/strategy.rs`.
pub fn strategy_with(
    dir: &Path,
    name: &str,
    min_healthy_time: &str,
    extra: &str,
) -> Result<PathBuf, HarnessError> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[strategy]\nmin_healthy_time = \"{min_healthy_time}\"\nhealthy_deadline = \"30s\"\n{extra}"
        ),
    )
    .map_err(|e| HarnessError::Fixture(format!("write {}: {e}", path.display())))?;
    Ok(path)
}

/// Two coordinators on `etcd`: the first leads (awaited before the second
/// starts), the second stands by.
pub async fn leader_and_standby(
    etcd: &EtcdCluster,
    lease_ttl_secs: u64,
) -> Result<(CoordinatorFixture, CoordinatorFixture), HarnessError> {
    let leader = CoordinatorFixture::start(&etcd.endpoints(), lease_ttl_secs).await?;
    until_leading(etcd, &leader.url())
        .await
        .map_err(|e| HarnessError::Fixture(e.to_string()))?;
    let standby = CoordinatorFixture::start(&etcd.endpoints(), lease_ttl_secs).await?;
    Ok((leader, standby))
}

/// Waits until the coordinator at `url` leads (its election key says so).
pub async fn until_leading(etcd: &EtcdCluster, url: &str) -> Result<(), WaitTimeout> {
    wait_for("the coordinator to lead", DEADLINE, || async {
        leader_url(etcd)
            .await
            .filter(|u| u == url)
            .map(drop)
            .ok_or("no leader yet")
    })
    .await
}

/// The URL of the coordinator that leads now, from its election key.
pub async fn leader_url(etcd: &EtcdCluster) -> Option<String> {
    let mut client = etcd.client().await.ok()?;
    let response = client.get("/lockstep/v1/leader", None).await.ok()?;
    let kv = response.kvs().first()?;
    let value: serde_json::Value = serde_json::from_slice(kv.value()).ok()?;
    value["purpose"].as_str().map(str::to_owned)
}

/// The deployment id `lockstep deploy --wait` prints on its first line.
pub fn deployment_id(output: &Output) -> Option<String> {
    let prefix = format!("{DEMO_SERVICE}-");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .map(str::trim)
        .filter(|line| line.starts_with(&prefix))
        .map(str::to_owned)
}

/// The demo service's deployment lock as etcd holds it: the lease it is
/// bound to and its value, or `None` when nobody holds it.
pub async fn deploy_lock(
    etcd: &EtcdCluster,
) -> Result<Option<(i64, serde_json::Value)>, OperatorError> {
    get_json(etcd, &format!("/lockstep/v1/locks/deploy/{DEMO_SERVICE}")).await
}

/// The deployment `id` as `lockstep --output json history demo` shows it.
pub async fn history_entry(urls: &[String], id: &str) -> Result<serde_json::Value, OperatorError> {
    let history = lockstep_json(urls, &["history", DEMO_SERVICE]).await?;
    history["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| &entry["deployment"])
        .find(|deployment| deployment["id"] == id)
        .cloned()
        .ok_or_else(|| {
            unexpected(
                &format!("history of {DEMO_SERVICE}"),
                format!("no {id} in {history}"),
            )
        })
}

/// The id of the demo service's active deployment (its marker in etcd),
/// or `None` when none is active.
pub async fn active_deployment(etcd: &EtcdCluster) -> Result<Option<String>, OperatorError> {
    let mut client = etcd.client().await?;
    let key = format!("/lockstep/v1/active/{DEMO_SERVICE}");
    let response = client
        .get(key.as_str(), None)
        .await
        .map_err(|e| unexpected(&format!("get {key}"), e))?;
    Ok(response
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
}

/// Instances the deployment's header counts as on its target (format 2
/// keeps counts per cluster, not instance lists).
pub fn on_target(record: &serde_json::Value) -> usize {
    record["clusters"]
        .as_array()
        .map(|clusters| {
            clusters
                .iter()
                .map(|c| c["on_target"].as_u64().map_or(0, |n| n as usize))
                .sum()
        })
        .unwrap_or(0)
}

/// Every disruption-budget key (holder or waiter) left in any cluster.
pub async fn budget_keys(etcd: &EtcdCluster) -> Result<Vec<String>, OperatorError> {
    let mut client = etcd.client().await?;
    let prefix = "/lockstep/v1/clusters/";
    let response = client
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .map_err(|e| unexpected(&format!("get {prefix}"), e))?;
    Ok(response
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .filter(|key| key.contains("/budget/") || key.contains("/budget-queue/"))
        .collect())
}

/// How many keys etcd holds under `prefix`.
pub async fn keys_under(etcd: &EtcdCluster, prefix: &str) -> Result<i64, OperatorError> {
    let mut client = etcd.client().await?;
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    let response = client
        .get(prefix, Some(options))
        .await
        .map_err(|e| unexpected(&format!("count {prefix}"), e))?;
    Ok(response.count())
}

/// etcd, one coordinator (leases of `lease_ttl_secs`) and a fleet of
/// `layout` (agent id, cluster) reporting to it, every agent known.
pub async fn fleet_reporting(
    layout: &[(&str, &str)],
    lease_ttl_secs: u64,
) -> Result<(EtcdCluster, CoordinatorFixture, FleetFixture), OperatorError> {
    let etcd = EtcdCluster::single().await?;
    let coordinator = CoordinatorFixture::start(&etcd.endpoints(), lease_ttl_secs).await?;
    let urls = vec![coordinator.url()];
    let fleet = FleetFixture::start(layout, &etcd.endpoints(), &urls).await?;
    agents_known(&urls, layout.len()).await?;
    Ok((etcd, coordinator, fleet))
}
