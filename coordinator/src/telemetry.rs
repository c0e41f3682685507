//! The coordinator's Prometheus metrics (#16), defined once here and
//! updated where things happen; served by `exposition::serve` on
//! `[metrics] listen`.
//!
//! ```text
//! lockstep_coordinator_leader                      gauge  1 while this coordinator leads
//! lockstep_deployments_started_total{kind}         counter deploy | rollback | restart
//! lockstep_deployments_finished_total{outcome}     counter succeeded | rolled_back | aborted | failed
//! lockstep_deployments_active{state}               gauge  running | paused | awaiting_approval | rolling_back
//! lockstep_deployment_duration_seconds{outcome}    histogram, start to end
//! lockstep_batch_duration_seconds                  histogram, a batch's first apply to its gates passing
//! lockstep_rollbacks_total{reason}                 counter instance_failed | check_failed | healthy_deadline | progress_deadline | unhealthy | operator
//! lockstep_agents{state}                           gauge  connected | unreachable (read at scrape)
//! lockstep_release_pushes_total{result}            counter accepted | refused
//! lockstep_release_push_bytes_total                counter
//! lockstep_release_fetch_bytes_total               counter bytes served (agents, mirroring coordinators)
//! lockstep_notifications_total{webhook,result}     counter delivered | failed (given up) | dropped (queue full)
//! lockstep_journal_txn_bytes                       histogram, each journal transaction's size (upper bound of its encoding)
//! lockstep_journal_txn_bytes_largest               gauge  the largest journal transaction since start
//! ```
//!
//! Must never: label by anything unbounded (no deployment ids, hosts or
//! digests: those are in the deployment's events; a webhook's name is
//! bounded by `notify::MAX_WEBHOOKS`).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabel {
    webhook: String,
    result: &'static str,
}

type DurationFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds to hours: a deployment.
fn deployment_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

/// A batch (or anything from a tenth of a second to an hour).
fn batch_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 2.0, 16))
}

/// 256 B to 8 MiB: a journal transaction (the goal is ≤ 128 KiB).
fn txn_buckets() -> Histogram {
    Histogram::new(exponential_buckets(256.0, 2.0, 16))
}

/// Every metric of the coordinator, cheap to clone (each is an `Arc`).
#[derive(Debug, Clone)]
pub struct CoordinatorMetrics {
    registry: Arc<Registry>,
    leader: Gauge,
    started: Family<KindLabel, Counter>,
    finished: Family<OutcomeLabel, Counter>,
    active: Family<StateLabel, Gauge>,
    deployment_duration: DurationFamily<OutcomeLabel>,
    batch_duration: Histogram,
    rollbacks: Family<ReasonLabel, Counter>,
    agents: Family<StateLabel, Gauge>,
    pushes: Family<ResultLabel, Counter>,
    push_bytes: Counter,
    fetch_bytes: Counter,
    notifications: Family<NotificationLabel, Counter>,
    journal_txn_bytes: Histogram,
    journal_txn_largest: Gauge,
    etcd: leases::EtcdMetrics,
}

