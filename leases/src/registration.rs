//! `Registration`: an agent's lease-bound record under
//! `/lockstep/v1/agents/<agent>`, present exactly while the agent's session
//! lives.
//!
//! Must never: outlive the agent (the record is bound to its lease).

use etcd_client::{Client, GetOptions, PutOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;

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
    #[error("registration record {key} is not valid: {source}")]
    BadRecord {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A live registration.
pub struct Registration {
    key: String,
    lease: i64,
    client: Client,
}

impl Registration {
    pub async fn register<T: Serialize>(
        session: &Session,
        agent: &str,
        record: &T,
    ) -> Result<Self, RegistrationError> {
        let registration = Self {
            key: keys::agent(agent),
            lease: session.lease_id(),
            client: session.client().clone(),
        };
        registration.update(record).await?;
        Ok(registration)
    }

    /// Replaces the record (same lease).
    pub async fn update<T: Serialize>(&self, record: &T) -> Result<(), RegistrationError> {
        let value = serde_json::to_vec(record).map_err(|source| RegistrationError::BadRecord {
            key: self.key.clone(),
            source,
        })?;
        self.client
            .clone()
            .put(
                self.key.as_str(),
                value,
                Some(PutOptions::new().with_lease(self.lease)),
            )
            .await
            .map(drop)
            .map_err(|source| RegistrationError::Etcd {
                key: self.key.clone(),
                source,
            })
    }

    /// Every registered agent's record, by agent id.
    pub async fn list<T: DeserializeOwned>(
        client: &Client,
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
