//! A leader's journal writes across a hung etcd (#18 items 2 and 3): the
//! write is retried and the deployment completes; a write given up on stops
//! the driver, which the same leader resumes without waiting on its own
//! deployment lock. Each ends with no deployment lock left.

use std::time::Duration;

use lockstep_tests::operator::{
    agents_known, deploy_lock, finished, leader_url, lockstep_json, push, record, start_deploy,
    strategy, text, until_leading,
};
use lockstep_tests::{
    CoordinatorFixture, DemoRelease, EtcdCluster, FleetFixture, lockstep, wait_for,
};

const DEADLINE: Duration = Duration::from_secs(120);
const LAYOUT: &[(&str, &str)] = &[("f-1", "f"), ("f-2", "f"), ("g-1", "g")];

/// etcd, one coordinator with `etcd_lines` in its `[etcd]` table that
/// leads, and a fleet reporting to it.
async fn stage(ttl_secs: u64, etcd_lines: &str) -> (EtcdCluster, CoordinatorFixture, FleetFixture) {
    let etcd = EtcdCluster::single().await.unwrap();
    let coordinator = CoordinatorFixture::start_with_etcd(&etcd.endpoints(), ttl_secs, etcd_lines)
        .await
        .unwrap();
    until_leading(&etcd, &coordinator.url()).await.unwrap();
    let urls = vec![coordinator.url()];
    let fleet = FleetFixture::start(LAYOUT, &etcd.endpoints(), &urls)
        .await
        .unwrap();
    agents_known(&urls, LAYOUT.len()).await.unwrap();
    (etcd, coordinator, fleet)
}

/// Starts a deployment of a first release whose batches each stay under
/// observation for a second, so its journal writes span several seconds.
async fn deploy_slowly(urls: &[String], dir: &std::path::Path) -> String {
    let v1 = DemoRelease::new("1.0.0", 1).build(dir).unwrap();
    let digest = push(urls, &v1).await.unwrap();
    let slow = strategy(dir, "slow", "1s").unwrap();
    start_deploy(urls, &digest, &slow).await.unwrap()
}

/// Waits for the coordinator's log to say `what`.
async fn logged(coordinator: &CoordinatorFixture, what: &str) {
    wait_for(
        &format!("the coordinator to log {what:?}"),
        DEADLINE,
        || async {
            if coordinator.log_text().contains(what) {
                Ok(())
            } else {
                Err("not yet")
            }
        },
    )
    .await
    .unwrap();
}

/// The operator's pause, sent while etcd is hung, makes a journal write
/// happen then for certain. Its answer does not matter (etcd did not
/// answer), and whether it landed is for etcd to say once it runs again (a
/// request sent before the pause may still be carried out): this resumes
/// the deployment if it is paused, and returns its final record.
async fn run_to_the_end(urls: &[String], etcd: &EtcdCluster, id: &str) -> serde_json::Value {
    wait_for(
        "the deployment to be paused or to end",
        DEADLINE,
        || async {
            let r = record(etcd, id).await.map_err(|e| e.to_string())?;
            match r["state"].as_str() {
                Some("paused") => {
                    lockstep_json(urls, &["resume", id])
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(())
                }
                Some("succeeded" | "rolled_back" | "aborted" | "failed") => Ok(()),
                other => Err(format!("state {other:?}")),
            }
        },
    )
    .await
    .unwrap();
    finished(etcd, id).await.unwrap()
}

/// Reproduces #18 item 3: one failed journal write interrupted the
/// deployment. With etcd hung (SIGSTOP) for longer than one write attempt
/// but well within the coordinator's lease (TTL 10 s), the write is retried
/// until it lands: the deployment is never interrupted, succeeds, and
/// leaves no deployment lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_write_across_a_hung_etcd_is_retried_and_the_deployment_completes() {
    let (mut etcd, coordinator, _fleet) = stage(10, "").await;
    let urls = vec![coordinator.url()];
    let work = tempfile::tempdir().unwrap();
    let id = deploy_slowly(&urls, work.path()).await;

    etcd.pause(0).unwrap();
    let _ = lockstep(&urls, &["pause", &id, "--reason", "etcd hung"]).await;
    // At least one attempt timed out and was retried, not given up on.
    logged(&coordinator, "journal write failed; retrying").await;
    etcd.resume(0).unwrap();

    let end = run_to_the_end(&urls, &etcd, &id).await;
    assert_eq!(end["state"], "succeeded", "{end}");
    assert_eq!(deploy_lock(&etcd).await.unwrap(), None);
    let log = coordinator.log_text();
    assert!(!log.contains("deployment interrupted"), "{log}");
}

