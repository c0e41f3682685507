//! The coordinator with real etcd, agents and demo apps: rollouts across
//! clusters, automatic rollback, failover, fencing, stale locks.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use lockstep_tests::http::{Poller, json_field, request};
use lockstep_tests::{
    CoordinatorFixture, DEMO_SERVICE, DemoRelease, EtcdCluster, FleetFixture, lockstep, wait_for,
};

const DEADLINE: Duration = Duration::from_secs(120);
/// Short leases so failover tests finish quickly; still several keep-alives.
const TTL_SECS: u64 = 3;

fn text(output: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn last_line(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// `lockstep release push BUNDLE` to every coordinator; the digest.
async fn push(urls: &[String], bundle: &Path) -> String {
    let mut digest = String::new();
    for url in urls {
        let output = lockstep(
            std::slice::from_ref(url),
            &["release", "push", &bundle.display().to_string()],
        )
        .await
        .unwrap();
        assert!(output.status.success(), "push: {}", text(&output));
        digest = last_line(&output);
    }
    assert!(digest.starts_with("sha256:"), "push printed {digest:?}");
    digest
}

/// `lockstep deploy --service demo --release DIGEST --strategy FILE [EXTRA]`.
async fn deploy(urls: &[String], digest: &str, strategy: &Path, extra: &[&str]) -> Output {
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
    lockstep(urls, &args).await.unwrap()
}

/// `lockstep deploy` without waiting; the deployment id.
async fn start_deploy(urls: &[String], digest: &str, strategy: &Path) -> String {
    let output = deploy(urls, digest, strategy, &[]).await;
    assert!(output.status.success(), "deploy: {}", text(&output));
    last_line(&output)
}

/// The deployment record as the coordinator persisted it in etcd.
async fn record(etcd: &EtcdCluster, id: &str) -> serde_json::Value {
    let mut client = etcd.client().await.unwrap();
    let response = client
        .get(format!("/lockstep/v1/deployments/{id}"), None)
        .await
        .unwrap();
    let kv = response.kvs().first().unwrap();
    serde_json::from_slice(kv.value()).unwrap()
}

/// Waits until the deployment ends; returns its final state.
async fn finished(etcd: &EtcdCluster, id: &str) -> serde_json::Value {
    wait_for("the deployment to end", DEADLINE, || async {
        let r = record(etcd, id).await;
        match r["state"].as_str() {
            Some("succeeded" | "rolled_back" | "aborted" | "failed") => Ok(r),
            other => Err(format!("state {other:?}")),
        }
    })
    .await
    .unwrap()
}

async fn served_version(addr: std::net::SocketAddr) -> Result<String, String> {
    let (status, body) = request(addr, "GET", "/version", "").await?;
    if status != 200 {
        return Err(format!("/version answered {status}"));
    }
    json_field(&body, "version").ok_or_else(|| format!("no version in {body}"))
}

async fn every_host_serves(fleet: &FleetFixture, version: &str) {
    for host in &fleet.hosts {
        assert_eq!(
            served_version(host.addr()).await.unwrap(),
            version,
            "host {}",
            host.id
        );
    }
}

/// Waits until every agent has reported to the coordinator(s).
async fn agents_known(urls: &[String], count: usize) {
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
    .await
    .unwrap();
}

/// A strategy file: batches stay under observation for `min_healthy_time`
/// (the demo app itself is ready in milliseconds).
fn strategy(dir: &Path, name: &str, min_healthy_time: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[strategy]\nmin_healthy_time = \"{min_healthy_time}\"\nhealthy_deadline = \"30s\"\n"
        ),
    )
    .unwrap();
    path
}

const LAYOUT: &[(&str, &str)] = &[("west-1", "west"), ("west-2", "west"), ("east-1", "east")];

