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
