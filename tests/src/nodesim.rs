//! `NodesimFixture`: a real `lockstep-nodesim` — N virtual agents in one
//! process, each registered in etcd and reporting to the given
//! coordinators, serving AgentService on 127.64.x.y at one port.
//!
//! Must never: wait without a deadline, or leave the process behind (the
//! `Daemon` kills and reaps it on drop).

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::daemon::Daemon;
use crate::{HarnessError, free_loopback_port};

/// Binding thousands of addresses and connecting etcd: generous.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Hosts one simulator process takes here: each needs two open files
/// (its listener, the coordinator's connection), and a hard limit of
/// 20,000 (common in containers, and not raisable without
/// CAP_SYS_RESOURCE) leaves room for 9,000. Larger fleets are sharded.
const HOSTS_PER_PROCESS: usize = 9_000;
/// The simulator's default `--address-base`: host i is on base + 1 + i.
const ADDRESS_BASE: Ipv4Addr = Ipv4Addr::new(127, 64, 0, 0);

/// What to simulate; `Default` is 10 healthy hosts in 3 clusters.
#[derive(Debug, Clone)]
pub struct NodesimOptions {
    pub hosts: usize,
    pub clusters: usize,
    pub instances_per_host: u32,
    pub start_delay_ms: u64,
    pub ready_delay_ms: u64,
    /// Share of hosts whose switch to one of `fail_releases` fails.
    pub fail_rate: f64,
    pub fail_releases: Vec<String>,
    /// Host ids are `<id_prefix>-00000`, …
    pub id_prefix: String,
    /// Host i listens on this address + 1 + i.
    pub address_base: Ipv4Addr,
    /// Further flags, as given.
    pub extra: Vec<String>,
}

impl Default for NodesimOptions {
    fn default() -> Self {
        Self {
            hosts: 10,
            clusters: 3,
            instances_per_host: 1,
            start_delay_ms: 20,
            ready_delay_ms: 100,
            fail_rate: 0.0,
            fail_releases: Vec::new(),
            id_prefix: "sim".to_owned(),
            address_base: ADDRESS_BASE,
            extra: Vec::new(),
        }
    }
}

/// A running simulator. Dropping it kills it.
#[derive(Debug)]
pub struct NodesimFixture {
    _dir: tempfile::TempDir,
    daemon: Daemon,
    port: u16,
    base: Ipv4Addr,
    pub hosts: usize,
}

impl NodesimFixture {
    /// See [`HOSTS_PER_PROCESS`]: a bench of more hosts starts several.
    pub const HOSTS_PER_PROCESS: usize = HOSTS_PER_PROCESS;

    /// Starts the simulator; returns once its first host's AgentService
    /// accepts connections (hosts register and report in the background:
    /// wait for them with `operator::agents_known`).
    pub async fn start(
        etcd: &[String],
        coordinators: &[String],
        options: &NodesimOptions,
    ) -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("lockstep-nodesim-")
            .tempdir()
            .map_err(HarnessError::TempDir)?;
        let port = free_loopback_port()?;
        let mut args: Vec<OsString> = vec![
            "--etcd".into(),
            etcd.join(",").into(),
            "--coordinator".into(),
            coordinators.join(",").into(),
            "--hosts".into(),
            options.hosts.to_string().into(),
            "--clusters".into(),
            options.clusters.to_string().into(),
            "--instances-per-host".into(),
            options.instances_per_host.to_string().into(),
            "--port".into(),
            port.to_string().into(),
            "--start-delay-ms".into(),
            options.start_delay_ms.to_string().into(),
            "--ready-delay-ms".into(),
            options.ready_delay_ms.to_string().into(),
            "--fail-rate".into(),
            options.fail_rate.to_string().into(),
            "--id-prefix".into(),
            options.id_prefix.clone().into(),
            "--address-base".into(),
            options.address_base.to_string().into(),
        ];
        for release in &options.fail_releases {
            args.push("--fail-release".into());
            args.push(release.into());
        }
        args.extend(options.extra.iter().map(OsString::from));
        let mut daemon = Daemon::new("lockstep-nodesim", args, dir.path().join("nodesim.log"));
        let base = options.address_base;
        let first = Self::address_of(base, port, 0);
        daemon
            .start(START_TIMEOUT, || async move {
                Ok(tokio::net::TcpStream::connect(first).await.is_ok())
            })
            .await?;
        Ok(Self {
            _dir: dir,
            daemon,
            port,
            base,
            hosts: options.hosts,
        })
    }

    fn address_of(base: Ipv4Addr, port: u16, index: usize) -> SocketAddr {
        let offset = u32::try_from(index + 1).unwrap_or(u32::MAX);
        let ip = Ipv4Addr::from(u32::from(base).saturating_add(offset));
        SocketAddr::new(ip.into(), port)
    }

    /// Host `index`'s AgentService address.
    pub fn address(&self, index: usize) -> SocketAddr {
        Self::address_of(self.base, self.port, index)
    }

    pub fn pid(&self) -> Option<u32> {
        self.daemon.pid()
    }

    pub fn log_text(&self) -> String {
        self.daemon.log_text()
    }
}
