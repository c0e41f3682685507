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
//! The layout (header, step log, snapshots, event pages) and every
//! decision about it are `step_log.rs` (pure); this module carries the
//! planned transactions out and reads them back.
//!
//! Must never: write without fences, put a step's header and its entry in
//! two transactions, or act on a step (the caller) before its events are
//! all written.

use std::time::{Duration, Instant};

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use leases::{Etcd, keys};

use crate::record::{
    DeploymentHeader, DeploymentRecord, DeploymentSummary, EventRecord, RECORD_FORMAT,
};
use crate::step_log::{self, Guard, Op, StepEntry, TxnPlan};
use crate::telemetry::CoordinatorMetrics;

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
    #[error(
        "{key} was written in record format {format}, newer than this coordinator's ({RECORD_FORMAT}): upgrade this coordinator"
    )]
    NewerFormat { key: String, format: u32 },
    #[error("the journal of deployment {id} cannot be rebuilt: {source}")]
    Rebuild {
        id: String,
        #[source]
        source: step_log::RebuildError,
    },
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
    metrics: Option<CoordinatorMetrics>,
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
        // etcd's own rules (leases::may_succeed_later): a request over
        // gRPC's size limit or etcd's operation limit is refused the same
        // way every time, so it is not retried for the whole deadline.
        AttemptFailure::Etcd(err) => leases::may_succeed_later(err),
    };
    if retryable && elapsed < deadline {
        Next::Retry
    } else {
        Next::GiveUp
    }
}

/// A deployment read back whole: its record (engine included) and the
/// events of its last step, whose further pages a resuming driver writes
/// again if a crash left them out.
#[derive(Debug)]
pub struct Loaded {
    pub record: DeploymentRecord,
    pub last_events: Vec<EventRecord>,
}

/// Keys read per request when a range may be large (snapshot chunks of
/// 64 KiB, step entries, event pages): a response stays a few MiB.
const RANGE_PAGE: i64 = 32;

impl Journal {
    pub fn new(client: Etcd) -> Self {
        Self {
            client,
            write_deadline: DEFAULT_WRITE_DEADLINE,
            metrics: None,
        }
    }

    /// How long a write is retried before the caller hears it failed.
    pub fn with_write_deadline(mut self, deadline: Duration) -> Self {
        self.write_deadline = deadline;
        self
    }

