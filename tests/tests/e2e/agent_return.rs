//! An agent that dies in the middle of a switch and comes back (issue #18
//! item 6), end to end with real etcd, a coordinator, an agent and demo
//! apps: the coordinator must notice the returned agent did not finish the
//! apply and send it again, instead of waiting out `healthy_deadline` and
//! rolling a good release back.

use std::time::Duration;

use lockstep_tests::operator::{
    agents_known, every_host_serves, finished, push, start_deploy, strategy_with, text,
};
use lockstep_tests::{
    CoordinatorFixture, DEMO_SERVICE, DemoRelease, EtcdCluster, FleetFixture, lockstep, wait_for,
};

/// Short leases: a loaded machine still keeps several keep-alives per lease.
const TTL_SECS: u64 = 3;
/// Every host overrides the release's listen address with its own port.
const ANY_PORT: u16 = 1;
const DEADLINE: Duration = Duration::from_secs(120);

/// Reproduces #18 Seen 6: "After an agent crash mid-switch, the Apply is
/// never re-sent: the restarted agent cleans up correctly, but the
/// coordinator waits out the whole `healthy_deadline` and then rolls back
/// the entire deployment." The agent is killed while its switch to a good
/// 2.0.0 (slow to become ready) is in flight; the deployment must end
/// `succeeded` with the host on 2.0.0, the apply re-sent under the same
/// token. On the old code it ended `rolled_back` ("not ready within
/// healthy_deadline").
#[tokio::test]
async fn an_agent_killed_mid_switch_gets_the_apply_again_when_it_returns() {
    let layout = [("back-1", "back")];
    let etcd = EtcdCluster::single().await.unwrap();
    let coordinator = CoordinatorFixture::start(&etcd.endpoints(), TTL_SECS)
        .await
        .unwrap();
    let urls = vec![coordinator.url()];
    let mut fleet = FleetFixture::start(&layout, &etcd.endpoints(), &urls)
        .await
        .unwrap();
    agents_known(&urls, layout.len()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let strategy = strategy_with(work.path(), "quick", "500ms", "").unwrap();
    let v1 = DemoRelease::new("1.0.0", ANY_PORT)
        .build(work.path())
        .unwrap();
    let d1 = push(&urls, &v1).await.unwrap();
    let first = finished(&etcd, &start_deploy(&urls, &d1, &strategy).await.unwrap())
        .await
        .unwrap();
    assert_eq!(first["state"], "succeeded", "{first}");

    // Ready only after 4 s: the switch is in flight long enough to kill
    // the agent inside it.
    let v2 = DemoRelease::new("2.0.0", ANY_PORT)
        .with_config("[faults]\nready_after_ms = 4000\n")
        .build(work.path())
        .unwrap();
    let d2 = push(&urls, &v2).await.unwrap();
    let id = start_deploy(&urls, &d2, &strategy).await.unwrap();
    let host = &mut fleet.hosts[0];
    wait_for("the agent to be switching to 2.0.0", DEADLINE, || async {
        let status = host
            .agent
            .agentctl_json(&["status", DEMO_SERVICE])
            .await
            .map_err(|e| e.to_string())?;
        match status["services"][0]["switch"].as_str() {
            Some("switching") => Ok(()),
            other => Err(format!("switch: {other:?}")),
        }
    })
    .await
    .unwrap();
    host.agent.kill().await.unwrap();
    host.agent.start_again().await.unwrap();

    let r = finished(&etcd, &id).await.unwrap();
    assert_eq!(r["state"], "succeeded", "{r}");
    every_host_serves(&fleet, "2.0.0").await.unwrap();
    let watch = text(&lockstep(&urls, &["watch", &id]).await.unwrap());
    assert!(
        watch.contains("sent again"),
        "the events say the apply was sent again: {watch}"
    );
}
