//! Errors of the harness itself (a fixture that could not start or stop),
//! kept apart from the failures of the system under test.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("cannot start `{program}` (is it installed? scripts/test installs it): {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create a temporary directory for the fixture: {0}")]
    TempDir(#[source] std::io::Error),
    #[error("cannot reserve a free loopback port: {0}")]
    Port(#[source] std::io::Error),
    #[error(
        "etcd member {member} did not become healthy within {timeout:?}: {last} (log {log}):\n{log_tail}"
    )]
    EtcdNotHealthy {
        member: usize,
        timeout: Duration,
        last: String,
        log: PathBuf,
        log_tail: String,
    },
    #[error("etcd member {member} does not exist (the cluster has {size})")]
    NoSuchMember { member: usize, size: usize },
    #[error("etcd member {member} is not running")]
    MemberNotRunning { member: usize },
    #[error("cannot signal etcd member {member} (pid {pid}): {source}")]
    Signal {
        member: usize,
        pid: i32,
        #[source]
        source: nix::Error,
    },
    #[error("cannot reap etcd member {member}: {source}")]
    Reap {
        member: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd request to {endpoint} failed: {source}")]
    Etcd {
        endpoint: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("no etcd member reports a leader")]
    NoLeader,
    #[error("workspace binary `{name}`: {detail}")]
    Binary { name: String, detail: String },
    #[error("browser: {what}")]
    Browser {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0}")]
    Fixture(String),
}
