//! Which agent a Report stream may speak for. Over mTLS, only the agent its
//! certificate names (`AccessPolicy::names_agent`); in every mode, an
//! agent with a live etcd registration (`/lockstep/v1/agents/<id>`, bound
//! to its lease) must claim that registration's address and cluster, and
//! without TLS an agent with none is refused. The address the coordinator
//! dials is the registration's, never one a stream asserts on its own.
//!
//! ```text
//! registration on a stream -> read /lockstep/v1/agents/<id> (lease-bound only)
//!   -> bind (pure): certificate names id? address and cluster = etcd's?
//!   -> FleetView::stream_opened(etcd's identity)  |  PERMISSION_DENIED
//! stream closed -> expire_when_unregistered: once no stream is open and
//!   the registration is gone, the agent leaves the fleet view
//! ```
//!
//! Must never: let one caller register an agent id its certificate does
//! not name, or keep a closed agent whose lease is gone in the fleet view.

use std::sync::Arc;
use std::time::Duration;

use proto::v1 as pb;
use serde::Deserialize;
use tls::PeerIdentity;

use crate::fleet::FleetView;
use crate::roles::AccessPolicy;

/// The part of an agent's etcd registration record the coordinator uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RegisteredAgent {
    pub cluster: String,
    pub grpc_address: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistrationReadError {
    #[error("cannot read the agent's registration {key} from etcd: {source}")]
    Etcd {
        key: String,
        #[source]
        source: etcd_client::Error,
    },
}

/// Why a stream may not register the agent it names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindRefusal {
    #[error(
        "a certificate of `{identity}` may not report as agent {agent:?}: an agent reports only under the name its certificate gives it (a name holding the agent role, `{agent}` or `{agent}.<domain>`)"
    )]
    NotNamed { identity: String, agent: String },
    #[error(
        "agent {agent:?} has no live registration in etcd ({key}): without TLS an agent may report only once it holds its lease-bound registration (it claims it at start; check its [etcd] table)"
    )]
    NotRegistered { agent: String, key: String },
    #[error(
        "agent {agent:?} claims address {claimed}, but its registration in etcd records {registered}: a stream may not redirect an agent's commands"
    )]
    AddressDiffers {
        agent: String,
        claimed: String,
        registered: String,
    },
    #[error(
        "agent {agent:?} claims cluster {claimed}, but its registration in etcd records {registered}"
    )]
    ClusterDiffers {
        agent: String,
        claimed: String,
        registered: String,
    },
}

/// The agent's live (lease-bound) registration; `None` when there is none
/// or its key is bound to no lease.
pub async fn read_registration(
    client: &leases::Etcd,
    agent: &str,
) -> Result<Option<RegisteredAgent>, RegistrationReadError> {
    let key = leases::keys::agent(agent);
    let response =
        client
            .get(key.as_str(), None)
            .await
            .map_err(|source| RegistrationReadError::Etcd {
                key: key.clone(),
                source,
            })?;
    let Some(kv) = response.kvs().first() else {
        return Ok(None);
    };
    if kv.lease() == 0 {
        tracing::warn!(key, "ignoring an agent registration bound to no lease");
        return Ok(None);
    }
    match serde_json::from_slice::<RegisteredAgent>(kv.value()) {
        Ok(record) => Ok(Some(record)),
        Err(error) => {
            tracing::warn!(key, %error, "ignoring an agent registration that does not parse");
            Ok(None)
        }
    }
}

