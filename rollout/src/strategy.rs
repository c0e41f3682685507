//! The `[strategy]` table: how a deployment is sequenced and gated.
//!
//! Owns parsing (strict: unknown keys are errors) and validation into types
//! that cannot be invalid, reporting every problem at once. Must never look at
//! the fleet: whether a strategy fits a fleet is `plan`'s question.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::analysis::{self, Analysis, Baseline, Condition, OnInconclusive, Phase};
use crate::fleet::{ClusterName, DurationMs};

/// One instance is the smallest blast radius that still puts the release in
/// front of real traffic.
pub const DEFAULT_CANARY: u32 = 1;
/// Lose at most one instance's capacity per cluster at a time: slow, but safe
/// for the low-redundancy clusters that went down in the 2019 incident.
pub const DEFAULT_MAX_UNAVAILABLE: Quantity = Quantity::Count(1);
/// Keep at least half of each cluster serving, whatever else happens.
pub const DEFAULT_MIN_HEALTHY: Quantity = Quantity::Percent(50);
/// Time for a batch to report ready: a cold start with cache warm-up fits in
/// five minutes; anything slower is a failure worth a human's look.
pub const DEFAULT_HEALTHY_DEADLINE: DurationMs = DurationMs::mins(5);
/// A process that stays ready for 10 s has survived its first requests and
/// any immediate crash loop (Nomad uses the same default).
pub const DEFAULT_MIN_HEALTHY_TIME: DurationMs = DurationMs::secs(10);
/// `bake_time` defaults to this many `min_healthy_time`s. A batch proves a
/// release survives its first seconds; faults that need traffic or time to
/// build up (a leak, a periodic job, a crash a few seconds after ready, as
/// in issue #12) show later. Three stable periods watch the whole fleet
/// several times as long as any one batch was watched, while costing a
/// deployment only a small constant delay at its end.
pub const BAKE_TIME_FACTOR: u64 = 3;
/// Bounds the whole deployment so it ends without a human; long fleets set more.
pub const DEFAULT_PROGRESS_DEADLINE: DurationMs = DurationMs::mins(60);
/// A synthetic check that takes longer than this is treated as failed.
pub const DEFAULT_CHECK_TIMEOUT: DurationMs = DurationMs::secs(30);
/// The incident's rollback path had never run; rehearsing it costs one canary
/// cycle. The default where there is a canary; without one there is nothing
/// to rehearse on.
pub const DEFAULT_REHEARSE_ROLLBACK: bool = true;
/// Reverting by hand is what turned the incident from 5 minutes into 80.
pub const DEFAULT_AUTO_ROLLBACK: bool = true;

/// One problem with a `[strategy]` table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrategyError {
    /// The TOML did not parse or had an unknown key or a wrong type.
    #[error("strategy: {message}")]
    Syntax {
        /// The TOML parser's message, which names the key.
        message: String,
    },
    /// No `[strategy]` table in the document.
    #[error("missing [strategy] table")]
    Missing,
    /// A count or percentage that is out of range or malformed.
    #[error("strategy.{key} = {value:?}: {why}")]
    BadQuantity {
        /// The offending key.
        key: String,
        /// The value as written.
        value: String,
        /// What is wrong and what is accepted.
        why: &'static str,
    },
    /// A duration without a unit, with an unknown unit, or zero where that is meaningless.
    #[error("strategy.{key} = {value:?}: {why}")]
    BadDuration {
        /// The offending key.
        key: String,
        /// The value as written.
        value: String,
        /// What is wrong and what is accepted.
        why: &'static str,
    },
    /// `order` is neither "smallest-first" nor a list of cluster names.
    #[error("strategy.order = {value:?}: use \"smallest-first\" or a list of cluster names")]
    BadOrder {
        /// The value as written.
        value: String,
    },
    /// A cluster named twice in `order`.
    #[error("strategy.order names cluster {name:?} twice")]
    DuplicateInOrder {
        /// The repeated name.
        name: String,
    },
    /// A check with no name, or with keys only coordinator.toml may set.
    #[error("strategy check {name:?}: {why}")]
    BadCheck {
        /// The check's name (possibly empty).
        name: String,
        /// What is wrong.
        why: &'static str,
    },
    /// Rehearsal needs a canary to rehearse on.
    #[error(
        "strategy.rehearse_rollback = true needs canary >= 1 (set canary = 1 or rehearse_rollback = false)"
    )]
    RehearsalWithoutCanary,
    /// A deadline that would always fire before a batch could finish.
    #[error(
        "strategy.progress_deadline = {progress} is shorter than healthy_deadline + min_healthy_time = {needed}: every deployment would time out; raise progress_deadline"
    )]
    DeadlineTooShort {
        /// The configured progress deadline.
        progress: DurationMs,
        /// The least that lets one batch finish.
        needed: DurationMs,
    },
    /// An `[[strategy.analysis]]` entry that is malformed.
    #[error("strategy analysis {name:?}: {why}")]
    BadAnalysis {
        /// The analysis's name (possibly empty).
        name: String,
        /// What is wrong, naming the key.
        why: String,
    },
    /// A cluster name under `[strategy.clusters]` or in `order` that is not one.
    // Printed inline, not as a `#[source]`: the problems are listed side by
    // side in `StrategyErrors`, which has no single cause to chain.
    #[error("strategy: bad cluster name in {key}: {problem}")]
    BadCluster {
        /// Where it appeared.
        key: String,
        /// What is wrong with it.
        problem: ids::NameError,
    },
}

