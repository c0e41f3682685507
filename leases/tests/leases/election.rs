use leases::{Election, FencedMutex, Holder};
use lockstep_tests::EtcdCluster;

use crate::{DEADLINE, session};

#[tokio::test]
async fn leadership_passes_on_resignation_with_a_higher_token() {
    let etcd = EtcdCluster::single().await.unwrap();
    let election = Election::new();
    let client = etcd.client().await.unwrap();
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
    let client = etcd.client().await.unwrap();

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
