//! How a deployment's journal is laid out in etcd (record format 2), and
//! every decision about it, pure: what one step changes in the record,
//! which transactions persist it, when a snapshot is due, how a record is
//! rebuilt from a snapshot and the steps after it.
//!
//! ```text
//! deployments/<id>                        header (DeploymentHeader): status, counts per cluster, LogPosition
//! deployments/<id>/snapshot/<gen>/<k>     the whole record (engine included) before step `first_step`, ≤ 64 KiB a chunk
//! deployments/<id>/steps/<n>              StepEntry n: the engine's input and the driver's notes, written once
//! deployment-events/<id>/<first seq>      a page of one step's events (≤ 60 KiB, ≤ 512 events)
//!
//! step:     [fences, steps/<n> absent, active = id]  put header, put steps/<n>, put first page  (+ finish: history, lock; active unless further pages)
//!           then each further page of that step       [leadership, page absent]  put page  (finishing, the last: [active = id] delete active)
//! snapshot: each chunk                                [fences]  put chunk
//!           then the switch                           [fences, active = id]  put header, delete older generations and the steps they cover
//! resume:   header → chunks of its generation → replay steps first_step..next_step through `advance`
//! ```
//!
//! `DeploymentRecord::advance` is the one place a step changes a record:
//! the driver calls it live and `replay` calls it on resume, so the two
//! cannot diverge. A step's events are a function of the record and the
//! entry, so pages missing after a crash between a step's transactions are
//! written again, identical, by whoever resumes it.
//!
//! Must never: read a clock or etcd, or plan a transaction whose size or
//! operation count grows with the fleet.

use rollout::{Action, Event, InstanceId, Millis, Notice, Verdict};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::record::{
    DeploymentHeader, DeploymentRecord, EventKind, EventRecord, Happening, RECORD_FORMAT, listed,
};
use leases::keys;

/// Largest snapshot chunk: one chunk per transaction.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Largest page of events (its JSON), and most events in one page.
pub const PAGE_BYTES: usize = 60 * 1024;
pub const PAGE_EVENTS: usize = 512;
/// Longest text kept from an agent, a check or an analysis (detail,
/// message): a step's entry and each event stay small whatever they say.
pub const MAX_TEXT: usize = 4096;
/// The step log is never snapshotted below this, so a small deployment is
/// not snapshotted every few steps.
pub const MIN_LOG_BEFORE_SNAPSHOT: u64 = 64 * 1024;
/// The issue's bound on one transaction, and etcd's default
/// `--max-txn-ops`.
pub const TXN_BYTES_GOAL: usize = 128 * 1024;
pub const TXN_OPS_LIMIT: usize = 128;
/// What a caller's fence (leadership, deployment lock, and the lock's own
/// delete on finish) may add to a transaction: a key and a revision,
/// counted generously.
const FENCE_BYTES: usize = 256;
const FENCES: usize = 3;
/// Protobuf framing of one compare or op (tags, lengths, revision): an
/// upper bound.
const FRAMING_BYTES: usize = 32;

/// Where a deployment's journal stands: the snapshot that holds the record
/// before step `first_step`, and the steps after it. Generation 0 means no
/// snapshot yet (a format-1 record, until its first format-2 write).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPosition {
    pub generation: u64,
    pub chunks: u32,
    pub snapshot_bytes: u64,
    /// Hex SHA-256 of the snapshot's bytes: a torn or mixed snapshot is
    /// refused by name instead of read as something else.
    pub snapshot_sha256: String,
    pub first_step: u64,
    pub next_step: u64,
    /// Bytes of the step entries since the snapshot.
    pub log_bytes: u64,
}

/// One step as the log keeps it: enough to redo it through `advance`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepEntry {
    /// The wall clock of the step: the engine's `now`, the events' time.
    pub at_unix_ms: i64,
    /// The engine's input; none for a step of driver notes alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Event>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<Happening>,
    /// An operator command's "who: why".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub said: Option<String>,
    /// Further inputs of the same moment, fed after `event` in order, each
    /// with its `driver_notes`: readinesses observed together are one
    /// step and one commit, not one each (at most [`MAX_TOGETHER`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<Event>,
}

/// Inputs one step may carry: its entry stays a few KiB whatever the batch.
pub const MAX_TOGETHER: usize = 32;

impl StepEntry {
    /// Steps for `events` observed at one moment, [`MAX_TOGETHER`] each.
    pub fn together(at_unix_ms: i64, events: Vec<Event>) -> Vec<Self> {
        let mut steps = Vec::new();
        let mut events = events.into_iter();
        while let Some(first) = events.next() {
            let notes = driver_notes(&first);
            let mut step = Self::new(at_unix_ms, Some(first), notes, None);
            step.more = events
                .by_ref()
                .take(MAX_TOGETHER - 1)
                .map(bounded_event)
                .collect();
            steps.push(step);
        }
        steps
    }

    /// A step, with every free text cut to [`MAX_TEXT`].
    pub fn new(
        at_unix_ms: i64,
        event: Option<Event>,
        notes: Vec<Happening>,
        said: Option<String>,
    ) -> Self {
        Self {
            at_unix_ms,
            event: event.map(bounded_event),
            notes: notes
                .into_iter()
                .map(|mut n| {
                    cut(&mut n.message);
                    n
                })
                .collect(),
            said: said.map(|mut s| {
                cut(&mut s);
                s
            }),
            more: Vec::new(),
        }
    }
}

