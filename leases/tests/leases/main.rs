//! The etcd recipes against real etcd (single and three-member clusters
//! from the harness).

// Test helpers panic on failure: the panic is the test's report.
#![allow(clippy::unwrap_used)]

mod budget;
mod election;
mod etcd;
mod mutex;
mod registration;
mod session;

use std::time::Duration;

use leases::{Etcd, EtcdTiming, Session, Ttl};
use lockstep_tests::EtcdCluster;

/// Generous: covers lease expiry and elections on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A client of every member of `etcd`, failing over as the daemons' do.
pub async fn client(etcd: &EtcdCluster) -> Etcd {
    Etcd::connect(&etcd.endpoints(), EtcdTiming::default())
        .await
        .unwrap()
}

pub async fn session(etcd: &EtcdCluster, ttl_secs: u64) -> Session {
    let client = client(etcd).await;
    Session::grant(client, Ttl::from_secs(ttl_secs).unwrap())
        .await
        .unwrap()
}
