//! Carrying out the planner's steps (`plan::plan`, `plan::recover`) on
//! a service's instances: start the new, stop the old, bring back.

//! Must never: leave a slot empty after a failure, or decide a step
//! itself (the planner does).

use std::collections::BTreeMap;
use std::time::Duration;

use cli::chain;
use release::StoredRelease;
use tokio::sync::watch;
use tokio::time::Instant;

use super::actor::Cancel;
use super::runtime::ViewSender;
use super::{Host, HostError, Running, Superseded, SwitchFailure, stop_all, with_kept};
use crate::instance::HostedInstance;
use crate::plan;
use crate::supervisor::{InstanceState, InstanceStatus, ListenSockets};

/// Lines of the failed release's log quoted in a switch failure.
pub(super) const FAILURE_LOG_LINES: usize = 20;
/// Beyond the release's healthy_deadline, how long a switch waits for the
/// supervisor's own verdict before calling the start failed.
pub(super) const READY_GRACE: Duration = Duration::from_secs(1);

/// What carrying out a plan left.
pub(super) enum Executed {
    /// The target runs (the caller makes it durable); the old instances
    /// still to stop (they drain after the target is durable).
    Committed {
        running: Running,
        retiring: Vec<HostedInstance>,
    },
    /// A step failed and the service was brought back: what runs now.
    Failed {
        running: Option<Running>,
        error: HostError,
    },
}

/// The instances a failed plan leaves, by slot.
pub(super) struct Bench {
    /// What ran before, with its sockets.
    old_release: Option<(StoredRelease, ListenSockets)>,
    old_slots: BTreeMap<u32, HostedInstance>,
    new_slots: BTreeMap<u32, HostedInstance>,
}

pub(super) fn by_slot(instances: Vec<HostedInstance>) -> BTreeMap<u32, HostedInstance> {
    instances.into_iter().map(|i| (i.slot(), i)).collect()
}

pub(super) fn take_slots(
    from: &mut BTreeMap<u32, HostedInstance>,
    slots: &[u32],
) -> Vec<HostedInstance> {
    slots.iter().filter_map(|s| from.remove(s)).collect()
}

impl Host {
    /// Carries out `command` (see `plan`): `old` is what runs, `target`
    /// the release to run on its sockets (a restart: the same release).
    /// Superseded while new instances start: they are stopped and the
    /// service brought back like after any failed step. Every instance
    /// started or stopped on the way is shown on `view` at once.
    pub(super) async fn execute(
        &self,
        service: &str,
        command: plan::Command,
        old: Option<Running>,
        (target, sockets): (&StoredRelease, ListenSockets),
        (mut cancel, view): (Cancel, &ViewSender),
    ) -> Executed {
        let (old_release, mut old_slots) = match old {
            Some(r) => (Some((r.release, r.sockets)), by_slot(r.instances)),
            None => (None, BTreeMap::new()),
        };
        let running = u32::try_from(old_slots.len()).unwrap_or(u32::MAX);
        let plan_view = plan::View {
            running,
            target: match command {
                plan::Command::Switch => target.manifest.run().instances,
                plan::Command::Restart => running,
            },
            overlap: target.manifest.overlap(),
        };
        let mut new_slots = BTreeMap::new();
        let mut committed = false;
        let mut retiring = Vec::new();
        for step in plan::plan(command, plan_view) {
            match step {
                plan::Step::StartNew(slots) => {
                    let started = self
                        .start_slots(service, target, (&sockets, &slots), (&mut cancel, view))
                        .await;
                    match started {
                        Ok(started) => new_slots.extend(by_slot(started)),
                        Err(error) => {
                            let occupancy = plan::Occupancy {
                                old: old_slots.keys().copied().collect(),
                                new: new_slots.keys().copied().collect(),
                            };
                            let steps = plan::recover(command, plan_view, &occupancy);
                            let bench = Bench {
                                old_release,
                                old_slots,
                                new_slots,
                            };
                            let (running, kept) =
                                self.recover(service, command, steps, (bench, view)).await;
                            return Executed::Failed {
                                running,
                                error: with_kept(error, &kept),
                            };
                        }
                    }
                }
                plan::Step::StopOld(slots) if committed => {
                    retiring.extend(take_slots(&mut old_slots, &slots));
                }
                plan::Step::StopOld(slots) => {
                    let stopping = take_slots(&mut old_slots, &slots);
                    view.gone(&stopping);
                    stop_all(stopping).await;
                }
                plan::Step::Commit => committed = true,
                // Recovery steps: `plan` never returns them.
                plan::Step::StopNew(_) | plan::Step::StartOld(_) => {}
            }
        }
        retiring.extend(old_slots.into_values());
        Executed::Committed {
            running: Running {
                release: target.clone(),
                sockets,
                instances: new_slots.into_values().collect(),
            },
            retiring,
        }
    }

