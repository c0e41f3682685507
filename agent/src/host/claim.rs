//! Who holds a service: the claim of the command in flight (its fencing
//! token, and the signal that cancels it) and the service's command lock.
//!
//! ```text
//!   Host::claim ── admission::admit(high-water, in flight, token) ──► Take | Supersede | Busy | Stale
//!   Take       → Ticket ─ take(): the lock now, or Busy
//!   Supersede  → the claim in flight is replaced and its Cancel fires;
//!                Ticket ─ take(): waits for the lock while the cancelled
//!                command brings the service back (new instances stopped)
//!   CommandLock (ticket + lock guard) dropped → the claim is cleared
//! ```
//!
//! Must never: decide anything itself (`admission` does), hold its
//! synchronous mutex across an await, or let a superseded command take the
//! lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as SyncMutex, PoisonError};

use tokio::sync::{Mutex, OwnedMutexGuard, watch};

use super::{HostError, Superseded};
use crate::admission::{self, Admission, InFlight};

/// The command holding, or about to hold, a service.
#[derive(Debug)]
struct Claim {
    id: u64,
    token: Option<u64>,
    /// Fires with the superseding token.
    cancel: watch::Sender<Option<u64>>,
}

/// A service's claim and command lock.
#[derive(Debug, Default)]
pub(super) struct Claims {
    held: SyncMutex<Option<Claim>>,
    next_id: AtomicU64,
    command: Arc<Mutex<()>>,
}

impl Claims {
    /// The command in flight, as the supersede rule sees it.
    pub(super) fn in_flight(&self) -> Option<InFlight> {
        self.lock_held()
            .as_ref()
            .map(|c| InFlight { token: c.token })
    }

    /// Decides with `admission::admit` and, when admitted, claims the
    /// service in the same critical section: a superseded claim is
    /// replaced and its cancel fires. Refused: the admission that says why.
    pub(super) fn claim(
        self: &Arc<Self>,
        high_water: u64,
        token: Option<u64>,
    ) -> Result<Ticket, Admission> {
        let mut held = self.lock_held();
        let in_flight = held.as_ref().map(|c| InFlight { token: c.token });
        let supersedes = match admission::admit(high_water, in_flight, token) {
            Admission::Take => None,
            Admission::Supersede { superseded } => Some(superseded),
            refused @ (Admission::Busy | Admission::Stale { .. }) => return Err(refused),
        };
        let (cancel, cancelled) = watch::channel(None);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let superseded = held.replace(Claim { id, token, cancel });
        if let (Some(old), Some(t)) = (superseded, token) {
            // Sent before the sender is dropped: the receiver sees the value.
            old.cancel.send_replace(Some(t));
        }
        Ok(Ticket {
            claims: self.clone(),
            id,
            supersedes,
            cancel: Cancel(cancelled),
        })
    }

    /// Holds the command lock until the claim in flight is over (agent
    /// shutdown), whoever holds it.
    pub(super) async fn wait_idle(&self) -> OwnedMutexGuard<()> {
        self.command.clone().lock_owned().await
    }

