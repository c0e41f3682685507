//! `DisruptionBudget`: the per-cluster semaphore every planned disruption
//! of an instance goes through — coordinator-driven and manual alike.
//!
//! ```text
//! /lockstep/v1/clusters/<c>/policy            {"max_disruptions": N}  (default 1)
//! /lockstep/v1/clusters/<c>/budget/<name>      holders  (lease-bound)
//! /lockstep/v1/clusters/<c>/budget-queue/<name> waiters (lease-bound, FIFO by create revision)
//! ```
//!
//! A waiter queues by creating its key. It may become a holder while the
//! holders and the waiters ahead of it leave a slot for it too (with N
//! free slots, the first N waiters), in one transaction that deletes its
//! queue key and creates its holder key. The waiters of a batch thus take
//! their slots at once: waiting for each predecessor's promotion made a
//! batch of 50 a chain of 50 etcd round trips, seconds under load. The
//! first waiter watches the holders (and the policy); every other waiter
//! watches only its predecessor in the queue, whose deletion (promotion,
//! cancellation or death) is what can move it forward. One release wakes
//! one waiter: no thundering herd, and FIFO means no starvation.
//!
//! Counting holders and waiters ahead from one snapshot (one revision)
//! keeps the bound: every holder counted the others as holders or as
//! waiters ahead of it when it was promoted.
//!
//! Must never: let more than N holders exist, or leave a cancelled waiter's
//! key in the queue (an abandoned key would block everyone behind it until
//! its lease expired).

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse, WatchFilterType, WatchOptions,
};
use serde::{Deserialize, Serialize};

use crate::etcd::Etcd;
use crate::holder::{Holder, now_unix_ms};
use crate::keys;
use crate::mutex::LockValue;
use crate::session::Session;

/// One disruption at a time per cluster unless the operator says more: the
/// safe choice for small clusters, which the incident took down completely.
pub const DEFAULT_MAX_DISRUPTIONS: u32 = 1;

/// A cluster's budget, stored at `/lockstep/v1/clusters/<c>/policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetPolicy {
    pub max_disruptions: u32,
}

impl Default for BudgetPolicy {
    fn default() -> Self {
        Self {
            max_disruptions: DEFAULT_MAX_DISRUPTIONS,
        }
    }
}

/// A holder of, or waiter for, a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub name: String,
    pub holder: Holder,
    pub purpose: String,
    pub since_unix_ms: i64,
    pub create_revision: i64,
    pub lease: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum SemaphoreError {
    #[error("{name} already holds or waits for a slot in cluster {cluster}'s disruption budget")]
    AlreadyQueued { cluster: String, name: String },
    #[error(
        "no free slot in cluster {cluster}'s disruption budget after {waited:?}; held by: {holders}; waiting ahead: {ahead}"
    )]
    TimedOut {
        cluster: String,
        waited: Duration,
        holders: String,
        /// The waiters served first: they count against the budget, so
        /// stalled ones can hold back those behind them with no slot held.
        ahead: String,
    },
    #[error("lost the etcd session while waiting for a slot in cluster {cluster}")]
    SessionLost { cluster: String },
    #[error("etcd request on cluster {cluster}'s disruption budget failed: {source}")]
    Etcd {
        cluster: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("key {key} does not hold a valid record: {source}")]
    BadValue {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The disruption budget of one cluster.
#[derive(Debug, Clone)]
pub struct DisruptionBudget {
    cluster: String,
    holders: String,
    waiters: String,
    policy: String,
}

/// A held slot. Release it with `release`; if it is dropped instead, the
/// slot frees when the session's lease ends.
pub struct SlotGuard {
    key: String,
    create_revision: i64,
    client: Etcd,
}

/// Deletes an abandoned queue key when an `acquire` future is dropped
/// mid-wait. It is armed before the enqueue is sent, because the future can
/// be dropped after etcd committed the key but before the reply arrived. The
/// delete only removes a key bound to this session's lease, so it can never
/// take another waiter's place. It runs on its own short task (`Drop` cannot
/// await); if it fails the key still goes with the session's lease.
struct QueuedKey {
    key: String,
    lease: i64,
    client: Etcd,
    armed: bool,
}

impl QueuedKey {
    async fn remove(client: Etcd, key: String, lease: i64) {
        let remove = Txn::new()
            .when([Compare::lease(key.as_str(), CompareOp::Equal, lease)])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        if let Err(err) = client.txn(remove).await {
            tracing::warn!(key, error = %err, "cannot leave the budget queue; the key goes with its lease");
        }
    }
}

impl Drop for QueuedKey {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let key = std::mem::take(&mut self.key);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(Self::remove(self.client.clone(), key, self.lease));
        }
    }
}

