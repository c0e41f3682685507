use std::time::Duration;

use leases::{Election, FencedMutex, Holder};
use lockstep_tests::EtcdCluster;

use crate::{DEADLINE, session};

#[tokio::test]
async fn leadership_passes_on_resignation_with_a_higher_token() {
    let etcd = EtcdCluster::single().await.unwrap();
    let election = Election::new();
    let client = crate::client(&etcd).await;
    let a = session(&etcd, 10).await;
    let b = session(&etcd, 10).await;

    let first = election
        .campaign(&a, "http://coordinator-a:7000")
        .await
        .unwrap();
    let leader = election.leader(&client).await.unwrap().unwrap();
    assert_eq!(leader.purpose, "http://coordinator-a:7000");

    let contender = {
        let election = election.clone();
        tokio::spawn(async move {
            let leadership = election
                .campaign(&b, "http://coordinator-b:7000")
                .await
                .unwrap();
            (leadership, b)
        })
    };
    let first_token = first.token();
    first.resign().await.unwrap();
    let (second, _b) = tokio::time::timeout(DEADLINE, contender)
        .await
        .unwrap()
        .unwrap();
    assert!(second.token() > first_token);
    assert!(!second.is_lost());
    let leader = election.leader(&client).await.unwrap().unwrap();
    assert_eq!(leader.purpose, "http://coordinator-b:7000");
}

#[tokio::test]
async fn a_leader_whose_key_is_broken_learns_it_lost() {
    let etcd = EtcdCluster::single().await.unwrap();
    let election = Election::new();
    let a = session(&etcd, 30).await;
    let leadership = election
        .campaign(&a, "http://coordinator-a:7000")
        .await
        .unwrap();
    let client = crate::client(&etcd).await;

    FencedMutex::at("/lockstep/v1/leader")
        .break_lock(&client, Holder::current(), "test: depose the leader")
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(DEADLINE, leadership.lost())
        .await
        .unwrap();
    assert!(leadership.is_lost());
}

/// Reproduces #18 Seen 1 at the election: any error of the leader key's
/// watch was taken as lost leadership. The first member (where the client
/// prefers to send, so where the watch and keep-alive stream live) dies:
/// leadership holds, is re-watched on another member, and a real loss
/// (the key deleted) is still seen.
#[tokio::test]
async fn a_leader_keeps_leading_when_the_member_its_watch_is_on_dies() {
    let mut etcd = EtcdCluster::three().await.unwrap();
    let election = Election::new();
    let a = session(&etcd, 10).await;
    let leadership = election
        .campaign(&a, "http://coordinator-a:7000")
        .await
        .unwrap();

    etcd.kill(0).unwrap();
    // Longer than a TTL: a broken watch taken for a loss would show.
    let lost = tokio::time::timeout(Duration::from_secs(12), leadership.lost()).await;
    assert!(lost.is_err(), "leadership lost when one etcd member died");
    assert!(!a.is_lost());

    let client = crate::client(&etcd).await;
    FencedMutex::at("/lockstep/v1/leader")
        .break_lock(&client, Holder::current(), "test: depose the leader")
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(DEADLINE, leadership.lost())
        .await
        .unwrap();
}
