//! The gRPC contract of Lockstep, package `lockstep.v1`.
//!
//! Owns the wire types and the generated tonic clients and servers for
//! `AgentService` (served by every agent, called by the coordinator) and
//! `CoordinatorService` (agent-facing reports and release fetches,
//! operator-facing deployment control) and `AgentControl` (the agent's
//! local Unix-socket API, used by `agentctl`).
//!
//! This crate holds generated code and the codec it uses (`codec`), and
//! nothing else: no logic, no conversions with behaviour. Domain crates
//! convert at their edges.
//!
//! Evolution rules for the `.proto` files: never renumber or reuse a field,
//! every enum starts with `*_UNSPECIFIED = 0`, and a breaking change means a
//! new package (`lockstep.v2`) served beside the old one.

pub mod codec;

/// Version 1 of the contract.
pub mod v1 {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("lockstep.v1");
}
