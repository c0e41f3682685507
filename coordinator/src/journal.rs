//! The deployment journal in etcd: records, events, the active marker per
//! service and the history index.
//!
//! Every write is one transaction guarded by the caller's fences (the
//! leadership key and the deployment lock, both by create revision), so a
//! deposed coordinator's write fails instead of landing.
//!
//! Must never: write without fences, or split one step's record and events
//! over two transactions.

use etcd_client::{Client, Compare, CompareOp, GetOptions, SortOrder, SortTarget, Txn, TxnOp};
use leases::keys;

use crate::record::{DeploymentRecord, EventRecord};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("etcd request for {what} failed: {source}")]
    Etcd {
        what: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error(
        "write of deployment {id} refused: this coordinator no longer holds leadership or the deployment lock"
    )]
    Fenced { id: String },
    #[error("a deployment of {service} is already active: {id}")]
    AlreadyActive { service: String, id: String },
    #[error("{key} holds invalid data: {source}")]
    Bad {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Reads and fenced writes of deployments.
#[derive(Clone)]
pub struct Journal {
    client: Client,
}

/// How a write ends a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// First write: the service must have no active deployment.
    Create,
    Update,
    /// Last write: index in history, clear the active marker.
    Finish,
}

impl Journal {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    fn etcd(what: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> JournalError {
        let what = what.into();
        move |source| JournalError::Etcd { what, source }
    }

    /// Writes `record` and `events` in one transaction, if `fences` hold.
    /// `release`, when given, is deleted in the same transaction (guarded
    /// by its own fence): a finished deployment and its freed lock are one
    /// change, so nobody can see one without the other.
    pub async fn write(
        &self,
        fences: &[Compare],
        record: &DeploymentRecord,
        events: &[EventRecord],
        kind: Write,
        release: Option<&leases::MutexGuard>,
    ) -> Result<(), JournalError> {
        let record_key = keys::deployment(&record.id);
        let active_key = keys::active(&record.service);
        let mut ops = vec![TxnOp::put(
            record_key.as_str(),
            json(&record_key, record)?,
            None,
        )];
        for event in events {
            let key = keys::deployment_event(&record.id, event.seq);
            ops.push(TxnOp::put(key.as_str(), json(&key, event)?, None));
        }
        let mut when = fences.to_vec();
        if let Some(lock) = release {
            when.push(lock.fence());
            ops.push(TxnOp::delete(lock.key(), None));
        }
        match kind {
            Write::Create => {
                when.push(Compare::create_revision(
                    active_key.as_str(),
                    CompareOp::Equal,
                    0,
                ));
                ops.push(TxnOp::put(active_key.as_str(), record.id.as_str(), None));
            }
            Write::Update => {
                when.push(Compare::value(
                    active_key.as_str(),
                    CompareOp::Equal,
                    record.id.as_str(),
                ));
            }
            Write::Finish => {
                when.push(Compare::value(
                    active_key.as_str(),
                    CompareOp::Equal,
                    record.id.as_str(),
                ));
                ops.push(TxnOp::delete(active_key.as_str(), None));
                ops.push(TxnOp::put(
                    keys::history(&record.service, record.finished_unix_ms, &record.id),
                    record.id.as_str(),
                    None,
                ));
            }
        }
        let response = self
            .client
            .clone()
            .txn(Txn::new().when(when).and_then(ops))
            .await
            .map_err(Self::etcd(format!("deployment {}", record.id)))?;
        if response.succeeded() {
            return Ok(());
        }
        if kind == Write::Create {
            if let Some(id) = self.active_of(&record.service).await? {
                return Err(JournalError::AlreadyActive {
                    service: record.service.clone(),
                    id,
                });
            }
        }
        Err(JournalError::Fenced {
            id: record.id.clone(),
        })
    }

    /// The deployment record `id`.
    pub async fn load(&self, id: &str) -> Result<Option<DeploymentRecord>, JournalError> {
        let key = keys::deployment(id);
        let response = self
            .client
            .clone()
            .get(key.as_str(), None)
            .await
            .map_err(Self::etcd(&key))?;
        response
            .kvs()
            .first()
            .map(|kv| parse(&key, kv.value()))
            .transpose()
    }

    /// The id of `service`'s active deployment.
    pub async fn active_of(&self, service: &str) -> Result<Option<String>, JournalError> {
        let key = keys::active(service);
        let response = self
            .client
            .clone()
            .get(key.as_str(), None)
            .await
            .map_err(Self::etcd(&key))?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Every active deployment id.
    pub async fn active(&self) -> Result<Vec<String>, JournalError> {
        let response = self
            .client
            .clone()
            .get(keys::ACTIVE, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(Self::etcd(keys::ACTIVE))?;
        Ok(response
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
            .collect())
    }

    /// Events of `id` from `from_seq` on, and the revision they were read at
    /// (watch from the next one for later events).
    pub async fn events(
        &self,
        id: &str,
        from_seq: u64,
    ) -> Result<(Vec<EventRecord>, i64), JournalError> {
        let prefix = keys::deployment_events(id);
        let start = keys::deployment_event(id, from_seq);
        let end = format!("{prefix}\u{10ffff}");
        let response = self
            .client
            .clone()
            .get(
                start.as_str(),
                Some(GetOptions::new().with_range(end.as_str())),
            )
            .await
            .map_err(Self::etcd(&prefix))?;
        let revision = response.header().map_or(0, |h| h.revision());
        let events = response
            .kvs()
            .iter()
            .map(|kv| parse(&prefix, kv.value()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((events, revision))
    }

    /// Finished deployments of `service`, most recent first, with the
    /// history key's revision as sequence number.
    pub async fn history(
        &self,
        service: &str,
        limit: usize,
    ) -> Result<Vec<(u64, DeploymentRecord)>, JournalError> {
        let prefix = keys::history_of(service);
        let response = self
            .client
            .clone()
            .get(
                prefix.as_str(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Key, SortOrder::Descend)
                        .with_limit(i64::try_from(limit).unwrap_or(i64::MAX)),
                ),
            )
            .await
            .map_err(Self::etcd(&prefix))?;
        let mut out = Vec::new();
        for kv in response.kvs() {
            let id = String::from_utf8_lossy(kv.value()).into_owned();
            if let Some(record) = self.load(&id).await? {
                out.push((u64::try_from(kv.mod_revision()).unwrap_or(0), record));
            }
        }
        Ok(out)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

fn json<T: serde::Serialize>(key: &str, value: &T) -> Result<Vec<u8>, JournalError> {
    serde_json::to_vec(value).map_err(|source| JournalError::Bad {
        key: key.to_owned(),
        source,
    })
}

fn parse<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, JournalError> {
    serde_json::from_slice(bytes).map_err(|source| JournalError::Bad {
        key: key.to_owned(),
        source,
    })
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").finish_non_exhaustive()
    }
}