/// The identity a stream registering `claimed` is recorded under, or why
/// it may not register. Pure. `certificate`: the stream's certificate
/// identity with the policy that gives it roles (`None` without TLS).
pub fn bind(
    claimed: &pb::AgentIdentity,
    certificate: Option<(&AccessPolicy, &PeerIdentity)>,
    registration: Option<&RegisteredAgent>,
) -> Result<pb::AgentIdentity, BindRefusal> {
    let agent = &claimed.agent_id;
    if let Some((policy, identity)) = certificate {
        if !policy.names_agent(identity, agent) {
            return Err(BindRefusal::NotNamed {
                identity: identity.to_string(),
                agent: agent.clone(),
            });
        }
    }
    let Some(registered) = registration else {
        return match certificate {
            // The certificate binds the name, and dialling checks that it
            // names the address too.
            Some(_) => Ok(claimed.clone()),
            None => Err(BindRefusal::NotRegistered {
                agent: agent.clone(),
                key: leases::keys::agent(agent),
            }),
        };
    };
    if registered.grpc_address != claimed.grpc_address {
        return Err(BindRefusal::AddressDiffers {
            agent: agent.clone(),
            claimed: claimed.grpc_address.clone(),
            registered: registered.grpc_address.clone(),
        });
    }
    if registered.cluster != claimed.cluster {
        return Err(BindRefusal::ClusterDiffers {
            agent: agent.clone(),
            claimed: claimed.cluster.clone(),
            registered: registered.cluster.clone(),
        });
    }
    Ok(pb::AgentIdentity {
        grpc_address: registered.grpc_address.clone(),
        cluster: registered.cluster.clone(),
        ..claimed.clone()
    })
}

/// Once `agent` has no open stream and no registration in etcd, removes it
/// from the fleet view; returns early when a stream opens again. Checks
/// every `every` (the fleet view's staleness bound, so a stream that
/// blinks keeps its agent).
pub async fn expire_when_unregistered(
    client: leases::Etcd,
    fleet: Arc<FleetView>,
    agent: String,
    every: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        if fleet.open_streams(&agent) > 0 {
            return;
        }
        match read_registration(&client, &agent).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                if fleet.forget_if_closed(&agent) {
                    tracing::info!(
                        agent,
                        "agent gone: no report stream and no registration in etcd; it leaves the fleet view"
                    );
                }
                return;
            }
            Err(error) => {
                tracing::debug!(agent, %error, "cannot check a closed agent's registration yet");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles::{Role, RoleRule};

    fn claimed(agent: &str, address: &str) -> pb::AgentIdentity {
        pb::AgentIdentity {
            agent_id: agent.to_owned(),
            cluster: "eu".to_owned(),
            grpc_address: address.to_owned(),
            services: vec!["demo".to_owned()],
            ..Default::default()
        }
    }

    fn registered(address: &str) -> RegisteredAgent {
        RegisteredAgent {
            cluster: "eu".to_owned(),
            grpc_address: address.to_owned(),
        }
    }

    fn policy() -> AccessPolicy {
        AccessPolicy {
            rules: vec![RoleRule {
                identities: vec![tls::NamePattern::parse("*.agents.lockstep").unwrap()],
                role: Role::Agent,
            }],
            insecure_operators: false,
        }
    }

    #[test]
    fn a_certificate_registers_only_its_own_agent() {
        let ag1 = PeerIdentity::from_names(["ag1.agents.lockstep".to_owned()]);
        let policy = policy();
        let refused = bind(&claimed("ag2", "h:2"), Some((&policy, &ag1)), None).unwrap_err();
        assert!(
            matches!(&refused, BindRefusal::NotNamed { identity, agent } if identity == "ag1.agents.lockstep" && agent == "ag2"),
            "{refused}"
        );
        assert!(bind(&claimed("ag1", "h:1"), Some((&policy, &ag1)), None).is_ok());
    }

    #[test]
    fn without_tls_the_etcd_registration_binds_id_and_address() {
        let refused = bind(&claimed("ag9", "h:9"), None, None).unwrap_err();
        assert!(
            refused.to_string().contains("/lockstep/v1/agents/ag9"),
            "{refused}"
        );
        let refused = bind(&claimed("ag2", "evil:1"), None, Some(&registered("h:2"))).unwrap_err();
        assert!(
            refused.to_string().contains("evil:1") && refused.to_string().contains("h:2"),
            "{refused}"
        );
        let bound = bind(&claimed("ag2", "h:2"), None, Some(&registered("h:2"))).unwrap();
        assert_eq!(bound.grpc_address, "h:2");
        let mut other_cluster = claimed("ag2", "h:2");
        other_cluster.cluster = "us".to_owned();
        assert!(bind(&other_cluster, None, Some(&registered("h:2"))).is_err());
    }
}
