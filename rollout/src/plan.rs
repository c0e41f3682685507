//! `plan`: fleet + strategy + releases -> the ordered waves and batches, and
//! the human-readable rendering `lockstep plan` prints.
//!
//! Owns every capacity calculation (floor, budget, batch size) and the
//! validation that a strategy can be carried out on this fleet at all, with
//! errors that say how to fix it. Must never decide anything at run time:
//! the engine follows the plan, it does not re-plan.
//!
//! ```text
//!   wave 1  canary        [a1]                 (target -> previous -> target)
//!   wave 2  cluster small [s1] [s2]            batch = min(max_unavailable, size - floor)
//!   wave 3  cluster big   [b1 b2] [b3 b4] [b5]
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

use crate::analysis::{self, Analysis};
use crate::fleet::{ClusterName, DurationMs, Fleet, Installed, InstanceId, Overlap, ReleaseDigest};
use crate::strategy::{Check, ClusterOrder, Strategy};

/// One reason a strategy cannot be carried out on a fleet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Nothing to deploy to.
    #[error("the fleet has no instances of this service")]
    EmptyFleet,
    /// Deploying a release over itself.
    #[error("target and previous are the same release {release}: nothing to roll out or back to")]
    SameRelease {
        /// The release given twice.
        release: ReleaseDigest,
    },
    /// An instance listed twice.
    #[error("instance {instance} appears more than once in the fleet")]
    DuplicateInstance {
        /// The repeated id.
        instance: InstanceId,
    },
    /// A cluster listed twice.
    #[error("cluster {cluster} appears more than once in the fleet")]
    DuplicateCluster {
        /// The repeated name.
        cluster: ClusterName,
    },
    /// `order` names a cluster the fleet does not have.
    #[error(
        "strategy.order names cluster {cluster}, which has no instances of this service (known: {known})"
    )]
    UnknownClusterInOrder {
        /// The unknown name.
        cluster: ClusterName,
        /// The fleet's clusters, comma-separated.
        known: String,
    },
    /// `order` leaves out a cluster that has instances.
    #[error(
        "cluster {cluster} is missing from strategy.order: add it, or use order = \"smallest-first\""
    )]
    MissingFromOrder {
        /// The cluster left out.
        cluster: ClusterName,
    },
    /// `[strategy.clusters.X]` for a cluster the fleet does not have.
    #[error("[strategy.clusters.{cluster}] configures a cluster with no instances of this service")]
    UnknownClusterOverride {
        /// The unknown name.
        cluster: ClusterName,
    },
    /// The floor is above the cluster's size: it is below its floor already.
    #[error(
        "cluster {cluster}: min_healthy {floor} is more than its {size} instances; lower min_healthy for it"
    )]
    FloorAboveSize {
        /// The cluster.
        cluster: ClusterName,
        /// The resolved floor.
        floor: usize,
        /// Its number of instances.
        size: usize,
    },
    /// With stop-before-start, every switch would break the floor.
    #[error(
        "cluster {cluster} has {size} instance(s) and min_healthy {floor} with overlap none: switching any instance would drop it below its floor, so it can never be updated; use overlap socket-handover (the new process starts before the old one stops), lower min_healthy for [strategy.clusters.{cluster}], or add instances"
    )]
    NoRoomToSwitch {
        /// The cluster.
        cluster: ClusterName,
        /// Its number of instances.
        size: usize,
        /// The resolved floor.
        floor: usize,
    },
    /// The hosts' own disruption budget allows no switch at all.
    #[error(
        "cluster {cluster}'s disruption budget allows no host to be disrupted (max_disruptions 0 in /lockstep/v1/clusters/{cluster}/policy), so it can never be updated; raise it"
    )]
    NoDisruptionBudget {
        /// The cluster.
        cluster: ClusterName,
    },
    /// More canaries than the clusters' budgets allow in one batch.
    #[error(
        "strategy.canary = {canary} but at most {room} instance(s) can switch at once across the clusters' budgets; lower canary"
    )]
    CanaryTooLarge {
        /// Requested canaries.
        canary: u32,
        /// What the budgets allow.
        room: usize,
    },
}

/// Every problem found while planning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct PlanErrors(pub Vec<PlanError>);

/// What `plan` needs.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// Clusters and instances with their current releases.
    pub fleet: &'a Fleet,
    /// The validated strategy.
    pub strategy: &'a Strategy,
    /// The release to roll out.
    pub target: &'a ReleaseDigest,
    /// The default rollback target, for instances already on `target`.
    pub previous: &'a Installed,
    /// How the release switches processes (from its run spec).
    pub overlap: Overlap,
}

