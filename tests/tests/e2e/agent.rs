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

    // The install returns once v2 is ready; v1's instance drains after it
    // and may still be listed first (a fresh-machine run killed it instead).
    let status = wait_for("v1's instance to drain", DEADLINE, || async {
        let status = agent
            .agentctl_json(&["status", "demo"])
            .await
            .map_err(|e| e.to_string())?;
        let instances = status["services"][0]["instances"].as_array().cloned();
        match instances.as_deref() {
            Some([only]) if only["release_version"] == "2.0.0" => Ok(status),
            other => Err(format!("instances: {other:?}")),
        }
    })
    .await
    .unwrap();
    let pid = instance(&status, 0)["pid"].as_i64().unwrap();
    let restarted = kill_and_await_replacement(&agent, pid).await;
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

    let pid = ready_pid(&agent).await;
    agent.restart().await.unwrap();
    let version = wait_for("the service to serve again", DEADLINE, || {
        served_version(port)
    })
    .await
    .unwrap();
    assert_eq!(version, "2.0.0");
    // Its app kept running across the restart and was adopted.
    assert_eq!(ready_pid(&agent).await, pid);
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

/// The app process `pid` has ended (a zombie counts: nobody here reaps
/// an orphan, but it no longer serves).
fn process_gone(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_ascii_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// The single demo instance's pid once it is ready.
async fn ready_pid(agent: &AgentFixture) -> i64 {
    wait_for("the instance to be ready", DEADLINE, || async {
        let status = agent
            .agentctl_json(&["status", "demo"])
            .await
            .map_err(|e| e.to_string())?;
        let i = instance(&status, 0);
        match (i["ready"] == true, i["pid"].as_i64()) {
            (true, Some(pid)) => Ok(pid),
            _ => Err(format!("instance is {i}")),
        }
    })
    .await
    .unwrap()
}

/// Waits until the poller has had `more` further answers.
async fn answers_grow(poller: &Poller, more: u64, what: &str) {
    let from = poller.snapshot().await.succeeded;
    wait_for(what, DEADLINE, || async {
        let now = poller.snapshot().await.succeeded;
        if now >= from + more {
            Ok(())
        } else {
            Err(format!("{} answers so far", now - from))
        }
    })
    .await
    .unwrap();
}

/// Installs v1 and starts a poller on it; returns (v2 bundle, port, poller, pid).
async fn serving_v1(agent: &AgentFixture) -> (std::path::PathBuf, u16, Poller, i64) {
    let port = free_loopback_port().unwrap();
    let v1 = DemoRelease::new("1.0.0", port).build(agent.dir()).unwrap();
    let v2 = DemoRelease::new("2.0.0", port).build(agent.dir()).unwrap();
    agent.install(&v1).await.unwrap();
    let pid = ready_pid(agent).await;
    let poller = Poller::start(addr(port));
    answers_grow(&poller, 1, "the poller's first answer").await;
    (v2, port, poller, pid)
}

#[tokio::test]
async fn a_sigtermed_agent_leaves_its_app_serving_and_the_next_agent_adopts_it() {
    let mut agent = AgentFixture::start("host-7", "eu-1").await.unwrap();
    let (v2, port, poller, pid) = serving_v1(&agent).await;

    agent.stop().await.unwrap();
    assert!(!process_gone(pid), "the app must outlive the agent");
    answers_grow(&poller, 20, "answers while the agent is down").await;

    agent.start_again().await.unwrap();
    assert_eq!(ready_pid(&agent).await, pid, "the same process, adopted");
    let status = agent.agentctl_json(&["status", "demo"]).await.unwrap();
    assert_eq!(instance(&status, 0)["state"], "ready", "{status}");
    assert_eq!(instance(&status, 0)["restarts"], 0, "{status}");
    answers_grow(&poller, 20, "answers after the adoption").await;
    let logs = agent.agentctl(&["logs", "demo"]).await.unwrap();
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.contains(&format!("adopted pid {pid}")), "{logs}");

    // Start-before-stop on the recovered socket: no request fails.
    agent.install(&v2).await.unwrap();
    assert_eq!(served_version(port).await.unwrap(), "2.0.0");
    wait_for("the adopted v1 process to be gone", DEADLINE, || async {
        if process_gone(pid) {
            Ok(())
        } else {
            Err("still running")
        }
    })
    .await
    .unwrap();
    answers_grow(&poller, 20, "answers from v2").await;
    let report = poller.stop().await;
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    assert_eq!(report.versions, vec!["1.0.0", "2.0.0"], "{report:?}");
}

#[tokio::test]
async fn a_killed_agent_leaves_its_app_serving_and_the_next_agent_adopts_it() {
    let mut agent = AgentFixture::start("host-8", "eu-1").await.unwrap();
    let (v2, port, poller, pid) = serving_v1(&agent).await;

    agent.kill().await.unwrap();
    assert!(!process_gone(pid), "the app must outlive the agent");
    answers_grow(&poller, 20, "answers while the agent is down").await;

    agent.start_again().await.unwrap();
    assert_eq!(ready_pid(&agent).await, pid, "the same process, adopted");
    agent.install(&v2).await.unwrap();
    assert_eq!(served_version(port).await.unwrap(), "2.0.0");
    answers_grow(&poller, 20, "answers from v2").await;
    let report = poller.stop().await;
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
}