    /// Brings the service back after a failed step (`plan::recover`);
    /// returns what runs now and what to tell about it.
    pub(super) async fn recover(
        &self,
        service: &str,
        command: plan::Command,
        steps: Vec<plan::Step>,
        (bench, view): (Bench, &ViewSender),
    ) -> (Option<Running>, String) {
        let Bench {
            old_release,
            mut old_slots,
            mut new_slots,
        } = bench;
        let what = match command {
            plan::Command::Switch => "the old release",
            plan::Command::Restart => "the old instance",
        };
        let mut kept = match old_release {
            Some(_) => format!("{what} keeps serving"),
            None => String::new(),
        };
        for step in steps {
            match step {
                plan::Step::StopNew(slots) => {
                    let stopping = take_slots(&mut new_slots, &slots);
                    view.gone(&stopping);
                    stop_all(stopping).await;
                }
                plan::Step::StartOld(slots) => {
                    let Some((release, sockets)) = &old_release else {
                        continue;
                    };
                    let (started, verdict) = self
                        .restore_slots(service, release, (sockets, &slots), view)
                        .await;
                    old_slots.extend(by_slot(started));
                    kept = match verdict {
                        Ok(()) => format!("{what} was started again and serves"),
                        Err(reason) => format!(
                            "{what} was started again but is not ready ({reason}); its supervisor keeps restarting it"
                        ),
                    };
                }
                plan::Step::StartNew(_) | plan::Step::StopOld(_) | plan::Step::Commit => {}
            }
        }
        let Some((release, sockets)) = old_release else {
            stop_all(new_slots.into_values().collect()).await;
            return (None, kept);
        };
        // A restart's already restarted slots run the same release.
        old_slots.extend(new_slots);
        let running = Running {
            release,
            sockets,
            instances: old_slots.into_values().collect(),
        };
        (Some(running), kept)
    }

    /// Starts `release` again in `slots` and keeps every instance that
    /// started, ready in time or not: its supervisor restarts it with
    /// backoff, so a slot never stays empty. The verdict says whether all
    /// became ready.
    pub(super) async fn restore_slots(
        &self,
        service: &str,
        release: &StoredRelease,
        (sockets, slots): (&ListenSockets, &[u32]),
        view: &ViewSender,
    ) -> (Vec<HostedInstance>, Result<(), String>) {
        let mut started = Vec::new();
        let mut verdict = Ok(());
        for &slot in slots {
            match self.start_instance(release, sockets, slot) {
                Ok(instance) => started.push(instance),
                Err(err) => {
                    tracing::error!(service, slot, error = %err, "cannot start the old instance again");
                    verdict = Err(chain(&err));
                }
            }
        }
        view.starting(&started);
        let deadline =
            Instant::now() + release.manifest.readiness().timing.healthy_deadline + READY_GRACE;
        for instance in &started {
            if let Err(reason) = wait_instance_ready(instance.subscribe(), deadline).await {
                if verdict.is_ok() {
                    verdict = Err(reason);
                }
            }
        }
        (started, verdict)
    }

    /// Starts `release` in `slots` and waits until all are ready; on
    /// failure, or superseded meanwhile, every one of them is stopped.
    pub(super) async fn start_slots(
        &self,
        service: &str,
        release: &StoredRelease,
        (sockets, slots): (&ListenSockets, &[u32]),
        (cancel, view): (&mut Cancel, &ViewSender),
    ) -> Result<Vec<HostedInstance>, HostError> {
        let mut started = Vec::new();
        for &slot in slots {
            match self.start_instance(release, sockets, slot) {
                Ok(instance) => started.push(instance),
                Err(err) => {
                    stop_all(started).await;
                    return Err(err);
                }
            }
        }
        // Shown while they start: status and logs during a switch.
        view.starting(&started);
        let failed = tokio::select! {
            ready = all_ready(service, release, &started) => match ready {
                Ok(()) => return Ok(started),
                Err(failure) => HostError::SwitchFailed(failure),
            },
            by_token = cancel.superseded() => HostError::Superseded(Box::new(Superseded {
                service: service.to_owned(),
                by_token,
                what: format!(
                    "the start of {} ({})",
                    release.manifest.version(),
                    release.digest
                ),
                kept: String::new(),
            })),
        };
        view.gone(&started);
        stop_all(started).await;
        Err(failed)
    }
}

/// Waits until every instance is ready within the release's healthy
/// deadline; the first one that is not, and its log, otherwise. Borrows
/// the instances: whoever owns them stops them.
pub(super) async fn all_ready(
    service: &str,
    release: &StoredRelease,
    instances: &[HostedInstance],
) -> Result<(), Box<SwitchFailure>> {
    let deadline =
        Instant::now() + release.manifest.readiness().timing.healthy_deadline + READY_GRACE;
    for instance in instances {
        if let Err(reason) = wait_instance_ready(instance.subscribe(), deadline).await {
            return Err(Box::new(SwitchFailure {
                service: service.to_owned(),
                version: release.manifest.version().to_string(),
                digest: release.digest.to_string(),
                reason,
                kept: String::new(),
                log_tail: instance.log_tail(FAILURE_LOG_LINES).join("\n"),
            }));
        }
    }
    Ok(())
}

/// Ready, or why not: it exited, crash-loops, failed, or missed the deadline.
pub(super) async fn wait_instance_ready(
    mut status: watch::Receiver<InstanceStatus>,
    deadline: Instant,
) -> Result<(), String> {
    let verdict = |s: &InstanceStatus| -> Option<Result<(), String>> {
        if s.restarts > 0
            || matches!(
                s.state,
                InstanceState::CrashLooping | InstanceState::Failed | InstanceState::Stopped
            )
        {
            let exit = s.last_exit.clone().unwrap_or_else(|| s.state.to_string());
            return Some(Err(format!("it {exit}")));
        }
        s.ready.then_some(Ok(()))
    };
    let waited = tokio::time::timeout_at(deadline, status.wait_for(|s| verdict(s).is_some()))
        .await
        .map(|r| r.map(|s| verdict(&s).unwrap_or(Ok(()))));
    match waited {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err("its supervisor ended".to_owned()),
        Err(_) => {
            let s = status.borrow();
            Err(format!(
                "not ready within its healthy_deadline (state {}, {})",
                s.state, s.detail
            ))
        }
    }
}
