//! `Registration`: an agent's lease-bound record under
//! `/lockstep/v1/agents/<agent>`, present exactly while the agent's session
//! lives.
//!
//! Claiming is create-if-absent in one transaction: the key is written only
//! when it does not exist (or is already bound to this session's lease);
//! otherwise the live holder's record and lease come back, and the caller
//! decides whether that holder is itself (a dead predecessor whose lease
//! has not expired yet: [`Registration::evict`]) or another agent with the
//! same id (refuse).
//!
//! Must never: outlive the agent (the record is bound to its lease), or
//! overwrite a record bound to another lease.

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::etcd::Etcd;
use crate::keys;
use crate::session::Session;

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("etcd request on {key} failed: {source}")]
    Etcd {
        key: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("registration {key} kept changing while it was claimed")]
    Contended { key: String },
    #[error("registration {key} is no longer bound to this agent's lease")]
    Lost { key: String },
    #[error("registration record {key} is not valid: {source}")]
    BadRecord {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Claims of a key that keeps vanishing before it can be read.
const CLAIM_ATTEMPTS: usize = 3;

/// The outcome of a claim.
#[derive(Debug)]
pub enum Claim<T> {
    /// The key is ours, bound to the session's lease.
    Registered(Box<Registration>),
    /// Another lease holds the key.
    Held(HeldBy<T>),
}

/// The live holder of a registration key.
#[derive(Debug, Clone)]
pub struct HeldBy<T> {
    pub key: String,
    pub lease: i64,
    pub record: T,
}

/// A live registration.
pub struct Registration {
    key: String,
    lease: i64,
    client: Etcd,
}

impl Registration {
    /// Writes `record` under the agent's key, bound to the session's lease,
    /// unless another lease holds the key: then returns that holder.
    pub async fn claim<T: Serialize + DeserializeOwned>(
        session: &Session,
        agent: &str,
        record: &T,
    ) -> Result<Claim<T>, RegistrationError> {
        let registration = Self {
            key: keys::agent(agent),
            lease: session.lease_id(),
            client: session.client().clone(),
        };
        let key = registration.key.as_str();
        let value = registration.encode(record)?;
        let create = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(registration.lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        // A holder that vanishes between the compare and the read (its lease
        // just expired) leaves nothing to report: claim again, a few times.
        for _ in 0..CLAIM_ATTEMPTS {
            let response = registration
                .client
                .clone()
                .txn(create.clone())
                .await
                .map_err(|source| registration.etcd(source))?;
            if response.succeeded() {
                return Ok(Claim::Registered(Box::new(registration)));
            }
            let holder = response.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().cloned(),
                _ => None,
            });
            match holder {
                // Already bound to this very lease (a repeated claim).
                Some(kv) if kv.lease() == registration.lease => {
                    registration.update(record).await?;
                    return Ok(Claim::Registered(Box::new(registration)));
                }
                Some(kv) => {
                    let record = serde_json::from_slice(kv.value()).map_err(|source| {
                        RegistrationError::BadRecord {
                            key: registration.key.clone(),
                            source,
                        }
                    })?;
                    return Ok(Claim::Held(HeldBy {
                        key: registration.key.clone(),
                        lease: kv.lease(),
                        record,
                    }));
                }
                None => {}
            }
        }
        Err(RegistrationError::Contended {
            key: registration.key.clone(),
        })
    }

    /// Revokes a holder's lease: its registration (and every other key
    /// bound to it, such as budget slots) goes at once. Only for a holder
    /// the caller has proven to be its own dead predecessor. A lease that
    /// is already gone is not an error.
    pub async fn evict(client: &Etcd, key: &str, lease: i64) -> Result<(), RegistrationError> {
        match client.lease_revoke(lease).await {
            Ok(_) => Ok(()),
            Err(etcd_client::Error::GRpcStatus(status))
                if status.code() == tonic::Code::NotFound =>
            {
                Ok(())
            }
            Err(source) => Err(RegistrationError::Etcd {
                key: key.to_owned(),
                source,
            }),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Replaces the record, only while the key is still bound to our lease.
    pub async fn update<T: Serialize>(&self, record: &T) -> Result<(), RegistrationError> {
        let value = self.encode(record)?;
        let key = self.key.as_str();
        let put = Txn::new()
            .when([Compare::lease(key, CompareOp::Equal, self.lease)])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(self.lease)),
            )]);
        let response = self
            .client
            .clone()
            .txn(put)
            .await
            .map_err(|source| self.etcd(source))?;
        if response.succeeded() {
            Ok(())
        } else {
            Err(RegistrationError::Lost {
                key: self.key.clone(),
            })
        }
    }

    fn encode<T: Serialize>(&self, record: &T) -> Result<Vec<u8>, RegistrationError> {
        serde_json::to_vec(record).map_err(|source| RegistrationError::BadRecord {
            key: self.key.clone(),
            source,
        })
    }

    fn etcd(&self, source: etcd_client::Error) -> RegistrationError {
        RegistrationError::Etcd {
            key: self.key.clone(),
            source,
        }
    }

    /// Every registered agent's record, by agent id.
    pub async fn list<T: DeserializeOwned>(
        client: &Etcd,
    ) -> Result<Vec<(String, T)>, RegistrationError> {
        let response = client
            .clone()
            .get(keys::AGENTS, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|source| RegistrationError::Etcd {
                key: keys::AGENTS.to_owned(),
                source,
            })?;
        response
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let record = serde_json::from_slice(kv.value()).map_err(|source| {
                    RegistrationError::BadRecord {
                        key: key.clone(),
                        source,
                    }
                })?;
                Ok((
                    key.strip_prefix(keys::AGENTS).unwrap_or(&key).to_owned(),
                    record,
                ))
            })
            .collect()
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.key)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}
