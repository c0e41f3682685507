//! The harness's own smoke tests: real etcd clusters start, serve, survive a
//! member's death, and leave no process behind.

use std::time::Duration;

use etcd_client::{GetOptions, PutOptions};
use lockstep_tests::{EtcdCluster, MemberState, wait_for};
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// Generous: these waits cover elections and lease expiry on a loaded
/// 2-core machine.
const DEADLINE: Duration = Duration::from_secs(30);

fn alive(pid: u32) -> bool {
    // A reaped process is gone from /proc; kill(pid, 0) would also see
    // zombies, which the harness must not leave either.
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && kill(Pid::from_raw(pid as i32), None).is_ok()
}

async fn value(client: &mut etcd_client::Client, key: &str) -> Option<String> {
    let response = client.get(key, None).await.ok()?;
    response
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
}

#[tokio::test]
async fn single_member_put_then_get() {
    let etcd = EtcdCluster::single().await.unwrap();
    let mut client = etcd.client().await.unwrap();
    client.put("/smoke/key", "value-1", None).await.unwrap();
    assert_eq!(
        value(&mut client, "/smoke/key").await.as_deref(),
        Some("value-1")
    );
}

#[tokio::test]
async fn lease_bound_key_disappears_after_its_ttl() {
    let etcd = EtcdCluster::single().await.unwrap();
    let mut client = etcd.client().await.unwrap();
    let lease = client.lease_grant(2, None).await.unwrap();
    client
        .put(
            "/smoke/leased",
            "held",
            Some(PutOptions::new().with_lease(lease.id())),
        )
        .await
        .unwrap();
    assert_eq!(
        value(&mut client, "/smoke/leased").await.as_deref(),
        Some("held")
    );

    // No keep-alive: the key must go by itself.
    wait_for("the lease-bound key to expire", DEADLINE, || {
        let mut client = client.clone();
        async move {
            match value(&mut client, "/smoke/leased").await {
                None => Ok(()),
                Some(v) => Err(format!("still present with value {v}")),
            }
        }
    })
    .await
    .unwrap();
    let ttl = client.lease_time_to_live(lease.id(), None).await.unwrap();
    assert!(ttl.ttl() <= 0, "lease still alive with ttl {}", ttl.ttl());
}

#[tokio::test]
async fn three_members_keep_serving_when_the_leader_is_killed() {
    let mut etcd = EtcdCluster::three().await.unwrap();
    let leader = etcd.leader().await.unwrap();
    let mut client = etcd.client().await.unwrap();
    client.put("/smoke/before", "1", None).await.unwrap();

    etcd.kill(leader).unwrap();
    assert_eq!(etcd.state(leader).unwrap(), MemberState::Killed);

    let survivors: Vec<usize> = (0..etcd.len()).filter(|&i| i != leader).collect();
    for &survivor in &survivors {
        let endpoint = etcd.endpoint(survivor).unwrap();
        let mut client = etcd.member_client(survivor).await.unwrap();
        // A linearizable write and read through this member only: it needs
        // the two survivors to have elected a new leader.
        wait_for(
            &format!("member {survivor} to accept writes"),
            DEADLINE,
            || {
                let mut client = client.clone();
                let endpoint = endpoint.clone();
                async move {
                    client
                        .put("/smoke/after", endpoint.as_str(), None)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>(())
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(
            value(&mut client, "/smoke/before").await.as_deref(),
            Some("1")
        );
    }
    let new_leader = etcd.leader().await.unwrap();
    assert_ne!(new_leader, leader);

    // The killed member comes back on its old data and catches up.
    etcd.restart(leader).await.unwrap();
    let mut back = etcd.member_client(leader).await.unwrap();
    wait_for("the restarted member to catch up", DEADLINE, || {
        let mut back = back.clone();
        async move {
            let response = back
                .get("/smoke/after", Some(GetOptions::new().with_serializable()))
                .await
                .map_err(|e| e.to_string())?;
            response
                .kvs()
                .first()
                .map(|_| ())
                .ok_or_else(|| "not replicated yet".to_owned())
        }
    })
    .await
    .unwrap();
    assert_eq!(
        value(&mut back, "/smoke/before").await.as_deref(),
        Some("1")
    );
}

#[tokio::test]
async fn a_paused_member_answers_nothing_until_resumed() {
    let mut etcd = EtcdCluster::single().await.unwrap();
    let mut client = etcd.client().await.unwrap();
    client.put("/smoke/pause", "1", None).await.unwrap();

    etcd.pause(0).unwrap();
    let stalled =
        tokio::time::timeout(Duration::from_secs(1), client.get("/smoke/pause", None)).await;
    assert!(
        !matches!(stalled, Ok(Ok(_))),
        "a SIGSTOPped etcd answered a request"
    );

    etcd.resume(0).unwrap();
    let value = wait_for("the resumed member to answer", DEADLINE, || {
        let mut client = client.clone();
        async move {
            value(&mut client, "/smoke/pause")
                .await
                .ok_or_else(|| "no answer yet".to_owned())
        }
    })
    .await
    .unwrap();
    assert_eq!(value, "1");
}

#[test]
fn every_member_is_killed_on_drop_even_when_the_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut etcd = EtcdCluster::three().await.unwrap();
            etcd.pause(1).unwrap();
            let pids: Vec<u32> = (0..etcd.len())
                .filter_map(|i| etcd.pid(i).unwrap())
                .collect();
            tx.send(pids).unwrap();
            panic!("a test failing while it holds a cluster, one member paused");
        })
    })
    .join();
    assert!(outcome.is_err(), "the thread was meant to panic");

    let pids = rx.recv().unwrap();
    assert_eq!(pids.len(), 3);
    for pid in pids {
        assert!(!alive(pid), "etcd pid {pid} survived the panic");
    }
}