/// The steps the driver makes of a recorded run's engine inputs (a
/// simulation's): readinesses of one moment together, as `observe`
/// groups what one look at the fleet finds; every other input alone. For
/// the journal's size tests and bench.
pub fn steps_of(inputs: &[(Millis, Event)]) -> Vec<StepEntry> {
    let at = |now: &Millis| i64::try_from(now.0).unwrap_or(i64::MAX);
    let mut steps = Vec::new();
    let mut ready: Vec<Event> = Vec::new();
    let mut ready_at = 0;
    for (now, event) in inputs {
        let groups = matches!(event, Event::InstanceReady { .. });
        if !ready.is_empty() && (!groups || at(now) != ready_at) {
            steps.extend(StepEntry::together(ready_at, std::mem::take(&mut ready)));
        }
        if groups {
            ready_at = at(now);
            ready.push(event.clone());
        } else {
            steps.push(StepEntry::new(
                at(now),
                Some(event.clone()),
                driver_notes(event),
                None,
            ));
        }
    }
    steps.extend(StepEntry::together(ready_at, ready));
    steps
}

/// Cuts `text` to [`MAX_TEXT`] bytes at a character boundary, saying so.
fn cut(text: &mut String) {
    if text.len() <= MAX_TEXT {
        return;
    }
    let mut end = MAX_TEXT - 16;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(" …(cut)");
}

fn bounded_event(mut event: Event) -> Event {
    match &mut event {
        Event::InstanceFailed { detail, .. }
        | Event::InstanceUnhealthy { detail, .. }
        | Event::CheckFailed { detail, .. } => cut(detail),
        Event::AnalysisDone {
            verdict: Verdict::Failed(detail) | Verdict::Inconclusive(detail),
            ..
        } => cut(detail),
        _ => {}
    }
    event
}

/// What one step did.
#[derive(Debug, Clone)]
pub struct Advanced {
    pub actions: Vec<Action>,
    /// The step's events, numbered from the record's `next_seq`.
    pub events: Vec<EventRecord>,
    /// The engine finished: the step is the deployment's last write.
    pub finish: bool,
    /// The engine ignored an operator's command: why.
    pub ignored: Option<String>,
    /// The engine was fenced off: nothing of this step may be persisted.
    pub stepped_down: bool,
}

impl DeploymentRecord {
    /// Does one step: notes the instance the event is about, feeds the
    /// event to the engine, and turns its actions and the driver's notes
    /// into numbered events. The live driver and `replay` both come here.
    pub fn advance(&mut self, entry: &StepEntry) -> Advanced {
        if let Some(event) = &entry.event {
            self.note_event(event);
        }
        let before = entry
            .said
            .clone()
            .map(|said| std::mem::replace(&mut self.operator_said, said));
        let now = Millis(u64::try_from(entry.at_unix_ms).unwrap_or(0));
        let mut actions = match &entry.event {
            Some(event) => self.engine.step(now, event.clone()),
            None => Vec::new(),
        };
        let mut notes = entry.notes.clone();
        for event in &entry.more {
            // Nothing is fed past the end or a step-down, live or replayed.
            if actions
                .iter()
                .any(|a| matches!(a, Action::Finish(_) | Action::StepDown { .. }))
            {
                break;
            }
            self.note_event(event);
            notes.extend(driver_notes(event));
            actions.extend(self.engine.step(now, event.clone()));
        }
        let ignored = actions.iter().find_map(|a| match a {
            Action::Emit(Notice::Ignored { why, .. }) => Some(why.clone()),
            _ => None,
        });
        if let Some(before) = before.filter(|_| ignored.is_some()) {
            self.operator_said = before;
        }
        if actions.iter().any(|a| matches!(a, Action::StepDown { .. })) {
            return Advanced {
                actions,
                events: Vec::new(),
                finish: false,
                ignored,
                stepped_down: true,
            };
        }
        let (notes, finish) = self.happenings(&actions, notes);
        self.token = self.engine.token().0;
        self.sync(entry.at_unix_ms);
        let events = notes
            .into_iter()
            .map(|n| {
                let seq = self.next_seq;
                self.next_seq += 1;
                let mut message = n.message;
                cut(&mut message);
                EventRecord {
                    seq,
                    at_unix_ms: entry.at_unix_ms,
                    kind: n.kind,
                    state: self.state,
                    cluster: self.cluster_of(&n.instance),
                    instance: n.instance,
                    message,
                }
            })
            .collect();
        Advanced {
            actions,
            events,
            finish,
            ignored,
            stepped_down: false,
        }
    }

    /// Progress the driver knew before the engine heard of it: where the
    /// instance an event is about now stands.
    fn note_event(&mut self, event: &Event) {
        match event {
            Event::InstanceReady {
                instance, release, ..
            } => {
                let on_target = release.is(&self.engine.plan().target);
                self.note_instance(instance.as_str(), on_target, false);
            }
            Event::InstanceFailed { instance, .. }
            | Event::InstanceCrashLooping { instance, .. }
            | Event::InstanceUnhealthy { instance, .. } => {
                self.note_instance(instance.as_str(), false, true);
            }
            _ => {}
        }
    }

    /// The events a step's actions make, after the driver's own notes, and
    /// whether it finished the deployment.
    fn happenings(
        &mut self,
        actions: &[Action],
        mut notes: Vec<Happening>,
    ) -> (Vec<Happening>, bool) {
        let mut finish = false;
        for action in actions {
            match action {
                Action::Emit(notice) => {
                    if let Some(note) = Happening::of_notice(notice, self) {
                        notes.push(note);
                    }
                }
                Action::Apply {
                    instance, release, ..
                } => {
                    self.note_applying(instance.as_str());
                    notes.push(Happening::new(
                        EventKind::InstanceApplying,
                        instance.as_str(),
                        format!("applying {}", release.short()),
                    ));
                }
                Action::Finish(outcome) => {
                    finish = true;
                    notes.push(Happening::new(
                        EventKind::Finished,
                        "",
                        self.describe(outcome),
                    ));
                }
                Action::RunAnalysis {
                    analysis, scope, ..
                } => {
                    notes.push(Happening::new(
                        EventKind::AnalysisStarted,
                        "",
                        format!(
                            "analysis {} ({}) on {}: {}",
                            analysis.name,
                            scope.phase,
                            listed(scope.instances.iter().map(InstanceId::as_str)),
                            analysis
                        ),
                    ));
                }
                Action::StartTimer { .. } | Action::RunCheck { .. } | Action::StepDown { .. } => {}
            }
        }
        (notes, finish)
    }
}

