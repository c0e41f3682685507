//! `DeploymentLock`: a service's deployment lock, on a lease of its own.
//!
//! ```text
//! leader session (leadership) ──grants──► lock session (one per deployment)
//!                                            └─ FencedMutex deploy/<service>
//! driver ends ─► fenced delete, then the lock's lease revoked
//! `lockstep locks break` ─► revokes the lock's lease only: leadership holds,
//!                           the driver is fenced and the leader resumes it
//! ```
//!
//! A lock on the leader's own lease could only be cut loose with the
//! leadership: breaking a wedged deployment's lock deposed the leader, and a
//! lock its dropped driver left behind made the leader wait on its own
//! lease. On a lease of its own, the lock goes with its driver.
//!
//! Must never: outlive its driver (dropping it revokes its lease in the
//! background), or be taken by a coordinator that does not lead.

use std::time::Duration;

use etcd_client::Compare;
use leases::{FencedMutex, FencingToken, LockError, LossReason, MutexGuard, Session, SessionError};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum DeploymentLockError {
    #[error("cannot open a lease for the deployment lock of {service}: {source}")]
    Session {
        service: String,
        #[source]
        source: SessionError,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
}

/// A held deployment lock and the lease it is bound to.
#[derive(Debug)]
pub struct DeploymentLock {
    guard: Option<MutexGuard>,
    session: Option<Session>,
}

impl DeploymentLock {
    /// Takes `service`'s lock now (for deployment `id`), or fails with who
    /// holds it.
    pub async fn try_take(
        leader: &Session,
        service: &str,
        id: &str,
    ) -> Result<Self, DeploymentLockError> {
        let session = Self::lease(leader, service).await?;
        let guard = FencedMutex::deployment(service)
            .try_lock(&session, id)
            .await;
        Self::holding(guard, session).await
    }

    /// Waits up to `wait` for `service`'s lock (a resumption waits for the
    /// old holder's lease to go).
    pub async fn take(
        leader: &Session,
        service: &str,
        id: &str,
        wait: Duration,
    ) -> Result<Self, DeploymentLockError> {
        let session = Self::lease(leader, service).await?;
        let guard = FencedMutex::deployment(service)
            .lock(&session, id, wait)
            .await;
        Self::holding(guard, session).await
    }

    async fn lease(leader: &Session, service: &str) -> Result<Session, DeploymentLockError> {
        Session::grant(leader.client().clone(), leader.ttl())
            .await
            .map_err(|source| DeploymentLockError::Session {
                service: service.to_owned(),
                source,
            })
    }

    async fn holding(
        guard: Result<MutexGuard, LockError>,
        session: Session,
    ) -> Result<Self, DeploymentLockError> {
        match guard {
            Ok(guard) => Ok(Self {
                guard: Some(guard),
                session: Some(session),
            }),
            Err(err) => {
                // Nothing is bound to it: let it go now, not in a TTL.
                if let Err(close) = session.close().await {
                    tracing::debug!(error = %close, "cannot revoke an unused lock lease; it expires by itself");
                }
                Err(err.into())
            }
        }
    }

    pub fn token(&self) -> FencingToken {
        self.guard
            .as_ref()
            .map_or(FencingToken(0), MutexGuard::token)
    }

    /// The compare that fences a write made on the lock's behalf.
    pub fn fence(&self) -> Option<Compare> {
        self.guard.as_ref().map(MutexGuard::fence)
    }

    /// Sees the loss of the lock's lease (`None`: no lease, nothing to lose).
    pub fn loss_signal(&self) -> Option<watch::Receiver<Option<LossReason>>> {
        self.session.as_ref().map(Session::loss_signal)
    }

    /// The lock itself, for a transaction that deletes it.
    pub fn guard(&self) -> Option<&MutexGuard> {
        self.guard.as_ref()
    }

    /// Deletes the key if it is still ours, then revokes the lease (which
    /// deletes it in any case).
    pub async fn release(mut self) -> Result<(), LockError> {
        let released = match self.guard.take() {
            Some(guard) => guard.release().await,
            None => Ok(()),
        };
        self.close().await;
        released
    }

    /// For a key the holder deleted in a transaction of its own.
    pub async fn deleted_by_holder(mut self) {
        if let Some(guard) = self.guard.take() {
            guard.deleted_by_holder();
        }
        self.close().await;
    }

    async fn close(&mut self) {
        if let Some(session) = self.session.take() {
            let lease = session.lease_id();
            if let Err(err) = session.close().await {
                tracing::warn!(lease = format_args!("{lease:x}"), error = %err, "cannot revoke a deployment lock's lease; it expires by itself");
            }
        }
    }
}

impl Drop for DeploymentLock {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        // The guard's own drop deletes the key in the background; the
        // lease goes too, so nothing of the lock outlives its driver.
        drop(self.guard.take());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        drop(runtime.spawn(async move {
            let lease = session.lease_id();
            if let Err(err) = session.close().await {
                tracing::warn!(lease = format_args!("{lease:x}"), error = %err, "cannot revoke a dropped deployment lock's lease; it expires by itself");
            }
        }));
    }
}