/// Every problem found in a `[strategy]` table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", join(.0))]
pub struct StrategyErrors(pub Vec<StrategyError>);

fn join(errors: &[StrategyError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A number of instances, absolute or relative to the cluster's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Quantity {
    /// This many instances.
    Count(u32),
    /// This percentage (0..=100) of the cluster.
    Percent(u8),
}

impl Quantity {
    /// Resolves against a cluster of `size`, rounding up: used for floors,
    /// where rounding down would quietly allow less capacity than asked.
    pub fn resolve_up(self, size: usize) -> usize {
        match self {
            Quantity::Count(n) => n as usize,
            Quantity::Percent(p) => (size * p as usize).div_ceil(100),
        }
    }

    /// Resolves against a cluster of `size`, rounding down but never below
    /// one: used for budgets, where zero would stall the rollout for ever.
    pub fn resolve_down_min1(self, size: usize) -> usize {
        match self {
            Quantity::Count(n) => n as usize,
            Quantity::Percent(p) => (size * p as usize / 100).max(1),
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quantity::Count(n) => write!(f, "{n}"),
            Quantity::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Which cluster goes first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterOrder {
    /// Fewest instances first (ties by name): the smallest blast radius
    /// meets the release first.
    SmallestFirst,
    /// Exactly this order; every cluster of the fleet must be named.
    Explicit(Vec<ClusterName>),
}

/// A synthetic check the driver runs after a batch has been stable: a
/// check the coordinator's own config defines (`[[checks]]` in
/// coordinator.toml), named here, with values for its declared parameters.
/// A strategy never carries a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// The name of a `[[checks]]` entry of coordinator.toml; shown in
    /// history and in failure reasons.
    pub name: String,
    /// Values of the check's declared parameters.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Longer than this counts as failed: the coordinator sets it from its
    /// `[[checks]]` entry when it plans.
    pub timeout: DurationMs,
}

/// `smoke(url=http://web/health) within 30s`, as `lockstep plan` shows it.
impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.params.is_empty() {
            let params: Vec<String> = self
                .params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            write!(f, "({})", params.join(", "))?;
        }
        write!(f, " within {}", self.timeout)
    }
}

/// Capacity rules for one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Disruption budget: instances switching at once.
    pub max_unavailable: Quantity,
    /// Capacity floor: instances that must keep serving.
    pub min_healthy: Quantity,
}

/// Per-cluster overrides of the defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterOverride {
    /// Overrides `max_unavailable` for this cluster.
    pub max_unavailable: Option<Quantity>,
    /// Overrides `min_healthy` for this cluster.
    pub min_healthy: Option<Quantity>,
    /// Replaces the default checks for this cluster.
    pub checks: Option<Vec<Check>>,
}

