//! Scenarios: a fleet, a strategy and a set of faults, all derived from one seed.
//!
//! Owns generation and the fault classes (so a failing run can be shrunk by
//! switching classes off). Must never run anything: `world` does that.

use std::collections::HashSet;

use crate::analysis::{Analysis, Condition, OnInconclusive, Op, Phase};
use crate::fleet::{
    Cluster, ClusterName, DurationMs, Fleet, Installed, Instance, InstanceId, Overlap,
    ReleaseDigest,
};
use crate::plan::{Plan, PlanInput, plan};
use crate::sim::rng::Rng;
use crate::strategy::{Capacity, Check, ClusterOrder, Quantity, Strategy, default_bake_time};

/// One kind of fault; a failing seed is shrunk by turning kinds off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultClass {
    /// The target release fails to start on some instances.
    BrokenTarget,
    /// The target becomes ready, then crash-loops.
    Flapping,
    /// The target becomes ready, then exits once and is restarted (the
    /// demo app's `crash_after_ms`): the coordinator sees it unhealthy.
    CrashAfterReady,
    /// An instance's previous release fails to start too (rollback fails).
    BrokenPrevious,
    /// Agents become unreachable for a while.
    Unreachable,
    /// Some starts take about as long as the healthy deadline.
    SlowStart,
    /// Reports are delivered twice.
    Duplicate,
    /// Reports are delayed by seconds (and so reordered).
    Delay,
    /// The coordinator restarts from persisted state.
    Restart,
    /// Synthetic checks fail or time out.
    CheckFail,
    /// The operator pauses (and maybe resumes).
    OperatorPause,
    /// The operator aborts.
    OperatorAbort,
    /// The operator asks for a rollback.
    OperatorRollback,
}

impl FaultClass {
    /// Every class, for shrinking.
    pub const ALL: [FaultClass; 13] = [
        FaultClass::BrokenTarget,
        FaultClass::Flapping,
        FaultClass::CrashAfterReady,
        FaultClass::BrokenPrevious,
        FaultClass::Unreachable,
        FaultClass::SlowStart,
        FaultClass::Duplicate,
        FaultClass::Delay,
        FaultClass::Restart,
        FaultClass::CheckFail,
        FaultClass::OperatorPause,
        FaultClass::OperatorAbort,
        FaultClass::OperatorRollback,
    ];
}

/// The operator's behaviour (times in virtual ms).
#[derive(Debug, Clone, Default)]
pub struct Operator {
    /// Approves this long after the engine starts waiting; `None`: nobody
    /// is watching, and the deployment must still end.
    pub approve_after: Option<u64>,
    /// Pause at, and resume at (if ever).
    pub pause: Option<(u64, Option<u64>)>,
    /// Abort at.
    pub abort_at: Option<u64>,
    /// Ask for a rollback at.
    pub rollback_at: Option<u64>,
}

/// The faults of one scenario.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Target fails to start here.
    pub broken_target: HashSet<InstanceId>,
    /// Target becomes ready, then crash-loops here.
    pub flapping: HashSet<InstanceId>,
    /// Target becomes ready, then exits once and restarts here.
    pub crash_after_ready: HashSet<InstanceId>,
    /// The instance's previous release fails to start here.
    pub broken_previous: HashSet<InstanceId>,
    /// (instance, from, to): the agent is cut off in that window.
    pub unreachable: Vec<(InstanceId, u64, u64)>,
    /// Chance of a slow start, per mille.
    pub slow_start_permille: u32,
    /// Chance a report is delivered twice, per mille.
    pub dup_permille: u32,
    /// Chance a report is delayed by seconds, per mille.
    pub delay_permille: u32,
    /// Chance of a coordinator restart after an engine step, per mille.
    pub restart_permille: u32,
    /// Chance a check run fails, per mille.
    pub check_fail_permille: u32,
    /// The operator.
    pub operator: Operator,
}

