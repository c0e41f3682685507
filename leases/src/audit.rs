//! The append-only audit log of break-glass actions: who, what, why, when.
//!
//! Records live under `/lockstep/v1/audit/<seq>` with a zero-padded sequence
//! so keys sort in order. They are never bound to a lease and never
//! rewritten: `append` creates a key only if it does not exist.
//!
//! Must never: overwrite or delete a record.

use etcd_client::{Compare, CompareOp, GetOptions, SortOrder, SortTarget, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::etcd::Etcd;
use crate::holder::{Holder, now_unix_ms};
use crate::keys;

/// Concurrent appends race for the next sequence number; the loser retries.
const APPEND_ATTEMPTS: usize = 16;

/// One break-glass action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Who did it.
    pub actor: Holder,
    /// What they did: `break-lock`, `forced-restart`, …
    pub action: String,
    /// What it was done to: a lock key, `agent/service`, …
    pub target: String,
    /// Why, in the operator's words.
    pub reason: String,
    pub at_unix_ms: i64,
    /// Context worth keeping (e.g. the lock as it was when broken).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl AuditRecord {
    pub fn new(actor: Holder, action: &str, target: &str, reason: &str) -> Self {
        Self {
            actor,
            action: action.to_owned(),
            target: target.to_owned(),
            reason: reason.to_owned(),
            at_unix_ms: now_unix_ms(),
            detail: String::new(),
        }
    }

    pub fn with_detail(mut self, detail: &str) -> Self {
        detail.clone_into(&mut self.detail);
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("etcd request on the audit log failed: {0}")]
    Etcd(#[source] etcd_client::Error),
    #[error("audit record {key} is not valid: {source}")]
    BadRecord {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("audit sequence {key} holds {value:?}, not a number")]
    BadSequence { key: String, value: String },
    #[error("could not append to the audit log after {APPEND_ATTEMPTS} contended attempts")]
    Contended,
}

/// The audit log in etcd.
#[derive(Debug, Clone, Copy)]
pub struct AuditLog;

impl AuditLog {
    /// Appends a record; returns its sequence number.
    pub async fn append(client: &Etcd, record: &AuditRecord) -> Result<u64, AuditError> {
        let value = serde_json::to_vec(record).map_err(|source| AuditError::BadRecord {
            key: keys::AUDIT.to_owned(),
            source,
        })?;
        for _ in 0..APPEND_ATTEMPTS {
            let current = client
                .get(keys::AUDIT_SEQ, None)
                .await
                .map_err(AuditError::Etcd)?;
            let (last, mod_revision) = match current.kvs().first() {
                Some(kv) => {
                    let text = String::from_utf8_lossy(kv.value()).into_owned();
                    let last = text.parse::<u64>().map_err(|_| AuditError::BadSequence {
                        key: keys::AUDIT_SEQ.to_owned(),
                        value: text,
                    })?;
                    (last, kv.mod_revision())
                }
                None => (0, 0),
            };
            let seq = last + 1;
            let record_key = format!("{}{seq:020}", keys::AUDIT);
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(keys::AUDIT_SEQ, CompareOp::Equal, mod_revision),
                    Compare::create_revision(record_key.as_str(), CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::put(keys::AUDIT_SEQ, seq.to_string(), None),
                    TxnOp::put(record_key.as_str(), value.clone(), None),
                ]);
            if client.txn(txn).await.map_err(AuditError::Etcd)?.succeeded() {
                tracing::info!(seq, action = %record.action, target = %record.target, actor = %record.actor, reason = %record.reason, "audit record written");
                return Ok(seq);
            }
        }
        Err(AuditError::Contended)
    }

    /// The newest `limit` records, newest first, with their sequence numbers.
    pub async fn recent(client: &Etcd, limit: i64) -> Result<Vec<(u64, AuditRecord)>, AuditError> {
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(limit);
        let response = client
            .get(keys::AUDIT, Some(options))
            .await
            .map_err(AuditError::Etcd)?;
        response
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let seq = key
                    .strip_prefix(keys::AUDIT)
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
                serde_json::from_slice(kv.value())
                    .map(|record| (seq, record))
                    .map_err(|source| AuditError::BadRecord { key, source })
            })
            .collect()
    }
}