/// A validated strategy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Strategy {
    /// Instances in the canary wave (0 skips it).
    pub canary: u32,
    /// Cluster order.
    pub order: ClusterOrder,
    /// Default capacity rules.
    pub capacity: Capacity,
    /// A batch must be ready this soon after its applies.
    pub healthy_deadline: DurationMs,
    /// ... and stay ready this long before checks run.
    pub min_healthy_time: DurationMs,
    /// Bound on the whole deployment, from start to the last batch.
    pub progress_deadline: DurationMs,
    /// After the last batch, every switched host stays watched this long
    /// before the deployment succeeds; a crash or unready instance in that
    /// time rolls the whole deployment back. Zero: succeed at once.
    #[serde(default)]
    pub bake_time: DurationMs,
    /// Wait for an operator's approval before each wave after the first.
    pub pause_between_clusters: bool,
    /// Canary goes target, previous, target before anything else proceeds.
    pub rehearse_rollback: bool,
    /// On failure, revert every touched instance without asking.
    pub auto_rollback: bool,
    /// Checks run for every cluster without its own list.
    pub checks: Vec<Check>,
    /// Per-cluster overrides.
    pub clusters: BTreeMap<ClusterName, ClusterOverride>,
    /// Analysis gates, run by the coordinator against its Prometheus.
    #[serde(default)]
    pub analyses: Vec<Analysis>,
}

impl Default for Strategy {
    fn default() -> Self {
        Self {
            canary: DEFAULT_CANARY,
            order: ClusterOrder::SmallestFirst,
            capacity: Capacity {
                max_unavailable: DEFAULT_MAX_UNAVAILABLE,
                min_healthy: DEFAULT_MIN_HEALTHY,
            },
            healthy_deadline: DEFAULT_HEALTHY_DEADLINE,
            min_healthy_time: DEFAULT_MIN_HEALTHY_TIME,
            progress_deadline: DEFAULT_PROGRESS_DEADLINE,
            bake_time: default_bake_time(DEFAULT_MIN_HEALTHY_TIME),
            pause_between_clusters: false,
            rehearse_rollback: DEFAULT_REHEARSE_ROLLBACK,
            auto_rollback: DEFAULT_AUTO_ROLLBACK,
            checks: Vec::new(),
            clusters: BTreeMap::new(),
            analyses: Vec::new(),
        }
    }
}

/// The bake time a strategy gets when it does not set one.
pub const fn default_bake_time(min_healthy_time: DurationMs) -> DurationMs {
    DurationMs(min_healthy_time.0.saturating_mul(BAKE_TIME_FACTOR))
}

impl Strategy {
    /// Capacity rules for `cluster`, with its overrides applied.
    pub fn capacity_for(&self, cluster: &ClusterName) -> Capacity {
        let o = self.clusters.get(cluster);
        Capacity {
            max_unavailable: o
                .and_then(|o| o.max_unavailable)
                .unwrap_or(self.capacity.max_unavailable),
            min_healthy: o
                .and_then(|o| o.min_healthy)
                .unwrap_or(self.capacity.min_healthy),
        }
    }

    /// Checks for `cluster`, with its overrides applied.
    pub fn checks_for(&self, cluster: &ClusterName) -> &[Check] {
        self.clusters
            .get(cluster)
            .and_then(|o| o.checks.as_deref())
            .unwrap_or(&self.checks)
    }