    /// Where each transaction's size is observed
    /// (`lockstep_journal_txn_bytes`).
    pub fn with_metrics(mut self, metrics: CoordinatorMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Writes a new deployment: its first snapshot, then its header with
    /// the service's active marker, which must not exist yet.
    pub async fn create(
        &self,
        fences: &[Compare],
        record: &mut DeploymentRecord,
    ) -> Result<(), JournalError> {
        let id = record.id.clone();
        let (chunks, create) = step_log::plan_create(record).map_err(|source| bad(&id, source))?;
        for chunk in &chunks {
            self.commit(&id, fences, chunk, None).await?;
        }
        let created = self.commit(&id, fences, &create, None).await;
        if created.is_err() {
            self.forget_chunks(fences, &id).await;
        }
        match created {
            Err(JournalError::Fenced { .. }) => {
                if let Some(active) = self.active_of(&record.service).await? {
                    return Err(JournalError::AlreadyActive {
                        service: record.service.clone(),
                        id: active,
                    });
                }
                Err(JournalError::Fenced { id })
            }
            other => other,
        }
    }

    /// Deletes what a create that did not land left under the
    /// deployment's own prefix (its snapshot), if `fences` still hold. Best
    /// effort: the keys name no active deployment and a prune of the id
    /// would delete them too.
    async fn forget_chunks(&self, fences: &[Compare], id: &str) {
        let txn = Txn::new().when(fences.to_vec()).and_then([TxnOp::delete(
            keys::deployment_dir(id),
            Some(DeleteOptions::new().with_prefix()),
        )]);
        if let Err(err) = read(id, self.client.clone().txn(txn)).await {
            tracing::warn!(deployment = id, error = %err, "cannot delete the snapshot of a deployment that was not created; it stays until pruned");
        }
    }

    /// Persists one step (after `DeploymentRecord::advance`): the commit
    /// under `fences`, then the step's further event pages under
    /// `page_fences` (the leadership alone: a finishing commit has deleted
    /// the lock). `release`, when given, is deleted in the commit (guarded
    /// by its own fence): a finished deployment and its freed lock are one
    /// change. Moves `record.log` past the step.
    pub async fn append(
        &self,
        fences: &[Compare],
        page_fences: &[Compare],
        record: &mut DeploymentRecord,
        step: (&StepEntry, &[EventRecord]),
        finish: bool,
        release: Option<&leases::MutexGuard>,
    ) -> Result<(), JournalError> {
        let id = record.id.clone();
        let (entry, events) = step;
        let (commit, pages) = step_log::plan_step(record, entry, events, finish)
            .map_err(|source| bad(&id, source))?;
        self.commit(&id, fences, &commit, release).await?;
        for page in &pages {
            self.commit(&id, page_fences, page, None).await?;
        }
        Ok(())
    }

    /// Writes a snapshot of the record as it stands and switches the
    /// header to it; the older snapshot and the steps it covered go.
    pub async fn snapshot(
        &self,
        fences: &[Compare],
        record: &mut DeploymentRecord,
    ) -> Result<(), JournalError> {
        let id = record.id.clone();
        let (chunks, switch) =
            step_log::plan_snapshot(record).map_err(|source| bad(&id, source))?;
        for chunk in &chunks {
            self.commit(&id, fences, chunk, None).await?;
        }
        self.commit(&id, fences, &switch, None).await?;
        tracing::info!(
            deployment = id,
            generation = record.log.generation,
            bytes = record.log.snapshot_bytes,
            chunks = record.log.chunks,
            "journal snapshot written"
        );
        Ok(())
    }

    /// Writes whichever further pages of the last step's events are
    /// missing (a driver stopped between a step's commit and its pages).
    pub async fn complete_pages(
        &self,
        page_fences: &[Compare],
        id: &str,
        events: &[EventRecord],
    ) -> Result<(), JournalError> {
        let pages = step_log::further_pages(id, events).map_err(|source| bad(id, source))?;
        for page in &pages {
            self.commit(id, page_fences, page, None).await?;
        }
        Ok(())
    }

    /// Completes a finished deployment still marked active (its leader
    /// stopped between the finishing step's commit and its further pages):
    /// the missing pages, the last clearing the marker.
    pub async fn finish_pages(
        &self,
        page_fences: &[Compare],
        id: &str,
        service: &str,
        events: &[EventRecord],
    ) -> Result<(), JournalError> {
        let txns = step_log::finish_pages(id, service, events).map_err(|source| bad(id, source))?;
        for txn in &txns {
            self.commit(id, page_fences, txn, None).await?;
        }
        Ok(())
    }

    /// Carries out one planned transaction under `fences`, retrying until
    /// it lands, is fenced or the write deadline passes.
    async fn commit(
        &self,
        id: &str,
        fences: &[Compare],
        plan: &TxnPlan,
        release: Option<&leases::MutexGuard>,
    ) -> Result<(), JournalError> {
        let txn = txn_of(fences, plan, release);
        if let Some(metrics) = &self.metrics {
            metrics.journal_txn(plan.bytes());
        }
        let written = plan.read_back.as_ref().map(|(_, v)| v.as_slice());
        let started = Instant::now();
        let mut backoff = BACKOFF.0;
        let mut attempts = 0u32;
        let mut outcome_unknown = plan.same_means_landed;
        loop {
            attempts += 1;
            let attempt =
                tokio::time::timeout(ATTEMPT_TIMEOUT, self.client.clone().txn(txn.clone())).await;
            let failure = match attempt {
                Ok(Ok(response)) if response.succeeded() => return Ok(()),
                Ok(Ok(response)) => {
                    // Retrying after an unknown outcome: a landed commit
                    // (its step key now exists), create (the active marker
                    // exists) or page (its key exists) makes its own
                    // duplicate fail the compare: then the key read back
                    // being byte-for-byte ours (a header names its token,
                    // next step and next seq) says the first attempt
                    // landed. A snapshot chunk or switch changes none of
                    // its compares, so its duplicate puts the same bytes
                    // again: harmless.
                    if landed_before(outcome_unknown, stored(&response).as_deref(), written) {
                        tracing::info!(
                            deployment = id,
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
                        deployment = id,
                        attempts,
                        retry_in_ms = backoff.as_millis(),
                        failure = ?failure,
                        "journal write failed; retrying"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
                Next::Fenced => return Err(JournalError::Fenced { id: id.to_owned() }),
                Next::GiveUp => {
                    return Err(match failure {
                        AttemptFailure::Etcd(source) => JournalError::Etcd {
                            what: format!("deployment {id} (attempt {attempts})"),
                            source,
                        },
                        AttemptFailure::TimedOut | AttemptFailure::CompareFailed => {
                            JournalError::TimedOut {
                                id: id.to_owned(),
                                waited: started.elapsed(),
                                attempts,
                            }
                        }
                    });
                }
            }
        }
    }

    /// The deployment `id` whole: its header, snapshot and the steps after
    /// it replayed (all read at the header's revision), or a format-1
    /// record as it was stored. For a resuming driver; status reads use
    /// [`Journal::header`].
    pub async fn load(&self, id: &str) -> Result<Option<Loaded>, JournalError> {
        let key = keys::deployment(id);
        let response = read(&key, self.client.clone().get(key.as_str(), None)).await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let Some(kv) = response.kvs().first() else {
            return Ok(None);
        };
        let header = match stored_format(&key, kv.value())? {
            1 => {
                return Ok(Some(Loaded {
                    record: parse(&key, kv.value())?,
                    last_events: Vec::new(),
                }));
            }
            _ => parse::<DeploymentHeader>(&key, kv.value())?,
        };
        let log = &header.log;
        let chunks = self
            .range(
                keys::deployment_snapshot(id, log.generation),
                format!(
                    "{}\u{10ffff}",
                    keys::deployment_snapshot(id, log.generation)
                ),
                revision,
            )
            .await?;
        let chunks: Vec<Vec<u8>> = chunks.into_iter().map(|(_, v)| v).collect();
        let steps = self
            .range(
                keys::deployment_step(id, log.first_step),
                keys::deployment_step(id, log.next_step),
                revision,
            )
            .await?
            .into_iter()
            .map(|(k, v)| (step_log::step_number(&k).unwrap_or(0), v))
            .collect::<Vec<_>>();
        let (record, last_events) =
            step_log::rebuild(&header, &chunks, &steps).map_err(|source| {
                JournalError::Rebuild {
                    id: id.to_owned(),
                    source,
                }
            })?;
        Ok(Some(Loaded {
            record,
            last_events,
        }))
    }

    /// What status needs of deployment `id`: its header key (format 2),
    /// or the header of a format-1 record.
    pub async fn header(&self, id: &str) -> Result<Option<DeploymentHeader>, JournalError> {
        let key = keys::deployment(id);
        let response = read(&key, self.client.clone().get(key.as_str(), None)).await?;
        let Some(kv) = response.kvs().first() else {
            return Ok(None);
        };
        match stored_format(&key, kv.value())? {
            1 => Ok(Some(parse::<DeploymentRecord>(&key, kv.value())?.header())),
            _ => parse(&key, kv.value()).map(Some),
        }
    }

    /// Every key and value in `[from, to)` at `revision`, read
    /// [`RANGE_PAGE`] keys at a time.
    async fn range(
        &self,
        from: String,
        to: String,
        revision: i64,
    ) -> Result<Vec<(String, Vec<u8>)>, JournalError> {
        let mut out = Vec::new();
        let mut cursor = from;
        loop {
            let mut options = GetOptions::new()
                .with_range(to.as_str())
                .with_limit(RANGE_PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let response = read(
                &cursor,
                self.client.clone().get(cursor.as_str(), Some(options)),
            )
            .await?;
            for kv in response.kvs() {
                out.push((
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                ));
            }
            match (response.more(), out.last()) {
                (true, Some((last, _))) => cursor = format!("{last}\0"),
                _ => return Ok(out),
            }
        }
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
    /// (watch from the next one for later events). Reads from the page
    /// holding `from_seq` (format 2 keeps a step's events in pages keyed by
    /// their first seq; format 1 one event a key).
    pub async fn events(
        &self,
        id: &str,
        from_seq: u64,
    ) -> Result<(Vec<EventRecord>, i64), JournalError> {
        let prefix = keys::deployment_events(id);
        let start = keys::deployment_event(id, from_seq);
        let holding = read(
            &prefix,
            self.client.clone().get(
                prefix.as_str(),
                Some(
                    GetOptions::new()
                        .with_range(format!("{start}\0"))
                        .with_sort(SortTarget::Key, SortOrder::Descend)
                        .with_limit(1)
                        .with_keys_only(),
                ),
            ),
        )
        .await?;
        let revision = holding.header().map_or(0, |h| h.revision());
        let first = holding
            .kvs()
            .first()
            .map_or(start, |kv| String::from_utf8_lossy(kv.key()).into_owned());
        let mut events = Vec::new();
        for (key, value) in self
            .range(first, format!("{prefix}\u{10ffff}"), revision)
            .await?
        {
            let page =
                step_log::events_in(&value).map_err(|source| JournalError::Bad { key, source })?;
            events.extend(page.into_iter().filter(|e| e.seq >= from_seq));
        }
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
        Ok(self.header(&id).await?.map(|header| header.summary()))
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
        // A history key is written once when its deployment finishes and
        // once more when it is pruned (the summary put again): version 1
        // is a deployment still whole. Taken by key alone, the oldest
        // PRUNE_BATCH past retention were all pruned ones once that many
        // had been, and every pass wrote them again instead of reaching
        // the rest.
        let keys: Vec<String> = response
            .kvs()
            .iter()
            .filter(|kv| kv.version() == 1)
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
        // No record left: pruned already (by a pass that raced this one).
        let Some(header) = self.header(&entry.id).await? else {
            return Ok(false);
        };
        // Still its service's active deployment: its finishing step's
        // further pages are not all written (the marker goes with the
        // last), and a leader resuming it writes them. Pruned now, those
        // pages would be written after, orphans of a pruned record.
        let active = keys::active(&entry.service);
        let marker = read(&active, self.client.clone().get(active.as_str(), None)).await?;
        let marker = marker.kvs().first();
        if marker.is_some_and(|kv| kv.value() == entry.id.as_bytes()) {
            return Ok(false);
        }
        let marker_revision = marker.map_or(0, |kv| kv.mod_revision());
        let summary = match self.summary_at(&entry.key, kv.value()).await? {
            Some(summary) => summary,
            None => header.summary(),
        };
        let events = keys::deployment_events(&entry.id);
        let txn = Txn::new()
            .when([
                fence.clone(),
                Compare::mod_revision(entry.key.as_str(), CompareOp::Equal, kv.mod_revision()),
                Compare::mod_revision(active.as_str(), CompareOp::Equal, marker_revision),
            ])
            .and_then([
                TxnOp::put(entry.key.as_str(), json(&entry.key, &summary)?, None),
                TxnOp::delete(keys::deployment(&entry.id), None),
                TxnOp::delete(
                    keys::deployment_dir(&entry.id),
                    Some(DeleteOptions::new().with_prefix()),
                ),
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
        Ok(true)
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

/// The etcd transaction of a plan under `fences`; finishing, with the
/// lock's fence and delete; reading back the plan's key when refused.
fn txn_of(fences: &[Compare], plan: &TxnPlan, release: Option<&leases::MutexGuard>) -> Txn {
    let mut when = fences.to_vec();
    let mut ops = Vec::with_capacity(plan.ops.len() + 1);
    for guard in &plan.guards {
        when.push(match guard {
            Guard::Absent(key) => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            Guard::ValueIs(key, value) => {
                Compare::value(key.as_str(), CompareOp::Equal, value.clone())
            }
        });
    }
    for op in &plan.ops {
        ops.push(match op {
            Op::Put(key, value) => TxnOp::put(key.as_str(), value.clone(), None),
            Op::Delete(key) => TxnOp::delete(key.as_str(), None),
            Op::DeleteRange(from, to) => TxnOp::delete(
                from.as_str(),
                Some(DeleteOptions::new().with_range(to.as_str())),
            ),
        });
    }
    if let Some(lock) = release {
        when.push(lock.fence());
        ops.push(TxnOp::delete(lock.key(), None));
    }
    let txn = Txn::new().when(when).and_then(ops);
    match &plan.read_back {
        Some((key, _)) => txn.or_else([TxnOp::get(key.as_str(), None)]),
        None => txn,
    }
}

/// Whether a refused attempt is the duplicate of an earlier attempt of the
/// same write that landed (see `commit`). Another leader's header differs
/// at least in its token.
fn landed_before(outcome_unknown: bool, stored: Option<&[u8]>, written: Option<&[u8]>) -> bool {
    outcome_unknown && written.is_some() && stored == written
}

/// The record format a deployment key holds (records without the field
/// are format 1); a newer one than this build's is refused by name.
fn stored_format(key: &str, value: &[u8]) -> Result<u32, JournalError> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default)]
        format: Option<u32>,
    }
    let format = parse::<Probe>(key, value)?.format.unwrap_or(1);
    if format > RECORD_FORMAT {
        return Err(JournalError::NewerFormat {
            key: key.to_owned(),
            format,
        });
    }
    Ok(format)
}

fn bad(id: &str, source: serde_json::Error) -> JournalError {
    JournalError::Bad {
        key: keys::deployment(id),
        source,
    }
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
            // Noticed in #15: a transaction over gRPC's size limit was
            // retried for the whole write deadline, then again on resume.
            AttemptFailure::Etcd(etcd_client::Error::GRpcStatus(tonic::Status::new(
                tonic::Code::ResourceExhausted,
                "grpc: received message larger than max (2490747 vs. 2097152)",
            ))),
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
        assert!(landed_before(true, Some(ours), Some(ours)));
        assert!(!landed_before(false, Some(ours), Some(ours)));
        assert!(!landed_before(true, Some(theirs), Some(ours)));
        assert!(!landed_before(true, None, Some(ours)));
        assert!(!landed_before(true, None, None));
    }
}