/// Timing and policy the engine follows, copied from the strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gates {
    /// A batch must be ready this soon after its applies.
    pub healthy_deadline: DurationMs,
    /// ... and stay ready this long before checks run.
    pub min_healthy_time: DurationMs,
    /// Bound on the whole forward rollout (the bake is not part of it).
    pub progress_deadline: DurationMs,
    /// After the last batch, watch every switched instance this long before
    /// succeeding. Zero (also in records written before the key existed):
    /// succeed at once.
    #[serde(default)]
    pub bake_time: DurationMs,
    /// Wait for approval before each wave after the first.
    pub pause_between_clusters: bool,
    /// Canary goes target -> previous -> target.
    pub rehearse_rollback: bool,
    /// Revert on failure without asking.
    pub auto_rollback: bool,
}

/// One cluster's resolved capacity rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterPlan {
    /// The cluster.
    pub name: ClusterName,
    /// Its instances of the service.
    pub size: usize,
    /// Instances that must keep serving.
    pub floor: usize,
    /// Resolved disruption budget.
    pub max_unavailable: usize,
    /// Instances that may be switching at once: the batch size.
    pub budget: usize,
    /// Checks to run after each of its batches.
    pub checks: Vec<Check>,
}

/// One instance in the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedInstance {
    /// The instance.
    pub id: InstanceId,
    /// Index into `Plan::clusters`.
    pub cluster: usize,
    /// What a rollback returns it to: what it ran before, or `previous` if
    /// it already ran the target.
    pub original: Installed,
}

/// What a wave covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WaveKind {
    /// The canary instances, possibly from several clusters.
    Canary,
    /// The rest of one cluster (index into `Plan::clusters`).
    Cluster(usize),
}

/// A wave: batches run one after the other, each gated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    /// Canary or cluster.
    pub kind: WaveKind,
    /// Each batch is a list of indices into `Plan::instances`.
    pub batches: Vec<Vec<usize>>,
}

/// The ordered waves and batches of one deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The release to roll out.
    pub target: ReleaseDigest,
    /// The default rollback target.
    pub previous: Installed,
    /// How processes switch.
    pub overlap: Overlap,
    /// Timing and policy.
    pub gates: Gates,
    /// Clusters in rollout order.
    pub clusters: Vec<ClusterPlan>,
    /// Every instance exactly once.
    pub instances: Vec<PlannedInstance>,
    /// Waves in order.
    pub waves: Vec<Wave>,
    /// Analysis gates (none in records written before they existed).
    #[serde(default)]
    pub analyses: Vec<Analysis>,
}