impl Default for CoordinatorMetrics {
    fn default() -> Self {
        let leader = Gauge::default();
        let started = Family::<KindLabel, Counter>::default();
        let finished = Family::<OutcomeLabel, Counter>::default();
        let active = Family::<StateLabel, Gauge>::default();
        let deployment_duration = DurationFamily::new_with_constructor(deployment_buckets);
        let batch_duration = batch_buckets();
        let rollbacks = Family::<ReasonLabel, Counter>::default();
        let agents = Family::<StateLabel, Gauge>::default();
        let pushes = Family::<ResultLabel, Counter>::default();
        let push_bytes = Counter::default();
        let fetch_bytes = Counter::default();
        let notifications = Family::<NotificationLabel, Counter>::default();
        let journal_txn_bytes = txn_buckets();
        let journal_txn_largest = Gauge::default();
        let etcd = leases::EtcdMetrics::default();
        let mut r = Registry::default();
        etcd.register(&mut r);
        r.register(
            "lockstep_coordinator_leader",
            "1 while this coordinator leads the fleet",
            leader.clone(),
        );
        r.register(
            "lockstep_deployments_started",
            "Deployments started, by kind",
            started.clone(),
        );
        r.register(
            "lockstep_deployments_finished",
            "Deployments ended, by outcome",
            finished.clone(),
        );
        r.register(
            "lockstep_deployments_active",
            "Deployments this coordinator drives now, by state",
            active.clone(),
        );
        r.register(
            "lockstep_deployment_duration_seconds",
            "Time from a deployment's start to its end, by outcome",
            deployment_duration.clone(),
        );
        r.register(
            "lockstep_batch_duration_seconds",
            "Time from a batch's first apply to its gates passing",
            batch_duration.clone(),
        );
        r.register(
            "lockstep_rollbacks",
            "Automatic and operator rollbacks, by reason",
            rollbacks.clone(),
        );
        r.register(
            "lockstep_agents",
            "Agents known to this coordinator, by reachability",
            agents.clone(),
        );
        r.register(
            "lockstep_release_pushes",
            "Release pushes, by result",
            pushes.clone(),
        );
        r.register(
            "lockstep_release_push_bytes",
            "Bytes of pushed releases received",
            push_bytes.clone(),
        );
        r.register(
            "lockstep_release_fetch_bytes",
            "Bytes of releases served to agents",
            fetch_bytes.clone(),
        );
        r.register(
            "lockstep_notifications",
            "Webhook notifications, by webhook and result",
            notifications.clone(),
        );
        r.register(
            "lockstep_journal_txn_bytes",
            "Size of each journal transaction (an upper bound of its encoding)",
            journal_txn_bytes.clone(),
        );
        r.register(
            "lockstep_journal_txn_bytes_largest",
            "The largest journal transaction since this coordinator started",
            journal_txn_largest.clone(),
        );
        Self {
            etcd,
            registry: Arc::new(r),
            leader,
            started,
            finished,
            active,
            deployment_duration,
            batch_duration,
            rollbacks,
            agents,
            pushes,
            push_bytes,
            fetch_bytes,
            notifications,
            journal_txn_bytes,
            journal_txn_largest,
        }
    }
}

/// Why a deployment rolled back, as a bounded label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackReason {
    InstanceFailed,
    CheckFailed,
    AnalysisFailed,
    AnalysisInconclusive,
    HealthyDeadline,
    ProgressDeadline,
    Unhealthy,
    Operator,
}

impl RollbackReason {
    /// The label of the engine's `reason`; an instance failure the driver
    /// saw as a watched instance turning unhealthy (`unhealthy`) is
    /// `Unhealthy`, not a failed start.
    pub fn of(reason: &rollout::Reason, unhealthy: bool) -> Self {
        match reason {
            rollout::Reason::InstanceFailed { .. } if unhealthy => Self::Unhealthy,
            rollout::Reason::InstanceFailed { .. } => Self::InstanceFailed,
            rollout::Reason::CheckFailed { .. } => Self::CheckFailed,
            rollout::Reason::AnalysisFailed { .. } => Self::AnalysisFailed,
            rollout::Reason::AnalysisInconclusive { .. } => Self::AnalysisInconclusive,
            rollout::Reason::HealthyDeadline { .. } => Self::HealthyDeadline,
            rollout::Reason::ProgressDeadline { .. } => Self::ProgressDeadline,
            rollout::Reason::Operator => Self::Operator,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::InstanceFailed => "instance_failed",
            Self::CheckFailed => "check_failed",
            Self::AnalysisFailed => "analysis_failed",
            Self::AnalysisInconclusive => "analysis_inconclusive",
            Self::HealthyDeadline => "healthy_deadline",
            Self::ProgressDeadline => "progress_deadline",
            Self::Unhealthy => "unhealthy",
            Self::Operator => "operator",
        }
    }
}

impl CoordinatorMetrics {
    /// Where the coordinator's etcd client counts its requests.
    pub fn etcd(&self) -> leases::EtcdMetrics {
        self.etcd.clone()
    }

    /// The registry `exposition::serve` encodes.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// A deployment of `kind` (`deploy`, `rollback`, `restart`) began.
    pub fn deployment_started(&self, kind: &'static str) {
        self.started.get_or_create(&KindLabel { kind }).inc();
    }

    /// A deployment ended with `outcome` after `took`.
    pub fn deployment_finished(&self, outcome: &'static str, took: Duration) {
        self.finished.get_or_create(&OutcomeLabel { outcome }).inc();
        self.deployment_duration
            .get_or_create(&OutcomeLabel { outcome })
            .observe(took.as_secs_f64());
    }

    pub fn batch_passed(&self, took: Duration) {
        self.batch_duration.observe(took.as_secs_f64());
    }

    pub fn rolled_back(&self, reason: RollbackReason) {
        self.rollbacks
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
    }

