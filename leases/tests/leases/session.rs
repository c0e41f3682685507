use std::time::Duration;

use leases::{FencedMutex, LossReason, Ttl};
use lockstep_tests::EtcdCluster;
use tokio::time::Instant;

use crate::{DEADLINE, session};

#[tokio::test]
async fn a_ttl_below_the_minimum_is_refused() {
    let err = Ttl::from_secs(1).unwrap_err();
    assert!(err.to_string().contains("too short"), "{err}");
}

#[tokio::test]
async fn a_kept_alive_session_outlives_its_ttl() {
    let etcd = EtcdCluster::single().await.unwrap();
    let holder = session(&etcd, 2).await;
    let lock = FencedMutex::named("test/outlive");
    let _guard = lock.try_lock(&holder, "outlive").await.unwrap();
    // Three TTLs: only keep-alives can keep the key.
    let lost = tokio::time::timeout(Duration::from_secs(6), holder.lost()).await;
    assert!(
        lost.is_err(),
        "session lost while etcd was healthy: {lost:?}"
    );
    let client = crate::client(&etcd).await;
    assert!(lock.inspect(&client).await.unwrap().is_some());
}

#[tokio::test]
async fn a_paused_etcd_makes_lost_fire_before_anyone_else_can_take_over() {
    let mut etcd = EtcdCluster::single().await.unwrap();
    let holder = session(&etcd, 3).await;
    let lock = FencedMutex::named("test/paused");
    let _guard = lock.try_lock(&holder, "holding").await.unwrap();

    etcd.pause(0).unwrap();
    let reason = tokio::time::timeout(DEADLINE, holder.lost()).await.unwrap();
    let lost_at = Instant::now();
    assert_eq!(reason, LossReason::KeepAliveTimedOut);

    etcd.resume(0).unwrap();
    let contender = session(&etcd, 3).await;
    let guard = lock
        .lock(&contender, "taking over", DEADLINE)
        .await
        .unwrap();
    assert!(Instant::now() > lost_at);
    assert!(guard.token().0 > 0);
}

#[tokio::test]
async fn a_session_survives_the_death_of_the_etcd_leader() {
    let mut etcd = EtcdCluster::three().await.unwrap();
    // 10 s, the agent's default: a 5 s lease left too little time for
    // the election and the keep-alive's move on a loaded machine.
    let holder = session(&etcd, 10).await;
    let lock = FencedMutex::named("test/survive");
    let guard = lock.try_lock(&holder, "surviving").await.unwrap();

    let leader = etcd.leader().await.unwrap();
    etcd.kill(leader).unwrap();

    // Two TTLs after the kill the session must still be live and the lock
    // still ours.
    let lost = tokio::time::timeout(Duration::from_secs(20), holder.lost()).await;
    assert!(
        lost.is_err(),
        "session lost after one etcd member died: {lost:?}"
    );
    let survivor = (0..etcd.len()).find(|&i| i != leader).unwrap();
    let client = leases::Etcd::connect(
        &[etcd.endpoint(survivor).unwrap()],
        leases::EtcdTiming::default(),
    )
    .await
    .unwrap();
    let info = lock.inspect(&client).await.unwrap().unwrap();
    assert_eq!(info.token, guard.token());
}

#[tokio::test]
async fn closing_a_session_frees_its_keys_at_once() {
    let etcd = EtcdCluster::single().await.unwrap();
    let holder = session(&etcd, 30).await;
    let lock = FencedMutex::named("test/close");
    let _guard = lock.try_lock(&holder, "closing").await.unwrap();
    holder.close().await.unwrap();
    let client = crate::client(&etcd).await;
    // No TTL to wait out: revocation deletes the key in the same request.
    assert!(lock.inspect(&client).await.unwrap().is_none());
}