    /// Parses the `[strategy]` table of a TOML document; other tables are
    /// left alone, unknown keys inside `[strategy]` are errors.
    pub fn from_toml(text: &str) -> Result<Strategy, StrategyErrors> {
        #[derive(Deserialize)]
        struct Doc {
            strategy: Option<RawStrategy>,
        }
        let doc: Doc = toml::from_str(text).map_err(|e| {
            StrategyErrors(vec![StrategyError::Syntax {
                message: e.message().to_owned(),
            }])
        })?;
        let raw = doc
            .strategy
            .ok_or(StrategyErrors(vec![StrategyError::Missing]))?;
        raw.validate()
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawQuantity {
    Int(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Int(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawOrder {
    Name(String),
    List(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    name: String,
    #[serde(default)]
    params: BTreeMap<String, String>,
    /// Refused with a message saying where commands are defined.
    argv: Option<toml::Value>,
    /// Refused likewise: the coordinator's `[[checks]]` entry sets it.
    timeout: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    max_unavailable: Option<RawQuantity>,
    min_healthy: Option<RawQuantity>,
    checks: Option<Vec<RawCheck>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStrategy {
    canary: Option<u32>,
    order: Option<RawOrder>,
    max_unavailable: Option<RawQuantity>,
    min_healthy: Option<RawQuantity>,
    healthy_deadline: Option<RawDuration>,
    min_healthy_time: Option<RawDuration>,
    progress_deadline: Option<RawDuration>,
    bake_time: Option<RawDuration>,
    pause_between_clusters: Option<bool>,
    rehearse_rollback: Option<bool>,
    auto_rollback: Option<bool>,
    #[serde(default)]
    checks: Vec<RawCheck>,
    #[serde(default)]
    clusters: BTreeMap<String, RawCluster>,
    #[serde(default)]
    analysis: Vec<RawAnalysis>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnalysis {
    name: String,
    query: String,
    success: String,
    baseline_margin: Option<f64>,
    interval: Option<RawDuration>,
    count: Option<u32>,
    failure_limit: Option<u32>,
    inconclusive_limit: Option<u32>,
    phases: Option<Vec<Phase>>,
    on_inconclusive: Option<OnInconclusive>,
}

/// Whether zero is a sensible value for a quantity key.
#[derive(Clone, Copy)]
enum Zero {
    Allowed,
    Refused,
}

fn quantity(key: &str, raw: &RawQuantity, zero: Zero, errs: &mut Vec<StrategyError>) -> Quantity {
    let bad = |value: String, why| StrategyError::BadQuantity {
        key: key.to_owned(),
        value,
        why,
    };
    let (q, shown) = match raw {
        RawQuantity::Int(n) => match u32::try_from(*n) {
            Ok(n) => (Quantity::Count(n), n.to_string()),
            Err(_) => {
                errs.push(bad(
                    n.to_string(),
                    "must be a count >= 0 or a percentage like \"25%\"",
                ));
                return Quantity::Count(1);
            }
        },
        RawQuantity::Text(t) => {
            let parsed = match t.trim().strip_suffix('%') {
                Some(p) => p
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= 100)
                    .map(Quantity::Percent),
                None => t.trim().parse::<u32>().ok().map(Quantity::Count),
            };
            match parsed {
                Some(q) => (q, t.clone()),
                None => {
                    errs.push(bad(
                        t.clone(),
                        "must be a count like 2 or a percentage from 0% to 100%",
                    ));
                    return Quantity::Count(1);
                }
            }
        }
    };
    if matches!(zero, Zero::Refused) && matches!(q, Quantity::Count(0) | Quantity::Percent(0)) {
        errs.push(bad(
            shown,
            "must allow at least one instance, or nothing could ever be switched",
        ));
    }
    q
}

fn duration(
    key: &str,
    raw: Option<&RawDuration>,
    default: DurationMs,
    zero: Zero,
    errs: &mut Vec<StrategyError>,
) -> DurationMs {
    let Some(raw) = raw else { return default };
    let bad = |value: String, why| StrategyError::BadDuration {
        key: key.to_owned(),
        value,
        why,
    };
    let text = match raw {
        RawDuration::Int(n) => {
            errs.push(bad(
                n.to_string(),
                "give a unit, for example \"500ms\", \"30s\", \"5m\" or \"1h\"",
            ));
            return default;
        }
        RawDuration::Text(t) => t,
    };
    match parse_duration(text) {
        Some(d) if d.0 == 0 && matches!(zero, Zero::Refused) => {
            errs.push(bad(text.clone(), "must be longer than zero"));
            default
        }
        Some(d) => d,
        None => {
            errs.push(bad(
                text.clone(),
                "expected a number and a unit, for example \"500ms\", \"30s\", \"5m\" or \"1h\"",
            ));
            default
        }
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> Option<DurationMs> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let factor = match unit.trim() {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(factor).map(DurationMs)
}

fn check(raw: RawCheck, errs: &mut Vec<StrategyError>) -> Check {
    if raw.name.trim().is_empty() {
        errs.push(StrategyError::BadCheck {
            name: raw.name.clone(),
            why: "name must not be empty: name a [[checks]] entry of coordinator.toml",
        });
    }
    if raw.argv.is_some() {
        errs.push(StrategyError::BadCheck {
            name: raw.name.clone(),
            why: "argv is not accepted: a strategy names a check defined in the coordinator's coordinator.toml ([[checks]] name, argv, params) and passes values for its declared params",
        });
    }
    if raw.timeout.is_some() {
        errs.push(StrategyError::BadCheck {
            name: raw.name.clone(),
            why: "timeout is not accepted: it is set by the check's [[checks]] entry in coordinator.toml",
        });
    }
    Check {
        name: raw.name,
        params: raw.params,
        timeout: DEFAULT_CHECK_TIMEOUT,
    }
}

fn analysis(raw: RawAnalysis, errs: &mut Vec<StrategyError>) -> Analysis {
    let mut bad = |why: String| {
        errs.push(StrategyError::BadAnalysis {
            name: raw.name.clone(),
            why,
        })
    };
    if !crate::analysis::is_valid_name(&raw.name) {
        bad("name must be 1 to 64 of a-z, 0-9, '-', '_'".into());
    }
    if let Err(why) = analysis::check_query(&raw.query) {
        bad(why);
    }
    let success = Condition::parse(&raw.success).unwrap_or_else(|why| {
        bad(format!("success = {:?}: {why}", raw.success));
        Condition {
            op: crate::analysis::Op::Lt,
            threshold: 0.0,
        }
    });
    let baseline = match raw.baseline_margin {
        Some(m) if !(m.is_finite() && m >= 0.0) => {
            bad(format!(
                "baseline_margin = {m}: must be a finite number >= 0"
            ));
            None
        }
        m => m.map(|margin| Baseline { margin }),
    };
    let mut interval_errs = Vec::new();
    let interval = duration(
        "analysis.interval",
        raw.interval.as_ref(),
        analysis::DEFAULT_INTERVAL,
        Zero::Refused,
        &mut interval_errs,
    );
    for e in interval_errs {
        bad(e.to_string());
    }
    if interval < analysis::MIN_INTERVAL || interval > analysis::MAX_INTERVAL {
        bad(format!(
            "interval = {interval}: must be from {} to {}",
            analysis::MIN_INTERVAL,
            analysis::MAX_INTERVAL
        ));
    }
    let count = raw.count.unwrap_or(analysis::DEFAULT_COUNT);
    if count == 0 || count > analysis::MAX_COUNT {
        bad(format!(
            "count = {count}: must be from 1 to {}",
            analysis::MAX_COUNT
        ));
    }
    let phases = raw.phases.unwrap_or_else(|| vec![Phase::Canary]);
    if phases.is_empty() {
        bad("phases must name at least one of \"canary\", \"clusters\", \"bake\"".into());
    }
    if baseline.is_some() && phases.iter().any(|p| *p != Phase::Canary) {
        bad("baseline_margin compares the canary with the hosts still on the previous release, so phases must be [\"canary\"] only".into());
    }
    let mut phases = phases;
    phases.sort_unstable();
    phases.dedup();
    Analysis {
        name: raw.name,
        query: raw.query,
        success,
        baseline,
        interval,
        count,
        failure_limit: raw.failure_limit.unwrap_or(analysis::DEFAULT_LIMIT),
        inconclusive_limit: raw.inconclusive_limit.unwrap_or(analysis::DEFAULT_LIMIT),
        phases,
        on_inconclusive: raw.on_inconclusive.unwrap_or(OnInconclusive::Halt),
    }
}

impl RawStrategy {
    fn validate(self) -> Result<Strategy, StrategyErrors> {
        let mut errs = Vec::new();
        let d = Strategy::default();
        let canary = self.canary.unwrap_or(d.canary);
        let order = match self.order {
            None => ClusterOrder::SmallestFirst,
            Some(RawOrder::Name(n)) if n == "smallest-first" => ClusterOrder::SmallestFirst,
            Some(RawOrder::Name(n)) => {
                errs.push(StrategyError::BadOrder { value: n });
                ClusterOrder::SmallestFirst
            }
            Some(RawOrder::List(names)) => {
                let mut out: Vec<ClusterName> = Vec::new();
                for n in names {
                    match ClusterName::parse(&n) {
                        Ok(c) if out.contains(&c) => {
                            errs.push(StrategyError::DuplicateInOrder { name: n })
                        }
                        Ok(c) => out.push(c),
                        Err(problem) => errs.push(StrategyError::BadCluster {
                            key: "order".to_owned(),
                            problem,
                        }),
                    }
                }
                ClusterOrder::Explicit(out)
            }
        };
        let max_unavailable = self
            .max_unavailable
            .map(|q| quantity("max_unavailable", &q, Zero::Refused, &mut errs))
            .unwrap_or(d.capacity.max_unavailable);
        let min_healthy = self
            .min_healthy
            .map(|q| quantity("min_healthy", &q, Zero::Allowed, &mut errs))
            .unwrap_or(d.capacity.min_healthy);
        let healthy_deadline = duration(
            "healthy_deadline",
            self.healthy_deadline.as_ref(),
            d.healthy_deadline,
            Zero::Refused,
            &mut errs,
        );
        let min_healthy_time = duration(
            "min_healthy_time",
            self.min_healthy_time.as_ref(),
            d.min_healthy_time,
            Zero::Allowed,
            &mut errs,
        );
        let progress_deadline = duration(
            "progress_deadline",
            self.progress_deadline.as_ref(),
            d.progress_deadline,
            Zero::Refused,
            &mut errs,
        );
        let bake_time = duration(
            "bake_time",
            self.bake_time.as_ref(),
            default_bake_time(min_healthy_time),
            Zero::Allowed,
            &mut errs,
        );
        let needed = DurationMs(healthy_deadline.0 + min_healthy_time.0);
        if progress_deadline < needed {
            errs.push(StrategyError::DeadlineTooShort {
                progress: progress_deadline,
                needed,
            });
        }
        // Unset, it follows the canary: a strategy without one has nothing
        // to rehearse on. Only an explicit `true` without a canary is wrong.
        let rehearse_rollback = self
            .rehearse_rollback
            .unwrap_or(d.rehearse_rollback && canary > 0);
        if rehearse_rollback && canary == 0 {
            errs.push(StrategyError::RehearsalWithoutCanary);
        }
        let checks = self
            .checks
            .into_iter()
            .map(|c| check(c, &mut errs))
            .collect();
        let mut clusters = BTreeMap::new();
        for (name, raw) in self.clusters {
            let key = |k: &str| format!("clusters.{name}.{k}");
            let o = ClusterOverride {
                max_unavailable: raw
                    .max_unavailable
                    .map(|q| quantity(&key("max_unavailable"), &q, Zero::Refused, &mut errs)),
                min_healthy: raw
                    .min_healthy
                    .map(|q| quantity(&key("min_healthy"), &q, Zero::Allowed, &mut errs)),
                checks: raw
                    .checks
                    .map(|cs| cs.into_iter().map(|c| check(c, &mut errs)).collect()),
            };
            match ClusterName::parse(&name) {
                Ok(n) => {
                    clusters.insert(n, o);
                }
                Err(problem) => errs.push(StrategyError::BadCluster {
                    key: "[strategy.clusters]".to_owned(),
                    problem,
                }),
            }
        }
        if self.analysis.len() > analysis::MAX_ANALYSES {
            errs.push(StrategyError::BadAnalysis {
                name: String::new(),
                why: format!(
                    "{} analyses declared; at most {}",
                    self.analysis.len(),
                    analysis::MAX_ANALYSES
                ),
            });
        }
        let mut analyses: Vec<Analysis> = Vec::new();
        for raw in self.analysis {
            let a = analysis(raw, &mut errs);
            if analyses.iter().any(|b| b.name == a.name) {
                errs.push(StrategyError::BadAnalysis {
                    name: a.name.clone(),
                    why: "declared twice".into(),
                });
            }
            analyses.push(a);
        }
        if !errs.is_empty() {
            return Err(StrategyErrors(errs));
        }
        Ok(Strategy {
            canary,
            order,
            capacity: Capacity {
                max_unavailable,
                min_healthy,
            },
            healthy_deadline,
            min_healthy_time,
            progress_deadline,
            bake_time,
            pause_between_clusters: self
                .pause_between_clusters
                .unwrap_or(d.pause_between_clusters),
            rehearse_rollback,
            auto_rollback: self.auto_rollback.unwrap_or(d.auto_rollback),
            checks,
            clusters,
            analyses,
        })
    }
}
