//! A service's switches as its actor runs them: to a release (install,
//! apply, rollback, agent start) and a restart, each holding a budget slot
//! for the disruption, recording its outcome durably.

use cli::chain;
use release::StoredRelease;

use super::actor::{Cancel, Joined};
use super::command::Command;
use super::steps::Executed;
use super::{
    Host, HostError, RestartOrder, Running, ServiceRuntime, Superseded, record_of, stop_all,
};
use crate::cluster::Slot;
use crate::instance::HostedInstance;
use crate::plan;
use crate::state::{SwitchOutcome, Trigger};
use crate::wire;

impl Host {
    /// The core: switch `service` to `target` (see the module doc), as the
    /// service's actor runs it; over when the old instances have drained.
    /// `trigger` is `None` when reconciling at start (nothing to record).
    /// A newer command superseding this one cancels it while it waits for
    /// a budget slot or for the new instances to be ready; one rolling it
    /// forward (same target) is `joined`: the switch is recorded as its.
    pub(super) async fn switch_taken(
        &self,
        service: &str,
        target: StoredRelease,
        trigger: Option<Trigger>,
        (mut cancel, joined): (Cancel, Joined<Command>),
    ) -> Result<String, HostError> {
        // Recorded as the newest command it was rolled forward to; nothing
        // joins once the outcome is known (`close`).
        let cause =
            |trigger: Option<Trigger>| joined.close().and_then(Command::into_trigger).or(trigger);
        let runtime = self.runtime(service);
        let mut rt = runtime.runtime.lock().await;
        if rt
            .running
            .as_ref()
            .is_some_and(|r| r.release.digest == target.digest)
        {
            drop(rt);
            return self.already_running(service, &target, cause(trigger)).await;
        }
        let disruption = match (&trigger, rt.running.is_some()) {
            (Some(trigger), true) => {
                self.switch_slot(service, &target, trigger, &mut cancel)
                    .await?
            }
            // Starting a service that is not running (agent start)
            // disrupts nothing.
            _ => Slot::none(),
        };
        let old = rt.running.take();
        rt.switching = Some(proto::v1::SwitchState::Switching);
        let result = self
            .switch_locked(service, old, &target, &mut rt, cancel)
            .await;
        rt.switching = None;
        let trigger = cause(trigger);
        let record = record_of(&target);
        let recorded = trigger.is_some();
        match result {
            Ok(retiring) => {
                rt.last_error.clear();
                let persisted = match trigger {
                    Some(trigger) => {
                        self.persist(service, record, trigger, SwitchOutcome::Succeeded)
                            .await
                    }
                    None => Ok(()),
                };
                drop(rt);
                // The target serves and is durable: say so before the old
                // instances drain, so a rollout need not wait for their
                // stop. The budget slot and the command stay held until
                // they are gone: the disruption lasts that long.
                if persisted.is_ok() {
                    self.publish_service(service).await;
                }
                stop_all(retiring).await;
                disruption.release().await;
                persisted?;
                if recorded {
                    self.collect_garbage().await;
                }
                Ok(format!(
                    "{service} now runs {} ({})",
                    target.manifest.version(),
                    target.digest
                ))
            }
            Err(err) => {
                disruption.release().await;
                // The whole story, log tail included: this is what the
                // coordinator's history and `agentctl status` show.
                rt.last_error = chain(&err);
                if let Some(trigger) = trigger {
                    let failed = SwitchOutcome::Failed {
                        reason: rt.last_error.clone(),
                    };
                    self.persist(service, record, trigger, failed).await?;
                }
                Err(err)
            }
        }
    }

    /// The budget slot of a switch: a planned disruption.
    pub(super) async fn switch_slot(
        &self,
        service: &str,
        target: &StoredRelease,
        trigger: &Trigger,
        cancel: &mut Cancel,
    ) -> Result<Slot, HostError> {
        let purpose = format!(
            "{} {service} to {}",
            wire::trigger(trigger),
            target.manifest.version()
        );
        self.take_slot(service, &purpose, cancel).await
    }

    /// The target already runs: a re-issued command (a new coordinator
    /// resuming), or one that superseded a switch away from it. Nothing to
    /// do but say so, durably for a command (its deployment and token are
    /// what the coordinator reads back).
    pub(super) async fn already_running(
        &self,
        service: &str,
        target: &StoredRelease,
        trigger: Option<Trigger>,
    ) -> Result<String, HostError> {
        if let Some(trigger) = trigger {
            self.runtime(service)
                .runtime
                .lock()
                .await
                .last_error
                .clear();
            self.persist(
                service,
                record_of(target),
                trigger,
                SwitchOutcome::Succeeded,
            )
            .await?;
            self.publish_service(service).await;
        }
        Ok(format!(
            "{service} already runs {} ({})",
            target.manifest.version(),
            target.digest
        ))
    }