/// Plans a deployment, or says every reason it cannot be done.
pub fn plan(input: &PlanInput<'_>) -> Result<Plan, PlanErrors> {
    let PlanInput {
        fleet,
        strategy,
        target,
        previous,
        overlap,
    } = *input;
    let mut errs = Vec::new();
    if fleet.is_empty() {
        errs.push(PlanError::EmptyFleet);
    }
    if target == previous {
        errs.push(PlanError::SameRelease { release: *target });
    }

    // Clusters with instances, checked for duplicates.
    let mut seen_clusters = BTreeSet::new();
    let mut seen_instances = BTreeSet::new();
    let mut present = Vec::new();
    for c in &fleet.clusters {
        if !seen_clusters.insert(&c.name) {
            errs.push(PlanError::DuplicateCluster {
                cluster: c.name.clone(),
            });
            continue;
        }
        for i in &c.instances {
            if !seen_instances.insert(&i.id) {
                errs.push(PlanError::DuplicateInstance {
                    instance: i.id.clone(),
                });
            }
        }
        if !c.instances.is_empty() {
            present.push(c);
        }
    }

    let ordered = match &strategy.order {
        ClusterOrder::SmallestFirst => {
            let mut v = present.clone();
            v.sort_by(|a, b| {
                a.instances
                    .len()
                    .cmp(&b.instances.len())
                    .then_with(|| a.name.cmp(&b.name))
            });
            v
        }
        ClusterOrder::Explicit(names) => {
            let by_name: BTreeMap<_, _> = present.iter().map(|c| (&c.name, *c)).collect();
            let mut v = Vec::new();
            for n in names {
                match by_name.get(n) {
                    Some(c) => v.push(*c),
                    None => errs.push(PlanError::UnknownClusterInOrder {
                        cluster: n.clone(),
                        known: by_name
                            .keys()
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    }),
                }
            }
            for c in &present {
                if !names.contains(&c.name) {
                    errs.push(PlanError::MissingFromOrder {
                        cluster: c.name.clone(),
                    });
                }
            }
            v
        }
    };
    for name in strategy.clusters.keys() {
        if !present.iter().any(|c| &c.name == name) {
            errs.push(PlanError::UnknownClusterOverride {
                cluster: name.clone(),
            });
        }
    }

    let mut clusters = Vec::with_capacity(ordered.len());
    let mut instances = Vec::with_capacity(fleet.len());
    let mut members: Vec<Vec<usize>> = Vec::with_capacity(ordered.len());
    for (ci, c) in ordered.iter().enumerate() {
        let size = c.instances.len();
        let cap = strategy.capacity_for(&c.name);
        let floor = cap.min_healthy.resolve_up(size);
        let max_unavailable = cap.max_unavailable.resolve_down_min1(size).min(size);
        let budget = if floor > size {
            errs.push(PlanError::FloorAboveSize {
                cluster: c.name.clone(),
                floor,
                size,
            });
            0
        } else if overlap.starts_before_stop() {
            max_unavailable
        } else {
            let b = max_unavailable.min(size - floor);
            if b == 0 {
                errs.push(PlanError::NoRoomToSwitch {
                    cluster: c.name.clone(),
                    size,
                    floor,
                });
            }
            b
        };
        let budget = match c.max_disruptions {
            Some(0) => {
                errs.push(PlanError::NoDisruptionBudget {
                    cluster: c.name.clone(),
                });
                0
            }
            Some(hosts_allow) => budget.min(hosts_allow),
            None => budget,
        };
        let mut m = Vec::with_capacity(size);
        for i in &c.instances {
            m.push(instances.len());
            instances.push(PlannedInstance {
                id: i.id.clone(),
                cluster: ci,
                original: if &i.release == target {
                    *previous
                } else {
                    i.release
                },
            });
        }
        members.push(m);
        clusters.push(ClusterPlan {
            name: c.name.clone(),
            size,
            floor,
            max_unavailable,
            budget,
            checks: strategy.checks_for(&c.name).to_vec(),
        });
    }

    // Canary: the first instances in cluster order, no more per cluster than
    // its budget, since the canary batch switches them all at once.
    let mut waves = Vec::new();
    let mut taken = vec![0usize; clusters.len()];
    if strategy.canary > 0 && errs.is_empty() {
        let want = strategy.canary as usize;
        let mut canary = Vec::new();
        for (ci, cp) in clusters.iter().enumerate() {
            let n = cp.budget.min(want - canary.len()).min(members[ci].len());
            canary.extend_from_slice(&members[ci][..n]);
            taken[ci] = n;
            if canary.len() == want {
                break;
            }
        }
        if canary.len() < want {
            errs.push(PlanError::CanaryTooLarge {
                canary: strategy.canary,
                room: clusters.iter().map(|c| c.budget.min(c.size)).sum(),
            });
        } else {
            waves.push(Wave {
                kind: WaveKind::Canary,
                batches: vec![canary],
            });
        }
    }
    if !errs.is_empty() {
        return Err(PlanErrors(errs));
    }
    for (ci, cp) in clusters.iter().enumerate() {
        let rest = &members[ci][taken[ci]..];
        if rest.is_empty() {
            continue;
        }
        waves.push(Wave {
            kind: WaveKind::Cluster(ci),
            batches: rest.chunks(cp.budget).map(<[usize]>::to_vec).collect(),
        });
    }
    Ok(Plan {
        target: *target,
        previous: *previous,
        overlap,
        gates: Gates {
            healthy_deadline: strategy.healthy_deadline,
            min_healthy_time: strategy.min_healthy_time,
            progress_deadline: strategy.progress_deadline,
            bake_time: strategy.bake_time,
            pause_between_clusters: strategy.pause_between_clusters,
            rehearse_rollback: strategy.rehearse_rollback,
            auto_rollback: strategy.auto_rollback,
        },
        clusters,
        instances,
        waves,
        analyses: strategy.analyses.clone(),
    })
}

impl Plan {
    /// Number of batches over all waves.
    pub fn batch_count(&self) -> usize {
        self.waves.iter().map(|w| w.batches.len()).sum()
    }

    /// Index of an instance by id (linear; the engine keeps its own index).
    pub fn position(&self, id: &InstanceId) -> Option<usize> {
        self.instances.iter().position(|i| &i.id == id)
    }

