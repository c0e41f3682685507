//! `FencedMutex`: one holder at a time, bound to the holder's session, with
//! a fencing token every later command carries.
//!
//! The lock is one key; its value records who holds it, why and since when.
//! The fencing token is the key's create revision: it only grows, so a
//! command carrying an older token than one already seen comes from a
//! holder that has since lost the lock.
//!
//! A guard dropped without `release` is released in the background (retried
//! until done or until its lease is gone), and a session that finds its own
//! lease on a lock no live guard of it holds deletes that orphan and takes
//! the lock anew: nobody ever waits on a lock its own session holds.
//!
//! Must never: create the key without the holder's lease, or delete a key
//! that a newer holder created (release compares the create revision).

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchFilterType,
    WatchOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use ids::FencingToken;

use crate::audit::{AuditError, AuditLog, AuditRecord};
use crate::etcd::Etcd;
use crate::holder::{Holder, now_unix_ms};
use crate::session::{LiveLocks, LossReason, Session};

/// Bound on one release request: etcd may hang (a paused member).
const RELEASE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Backoff between background release attempts: first, and most.
const RELEASE_BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));

/// What a lock key holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LockValue {
    pub holder: Holder,
    pub purpose: String,
    pub since_unix_ms: i64,
}

/// A lock as anyone may see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    pub key: String,
    pub holder: Holder,
    /// Deployment id or free-text reason.
    pub purpose: String,
    pub since_unix_ms: i64,
    /// Time left on the holder's lease; `None` if the lease is already gone.
    pub ttl_left: Option<Duration>,
    pub token: FencingToken,
    pub lease: i64,
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let age = Duration::from_millis(
            u64::try_from(now_unix_ms().saturating_sub(self.since_unix_ms)).unwrap_or(0),
        );
        write!(
            f,
            "{} held by {} for {:?} ({}), token {}",
            self.key, self.holder, age, self.purpose, self.token
        )?;
        match self.ttl_left {
            _ if self.lease == 0 => write!(f, ", no lease: not a lock Lockstep took (ignored)"),
            Some(ttl) => write!(f, ", lease expires in {ttl:?} unless renewed"),
            None => write!(f, ", lease already gone"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lock {}", .0)]
    Held(Box<LockInfo>),
    #[error("timed out after {waited:?} waiting for lock {key}")]
    TimedOut { key: String, waited: Duration },
    #[error("etcd did not answer the release of lock {key} within {waited:?}")]
    ReleaseTimedOut { key: String, waited: Duration },
    #[error("lost the etcd session while waiting for lock {key}")]
    SessionLost { key: String },
    #[error("etcd request for lock {key} failed: {source}")]
    Etcd {
        key: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("lock {key} holds a value that is not a lock record: {source}")]
    BadValue {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot record the break of lock {key} in the audit log: {source}")]
    Audit {
        key: String,
        #[source]
        source: AuditError,
    },
}

/// A lock as one read of etcd found it: what a receiver of a fencing
/// token checks the token against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    /// Held: its token (create revision) and the holder's lease.
    Held { token: FencingToken, lease: i64 },
    /// Free; etcd's revision at the read: every later holder's token is
    /// above it.
    Free { revision: u64 },
}

/// A named, lease-bound, fenced lock.
#[derive(Debug, Clone)]
pub struct FencedMutex {
    key: String,
}

/// Proof of holding a [`FencedMutex`]. Release it with `release`; if it is
/// dropped instead (or `release` failed), a background task deletes the key
/// (fenced, retried with backoff) until done or until the session is lost,
/// when the key goes with the lease.
pub struct MutexGuard {
    key: String,
    token: FencingToken,
    client: Etcd,
    lease: i64,
    loss: watch::Receiver<Option<LossReason>>,
    live: LiveLocks,
    released: bool,
}

enum Attempt {
    Acquired(Box<MutexGuard>),
    Held { info: LockInfo, revision: i64 },
}

impl FencedMutex {
    /// A lock under `/lockstep/v1/locks/<name>`.
    pub fn named(name: &str) -> Self {
        Self::at(crate::keys::lock(name))
    }

    /// The deployment lock of a service.
    pub fn deployment(service: &str) -> Self {
        Self::at(crate::keys::deploy_lock(service))
    }

    /// A lock at an exact key (the election uses `/lockstep/v1/leader`).
    pub fn at(key: impl Into<String>) -> Self {
        Self { key: key.into() }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Takes the lock now or fails with who holds it.
    pub async fn try_lock(
        &self,
        session: &Session,
        purpose: &str,
    ) -> Result<MutexGuard, LockError> {
        match self.attempt(session, purpose).await? {
            Attempt::Acquired(guard) => Ok(*guard),
            Attempt::Held { info, .. } => Err(LockError::Held(Box::new(info))),
        }
    }

    /// Waits up to `timeout` for the lock; woken by the holder's key being
    /// deleted (release, or its lease expiring), not by polling.
    pub async fn lock(
        &self,
        session: &Session,
        purpose: &str,
        timeout: Duration,
    ) -> Result<MutexGuard, LockError> {
        let wait = async {
            loop {
                let revision = match self.attempt(session, purpose).await? {
                    Attempt::Acquired(guard) => return Ok(*guard),
                    Attempt::Held { revision, .. } => revision,
                };
                self.wait_deleted(session, revision).await?;
            }
        };
        tokio::select! {
            result = wait => result,
            _ = session.lost() => Err(LockError::SessionLost { key: self.key.clone() }),
            () = tokio::time::sleep(timeout) => Err(LockError::TimedOut { key: self.key.clone(), waited: timeout }),
        }
    }

    async fn attempt(&self, session: &Session, purpose: &str) -> Result<Attempt, LockError> {
        let value = LockValue {
            holder: Holder::current(),
            purpose: purpose.to_owned(),
            since_unix_ms: now_unix_ms(),
        };
        let value = serde_json::to_vec(&value).map_err(|source| self.bad_value(source))?;
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key.as_str(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(
                self.key.as_str(),
                value,
                Some(PutOptions::new().with_lease(session.lease_id())),
            )])
            .or_else([TxnOp::get(self.key.as_str(), None)]);
        let client = session.client().clone();
        let response = client.txn(txn).await.map_err(|source| self.etcd(source))?;
        let revision = response.header().map_or(0, |h| h.revision());
        if response.succeeded() {
            session.live_locks().insert(&self.key);
            return Ok(Attempt::Acquired(Box::new(MutexGuard {
                key: self.key.clone(),
                token: FencingToken(u64::try_from(revision).unwrap_or(0)),
                client,
                lease: session.lease_id(),
                loss: session.loss_signal(),
                live: session.live_locks().clone(),
                released: false,
            })));
        }
        let kv = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().cloned(),
            _ => None,
        });
        if let Some(leaseless) = kv.as_ref().filter(|kv| kv.lease() == 0) {
            // Every lock Lockstep takes is bound to a lease; a key without
            // one was written by hand (or by something else) and would
            // block the lock for ever, the incident's stale "deployment in
            // progress". It is not a lock: report it, delete it (fenced by
            // its create revision) and take the lock.
            tracing::warn!(
                key = self.key,
                revision = leaseless.create_revision(),
                "lock key has no lease, so it is not a lock Lockstep took; deleting it"
            );
            self.delete_leaseless(&client, leaseless.create_revision())
                .await?;
            return Box::pin(self.attempt(session, purpose)).await;
        }
        if let Some(orphan) = kv
            .as_ref()
            .filter(|kv| is_orphan(kv.lease(), session.lease_id(), &self.key, session))
        {
            // Our own lease holds it but no live guard of ours does: a guard
            // dropped before its release reached etcd. Waiting would wait
            // for our own lease, i.e. forever. Delete it (fenced by its
            // create revision) and take it anew rather than adopting it: the
            // new key has a higher token, so the dropped guard's background
            // release, fenced by the old one, can never delete it.
            tracing::warn!(
                key = self.key,
                token = orphan.create_revision(),
                lease = format_args!("{:x}", orphan.lease()),
                "lock held by this session's own lease with no live guard; deleting the orphan"
            );
            let delete = Txn::new()
                .when([Compare::create_revision(
                    self.key.as_str(),
                    CompareOp::Equal,
                    orphan.create_revision(),
                )])
                .and_then([TxnOp::delete(self.key.as_str(), None)]);
            client
                .txn(delete)
                .await
                .map_err(|source| self.etcd(source))?;
            return Box::pin(self.attempt(session, purpose)).await;
        }
        match kv {
            Some(kv) => Ok(Attempt::Held {
                info: self.info(&client, &kv).await?,
                revision,
            }),
            // Released between compare and get: the next attempt may win.
            None => Box::pin(self.attempt(session, purpose)).await,
        }
    }

    /// Returns once the key may be free: deleted, or the watch broke (its
    /// member died or hung), after which the caller looks again through the
    /// client, which fails over.
    async fn wait_deleted(&self, session: &Session, seen_at: i64) -> Result<(), LockError> {
        let options = WatchOptions::new()
            .with_start_revision(seen_at + 1)
            .with_filters([WatchFilterType::NoPut]);
        let mut stream = session
            .client()
            .watch(self.key.as_str(), Some(options))
            .await
            .map_err(|source| self.etcd(source))?;
        loop {
            match stream.message().await {
                Ok(Some(response))
                    if response.canceled()
                        || response
                            .events()
                            .iter()
                            .any(|e| e.event_type() == EventType::Delete) =>
                {
                    return Ok(());
                }
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(err) => {
                    tracing::info!(key = self.key, error = %err, "lock watch broke; looking again");
                    return Ok(());
                }
            }
        }
    }

    /// The lock's token now, or that it is free: one linearizable read
    /// of the key (no value parsed: the token is the key's create revision).
    pub async fn state(&self, client: &Etcd) -> Result<LockState, LockError> {
        let response = client
            .get(
                self.key.as_str(),
                Some(etcd_client::GetOptions::new().with_keys_only()),
            )
            .await
            .map_err(|source| self.etcd(source))?;
        Ok(match response.kvs().first() {
            Some(kv) if kv.lease() == 0 => {
                tracing::warn!(
                    key = self.key,
                    revision = kv.create_revision(),
                    "lock key has no lease: ignored (it is not a lock Lockstep took); `lockstep locks break` deletes it"
                );
                LockState::Free {
                    revision: response
                        .header()
                        .and_then(|h| u64::try_from(h.revision()).ok())
                        .unwrap_or(0),
                }
            }
            Some(kv) => LockState::Held {
                token: FencingToken(u64::try_from(kv.create_revision()).unwrap_or(0)),
                lease: kv.lease(),
            },
            None => LockState::Free {
                revision: response
                    .header()
                    .and_then(|h| u64::try_from(h.revision()).ok())
                    .unwrap_or(0),
            },
        })
    }

    /// Who holds the lock now, if anyone.
    pub async fn inspect(&self, client: &Etcd) -> Result<Option<LockInfo>, LockError> {
        let response = client
            .get(self.key.as_str(), None)
            .await
            .map_err(|source| self.etcd(source))?;
        match response.kvs().first() {
            Some(kv) => Ok(Some(self.info(client, kv).await?)),
            None => Ok(None),
        }
    }

    /// Break-glass: records who broke the lock and why, then revokes the
    /// holder's lease (which deletes the lock and everything else the holder
    /// held). Returns the broken lock and the audit sequence number, or
    /// `None` if nobody held it.
    pub async fn break_lock(
        &self,
        client: &Etcd,
        actor: Holder,
        reason: &str,
    ) -> Result<Option<(LockInfo, u64)>, LockError> {
        let Some(info) = self.inspect(client).await? else {
            return Ok(None);
        };
        // Audit first: a break is never unrecorded, even if the revoke fails.
        let record =
            AuditRecord::new(actor, "break-lock", &self.key, reason).with_detail(&info.to_string());
        let seq = AuditLog::append(client, &record)
            .await
            .map_err(|source| LockError::Audit {
                key: self.key.clone(),
                source,
            })?;
        if info.lease == 0 {
            // No lease to revoke: delete the key itself.
            let revision = i64::try_from(info.token.0).unwrap_or(i64::MAX);
            self.delete_leaseless(client, revision).await?;
            return Ok(Some((info, seq)));
        }
        match client.lease_revoke(info.lease).await {
            Ok(_) => {}
            // Already expired: the lock is gone either way.
            Err(etcd_client::Error::GRpcStatus(status))
                if status.code() == tonic::Code::NotFound => {}
            Err(source) => return Err(self.etcd(source)),
        }
        Ok(Some((info, seq)))
    }

    async fn info(&self, client: &Etcd, kv: &etcd_client::KeyValue) -> Result<LockInfo, LockError> {
        let value: LockValue =
            serde_json::from_slice(kv.value()).map_err(|source| self.bad_value(source))?;
        let ttl_left = client
            .lease_time_to_live(kv.lease(), None)
            .await
            .ok()
            .and_then(|ttl| u64::try_from(ttl.ttl()).ok())
            .map(Duration::from_secs);
        Ok(LockInfo {
            key: self.key.clone(),
            holder: value.holder,
            purpose: value.purpose,
            since_unix_ms: value.since_unix_ms,
            ttl_left,
            token: FencingToken(u64::try_from(kv.create_revision()).unwrap_or(0)),
            lease: kv.lease(),
        })
    }

    /// Deletes the lock key created at `revision` if it still has no lease.
    async fn delete_leaseless(&self, client: &Etcd, revision: i64) -> Result<(), LockError> {
        let delete = Txn::new()
            .when([
                Compare::create_revision(self.key.as_str(), CompareOp::Equal, revision),
                Compare::lease(self.key.as_str(), CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::delete(self.key.as_str(), None)]);
        client
            .txn(delete)
            .await
            .map(drop)
            .map_err(|source| self.etcd(source))
    }

    fn etcd(&self, source: etcd_client::Error) -> LockError {
        LockError::Etcd {
            key: self.key.clone(),
            source,
        }
    }

    fn bad_value(&self, source: serde_json::Error) -> LockError {
        LockError::BadValue {
            key: self.key.clone(),
            source,
        }
    }
}

