//! What the agent tells while a switch is in progress (#12 deliver 1, the
//! runtime in the service's actor): a real agent, real demo-app releases,
//! real agentctl processes.

use std::time::{Duration, Instant};

use lockstep_tests::{AgentFixture, DemoRelease, free_loopback_port, wait_for};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);
/// How long release B takes to become ready: well inside its
/// `healthy_deadline` (20 s), long enough that the agentctl calls below
/// land while the switch is still waiting for it.
const B_READY_AFTER_MS: u64 = 15_000;

/// The instances of `status` (agentctl's JSON) on `version`.
fn instances_of<'a>(status: &'a Value, version: &str) -> Vec<&'a Value> {
    status["services"][0]["instances"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|i| i["release_version"] == version)
                .collect()
        })
        .unwrap_or_default()
}

/// Reproduces #12 deliver 1's last piece ("the runtime stays behind a
/// mutex for readers"): on main, while a switch waits for its new
/// instances, `agentctl status` listed no instance at all (the switch held
/// the runtime's lock) and `agentctl logs` waited for the whole switch.
/// Release A (1.0.0) serves; `agentctl install` of B (2.0.0, ready only
/// 15 s after it starts) is in progress. `agentctl logs` must answer while
/// the switch is still under way, with A's log, and `agentctl status`,
/// asked after it, must still say switching and list A's instance (ready,
/// with its pid) beside B's starting one. Then the switch completes.
#[tokio::test]
async fn status_and_logs_answer_while_a_slow_switch_waits_for_readiness() {
    let agent = AgentFixture::start("during-switch-1", "eu-1")
        .await
        .unwrap();
    let port = free_loopback_port().unwrap();
    let a = DemoRelease::new("1.0.0", port).build(agent.dir()).unwrap();
    agent.install(&a).await.unwrap();
    let before: Value = agent.agentctl_json(&["status", "demo"]).await.unwrap();
    let a_pid = instances_of(&before, "1.0.0")[0]["pid"].as_u64().unwrap();
    let b = DemoRelease::new("2.0.0", port)
        .with_config(&format!("[faults]\nready_after_ms = {B_READY_AFTER_MS}\n"))
        .build(agent.dir())
        .unwrap();

    let install = agent.install(&b);
    let during = async {
        wait_for("the switch to B to be in progress", DEADLINE, || async {
            let status = agent
                .agentctl_json(&["status", "demo"])
                .await
                .map_err(|e| e.to_string())?;
            if status["services"][0]["switch"] == "switching" {
                Ok(())
            } else {
                Err(format!("not switching yet: {status}"))
            }
        })
        .await
        .unwrap();
        let asked = Instant::now();
        let logs = tokio::time::timeout(DEADLINE, agent.agentctl(&["logs", "demo", "-n", "20"]))
            .await
            .expect("agentctl logs answers within the deadline")
            .unwrap();
        let logs_took = asked.elapsed();
        assert!(
            logs.status.success(),
            "agentctl logs: {}",
            String::from_utf8_lossy(&logs.stderr)
        );
        let asked = Instant::now();
        let status: Value = agent.agentctl_json(&["status", "demo"]).await.unwrap();
        // A measurement, not a gate: how long each took during the switch.
        eprintln!(
            "during a switch waiting {B_READY_AFTER_MS} ms for readiness: agentctl logs answered in {} ms, agentctl status in {} ms",
            logs_took.as_millis(),
            asked.elapsed().as_millis()
        );
        (String::from_utf8_lossy(&logs.stdout).into_owned(), status)
    };
    let (installed, (logs, status)) = tokio::join!(install, during);
    installed.unwrap();

    assert_eq!(
        status["services"][0]["switch"], "switching",
        "agentctl logs answered only once the switch had ended: {status}"
    );
    assert!(
        logs.contains(&format!("[lockstep] started pid {a_pid}")),
        "the serving instance's log during the switch: {logs}"
    );
    let serving = instances_of(&status, "1.0.0");
    assert_eq!(serving.len(), 1, "A's instance during the switch: {status}");
    assert_eq!(serving[0]["pid"].as_u64(), Some(a_pid), "{status}");
    assert_eq!(serving[0]["ready"], true, "{status}");
    let starting = instances_of(&status, "2.0.0");
    assert_eq!(
        starting.len(),
        1,
        "B's instance during the switch: {status}"
    );
    assert_eq!(starting[0]["ready"], false, "{status}");

    let after: Value = agent.agentctl_json(&["status", "demo"]).await.unwrap();
    assert_eq!(after["services"][0]["switch"], "idle", "{after}");
    assert_eq!(
        after["services"][0]["release"]["version"], "2.0.0",
        "{after}"
    );
    let now = instances_of(&after, "2.0.0");
    assert!(
        now.len() == 1 && now[0]["ready"] == true && instances_of(&after, "1.0.0").is_empty(),
        "{after}"
    );
}