impl Faults {
    /// A copy with one class of fault removed.
    pub fn without(&self, class: FaultClass) -> Faults {
        let mut f = self.clone();
        match class {
            FaultClass::BrokenTarget => f.broken_target.clear(),
            FaultClass::Flapping => f.flapping.clear(),
            FaultClass::CrashAfterReady => f.crash_after_ready.clear(),
            FaultClass::BrokenPrevious => f.broken_previous.clear(),
            FaultClass::Unreachable => f.unreachable.clear(),
            FaultClass::SlowStart => f.slow_start_permille = 0,
            FaultClass::Duplicate => f.dup_permille = 0,
            FaultClass::Delay => f.delay_permille = 0,
            FaultClass::Restart => f.restart_permille = 0,
            FaultClass::CheckFail => f.check_fail_permille = 0,
            FaultClass::OperatorPause => f.operator.pause = None,
            FaultClass::OperatorAbort => f.operator.abort_at = None,
            FaultClass::OperatorRollback => f.operator.rollback_at = None,
        }
        f
    }

    /// True when this class is present.
    pub fn has(&self, class: FaultClass) -> bool {
        match class {
            FaultClass::BrokenTarget => !self.broken_target.is_empty(),
            FaultClass::Flapping => !self.flapping.is_empty(),
            FaultClass::CrashAfterReady => !self.crash_after_ready.is_empty(),
            FaultClass::BrokenPrevious => !self.broken_previous.is_empty(),
            FaultClass::Unreachable => !self.unreachable.is_empty(),
            FaultClass::SlowStart => self.slow_start_permille > 0,
            FaultClass::Duplicate => self.dup_permille > 0,
            FaultClass::Delay => self.delay_permille > 0,
            FaultClass::Restart => self.restart_permille > 0,
            FaultClass::CheckFail => self.check_fail_permille > 0,
            FaultClass::OperatorPause => self.operator.pause.is_some(),
            FaultClass::OperatorAbort => self.operator.abort_at.is_some(),
            FaultClass::OperatorRollback => self.operator.rollback_at.is_some(),
        }
    }
}

/// A complete simulated deployment.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The seed it came from.
    pub seed: u64,
    /// The fleet before the deployment.
    pub fleet: Fleet,
    /// The strategy.
    pub strategy: Strategy,
    /// The plan (always valid: generation retries until `plan` accepts).
    pub plan: Plan,
    /// The faults.
    pub faults: Faults,
    /// Seed for the world's run-time draws (latencies, check results).
    pub world_seed: u64,
}

/// A deterministic digest for release number `n`.
pub fn digest(n: u64) -> ReleaseDigest {
    ReleaseDigest::parse(&format!("sha256:{n:064x}")).unwrap_or_else(|_| digest(1))
}

fn id(s: String) -> InstanceId {
    InstanceId::new(s).unwrap_or_else(|_| id("?".to_owned()))
}

fn cluster_name(s: String) -> ClusterName {
    // Scenario names are `c` and digits, always valid; "invalid" is one too.
    ClusterName::parse(&s).unwrap_or_else(|_| cluster_name("invalid".to_owned()))
}