#[tokio::test]
async fn an_adopted_app_that_dies_is_restarted() {
    let mut agent = AgentFixture::start("host-9", "eu-1").await.unwrap();
    let port = free_loopback_port().unwrap();
    let v1 = DemoRelease::new("1.0.0", port).build(agent.dir()).unwrap();
    agent.install(&v1).await.unwrap();
    let pid = ready_pid(&agent).await;
    agent.restart().await.unwrap();
    assert_eq!(ready_pid(&agent).await, pid, "the same process, adopted");

    let fresh = kill_and_await_replacement(&agent, pid).await;
    assert_eq!(fresh["restarts"], 1, "{fresh}");
    assert_eq!(served_version(port).await.unwrap(), "1.0.0");
}

#[tokio::test]
async fn with_apps_on_agent_stop_stop_the_agent_stops_its_apps() {
    let mut agent =
        AgentFixture::start_configured("host-10", "eu-1", "apps_on_agent_stop = \"stop\"", "")
            .await
            .unwrap();
    let port = free_loopback_port().unwrap();
    let v1 = DemoRelease::new("1.0.0", port).build(agent.dir()).unwrap();
    agent.install(&v1).await.unwrap();
    let pid = ready_pid(&agent).await;
    agent.stop().await.unwrap();
    assert!(
        process_gone(pid),
        "the agent stopped its app before exiting"
    );
    agent.start_again().await.unwrap();
    let fresh = ready_pid(&agent).await;
    assert_ne!(fresh, pid, "a fresh process, nothing to adopt");
    assert_eq!(served_version(port).await.unwrap(), "1.0.0");
}

#[tokio::test]
async fn a_slot_whose_app_died_while_the_agent_was_down_is_started_beside_the_adopted_one() {
    let mut agent = AgentFixture::start("host-11", "eu-1").await.unwrap();
    let port = free_loopback_port().unwrap();
    let mut release = DemoRelease::new("1.0.0", port);
    release.instances = 2;
    let v1 = release.build(agent.dir()).unwrap();
    agent.install(&v1).await.unwrap();
    let status = agent.agentctl_json(&["status", "demo"]).await.unwrap();
    let pids: Vec<i64> = (0..2)
        .map(|slot| instance(&status, slot)["pid"].as_i64().unwrap())
        .collect();

    agent.stop().await.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pids[1]).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    agent.start_again().await.unwrap();

    let status = wait_for("both slots ready", DEADLINE, || async {
        let status = agent
            .agentctl_json(&["status", "demo"])
            .await
            .map_err(|e| e.to_string())?;
        if (0..2).all(|slot| instance(&status, slot)["ready"] == true) {
            Ok(status)
        } else {
            Err(format!("{status}"))
        }
    })
    .await
    .unwrap();
    assert_eq!(
        instance(&status, 0)["pid"].as_i64(),
        Some(pids[0]),
        "adopted"
    );
    let fresh = instance(&status, 1)["pid"].as_i64().unwrap();
    assert_ne!(fresh, pids[1], "started fresh");
    assert_eq!(served_version(port).await.unwrap(), "1.0.0");
}

#[tokio::test]
async fn a_left_over_app_of_a_release_that_is_not_current_is_stopped_and_the_current_one_starts() {
    let mut agent = AgentFixture::start("host-12", "eu-1").await.unwrap();
    let port = free_loopback_port().unwrap();
    let v1 = DemoRelease::new("1.0.0", port).build(agent.dir()).unwrap();
    let v2 = DemoRelease::new("2.0.0", port).build(agent.dir()).unwrap();
    agent.install(&v1).await.unwrap();
    agent.install(&v2).await.unwrap();
    let v2_pid = ready_pid(&agent).await;

    // As if the agent died after starting v2 but before v2 was durable:
    // state.json says v1 is current, a v2 process runs.
    agent.kill().await.unwrap();
    let state_file = agent.dir().join("data/state.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    let demo = &mut state["services"]["demo"];
    let v1_record = demo["previous"][0].clone();
    demo["current"] = v1_record;
    std::fs::write(&state_file, serde_json::to_vec_pretty(&state).unwrap()).unwrap();

    agent.start_again().await.unwrap();
    let pid = ready_pid(&agent).await;
    assert_ne!(pid, v2_pid);
    assert!(process_gone(v2_pid), "the v2 left-over was stopped");
    assert_eq!(served_version(port).await.unwrap(), "1.0.0");
}

/// kill -9 of slot 0's app (`pid`); its ready replacement's status.
async fn kill_and_await_replacement(agent: &AgentFixture, pid: i64) -> Value {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("the killed app to be replaced", DEADLINE, || async {
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
    .unwrap()
}

/// Reproduces #14 Seen 8: "`agentctl status | head` panics on a broken
/// pipe". The reader is gone before agentctl prints: it ends quietly with
/// 141, as SIGPIPE ends `ls` in `ls | head`, and prints no panic.
#[tokio::test]
async fn agentctl_status_into_a_closed_pipe_is_not_a_panic() {
    use std::process::{Command, Stdio};
    let agent = AgentFixture::start("host-pipe", "eu-1").await.unwrap();
    let port = free_loopback_port().unwrap();
    let v1 = DemoRelease::new("1.0.0", port).build(agent.dir()).unwrap();
    agent.install(&v1).await.unwrap();
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let mut command = Command::new(lockstep_tests::workspace_bin("agentctl").unwrap());
    command
        .arg("--socket")
        .arg(agent.socket())
        .arg("status")
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr, "", "nothing on stderr");
    assert_eq!(output.status.code(), Some(141), "{:?}", output.status);
}