/// A condition of a planned transaction (besides the caller's fences).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// The key was never created (create revision 0).
    Absent(String),
    /// The key holds exactly this value.
    ValueIs(String, Vec<u8>),
}

/// An operation of a planned transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(String, Vec<u8>),
    Delete(String),
    /// Every key in `[from, to)`: one operation however many keys.
    DeleteRange(String, String),
}

/// One etcd transaction, planned: the journal adds the caller's fences
/// (and, finishing, the lock's fence and delete) and carries it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnPlan {
    pub guards: Vec<Guard>,
    pub ops: Vec<Op>,
    /// Read back when the guards fail, to tell a landed earlier attempt
    /// of this very transaction (the key holds exactly these bytes) from
    /// a refusal.
    pub read_back: Option<(String, Vec<u8>)>,
    /// The read-back value being ours means it landed even without an
    /// earlier attempt of unknown outcome: the value is determined by what
    /// is already committed (a page of a committed step), so whoever wrote
    /// it wrote the same.
    pub same_means_landed: bool,
}

impl TxnPlan {
    fn new(guards: Vec<Guard>, ops: Vec<Op>) -> Self {
        Self {
            guards,
            ops,
            read_back: None,
            same_means_landed: false,
        }
    }

    /// An upper bound of the encoded request's size, the caller's fences
    /// included.
    pub fn bytes(&self) -> usize {
        let guards: usize = self
            .guards
            .iter()
            .map(|g| match g {
                Guard::Absent(k) => k.len(),
                Guard::ValueIs(k, v) => k.len() + v.len(),
            })
            .sum();
        let ops: usize = self
            .ops
            .iter()
            .map(|o| match o {
                Op::Put(k, v) => k.len() + v.len(),
                Op::Delete(k) => k.len(),
                Op::DeleteRange(a, b) => a.len() + b.len(),
            })
            .sum();
        let read_back = self.read_back.as_ref().map_or(0, |(k, _)| k.len());
        guards
            + ops
            + read_back
            + (self.guards.len() + self.ops.len() + 1) * FRAMING_BYTES
            + FENCES * FENCE_BYTES
    }

    /// The most operations in one branch of it (etcd's `--max-txn-ops`
    /// counts each), with the lock's delete a finishing write adds.
    pub fn op_count(&self) -> usize {
        (self.ops.len() + 1).max(self.guards.len() + FENCES)
    }
}

/// The step's events as pages: `(key, JSON array)`, in order, each at
/// most [`PAGE_BYTES`] and [`PAGE_EVENTS`] (an event is at most a few KiB:
/// every free text in it is cut).
pub fn event_pages(
    id: &str,
    events: &[EventRecord],
) -> Result<Vec<(String, Vec<u8>)>, serde_json::Error> {
    let mut pages = Vec::new();
    let mut page: Vec<u8> = Vec::new();
    let mut first = None;
    let mut count = 0;
    for event in events {
        let bytes = serde_json::to_vec(event)?;
        let full = page.len() + bytes.len() + 2 > PAGE_BYTES || count == PAGE_EVENTS;
        if let Some(seq) = first.filter(|_| full) {
            page.push(b']');
            pages.push((keys::deployment_event(id, seq), std::mem::take(&mut page)));
            first = None;
        }
        if first.is_none() {
            first = Some(event.seq);
            page.push(b'[');
            count = 0;
        } else {
            page.push(b',');
        }
        page.extend_from_slice(&bytes);
        count += 1;
    }
    if let Some(seq) = first {
        page.push(b']');
        pages.push((keys::deployment_event(id, seq), page));
    }
    Ok(pages)
}

/// The events an event key holds: a page (format 2) or one event (format 1).
pub fn events_in(value: &[u8]) -> Result<Vec<EventRecord>, serde_json::Error> {
    if value.trim_ascii_start().starts_with(b"[") {
        serde_json::from_slice(value)
    } else {
        serde_json::from_slice(value).map(|e| vec![e])
    }
}

/// The transactions of a new deployment: its snapshot's chunks, then the
/// header with the active marker (the service must have none).
pub fn plan_create(
    record: &mut DeploymentRecord,
) -> Result<(Vec<TxnPlan>, TxnPlan), serde_json::Error> {
    record.log = LogPosition {
        next_step: 1,
        ..LogPosition::default()
    };
    let chunks = snapshot_chunks(record, 1)?;
    let header_key = keys::deployment(&record.id);
    let header = serde_json::to_vec(&record.header())?;
    let active = keys::active(&record.service);
    let mut create = TxnPlan::new(
        vec![Guard::Absent(active.clone())],
        vec![
            Op::Put(header_key.clone(), header.clone()),
            Op::Put(active, record.id.clone().into_bytes()),
        ],
    );
    create.read_back = Some((header_key, header));
    Ok((chunks, create))
}