/// Whether a waiter with `ahead` waiters before it in the queue may take
/// a slot: the holders, the waiters ahead (each of which may take one
/// first) and this waiter fit in the budget.
fn may_take_slot(ahead: usize, holders: usize, max_disruptions: u32) -> bool {
    let max = usize::try_from(max_disruptions).unwrap_or(usize::MAX);
    holders.saturating_add(ahead) < max
}

struct Snapshot {
    revision: i64,
    queue: Vec<etcd_client::KeyValue>,
    holders: Vec<etcd_client::KeyValue>,
    policy: BudgetPolicy,
}

impl DisruptionBudget {
    pub fn new(cluster: &str) -> Self {
        Self {
            cluster: cluster.to_owned(),
            holders: keys::budget_holders(cluster),
            waiters: keys::budget_waiters(cluster),
            policy: keys::cluster_policy(cluster),
        }
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub async fn set_policy(
        &self,
        client: &Etcd,
        policy: BudgetPolicy,
    ) -> Result<(), SemaphoreError> {
        let value = serde_json::to_vec(&policy).map_err(|source| SemaphoreError::BadValue {
            key: self.policy.clone(),
            source,
        })?;
        client
            .clone()
            .put(self.policy.as_str(), value, None)
            .await
            .map(drop)
            .map_err(|source| self.etcd(source))
    }

    pub async fn policy(&self, client: &Etcd) -> Result<BudgetPolicy, SemaphoreError> {
        let response = client
            .clone()
            .get(self.policy.as_str(), None)
            .await
            .map_err(|source| self.etcd(source))?;
        self.parse_policy(response.kvs().first())
    }

    /// Waits up to `timeout` for a slot, in FIFO order. `name` identifies the
    /// holder (e.g. `agent-3/web`); one name holds at most one slot.
    pub async fn acquire(
        &self,
        session: &Session,
        name: &str,
        purpose: &str,
        timeout: Duration,
    ) -> Result<SlotGuard, SemaphoreError> {
        let queue_key = format!("{}{name}", self.waiters);
        let holder_key = format!("{}{name}", self.holders);
        let value = serde_json::to_vec(&LockValue {
            holder: Holder::current(),
            purpose: purpose.to_owned(),
            since_unix_ms: now_unix_ms(),
        })
        .map_err(|source| SemaphoreError::BadValue {
            key: queue_key.clone(),
            source,
        })?;
        let client = session.client().clone();
        let lease = PutOptions::new().with_lease(session.lease_id());
        let enqueue = Txn::new()
            .when([
                Compare::create_revision(queue_key.as_str(), CompareOp::Equal, 0),
                Compare::create_revision(holder_key.as_str(), CompareOp::Equal, 0),
            ])
            // The first look at the queue comes with the enqueue: one
            // round trip less for every slot taken.
            .and_then(
                std::iter::once(TxnOp::put(
                    queue_key.as_str(),
                    value.clone(),
                    Some(lease.clone()),
                ))
                .chain(self.snapshot_reads())
                .collect::<Vec<_>>(),
            );
        let mut queued = QueuedKey {
            key: queue_key.clone(),
            lease: session.lease_id(),
            client: client.clone(),
            armed: true,
        };
        let enqueued = client
            .txn(enqueue)
            .await
            .map_err(|source| self.etcd(source))?;
        if !enqueued.succeeded() {
            queued.armed = false;
            return Err(SemaphoreError::AlreadyQueued {
                cluster: self.cluster.clone(),
                name: name.to_owned(),
            });
        }
        let my_revision = enqueued.header().map_or(0, |h| h.revision());
        let mut looked = Some(self.parse_snapshot(enqueued)?);

        let wait = async {
            loop {
                let snapshot = match looked.take() {
                    Some(snapshot) => snapshot,
                    None => self.snapshot(&client).await?,
                };
                let ahead: Vec<&etcd_client::KeyValue> = snapshot
                    .queue
                    .iter()
                    .filter(|kv| kv.create_revision() < my_revision)
                    .collect();
                if !snapshot
                    .queue
                    .iter()
                    .any(|kv| kv.key() == queue_key.as_bytes())
                {
                    // Our lease ended under us: the session loss arm wins.
                    return Err(SemaphoreError::SessionLost {
                        cluster: self.cluster.clone(),
                    });
                }
                if may_take_slot(
                    ahead.len(),
                    snapshot.holders.len(),
                    snapshot.policy.max_disruptions,
                ) {
                    let promote = Txn::new()
                        .when([Compare::create_revision(
                            queue_key.as_str(),
                            CompareOp::Equal,
                            my_revision,
                        )])
                        .and_then([
                            TxnOp::delete(queue_key.as_str(), None),
                            TxnOp::put(holder_key.as_str(), value.clone(), Some(lease.clone())),
                        ]);
                    let promoted = client
                        .txn(promote)
                        .await
                        .map_err(|source| self.etcd(source))?;
                    if promoted.succeeded() {
                        return Ok(SlotGuard {
                            key: holder_key.clone(),
                            create_revision: promoted.header().map_or(0, |h| h.revision()),
                            client: client.clone(),
                        });
                    }
                    continue;
                }
                let mut stream = match ahead.last() {
                    // Not first: only our predecessor's deletion can move us.
                    Some(predecessor) => {
                        client
                            .watch(predecessor.key(), Some(deletes_after(snapshot.revision)))
                            .await
                    }
                    // First in line: a holder leaving (or the budget growing)
                    // frees a slot.
                    None => {
                        let mut stream = client
                            .watch(
                                self.holders.as_str(),
                                Some(deletes_after(snapshot.revision).with_prefix()),
                            )
                            .await
                            .map_err(|source| self.etcd(source))?;
                        stream
                            .watch(
                                self.policy.as_str(),
                                Some(
                                    WatchOptions::new().with_start_revision(snapshot.revision + 1),
                                ),
                            )
                            .await
                            .map(|()| stream)
                    }
                }
                .map_err(|source| self.etcd(source))?;
                loop {
                    // A broken watch (its member died or hung) is no error:
                    // look again, through the client, which fails over.
                    let message = match stream.message().await {
                        Ok(message) => message,
                        Err(err) => {
                            tracing::info!(cluster = self.cluster, error = %err, "budget watch broke; looking again");
                            break;
                        }
                    };
                    match message {
                        Some(response)
                            if response.canceled()
                                || response.events().iter().any(|e| {
                                    e.event_type() == EventType::Delete
                                        || e.kv()
                                            .is_some_and(|kv| kv.key() == self.policy.as_bytes())
                                }) =>
                        {
                            break;
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
            }
        };
        let result = tokio::select! {
            result = wait => result,
            _ = session.lost() => Err(SemaphoreError::SessionLost { cluster: self.cluster.clone() }),
            () = tokio::time::sleep(timeout) => {
                let (holders, ahead) = self.blockers(session.client(), name).await;
                Err(SemaphoreError::TimedOut { cluster: self.cluster.clone(), waited: timeout, holders, ahead })
            }
        };
        // From here the outcome is known: success consumed the queue key in
        // the promotion, failure removes it below, awaited.
        queued.armed = false;
        if result.is_err() {
            QueuedKey::remove(client, queue_key, session.lease_id()).await;
        }
        result
    }

    /// Current holders, oldest first.
    pub async fn holders(&self, client: &Etcd) -> Result<Vec<SlotInfo>, SemaphoreError> {
        self.list(client, &self.holders).await
    }

    /// Current waiters, in the order they will be served.
    pub async fn waiters(&self, client: &Etcd) -> Result<Vec<SlotInfo>, SemaphoreError> {
        self.list(client, &self.waiters).await
    }

    /// Who kept `name` from a slot: the holders, and the waiters ahead
    /// of it, each described for the timeout's message.
    async fn blockers(&self, client: &Etcd, name: &str) -> (String, String) {
        let holders = self.holders(client).await;
        let ahead = self.waiters(client).await.map(|waiters| {
            waiters
                .into_iter()
                .take_while(|w| w.name != name)
                .collect::<Vec<_>>()
        });
        if let (Ok([]), Ok([])) = (holders.as_deref(), ahead.as_deref()) {
            return (
                "nobody (the budget may be 0)".to_owned(),
                "nobody".to_owned(),
            );
        }
        (describe(holders), describe(ahead))
    }

    async fn list(&self, client: &Etcd, prefix: &str) -> Result<Vec<SlotInfo>, SemaphoreError> {
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend);
        let response = client
            .clone()
            .get(prefix, Some(options))
            .await
            .map_err(|source| self.etcd(source))?;
        response
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let value: LockValue = serde_json::from_slice(kv.value()).map_err(|source| {
                    SemaphoreError::BadValue {
                        key: key.clone(),
                        source,
                    }
                })?;
                Ok(SlotInfo {
                    name: key.strip_prefix(prefix).unwrap_or(&key).to_owned(),
                    holder: value.holder,
                    purpose: value.purpose,
                    since_unix_ms: value.since_unix_ms,
                    create_revision: kv.create_revision(),
                    lease: kv.lease(),
                })
            })
            .collect()
    }

    /// `kvs` without the keys that have no lease, each reported: every
    /// slot and queue entry Lockstep writes is bound to its holder's
    /// lease, and one without would hold a slot for ever.
    fn leased(&self, kvs: Vec<etcd_client::KeyValue>) -> Vec<etcd_client::KeyValue> {
        kvs.into_iter()
            .filter(|kv| {
                let leased = kv.lease() != 0;
                if !leased {
                    tracing::warn!(
                        cluster = self.cluster,
                        key = %String::from_utf8_lossy(kv.key()),
                        "budget key has no lease: ignored (it is not a slot Lockstep took); delete it with etcdctl del"
                    );
                }
                leased
            })
            .collect()
    }

    /// The queue, the holders and the policy at one revision.
    async fn snapshot(&self, client: &Etcd) -> Result<Snapshot, SemaphoreError> {
        let txn = Txn::new().and_then(self.snapshot_reads().collect::<Vec<_>>());
        let response = client.txn(txn).await.map_err(|source| self.etcd(source))?;
        self.parse_snapshot(response)
    }

    /// The reads of a snapshot, in the order `parse_snapshot` takes them.
    fn snapshot_reads(&self) -> impl Iterator<Item = TxnOp> {
        let by_create = || {
            GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Ascend)
        };
        [
            TxnOp::get(self.waiters.as_str(), Some(by_create())),
            TxnOp::get(self.holders.as_str(), Some(by_create())),
            TxnOp::get(self.policy.as_str(), None),
        ]
        .into_iter()
    }

