use std::time::Duration;

use etcd_client::{Txn, TxnOp};
use leases::{AuditLog, FencedMutex, Holder, LockError};
use lockstep_tests::EtcdCluster;

use crate::{DEADLINE, session};

#[tokio::test]
async fn a_held_lock_names_its_holder_purpose_age_and_ttl() {
    let etcd = EtcdCluster::single().await.unwrap();
    let first = session(&etcd, 10).await;
    let second = session(&etcd, 10).await;
    let lock = FencedMutex::deployment("web");
    let guard = lock.try_lock(&first, "deployment d-1").await.unwrap();

    let err = lock.try_lock(&second, "deployment d-2").await.unwrap_err();
    let LockError::Held(info) = err else {
        panic!("expected Held, got {err}");
    };
    assert_eq!(info.key, "/lockstep/v1/locks/deploy/web");
    assert_eq!(info.purpose, "deployment d-1");
    assert_eq!(info.holder, Holder::current());
    assert_eq!(info.token, guard.token());
    let ttl = info.ttl_left.unwrap();
    assert!(
        ttl > Duration::ZERO && ttl <= Duration::from_secs(10),
        "{ttl:?}"
    );
    let message = LockError::Held(info).to_string();
    assert!(
        message.contains("deployment d-1") && message.contains("expires in"),
        "{message}"
    );

    let first_token = guard.token();
    guard.release().await.unwrap();
    let next = lock.try_lock(&second, "deployment d-2").await.unwrap();
    assert!(next.token() > first_token);
}

#[tokio::test]
async fn a_dead_holders_lock_is_taken_over_within_its_ttl() {
    let etcd = EtcdCluster::single().await.unwrap();
    let lock = FencedMutex::named("test/takeover");
    let dead = session(&etcd, 2).await;
    let dead_token = lock.try_lock(&dead, "about to die").await.unwrap().token();
    // The holder vanishes without releasing: no keep-alive, no revoke.
    drop(dead);

    let heir = session(&etcd, 5).await;
    // TTL 2 s plus one keep-alive interval, with room for a loaded machine.
    let guard = lock
        .lock(&heir, "taking over", Duration::from_secs(8))
        .await
        .unwrap();
    assert!(guard.token() > dead_token);
}

#[tokio::test]
async fn a_stale_fencing_token_cannot_write() {
    let etcd = EtcdCluster::single().await.unwrap();
    let lock = FencedMutex::named("test/fence");
    let old = session(&etcd, 2).await;
    let stale = lock.try_lock(&old, "old holder").await.unwrap();
    drop(old);
    let new = session(&etcd, 10).await;
    let current = lock.lock(&new, "new holder", DEADLINE).await.unwrap();

    let client = crate::client(&etcd).await;
    let write = |guard: &leases::MutexGuard, value: &str| {
        Txn::new().when([guard.fence()]).and_then([TxnOp::put(
            "/lockstep/v1/deployments/d-1",
            value,
            None,
        )])
    };
    let refused = client
        .txn(write(&stale, "from the stale holder"))
        .await
        .unwrap();
    assert!(!refused.succeeded(), "a stale token's write went through");
    let accepted = client
        .txn(write(&current, "from the holder"))
        .await
        .unwrap();
    assert!(accepted.succeeded());
    let value = client
        .get("/lockstep/v1/deployments/d-1", None)
        .await
        .unwrap();
    assert_eq!(value.kvs()[0].value(), b"from the holder");
}