/// The transactions of one step, after `advance`: the commit (header,
/// entry, first page of events; finishing: the active marker cleared and
/// the history summary) and the step's further pages. Moves `record.log`
/// past the step.
pub fn plan_step(
    record: &mut DeploymentRecord,
    entry: &StepEntry,
    events: &[EventRecord],
    finish: bool,
) -> Result<(TxnPlan, Vec<TxnPlan>), serde_json::Error> {
    let n = record.log.next_step;
    let step_key = keys::deployment_step(&record.id, n);
    let written = serde_json::to_vec(entry)?;
    record.log.next_step = n + 1;
    record.log.log_bytes += written.len() as u64;
    let header_key = keys::deployment(&record.id);
    let header = serde_json::to_vec(&record.header())?;
    let active = keys::active(&record.service);
    let mut commit = TxnPlan::new(
        vec![
            Guard::Absent(step_key.clone()),
            Guard::ValueIs(active.clone(), record.id.clone().into_bytes()),
        ],
        vec![
            Op::Put(header_key.clone(), header.clone()),
            Op::Put(step_key, written),
        ],
    );
    commit.read_back = Some((header_key, header));
    let mut pages = event_pages(&record.id, events)?.into_iter();
    if let Some((key, page)) = pages.next() {
        commit.ops.push(Op::Put(key, page));
    }
    let mut further: Vec<TxnPlan> = pages.map(|(k, v)| page_txn(k, v)).collect();
    if finish {
        let key = keys::history(&record.service, record.finished_unix_ms, &record.id);
        commit
            .ops
            .push(Op::Put(key, serde_json::to_vec(&record.summary())?));
        // The marker goes with the step's last page: a leader stopped
        // between the commit and its further pages leaves the deployment
        // active, so the next one finds it and writes them (`finish_pages`).
        // Cleared by the commit, nobody would: its events would stay lost.
        match further.last_mut() {
            Some(last) => clear_active(last, &record.service, &record.id),
            None => commit.ops.push(Op::Delete(active)),
        }
    }
    Ok((commit, further))
}

/// Adds the clearing of `service`'s active marker, while it names `id`, to
/// a finishing step's last transaction.
fn clear_active(txn: &mut TxnPlan, service: &str, id: &str) {
    let active = keys::active(service);
    txn.guards
        .push(Guard::ValueIs(active.clone(), id.as_bytes().to_vec()));
    txn.ops.push(Op::Delete(active));
}

/// A further page of a committed step: written once, by whoever gets
/// there first, always the same bytes.
fn page_txn(key: String, page: Vec<u8>) -> TxnPlan {
    let mut txn = TxnPlan::new(
        vec![Guard::Absent(key.clone())],
        vec![Op::Put(key.clone(), page.clone())],
    );
    txn.read_back = Some((key, page));
    txn.same_means_landed = true;
    txn
}

/// The pages after the first of a step's events (the first is in the
/// step's commit): what a resuming driver writes again if they are missing.
pub fn further_pages(id: &str, events: &[EventRecord]) -> Result<Vec<TxnPlan>, serde_json::Error> {
    Ok(event_pages(id, events)?
        .into_iter()
        .skip(1)
        .map(|(k, v)| page_txn(k, v))
        .collect())
}

/// What a finished deployment still marked active lacks: its finishing
/// step's further pages, the last clearing the marker (a lone clearing
/// when every page is there).
pub fn finish_pages(
    id: &str,
    service: &str,
    events: &[EventRecord],
) -> Result<Vec<TxnPlan>, serde_json::Error> {
    let mut pages = further_pages(id, events)?;
    match pages.last_mut() {
        Some(last) => clear_active(last, service, id),
        None => {
            let mut clear = TxnPlan::new(Vec::new(), Vec::new());
            clear_active(&mut clear, service, id);
            pages.push(clear);
        }
    }
    Ok(pages)
}

/// Whether the steps since the snapshot outweigh it: then a new one keeps
/// a resume's replay, and the bytes written per deployment, within about
/// twice the log.
pub fn snapshot_due(log: &LogPosition) -> bool {
    log.generation == 0 || log.log_bytes > log.snapshot_bytes.max(MIN_LOG_BEFORE_SNAPSHOT)
}

/// The transactions of a new snapshot of the record as it stands: its
/// chunks, then the switch of the header to it, which deletes the older
/// generations and the steps they covered. Moves `record.log` to it.
pub fn plan_snapshot(
    record: &mut DeploymentRecord,
) -> Result<(Vec<TxnPlan>, TxnPlan), serde_json::Error> {
    let generation = record.log.generation + 1;
    let chunks = snapshot_chunks(record, generation)?;
    let header_key = keys::deployment(&record.id);
    let header = serde_json::to_vec(&record.header())?;
    let dir = keys::deployment_dir(&record.id);
    let switch = TxnPlan::new(
        vec![Guard::ValueIs(
            keys::active(&record.service),
            record.id.clone().into_bytes(),
        )],
        vec![
            Op::Put(header_key, header),
            Op::DeleteRange(
                format!("{dir}snapshot/"),
                keys::deployment_snapshot(&record.id, generation),
            ),
            Op::DeleteRange(
                format!("{dir}steps/"),
                keys::deployment_step(&record.id, record.log.first_step),
            ),
        ],
    );
    Ok((chunks, switch))
}

/// Serialises the record as snapshot `generation` covering every step so
/// far, sets `record.log` to it and plans one put per chunk.
fn snapshot_chunks(
    record: &mut DeploymentRecord,
    generation: u64,
) -> Result<Vec<TxnPlan>, serde_json::Error> {
    // A format-1 record resumed is written on in this build's format.
    record.format = RECORD_FORMAT;
    let bytes = serde_json::to_vec(&*record)?;
    let chunks: Vec<&[u8]> = bytes.chunks(CHUNK_BYTES).collect();
    record.log = LogPosition {
        generation,
        chunks: u32::try_from(chunks.len()).unwrap_or(u32::MAX),
        snapshot_bytes: bytes.len() as u64,
        snapshot_sha256: hex::encode(Sha256::digest(&bytes)),
        first_step: record.log.next_step,
        next_step: record.log.next_step,
        log_bytes: 0,
    };
    Ok(chunks
        .into_iter()
        .zip(0u32..)
        .map(|(chunk, k)| {
            TxnPlan::new(
                Vec::new(),
                vec![Op::Put(
                    keys::deployment_snapshot_chunk(&record.id, generation, k),
                    chunk.to_vec(),
                )],
            )
        })
        .collect())
}