impl Scenario {
    /// The scenario for `seed`.
    pub fn generate(seed: u64) -> Scenario {
        let mut rng = Rng::new(seed);
        let target = digest(0xa1);
        // One in ten is a first install: hosts run nothing, and a rollback
        // returns them to nothing.
        let first_install = rng.fork().chance(100);
        let previous = if first_install {
            Installed::Nothing
        } else {
            Installed::Release(digest(0xb2))
        };
        let other = digest(0xc3);

        let n_clusters = rng.range(1, 5);
        let mut fleet = Fleet::default();
        for c in 0..n_clusters {
            let size = if rng.chance(150) {
                rng.range(9, 20)
            } else {
                rng.range(1, 8)
            };
            let instances = (0..size)
                .map(|k| Instance {
                    id: id(format!("c{c}-i{k}")),
                    release: match rng.below(100) {
                        0..=6 if !first_install => Installed::Release(other),
                        7..=13 => Installed::Release(target),
                        _ => previous,
                    },
                })
                .collect();
            fleet.clusters.push(Cluster {
                name: cluster_name(format!("c{c}")),
                instances,
                max_disruptions: None,
            });
        }

        let mut strategy = Strategy::default();
        let mut planned = None;
        for attempt in 0..6 {
            let overlap = match rng.below(100) {
                _ if attempt >= 4 => Overlap::SocketHandover,
                0..=54 => Overlap::SocketHandover,
                55..=64 => Overlap::Reuseport,
                _ => Overlap::None,
            };
            strategy = random_strategy(&mut rng, &fleet, attempt >= 5);
            // As the coordinator plans it: nothing to rehearse a rollback to.
            strategy.rehearse_rollback &= !first_install;
            if let Ok(p) = plan(&PlanInput {
                fleet: &fleet,
                strategy: &strategy,
                target: &target,
                previous: &previous,
                overlap,
            }) {
                planned = Some(p);
                break;
            }
        }
        let mut plan = match planned {
            Some(p) => p,
            None => {
                // Defaults that always plan: canary 1 fits any cluster's budget.
                strategy = Strategy {
                    capacity: Capacity {
                        max_unavailable: Quantity::Count(1),
                        min_healthy: Quantity::Count(0),
                    },
                    ..Strategy::default()
                };
                match crate::plan::plan(&PlanInput {
                    fleet: &fleet,
                    strategy: &strategy,
                    target: &target,
                    previous: &previous,
                    overlap: Overlap::SocketHandover,
                }) {
                    Ok(p) => p,
                    Err(e) => unreachable_plan(e),
                }
            }
        };

        // Progress deadline: usually generous, sometimes tight enough to fire.
        let per_batch = strategy.healthy_deadline.0 / 4
            + strategy.min_healthy_time.0
            + strategy
                .checks
                .iter()
                .map(|c| c.timeout.0)
                .max()
                .unwrap_or(0)
            + 5_000;
        let batches = plan.batch_count() as u64 + 2;
        let generous = (batches * per_batch * 3).max(strategy.healthy_deadline.0 * 2);
        let least = strategy.healthy_deadline.0 + strategy.min_healthy_time.0;
        let progress = if rng.chance(150) {
            rng.range(least, generous / 2 + least)
        } else {
            generous + rng.below(generous)
        };
        strategy.progress_deadline = DurationMs(progress);
        plan.gates.progress_deadline = strategy.progress_deadline;

        let faults = random_faults(&mut rng, &plan, &strategy);
        Scenario {
            seed,
            fleet,
            strategy,
            plan,
            faults,
            world_seed: rng.next_u64(),
        }
    }

    /// A fault-free rollout over `instances` instances in clusters of 100
    /// (the benchmark's fleet).
    pub fn large(instances: usize, seed: u64) -> Scenario {
        let target = digest(0xa1);
        let previous = Installed::Release(digest(0xb2));
        let mut fleet = Fleet::default();
        let per = 100.min(instances.max(1));
        for c in 0..instances.div_ceil(per) {
            let n = per.min(instances - c * per);
            fleet.clusters.push(Cluster {
                name: cluster_name(format!("c{c:03}")),
                instances: (0..n)
                    .map(|k| Instance {
                        id: id(format!("c{c:03}-i{k:03}")),
                        release: previous,
                    })
                    .collect(),
                max_disruptions: None,
            });
        }
        let strategy = Strategy {
            capacity: Capacity {
                max_unavailable: Quantity::Percent(25),
                min_healthy: Quantity::Percent(50),
            },
            progress_deadline: DurationMs::mins(60 * 24),
            checks: vec![Check {
                name: "smoke".to_owned(),
                params: Default::default(),
                timeout: DurationMs::secs(5),
            }],
            ..Strategy::default()
        };
        let plan = match plan(&PlanInput {
            fleet: &fleet,
            strategy: &strategy,
            target: &target,
            previous: &previous,
            overlap: Overlap::SocketHandover,
        }) {
            Ok(p) => p,
            Err(e) => unreachable_plan(e),
        };
        Scenario {
            seed,
            fleet,
            strategy,
            plan,
            faults: Faults::default(),
            world_seed: seed,
        }
    }
}