#[tokio::test]
async fn a_release_rolls_across_two_clusters_and_a_refused_config_rolls_back_by_itself() {
    let etcd = EtcdCluster::single().await.unwrap();
    let coordinator = CoordinatorFixture::start(&etcd.endpoints(), TTL_SECS)
        .await
        .unwrap();
    let urls = vec![coordinator.url()];
    let fleet = FleetFixture::start(LAYOUT, &etcd.endpoints(), &urls)
        .await
        .unwrap();
    agents_known(&urls, LAYOUT.len()).await;
    let work = tempfile::tempdir().unwrap();
    let port = 1; // every host overrides the listen address
    let v1 = DemoRelease::new("1.0.0", port).build(work.path()).unwrap();
    let v2 = DemoRelease::new("2.0.0", port).build(work.path()).unwrap();
    let v3 = DemoRelease::new("3.0.0", port)
        .with_unknown_config_key()
        .build(work.path())
        .unwrap();

    // First install: nothing ran the service before.
    let fast = strategy(work.path(), "fast", "500ms");
    let d1 = push(&urls, &v1).await;
    let id = start_deploy(&urls, &d1, &fast).await;
    let r = finished(&etcd, &id).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    every_host_serves(&fleet, "1.0.0").await;

    // A good release, with a client on every host the whole time.
    let pollers: Vec<Poller> = fleet
        .hosts
        .iter()
        .map(|h| Poller::start(h.addr()))
        .collect();
    let d2 = push(&urls, &v2).await;
    let output = deploy(&urls, &d2, &fast, &["--wait"]).await;
    assert!(
        output.status.success(),
        "deploy --wait v2: {}",
        text(&output)
    );
    every_host_serves(&fleet, "2.0.0").await;

    // The incident's release: its config is refused; the canary fails and
    // the fleet stays on 2.0.0 without anyone stepping in.
    let d3 = push(&urls, &v3).await;
    let output = deploy(&urls, &d3, &fast, &["--wait"]).await;
    assert_eq!(
        output.status.code(),
        Some(3),
        "rolled back: {}",
        text(&output)
    );
    let id3 = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("demo-"))
                .map(str::to_owned)
        })
        .unwrap_or_default();
    every_host_serves(&fleet, "2.0.0").await;
    for poller in pollers {
        let report = poller.stop().await;
        assert_eq!(report.failed, 0, "a client saw failures: {report:?}");
        assert!(!report.versions.contains(&"3.0.0".to_owned()), "{report:?}");
    }

    // The lock is gone and history says what happened and why.
    let mut client = etcd.client().await.unwrap();
    let lock = client
        .get(format!("/lockstep/v1/locks/deploy/{DEMO_SERVICE}"), None)
        .await
        .unwrap();
    assert!(lock.kvs().is_empty(), "the deployment lock is still held");
    let output = lockstep(&urls, &["--output", "json", "history", DEMO_SERVICE])
        .await
        .unwrap();
    assert!(output.status.success(), "history: {}", text(&output));
    let history = String::from_utf8_lossy(&output.stdout);
    assert!(history.contains("rolled_back"), "{history}");
    assert!(
        history.contains("metrics_endpoint"),
        "the reason names the refused key: {history}"
    );
    if !id3.is_empty() {
        let r = record(&etcd, &id3).await;
        assert_eq!(r["state"], "rolled_back", "{r}");
    }
}