    /// The text `lockstep plan` prints.
    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = self.render_into(&mut s);
        s
    }

    fn render_into(&self, s: &mut String) -> fmt::Result {
        let g = &self.gates;
        writeln!(
            s,
            "deploy {} to {} instance(s) in {} cluster(s), overlap {}",
            self.target.short(),
            self.instances.len(),
            self.clusters.len(),
            self.overlap
        )?;
        let mixed = self
            .instances
            .iter()
            .filter(|i| i.original != self.previous)
            .count();
        write!(
            s,
            "rollback target: each instance's own previous release (default {}",
            self.previous.short()
        )?;
        if mixed > 0 {
            write!(s, "; {mixed} instance(s) differ")?;
        }
        writeln!(s, ")")?;
        writeln!(
            s,
            "gates per batch: ready within {}, stable for {}, then checks; whole rollout within {}",
            g.healthy_deadline, g.min_healthy_time, g.progress_deadline
        )?;
        writeln!(
            s,
            "watched until the end: every switched instance; an exit, restart or lost readiness fails the deployment"
        )?;
        writeln!(
            s,
            "on failure: {}",
            if g.auto_rollback {
                "stop, and roll every touched instance back in reverse order"
            } else {
                "stop and wait for an operator (auto_rollback = false)"
            }
        )?;
        self.render_analyses(s)?;
        // Numbered from 1, as `lockstep watch` shows them.
        for (wi, w) in self.waves.iter().enumerate().map(|(i, w)| (i + 1, w)) {
            if wi > 1 && g.pause_between_clusters {
                writeln!(s, "  -- wait for `lockstep approve` --")?;
            }
            match w.kind {
                WaveKind::Canary => {
                    write!(s, "wave {wi}: canary")?;
                    if g.rehearse_rollback {
                        write!(s, " (rehearse rollback: target -> previous -> target)")?;
                    }
                    // A canary batch runs the checks of its hosts' clusters.
                    let mut checks: Vec<String> = Vec::new();
                    for &ix in w.batches.iter().flatten() {
                        let cluster = &self.clusters[self.instances[ix].cluster];
                        for check in cluster.checks.iter().map(ToString::to_string) {
                            if !checks.contains(&check) {
                                checks.push(check);
                            }
                        }
                    }
                    if !checks.is_empty() {
                        write!(s, ", checks: {}", checks.join(", "))?;
                    }
                    writeln!(s)?;
                }
                WaveKind::Cluster(ci) => {
                    let c = &self.clusters[ci];
                    writeln!(
                        s,
                        "wave {wi}: cluster {} ({} instance(s), floor {}, max_unavailable {}, {} at a time){}",
                        c.name,
                        c.size,
                        c.floor,
                        c.max_unavailable,
                        c.budget,
                        if c.checks.is_empty() {
                            String::new()
                        } else {
                            format!(
                                ", checks: {}",
                                c.checks
                                    .iter()
                                    .map(ToString::to_string)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        }
                    )?;
                }
            }
            for (bi, b) in w.batches.iter().enumerate() {
                write!(s, "  batch {}:", bi + 1)?;
                for &ix in b {
                    let inst = &self.instances[ix];
                    write!(s, " {}", inst.id)?;
                    if matches!(w.kind, WaveKind::Canary) {
                        write!(s, " ({})", self.clusters[inst.cluster].name)?;
                    }
                }
                writeln!(s)?;
            }
        }
        if g.bake_time.0 > 0 {
            writeln!(
                s,
                "bake: watch all {} instance(s) for {} (bake_time), then succeed",
                self.instances.len(),
                g.bake_time
            )?;
        } else {
            writeln!(
                s,
                "bake: none (bake_time = 0s); succeed after the last batch"
            )?;
        }
        Ok(())
    }
}

impl Plan {
    fn render_analyses(&self, s: &mut String) -> fmt::Result {
        if self.analyses.is_empty() {
            return Ok(());
        }
        writeln!(
            s,
            "analyses (against the coordinator's Prometheus; no data or no answer is inconclusive, never a pass):"
        )?;
        for a in &self.analyses {
            writeln!(s, "  {a}")?;
            writeln!(s, "    query: {}", a.query)?;
        }
        Ok(())
    }

    /// The analyses that run in `phase`.
    pub fn analyses_in(&self, phase: analysis::Phase) -> impl Iterator<Item = (usize, &Analysis)> {
        self.analyses
            .iter()
            .enumerate()
            .filter(move |(_, a)| a.runs_in(phase))
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}