impl Scenario {
    /// `large`'s fleet in one cluster, every host in one batch after the
    /// canary: the largest single step a rollout of `instances` can take
    /// (the journal's size bound is measured against it).
    pub fn single_batch(instances: usize, seed: u64) -> Scenario {
        let mut sc = Scenario::large(instances, seed);
        let all: Vec<Instance> = sc
            .fleet
            .clusters
            .drain(..)
            .flat_map(|c| c.instances)
            .collect();
        sc.fleet.clusters.push(Cluster {
            name: cluster_name("all".to_owned()),
            instances: all,
            max_disruptions: None,
        });
        sc.strategy.capacity = Capacity {
            max_unavailable: Quantity::Percent(100),
            min_healthy: Quantity::Count(0),
        };
        sc.plan = match plan(&PlanInput {
            fleet: &sc.fleet,
            strategy: &sc.strategy,
            target: &sc.plan.target,
            previous: &sc.plan.previous,
            overlap: sc.plan.overlap,
        }) {
            Ok(p) => p,
            Err(e) => unreachable_plan(e),
        };
        sc
    }
}

fn unreachable_plan(e: crate::plan::PlanErrors) -> Plan {
    // Generation only falls back to strategies that always plan; if that
    // ever changes this is a bug in the simulator, not a scenario.
    panic!("simulator generated an unplannable fallback scenario: {e}")
}

fn random_quantity(rng: &mut Rng, max_count: u64, percents: &[u8]) -> Quantity {
    if rng.chance(500) {
        Quantity::Count(rng.range(0, max_count) as u32)
    } else {
        Quantity::Percent(percents[rng.below(percents.len() as u64) as usize])
    }
}

fn random_strategy(rng: &mut Rng, fleet: &Fleet, relaxed: bool) -> Strategy {
    let canary = rng.range(0, 2) as u32;
    let mut max_unavailable = random_quantity(rng, 3, &[25, 50, 100]);
    if matches!(max_unavailable, Quantity::Count(0)) {
        max_unavailable = Quantity::Count(1);
    }
    let min_healthy = if relaxed {
        Quantity::Count(0)
    } else {
        random_quantity(rng, 2, &[0, 34, 50, 75])
    };
    let order = if rng.chance(300) {
        let mut names: Vec<ClusterName> = fleet.clusters.iter().map(|c| c.name.clone()).collect();
        // Fisher-Yates.
        for i in (1..names.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            names.swap(i, j);
        }
        ClusterOrder::Explicit(names)
    } else {
        ClusterOrder::SmallestFirst
    };
    let checks = if rng.chance(400) {
        (0..rng.range(1, 2))
            .map(|k| Check {
                name: format!("check-{k}"),
                params: Default::default(),
                timeout: DurationMs(rng.range(1, 10) * 1000),
            })
            .collect()
    } else {
        Vec::new()
    };
    let min_healthy_time = if rng.chance(200) {
        DurationMs(0)
    } else {
        DurationMs(rng.range(1, 15) * 1000)
    };
    let bake_time = match rng.below(10) {
        0 => DurationMs(0),
        1 | 2 => DurationMs(rng.range(1, 120) * 1000),
        _ => default_bake_time(min_healthy_time),
    };
    let analyses = if rng.chance(300) {
        let mut phases = vec![Phase::Canary];
        if rng.chance(500) {
            phases.push(Phase::Clusters);
        }
        if rng.chance(500) {
            phases.push(Phase::Bake);
        }
        vec![Analysis {
            name: "error-rate".to_owned(),
            query: "sum(errors{host=~\"$hosts\"})".to_owned(),
            success: Condition {
                op: Op::Lt,
                threshold: 0.01,
            },
            baseline: None,
            interval: DurationMs(rng.range(1, 10) * 1000),
            count: rng.range(1, 5) as u32,
            failure_limit: 0,
            inconclusive_limit: 0,
            phases,
            on_inconclusive: if rng.chance(500) {
                OnInconclusive::Halt
            } else {
                OnInconclusive::Rollback
            },
        }]
    } else {
        Vec::new()
    };
    Strategy {
        canary,
        order,
        capacity: Capacity {
            max_unavailable,
            min_healthy,
        },
        healthy_deadline: DurationMs(rng.range(5, 60) * 1000),
        min_healthy_time,
        progress_deadline: DurationMs::mins(60),
        bake_time,
        pause_between_clusters: rng.chance(200),
        rehearse_rollback: canary > 0 && rng.chance(700),
        auto_rollback: rng.chance(850),
        checks,
        clusters: Default::default(),
        analyses,
    }
}

