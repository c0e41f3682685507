//! The fleet side of Lockstep: `lockstep-coordinator` and the `lockstep`
//! operator CLI.
//!
//! Owns the `CoordinatorService` gRPC server, the release depot, the live
//! fleet view, leader election and the driver that executes the `rollout`
//! engine's actions with real IO, persisting every decision in etcd.
//!
//! Must never: decide rollout policy itself (the `rollout` engine decides,
//! this crate does), or write to etcd or command an agent without holding
//! leadership and the deployment's fencing token.

pub mod admission;
pub mod agent_binding;
pub mod analysis;
pub mod bounds;
pub mod checks;
pub mod config;
pub mod deploy_lock;
pub mod depot;
pub mod driver;
pub mod effects;
#[cfg(feature = "fault-injection")]
pub mod fault_injection;
pub mod fleet;
pub mod health;
pub mod http_client;
pub mod journal;
pub mod leader;
pub mod mirror;
pub mod notify;
pub mod push;
pub mod record;
pub mod release_choice;
pub mod release_diff;
pub mod release_read;
pub mod roles;
pub mod service;
pub mod staging;
pub mod step_log;
pub mod telemetry;
pub mod web;
pub mod wire;

/// Milliseconds since the Unix epoch (0 before 1970).
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
