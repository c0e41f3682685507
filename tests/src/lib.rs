//! The end-to-end test harness: real processes on loopback, cleaned up on
//! drop.
//!
//! Owns fixtures that start real processes in temporary directories on free
//! loopback ports — `EtcdCluster` (etcd members), `AgentFixture`
//! (lockstep-agent + agentctl), `NodesimFixture` (`lockstep-nodesim`:
//! many virtual agents in one process), `DemoRelease` (bundles of the demo app),
//! `TestPki` (a CA and certificates for mTLS, generated at test time) —
//! plus `Poller` (a client counting failed requests), `wait_for`, the one
//! way a test waits for a condition, and `operator`: the `lockstep` steps
//! (push, deploy, read a deployment) tests take as an operator would.
//!
//! Must never: fake etcd, wait with a fixed sleep, or leave a process behind
//! — every child is killed and reaped on drop, also when a test panics, and
//! is started under `setpriv --pdeathsig KILL` so it dies with the test
//! process even when drop never runs.

mod agent;
mod bins;
mod browser;
mod coordinator;
mod daemon;
mod demo;
mod error;
mod etcd;
mod fleet;
mod fleet_tls;
pub mod http;
mod netns;
mod nodesim;
pub mod operator;
mod pki;
mod place;
mod ports;
mod prometheus;
pub mod timeline;
mod usage;
mod wait;
mod webhook;

pub use agent::AgentFixture;
pub use bins::workspace_bin;
pub use browser::Browser;
pub use coordinator::{CoordinatorFixture, TEST_ROLES, lockstep, lockstep_tls};
pub use demo::DemoRelease;
pub use error::HarnessError;
pub use etcd::{EtcdCluster, EtcdSecurity, MemberState};
pub use fleet::{DEMO_SERVICE, FleetFixture, FleetHost};
pub use netns::{LabNode, NetnsLab};
pub use nodesim::{NodesimFixture, NodesimOptions};
pub use pki::{TestPki, TlsFiles};
pub use place::Place;
pub use ports::free_loopback_port;
pub use prometheus::{PrometheusFixture, ScrapeJob, promtool_check_metrics};
pub use usage::Usage;
pub use wait::{WaitTimeout, wait_for};
pub use webhook::{Delivery, WebhookReceiver};
