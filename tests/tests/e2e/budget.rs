//! The disruption budget across real agents sharing a real etcd: planned
//! restarts wait their turn, a forced one does not and is audited.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use leases::AuditLog;
use lockstep_tests::http::request;
use lockstep_tests::{AgentFixture, DemoRelease, EtcdCluster, free_loopback_port, wait_for};

const DEADLINE: Duration = Duration::from_secs(60);

fn etcd_table(etcd: &EtcdCluster, budget_wait: &str) -> String {
    let endpoints: Vec<String> = etcd
        .endpoints()
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect();
    format!(
        "\n[etcd]\nendpoints = [{}]\nlease_ttl = \"5s\"\nbudget_wait = \"{budget_wait}\"\n",
        endpoints.join(", ")
    )
}

fn addr(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// Serving means ready: the agent holds the socket across a restart, so a
/// request during one waits rather than fails; `/healthz` says whether the
/// instance behind it is really up.
async fn serving(port: u16) -> bool {
    matches!(
        request(addr(port), "GET", "/healthz", "").await,
        Ok((200, _))
    )
}

async fn wait_registered(agent: &AgentFixture) {
    wait_for("the agent to reach etcd", DEADLINE, || async {
        let out = agent
            .agentctl_json(&["locks"])
            .await
            .map_err(|e| e.to_string())?;
        match out["unavailable"].as_str() {
            None => Ok(()),
            Some(reason) => Err(reason.to_owned()),
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn two_hosts_restarting_at_once_take_turns_and_one_always_serves() {
    let etcd = EtcdCluster::single().await.unwrap();
    let table = etcd_table(&etcd, "60s");
    let a = AgentFixture::start_with("host-a", "small", &table)
        .await
        .unwrap();
    let b = AgentFixture::start_with("host-b", "small", &table)
        .await
        .unwrap();
    let (port_a, port_b) = (free_loopback_port().unwrap(), free_loopback_port().unwrap());
    // Overlap none: a restart really takes the instance down, for as long
    // as the app needs to become ready again.
    for (agent, port) in [(&a, port_a), (&b, port_b)] {
        let bundle = DemoRelease::new("1.0.0", port)
            .with_overlap("none")
            .with_config("[faults]\nready_after_ms = 1500\n")
            .build(agent.dir())
            .unwrap();
        agent.install(&bundle).await.unwrap();
        wait_registered(agent).await;
    }

    // A client asks both hosts, round after round, for the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let watch = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut seen = Availability::default();
            while !stop.load(Ordering::Relaxed) {
                let (up_a, up_b) = tokio::join!(serving(port_a), serving(port_b));
                seen.rounds += 1;
                match (up_a, up_b) {
                    (false, false) => seen.both_down += 1,
                    (true, true) => {}
                    _ => seen.one_down += 1,
                }
            }
            seen
        }
    });
    let (ra, rb) = tokio::join!(
        a.agentctl(&["restart", "demo", "--reason", "kernel update"]),
        b.agentctl(&["restart", "demo", "--reason", "kernel update"]),
    );
    stop.store(true, Ordering::Relaxed);
    let seen = watch.await.unwrap();
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(
        ra.status.success(),
        "{}",
        String::from_utf8_lossy(&ra.stderr)
    );
    assert!(
        rb.status.success(),
        "{}",
        String::from_utf8_lossy(&rb.stderr)
    );
    assert!(
        seen.one_down > 0,
        "the restarts never took an instance down: {seen:?}"
    );
    assert_eq!(seen.both_down, 0, "both hosts were down at once: {seen:?}");
}

#[derive(Debug, Default)]
struct Availability {
    rounds: u32,
    one_down: u32,
    both_down: u32,
}

#[tokio::test]
async fn without_etcd_a_planned_restart_waits_then_fails_and_a_forced_one_is_audited_later() {
    let mut etcd = EtcdCluster::single().await.unwrap();
    let agent = AgentFixture::start_with("host-c", "solo", &etcd_table(&etcd, "3s"))
        .await
        .unwrap();
    let port = free_loopback_port().unwrap();
    let bundle = DemoRelease::new("1.0.0", port).build(agent.dir()).unwrap();
    agent.install(&bundle).await.unwrap();
    wait_registered(&agent).await;

    etcd.kill(0).unwrap();
    // Fail static: the app is untouched by etcd's loss.
    assert!(serving(port).await);

    let planned = agent
        .agentctl(&["restart", "demo", "--reason", "routine"])
        .await
        .unwrap();
    assert_eq!(planned.status.code(), Some(1), "{planned:?}");
    let stderr = String::from_utf8_lossy(&planned.stderr);
    assert!(
        stderr.contains("unreachable") && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(serving(port).await);

    let forced = agent
        .agentctl(&[
            "restart",
            "demo",
            "--force",
            "--reason",
            "app wedged while etcd is down",
        ])
        .await
        .unwrap();
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert!(serving(port).await);

    etcd.restart(0).await.unwrap();
    let client = etcd.client().await.unwrap();
    let record = wait_for(
        "the forced restart's audit record in etcd",
        DEADLINE,
        || async {
            let records = AuditLog::recent(&client, 10)
                .await
                .map_err(|e| e.to_string())?;
            records
                .into_iter()
                .map(|(_, r)| r)
                .find(|r| r.action == "forced-restart")
                .ok_or_else(|| "not uploaded yet".to_owned())
        },
    )
    .await
    .unwrap();
    assert_eq!(record.target, "host-c/demo");
    assert_eq!(record.reason, "app wedged while etcd is down");
    assert_eq!(record.actor.user, "root");
}