/// Why a journal could not be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("snapshot {generation} has {found} chunk(s) of {expected}")]
    Incomplete {
        generation: u64,
        found: usize,
        expected: u32,
    },
    #[error("snapshot {generation} does not match its digest (torn or mixed chunks)")]
    Digest { generation: u64 },
    #[error("snapshot {generation} holds invalid data: {source}")]
    Snapshot {
        generation: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("step {n} holds invalid data: {source}")]
    Step {
        n: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("the step log has step {found} where step {expected} should be")]
    Gap { expected: u64, found: u64 },
    #[error("the step log ends before step {expected} (the header says it has {next} steps)")]
    Short { expected: u64, next: u64 },
}

/// The record a snapshot holds, checked against the header's position.
pub fn assemble(chunks: &[Vec<u8>], log: &LogPosition) -> Result<DeploymentRecord, RebuildError> {
    let generation = log.generation;
    if chunks.len() != log.chunks as usize {
        return Err(RebuildError::Incomplete {
            generation,
            found: chunks.len(),
            expected: log.chunks,
        });
    }
    let bytes = chunks.concat();
    if hex::encode(Sha256::digest(&bytes)) != log.snapshot_sha256 {
        return Err(RebuildError::Digest { generation });
    }
    let mut record: DeploymentRecord = serde_json::from_slice(&bytes)
        .map_err(|source| RebuildError::Snapshot { generation, source })?;
    record.log = log.clone();
    Ok(record)
}

/// Redoes the steps after the snapshot, in order; returns the last step's
/// events (its further pages may be missing after a crash).
pub fn replay(
    record: &mut DeploymentRecord,
    steps: &[(u64, Vec<u8>)],
) -> Result<Vec<EventRecord>, RebuildError> {
    let mut expected = record.log.first_step;
    let mut last = Vec::new();
    for (n, bytes) in steps {
        if *n != expected {
            return Err(RebuildError::Gap {
                expected,
                found: *n,
            });
        }
        let entry: StepEntry =
            serde_json::from_slice(bytes).map_err(|source| RebuildError::Step { n: *n, source })?;
        last = record.advance(&entry).events;
        expected += 1;
    }
    if expected != record.log.next_step {
        return Err(RebuildError::Short {
            expected,
            next: record.log.next_step,
        });
    }
    Ok(last)
}

/// A deployment rebuilt from what etcd holds of it: the header, its
/// snapshot's chunks in order and the step entries after it, with the
/// last step's events.
pub fn rebuild(
    header: &DeploymentHeader,
    chunks: &[Vec<u8>],
    steps: &[(u64, Vec<u8>)],
) -> Result<(DeploymentRecord, Vec<EventRecord>), RebuildError> {
    let mut record = assemble(chunks, &header.log)?;
    let last = replay(&mut record, steps)?;
    Ok((record, last))
}

/// The events the driver itself notes for an event it feeds the engine
/// (the engine's notices add the rest): a confirmed instance, a check's or
/// an analysis's verdict.
pub fn driver_notes(event: &Event) -> Vec<Happening> {
    let note = match event {
        Event::InstanceReady {
            instance, release, ..
        } => Happening::new(
            EventKind::InstanceReady,
            instance.as_str(),
            format!("ready on {}", release.short()),
        ),
        Event::CheckPassed { run } => Happening::new(
            EventKind::CheckPassed,
            "",
            format!("check run {} passed", run.0),
        ),
        Event::CheckFailed { detail, .. } => {
            Happening::new(EventKind::CheckFailed, "", detail.clone())
        }
        Event::AnalysisDone { run, verdict } => match verdict {
            Verdict::Passed => Happening::new(
                EventKind::AnalysisPassed,
                "",
                format!("analysis run {} passed", run.0),
            ),
            Verdict::Failed(detail) => {
                Happening::new(EventKind::AnalysisFailed, "", detail.clone())
            }
            Verdict::Inconclusive(detail) => {
                Happening::new(EventKind::AnalysisInconclusive, "", detail.clone())
            }
            Verdict::Pending => Happening::new(
                EventKind::AnalysisInconclusive,
                "",
                "the run ended without a verdict",
            ),
        },
        _ => return Vec::new(),
    };
    vec![note]
}

