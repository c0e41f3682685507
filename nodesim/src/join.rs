//! Each virtual host's presence in etcd: its own session (lease) and its
//! registration, claimed by the real agent's `agent::cluster::register`
//! with a record made by `agent::identity::AgentRecord::current` — so the
//! coordinator's binding check (`agent_binding`) sees exactly what a real
//! agent writes, and a restarted simulator evicts its dead predecessors
//! just as a restarted agent does.
//!
//! ```text
//! per host: [join gate] grant lease -> register -> publish session
//!           -> wait until lost -> publish none -> pause -> again
//! ```
//!
//! Must never: let more than the gate's count of joins run at once (a
//! fleet starting together would queue thousands of requests in etcd), or
//! publish a session whose registration failed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent::cluster::{self, JoinError};
use agent::dial::Backoff;
use agent::identity::AgentRecord;
use leases::{Etcd, Session, Ttl};
use tokio::sync::{Semaphore, watch};

use crate::host::VirtualHost;

const REJOIN_PAUSE_MIN: Duration = Duration::from_millis(500);
const REJOIN_PAUSE_MAX: Duration = Duration::from_secs(10);

/// The registration record of a virtual host: this process, with a data
/// dir of its own per host (`nodesim:<id>`, never a real path), so two
/// hosts of one simulator are different installs and a restarted
/// simulator is each host's predecessor.
pub fn record(host: &VirtualHost) -> AgentRecord {
    let data_dir = PathBuf::from(format!("nodesim:{}", host.id));
    AgentRecord::current(
        host.id.as_str(),
        host.cluster.as_str(),
        &host.address.to_string(),
        &data_dir,
    )
}

/// Keeps `host` registered for as long as the task lives.
pub async fn keep_registered(
    host: Arc<VirtualHost>,
    client: Etcd,
    ttl: Ttl,
    gate: Arc<Semaphore>,
    publish: watch::Sender<Option<Arc<Session>>>,
) {
    let record = record(&host);
    let agent = host.id.as_str();
    let mut backoff = Backoff::new(REJOIN_PAUSE_MIN, REJOIN_PAUSE_MAX);
    loop {
        let joined = {
            // A closed gate only happens at shutdown.
            let Ok(_permit) = gate.acquire().await else {
                return;
            };
            join(&client, ttl, agent, &record).await
        };
        match joined {
            Ok((session, _registration)) => {
                backoff.reset();
                tracing::debug!(
                    agent,
                    lease = format_args!("{:x}", session.lease_id()),
                    "registered in etcd"
                );
                let session = Arc::new(session);
                publish.send_replace(Some(session.clone()));
                let reason = session.lost().await;
                publish.send_replace(None);
                tracing::warn!(agent, reason = %reason, "etcd session lost; registering again");
            }
            Err(err) => tracing::warn!(agent, error = %err, "cannot register in etcd"),
        }
        tokio::time::sleep(backoff.next_pause()).await;
    }
}

async fn join(
    client: &Etcd,
    ttl: Ttl,
    agent: &str,
    record: &AgentRecord,
) -> Result<(Session, leases::Registration), JoinError> {
    let session = Session::grant(client.clone(), ttl)
        .await
        .map_err(|e| JoinError::Unreachable(cli::chain(&e)))?;
    match cluster::register(&session, agent, record).await {
        Ok(registration) => Ok((session, registration)),
        Err(err) => {
            if let Err(close) = session.close().await {
                tracing::debug!(agent, error = %cli::chain(&close), "cannot revoke an unused lease; it expires by itself");
            }
            Err(err)
        }
    }
}