    /// Sets the reachability gauge (called before each scrape).
    pub fn set_agents(&self, connected: usize, unreachable: usize) {
        for (state, n) in [("connected", connected), ("unreachable", unreachable)] {
            self.agents
                .get_or_create(&StateLabel { state })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub fn push(&self, accepted: bool, bytes: u64) {
        let result = if accepted { "accepted" } else { "refused" };
        self.pushes.get_or_create(&ResultLabel { result }).inc();
        self.push_bytes.inc_by(bytes);
    }

    /// A notification to `webhook` ended: delivered, failed or dropped.
    pub fn notification(&self, webhook: &str, result: &'static str) {
        self.notifications
            .get_or_create(&NotificationLabel {
                webhook: webhook.to_owned(),
                result,
            })
            .inc();
    }

    /// A journal transaction of `bytes` is sent.
    pub fn journal_txn(&self, bytes: usize) {
        self.journal_txn_bytes.observe(bytes as f64);
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.journal_txn_largest
            .inner()
            .fetch_max(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn fetch_served(&self, bytes: u64) {
        self.fetch_bytes.inc_by(bytes);
    }

    /// Counts a deployment in `state` until the returned guard moves it or
    /// is dropped (the driver ends, whatever the way).
    pub fn active(&self, state: &'static str) -> ActiveDeployment {
        self.active.get_or_create(&StateLabel { state }).inc();
        ActiveDeployment {
            family: self.active.clone(),
            state,
        }
    }
}

/// One deployment in `lockstep_deployments_active`.
#[derive(Debug)]
pub struct ActiveDeployment {
    family: Family<StateLabel, Gauge>,
    state: &'static str,
}

impl ActiveDeployment {
    /// Moves the deployment to `state`.
    pub fn set(&mut self, state: &'static str) {
        if state != self.state {
            self.family
                .get_or_create(&StateLabel { state: self.state })
                .dec();
            self.family.get_or_create(&StateLabel { state }).inc();
            self.state = state;
        }
    }
}

impl Drop for ActiveDeployment {
    fn drop(&mut self) {
        self.family
            .get_or_create(&StateLabel { state: self.state })
            .dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &CoordinatorMetrics) -> String {
        exposition::encode(&m.registry(), exposition::Format::PrometheusText).unwrap()
    }

    #[test]
    fn an_active_deployment_is_counted_in_one_state_until_it_ends() {
        let m = CoordinatorMetrics::default();
        let mut d = m.active("running");
        assert!(text(&m).contains("lockstep_deployments_active{state=\"running\"} 1\n"));
        d.set("rolling_back");
        let t = text(&m);
        assert!(
            t.contains("lockstep_deployments_active{state=\"running\"} 0\n"),
            "{t}"
        );
        assert!(
            t.contains("lockstep_deployments_active{state=\"rolling_back\"} 1\n"),
            "{t}"
        );
        drop(d);
        assert!(text(&m).contains("lockstep_deployments_active{state=\"rolling_back\"} 0\n"));
    }

    #[test]
    fn an_instance_failure_seen_as_unhealthy_is_its_own_reason() {
        let failed = rollout::Reason::InstanceFailed {
            instance: rollout::InstanceId::new("h1").unwrap(),
            release: rollout::Installed::Nothing,
            detail: "exited".to_owned(),
        };
        assert_eq!(
            RollbackReason::of(&failed, false),
            RollbackReason::InstanceFailed
        );
        assert_eq!(RollbackReason::of(&failed, true), RollbackReason::Unhealthy);
        assert_eq!(
            RollbackReason::of(&rollout::Reason::Operator, true),
            RollbackReason::Operator
        );
    }

    #[test]
    fn every_family_is_exposed_with_its_conventional_name() {
        let m = CoordinatorMetrics::default();
        m.set_leader(true);
        m.deployment_started("deploy");
        m.deployment_finished("succeeded", Duration::from_secs(42));
        m.batch_passed(Duration::from_millis(1500));
        m.rolled_back(RollbackReason::HealthyDeadline);
        m.set_agents(5, 1);
        m.push(true, 1024);
        m.fetch_served(2048);
        let t = text(&m);
        for line in [
            "lockstep_coordinator_leader 1\n",
            "lockstep_deployments_started_total{kind=\"deploy\"} 1\n",
            "lockstep_deployments_finished_total{outcome=\"succeeded\"} 1\n",
            "lockstep_deployment_duration_seconds_count{outcome=\"succeeded\"} 1\n",
            "lockstep_batch_duration_seconds_count 1\n",
            "lockstep_rollbacks_total{reason=\"healthy_deadline\"} 1\n",
            "lockstep_agents{state=\"unreachable\"} 1\n",
            "lockstep_release_pushes_total{result=\"accepted\"} 1\n",
            "lockstep_release_push_bytes_total 1024\n",
            "lockstep_release_fetch_bytes_total 2048\n",
        ] {
            assert!(t.contains(line), "{line} in\n{t}");
        }
    }
}
