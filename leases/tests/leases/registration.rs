//! `Registration::claim` against real etcd (#18 item 5): create-if-absent
//! on the claimant's lease, never overwriting another lease's record.

use leases::{Claim, Registration, RegistrationError};
use lockstep_tests::EtcdCluster;
use serde_json::{Value, json};

use crate::session;

async fn claim(session: &leases::Session, record: &Value) -> Claim<Value> {
    Registration::claim(session, "reg-1", record).await.unwrap()
}

#[tokio::test]
async fn a_claim_creates_the_key_on_its_lease_and_a_second_lease_gets_the_holder() {
    let etcd = EtcdCluster::single().await.unwrap();
    let first = session(&etcd, 30).await;
    let second = session(&etcd, 30).await;

    let Claim::Registered(registration) = claim(&first, &json!({"who": "first"})).await else {
        panic!("an absent key must be created");
    };
    // A repeated claim on the same lease is still ours.
    assert!(matches!(
        claim(&first, &json!({"who": "first again"})).await,
        Claim::Registered(_)
    ));
    match claim(&second, &json!({"who": "second"})).await {
        Claim::Held(held) => {
            assert_eq!(held.lease, first.lease_id());
            assert_eq!(held.record["who"], "first again");
        }
        Claim::Registered(_) => panic!("a live holder's key was taken over"),
    }
    let client = crate::client(&etcd).await;
    let stored = client.get(registration.key(), None).await.unwrap();
    let kv = stored.kvs().first().unwrap();
    assert_eq!(kv.lease(), first.lease_id(), "the holder keeps its key");
}

#[tokio::test]
async fn an_evicted_holder_s_key_can_be_claimed_and_its_update_is_refused() {
    let etcd = EtcdCluster::single().await.unwrap();
    let first = session(&etcd, 30).await;
    let second = session(&etcd, 30).await;
    let Claim::Registered(old) = claim(&first, &json!({"who": "first"})).await else {
        panic!("an absent key must be created");
    };
    let Claim::Held(held) = claim(&second, &json!({"who": "second"})).await else {
        panic!("the first lease holds the key");
    };
    Registration::evict(second.client(), &held.key, held.lease)
        .await
        .unwrap();
    // Evicting a lease that is already gone is not an error.
    Registration::evict(second.client(), &held.key, held.lease)
        .await
        .unwrap();
    assert!(matches!(
        claim(&second, &json!({"who": "second"})).await,
        Claim::Registered(_)
    ));
    let refused = old.update(&json!({"who": "first"})).await;
    assert!(
        matches!(refused, Err(RegistrationError::Lost { .. })),
        "{refused:?}"
    );
}
