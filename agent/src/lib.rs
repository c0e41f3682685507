//! The per-host side of Lockstep: `lockstep-agent` and `agentctl`.
//!
//! Owns supervision of the app's processes (start-before-stop switches,
//! restart with backoff, crash-loop detection, readiness probes, socket
//! hand-over), the host's durable local state, the `AgentService` gRPC server,
//! the Unix-socket API that `agentctl` uses, and the agent's side of the
//! coordinators' API: its report streams and release fetches; and its
//! Prometheus metrics (`telemetry`), served on `[metrics] listen`.
//!
//! Must never: stop a serving release before its replacement is ready, let a
//! lost etcd or coordinator stop the apps it supervises (fail static), or
//! obey a command whose fencing token is older than one it has accepted.

pub mod admission;
pub mod cluster;
pub mod config;
pub mod control;
pub mod dial;
pub mod fetch;
pub mod grpc;
pub mod host;
pub mod identity;
pub mod instance;
pub mod logfollow;
pub mod plan;
pub mod preflight;
pub mod probe;
pub mod state;
pub mod supervisor;
pub mod task;
pub mod telemetry;
pub mod uplink;
pub mod wire;