/// Reproduces #18 item 2: after a journal write failed, the driver stopped
/// with its `MutexGuard` dropped but the lock key left on the leader's own
/// lease, and the leader's resumption waited for that lock forever
/// ("cannot take the deployment lock" every 11 s). Here etcd hangs for
/// longer than the journal's deadline (1 s, so the first 2 s attempt is
/// given up on) but far less than the lease (TTL 20 s: leadership holds):
/// the driver stops, releases its lock, and the same leader resumes and
/// completes the deployment, leaving no lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_stopped_by_a_failed_journal_write_is_resumed_by_the_same_leader() {
    let (mut etcd, coordinator, _fleet) = stage(20, "journal_deadline = \"1s\"").await;
    let urls = vec![coordinator.url()];
    let work = tempfile::tempdir().unwrap();
    let id = deploy_slowly(&urls, work.path()).await;

    etcd.pause(0).unwrap();
    let _ = lockstep(&urls, &["pause", &id, "--reason", "etcd hung"]).await;
    logged(
        &coordinator,
        "deployment interrupted; resuming from the journal",
    )
    .await;
    etcd.resume(0).unwrap();

    let end = run_to_the_end(&urls, &etcd, &id).await;
    assert_eq!(end["state"], "succeeded", "{end}");
    assert_eq!(deploy_lock(&etcd).await.unwrap(), None);
    assert_eq!(leader_url(&etcd).await, Some(coordinator.url()));
    let log = coordinator.log_text();
    assert!(log.contains("resuming deployment"), "{log}");
    assert!(!log.contains("cannot take the deployment lock"), "{log}");
}

/// The leader key's create revision (the leader's token) and lease.
async fn leader_key(etcd: &EtcdCluster) -> (i64, i64) {
    let mut client = etcd.client().await.unwrap();
    let response = client.get("/lockstep/v1/leader", None).await.unwrap();
    let kv = response.kvs().first().unwrap();
    (kv.create_revision(), kv.lease())
}

/// #18 deliver 2: each deployment lock has a lease of its own. Breaking a
/// deployment's lock (`lockstep locks break`, which revokes the holder's
/// lease) revoked the leader's own session when the lock was on it: the
/// leader lost its leadership with the lock. Now only that lock's lease
/// goes: the same leader keeps leading (same token, same lease), resumes
/// the deployment under a new lock, and it succeeds leaving no lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaking_a_deployment_lock_cuts_its_driver_loose_without_costing_the_leadership() {
    let (etcd, coordinator, _fleet) = stage(10, "").await;
    let urls = vec![coordinator.url()];
    let leader_before = leader_key(&etcd).await;
    let work = tempfile::tempdir().unwrap();
    let id = deploy_slowly(&urls, work.path()).await;
    let (lock_lease, _) = wait_for("the deployment lock", DEADLINE, || async {
        deploy_lock(&etcd)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("not taken yet".to_owned())
    })
    .await
    .unwrap();
    assert_ne!(
        lock_lease, leader_before.1,
        "the lock is on the leader's lease"
    );

    let output = lockstep(
        &urls,
        &["locks", "break", "demo", "--reason", "a wedged driver"],
    )
    .await
    .unwrap();
    assert!(output.status.success(), "{}", text(&output));

    let end = run_to_the_end(&urls, &etcd, &id).await;
    let log = coordinator.log_text();
    assert_eq!(end["state"], "succeeded", "{end}\n{log}");
    assert_eq!(deploy_lock(&etcd).await.unwrap(), None);
    assert_eq!(leader_key(&etcd).await, leader_before, "{log}");
    assert!(!log.contains("leadership lost"), "{log}");
    assert!(
        log.contains("deployment lock lost while leading; resuming"),
        "{log}"
    );
}