    /// A snapshot from a transaction whose reads are `snapshot_reads`
    /// (after any writes, whose answers are skipped).
    fn parse_snapshot(
        &self,
        response: etcd_client::TxnResponse,
    ) -> Result<Snapshot, SemaphoreError> {
        let revision = response.header().map_or(0, |h| h.revision());
        let mut gets = response
            .op_responses()
            .into_iter()
            .filter_map(|op| match op {
                TxnOpResponse::Get(get) => Some(get.kvs().to_vec()),
                _ => None,
            });
        let queue = self.leased(gets.next().unwrap_or_default());
        let holders = self.leased(gets.next().unwrap_or_default());
        let policy = self.parse_policy(gets.next().unwrap_or_default().first())?;
        Ok(Snapshot {
            revision,
            queue,
            holders,
            policy,
        })
    }

    fn parse_policy(
        &self,
        kv: Option<&etcd_client::KeyValue>,
    ) -> Result<BudgetPolicy, SemaphoreError> {
        match kv {
            None => Ok(BudgetPolicy::default()),
            Some(kv) => {
                serde_json::from_slice(kv.value()).map_err(|source| SemaphoreError::BadValue {
                    key: self.policy.clone(),
                    source,
                })
            }
        }
    }

    fn etcd(&self, source: etcd_client::Error) -> SemaphoreError {
        SemaphoreError::Etcd {
            cluster: self.cluster.clone(),
            source,
        }
    }
}

