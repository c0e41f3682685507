//! An agent's id is its own (#18 item 5): real etcd, real agents.

use std::time::Duration;

use lockstep_tests::{AgentFixture, EtcdCluster, wait_for};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);
/// Long enough that no test outcome can come from the lease expiring.
const LONG_TTL: &str = "60s";

fn etcd_table(etcd: &EtcdCluster) -> String {
    etcd.agent_table(LONG_TTL, "10s")
}

/// The agent's registration: its record and lease, once it exists.
async fn registered(etcd: &EtcdCluster, agent: &str) -> (Value, i64) {
    let key = leases::keys::agent(agent);
    wait_for(&format!("{key} in etcd"), DEADLINE, || async {
        let mut client = etcd.client().await.map_err(|e| e.to_string())?;
        let response = client
            .get(key.as_str(), None)
            .await
            .map_err(|e| e.to_string())?;
        let kv = response.kvs().first().ok_or("not registered")?;
        let record: Value = serde_json::from_slice(kv.value()).map_err(|e| e.to_string())?;
        Ok::<_, String>((record, kv.lease()))
    })
    .await
    .unwrap()
}

/// Reproduces #18 item 5: a second agent started with eu-1's id (a
/// copy-pasted config) took over its registration silently. It must fail
/// to start, exit non-zero, and name the live holder's address and since
/// when; the holder's registration stays as it was.
#[tokio::test]
async fn a_second_agent_with_a_live_agent_s_id_fails_to_start_naming_the_holder() {
    let etcd = EtcdCluster::single().await.unwrap();
    let table = etcd_table(&etcd);
    let first = AgentFixture::start_with("dup-1", "eu", &table)
        .await
        .unwrap();
    let (record, lease) = registered(&etcd, "dup-1").await;
    let address = first.grpc_addr().to_string();
    assert_eq!(record["grpc_address"], address.as_str(), "{record}");

    let refused = AgentFixture::start_with("dup-1", "eu", &table).await;
    let said = match refused {
        Ok(second) => panic!(
            "a second agent with a live agent's id started:\n{}",
            second.log_text()
        ),
        Err(err) => err.to_string(),
    };
    assert!(said.contains("exited at start"), "{said}");
    assert!(!said.contains("exit status: 0"), "{said}");
    assert!(said.contains("already registered"), "{said}");
    assert!(
        said.contains(&address),
        "names the holder's address: {said}"
    );
    assert!(said.contains("since"), "says since when: {said}");

    let (after, lease_after) = registered(&etcd, "dup-1").await;
    assert_eq!(lease_after, lease, "the holder keeps its registration");
    assert_eq!(after["grpc_address"], address.as_str(), "{after}");
    let status = first.agentctl(&["status"]).await.unwrap();
    assert!(status.status.success(), "the first agent still serves");
}

/// #18 item 5, the other side: a killed agent's registration outlives it
/// for its lease's TTL; the same agent started again (same config and data
/// dir) must start at once, replacing its dead predecessor's registration
/// and revoking that lease (so nothing it held lingers).
#[tokio::test]
async fn a_killed_agent_starts_again_before_its_old_lease_expires() {
    let etcd = EtcdCluster::single().await.unwrap();
    let mut agent = AgentFixture::start_with("again-1", "eu", &etcd_table(&etcd))
        .await
        .unwrap();
    let (before, old_lease) = registered(&etcd, "again-1").await;
    agent.kill().await.unwrap();
    agent.start_again().await.unwrap();

    let key = leases::keys::agent("again-1");
    let (after, new_lease) = wait_for("the new registration", DEADLINE, || async {
        let mut client = etcd.client().await.map_err(|e| e.to_string())?;
        let response = client
            .get(key.as_str(), None)
            .await
            .map_err(|e| e.to_string())?;
        let kv = response.kvs().first().ok_or("not registered")?;
        if kv.lease() == old_lease {
            return Err("still the killed agent's lease".to_owned());
        }
        let record: Value = serde_json::from_slice(kv.value()).map_err(|e| e.to_string())?;
        Ok((record, kv.lease()))
    })
    .await
    .unwrap();
    assert_ne!(after["pid"], before["pid"], "{after}");
    assert_ne!(new_lease, old_lease);
    let mut client = etcd.client().await.unwrap();
    let old = client.lease_time_to_live(old_lease, None).await.unwrap();
    assert_eq!(old.ttl(), -1, "the predecessor's lease was revoked");
}

/// #18 item 5, `systemctl restart`: a stopped agent leaves its lease to
/// expire by itself; the next one on the same install must not take that
/// registration for another agent's.
#[tokio::test]
async fn a_restarted_agent_is_not_refused_by_its_own_registration() {
    let etcd = EtcdCluster::single().await.unwrap();
    let mut agent = AgentFixture::start_with("again-2", "eu", &etcd_table(&etcd))
        .await
        .unwrap();
    let (_, old_lease) = registered(&etcd, "again-2").await;
    agent.restart().await.unwrap();
    let key = leases::keys::agent("again-2");
    wait_for("the restarted agent's registration", DEADLINE, || async {
        let mut client = etcd.client().await.map_err(|e| e.to_string())?;
        let response = client
            .get(key.as_str(), None)
            .await
            .map_err(|e| e.to_string())?;
        match response.kvs().first() {
            Some(kv) if kv.lease() != old_lease => Ok(()),
            Some(_) => Err("still the stopped agent's lease".to_owned()),
            None => Err("not registered".to_owned()),
        }
    })
    .await
    .unwrap();
}
