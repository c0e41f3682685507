//! The deployment journal in etcd: records, events, the active marker per
//! service and the history index.
//!
//! Every write is one transaction guarded by the caller's fences (the
//! leadership key and the deployment lock, both by create revision), so a
//! deposed coordinator's write fails instead of landing.
//!
//! A write that fails for a transient reason (etcd unavailable, no leader,
//! an attempt timed out) is retried with backoff until it lands, is fenced
//! (a compare failed: another leader or the lock is gone), or the journal's
//! write deadline passes; `next_after` decides which (pure).
//!
//! Must never: write without fences, or split one step's record and events
//! over two transactions.

use std::time::{Duration, Instant};

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use leases::{Etcd, keys};

use crate::record::{DeploymentRecord, DeploymentSummary, EventRecord};

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
    #[error(
        "write of deployment {id} did not land within {waited:?} ({attempts} attempts, each bounded by {ATTEMPT_TIMEOUT:?})"
    )]
    TimedOut {
        id: String,
        waited: Duration,
        attempts: u32,
    },
    #[error("etcd did not answer a read of {what} within {waited:?}")]
    ReadTimedOut { what: String, waited: Duration },
    #[error("{key} holds invalid data: {source}")]
    Bad {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// How long a write is retried by default: longer than an etcd leader
/// election or a member's restart, so only a real outage interrupts.
pub const DEFAULT_WRITE_DEADLINE: Duration = Duration::from_secs(30);
/// Bound on one attempt: a hung member must not hold a write forever.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Backoff between attempts: first, and most.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// Reads and fenced writes of deployments.
#[derive(Clone)]
pub struct Journal {
    client: Etcd,
    write_deadline: Duration,
}

/// Why one attempt of a write did not land.
#[derive(Debug)]
pub(crate) enum AttemptFailure {
    /// etcd answered: a compare was false.
    CompareFailed,
    /// No answer within [`ATTEMPT_TIMEOUT`]; the write may have landed.
    TimedOut,
    /// etcd or the transport failed; the write may have landed.
    Etcd(etcd_client::Error),
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    Retry,
    /// Definitively refused: this coordinator lost leadership or the lock.
    Fenced,
    /// Not worth retrying (the request itself is wrong) or out of time.
    GiveUp,
}

/// The retry decision. `elapsed` includes the backoff the retry would wait
/// first, so a retry is never started past the deadline.
pub(crate) fn next_after(failure: &AttemptFailure, elapsed: Duration, deadline: Duration) -> Next {
    let retryable = match failure {
        AttemptFailure::CompareFailed => return Next::Fenced,
        AttemptFailure::TimedOut => true,
        AttemptFailure::Etcd(err) => transient(err),
    };
    if retryable && elapsed < deadline {
        Next::Retry
    } else {
        Next::GiveUp
    }
}

/// Whether etcd or the transport may answer differently next time. etcd
/// says "no leader", "leader changed", "request timed out" and "too many
/// requests" as UNAVAILABLE / RESOURCE_EXHAUSTED; a broken connection comes
/// as a transport or IO error, or UNKNOWN/INTERNAL from h2. Refusals of the
/// request itself (bad argument, permission, auth) never change.
fn transient(err: &etcd_client::Error) -> bool {
    use tonic::Code;
    match err {
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::ResourceExhausted
                | Code::Cancelled
                | Code::Unknown
                | Code::Internal
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
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
    pub fn new(client: Etcd) -> Self {
        Self {
            client,
            write_deadline: DEFAULT_WRITE_DEADLINE,
        }
    }

    /// How long a write is retried before the caller hears it failed.
    pub fn with_write_deadline(mut self, deadline: Duration) -> Self {
        self.write_deadline = deadline;
        self
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
        let written = json(&record_key, record)?;
        let mut ops = vec![TxnOp::put(record_key.as_str(), written.clone(), None)];
        for event in events {
            let key = keys::deployment_event(&record.id, event.seq);
            ops.push(TxnOp::put(key.as_str(), json(&key, event)?, None));
        }
        let mut when = fences.to_vec();
        // Event keys are written once: a retried write whose first attempt
        // landed is then refused instead of putting them again (a watcher
        // would see the events twice). Sequence numbers come from the
        // record's `next_seq`, so no other write ever made these keys.
        if let Some(first) = events.first() {
            when.push(Compare::create_revision(
                keys::deployment_event(&record.id, first.seq),
                CompareOp::Equal,
                0,
            ));
        }
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
                let key = keys::history(&record.service, record.finished_unix_ms, &record.id);
                ops.push(TxnOp::put(
                    key.as_str(),
                    json(&key, &record.summary())?,
                    None,
                ));
            }
        }
        // On a refusal, read the record back: it tells whether an earlier
        // attempt of this very write landed (see below).
        let txn = Txn::new()
            .when(when)
            .and_then(ops)
            .or_else([TxnOp::get(record_key.as_str(), None)]);
        let started = Instant::now();
        let mut backoff = BACKOFF.0;
        let mut attempts = 0u32;
        let mut outcome_unknown = false;
        loop {
            attempts += 1;
            let attempt =
                tokio::time::timeout(ATTEMPT_TIMEOUT, self.client.clone().txn(txn.clone())).await;
            let failure = match attempt {
                Ok(Ok(response)) if response.succeeded() => return Ok(()),
                Ok(Ok(response)) => {
                    // Retrying after an unknown outcome: a landed Create
                    // (active marker now exists), Finish (lock and marker
                    // gone) or write with events (its first event key now
                    // exists) makes its own duplicate fail the compare:
                    // then the stored record being byte-for-byte ours
                    // (timestamps, token, next seq) says the first attempt
                    // landed. An Update without events changes none of its
                    // compares, so its duplicate passes them and puts the
                    // same record bytes again: harmless.
                    if landed_before(outcome_unknown, stored(&response).as_deref(), &written) {
                        tracing::info!(
                            deployment = record.id,
                            attempts,
                            "journal write had landed before its answer was lost"
                        );
                        return Ok(());
                    }
                    AttemptFailure::CompareFailed
                }
                Ok(Err(err)) => AttemptFailure::Etcd(err),
                Err(_) => AttemptFailure::TimedOut,
            };
            outcome_unknown |= !matches!(failure, AttemptFailure::CompareFailed);
            match next_after(&failure, started.elapsed() + backoff, self.write_deadline) {
                Next::Retry => {
                    tracing::warn!(
                        deployment = record.id,
                        attempts,
                        retry_in_ms = backoff.as_millis(),
                        failure = ?failure,
                        "journal write failed; retrying"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
                Next::Fenced => break,
                Next::GiveUp => {
                    return Err(match failure {
                        AttemptFailure::Etcd(source) => JournalError::Etcd {
                            what: format!("deployment {} (attempt {attempts})", record.id),
                            source,
                        },
                        AttemptFailure::TimedOut | AttemptFailure::CompareFailed => {
                            JournalError::TimedOut {
                                id: record.id.clone(),
                                waited: started.elapsed(),
                                attempts,
                            }
                        }
                    });
                }
            }
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
        let client = self.client.clone();
        let response = read(&key, client.get(key.as_str(), None)).await?;
        response
            .kvs()
            .first()
            .map(|kv| parse(&key, kv.value()))
            .transpose()
    }

    /// The id of `service`'s active deployment.
    pub async fn active_of(&self, service: &str) -> Result<Option<String>, JournalError> {
        let key = keys::active(service);
        let client = self.client.clone();
        let response = read(&key, client.get(key.as_str(), None)).await?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Every active deployment id.
    pub async fn active(&self) -> Result<Vec<String>, JournalError> {
        let client = self.client.clone();
        let response = read(
            keys::ACTIVE,
            client.get(keys::ACTIVE, Some(GetOptions::new().with_prefix())),
        )
        .await?;
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
        let client = self.client.clone();
        let response = read(
            &prefix,
            client.get(
                start.as_str(),
                Some(GetOptions::new().with_range(end.as_str())),
            ),
        )
        .await?;
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
    ) -> Result<Vec<(u64, DeploymentSummary)>, JournalError> {
        let prefix = keys::history_of(service);
        let client = self.client.clone();
        let response = read(
            &prefix,
            client.get(
                prefix.as_str(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Key, SortOrder::Descend)
                        .with_limit(i64::try_from(limit).unwrap_or(i64::MAX)),
                ),
            ),
        )
        .await?;
        let mut out = Vec::new();
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if let Some(summary) = self.summary_at(&key, kv.value()).await? {
                out.push((u64::try_from(kv.mod_revision()).unwrap_or(0), summary));
            }
        }
        Ok(out)
    }

    /// A history key's summary: its value, or, for a deployment finished
    /// before summaries were kept there (the value is its id), its record's.
    async fn summary_at(
        &self,
        key: &str,
        value: &[u8],
    ) -> Result<Option<DeploymentSummary>, JournalError> {
        if value.starts_with(b"{") {
            return parse(key, value).map(Some);
        }
        let id = String::from_utf8_lossy(value).into_owned();
        Ok(self.load(&id).await?.map(|record| record.summary()))
    }

    /// Prunes finished deployments past `retention`: each one's record and
    /// events are deleted, its history key keeps its summary; the newest
    /// `keep` of each service are kept whole. At most [`PRUNE_BATCH`] per
    /// call; fenced by `fence` (the leadership). Returns how many it pruned.
    pub async fn prune(
        &self,
        fence: &Compare,
        now_unix_ms: i64,
        retention: &Retention,
    ) -> Result<usize, JournalError> {
        let prefix = keys::HISTORY;
        let response = read(
            prefix,
            self.client.clone().get(
                prefix,
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
        )
        .await?;
        let keys: Vec<String> = response
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect();
        let due = prunable(&keys, now_unix_ms, retention);
        let mut pruned = 0;
        for entry in due.into_iter().take(PRUNE_BATCH) {
            if self.prune_one(fence, &entry).await? {
                pruned += 1;
            }
        }
        Ok(pruned)
    }

    /// Prunes one deployment; whether its record was still there.
    async fn prune_one(&self, fence: &Compare, entry: &HistoryKey) -> Result<bool, JournalError> {
        let stored = read(
            &entry.key,
            self.client.clone().get(entry.key.as_str(), None),
        )
        .await?;
        let Some(kv) = stored.kvs().first() else {
            return Ok(false);
        };
        let record = self.load(&entry.id).await?;
        let summary = match (&record, self.summary_at(&entry.key, kv.value()).await?) {
            (_, Some(summary)) => summary,
            (None, None) => return Ok(false),
            (Some(record), None) => record.summary(),
        };
        let events = keys::deployment_events(&entry.id);
        let txn = Txn::new()
            .when([
                fence.clone(),
                Compare::mod_revision(entry.key.as_str(), CompareOp::Equal, kv.mod_revision()),
            ])
            .and_then([
                TxnOp::put(entry.key.as_str(), json(&entry.key, &summary)?, None),
                TxnOp::delete(keys::deployment(&entry.id), None),
                TxnOp::delete(events.as_str(), Some(DeleteOptions::new().with_prefix())),
            ]);
        let response = read(&entry.key, self.client.clone().txn(txn)).await?;
        if !response.succeeded() {
            return Err(JournalError::Fenced {
                id: entry.id.clone(),
            });
        }
        tracing::info!(
            deployment = entry.id,
            service = entry.service,
            "pruned a finished deployment: its summary stays in history"
        );
        Ok(record.is_some())
    }

    pub fn client(&self) -> &Etcd {
        &self.client
    }
}

/// Most deployments one prune pass removes: a pass stays short however
/// much history piled up; the next pass goes on.
pub const PRUNE_BATCH: usize = 100;

/// How long finished deployments stay whole (`[history]` in
/// coordinator.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Finished longer ago than this, a deployment is pruned…
    pub after: Duration,
    /// …unless it is among its service's newest `keep`.
    pub keep: usize,
}

/// 30 days, and the last 20 of every service.
impl Default for Retention {
    fn default() -> Self {
        Self {
            after: Duration::from_secs(30 * 24 * 3600),
            keep: 20,
        }
    }
}

/// One history key, parsed: `history/<service>/<finished ms:016>-<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryKey {
    pub key: String,
    pub service: String,
    pub finished_unix_ms: i64,
    pub id: String,
}

impl HistoryKey {
    pub fn parse(key: &str) -> Option<Self> {
        let rest = key.strip_prefix(keys::HISTORY)?;
        let (service, tail) = rest.split_once('/')?;
        let (finished, id) = tail.split_once('-')?;
        Some(Self {
            key: key.to_owned(),
            service: service.to_owned(),
            finished_unix_ms: finished.parse().ok()?,
            id: id.to_owned(),
        })
    }
}

/// The history entries to prune (pure): finished before `now - after` and
/// not among their service's newest `keep`, oldest first.
pub fn prunable(
    history_keys: &[String],
    now_unix_ms: i64,
    retention: &Retention,
) -> Vec<HistoryKey> {
    let cutoff =
        now_unix_ms.saturating_sub(i64::try_from(retention.after.as_millis()).unwrap_or(i64::MAX));
    let mut by_service: std::collections::BTreeMap<String, Vec<HistoryKey>> = Default::default();
    for entry in history_keys.iter().filter_map(|k| HistoryKey::parse(k)) {
        by_service
            .entry(entry.service.clone())
            .or_default()
            .push(entry);
    }
    let mut due: Vec<HistoryKey> = by_service
        .into_values()
        .flat_map(|mut entries| {
            entries.sort_by_key(|e| std::cmp::Reverse(e.finished_unix_ms));
            entries
                .into_iter()
                .skip(retention.keep)
                .filter(|e| e.finished_unix_ms < cutoff)
        })
        .collect();
    due.sort_by_key(|e| e.finished_unix_ms);
    due
}

/// Bound on one read: a hung member must not hold a reader (a resuming
/// leader, an operator's call) forever; callers retry or report it.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// One read of `what`, bounded by [`READ_TIMEOUT`].
async fn read<T>(
    what: impl std::fmt::Display,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, JournalError> {
    match tokio::time::timeout(READ_TIMEOUT, request).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(source)) => Err(JournalError::Etcd {
            what: what.to_string(),
            source,
        }),
        Err(_) => Err(JournalError::ReadTimedOut {
            what: what.to_string(),
            waited: READ_TIMEOUT,
        }),
    }
}

