//! Fixtures: releases, fleets, strategies and a stepping harness.

use rollout::{
    Action, ApplyId, Cluster, ClusterName, DeploymentId, DurationMs, Engine, Event, FencingToken,
    Fleet, Installed, Instance, InstanceId, Millis, Outcome, Overlap, Plan, PlanInput, Quantity,
    ReleaseDigest, Strategy, TimerId,
};

pub const HEALTHY: DurationMs = DurationMs::secs(60);
pub const STABLE: DurationMs = DurationMs::secs(10);
pub const PROGRESS: DurationMs = DurationMs::mins(60);
pub const BAKE: DurationMs = DurationMs::secs(30);

pub fn digest(n: u64) -> ReleaseDigest {
    ReleaseDigest::parse(&format!("sha256:{n:064x}")).unwrap()
}

pub fn target() -> ReleaseDigest {
    digest(0xa1)
}

pub fn previous() -> Installed {
    Installed::Release(digest(0xb2))
}

pub fn id(s: &str) -> InstanceId {
    InstanceId::new(s).unwrap()
}

/// Clusters `(name, size)`, instances `name-k`, all on `previous()`.
pub fn fleet(clusters: &[(&str, usize)]) -> Fleet {
    Fleet {
        clusters: clusters
            .iter()
            .map(|(name, n)| Cluster {
                name: ClusterName::parse(name).unwrap(),
                instances: (0..*n)
                    .map(|k| Instance {
                        id: id(&format!("{name}-{k}")),
                        release: previous(),
                    })
                    .collect(),
                max_disruptions: None,
            })
            .collect(),
    }
}

/// Canary 1 without rehearsal, one at a time, no floor, distinct timings.
pub fn strategy() -> Strategy {
    Strategy {
        canary: 1,
        rehearse_rollback: false,
        capacity: rollout::Capacity {
            max_unavailable: Quantity::Count(1),
            min_healthy: Quantity::Count(0),
        },
        healthy_deadline: HEALTHY,
        min_healthy_time: STABLE,
        progress_deadline: PROGRESS,
        bake_time: BAKE,
        ..Strategy::default()
    }
}

pub fn make_plan(fleet: &Fleet, strategy: &Strategy, overlap: Overlap) -> Plan {
    rollout::plan(&PlanInput {
        fleet,
        strategy,
        target: &target(),
        previous: &previous(),
        overlap,
    })
    .unwrap()
}

/// An engine plus a virtual clock.
pub struct H {
    pub engine: Engine,
    pub now: u64,
}

impl H {
    pub fn new(fleet: &Fleet, strategy: &Strategy) -> H {
        let plan = make_plan(fleet, strategy, Overlap::SocketHandover);
        H {
            engine: Engine::new(DeploymentId("d1".into()), plan, FencingToken(1)),
            now: 0,
        }
    }

    pub fn step(&mut self, e: Event) -> Vec<Action> {
        self.engine.step(Millis(self.now), e)
    }

    pub fn advance(&mut self, d: DurationMs) {
        self.now += d.0;
    }

    /// Reports every apply in `actions` ready; returns the actions of the last.
    pub fn ready_all(&mut self, actions: &[Action]) -> Vec<Action> {
        let mut out = Vec::new();
        for (instance, release, apply) in applies(actions) {
            out = self.step(Event::InstanceReady {
                instance,
                apply,
                release,
            });
        }
        out
    }

    /// Drives a started batch through ready and the stable period (no checks).
    pub fn pass_batch(&mut self, started: &[Action]) -> Vec<Action> {
        let out = self.ready_all(started);
        let stable = timer_after(&out, STABLE).expect("stable timer");
        self.advance(STABLE);
        self.step(Event::TimerFired(stable))
    }
}

pub fn applies(actions: &[Action]) -> Vec<(InstanceId, Installed, ApplyId)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Apply {
                instance,
                release,
                apply,
                ..
            } => Some((instance.clone(), *release, *apply)),
            _ => None,
        })
        .collect()
}

pub fn applied_to(actions: &[Action]) -> Vec<(String, Installed)> {
    applies(actions)
        .into_iter()
        .map(|(i, r, _)| (i.as_str().to_owned(), r))
        .collect()
}

pub fn timer_after(actions: &[Action], after: DurationMs) -> Option<TimerId> {
    actions.iter().find_map(|a| match a {
        Action::StartTimer { id, after: d } if *d == after => Some(*id),
        _ => None,
    })
}

pub fn finished(actions: &[Action]) -> Option<&Outcome> {
    actions.iter().find_map(|a| match a {
        Action::Finish(o) => Some(o),
        _ => None,
    })
}
