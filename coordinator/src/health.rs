//! Health of a switched host, judged from its reports: did an instance
//! confirmed ready on a release exit, restart or stop being ready since?
//!
//! The driver takes a `HealthBaseline` when the engine starts watching an
//! instance (`rollout::Engine::watched`: confirmed ready for its current
//! command) and asks `health_change` on every report after it. Pure: the
//! driver turns a change into `Event::InstanceUnhealthy` and the engine
//! decides what it means.
//!
//! "Restarted" is read from the agent's per-instance restart counter (it
//! only grows while the supervisor keeps the same slot), so it is seen even
//! when the report that showed the instance down was missed or the agent
//! still called the restarted instance ready. A planned restart starts a
//! new instance (counter 0) beside the old one and is not a crash.

use std::collections::BTreeMap;

use proto::v1 as pb;
use rollout::{ApplyId, Installed, ReleaseDigest};

use crate::fleet::{installed, names};

/// What a watched instance looked like when it was confirmed ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthBaseline {
    /// The command it was confirmed ready for (echoed in the event).
    pub apply: ApplyId,
    /// Per slot of the release: the highest restart count reported then.
    restarts: BTreeMap<u32, u32>,
}

fn slot(i: &pb::InstanceStatus) -> u32 {
    i.instance.as_ref().map_or(0, |r| r.slot)
}

fn of_release<'a>(
    status: &'a pb::ServiceStatus,
    release: &'a ReleaseDigest,
) -> impl Iterator<Item = &'a pb::InstanceStatus> {
    status
        .instances
        .iter()
        .filter(move |i| names(i.release.as_ref(), release))
}

impl HealthBaseline {
    /// The baseline from the status that confirmed the instance ready (or,
    /// after a coordinator restart, the first one seen).
    pub fn new(apply: ApplyId, status: &pb::ServiceStatus, release: &Installed) -> Self {
        let mut restarts = BTreeMap::new();
        let instances = release
            .release()
            .into_iter()
            .flat_map(|r| of_release(status, r));
        for i in instances {
            let n = restarts.entry(slot(i)).or_insert(0);
            *n = (*n).max(i.restarts);
        }
        Self { apply, restarts }
    }
}

/// What went wrong with a watched instance since its baseline, in words
/// for the deployment's history; `None` while it is healthy or while there
/// is no report to judge.
pub fn health_change(
    baseline: &HealthBaseline,
    status: Option<&pb::ServiceStatus>,
    release: &Installed,
) -> Option<String> {
    let status = status?;
    // Nothing installed has no health to lose.
    let Installed::Release(release) = release else {
        return None;
    };
    // An agent busy with a command on the service reports it as switching,
    // with the instances it cannot read meanwhile left out: nothing to
    // judge until the next report.
    if matches!(
        status.switch_state(),
        pb::SwitchState::Switching | pb::SwitchState::RollingBack
    ) {
        return None;
    }
    match installed(Some(status)) {
        Ok(now) if now == *release => {}
        Ok(now) => {
            return Some(format!(
                "the host no longer runs {} (now: {})",
                release.short(),
                now.short()
            ));
        }
        Err(e) => return Some(format!("the host reports an unreadable release: {e}")),
    }
    if baseline.restarts.is_empty() {
        return Some(format!("no instance of {} is running", release.short()));
    }
    for (&slot_no, &before) in &baseline.restarts {
        let entries: Vec<&pb::InstanceStatus> = of_release(status, release)
            .filter(|i| slot(i) == slot_no)
            .collect();
        let Some(worst) = entries.iter().max_by_key(|i| i.restarts) else {
            return Some(format!("instance #{slot_no} is gone"));
        };
        if worst.restarts > before {
            return Some(format!(
                "instance #{slot_no} exited and was restarted after it was ready ({} restart(s) since){}",
                worst.restarts - before,
                detail(worst)
            ));
        }
        if let Some(bad) = entries.iter().find(|i| {
            matches!(
                i.state(),
                pb::InstanceState::CrashLooping | pb::InstanceState::Failed
            )
        }) {
            return Some(format!(
                "instance #{slot_no} is {}{}",
                state_name(bad.state()),
                detail(bad)
            ));
        }
        let serving = entries
            .iter()
            .any(|i| i.ready && i.state() == pb::InstanceState::Ready);
        if !serving {
            let shown = entries[0];
            return Some(format!(
                "instance #{slot_no} stopped being ready (state {}){}",
                state_name(shown.state()),
                detail(shown)
            ));
        }
    }
    None
}

fn detail(i: &pb::InstanceStatus) -> String {
    if i.detail.is_empty() {
        String::new()
    } else {
        format!(": {}", i.detail)
    }
}

