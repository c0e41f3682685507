//! lockstep-agent on one host, with no etcd and no coordinator: real agent,
//! real agentctl, real demo-app releases.

use std::net::SocketAddr;
use std::time::Duration;

use lockstep_tests::http::{Poller, json_field, request};
use lockstep_tests::{AgentFixture, DemoRelease, free_loopback_port, wait_for};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

fn addr(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// An install expected to be refused: its output is the point.
async fn try_install(agent: &AgentFixture, bundle: &std::path::Path) -> std::process::Output {
    agent
        .agentctl(&["install", bundle.to_str().unwrap()])
        .await
        .unwrap()
}

async fn served_version(port: u16) -> Result<String, String> {
    let (status, body) = request(addr(port), "GET", "/version", "").await?;
    if status != 200 {
        return Err(format!("/version answered {status}"));
    }
    json_field(&body, "version").ok_or_else(|| format!("no version in {body}"))
}

fn instance(status: &Value, slot: usize) -> &Value {
    &status["services"][0]["instances"][slot]
}

#[tokio::test]
async fn install_switches_start_before_stop_and_a_refused_config_never_takes_over() {
    let agent = AgentFixture::start("host-1", "eu-1").await.unwrap();
    let port = free_loopback_port().unwrap();
    let v1 = DemoRelease::new("1.0.0", port).build(agent.dir()).unwrap();
    let v2 = DemoRelease::new("2.0.0", port).build(agent.dir()).unwrap();
    let v3 = DemoRelease::new("3.0.0", port)
        .with_unknown_config_key()
        .build(agent.dir())
        .unwrap();

    agent.install(&v1).await.unwrap();
    assert_eq!(served_version(port).await.unwrap(), "1.0.0");

    // A client hits the service through both switches.
    let poller = Poller::start(addr(port));
    wait_for("the poller's first answer", DEADLINE, || async {
        match poller.snapshot().await.succeeded {
            0 => Err("none yet"),
            _ => Ok(()),
        }
    })
    .await
    .unwrap();

    agent.install(&v2).await.unwrap();
    assert_eq!(served_version(port).await.unwrap(), "2.0.0");

    // The incident's release: its config has a key the app refuses.
    let bad = try_install(&agent, &v3).await;
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("did not become ready"), "{stderr}");
    assert!(
        stderr.contains("metrics_endpoint"),
        "the app's own refusal must be quoted: {stderr}"
    );
    assert!(stderr.contains("old release keeps serving"), "{stderr}");
    assert_eq!(served_version(port).await.unwrap(), "2.0.0");

    let report = poller.stop().await;
    assert_eq!(
        report.failed, 0,
        "failed requests during the switches: {:?}",
        report.failures
    );
    assert!(report.versions.contains(&"2.0.0".to_owned()), "{report:?}");
    assert!(!report.versions.contains(&"3.0.0".to_owned()), "{report:?}");

    let releases = agent.agentctl_json(&["releases", "demo"]).await.unwrap();
    assert_eq!(releases["current"]["version"], "2.0.0");
    assert_eq!(releases["previous"][0]["version"], "1.0.0");
    let history = releases["history"].as_array().unwrap();
    assert_eq!(history.last().unwrap()["succeeded"], false);
}

#[tokio::test]
async fn with_overlap_none_a_failed_release_is_replaced_by_the_old_one() {
    let agent = AgentFixture::start("host-2", "eu-1").await.unwrap();
    let port = free_loopback_port().unwrap();
    let v1 = DemoRelease::new("1.0.0", port)
        .with_overlap("none")
        .build(agent.dir())
        .unwrap();
    let v3 = DemoRelease::new("3.0.0", port)
        .with_overlap("none")
        .with_unknown_config_key()
        .build(agent.dir())
        .unwrap();
    agent.install(&v1).await.unwrap();
    let bad = try_install(&agent, &v3).await;
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("started again and serves"), "{stderr}");

    assert_eq!(served_version(port).await.unwrap(), "1.0.0");
    let status = agent.agentctl_json(&["status", "demo"]).await.unwrap();
    assert_eq!(instance(&status, 0)["state"], "ready", "{status}");
    assert_eq!(instance(&status, 0)["release_version"], "1.0.0");
}

