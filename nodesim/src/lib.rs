//! `lockstep-nodesim`: N virtual agents in one process, the coordinator's
//! load generator (in the manner of Nomad's nomad-nodesim).
//!
//! Owns the virtual hosts: each with its own etcd session and registration
//! (`join`, the real agent's registration code), its own Report stream to
//! every coordinator (`uplink`, over a few shared HTTP/2 connections), and
//! the AgentService of the real protocol on a loopback address of its own
//! (`grpc`), taking commands by the real agent's admission rules (`model`)
//! and switching after configurable delays, failing or crashing as a
//! seeded plan says (`fate`).
//!
//! ```text
//! Simulation::start: raise the fd limit -> one etcd client -> per host:
//!   VirtualHost ─ keeper task (session + registration)
//!               ─ report task per coordinator
//!   bind every host's address -> one AgentService server
//! ```
//!
//! Must never: run an app process or touch a host's files; pass for a real
//! agent in anything the coordinator does not see (real agents remain the
//! truth for everything on a host).

#![forbid(unsafe_code)]

pub mod config;
pub mod fate;
pub mod grpc;
pub mod host;
pub mod join;
pub mod model;
pub mod uplink;

use std::sync::Arc;
use std::time::Duration;

use leases::{Etcd, EtcdAccess, EtcdTiming};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::SimConfig;
use crate::host::{Behaviour, VirtualHost};

/// Per-request deadline of the hosts' etcd calls (as the agent's).
const ETCD_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// File descriptors beside two per host (its listener and the
/// coordinator's connection): etcd, report connections, logs.
const FD_MARGIN: u64 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot connect to etcd ({endpoints}): {source}")]
    Etcd {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error(transparent)]
    Uplink(#[from] uplink::UplinkError),
    #[error(transparent)]
    Serve(#[from] grpc::ServeError),
    #[error(
        "{hosts} virtual hosts need {needed} open files, but the limit is {limit} and cannot be raised ({source}); run fewer hosts or raise `ulimit -n`"
    )]
    FileLimit {
        hosts: usize,
        needed: u64,
        limit: u64,
        #[source]
        source: std::io::Error,
    },
}

/// A running simulation; dropping it stops every host.
#[derive(Debug)]
pub struct Simulation {
    pub hosts: Vec<Arc<VirtualHost>>,
    _served: grpc::Served,
    _tasks: JoinSet<()>,
}

impl Simulation {
    /// Starts every host; returns once their addresses are bound (hosts
    /// register and report in the background).
    pub async fn start(config: &SimConfig) -> Result<Self, SimError> {
        raise_file_limit(config.hosts.len())?;
        let timing = EtcdTiming {
            request_deadline: ETCD_REQUEST_TIMEOUT,
            ..EtcdTiming::default()
        };
        let client = Etcd::connect_with(&config.etcd, timing, &EtcdAccess::default())
            .await
            .map_err(|source| SimError::Etcd {
                endpoints: config.etcd.join(","),
                source,
            })?;
        let connections = config
            .coordinators
            .iter()
            .map(|url| {
                uplink::Connections::new(url, config.hosts.len(), config.hosts_per_connection)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let behaviour = Arc::new(Behaviour::of(config));
        let gate = Arc::new(Semaphore::new(config.join_concurrency));
        let mut tasks = JoinSet::new();
        let mut hosts = Vec::with_capacity(config.hosts.len());
        for spec in &config.hosts {
            let (publish, session) = watch::channel(None);
            let host = Arc::new(VirtualHost::new(spec, behaviour.clone(), session));
            tasks.spawn(join::keep_registered(
                host.clone(),
                client.clone(),
                config.lease_ttl,
                gate.clone(),
                publish,
            ));
            for c in &connections {
                tasks.spawn(uplink::keep_reporting(host.clone(), c.clone()));
            }
            hosts.push(host);
        }
        let served = grpc::serve(&hosts).await?;
        tracing::info!(
            hosts = hosts.len(),
            coordinators = config.coordinators.len(),
            "virtual hosts serving; registering and reporting"
        );
        Ok(Self {
            hosts,
            _served: served,
            _tasks: tasks,
        })
    }
}

/// Raises the open-file limit to what `hosts` need, when it is lower.
fn raise_file_limit(hosts: usize) -> Result<(), SimError> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let needed = u64::try_from(hosts).unwrap_or(u64::MAX).saturating_mul(2) + FD_MARGIN;
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= needed {
        return Ok(());
    }
    let maximum = limit.maximum.map_or(needed, |m| m.max(needed));
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(needed),
            maximum: Some(maximum),
        },
    )
    .map_err(|e| SimError::FileLimit {
        hosts,
        needed,
        limit: current,
        source: e.into(),
    })
}