fn state_name(state: pb::InstanceState) -> &'static str {
    match state {
        pb::InstanceState::Unspecified => "unknown",
        pb::InstanceState::Starting => "starting",
        pb::InstanceState::Ready => "ready",
        pb::InstanceState::Unhealthy => "unhealthy",
        pb::InstanceState::Stopping => "stopping",
        pb::InstanceState::Stopped => "stopped",
        pb::InstanceState::CrashLooping => "crash-looping",
        pb::InstanceState::Failed => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const R2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn release(d: &str) -> pb::ReleaseRef {
        pb::ReleaseRef {
            service: "web".into(),
            digest: d.into(),
            version: "1".into(),
        }
    }

    fn instance(
        slot: u32,
        digest: &str,
        state: pb::InstanceState,
        ready: bool,
        restarts: u32,
    ) -> pb::InstanceStatus {
        pb::InstanceStatus {
            instance: Some(pb::InstanceRef {
                agent_id: String::new(),
                service: "web".into(),
                slot,
            }),
            release: Some(release(digest)),
            state: state.into(),
            ready,
            restarts,
            pid: 100 + restarts,
            ..Default::default()
        }
    }

    fn status(current: &str, instances: Vec<pb::InstanceStatus>) -> pb::ServiceStatus {
        pb::ServiceStatus {
            service: "web".into(),
            current: Some(release(current)),
            instances,
            ..Default::default()
        }
    }

    fn r2() -> Installed {
        Installed::Release(ReleaseDigest::parse(R2).unwrap())
    }

    fn ready(slot: u32, restarts: u32) -> pb::InstanceStatus {
        instance(slot, R2, pb::InstanceState::Ready, true, restarts)
    }

    fn baseline(instances: Vec<pb::InstanceStatus>) -> HealthBaseline {
        HealthBaseline::new(ApplyId(3), &status(R2, instances), &r2())
    }

    /// Reproduces a good deployment rolled back in `scripts/test`
    /// (tls::a_rollout_runs_end_to_end_over_mutual_tls, under load): during
    /// the bake, a report taken while the agent held the service's lock said
    /// "switching" with no instances, judged "instance #0 is gone".
    #[test]
    fn a_report_of_a_busy_service_is_not_judged() {
        let b = baseline(vec![ready(0, 0)]);
        let busy = pb::ServiceStatus {
            switch_state: pb::SwitchState::Switching.into(),
            ..status(R2, vec![])
        };
        assert_eq!(health_change(&b, Some(&busy), &r2()), None);
        let idle = pb::ServiceStatus {
            switch_state: pb::SwitchState::Idle.into(),
            ..status(R2, vec![])
        };
        assert!(
            health_change(&b, Some(&idle), &r2()).is_some(),
            "an idle service without its instance has lost it"
        );
    }

    #[test]
    fn a_steady_instance_is_healthy() {
        let b = baseline(vec![ready(0, 0), ready(1, 2)]);
        let now = status(R2, vec![ready(0, 0), ready(1, 2)]);
        assert_eq!(health_change(&b, Some(&now), &r2()), None);
        assert_eq!(
            health_change(&b, None, &r2()),
            None,
            "no report, no judgement"
        );
    }

    /// Reproduces #12 item 3: exit 70 after READY=1, restarted at once and
    /// ready again (the agent even called it ready throughout).
    #[test]
    fn a_restart_since_ready_is_a_change_even_when_it_looks_ready_again() {
        let b = baseline(vec![ready(0, 0)]);
        let now = status(R2, vec![ready(0, 1)]);
        let change = health_change(&b, Some(&now), &r2()).unwrap();
        assert!(change.contains("restarted"), "{change}");
    }

    #[test]
    fn losing_readiness_crash_looping_or_failing_is_a_change() {
        let b = baseline(vec![ready(0, 0)]);
        for (state, ready, word) in [
            (pb::InstanceState::Unhealthy, false, "stopped being ready"),
            (pb::InstanceState::Starting, false, "stopped being ready"),
            (pb::InstanceState::Stopped, false, "stopped being ready"),
            (pb::InstanceState::CrashLooping, true, "crash-looping"),
            (pb::InstanceState::Failed, false, "failed"),
        ] {
            let now = status(R2, vec![instance(0, R2, state, ready, 0)]);
            let change = health_change(&b, Some(&now), &r2()).unwrap();
            assert!(change.contains(word), "{state:?}: {change}");
        }
    }

    #[test]
    fn a_switch_away_or_a_vanished_instance_is_a_change() {
        let b = baseline(vec![ready(0, 0)]);
        let away = status(R1, vec![instance(0, R1, pb::InstanceState::Ready, true, 0)]);
        assert!(
            health_change(&b, Some(&away), &r2())
                .unwrap()
                .contains("no longer runs")
        );
        let gone = status(R2, vec![]);
        assert!(
            health_change(&b, Some(&gone), &r2())
                .unwrap()
                .contains("gone")
        );
        let none = baseline(vec![]);
        assert!(
            health_change(&none, Some(&gone), &r2())
                .unwrap()
                .contains("no instance")
        );
    }

    #[test]
    fn a_planned_restart_beside_the_old_instance_is_not_a_crash() {
        let b = baseline(vec![ready(0, 1)]);
        // The new instance of slot 0 starts beside the old one, which stays
        // ready until the new one is.
        let during = status(
            R2,
            vec![
                ready(0, 1),
                instance(0, R2, pb::InstanceState::Starting, false, 0),
            ],
        );
        assert_eq!(health_change(&b, Some(&during), &r2()), None);
        let after = status(R2, vec![ready(0, 0)]);
        assert_eq!(health_change(&b, Some(&after), &r2()), None);
    }
}
