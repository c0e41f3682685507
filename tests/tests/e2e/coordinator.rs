//! The coordinator beyond the incident's scenarios, with real etcd,
//! coordinators, agents and demo apps: releases copied between
//! coordinators, and an operator's pause and abort on record.

use std::time::Duration;

use lockstep_tests::operator::{
    agents_known, every_host_serves, finished, history_entry, lockstep_json, push, start_deploy,
    strategy,
};
use lockstep_tests::{CoordinatorFixture, DemoRelease, EtcdCluster, FleetFixture, wait_for};

const DEADLINE: Duration = Duration::from_secs(120);
const TTL_SECS: u64 = 3;

/// A push lands on one coordinator; the others copy it, so the fleet can
/// still deploy it after the coordinator that received it is gone.
#[tokio::test]
async fn a_release_pushed_to_one_coordinator_outlives_it() {
    let etcd = EtcdCluster::single().await.unwrap();
    let mut first = CoordinatorFixture::start(&etcd.endpoints(), TTL_SECS)
        .await
        .unwrap();
    let second = CoordinatorFixture::start(&etcd.endpoints(), TTL_SECS)
        .await
        .unwrap();
    let both = vec![first.url(), second.url()];
    let fleet = FleetFixture::start(&[("m-1", "m"), ("m-2", "m")], &etcd.endpoints(), &both)
        .await
        .unwrap();
    agents_known(&both, 2).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let v1 = DemoRelease::new("1.0.0", 1).build(work.path()).unwrap();

    let digest = push(std::slice::from_ref(&first.url()), &v1).await.unwrap();
    let only_second = vec![second.url()];
    wait_for(
        "the second coordinator to copy the release",
        DEADLINE,
        || async {
            let listed = lockstep_json(&only_second, &["release", "list"])
                .await
                .map_err(|e| e.to_string())?;
            let holders = listed
                .as_array()
                .or_else(|| listed["releases"].as_array())
                .and_then(|r| r.first())
                .and_then(|r| r["holders"].as_array())
                .map_or(0, Vec::len);
            if holders == 2 {
                Ok(())
            } else {
                Err(format!("{holders} holder(s): {listed}"))
            }
        },
    )
    .await
    .unwrap();

    first.kill();
    let fast = strategy(work.path(), "fast", "200ms").unwrap();
    let id = wait_for(
        "the survivor to lead and take the deploy",
        DEADLINE,
        || async {
            start_deploy(&only_second, &digest, &fast)
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await
    .unwrap();
    let r = finished(&etcd, &id).await.unwrap();
    assert_eq!(r["state"], "succeeded", "{r}");
    every_host_serves(&fleet, "1.0.0").await.unwrap();
}

/// Pause and abort carry who and why into the deployment's events and its
/// recorded outcome.
#[tokio::test]
async fn an_operators_pause_and_abort_are_recorded_with_their_reasons() {
    let etcd = EtcdCluster::single().await.unwrap();
    let coordinator = CoordinatorFixture::start(&etcd.endpoints(), TTL_SECS)
        .await
        .unwrap();
    let urls = vec![coordinator.url()];
    let fleet = FleetFixture::start(&[("p-1", "p"), ("p-2", "p")], &etcd.endpoints(), &urls)
        .await
        .unwrap();
    agents_known(&urls, 2).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let v1 = DemoRelease::new("1.0.0", 1).build(work.path()).unwrap();
    let digest = push(&urls, &v1).await.unwrap();
    // Long enough under observation that the operator acts mid-rollout.
    let slow = strategy(work.path(), "slow", "60s").unwrap();
    let id = start_deploy(&urls, &digest, &slow).await.unwrap();

    lockstep_json(
        &urls,
        &["pause", &id, "--reason", "checking the canary's dashboards"],
    )
    .await
    .unwrap();
    lockstep_json(&urls, &["abort", &id, "--reason", "db migration pending"])
        .await
        .unwrap();
    let r = finished(&etcd, &id).await.unwrap();
    assert_eq!(r["state"], "aborted", "{r}");
    let outcome = r["outcome"].as_str().unwrap_or_default();
    assert!(outcome.contains("db migration pending"), "{outcome}");

    let entry = history_entry(&urls, &id).await.unwrap();
    assert!(
        entry.to_string().contains("db migration pending"),
        "history names the reason: {entry}"
    );
    let mut client = etcd.client().await.unwrap();
    let listed = client
        .get(
            format!("/lockstep/v1/deployment-events/{id}/"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let messages: Vec<String> = listed
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("paused by") && m.contains("checking the canary's dashboards")),
        "{messages:#?}"
    );
    drop(fleet);
}
