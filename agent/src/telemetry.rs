//! The agent's Prometheus metrics (#16), defined once here and updated
//! where things happen; served by `exposition::serve` on `[metrics] listen`.
//!
//! ```text
//! lockstep_agent_instances{service,state}           gauge  instances by supervisor state (read at scrape)
//! lockstep_agent_restarts_total{service}            counter the supervisor restarted an app process
//! lockstep_agent_switches_total{service,outcome}    counter install/apply/rollback/restart: succeeded | failed | superseded
//! lockstep_agent_switch_duration_seconds{service}   histogram, a switch's start to its end
//! lockstep_agent_budget_wait_seconds                histogram, waiting for etcd and a budget slot
//! lockstep_agent_probe_duration_seconds{service}    histogram, one readiness probe attempt
//! lockstep_agent_probe_failures_total{service}      counter probe attempts that failed or timed out
//! lockstep_agent_etcd_session                       gauge  1 while the etcd session is alive (read at scrape)
//! lockstep_agent_fetch_bytes_total                  counter release bytes received from coordinators
//! ```
//!
//! `service` takes the names of the services on this host (a handful);
//! `state` and `outcome` are fixed sets.
//!
//! Must never: label by anything unbounded (no pids, digests, versions,
//! hosts or tokens: those are in the agent's log and status).

use std::sync::Arc;
use std::time::Duration;

use exposition::Readiness;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::supervisor::InstanceState;

/// Every state an instance can be in, each exposed (0 when none is).
const STATES: [InstanceState; 8] = [
    InstanceState::Starting,
    InstanceState::Ready,
    InstanceState::Unhealthy,
    InstanceState::Backoff,
    InstanceState::CrashLooping,
    InstanceState::Failed,
    InstanceState::Stopping,
    InstanceState::Stopped,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabel {
    service: String,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SwitchLabel {
    service: String,
    outcome: &'static str,
}

type DurationFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A tenth of a second to about 14 minutes: a switch (readiness included).
fn switch_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 2.0, 14))
}

/// A millisecond to about 16 seconds: one probe attempt (bounded by its timeout).
fn probe_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Ten milliseconds to about 5 minutes: `budget_wait` is 2 minutes by default.
fn budget_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 15))
}

/// How a switch ended, as a bounded label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchOutcome {
    Succeeded,
    Failed,
    /// A command with a higher fencing token took over.
    Superseded,
}

impl SwitchOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Superseded => "superseded",
        }
    }
}

/// Every metric of the agent, cheap to clone (each is an `Arc`).
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    registry: Arc<Registry>,
    instances: Family<InstanceLabel, Gauge>,
    restarts: Family<ServiceLabel, Counter>,
    switches: Family<SwitchLabel, Counter>,
    switch_duration: DurationFamily<ServiceLabel>,
    budget_wait: Histogram,
    probe_duration: DurationFamily<ServiceLabel>,
    probe_failures: Family<ServiceLabel, Counter>,
    etcd_session: Gauge,
    fetch_bytes: Counter,
    etcd: leases::EtcdMetrics,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let m = Self {
            registry: Arc::new(Registry::default()),
            instances: Family::default(),
            restarts: Family::default(),
            switches: Family::default(),
            switch_duration: DurationFamily::new_with_constructor(switch_buckets),
            budget_wait: budget_buckets(),
            probe_duration: DurationFamily::new_with_constructor(probe_buckets),
            probe_failures: Family::default(),
            etcd_session: Gauge::default(),
            fetch_bytes: Counter::default(),
            etcd: leases::EtcdMetrics::default(),
        };
        let mut r = Registry::default();
        m.etcd.register(&mut r);
        r.register(
            "lockstep_agent_instances",
            "App instances on this host, by service and supervisor state",
            m.instances.clone(),
        );
        r.register(
            "lockstep_agent_restarts",
            "App processes the supervisor restarted after they ended or failed liveness",
            m.restarts.clone(),
        );
        r.register(
            "lockstep_agent_switches",
            "Installs, applies, rollbacks and restarts carried out, by outcome",
            m.switches.clone(),
        );
        r.register(
            "lockstep_agent_switch_duration_seconds",
            "Time from a switch's start to its end, budget wait included",
            m.switch_duration.clone(),
        );
        r.register(
            "lockstep_agent_budget_wait_seconds",
            "Time a planned disruption waited for etcd and a disruption budget slot",
            m.budget_wait.clone(),
        );
        r.register(
            "lockstep_agent_probe_duration_seconds",
            "Time of one readiness probe attempt",
            m.probe_duration.clone(),
        );
        r.register(
            "lockstep_agent_probe_failures",
            "Readiness probe attempts that failed or timed out",
            m.probe_failures.clone(),
        );
        r.register(
            "lockstep_agent_etcd_session",
            "1 while the agent's etcd session is alive, 0 when lost or not configured",
            m.etcd_session.clone(),
        );
        r.register(
            "lockstep_agent_fetch_bytes",
            "Release bytes received from the coordinators",
            m.fetch_bytes.clone(),
        );
        Self {
            registry: Arc::new(r),
            ..m
        }
    }
}

impl AgentMetrics {
    /// Where the agent's etcd clients count their requests.
    pub fn etcd(&self) -> leases::EtcdMetrics {
        self.etcd.clone()
    }

    /// The registry `exposition::serve` encodes.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The metrics of one service, for the code that acts on it.
    pub fn service(&self, service: &str) -> ServiceMetrics {
        ServiceMetrics {
            metrics: self.clone(),
            label: ServiceLabel {
                service: service.to_owned(),
            },
        }
    }