fn deletes_after(revision: i64) -> WatchOptions {
    WatchOptions::new()
        .with_start_revision(revision + 1)
        .with_filters([WatchFilterType::NoPut])
}

impl SlotGuard {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Frees the slot if it is still ours.
    pub async fn release(self) -> Result<(), etcd_client::Error> {
        self.try_release().await
    }

    /// Frees the slot if it is still ours, keeping the guard: a failed
    /// attempt can be repeated (it is idempotent: the compare on the
    /// create revision never deletes a later holder's key).
    pub async fn try_release(&self) -> Result<(), etcd_client::Error> {
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key.as_str(),
                CompareOp::Equal,
                self.create_revision,
            )])
            .and_then([TxnOp::delete(self.key.as_str(), None)]);
        self.client.txn(txn).await.map(drop)
    }
}

impl std::fmt::Debug for SlotGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotGuard")
            .field("key", &self.key)
            .field("create_revision", &self.create_revision)
            .finish_non_exhaustive()
    }
}

fn describe(slots: Result<Vec<SlotInfo>, SemaphoreError>) -> String {
    match slots {
        Ok(slots) if slots.is_empty() => "nobody".to_owned(),
        Ok(slots) => slots
            .iter()
            .map(|s| format!("{} ({}, {})", s.name, s.holder, s.purpose))
            .collect::<Vec<_>>()
            .join(", "),
        Err(err) => format!("unknown ({err})"),
    }
}

#[cfg(test)]
mod tests {
    use super::may_take_slot;

    #[test]
    fn with_free_slots_the_first_waiters_take_them_together() {
        // 3 slots, 1 held: the first two waiters go, the third waits.
        assert!(may_take_slot(0, 1, 3));
        assert!(may_take_slot(1, 1, 3));
        assert!(!may_take_slot(2, 1, 3));
    }

    #[test]
    fn a_full_or_zero_budget_lets_nobody_in() {
        assert!(!may_take_slot(0, 1, 1));
        assert!(!may_take_slot(0, 0, 0));
        // A budget shrunk below its holders lets nobody in either.
        assert!(!may_take_slot(0, 5, 2));
    }

    #[test]
    fn the_default_budget_is_one_at_a_time_in_order() {
        assert!(may_take_slot(0, 0, super::DEFAULT_MAX_DISRUPTIONS));
        assert!(!may_take_slot(1, 0, super::DEFAULT_MAX_DISRUPTIONS));
    }
}
