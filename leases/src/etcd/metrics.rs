//! `EtcdMetrics`: what every etcd request cost and how it ended, for the
//! daemons' `/metrics` (both register the same families, defined here once).
//!
//! Labels are bounded: `op` is one of the client's operations (a fixed
//! list in `mod.rs`), `outcome` one of three words, `endpoint` one of the
//! configured members.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// How one request ended, as the caller saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// A member answered.
    Answered,
    /// etcd refused the request itself (every member would).
    Refused,
    /// No member answered within the request's deadline.
    Unanswered,
}

impl RequestOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Refused => "refused",
            Self::Unanswered => "unanswered",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

/// The etcd client's metrics; cheap to clone (the families are shared).
#[derive(Debug, Clone)]
pub struct EtcdMetrics {
    duration: Family<OpLabels, Histogram>,
    member_failures: Family<EndpointLabel, Counter>,
}

impl Default for EtcdMetrics {
    fn default() -> Self {
        Self {
            duration: Family::new_with_constructor(|| {
                // 1 ms .. ~8 s: a local member answers in about a
                // millisecond, a failover takes seconds.
                Histogram::new([
                    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0,
                ])
            }),
            member_failures: Family::default(),
        }
    }
}

impl EtcdMetrics {
    /// Adds the families to a daemon's registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "lockstep_etcd_request_duration_seconds",
            "etcd requests by operation and outcome (answered, refused by etcd, unanswered by every member within the deadline), and how long each took, failovers and retries included",
            self.duration.clone(),
        );
        registry.register(
            "lockstep_etcd_member_failures",
            "Attempts on an etcd member that failed (unreachable, no leader, timed out): each sends the request to another member",
            self.member_failures.clone(),
        );
    }

    pub(super) fn request_ended(&self, op: &'static str, took: Duration, outcome: RequestOutcome) {
        self.duration
            .get_or_create(&OpLabels {
                op,
                outcome: outcome.label(),
            })
            .observe(took.as_secs_f64());
    }

    pub(super) fn member_failed(&self, endpoint: &str) {
        self.member_failures
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_operation_and_outcome() {
        let metrics = EtcdMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.request_ended("get", Duration::from_millis(3), RequestOutcome::Answered);
        metrics.request_ended("txn", Duration::from_secs(5), RequestOutcome::Unanswered);
        metrics.member_failed("http://10.0.0.1:2379");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "lockstep_etcd_request_duration_seconds_count{op=\"get\",outcome=\"answered\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "lockstep_etcd_request_duration_seconds_count{op=\"txn\",outcome=\"unanswered\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "lockstep_etcd_member_failures_total{endpoint=\"http://10.0.0.1:2379\"} 1"
            ),
            "{text}"
        );
    }
}
