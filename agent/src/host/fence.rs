//! The IO half of fencing on the agent: reads a service's deployment lock
//! from etcd, asks the pure rules (`admission::vouch`,
//! `admission::reset_mark`) and carries out their answer — a token
//! refused before anything durable changes, or the break-glass lowering
//! of a high-water mark (`agentctl fence reset`), audited first.
//!
//! ```text
//!   command otherwise valid ─► read deploy lock (≤ 3 s) ─► vouch ─► Vouched: the actor admits
//!                                                               └► refused: nothing written
//! ```
//!
//! Must never: write the durable state for a token etcd did not vouch for,
//! raise a mark, or lower one without an audit record.

use cli::chain;
use leases::LockState;

use super::{Host, HostError};
use crate::admission::{self, LockReading, MarkReset, Vouch};
use crate::cluster::LockReadError;
use crate::state::StaleToken;

/// `agentctl fence reset`: who asks, why, and whether etcd may be ignored.
#[derive(Debug, Clone)]
pub struct FenceReset {
    pub force: bool,
    pub reason: String,
    /// The caller's uid (agentctl), for the audit record.
    pub actor_uid: Option<u32>,
}

/// A service's fence as `agentctl fence` shows it.
#[derive(Debug)]
pub struct FenceView {
    pub service: String,
    /// The durable high-water mark before any reset.
    pub high_water: u64,
    /// What etcd says about the service's deployment lock.
    pub lock: LockReading,
    /// Why etcd could not be read, when it could not.
    pub unread: Option<LockReadError>,
    /// The mark after a reset; `None`: unchanged.
    pub reset_to: Option<u64>,
}

impl Host {
    /// What etcd says about `service`'s deployment lock now, and why it
    /// could not be read when it could not.
    async fn lock_reading(&self, service: &str) -> (LockReading, Option<LockReadError>) {
        let Some(cluster) = &self.cluster else {
            return (LockReading::Unchecked, None);
        };
        match cluster.deploy_lock(service).await {
            Ok(LockState::Held { token, .. }) => (LockReading::Held(token.0), None),
            Ok(LockState::Free { revision }) => (LockReading::Free { revision }, None),
            Err(err) => (LockReading::Unreadable, Some(err)),
        }
    }

    /// Refuses a coordinator's `token` for `service` unless etcd vouches
    /// for it (`admission::vouch`). Called once the command is otherwise
    /// valid and before anything durable changes: a refusal writes nothing.
    pub(super) async fn vouched(&self, service: &str, token: u64) -> Result<(), HostError> {
        let high_water = self.high_water(service).await;
        if token < high_water {
            // Stale without asking etcd.
            return Err(stale(service, token, high_water));
        }
        let (reading, unread) = self.lock_reading(service).await;
        let key = leases::keys::deploy_lock(service);
        match admission::vouch(high_water, token, reading) {
            Vouch::Vouched => Ok(()),
            Vouch::Stale { high_water } => Err(stale(service, token, high_water)),
            Vouch::NotTheLock { held } => {
                tracing::warn!(
                    service,
                    token,
                    held,
                    key,
                    "refused a fencing token that is not its deployment lock's"
                );
                Err(HostError::NotTheLock {
                    service: service.to_owned(),
                    offered: token,
                    key,
                    held,
                })
            }
            Vouch::Unverified => {
                tracing::warn!(
                    service,
                    token,
                    key,
                    error = unread.as_ref().map(|e| chain(e)),
                    "cannot check a fencing token against etcd; refused for now"
                );
                Err(HostError::FenceUnverified {
                    service: service.to_owned(),
                    offered: token,
                    key,
                    source: unread.map(Box::new),
                })
            }
        }
    }

    /// `agentctl fence SERVICE [reset]`: the service's mark and what etcd
    /// says; with `reset`, the mark lowered as `admission::reset_mark`
    /// allows, the audit record written first.
    pub async fn fence(
        &self,
        service: &str,
        reset: Option<FenceReset>,
    ) -> Result<FenceView, HostError> {
        self.known(service).await?;
        let high_water = self.high_water(service).await;
        let (lock, unread) = self.lock_reading(service).await;
        let mut view = FenceView {
            service: service.to_owned(),
            high_water,
            lock,
            unread,
            reset_to: None,
        };
        let Some(reset) = reset else {
            return Ok(view);
        };
        let to = match admission::reset_mark(high_water, lock, reset.force) {
            MarkReset::Justified => return Ok(view),
            MarkReset::NeedsForce => {
                return Err(HostError::FenceResetNeedsForce {
                    service: service.to_owned(),
                    high_water,
                    etcd: match &view.unread {
                        Some(err) => chain(err),
                        None => "this agent has no [etcd]".to_owned(),
                    },
                });
            }
            MarkReset::LowerTo(to) => to,
        };
        let target = format!("{}/{service}", self.config.id);
        let record = crate::cluster::break_glass(
            reset.actor_uid,
            "fence-reset",
            &target,
            &reset.reason,
        )
        .with_detail(&format!(
            "fencing high-water mark {high_water} lowered to {to}; etcd: {lock:?}; forced: {}",
            reset.force
        ));
        self.audit(record).await?;
        self.lower_mark(service, high_water, to).await?;
        tracing::warn!(
            service,
            from = high_water,
            to,
            forced = reset.force,
            "fencing high-water mark lowered (agentctl fence reset)"
        );
        view.reset_to = Some(to);
        Ok(view)
    }

    /// Lowers the mark from `from` to `to`, durably; refused when a
    /// command changed it since it was read (the operator runs it again).
    async fn lower_mark(&self, service: &str, from: u64, to: u64) -> Result<(), HostError> {
        let mut state = self.state.lock().await;
        let Some(known) = state.services.get_mut(service) else {
            return Err(HostError::UnknownService {
                service: service.to_owned(),
            });
        };
        if known.fencing_high_water != from {
            return Err(HostError::FenceMoved {
                service: service.to_owned(),
                read: from,
                now: known.fencing_high_water,
            });
        }
        known.fencing_high_water = to;
        self.save(&state).await?;
        Ok(())
    }
}

fn stale(service: &str, offered: u64, high_water: u64) -> HostError {
    HostError::StaleToken(StaleToken {
        service: service.to_owned(),
        offered,
        high_water,
    })
}