    pub(super) async fn switch_locked(
        &self,
        service: &str,
        old: Option<Running>,
        target: &StoredRelease,
        rt: &mut ServiceRuntime,
        cancel: Cancel,
    ) -> Result<Vec<HostedInstance>, HostError> {
        // The agent keeps the sockets across versions when the addresses
        // stay the same: that is what lets old and new serve together.
        let sockets = match &old {
            Some(o) if self.listen(service, &o.release) == self.listen(service, target) => {
                o.sockets.clone()
            }
            _ => match self.bind(service, target) {
                Ok(sockets) => sockets,
                Err(err) => {
                    rt.running = old;
                    return Err(err);
                }
            },
        };
        match self
            .execute(
                service,
                plan::Command::Switch,
                old,
                (target, sockets),
                cancel,
            )
            .await
        {
            Executed::Committed { running, retiring } => {
                rt.running = Some(running);
                Ok(retiring)
            }
            Executed::Failed { running, error } => {
                rt.running = running;
                Err(error)
            }
        }
    }

    /// The rollback, as the service's actor runs it: the previous release
    /// is read now (a superseded switch is over by then).
    pub(super) async fn rollback_now(
        &self,
        service: &str,
        steer: (Cancel, Joined<Command>),
    ) -> Result<String, HostError> {
        let previous = {
            let state = self.state.lock().await;
            let known = state
                .services
                .get(service)
                .ok_or_else(|| HostError::UnknownService {
                    service: service.to_owned(),
                })?;
            known
                .previous
                .first()
                .map(|r| r.digest.clone())
                .ok_or_else(|| HostError::NoPreviousRelease {
                    service: service.to_owned(),
                })?
        };
        let release = self.stored(&previous).await?;
        self.switch_taken(service, release, Some(Trigger::Rollback), steer)
            .await
    }

    /// The restart, as the service's actor runs it.
    pub(super) async fn restart_now(
        &self,
        service: &str,
        order: RestartOrder,
        mut cancel: Cancel,
    ) -> Result<String, HostError> {
        let runtime = self.existing_runtime(service)?;
        let mut rt = runtime.runtime.lock().await;
        if rt.running.is_none() {
            return Err(HostError::UnknownService {
                service: service.to_owned(),
            });
        }
        let disruption = if order.forced {
            self.audit_forced(service, &order).await?;
            Slot::none()
        } else {
            self.take_slot(
                service,
                &format!("restart {service}: {}", order.reason),
                &mut cancel,
            )
            .await?
        };
        let Some(running) = rt.running.take() else {
            disruption.release().await;
            return Err(HostError::UnknownService {
                service: service.to_owned(),
            });
        };
        let release = running.release.clone();
        let sockets = running.sockets.clone();
        let trigger = Trigger::Restart {
            forced: order.forced,
            reason: order.reason.clone(),
        };
        let executed = self
            .execute(
                service,
                plan::Command::Restart,
                Some(running),
                (&release, sockets),
                cancel,
            )
            .await;
        let outcome = match executed {
            Executed::Committed { running, retiring } => {
                rt.running = Some(running);
                stop_all(retiring).await;
                Ok(())
            }
            Executed::Failed { running, error } => {
                rt.running = running;
                Err(error)
            }
        };
        disruption.release().await;
        let record = record_of(&release);
        match outcome {
            Ok(()) => {
                rt.last_error.clear();
                self.persist(service, record, trigger, SwitchOutcome::Succeeded)
                    .await?;
                Ok(format!(
                    "restarted every instance of {service} on {}",
                    release.manifest.version()
                ))
            }
            Err(err) => {
                rt.last_error = chain(&err);
                let failed = SwitchOutcome::Failed {
                    reason: rt.last_error.clone(),
                };
                self.persist(service, record, trigger, failed).await?;
                Err(err)
            }
        }
    }

    /// A budget slot for a planned disruption; waiting for one ends when
    /// a newer command supersedes this one.
    pub(super) async fn take_slot(
        &self,
        service: &str,
        purpose: &str,
        cancel: &mut Cancel,
    ) -> Result<Slot, HostError> {
        let Some(cluster) = &self.cluster else {
            return Ok(Slot::none());
        };
        tokio::select! {
            slot = cluster.take_slot(service, purpose) => Ok(slot?),
            by_token = cancel.superseded() => Err(HostError::Superseded(Box::new(Superseded {
                service: service.to_owned(),
                by_token,
                what: format!("the {purpose}"),
                kept: "it was waiting for a budget slot; nothing was touched".to_owned(),
            }))),
        }
    }

    /// A forced restart skips the budget, so it is recorded first: in etcd
    /// when reachable, else locally until it is.
    pub(super) async fn audit_forced(
        &self,
        service: &str,
        order: &RestartOrder,
    ) -> Result<(), HostError> {
        let target = format!("{}/{service}", self.config.id);
        let record =
            crate::cluster::break_glass(order.actor_uid, "forced-restart", &target, &order.reason);
        self.audit(record).await
    }

    /// Records a break-glass action: in etcd when reachable, else locally
    /// until it is.
    pub(super) async fn audit(&self, record: leases::AuditRecord) -> Result<(), HostError> {
        match &self.cluster {
            Some(cluster) => cluster.audit(record).await?,
            None => {
                let path = self.config.local_audit_file();
                tokio::task::spawn_blocking(move || crate::cluster::append_local(&path, &record))
                    .await??;
            }
        }
        Ok(())
    }
}
