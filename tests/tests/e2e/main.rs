//! End-to-end tests against real processes. One binary, one module per
//! subject, all built on the harness in `lockstep_tests`.

// Test helpers panic on failure: the panic is the test's report.
#![allow(clippy::unwrap_used)]

mod agent;
mod agent_failures;
mod agent_metrics;
mod agent_return;
mod analysis;
mod budget;
mod check_config;
mod coordinator;
mod during_switch;
mod error_text;
mod etcd_failover;
mod etcd_faults;
mod etcd_harness;
mod etcd_security;
mod first_install;
mod health;
mod history;
mod incident;
mod journal;
mod logs;
mod metrics;
mod nodesim;
mod notify;
mod operator_paths;
mod prometheus;
mod registration;
mod security;
mod staging;
mod supersede;
mod systemd;
mod tls;
mod web;
mod web_scale;

/// A client of every member of `etcd` that fails over as the daemons' does,
/// for the `leases` calls a test makes itself.
pub(crate) async fn failover_client(etcd: &lockstep_tests::EtcdCluster) -> leases::Etcd {
    leases::Etcd::connect(&etcd.endpoints(), leases::EtcdTiming::default())
        .await
        .unwrap()
}