impl MutexGuard {
    pub fn token(&self) -> FencingToken {
        self.token
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The condition that fences a write: true only while this guard's key
    /// is the one that exists. Put it in every transaction made on the
    /// lock's behalf.
    pub fn fence(&self) -> Compare {
        Compare::create_revision(
            self.key.as_str(),
            CompareOp::Equal,
            i64::try_from(self.token.0).unwrap_or(i64::MAX),
        )
    }

    /// Deletes the key if it is still ours; a newer holder's key is left
    /// alone. On failure the guard is dropped, which retries in the
    /// background.
    pub async fn release(mut self) -> Result<(), LockError> {
        let result = release_once(self.client.clone(), &self.key, self.token).await;
        self.released = result.is_ok();
        result
    }
}

impl MutexGuard {
    /// Gives the guard up without a delete, for a key the holder deleted
    /// itself in a transaction of its own (fenced by [`Self::fence`]), so
    /// its drop does not try again.
    pub fn deleted_by_holder(mut self) {
        self.released = true;
    }
}

/// Whether a lock key found on `key_lease` is an orphan of `session`: its
/// own lease, but no live guard of it holds the key.
fn is_orphan(key_lease: i64, own_lease: i64, key: &str, session: &Session) -> bool {
    key_lease == own_lease && !session.live_locks().contains(key)
}

/// One fenced delete of `key` (only if its create revision is `token`),
/// bounded in time.
async fn release_once(client: Etcd, key: &str, token: FencingToken) -> Result<(), LockError> {
    let fence = Compare::create_revision(
        key,
        CompareOp::Equal,
        i64::try_from(token.0).unwrap_or(i64::MAX),
    );
    let txn = Txn::new()
        .when([fence])
        .and_then([TxnOp::delete(key, None)]);
    match tokio::time::timeout(RELEASE_ATTEMPT_TIMEOUT, client.txn(txn)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(LockError::Etcd {
            key: key.to_owned(),
            source,
        }),
        Err(_) => Err(LockError::ReleaseTimedOut {
            key: key.to_owned(),
            waited: RELEASE_ATTEMPT_TIMEOUT,
        }),
    }
}

/// Retries the release of a dropped guard's key with backoff until it is
/// done or the session is lost (then the key goes with the lease, and a
/// delete could only race a newer holder's fenced key, which it would not
/// touch anyway).
async fn release_in_background(
    client: Etcd,
    key: String,
    token: FencingToken,
    lease: i64,
    mut loss: watch::Receiver<Option<LossReason>>,
) {
    let mut backoff = RELEASE_BACKOFF.0;
    let mut attempts = 0u32;
    loop {
        if let Some(reason) = *loss.borrow() {
            tracing::info!(key, token = token.0, lease = format_args!("{lease:x}"), reason = %reason, "dropped lock goes with its lease");
            return;
        }
        attempts += 1;
        match release_once(client.clone(), &key, token).await {
            Ok(()) => {
                tracing::info!(key, token = token.0, attempts, "dropped lock released");
                return;
            }
            Err(err) => {
                tracing::warn!(key, token = token.0, attempts, retry_in_ms = backoff.as_millis(), error = %err, "cannot release a dropped lock yet; retrying");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            // A lost session, or one dropped (its keeper gone): the lease
            // is ending either way.
            changed = loss.changed() => if changed.is_err() {
                tracing::info!(key, token = token.0, lease = format_args!("{lease:x}"), "session dropped; the dropped lock goes with its lease");
                return;
            }
        }
        backoff = (backoff * 2).min(RELEASE_BACKOFF.1);
    }
}

impl Drop for MutexGuard {
    fn drop(&mut self) {
        self.live.remove(&self.key);
        if self.released {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                key = self.key,
                token = self.token.0,
                "lock dropped outside a runtime; it goes with its lease"
            );
            return;
        };
        tracing::info!(
            key = self.key,
            token = self.token.0,
            "lock dropped without release; releasing in the background"
        );
        // Detached, but bounded: it ends once the key is deleted or the
        // session (whose loss signal it watches) is lost or dropped.
        drop(runtime.spawn(release_in_background(
            self.client.clone(),
            self.key.clone(),
            self.token,
            self.lease,
            self.loss.clone(),
        )));
    }
}

impl std::fmt::Debug for MutexGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MutexGuard")
            .field("key", &self.key)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}