#[tokio::test]
async fn a_killed_app_is_restarted_and_rollback_returns_to_the_previous_release() {
    let agent = AgentFixture::start("host-3", "eu-1").await.unwrap();
    let port = free_loopback_port().unwrap();
    let v1 = DemoRelease::new("1.0.0", port).build(agent.dir()).unwrap();
    let v2 = DemoRelease::new("2.0.0", port).build(agent.dir()).unwrap();
    agent.install(&v1).await.unwrap();
    agent.install(&v2).await.unwrap();

    let status = agent.agentctl_json(&["status", "demo"]).await.unwrap();
    let pid = instance(&status, 0)["pid"].as_i64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let restarted = wait_for("the killed app to be replaced", DEADLINE, || async {
        let status = agent
            .agentctl_json(&["status", "demo"])
            .await
            .map_err(|e| e.to_string())?;
        let i = instance(&status, 0).clone();
        if i["pid"].as_i64().is_some_and(|p| p != pid) && i["ready"] == true {
            Ok(i)
        } else {
            Err(format!("instance is {i}"))
        }
    })
    .await
    .unwrap();
    assert_eq!(restarted["restarts"], 1);
    assert_eq!(served_version(port).await.unwrap(), "2.0.0");

    let back = agent.agentctl(&["rollback", "demo"]).await.unwrap();
    assert!(
        back.status.success(),
        "{}",
        String::from_utf8_lossy(&back.stderr)
    );
    assert_eq!(served_version(port).await.unwrap(), "1.0.0");
}

#[tokio::test]
async fn an_app_that_keeps_crashing_is_reported_crash_looping() {
    let agent = AgentFixture::start("host-4", "eu-1").await.unwrap();
    let port = free_loopback_port().unwrap();
    let flaky = DemoRelease::new("1.0.0", port)
        .with_config("[faults]\ncrash_after_ms = 2000\n")
        .build(agent.dir())
        .unwrap();
    // It becomes ready, so the install succeeds; then it crashes every time.
    agent.install(&flaky).await.unwrap();
    wait_for("the crash loop to be reported", DEADLINE, || async {
        let status = agent
            .agentctl_json(&["status", "demo"])
            .await
            .map_err(|e| e.to_string())?;
        let i = instance(&status, 0);
        if i["state"] == "crash_looping" {
            Ok(())
        } else {
            Err(format!("instance is {i}"))
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_restarted_agent_runs_every_service_on_its_current_release() {
    let mut agent = AgentFixture::start("host-5", "eu-1").await.unwrap();
    let port = free_loopback_port().unwrap();
    let v1 = DemoRelease::new("1.0.0", port).build(agent.dir()).unwrap();
    let v2 = DemoRelease::new("2.0.0", port).build(agent.dir()).unwrap();
    agent.install(&v1).await.unwrap();
    agent.install(&v2).await.unwrap();

    agent.restart().await.unwrap();
    let version = wait_for("the service to serve again", DEADLINE, || {
        served_version(port)
    })
    .await
    .unwrap();
    assert_eq!(version, "2.0.0");
    let releases = agent.agentctl_json(&["releases", "demo"]).await.unwrap();
    assert_eq!(releases["previous"][0]["version"], "1.0.0");
}

#[tokio::test]
async fn agentctl_refuses_a_caller_that_is_not_allowed() {
    let agent = AgentFixture::start("host-6", "eu-1").await.unwrap();
    let agentctl = lockstep_tests::workspace_bin("agentctl").unwrap();
    // The test binary's directories must be reachable by `nobody`.
    let output = tokio::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&agentctl)
        .arg("--socket")
        .arg(agent.socket())
        .arg("status")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(77), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not allowed"), "{stderr}");
    assert!(stderr.contains("root or as a member"), "{stderr}");
}

#[tokio::test]
async fn a_malformed_agent_config_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "cluster = \"eu-1\"\ndata_dir = \"/var/lib/lockstep\"\n[grpc]\nlisten = \"127.0.0.1:7600\"\nlisen = \"typo\"\n",
    )
    .unwrap();
    let agent = lockstep_tests::workspace_bin("lockstep-agent").unwrap();
    for args in [
        vec!["check-config", config.to_str().unwrap()],
        vec!["--config", config.to_str().unwrap()],
    ] {
        let output = tokio::process::Command::new(&agent)
            .args(&args)
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("lisen") && stderr.contains("line 5"),
            "{args:?}: {stderr}"
        );
    }
}
