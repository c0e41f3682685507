//! `Session`: one etcd lease kept alive in the background, and the signal
//! that says the holder must stop acting.
//!
//! The margin: the server cannot expire the lease sooner than one TTL after
//! it *received* the last keep-alive, which is after we *sent* it. `lost`
//! fires [`LOSS_AFTER`] (¾) of a TTL after the send time of the last
//! acknowledged keep-alive, so a holder learns of the loss at least ¼ TTL
//! (1.25 s at TTL 5 s) before anyone else can take its locks over.
//!
//! Must never: report a session as live once its deadline has passed, or
//! keep a lease alive for a holder that dropped its `Session`.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use crate::etcd::Etcd;
use crate::task::OwnedTask;

/// Share of a TTL after the last acknowledged keep-alive's send time at
/// which the session counts as lost (see the module doc for the margin).
const LOSS_AFTER: (u32, u32) = (3, 4);
/// Keep-alives per TTL: three leaves room for two lost ones before `lost`.
const KEEPALIVES_PER_TTL: u32 = 3;
/// etcd refuses shorter leases in practice (it rounds up to its minimum);
/// below this the loss margin is too thin to act on.
const MIN_TTL: Duration = Duration::from_secs(2);
/// A dead holder's locks, slots and registration stay this long at most:
/// an hour is already more than anyone should wait for a crashed host
/// (the default is 10 s), and etcd itself refuses TTLs past its own limit.
const MAX_TTL: Duration = Duration::from_secs(3600);

/// A lease time-to-live, whole seconds, from [`MIN_TTL`] to [`MAX_TTL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(Duration);

impl Ttl {
    pub fn from_secs(secs: u64) -> Result<Self, SessionError> {
        let ttl = Duration::from_secs(secs);
        if ttl < MIN_TTL {
            return Err(SessionError::TtlTooShort { secs });
        }
        if ttl > MAX_TTL {
            return Err(SessionError::TtlTooLong { secs });
        }
        Ok(Self(ttl))
    }

    pub fn as_duration(self) -> Duration {
        self.0
    }

    fn secs(self) -> i64 {
        i64::try_from(self.0.as_secs()).unwrap_or(i64::MAX)
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossReason {
    /// No keep-alive was acknowledged in time: etcd may be unreachable.
    KeepAliveTimedOut,
    /// etcd answered that the lease no longer exists (expired or revoked).
    LeaseGone,
    /// The holder closed the session itself.
    Closed,
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::KeepAliveTimedOut => "no keep-alive acknowledged in time",
            Self::LeaseGone => "the lease no longer exists in etcd",
            Self::Closed => "the session was closed",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("lease ttl {secs}s is too short; use at least {}s", MIN_TTL.as_secs())]
    TtlTooShort { secs: u64 },
    #[error(
        "lease ttl {secs}s is too long: a dead holder would keep its locks that long; use at most {}s",
        MAX_TTL.as_secs()
    )]
    TtlTooLong { secs: u64 },
    #[error("cannot grant a lease with ttl {ttl_secs}s: {source}")]
    Grant {
        ttl_secs: i64,
        #[source]
        source: etcd_client::Error,
    },
    #[error("cannot revoke lease {lease:x}: {source}")]
    Revoke {
        lease: i64,
        #[source]
        source: etcd_client::Error,
    },
}

/// A live lease. Dropping it stops the keep-alive, so the lease (and every
/// key bound to it) expires within one TTL; `close` revokes it at once.
pub struct Session {
    client: Etcd,
    lease: i64,
    ttl: Ttl,
    lost: watch::Receiver<Option<LossReason>>,
    keeper: OwnedTask,
    /// Keys of this session's live `MutexGuard`s: a lock key on this lease
    /// that is not here belongs to a guard that is gone (an orphan).
    live_locks: LiveLocks,
}

/// The lock keys a session's live guards hold (shared with the guards,
/// which remove their key when released or dropped).
#[derive(Debug, Clone, Default)]
pub(crate) struct LiveLocks(Arc<Mutex<HashSet<String>>>);