fn pick(rng: &mut Rng, plan: &Plan, per_mille: u32) -> HashSet<InstanceId> {
    plan.instances
        .iter()
        .filter(|_| rng.chance(per_mille))
        .map(|i| i.id.clone())
        .collect()
}

fn random_faults(rng: &mut Rng, plan: &Plan, strategy: &Strategy) -> Faults {
    let mut f = Faults::default();
    let horizon = strategy.progress_deadline.0;
    if rng.chance(250) {
        f.broken_target = if rng.chance(400) {
            plan.instances.iter().map(|i| i.id.clone()).collect()
        } else {
            pick(rng, plan, 200)
        };
    }
    if rng.chance(150) {
        f.flapping = pick(rng, plan, 250);
    }
    if rng.chance(150) {
        f.crash_after_ready = pick(rng, plan, 250);
    }
    if rng.chance(60) {
        f.broken_previous = pick(rng, plan, 300);
    }
    if rng.chance(200) {
        for _ in 0..rng.range(1, 3) {
            let ix = rng.below(plan.instances.len() as u64) as usize;
            let from = rng.below(120_000);
            let len = if rng.chance(300) {
                rng.range(strategy.healthy_deadline.0, strategy.healthy_deadline.0 * 4)
            } else {
                rng.range(500, 20_000)
            };
            f.unreachable
                .push((plan.instances[ix].id.clone(), from, from + len));
        }
    }
    if rng.chance(100) {
        f.slow_start_permille = rng.range(50, 300) as u32;
    }
    if rng.chance(200) {
        f.dup_permille = rng.range(50, 300) as u32;
    }
    if rng.chance(200) {
        f.delay_permille = rng.range(50, 300) as u32;
    }
    if rng.chance(300) {
        f.restart_permille = rng.range(10, 80) as u32;
    }
    if (!strategy.checks.is_empty() || !strategy.analyses.is_empty()) && rng.chance(300) {
        f.check_fail_permille = rng.range(50, 400) as u32;
    }
    let op = &mut f.operator;
    if rng.chance(850) {
        op.approve_after = Some(rng.range(1_000, 300_000));
    }
    if rng.chance(100) {
        let at = rng.below(horizon / 2 + 1);
        let resume = rng.chance(700).then(|| at + rng.range(1_000, 600_000));
        op.pause = Some((at, resume));
    }
    if rng.chance(30) {
        op.abort_at = Some(rng.below(horizon / 2 + 1));
    }
    if rng.chance(30) {
        op.rollback_at = Some(rng.below(horizon / 2 + 1));
    }
    f
}
