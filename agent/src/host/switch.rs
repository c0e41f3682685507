//! A service's switches as its actor runs them: to a release (install,
//! apply, rollback, agent start) and a restart, each holding a budget slot
//! for the disruption, recording its outcome durably, then showing it
//! (`ServiceRuntime::publish`). Each has the service's runtime for as long
//! as it runs: the actor lent it.
//!
//! Must never: show a switch's outcome before it is durable, or leave the
//! view saying switching once it is over.

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
use crate::state::{ReleaseRecord, SwitchOutcome, Trigger};
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
        rt: &mut ServiceRuntime,
        target: StoredRelease,
        trigger: Option<Trigger>,
        (mut cancel, joined): (Cancel, Joined<Command>),
    ) -> Result<String, HostError> {
        // Recorded as the newest command it was rolled forward to; nothing
        // joins once the outcome is known (`close`).
        let cause =
            |trigger: Option<Trigger>| joined.close().and_then(Command::into_trigger).or(trigger);
        if rt
            .running
            .as_ref()
            .is_some_and(|r| r.release.digest == target.digest)
        {
            return self
                .already_running(service, rt, &target, cause(trigger))
                .await;
        }
        // Switching from here, the budget wait included: a coordinator
        // waits for a switch in progress instead of judging it.
        rt.switching = Some(proto::v1::SwitchState::Switching);
        rt.publish();
        let disruption = match (&trigger, rt.running.is_some()) {
            (Some(trigger), true) => {
                self.switch_slot(service, &target, trigger, &mut cancel)
                    .await
            }
            // Starting a service that is not running (agent start)
            // disrupts nothing.
            _ => Ok(Slot::none()),
        };
        let disruption = match disruption {
            Ok(slot) => slot,
            Err(err) => {
                rt.switching = None;
                rt.publish();
                return Err(err);
            }
        };
        let old = rt.running.take();
        let result = self.switch_locked(service, old, &target, rt, cancel).await;
        rt.switching = None;
        let trigger = cause(trigger);
        match result {
            Ok(retiring) => {
                self.switched(service, rt, &target, trigger, (retiring, disruption))
                    .await
            }
            Err(err) => {
                disruption.release().await;
                self.failed(service, rt, record_of(&target), trigger, err)
                    .await
            }
        }
    }

    /// A switch committed: the target is made durable and shown, then the
    /// old instances drain.
    async fn switched(
        &self,
        service: &str,
        rt: &mut ServiceRuntime,
        target: &StoredRelease,
        trigger: Option<Trigger>,
        (retiring, disruption): (Vec<HostedInstance>, Slot),
    ) -> Result<String, HostError> {
        rt.last_error.clear();
        let recorded = trigger.is_some();
        let persisted = match trigger {
            Some(trigger) => {
                self.persist(
                    service,
                    record_of(target),
                    trigger,
                    SwitchOutcome::Succeeded,
                )
                .await
            }
            None => Ok(()),
        };
        rt.publish();
        // The old instances serve on the shared socket until they have
        // drained: shown until then, so nobody (the coordinator judging
        // this host) takes the host for on its target before they are gone.
        rt.view.starting(&retiring);
        // The target serves and is durable: say so before the old
        // instances drain. The budget slot and the command stay held until
        // they are gone: the disruption lasts that long.
        if persisted.is_ok() {
            self.publish_service(service).await;
        }
        stop_all(retiring).await;
        rt.publish();
        if persisted.is_ok() {
            self.publish_service(service).await;
        }
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

    /// A switch or restart that failed (or was superseded), the service
    /// brought back: its story recorded (for a command), then shown.
    async fn failed(
        &self,
        service: &str,
        rt: &mut ServiceRuntime,
        record: ReleaseRecord,
        trigger: Option<Trigger>,
        err: HostError,
    ) -> Result<String, HostError> {
        // The whole story, log tail included: this is what the
        // coordinator's history and `agentctl status` show.
        rt.last_error = chain(&err);
        let persisted = match trigger {
            Some(trigger) => {
                let failed = SwitchOutcome::Failed {
                    reason: rt.last_error.clone(),
                };
                self.persist(service, record, trigger, failed).await
            }
            None => Ok(()),
        };
        rt.publish();
        persisted?;
        Err(err)
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
        rt: &mut ServiceRuntime,
        target: &StoredRelease,
        trigger: Option<Trigger>,
    ) -> Result<String, HostError> {
        if let Some(trigger) = trigger {
            rt.last_error.clear();
            let persisted = self
                .persist(
                    service,
                    record_of(target),
                    trigger,
                    SwitchOutcome::Succeeded,
                )
                .await;
            rt.publish();
            persisted?;
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
                (cancel, &rt.view),
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
        rt: &mut ServiceRuntime,
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
        self.switch_taken(service, rt, release, Some(Trigger::Rollback), steer)
            .await
    }

    /// The restart, as the service's actor runs it.
    pub(super) async fn restart_now(
        &self,
        service: &str,
        rt: &mut ServiceRuntime,
        order: RestartOrder,
        mut cancel: Cancel,
    ) -> Result<String, HostError> {
        if rt.running.is_none() {
            return Err(HostError::UnknownService {
                service: service.to_owned(),
            });
        }
        rt.switching = Some(proto::v1::SwitchState::Switching);
        rt.publish();
        let disruption = match self.restart_slot(service, &order, &mut cancel).await {
            Ok(slot) => slot,
            Err(err) => {
                rt.switching = None;
                rt.publish();
                return Err(err);
            }
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
                (cancel, &rt.view),
            )
            .await;
        let outcome = match executed {
            Executed::Committed { running, retiring } => {
                rt.running = Some(running);
                rt.publish();
                rt.view.starting(&retiring);
                stop_all(retiring).await;
                rt.publish();
                Ok(())
            }
            Executed::Failed { running, error } => {
                rt.running = running;
                Err(error)
            }
        };
        disruption.release().await;
        rt.switching = None;
        let record = record_of(&release);
        if let Err(err) = outcome {
            return self.failed(service, rt, record, Some(trigger), err).await;
        }
        rt.last_error.clear();
        let persisted = self
            .persist(service, record, trigger, SwitchOutcome::Succeeded)
            .await;
        rt.publish();
        persisted?;
        Ok(format!(
            "restarted every instance of {service} on {}",
            release.manifest.version()
        ))
    }

    /// A restart's budget slot, or none for a forced one (audited first).
    async fn restart_slot(
        &self,
        service: &str,
        order: &RestartOrder,
        cancel: &mut Cancel,
    ) -> Result<Slot, HostError> {
        if order.forced {
            self.audit_forced(service, order).await?;
            return Ok(Slot::none());
        }
        let purpose = format!("restart {service}: {}", order.reason);
        self.take_slot(service, &purpose, cancel).await
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