/// The step number a step key names.
pub fn step_number(key: &str) -> Option<u64> {
    key.rsplit('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rollout::sim::{Scenario, run_scenario_recorded};
    use rollout::{DeploymentId, Engine, FencingToken, Plan};

    use super::*;
    use crate::record::{DeploymentKind, DeploymentState};

    const ID: &str = "web-1796500000000";

    /// A new deployment's record for `plan`, as `leader::start` makes it.
    fn record_for(plan: Plan) -> DeploymentRecord {
        let clusters_of = plan
            .instances
            .iter()
            .filter_map(|i| {
                plan.clusters
                    .get(i.cluster)
                    .map(|c| (i.id.to_string(), c.name.to_string()))
            })
            .collect();
        DeploymentRecord {
            format: RECORD_FORMAT,
            id: ID.to_owned(),
            service: "web".to_owned(),
            target_digest: plan.target.to_string(),
            target_version: "2.0.0".to_owned(),
            actor_user: "operator.lockstep".to_owned(),
            actor_host: "laptop".to_owned(),
            reason: "JIRA-15".to_owned(),
            kind: DeploymentKind::Deploy,
            created_unix_ms: 0,
            finished_unix_ms: 0,
            state: DeploymentState::Running,
            outcome: String::new(),
            token: 7,
            next_seq: 1,
            clusters_of,
            progress: Default::default(),
            operator_said: String::new(),
            engine: Engine::new(DeploymentId(ID.to_owned()), plan, FencingToken(7)),
            log: LogPosition::default(),
        }
    }

    /// What the planned transactions leave in etcd, applied in order (the
    /// guards hold: one writer; fencing is the journal's, tested on etcd).
    #[derive(Default)]
    struct Kv(BTreeMap<String, Vec<u8>>);

    impl Kv {
        fn apply(&mut self, txn: &TxnPlan) {
            for op in &txn.ops {
                match op {
                    Op::Put(k, v) => {
                        self.0.insert(k.clone(), v.clone());
                    }
                    Op::Delete(k) => {
                        self.0.remove(k);
                    }
                    Op::DeleteRange(from, to) => {
                        self.0.retain(|k, _| !(k >= from && k < to));
                    }
                }
            }
        }

        fn range(&self, from: &str, to: &str) -> Vec<(String, Vec<u8>)> {
            self.0
                .range(from.to_owned()..to.to_owned())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }

        /// As `Journal::load` reads it.
        fn rebuild(&self) -> (DeploymentRecord, Vec<EventRecord>) {
            let header: DeploymentHeader =
                serde_json::from_slice(&self.0[&keys::deployment(ID)]).unwrap();
            let snapshot = keys::deployment_snapshot(ID, header.log.generation);
            let chunks: Vec<Vec<u8>> = self
                .range(&snapshot, &format!("{snapshot}\u{10ffff}"))
                .into_iter()
                .map(|(_, v)| v)
                .collect();
            let steps: Vec<(u64, Vec<u8>)> = self
                .range(
                    &keys::deployment_step(ID, header.log.first_step),
                    &keys::deployment_step(ID, header.log.next_step),
                )
                .into_iter()
                .map(|(k, v)| (step_number(&k).unwrap(), v))
                .collect();
            rebuild(&header, &chunks, &steps).unwrap()
        }

        fn events(&self) -> Vec<EventRecord> {
            let prefix = keys::deployment_events(ID);
            self.range(&prefix, &format!("{prefix}\u{10ffff}"))
                .iter()
                .flat_map(|(_, v)| events_in(v).unwrap())
                .collect()
        }
    }

    /// What a run wrote, transaction by transaction.
    #[derive(Debug, Default)]
    struct Tally {
        txns: usize,
        largest_bytes: usize,
        largest_ops: usize,
        snapshots: usize,
        steps: usize,
    }

    impl Tally {
        fn count(&mut self, kv: &mut Kv, txn: &TxnPlan) {
            self.txns += 1;
            self.largest_bytes = self.largest_bytes.max(txn.bytes());
            self.largest_ops = self.largest_ops.max(txn.op_count());
            kv.apply(txn);
        }
    }

    fn bytes(record: &DeploymentRecord) -> Vec<u8> {
        serde_json::to_vec(record).unwrap()
    }

    /// Drives `record` through `inputs` as the driver does (advance, then
    /// the planned writes, a snapshot when due), calling `each` after
    /// every step with the live record, what etcd holds and the events the
    /// step made.
    fn drive(
        record: &mut DeploymentRecord,
        inputs: &[(Millis, Event)],
        together: bool,
        kv: &mut Kv,
        tally: &mut Tally,
        mut each: impl FnMut(&DeploymentRecord, &Kv, &[EventRecord]),
    ) {
        let (chunks, create) = plan_create(record).unwrap();
        for txn in chunks.iter().chain([&create]) {
            tally.count(kv, txn);
        }
        let entries = if together {
            steps_of(inputs)
        } else {
            inputs
                .iter()
                .map(|(now, event)| {
                    let at = i64::try_from(now.0).unwrap();
                    StepEntry::new(at, Some(event.clone()), driver_notes(event), None)
                })
                .collect()
        };
        for entry in entries {
            let advanced = record.advance(&entry);
            assert!(!advanced.stepped_down);
            let (commit, pages) =
                plan_step(record, &entry, &advanced.events, advanced.finish).unwrap();
            for txn in [&commit].into_iter().chain(&pages) {
                tally.count(kv, txn);
            }
            tally.steps += 1;
            if !advanced.finish && snapshot_due(&record.log) {
                let (chunks, switch) = plan_snapshot(record).unwrap();
                for txn in chunks.iter().chain([&switch]) {
                    tally.count(kv, txn);
                }
                tally.snapshots += 1;
            }
            each(record, kv, &advanced.events);
        }
    }

    /// #15 deliver 2: every transaction of a 10,000-instance deployment,
    /// in clusters of 100 (batches of 25) and in one batch of all of them
    /// (one step issues 10,000 applies), with readinesses grouped as the
    /// driver groups them, stays within 128 KiB and etcd's
    /// 128 operations, and etcd ends up holding exactly the live record
    /// and every event once. On main one step put the whole record
    /// (2.4 MB) and one key per event in one transaction.
    #[test]
    fn every_transaction_of_a_10000_instance_deployment_is_bounded() {
        for (sc, big_step) in [
            (Scenario::large(10_000, 7), false),
            (Scenario::single_batch(10_000, 7), true),
        ] {
            let report = run_scenario_recorded(&sc).unwrap();
            let mut record = record_for(sc.plan.clone());
            let (mut kv, mut tally) = (Kv::default(), Tally::default());
            let mut largest_step_events = 0;
            drive(
                &mut record,
                &report.inputs,
                true,
                &mut kv,
                &mut tally,
                |_, _, events| {
                    largest_step_events = largest_step_events.max(events.len());
                },
            );
            assert_eq!(
                record.state,
                DeploymentState::Succeeded,
                "{}",
                record.outcome
            );
            if big_step {
                assert!(largest_step_events >= 10_000, "{largest_step_events}");
            }
            // Readinesses of one moment went in together.
            assert!(tally.steps < report.inputs.len(), "{tally:?}");
            assert!(tally.snapshots >= 1, "{tally:?}");
            assert!(tally.largest_bytes <= TXN_BYTES_GOAL, "{tally:?}");
            assert!(tally.largest_ops <= TXN_OPS_LIMIT, "{tally:?}");
            // Every event made it, in order, once.
            let events = kv.events();
            assert_eq!(events.len() as u64, record.next_seq - 1);
            assert!(events.iter().zip(1..).all(|(e, seq)| e.seq == seq));
            let (rebuilt, _) = kv.rebuild();
            assert_eq!(bytes(&rebuilt), bytes(&record));
        }
    }

    /// A resume anywhere (after any step) rebuilds exactly the live
    /// record — engine, progress, next seq — from the latest snapshot and
    /// the steps after it, for fault-free and faulty runs alike.
    #[test]
    fn a_record_rebuilt_from_snapshot_and_log_equals_the_live_one() {
        let mut scenarios = vec![Scenario::large(300, 3)];
        scenarios.extend((1..=40).map(Scenario::generate));
        for sc in scenarios {
            let Ok(report) = run_scenario_recorded(&sc) else {
                continue;
            };
            // Stop before a step-down: the driver persists nothing after.
            let mut probe = record_for(sc.plan.clone());
            let inputs: Vec<(Millis, Event)> = report
                .inputs
                .iter()
                .take_while(|(now, event)| {
                    let entry = StepEntry::new(
                        i64::try_from(now.0).unwrap(),
                        Some(event.clone()),
                        Vec::new(),
                        None,
                    );
                    !probe.advance(&entry).stepped_down
                })
                .cloned()
                .collect();
            for together in [false, true] {
                let mut record = record_for(sc.plan.clone());
                let (mut kv, mut tally) = (Kv::default(), Tally::default());
                let mut step = 0;
                drive(
                    &mut record,
                    &inputs,
                    together,
                    &mut kv,
                    &mut tally,
                    |live, kv, events| {
                        step += 1;
                        let (rebuilt, last) = kv.rebuild();
                        assert_eq!(bytes(&rebuilt), bytes(live), "after step {step}");
                        assert_eq!(rebuilt.log, live.log, "after step {step}");
                        assert_eq!(rebuilt.header(), live.header(), "after step {step}");
                        if rebuilt.log.first_step < rebuilt.log.next_step {
                            assert_eq!(last, events, "after step {step}");
                        }
                    },
                );
            }
        }
    }

    /// A step that finishes the deployment with events over several pages
    /// (failure reasons with their log tails) and the marker of `service`
    /// being active, as etcd holds them after its commit alone.
    fn finished_after_its_commit_alone() -> (DeploymentRecord, Kv, Vec<EventRecord>, Vec<TxnPlan>) {
        let sc = Scenario::single_batch(3, 7);
        let report = run_scenario_recorded(&sc).unwrap();
        let mut record = record_for(sc.plan.clone());
        let mut kv = Kv::default();
        let (chunks, create) = plan_create(&mut record).unwrap();
        chunks.iter().chain([&create]).for_each(|t| kv.apply(t));
        for (now, event) in &report.inputs {
            let at = i64::try_from(now.0).unwrap();
            let mut probe = record.clone();
            let plain = StepEntry::new(at, Some(event.clone()), driver_notes(event), None);
            let finishing = probe.advance(&plain).finish;
            let mut notes = driver_notes(event);
            if finishing {
                notes.extend((0..40).map(|i| {
                    Happening::new(
                        EventKind::InstanceFailed,
                        &format!("host-{i}"),
                        "log ".repeat(1_000),
                    )
                }));
            }
            let entry = StepEntry::new(at, Some(event.clone()), notes, None);
            let advanced = record.advance(&entry);
            let (commit, pages) =
                plan_step(&mut record, &entry, &advanced.events, advanced.finish).unwrap();
            kv.apply(&commit);
            if advanced.finish {
                return (record, kv, advanced.events, pages);
            }
            pages.iter().for_each(|t| kv.apply(t));
        }
        panic!("the scenario never finished");
    }

    /// A leader stopped between a finishing step's commit and its further
    /// pages: before, the commit cleared the active marker, so no leader
    /// resumed the deployment and its last events (why it failed) stayed
    /// lost. Now the marker goes with the last page, guarded by naming
    /// this deployment, and `finish_pages` writes the rest and clears it.
    #[test]
    fn a_finishing_step_over_several_pages_clears_the_marker_with_its_last_page() {
        let (record, mut kv, events, pages) = finished_after_its_commit_alone();
        let active = keys::active(&record.service);
        assert!(pages.len() >= 2, "{} further pages", pages.len());
        assert_eq!(kv.0.get(&active), Some(&ID.as_bytes().to_vec()));
        let clears = |t: &TxnPlan| t.ops.contains(&Op::Delete(active.clone()));
        assert!(pages[..pages.len() - 1].iter().all(|t| !clears(t)));
        let last = pages.last().unwrap();
        assert!(clears(last));
        assert!(
            last.guards
                .contains(&Guard::ValueIs(active.clone(), ID.as_bytes().to_vec()))
        );
        // The next leader's completion: the same pages, the same clearing.
        let completion = finish_pages(ID, &record.service, &events).unwrap();
        assert_eq!(completion, pages);
        completion.iter().for_each(|t| kv.apply(t));
        assert_eq!(kv.0.get(&active), None);
        let stored = kv.events();
        assert_eq!(stored.last(), events.last());
        assert_eq!(stored.len() as u64, record.next_seq - 1);
    }

    /// A finishing step within one page clears the marker in its commit;
    /// with nothing left to write, a completion only clears the marker.
    #[test]
    fn a_finishing_step_of_one_page_clears_the_marker_in_its_commit() {
        let sc = Scenario::single_batch(3, 7);
        let report = run_scenario_recorded(&sc).unwrap();
        let mut record = record_for(sc.plan.clone());
        let (mut kv, mut tally) = (Kv::default(), Tally::default());
        drive(
            &mut record,
            &report.inputs,
            false,
            &mut kv,
            &mut tally,
            |_, _, _| {},
        );
        assert!(record.state.is_terminal(), "{:?}", record.state);
        assert_eq!(kv.0.get(&keys::active(&record.service)), None);
        let alone = finish_pages(ID, &record.service, &[]).unwrap();
        assert_eq!(alone.len(), 1);
        assert_eq!(
            alone[0].ops,
            vec![Op::Delete(keys::active(&record.service))]
        );
    }

    /// Pages split at the byte and count bounds, in seq order; a format-1
    /// event key (one event) reads as one event.
    #[test]
    fn events_are_paged_within_bounds_and_read_back_in_order() {
        let events: Vec<EventRecord> = (1..=1500)
            .map(|seq| EventRecord {
                seq,
                at_unix_ms: 1,
                kind: EventKind::InstanceApplying,
                state: DeploymentState::Running,
                cluster: "c000".to_owned(),
                instance: format!("host-{seq:05}"),
                message: "x".repeat(usize::try_from(seq % 300).unwrap()),
            })
            .collect();
        let pages = event_pages(ID, &events).unwrap();
        assert!(pages.len() >= 3);
        let mut read = Vec::new();
        for (key, page) in &pages {
            assert!(page.len() <= PAGE_BYTES, "{key}: {}", page.len());
            let got = events_in(page).unwrap();
            assert!(got.len() <= PAGE_EVENTS);
            assert_eq!(*key, keys::deployment_event(ID, got[0].seq));
            read.extend(got);
        }
        assert_eq!(read, events);
        let one = serde_json::to_vec(&events[0]).unwrap();
        assert_eq!(events_in(&one).unwrap(), vec![events[0].clone()]);
    }

    /// What an agent or a check says is cut to a bound, at a character
    /// boundary, so a step entry stays small whatever it carries.
    #[test]
    fn free_text_in_a_step_is_cut_to_its_bound() {
        let detail = "é".repeat(10_000);
        let entry = StepEntry::new(
            1,
            Some(Event::CheckFailed {
                run: rollout::CheckRunId(1),
                detail: detail.clone(),
            }),
            vec![Happening::new(EventKind::CheckFailed, "", detail.clone())],
            Some(detail),
        );
        let Some(Event::CheckFailed { detail, .. }) = &entry.event else {
            panic!("{entry:?}");
        };
        assert!(detail.len() <= MAX_TEXT && detail.ends_with("(cut)"));
        assert!(entry.notes[0].message.len() <= MAX_TEXT);
        assert!(entry.said.as_ref().unwrap().len() <= MAX_TEXT);
    }

    /// A snapshot is due once the log since it outweighs it (and a record
    /// without one, format 1, needs one before its first step).
    #[test]
    fn a_snapshot_is_due_when_the_log_outweighs_it() {
        let mut log = LogPosition {
            generation: 1,
            snapshot_bytes: 1_000_000,
            log_bytes: 1_000_000,
            ..LogPosition::default()
        };
        assert!(!snapshot_due(&log));
        log.log_bytes += 1;
        assert!(snapshot_due(&log));
        log.snapshot_bytes = 10;
        log.log_bytes = MIN_LOG_BEFORE_SNAPSHOT;
        assert!(!snapshot_due(&log));
        assert!(snapshot_due(&LogPosition::default()));
    }

    /// A format-2 journal as this build writes it (header, one snapshot
    /// chunk, 16 steps: a 3-instance deployment halfway through its first
    /// wave's rehearsal): every later build must rebuild it and resume it.
    #[test]
    fn record_format_2_still_loads_and_resumes() {
        let text = include_str!("../tests/fixtures/deployment-record-v2.json");
        let fixture: serde_json::Value = serde_json::from_str(text).unwrap();
        let header: DeploymentHeader = serde_json::from_value(fixture["header"].clone()).unwrap();
        assert_eq!(header.format, 2);
        assert_eq!(header.state, DeploymentState::Running);
        assert_eq!(header.clusters[0].on_target, 1);
        let chunks: Vec<Vec<u8>> = fixture["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().as_bytes().to_vec())
            .collect();
        let steps: Vec<(u64, Vec<u8>)> = fixture["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s[0].as_u64().unwrap(), serde_json::to_vec(&s[1]).unwrap()))
            .collect();
        let (mut record, last) = rebuild(&header, &chunks, &steps).unwrap();
        // The fixture's header predates `waits` in it (read as none).
        assert!(header.waits.is_empty());
        let rebuilt = DeploymentHeader {
            waits: Vec::new(),
            ..record.header()
        };
        assert_eq!(rebuilt, header, "the header is what the steps made");
        assert!(
            last.is_empty(),
            "the agent taking the apply makes no event: {last:?}"
        );
        assert_eq!(record.next_seq, header.next_seq);
        // A new leader resumes it: the apply in flight is sent again.
        let resumed = record.advance(&StepEntry::new(
            header.created_unix_ms + 60_000,
            Some(Event::Recovered {
                token: FencingToken(8),
            }),
            Vec::new(),
            None,
        ));
        assert!(
            resumed.actions.iter().any(
                |a| matches!(a, Action::Apply { instance, .. } if instance.as_str() == "c000-i001")
            ),
            "{:?}",
            resumed.actions
        );
        assert_eq!(record.token, 8);
        assert_eq!(resumed.events[0].seq, header.next_seq);
    }
}