impl LiveLocks {
    pub(crate) fn insert(&self, key: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.to_owned());
    }

    pub(crate) fn remove(&self, key: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(key)
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("lease", &format_args!("{:x}", self.lease))
            .field("ttl", &self.ttl)
            .field("loss", &self.loss())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Grants a lease and starts keeping it alive.
    pub async fn grant(client: Etcd, ttl: Ttl) -> Result<Self, SessionError> {
        let sent_at = Instant::now();
        let granted = client
            .lease_grant(ttl.secs(), None)
            .await
            .map_err(|source| SessionError::Grant {
                ttl_secs: ttl.secs(),
                source,
            })?;
        // etcd may round a short TTL up; act on what it granted.
        let ttl = Ttl(Duration::from_secs(
            u64::try_from(granted.ttl())
                .unwrap_or(0)
                .max(ttl.0.as_secs()),
        ));
        let (tx, lost) = watch::channel(None);
        let keeper = OwnedTask::spawn(keep_alive(client.clone(), granted.id(), ttl, sent_at, tx));
        Ok(Self {
            client,
            lease: granted.id(),
            ttl,
            lost,
            keeper,
            live_locks: LiveLocks::default(),
        })
    }

    pub fn lease_id(&self) -> i64 {
        self.lease
    }

    pub fn ttl(&self) -> Ttl {
        self.ttl
    }

    /// The client the session's lease lives on (failing over between
    /// members).
    pub fn client(&self) -> &Etcd {
        &self.client
    }

    /// Why the session ended, if it has.
    pub fn loss(&self) -> Option<LossReason> {
        *self.lost.borrow()
    }

    pub fn is_lost(&self) -> bool {
        self.loss().is_some()
    }

    /// Resolves once the session is lost; at once if it already is.
    pub async fn lost(&self) -> LossReason {
        let mut lost = self.lost.clone();
        match lost.wait_for(Option::is_some).await {
            Ok(reason) => (*reason).unwrap_or(LossReason::Closed),
            // The keeper only drops its sender when it ends, which it does
            // after sending a reason; treat a vanished keeper as closed.
            Err(_) => LossReason::Closed,
        }
    }

    /// A receiver that sees the loss: for tasks that outlive a borrow.
    pub fn loss_signal(&self) -> watch::Receiver<Option<LossReason>> {
        self.lost.clone()
    }

    pub(crate) fn live_locks(&self) -> &LiveLocks {
        &self.live_locks
    }

    /// Stops keeping the lease alive and revokes it: every key bound to it
    /// is deleted now, so waiters proceed at once.
    pub async fn close(self) -> Result<(), SessionError> {
        let Self {
            client,
            lease,
            keeper,
            ..
        } = self;
        drop(keeper);
        match client.lease_revoke(lease).await {
            Ok(_) => Ok(()),
            // Already gone (expired, or an earlier attempt of this revoke
            // landed): what `close` wanted.
            Err(etcd_client::Error::GRpcStatus(status))
                if status.code() == tonic::Code::NotFound =>
            {
                Ok(())
            }
            Err(source) => Err(SessionError::Revoke { lease, source }),
        }
    }
}

/// Keeps `lease` alive until the deadline ¾ TTL after the last
/// acknowledged keep-alive's send time passes. The stream lives on one
/// member; when it breaks, or a keep-alive stays unanswered for half an
/// interval (a hung member, then taken out of rotation), it is opened again
/// through the client, which fails over to a member that answers — well before the deadline, so a
/// session is never lost because one member died.
async fn keep_alive(
    client: Etcd,
    lease: i64,
    ttl: Ttl,
    granted_sent_at: Instant,
    lost: watch::Sender<Option<LossReason>>,
) {
    let lease_hex = format!("{lease:x}");
    let interval = ttl.0 / KEEPALIVES_PER_TTL;
    let loss_after = ttl.0 * LOSS_AFTER.0 / LOSS_AFTER.1;
    let mut deadline = granted_sent_at + loss_after;
    let mut next_send = Instant::now() + interval;
    let mut stream = None;
    let mut in_flight: VecDeque<Instant> = VecDeque::new();
    let reason = loop {
        if Instant::now() >= deadline {
            break LossReason::KeepAliveTimedOut;
        }
        let Some((keeper, responses, member)) = stream.as_mut() else {
            // Never past the deadline: the client tries every member.
            let left = deadline.saturating_duration_since(Instant::now());
            match client.with_deadline(left).lease_keep_alive(lease).await {
                Ok(opened) => {
                    in_flight.clear();
                    stream = Some(opened);
                    // The broken stream's last keep-alive may be lost.
                    next_send = Instant::now();
                }
                Err(err) => {
                    tracing::warn!(lease = lease_hex, error = %err, "cannot open a lease keep-alive stream");
                    sleep_until((Instant::now() + interval / 2).min(deadline)).await;
                }
            }
            continue;
        };
        // A keep-alive unanswered for half an interval (its round trip
        // takes milliseconds): its member hangs.
        let stalled_at = in_flight.front().map(|sent| *sent + interval / 2);
        tokio::select! {
            () = sleep_until(deadline) => break LossReason::KeepAliveTimedOut,
            () = sleep_until(stalled_at.unwrap_or(deadline)), if stalled_at.is_some() => {
                tracing::warn!(lease = lease_hex, unanswered_for = ?(interval / 2), "lease keep-alive unanswered; reopening on another member");
                client.demote(*member, "a lease keep-alive went unanswered");
                stream = None;
            }
            () = sleep_until(next_send) => {
                let sent_at = Instant::now();
                match keeper.keep_alive().await {
                    Ok(()) => in_flight.push_back(sent_at),
                    Err(err) => {
                        tracing::warn!(lease = lease_hex, error = %err, "lease keep-alive send failed; reopening");
                        stream = None;
                    }
                }
                next_send = sent_at + interval;
            }
            response = responses.message() => match response {
                Ok(Some(response)) if response.ttl() > 0 => {
                    if let Some(sent_at) = in_flight.pop_front() {
                        deadline = deadline.max(sent_at + loss_after);
                    }
                }
                Ok(Some(_)) => break LossReason::LeaseGone,
                Ok(None) | Err(_) => {
                    tracing::warn!(lease = lease_hex, "lease keep-alive stream ended; reopening");
                    stream = None;
                }
            },
        }
    };
    tracing::warn!(lease = lease_hex, reason = %reason, "etcd session lost");
    lost.send_replace(Some(reason));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ttl_is_bounded_both_ways() {
        assert!(matches!(
            Ttl::from_secs(1),
            Err(SessionError::TtlTooShort { secs: 1 })
        ));
        assert_eq!(
            Ttl::from_secs(10).unwrap().as_duration(),
            Duration::from_secs(10)
        );
        assert!(Ttl::from_secs(MAX_TTL.as_secs()).is_ok());
        let huge = Ttl::from_secs(100_000_000).unwrap_err();
        assert!(matches!(
            huge,
            SessionError::TtlTooLong { secs: 100_000_000 }
        ));
        assert!(huge.to_string().contains("at most 3600s"), "{huge}");
    }
}