#[tokio::test]
async fn breaking_a_lock_frees_it_and_leaves_an_audit_record() {
    let etcd = EtcdCluster::single().await.unwrap();
    let lock = FencedMutex::deployment("api");
    let stuck = session(&etcd, 60).await;
    let _guard = lock.try_lock(&stuck, "deployment d-7").await.unwrap();
    let client = crate::client(&etcd).await;

    let actor = Holder {
        host: "ops-1".to_owned(),
        pid: 42,
        user: "alice".to_owned(),
    };
    let (broken, seq) = lock
        .break_lock(&client, actor.clone(), "deployer host lost power")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(broken.purpose, "deployment d-7");
    assert!(lock.inspect(&client).await.unwrap().is_none());

    let records = AuditLog::recent(&client, 10).await.unwrap();
    let (record_seq, record) = &records[0];
    assert_eq!(*record_seq, seq);
    assert_eq!(record.actor, actor);
    assert_eq!(record.action, "break-lock");
    assert_eq!(record.target, "/lockstep/v1/locks/deploy/api");
    assert_eq!(record.reason, "deployer host lost power");
    assert!(
        record.detail.contains("deployment d-7"),
        "{}",
        record.detail
    );

    // Nothing held: nothing broken, nothing audited.
    assert!(
        lock.break_lock(&client, actor, "again")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(AuditLog::recent(&client, 10).await.unwrap().len(), 1);
}

/// Reproduces #18 item 2: a `MutexGuard` dropped without `release` left its
/// key behind for as long as the session lived (here 60 s), so the holder's
/// own lock said "deployment in progress" with nothing in progress.
#[tokio::test]
async fn a_guard_dropped_without_release_is_released_in_the_background() {
    let etcd = EtcdCluster::single().await.unwrap();
    let holder = session(&etcd, 60).await;
    let lock = FencedMutex::named("test/dropped");
    let guard = lock.try_lock(&holder, "dropped").await.unwrap();
    drop(guard);

    let client = crate::client(&etcd).await;
    lockstep_tests::wait_for("the dropped guard's key to go", DEADLINE, || {
        let lock = lock.clone();
        let client = client.clone();
        async move {
            match lock.inspect(&client).await {
                Ok(None) => Ok(()),
                Ok(Some(info)) => Err(format!("still held: {info}")),
                Err(err) => Err(err.to_string()),
            }
        }
    })
    .await
    .unwrap();
    // The session is untouched: only the lock went.
    assert!(!holder.is_lost());
}

/// Reproduces #18 item 2: a lock key left on a session's own lease by a
/// guard that is gone (here written directly, as a dropped guard whose
/// release could not reach etcd leaves it) made `lock` on that same session
/// wait for its own lease, which never expires while the session lives.
#[tokio::test]
async fn a_session_never_waits_on_an_orphaned_lock_of_its_own_lease() {
    let etcd = EtcdCluster::single().await.unwrap();
    let leader = session(&etcd, 60).await;
    let lock = FencedMutex::deployment("orphaned");
    let value = serde_json::json!({
        "holder": Holder::current(),
        "purpose": "a driver that is gone",
        "since_unix_ms": 0,
    });
    let client = crate::client(&etcd).await;
    let put = client
        .put(
            lock.key(),
            value.to_string(),
            Some(etcd_client::PutOptions::new().with_lease(leader.lease_id())),
        )
        .await
        .unwrap();
    let orphan_revision = put.header().unwrap().revision();

    let guard = lock
        .lock(&leader, "resumed", Duration::from_secs(5))
        .await
        .unwrap();
    // A new key: a late background release of the orphan (fenced by the
    // orphan's create revision) cannot delete it.
    assert!(guard.token().0 > u64::try_from(orphan_revision).unwrap());
    let info = lock.inspect(&client).await.unwrap().unwrap();
    assert_eq!(info.purpose, "resumed");
}

/// A live guard of the same session is not an orphan: a second taker on
/// that session is refused, as any other would be.
#[tokio::test]
async fn a_live_guard_of_the_same_session_still_excludes() {
    let etcd = EtcdCluster::single().await.unwrap();
    let leader = session(&etcd, 60).await;
    let lock = FencedMutex::deployment("live");
    let guard = lock.try_lock(&leader, "d-1").await.unwrap();
    let err = lock.try_lock(&leader, "d-2").await.unwrap_err();
    assert!(matches!(err, LockError::Held(_)), "{err}");
    guard.release().await.unwrap();
    lock.try_lock(&leader, "d-2").await.unwrap();
}
