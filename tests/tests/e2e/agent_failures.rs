//! What a failed or refused command leaves on one host (#12, agent side):
//! real agent, real agentctl, real demo-app releases with injected faults.

use std::net::SocketAddr;
use std::time::Duration;

use lockstep_tests::http::{json_field, request};
use lockstep_tests::{AgentFixture, DemoRelease, free_loopback_port, wait_for};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

async fn served_version(port: u16) -> Result<String, String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let (status, body) = request(addr, "GET", "/version", "").await?;
    if status != 200 {
        return Err(format!("/version answered {status}"));
    }
    json_field(&body, "version").ok_or_else(|| format!("no version in {body}"))
}

fn instances(status: &Value) -> Vec<Value> {
    status["services"][0]["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The process `pid` has ended (a zombie counts: it no longer serves).
fn process_gone(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_ascii_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Reproduces #12 item 6: a failed restart with `[overlap] mode = "none"`
/// removed the old instance, returned on the new one's error and left the
/// slot empty for good: a one-instance service stayed down. Like a failed
/// switch, it must bring the old instance back (and keep supervising it,
/// so it serves again once the cause of the failure is gone).
#[tokio::test]
async fn a_failed_restart_with_overlap_none_brings_the_instance_back() {
    let agent = AgentFixture::start("host-21", "eu-1").await.unwrap();
    let port = free_loopback_port().unwrap();
    let down = agent.dir().join("dependency-down");
    let v1 = DemoRelease::new("1.0.0", port)
        .with_overlap("none")
        .with_config(&format!(
            "[faults]\nfail_at_start_while_exists = {:?}\n",
            down.display().to_string()
        ))
        .build(agent.dir())
        .unwrap();
    agent.install(&v1).await.unwrap();
    assert_eq!(served_version(port).await.unwrap(), "1.0.0");

    // A dependency goes down: a fresh start of the app fails.
    std::fs::write(&down, "").unwrap();
    let restart = agent
        .agentctl(&["restart", "demo", "--reason", "item 6"])
        .await
        .unwrap();
    assert!(!restart.status.success(), "{}", text(&restart));
    assert!(
        text(&restart).contains("started again"),
        "{}",
        text(&restart)
    );
    let status = agent.agentctl_json(&["status", "demo"]).await.unwrap();
    assert_eq!(
        instances(&status).len(),
        1,
        "the slot is not empty: {status}"
    );

    // The dependency is back: the supervised instance serves again.
    std::fs::remove_file(&down).unwrap();
    let version = wait_for("the service to serve again", DEADLINE, || {
        served_version(port)
    })
    .await
    .unwrap();
    assert_eq!(version, "1.0.0");
    let releases = agent.agentctl_json(&["releases", "demo"]).await.unwrap();
    assert_eq!(releases["current"]["version"], "1.0.0", "{releases}");
}

/// `agentctl install` of `version` on `port`; its digest.
async fn installed(agent: &AgentFixture, version: &str, port: u16) -> String {
    let bundle = DemoRelease::new(version, port).build(agent.dir()).unwrap();
    agent.install(&bundle).await.unwrap();
    let releases = agent.agentctl_json(&["releases", "demo"]).await.unwrap();
    releases["current"]["digest"].as_str().unwrap().to_owned()
}

/// The switch the agent recorded for `deployment`, if any.
async fn recorded_switch(agent: &AgentFixture, deployment: &str) -> Result<Value, String> {
    let releases = agent
        .agentctl_json(&["releases", "demo"])
        .await
        .map_err(|e| e.to_string())?;
    let needle = format!("apply {deployment} ");
    releases["history"]
        .as_array()
        .and_then(|h| {
            h.iter().find(|s| {
                s["trigger"]
                    .as_str()
                    .is_some_and(|t| t.starts_with(&needle))
            })
        })
        .cloned()
        .ok_or_else(|| format!("no switch recorded for {deployment}"))
}

/// Reproduces #12 item 5: Apply answered Accepted after `prepare_apply`,
/// then the switch it spawned found the service busy and only logged it;
/// the coordinator waited out `healthy_deadline` for a command the agent
/// had dropped. Two Applies racing for one service: each one answered
/// Accepted must be carried out (a switch recorded for its deployment);
/// the one that cannot be taken must be answered Busy.
#[tokio::test]
async fn an_apply_answered_accepted_is_carried_out() {
    let agent = AgentFixture::start("host-22", "eu-1").await.unwrap();
    let port = free_loopback_port().unwrap();
    let mut digests = Vec::new();
    for version in ["1.0.0", "2.0.0", "3.0.0"] {
        digests.push(installed(&agent, version, port).await);
    }
    let client = proto::v1::agent_service_client::AgentServiceClient::connect(format!(
        "http://{}",
        agent.grpc_addr()
    ))
    .await
    .unwrap();
    let apply = |digest: &str, deployment: String| proto::v1::ApplyRequest {
        service: "demo".into(),
        release_digest: digest.to_owned(),
        fencing_token: 7,
        deployment_id: deployment,
        command_seq: 0,
    };
    let mut current = 2;
    // Rounds where an apply was taken (the previous switch's old instance
    // may still drain, and then both are busy).
    let mut raced = 0;
    for round in 0..30 {
        if raced == 6 {
            break;
        }
        let status = agent.agentctl_json(&["status", "demo"]).await.unwrap();
        let old_pid = instances(&status)[0]["pid"].as_i64().unwrap();
        let (a, b) = ((current + 1) % 3, (current + 2) % 3);
        let (da, db) = (format!("race-{round}-a"), format!("race-{round}-b"));
        let (mut ca, mut cb) = (client.clone(), client.clone());
        let (ra, rb) = tokio::join!(
            ca.apply(apply(&digests[a], da.clone())),
            cb.apply(apply(&digests[b], db.clone()))
        );
        let verdicts = [(ra, da, a), (rb, db, b)];
        let mut accepted = false;
        for (answer, deployment, release) in verdicts {
            let verdict = answer.unwrap().into_inner().verdict.unwrap();
            if verdict.outcome() == proto::v1::CommandOutcome::Accepted {
                let switch = wait_for("the accepted apply's switch", DEADLINE, || {
                    recorded_switch(&agent, &deployment)
                })
                .await
                .unwrap_or_else(|e| panic!("accepted {verdict:?}, then dropped: {e}"));
                assert_eq!(switch["succeeded"], true, "{switch}");
                current = release;
                accepted = true;
            } else {
                assert_eq!(
                    verdict.refusal(),
                    proto::v1::RefusalReason::Busy,
                    "{verdict:?}"
                );
            }
        }
        raced += usize::from(accepted);
        if accepted {
            // The next round starts once the replaced instance drained
            // (until then the switch holds the service).
            wait_for("the replaced instance to exit", DEADLINE, || async {
                if process_gone(old_pid) {
                    Ok(())
                } else {
                    Err(format!("pid {old_pid} still runs"))
                }
            })
            .await
            .unwrap();
        }
    }
    assert!(raced >= 6, "only {raced} rounds had an accepted apply");
}

/// Reproduces #12 item 4: an app that exits 0 by itself was not restarted
/// (the default was `restart = "on-failure"`, undocumented): the host
/// showed no instance running while the agent still held its socket. A
/// service runs like a daemon under a supervisor: restarted on any exit.
#[tokio::test]
async fn an_app_that_exits_0_is_restarted_by_default() {
    let agent = AgentFixture::start("host-23", "eu-1").await.unwrap();
    let port = free_loopback_port().unwrap();
    let v1 = DemoRelease::new("1.0.0", port)
        .with_config("[faults]\ncrash_after_ms = 1500\ncrash_exit_code = 0\n")
        .build(agent.dir())
        .unwrap();
    agent.install(&v1).await.unwrap();
    let status = agent.agentctl_json(&["status", "demo"]).await.unwrap();
    let first = instances(&status)[0]["pid"].as_i64().unwrap();

    let restarted = wait_for("the app to be restarted after exit 0", DEADLINE, || async {
        let status = agent
            .agentctl_json(&["status", "demo"])
            .await
            .map_err(|e| e.to_string())?;
        let i = instances(&status).first().cloned().unwrap_or_default();
        let again = i["pid"].as_i64().is_some_and(|p| p != 0 && p != first);
        if again && i["restarts"].as_u64() >= Some(1) {
            Ok(i)
        } else {
            Err(format!("instance is {i}"))
        }
    })
    .await
    .unwrap();
    assert_ne!(restarted["state"], "failed", "{restarted}");
    assert_eq!(
        wait_for("the restarted app to serve", DEADLINE, || served_version(
            port
        ))
        .await
        .unwrap(),
        "1.0.0"
    );
}

/// Reproduces #12 item 3 (agent side): `agentctl status` said
/// `crash_looping ready=true` and the coordinators counted the instance
/// READY. An instance is ready only while it is up, its probe passes and it
/// is not crash-looping: in agentctl and in what the agent reports
/// (`AgentService.Status`, built like the Report stream's snapshots).
#[tokio::test]
async fn a_crash_looping_instance_is_never_reported_ready() {
    let agent = AgentFixture::start("host-24", "eu-1").await.unwrap();
    let port = free_loopback_port().unwrap();
    // Ready at once, then exits 70 two seconds later, again and again.
    let flaky = DemoRelease::new("1.0.0", port)
        .with_config("[faults]\ncrash_after_ms = 2000\n")
        .build(agent.dir())
        .unwrap();
    agent.install(&flaky).await.unwrap();

    // Crash-looping, and up (and answering its probe) for a while.
    let looping = wait_for("a crash-looping instance that is up", DEADLINE, || async {
        let status = agent
            .agentctl_json(&["status", "demo"])
            .await
            .map_err(|e| e.to_string())?;
        let i = instances(&status).first().cloned().unwrap_or_default();
        let up = i["pid"].as_i64().is_some() && i["uptime_secs"].as_u64() >= Some(1);
        if i["state"] == "crash_looping" && up {
            Ok(i)
        } else {
            Err(format!("instance is {i}"))
        }
    })
    .await
    .unwrap();
    assert_eq!(looping["ready"], false, "{looping}");
    assert_eq!(served_version(port).await.unwrap(), "1.0.0", "it serves");

    let mut client = proto::v1::agent_service_client::AgentServiceClient::connect(format!(
        "http://{}",
        agent.grpc_addr()
    ))
    .await
    .unwrap();
    let reported = client
        .status(proto::v1::StatusRequest {
            service: "demo".into(),
        })
        .await
        .unwrap()
        .into_inner();
    for instance in &reported.services[0].instances {
        if instance.state() == proto::v1::InstanceState::CrashLooping {
            assert!(!instance.ready, "{instance:?}");
        }
    }
}

/// Reproduces #12 item 10 (check-config): `lockstep-agent check-config`
/// said valid, then the agent refused to start (`control group 'lockstep'
/// does not exist`). check-config must run the checks the agent runs at
/// start: here a missing control group and an unreadable trusted key.
#[tokio::test]
async fn check_config_runs_the_checks_the_agent_runs_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let missing_key = dir.path().join("missing-release.pub");
    std::fs::write(
        &config,
        format!(
            "id = \"host-25\"\ncluster = \"eu-1\"\ndata_dir = \"{data}\"\n\n[control]\nsocket = \"{socket}\"\ngroup = \"lockstep-no-such-group\"\n\n[grpc]\nlisten = \"127.0.0.1:{port}\"\n\n[releases]\ntrusted_keys = [\"{key}\"]\n",
            data = dir.path().join("data").display(),
            socket = dir.path().join("agent.sock").display(),
            port = free_loopback_port().unwrap(),
            key = missing_key.display(),
        ),
    )
    .unwrap();
    let agent = lockstep_tests::workspace_bin("lockstep-agent").unwrap();
    let file = config.to_str().unwrap();
    for args in [vec!["check-config", file], vec!["--config", file]] {
        let output = tokio::process::Command::new(&agent)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap();
        let said = text(&output);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {said}");
        assert!(said.contains("lockstep-no-such-group"), "{args:?}: {said}");
        assert!(
            said.contains(&missing_key.display().to_string()),
            "{args:?}: {said}"
        );
    }
}

/// Reproduces #12 item 10 (agentctl locks): a malformed budget policy in
/// etcd made `agentctl locks` say "etcd unavailable" and exit 0. It must
/// name the malformed key and the problem, and exit non-zero.
#[tokio::test]
async fn agentctl_locks_names_a_malformed_budget_policy_and_fails() {
    const CLUSTER: &str = "eu-9";
    let etcd = lockstep_tests::EtcdCluster::single().await.unwrap();
    let mut client = etcd.client().await.unwrap();
    let policy = leases::keys::cluster_policy(CLUSTER);
    client
        .put(policy.as_str(), "{\"max_disruptions\": \"two\"}", None)
        .await
        .unwrap();
    let endpoints: Vec<String> = etcd
        .endpoints()
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect();
    let table = format!(
        "\n[etcd]\nendpoints = [{}]\nlease_ttl = \"5s\"\nbudget_wait = \"5s\"\n",
        endpoints.join(", ")
    );
    let agent = AgentFixture::start_with("host-26", CLUSTER, &table)
        .await
        .unwrap();

    let output = wait_for("agentctl locks to reach etcd", DEADLINE, || async {
        let output = agent
            .agentctl(&["locks"])
            .await
            .map_err(|e| e.to_string())?;
        if text(&output).contains("unreachable") {
            Err(text(&output))
        } else {
            Ok(output)
        }
    })
    .await
    .unwrap();
    let said = text(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains(&policy), "names the key: {said}");
    assert!(said.contains("max_disruptions"), "says the problem: {said}");
    assert!(!said.contains("etcd unavailable"), "{said}");
}
