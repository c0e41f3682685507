//! The commands a service's actor takes (`actor::Order`), and how the
//! host carries each one out (`ServiceExecutor`).
//!
//! Must never: decide whether a command runs (`admission` and the actor
//! do), or run a command other than through its service's actor.

use std::sync::Weak;
use std::time::Instant;

use release::StoredRelease;

use super::actor::{Cancel, Executor, Joined, Retire, Run};
use super::reconcile::Recorded;
use super::runtime::ServiceRuntime;
use super::{Host, HostError, RestartOrder};
use crate::state::Trigger;
use crate::telemetry::SwitchOutcome;

/// How a command's outcome counts in the switch metrics.
fn switch_outcome(outcome: &Result<String, HostError>) -> SwitchOutcome {
    match outcome {
        Ok(_) => SwitchOutcome::Succeeded,
        Err(HostError::Superseded(_)) => SwitchOutcome::Superseded,
        Err(_) => SwitchOutcome::Failed,
    }
}

/// What a service's actor is asked to do.
#[derive(Debug)]
pub(super) enum Command {
    /// The coordinator's Apply; the release is stored and verified.
    Apply {
        release: StoredRelease,
        trigger: Trigger,
    },
    /// `agentctl install`; the bundle is stored and verified.
    Install(StoredRelease),
    /// Back to the release before the current one (read when it runs).
    Rollback,
    /// Every instance replaced by a fresh one, slot by slot.
    Restart(RestartOrder),
    /// The coordinator's Uninstall: every instance stopped, "not
    /// installed" recorded (its trigger says by which deployment).
    Uninstall(Trigger),
    /// Agent start: run the current release (nothing recorded).
    Start(StoredRelease),
    /// Agent start: take over the processes a previous agent left running.
    Adopt {
        release: StoredRelease,
        found: Vec<Recorded>,
    },
}

impl Command {
    /// A switch as `lockstep_agent_switches_total` counts them: install,
    /// apply, rollback, restart, uninstall (not the agent's own start or adoption).
    fn is_switch(&self) -> bool {
        !matches!(self, Self::Start(_) | Self::Adopt { .. })
    }

    /// What a switch rolled forward to this command records as its cause.
    pub(super) fn into_trigger(self) -> Option<Trigger> {
        match self {
            Self::Apply { trigger, .. } => Some(trigger),
            _ => None,
        }
    }
}

/// Carries out one service's commands on the host.
#[derive(Debug)]
pub(super) struct ServiceExecutor {
    pub host: Weak<Host>,
    pub service: String,
}

impl ServiceExecutor {
    fn host(&self) -> Result<std::sync::Arc<Host>, HostError> {
        self.host.upgrade().ok_or_else(|| HostError::ActorGone {
            what: format!("the host of `{}`", self.service),
        })
    }
}

impl Executor for ServiceExecutor {
    type Command = Command;
    type Runtime = ServiceRuntime;

    fn service(&self) -> &str {
        &self.service
    }

    fn target(command: &Command) -> Option<String> {
        match command {
            // Only an Apply names its release before it runs (and only a
            // coordinator's command can roll another one forward).
            Command::Apply { release, .. } => Some(release.digest.to_string()),
            _ => None,
        }
    }

    async fn high_water(&self) -> u64 {
        match self.host.upgrade() {
            Some(host) => host.high_water(&self.service).await,
            None => 0,
        }
    }

    async fn raise_mark(&self, token: u64) -> Result<(), HostError> {
        self.host()?.raise_mark(&self.service, token).await
    }

    async fn retire(&self, runtime: ServiceRuntime, how: Retire) {
        runtime.retire(how).await;
    }

    fn execute(
        &self,
        command: Command,
        mut runtime: ServiceRuntime,
        cancel: Cancel,
        joined: Joined<Command>,
    ) -> Run<ServiceRuntime> {
        let host = self.host();
        let service = self.service.clone();
        Box::pin(async move {
            let host = match host {
                Ok(host) => host,
                Err(err) => return (runtime, Err(err)),
            };
            let rt = &mut runtime;
            let switch = command
                .is_switch()
                .then(|| (Instant::now(), host.metrics().service(&service)));
            // Closed when the command ends, whatever it recorded: no newer
            // command joins a command that is over (it runs after it).
            let ending = joined.clone();
            let steer = (cancel, joined);
            let outcome = match command {
                Command::Apply { release, trigger } => {
                    match host
                        .outranked_by_uninstall(&service, &release, &trigger)
                        .await
                    {
                        Some(err) => Err(err),
                        None => {
                            host.switch_taken(&service, rt, release, Some(trigger), steer)
                                .await
                        }
                    }
                }
                Command::Install(release) => {
                    host.switch_taken(&service, rt, release, Some(Trigger::Install), steer)
                        .await
                }
                Command::Start(release) => {
                    host.switch_taken(&service, rt, release, None, steer).await
                }
                Command::Rollback => host.rollback_now(&service, rt, steer).await,
                Command::Restart(order) => host.restart_now(&service, rt, order, steer.0).await,
                Command::Uninstall(trigger) => {
                    host.uninstall_now(&service, rt, trigger, steer.0).await
                }
                Command::Adopt { release, found } => {
                    host.adopt(&service, rt, &release, found).await
                }
            };
            if let Some(unrecorded) = ending.close() {
                // Joined after the switch stopped before recording (a
                // budget slot it could not get): it ends as this one did.
                tracing::warn!(service, trigger = ?unrecorded.into_trigger(), "a command rolled forward into a switch that ended before recording its outcome");
            }
            if let Some((started, metrics)) = switch {
                metrics.switch_ended(switch_outcome(&outcome), started.elapsed());
            }
            (runtime, outcome)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Superseded;

    #[test]
    fn a_switch_counts_as_succeeded_failed_or_superseded() {
        assert_eq!(
            switch_outcome(&Ok("switched".to_owned())),
            SwitchOutcome::Succeeded
        );
        let superseded = HostError::Superseded(Box::new(Superseded {
            service: "web".to_owned(),
            by_token: 7,
            what: "the restart".to_owned(),
            kept: String::new(),
        }));
        assert_eq!(switch_outcome(&Err(superseded)), SwitchOutcome::Superseded);
        let busy = HostError::Busy {
            service: "web".to_owned(),
        };
        assert_eq!(switch_outcome(&Err(busy)), SwitchOutcome::Failed);
    }

    #[test]
    fn rollbacks_and_restarts_are_switches() {
        assert!(Command::Rollback.is_switch());
        assert!(Command::Restart(RestartOrder::default()).is_switch());
    }
}