/// Whether a refused attempt is the duplicate of an earlier attempt of the
/// same write that landed (see `write`). Another leader's record differs
/// at least in its token and timestamps.
fn landed_before(outcome_unknown: bool, stored: Option<&[u8]>, written: &[u8]) -> bool {
    outcome_unknown && stored == Some(written)
}

/// The record a refused write read back in its `or_else`.
fn stored(response: &etcd_client::TxnResponse) -> Option<Vec<u8>> {
    response.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
        _ => None,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn history_key(service: &str, finished: i64, id: &str) -> String {
        keys::history(service, finished, id)
    }

    #[test]
    fn a_history_key_parses_back_into_its_parts() {
        let key = history_key("web-api", 1_709_210_096_000, "web-api-1709210096000-3f2a");
        let parsed = HistoryKey::parse(&key).unwrap();
        assert_eq!(parsed.service, "web-api");
        assert_eq!(parsed.finished_unix_ms, 1_709_210_096_000);
        assert_eq!(parsed.id, "web-api-1709210096000-3f2a");
        assert_eq!(
            HistoryKey::parse("/lockstep/v1/history/web/not-a-time"),
            None
        );
    }

    #[test]
    fn only_deployments_past_retention_beyond_each_services_newest_are_pruned() {
        let day = 24 * 3600 * 1000;
        let now = 100 * day;
        let keys: Vec<String> = [
            ("web", 10 * day, "w1"),
            ("web", 20 * day, "w2"),
            ("web", 95 * day, "w3"),
            ("api", 5 * day, "a1"),
            ("api", 6 * day, "a2"),
        ]
        .iter()
        .map(|(s, t, id)| history_key(s, *t, id))
        .collect();
        let retention = Retention {
            after: Duration::from_secs(30 * 24 * 3600),
            keep: 1,
        };
        let due: Vec<String> = prunable(&keys, now, &retention)
            .into_iter()
            .map(|e| e.id)
            .collect();
        // web keeps w3 (newest, and recent anyway); api keeps a2 (newest),
        // old as it is. Oldest first.
        assert_eq!(due, ["a1", "w1", "w2"]);
        let keep_all = Retention {
            keep: 3,
            ..retention
        };
        assert!(prunable(&keys, now, &keep_all).is_empty());
        let recent = Retention {
            after: Duration::from_secs(200 * 24 * 3600),
            keep: 0,
        };
        assert!(prunable(&keys, now, &recent).is_empty());
    }

    const DEADLINE: Duration = Duration::from_secs(30);
    const EARLY: Duration = Duration::from_secs(1);

    fn status(code: tonic::Code) -> AttemptFailure {
        AttemptFailure::Etcd(etcd_client::Error::GRpcStatus(tonic::Status::new(
            code,
            "etcd says",
        )))
    }

    /// #18 item 3: one transient etcd error must not interrupt a deployment.
    #[test]
    fn transient_failures_are_retried_until_the_deadline() {
        for failure in [
            AttemptFailure::TimedOut,
            status(tonic::Code::Unavailable),
            status(tonic::Code::DeadlineExceeded),
            status(tonic::Code::ResourceExhausted),
            status(tonic::Code::Unknown),
            AttemptFailure::Etcd(etcd_client::Error::IoError(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            ))),
        ] {
            assert_eq!(
                next_after(&failure, EARLY, DEADLINE),
                Next::Retry,
                "{failure:?}"
            );
            assert_eq!(
                next_after(&failure, DEADLINE, DEADLINE),
                Next::GiveUp,
                "{failure:?}"
            );
        }
    }

    /// A false compare is another leader or a lost lock: never retried,
    /// however early.
    #[test]
    fn a_failed_compare_is_fenced_at_once() {
        assert_eq!(
            next_after(&AttemptFailure::CompareFailed, Duration::ZERO, DEADLINE),
            Next::Fenced
        );
        assert_eq!(
            next_after(&AttemptFailure::CompareFailed, DEADLINE * 2, DEADLINE),
            Next::Fenced
        );
    }

    /// A request etcd refuses as such is refused the same way next time.
    #[test]
    fn refusals_of_the_request_itself_give_up_at_once() {
        for failure in [
            status(tonic::Code::InvalidArgument),
            status(tonic::Code::PermissionDenied),
            status(tonic::Code::Unauthenticated),
            status(tonic::Code::FailedPrecondition),
            AttemptFailure::Etcd(etcd_client::Error::InvalidArgs("bad".to_owned())),
        ] {
            assert_eq!(
                next_after(&failure, EARLY, DEADLINE),
                Next::GiveUp,
                "{failure:?}"
            );
        }
    }

    /// The hazard of retrying after an unknown outcome: a Create, Finish
    /// or write with events that landed makes its own duplicate fail the
    /// compare; the record read back being exactly ours says it landed.
    /// Anything else (no earlier unknown outcome, another leader's record,
    /// none at all) is a real refusal.
    #[test]
    fn a_refused_duplicate_counts_as_landed_only_when_the_record_is_ours() {
        let ours: &[u8] = b"{\"id\":\"d-1\",\"token\":7,\"next_seq\":7}";
        let theirs: &[u8] = b"{\"id\":\"d-1\",\"token\":9,\"next_seq\":7}";
        assert!(landed_before(true, Some(ours), ours));
        assert!(!landed_before(false, Some(ours), ours));
        assert!(!landed_before(true, Some(theirs), ours));
        assert!(!landed_before(true, None, ours));
    }
}
