//! An uninstall as the service's actor runs it (#15: how a failed first
//! install is rolled back): the service's instances stopped within a
//! budget slot, its sockets closed, "not installed" recorded durably, its
//! releases kept in the store (the one it ran becomes the first previous
//! one, pinned) for a later Apply.
//!
//! Must never: record "not installed" while an instance of the service
//! still runs, or remove a release from the store.

use super::actor::Cancel;
use super::runtime::{ServiceRuntime, stop_all};
use super::{Host, HostError, Superseded};
use crate::state::{SwitchOutcome, Trigger};
use crate::wire;

impl Host {
    /// The uninstall, as the service's actor runs it. Nothing running is
    /// recorded all the same: the coordinator reads its deployment and
    /// token back from the durable state. Cancelled (superseded) only
    /// while it waits for its budget slot; once instances stop, it ends.
    pub(super) async fn uninstall_now(
        &self,
        service: &str,
        rt: &mut ServiceRuntime,
        trigger: Trigger,
        mut cancel: Cancel,
    ) -> Result<String, HostError> {
        let Some(version) = rt
            .running
            .as_ref()
            .map(|r| r.release.manifest.version().to_string())
        else {
            rt.last_error.clear();
            let persisted = self
                .persist_uninstall(service, trigger, SwitchOutcome::Succeeded)
                .await;
            rt.publish();
            persisted?;
            self.publish_service(service).await;
            return Ok(format!("{service} is not installed"));
        };
        rt.switching = Some(proto::v1::SwitchState::Switching);
        rt.publish();
        let purpose = format!("{} {service} ({version})", wire::trigger(&trigger));
        let disruption = match self.take_slot(service, &purpose, &mut cancel).await {
            Ok(slot) => slot,
            Err(err) => {
                rt.switching = None;
                rt.last_error = cli::chain(&err);
                let failed = SwitchOutcome::Failed {
                    reason: rt.last_error.clone(),
                };
                let persisted = self.persist_uninstall(service, trigger, failed).await;
                rt.publish();
                persisted?;
                return Err(err);
            }
        };
        if let Some(running) = rt.running.take() {
            stop_all(running.instances).await;
            // The last holder of the service's sockets: they close here.
            drop(running.sockets);
        }
        rt.switching = None;
        rt.last_error.clear();
        let persisted = self
            .persist_uninstall(service, trigger, SwitchOutcome::Succeeded)
            .await;
        rt.publish();
        disruption.release().await;
        persisted?;
        self.publish_service(service).await;
        tracing::info!(service, version, "service uninstalled");
        Ok(format!(
            "{service} is uninstalled (it ran {version}; the release stays in the store)"
        ))
    }

    /// Why a coordinator's Apply must not run: an uninstall with a token
    /// at least as high ran before it reached the actor (see
    /// `ServiceState::uninstalled_by`). Nothing is recorded for it.
    pub(super) async fn outranked_by_uninstall(
        &self,
        service: &str,
        release: &release::StoredRelease,
        trigger: &Trigger,
    ) -> Option<HostError> {
        let Trigger::Apply { token, .. } = trigger else {
            return None;
        };
        let by_token = self
            .state
            .lock()
            .await
            .services
            .get(service)?
            .uninstalled_by(*token)?;
        tracing::warn!(service, token, by_token, digest = %release.digest, "an apply arrived after the uninstall that undoes it; not run");
        Some(HostError::Superseded(Box::new(Superseded {
            service: service.to_owned(),
            by_token,
            what: format!(
                "the apply of {} ({})",
                release.manifest.version(),
                release.digest
            ),
            kept: "the service was uninstalled first (the deployment rolled back); nothing was started".to_owned(),
        })))
    }

    async fn persist_uninstall(
        &self,
        service: &str,
        trigger: Trigger,
        outcome: SwitchOutcome,
    ) -> Result<(), HostError> {
        let mut state = self.state.lock().await;
        state
            .service_mut(service)
            .record_uninstall(wire::now_unix_ms(), trigger, outcome);
        self.save(&state).await
    }
}
