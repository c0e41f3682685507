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