    fn release(&self, id: u64) {
        let mut held = self.lock_held();
        if held.as_ref().is_some_and(|c| c.id == id) {
            *held = None;
        }
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, Option<Claim>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A claim not yet holding the lock; dropping it gives the claim up.
#[derive(Debug)]
pub(super) struct Ticket {
    claims: Arc<Claims>,
    id: u64,
    /// The token of the command this one supersedes.
    supersedes: Option<u64>,
    cancel: Cancel,
}

impl Ticket {
    /// The token of the command in flight this one supersedes, if any.
    pub(super) fn superseding(&self) -> Option<u64> {
        self.supersedes
    }

    /// Takes the service's command lock: at once (or Busy) when nothing
    /// was in flight; after the superseded command let go of it otherwise,
    /// unless this claim is superseded in turn while it waits.
    pub(super) async fn take(mut self, service: &str) -> Result<CommandLock, HostError> {
        let command = self.claims.command.clone();
        let guard = if self.supersedes.is_some() {
            tokio::select! {
                guard = command.lock_owned() => guard,
                by_token = self.cancel.superseded() => {
                    return Err(superseded_before_start(service, by_token));
                }
            }
        } else {
            command.try_lock_owned().map_err(|_| HostError::Busy {
                service: service.to_owned(),
            })?
        };
        if let Some(by_token) = self.cancel.fired() {
            return Err(superseded_before_start(service, by_token));
        }
        Ok(CommandLock {
            _guard: guard,
            ticket: self,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.claims.release(self.id);
    }
}

fn superseded_before_start(service: &str, by_token: u64) -> HostError {
    HostError::Superseded(Box::new(Superseded {
        service: service.to_owned(),
        by_token,
        what: "the command".to_owned(),
        kept: "it had not started".to_owned(),
    }))
}

/// The service's command lock, held by the one command under way, with its
/// claim; owned, so an accepted Apply carries it into the task that
/// carries it out.
#[derive(Debug)]
pub(super) struct CommandLock {
    _guard: OwnedMutexGuard<()>,
    ticket: Ticket,
}

impl CommandLock {
    /// What tells this command that a newer one superseded it.
    pub(super) fn cancel(&self) -> Cancel {
        self.ticket.cancel.clone()
    }
}

/// Fires when a command with a higher fencing token supersedes the holder.
#[derive(Debug, Clone)]
pub(super) struct Cancel(watch::Receiver<Option<u64>>);

impl Cancel {
    /// The superseding token, once there is one; pending until then.
    pub(super) async fn superseded(&mut self) -> u64 {
        if let Ok(fired) = self.0.wait_for(Option::is_some).await {
            if let Some(token) = *fired {
                return token;
            }
        }
        // The claim ended without being superseded: never.
        std::future::pending().await
    }

    /// The superseding token, if the command was superseded already.
    pub(super) fn fired(&self) -> Option<u64> {
        *self.0.borrow()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Long enough for a task that could go on to do so; the tests assert
    /// that it did not.
    const SETTLE: Duration = Duration::from_millis(50);

    fn claims() -> Arc<Claims> {
        Arc::new(Claims::default())
    }

    #[tokio::test]
    async fn a_service_held_by_agentctl_is_busy_for_everyone() {
        let claims = claims();
        let held = claims.claim(0, None).unwrap().take("web").await.unwrap();
        assert_eq!(claims.claim(5, Some(5)).unwrap_err(), Admission::Busy);
        assert_eq!(claims.claim(0, None).unwrap_err(), Admission::Busy);
        drop(held);
        assert!(claims.in_flight().is_none(), "the claim ends with the lock");
        claims.claim(5, Some(5)).unwrap().take("web").await.unwrap();
    }

    #[tokio::test]
    async fn a_higher_token_cancels_the_holder_and_takes_the_lock_after_it() {
        let claims = claims();
        let older = claims.claim(5, Some(5)).unwrap().take("web").await.unwrap();
        let mut cancel = older.cancel();
        let newer = claims.claim(6, Some(6)).unwrap();
        assert_eq!(newer.superseding(), Some(5));
        assert_eq!(cancel.superseded().await, 6);
        let mut taking = tokio::spawn(newer.take("web"));
        // The older command still brings the service back: no lock yet.
        assert!(
            tokio::time::timeout(SETTLE, &mut taking).await.is_err(),
            "took the lock while the superseded command held it"
        );
        drop(older);
        let newer = taking.await.unwrap().unwrap();
        assert_eq!(newer.cancel().fired(), None);
        assert_eq!(claims.in_flight(), Some(InFlight { token: Some(6) }));
    }

    #[tokio::test]
    async fn a_claim_superseded_while_it_waits_never_takes_the_lock() {
        let claims = claims();
        let first = claims.claim(5, Some(5)).unwrap().take("web").await.unwrap();
        let second = tokio::spawn(claims.claim(6, Some(6)).unwrap().take("web"));
        let third = tokio::spawn(claims.claim(7, Some(7)).unwrap().take("web"));
        match second.await.unwrap() {
            Err(HostError::Superseded(s)) => assert_eq!(s.by_token, 7),
            other => panic!("expected superseded, got {other:?}"),
        }
        drop(first);
        third.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_dropped_ticket_gives_its_claim_up_but_not_a_newer_one() {
        let claims = claims();
        let first = claims.claim(5, Some(5)).unwrap();
        drop(first);
        assert!(claims.in_flight().is_none());
        let held = claims.claim(5, Some(5)).unwrap().take("web").await.unwrap();
        let newer = claims.claim(6, Some(6)).unwrap();
        // The superseded holder ends: the newer claim stays.
        drop(held);
        assert_eq!(claims.in_flight(), Some(InFlight { token: Some(6) }));
        newer.take("web").await.unwrap();
    }
}
