//! End-to-end tests against real processes. One binary, one module per
//! subject, all built on the harness in `lockstep_tests`.

// Test helpers panic on failure: the panic is the test's report.
#![allow(clippy::unwrap_used)]

mod agent;
mod agent_failures;
mod agent_return;
mod budget;
mod coordinator;
mod etcd_faults;
mod etcd_harness;
mod health;
mod incident;
mod logs;
mod operator_paths;
mod prometheus;
mod registration;
mod security;
mod supersede;
mod systemd;
mod tls;