    /// Sets `service`'s instance counts to `states` (called before each
    /// scrape); every state is exposed, 0 when no instance is in it.
    pub fn set_instances(&self, service: &str, states: &[InstanceState]) {
        for state in STATES {
            let n = states.iter().filter(|s| **s == state).count();
            self.instances
                .get_or_create(&InstanceLabel {
                    service: service.to_owned(),
                    state: state.as_str(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub fn set_etcd_session(&self, alive: bool) {
        self.etcd_session.set(i64::from(alive));
    }

    /// A planned disruption waited `took` for its slot (or gave up).
    pub fn budget_waited(&self, took: Duration) {
        self.budget_wait.observe(took.as_secs_f64());
    }

    /// The counter a release fetch adds the bytes it receives to.
    pub fn fetch_bytes(&self) -> Counter {
        self.fetch_bytes.clone()
    }
}

/// The metrics of one service; cheap to clone.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    metrics: AgentMetrics,
    label: ServiceLabel,
}

impl ServiceMetrics {
    /// The supervisor started a fresh process for an instance that ended.
    pub fn restarted(&self) {
        self.metrics.restarts.get_or_create(&self.label).inc();
    }

    /// One probe attempt took `took` and passed or not.
    pub fn probed(&self, took: Duration, passed: bool) {
        self.metrics
            .probe_duration
            .get_or_create(&self.label)
            .observe(took.as_secs_f64());
        if !passed {
            self.metrics.probe_failures.get_or_create(&self.label).inc();
        }
    }

    /// A switch (install, apply, rollback, restart) ended after `took`.
    pub fn switch_ended(&self, outcome: SwitchOutcome, took: Duration) {
        self.metrics
            .switches
            .get_or_create(&SwitchLabel {
                service: self.label.service.clone(),
                outcome: outcome.label(),
            })
            .inc();
        self.metrics
            .switch_duration
            .get_or_create(&self.label)
            .observe(took.as_secs_f64());
    }
}

/// What `/readyz` answers: ready once the services were started at agent
/// start and, with `[etcd]` configured (`etcd_session` is `Some`), while
/// the session is alive.
pub fn readiness(services_started: bool, etcd_session: Option<bool>) -> Readiness {
    if !services_started {
        return Readiness::NotReady("starting: the services are not started yet".to_owned());
    }
    match etcd_session {
        Some(false) => Readiness::NotReady(
            "no etcd session: planned disruptions cannot take a budget slot (the apps keep running)"
                .to_owned(),
        ),
        Some(true) | None => Readiness::Ready,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &AgentMetrics) -> String {
        exposition::encode(&m.registry(), exposition::Format::PrometheusText).unwrap()
    }

    #[test]
    fn every_family_is_exposed_with_its_conventional_name() {
        let m = AgentMetrics::default();
        let demo = m.service("demo");
        demo.restarted();
        demo.probed(Duration::from_millis(3), true);
        demo.probed(Duration::from_millis(5), false);
        demo.switch_ended(SwitchOutcome::Succeeded, Duration::from_secs(2));
        demo.switch_ended(SwitchOutcome::Superseded, Duration::from_secs(1));
        m.budget_waited(Duration::from_millis(200));
        m.set_etcd_session(true);
        m.fetch_bytes().inc_by(4096);
        m.set_instances("demo", &[InstanceState::Ready, InstanceState::Ready]);
        let t = text(&m);
        for line in [
            "# TYPE lockstep_agent_restarts_total counter\n",
            "lockstep_agent_restarts_total{service=\"demo\"} 1\n",
            "lockstep_agent_probe_duration_seconds_count{service=\"demo\"} 2\n",
            "lockstep_agent_probe_failures_total{service=\"demo\"} 1\n",
            "lockstep_agent_switches_total{service=\"demo\",outcome=\"succeeded\"} 1\n",
            "lockstep_agent_switches_total{service=\"demo\",outcome=\"superseded\"} 1\n",
            "lockstep_agent_switch_duration_seconds_count{service=\"demo\"} 2\n",
            "lockstep_agent_budget_wait_seconds_count 1\n",
            "lockstep_agent_etcd_session 1\n",
            "lockstep_agent_fetch_bytes_total 4096\n",
            "lockstep_agent_instances{service=\"demo\",state=\"ready\"} 2\n",
        ] {
            assert!(t.contains(line), "{line} in\n{t}");
        }
    }

    #[test]
    fn instance_counts_follow_the_latest_states_and_zero_the_rest() {
        let m = AgentMetrics::default();
        m.set_instances("demo", &[InstanceState::Ready, InstanceState::Starting]);
        m.set_instances("demo", &[InstanceState::CrashLooping]);
        let t = text(&m);
        for line in [
            "lockstep_agent_instances{service=\"demo\",state=\"crash_looping\"} 1\n",
            "lockstep_agent_instances{service=\"demo\",state=\"ready\"} 0\n",
            "lockstep_agent_instances{service=\"demo\",state=\"starting\"} 0\n",
            "lockstep_agent_instances{service=\"demo\",state=\"failed\"} 0\n",
        ] {
            assert!(t.contains(line), "{line} in\n{t}");
        }
        assert_eq!(t.matches("lockstep_agent_instances{").count(), STATES.len());
    }

    #[test]
    fn ready_once_started_and_while_a_configured_session_lives() {
        assert!(matches!(readiness(false, None), Readiness::NotReady(_)));
        assert!(matches!(
            readiness(false, Some(true)),
            Readiness::NotReady(_)
        ));
        assert_eq!(readiness(true, None), Readiness::Ready);
        assert_eq!(readiness(true, Some(true)), Readiness::Ready);
        match readiness(true, Some(false)) {
            Readiness::NotReady(why) => assert!(why.contains("etcd session"), "{why}"),
            Readiness::Ready => panic!("ready without its etcd session"),
        }
    }
}