#[tokio::test]
async fn a_standby_finishes_a_rollout_whose_leader_was_killed_and_the_old_token_is_refused() {
    let etcd = EtcdCluster::single().await.unwrap();
    let mut first = CoordinatorFixture::start(&etcd.endpoints(), TTL_SECS)
        .await
        .unwrap();
    wait_for("the first coordinator to lead", DEADLINE, || async {
        leader_url(&etcd)
            .await
            .filter(|u| *u == first.url())
            .ok_or("no leader yet")
    })
    .await
    .unwrap();
    let second = CoordinatorFixture::start(&etcd.endpoints(), TTL_SECS)
        .await
        .unwrap();
    let urls = vec![first.url(), second.url()];
    let fleet = FleetFixture::start(LAYOUT, &etcd.endpoints(), &urls)
        .await
        .unwrap();
    agents_known(&[second.url()], LAYOUT.len()).await;
    let work = tempfile::tempdir().unwrap();
    let v1 = DemoRelease::new("1.0.0", 1).build(work.path()).unwrap();
    let v2 = DemoRelease::new("2.0.0", 1).build(work.path()).unwrap();
    let fast = strategy(work.path(), "fast", "500ms");
    let d1 = push(&urls, &v1).await;
    let id = start_deploy(&urls, &d1, &fast).await;
    assert_eq!(finished(&etcd, &id).await["state"], "succeeded");

    // Each batch stays under observation for a while: time to kill the
    // leader between batches.
    let slow = strategy(work.path(), "slow", "3s");
    let d2 = push(&urls, &v2).await;
    let id = start_deploy(&urls, &d2, &slow).await;
    wait_for("the first instance to be on 2.0.0", DEADLINE, || async {
        let r = record(&etcd, &id).await;
        let on_target: usize = r["progress"]
            .as_object()
            .map(|p| {
                p.values()
                    .map(|c| c["on_target"].as_array().map_or(0, Vec::len))
                    .sum()
            })
            .unwrap_or(0);
        if on_target >= 1 {
            Ok(())
        } else {
            Err(format!("{r}"))
        }
    })
    .await
    .unwrap();
    let old_token = record(&etcd, &id).await["token"].as_u64().unwrap();
    first.kill();

    let r = finished(&etcd, &id).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    let new_token = r["token"].as_u64().unwrap();
    assert!(
        new_token > old_token,
        "resumed with token {new_token} after {old_token}"
    );
    every_host_serves(&fleet, "2.0.0").await;
    assert_eq!(leader_url(&etcd).await, Some(second.url()));

    // What the dead leader would send, were it to come back: refused.
    let host = &fleet.hosts[0];
    let mut agent = proto::v1::agent_service_client::AgentServiceClient::connect(format!(
        "http://{}",
        host.agent.grpc_addr()
    ))
    .await
    .unwrap();
    let verdict = agent
        .apply(proto::v1::ApplyRequest {
            service: DEMO_SERVICE.into(),
            release_digest: d1.clone(),
            fencing_token: old_token,
            deployment_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .verdict
        .unwrap();
    assert_eq!(
        verdict.refusal(),
        proto::v1::RefusalReason::StaleFencingToken,
        "{verdict:?}"
    );
    every_host_serves(&fleet, "2.0.0").await;
}

#[tokio::test]
async fn a_killed_coordinators_lock_expires_and_the_next_deploy_needs_no_human() {
    let etcd = EtcdCluster::single().await.unwrap();
    let mut first = CoordinatorFixture::start(&etcd.endpoints(), TTL_SECS)
        .await
        .unwrap();
    let urls = vec![first.url()];
    let fleet = FleetFixture::start(&LAYOUT[..1], &etcd.endpoints(), &urls)
        .await
        .unwrap();
    agents_known(&urls, 1).await;
    let work = tempfile::tempdir().unwrap();
    let v1 = DemoRelease::new("1.0.0", 1).build(work.path()).unwrap();
    let v2 = DemoRelease::new("2.0.0", 1).build(work.path()).unwrap();
    let d1 = push(&urls, &v1).await;
    let slow = strategy(work.path(), "slow", "10s");
    let fast = strategy(work.path(), "fast", "500ms");
    let id = start_deploy(&urls, &d1, &slow).await;

    // A second deploy while one is active is refused at once, naming the holder.
    let d2 = push(&urls, &v2).await;
    let output = deploy(&urls, &d2, &fast, &[]).await;
    assert_eq!(output.status.code(), Some(75), "refused: {}", text(&output));
    let said = text(&output);
    assert!(said.contains(&id), "names the holding deployment: {said}");

    // The deployer dies holding the lock and comes back (systemd restarts
    // it): its old lease expires by itself, the new process takes the lock
    // with a higher token, finishes the deployment, and the next deploy
    // goes through with no bypass.
    let locked_token = record(&etcd, &id).await["token"].as_u64().unwrap();
    first.kill();
    first.restart().await.unwrap();
    let r = finished(&etcd, &id).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    assert!(r["token"].as_u64().unwrap() > locked_token, "{r}");
    agents_known(&urls, 1).await;
    let output = deploy(&urls, &d2, &fast, &["--wait"]).await;
    assert!(
        output.status.success(),
        "deploy after takeover: {}",
        text(&output)
    );
    every_host_serves(&fleet, "2.0.0").await;
}

async fn leader_url(etcd: &EtcdCluster) -> Option<String> {
    let mut client = etcd.client().await.ok()?;
    let response = client.get("/lockstep/v1/leader", None).await.ok()?;
    let kv = response.kvs().first()?;
    let value: serde_json::Value = serde_json::from_slice(kv.value()).ok()?;
    value["purpose"].as_str().map(str::to_owned)
}
