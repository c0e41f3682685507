//! The simulator's command line and its validation into a `SimConfig`
//! that cannot be out of bounds: every problem is reported at once, each
//! naming its flag.
//!
//! Must never: start anything; accept a host count, name or address the
//! rest of the simulator (or the coordinator) could not take.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use ids::{AgentId, ClusterName, ReleaseDigest, ServiceName};

use crate::fate::{FailMode, Fate, PPM};

/// Twice the fleet Lockstep is sized for; the coordinator itself tracks
/// at most 10,000 agents (`fleet::MAX_AGENTS`).
pub const MAX_HOSTS: usize = 20_000;
/// Clusters: a plan with more is not a fleet anyone runs.
pub const MAX_CLUSTERS: usize = 1_000;
pub const MAX_INSTANCES_PER_HOST: u32 = 64;
/// hyper's server allows 200 concurrent streams per HTTP/2 connection by
/// default; 100 report streams per connection leaves room for fetches.
pub const DEFAULT_HOSTS_PER_CONNECTION: usize = 100;
pub const MAX_HOSTS_PER_CONNECTION: usize = 200;
/// Registrations in flight at once at start: each is a lease grant and a
/// transaction; more only queues in etcd.
pub const DEFAULT_JOIN_CONCURRENCY: usize = 64;
pub const MAX_JOIN_CONCURRENCY: usize = 1_024;
/// A delay longer than this is a typo, not a simulation.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

/// lockstep-nodesim: thousands of virtual lockstep agents in one process.
///
/// Each virtual host holds its own etcd session and registration (as the
/// real agent registers), its own Report stream to every coordinator and
/// its own AgentService on a loopback address of its own
/// (`--address-base` + 1 + its index, all on `--port`). No app runs:
/// switches take `--start-delay-ms` + `--ready-delay-ms` and then succeed,
/// or fail as `--fail-rate` chooses. The load generator for the
/// coordinator; real agents remain the truth for everything on a host.
#[derive(Debug, clap::Parser)]
#[command(name = "lockstep-nodesim", version)]
pub struct Args {
    /// etcd endpoints (comma-separated), as in agent.toml `[etcd] endpoints`.
    #[arg(long, value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// Coordinator URLs (comma-separated): every virtual host reports to each.
    #[arg(long = "coordinator", value_delimiter = ',', required = true)]
    pub coordinators: Vec<String>,
    /// Virtual hosts (1 to 20,000).
    #[arg(long, default_value_t = 100)]
    pub hosts: usize,
    /// Clusters the hosts are spread over, round robin (1 to 1,000).
    #[arg(long, default_value_t = 3)]
    pub clusters: usize,
    /// Instances of the service per host (1 to 64).
    #[arg(long, default_value_t = 1)]
    pub instances_per_host: u32,
    /// The service every host is assigned.
    #[arg(long, default_value = "demo")]
    pub service: String,
    /// Host ids are PREFIX-00000, PREFIX-00001, …
    #[arg(long, default_value = "sim")]
    pub id_prefix: String,
    /// Cluster names are PREFIX-0, PREFIX-1, …
    #[arg(long, default_value = "cluster")]
    pub cluster_prefix: String,
    /// Host i serves AgentService on this address + 1 + i (in 127.0.0.0/8).
    #[arg(long, default_value = "127.64.0.0")]
    pub address_base: Ipv4Addr,
    /// The AgentService port of every host (one below the kernel's
    /// ephemeral range avoids clashes with outgoing connections).
    #[arg(long)]
    pub port: u16,
    /// From a switch's start to its instances starting (the app's exec).
    #[arg(long, default_value_t = 50)]
    pub start_delay_ms: u64,
    /// From the instances starting to their readiness.
    #[arg(long, default_value_t = 200)]
    pub ready_delay_ms: u64,
    /// Share of hosts (0 to 1) whose switch to a `--fail-release` (any
    /// release when none is named) fails as `--fail-mode` says.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// A release (sha256:…) the failure and crash rates apply to; repeat
    /// for several.
    #[arg(long = "fail-release")]
    pub fail_releases: Vec<String>,
    #[arg(long, value_enum, default_value = "fails")]
    pub fail_mode: FailMode,
    /// Share of hosts (0 to 1) whose instances crash after being ready.
    #[arg(long, default_value_t = 0.0)]
    pub crash_rate: f64,
    /// How long after readiness a crashing host's instances crash.
    #[arg(long, default_value_t = 2000)]
    pub crash_after_ms: u64,
    /// Chooses which hosts fail and crash; the same seed, the same hosts.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Each host's etcd lease TTL in seconds (as agent.toml `lease_ttl`).
    #[arg(long, default_value_t = 10)]
    pub lease_ttl_secs: u64,
    /// How long a switch waits for a slot in its cluster's disruption
    /// budget (as agent.toml `budget_wait`).
    #[arg(long, default_value_t = 60_000)]
    pub budget_wait_ms: u64,
    /// Switch without taking a disruption-budget slot (the real agent
    /// always takes one; this removes its etcd load from a measurement).
    #[arg(long)]
    pub no_budget: bool,
    /// Report streams per HTTP/2 connection to a coordinator (1 to 200).
    #[arg(long, default_value_t = DEFAULT_HOSTS_PER_CONNECTION)]
    pub hosts_per_connection: usize,
    /// Registrations in flight at once (1 to 1,024).
    #[arg(long, default_value_t = DEFAULT_JOIN_CONCURRENCY)]
    pub join_concurrency: usize,
}

/// One virtual host's place in the fleet.
#[derive(Debug, Clone)]
pub struct HostSpec {
    pub index: usize,
    pub id: AgentId,
    pub cluster: ClusterName,
    pub address: SocketAddr,
}

/// A validated simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub etcd: Vec<String>,
    pub coordinators: Vec<String>,
    pub service: ServiceName,
    pub hosts: Vec<HostSpec>,
    pub instances_per_host: u32,
    pub start_delay: Duration,
    pub ready_delay: Duration,
    pub crash_after: Duration,
    pub fate: Fate,
    pub lease_ttl: leases::Ttl,
    /// `None`: switches take no budget slot.
    pub budget_wait: Option<Duration>,
    pub hosts_per_connection: usize,
    pub join_concurrency: usize,
}

/// Every problem with the command line, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid arguments:\n  {}", .problems.join("\n  "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

fn rate(flag: &str, value: f64, problems: &mut Vec<String>) -> u32 {
    if !(0.0..=1.0).contains(&value) {
        problems.push(format!("--{flag} {value}: must be from 0 to 1"));
        return 0;
    }
    // In range by the check above: the product is 0..=1e6.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ppm = (value * f64::from(PPM)).round() as u32;
    ppm
}

fn delay(flag: &str, ms: u64, problems: &mut Vec<String>) -> Duration {
    let d = Duration::from_millis(ms);
    if d > MAX_DELAY {
        problems.push(format!(
            "--{flag} {ms}: at most {} ms",
            MAX_DELAY.as_millis()
        ));
    }
    d
}

fn within(flag: &str, value: usize, max: usize, problems: &mut Vec<String>) {
    if value == 0 || value > max {
        problems.push(format!("--{flag} {value}: must be from 1 to {max}"));
    }
}

impl Args {
    /// Validates every flag; all problems at once.
    pub fn validate(&self) -> Result<SimConfig, ConfigError> {
        let mut problems = Vec::new();
        within("hosts", self.hosts, MAX_HOSTS, &mut problems);
        within(
            "clusters",
            self.clusters,
            MAX_CLUSTERS.min(self.hosts.max(1)),
            &mut problems,
        );
        within(
            "hosts-per-connection",
            self.hosts_per_connection,
            MAX_HOSTS_PER_CONNECTION,
            &mut problems,
        );
        within(
            "join-concurrency",
            self.join_concurrency,
            MAX_JOIN_CONCURRENCY,
            &mut problems,
        );
        if self.instances_per_host == 0 || self.instances_per_host > MAX_INSTANCES_PER_HOST {
            problems.push(format!(
                "--instances-per-host {}: must be from 1 to {MAX_INSTANCES_PER_HOST}",
                self.instances_per_host
            ));
        }
        if self.port == 0 {
            problems.push("--port 0: every host needs a fixed port".to_owned());
        }
        if self.etcd.iter().any(String::is_empty) || self.coordinators.iter().any(String::is_empty)
        {
            problems.push("--etcd / --coordinator: an empty entry".to_owned());
        }
        let service = ServiceName::parse(&self.service)
            .map_err(|e| problems.push(format!("--service: {e}")))
            .ok();
        let fail_ppm = rate("fail-rate", self.fail_rate, &mut problems);
        let crash_ppm = rate("crash-rate", self.crash_rate, &mut problems);
        let releases: Vec<ReleaseDigest> = self
            .fail_releases
            .iter()
            .filter_map(|r| {
                ReleaseDigest::parse(r)
                    .map_err(|e| problems.push(format!("--fail-release: {e}")))
                    .ok()
            })
            .collect();
        let start_delay = delay("start-delay-ms", self.start_delay_ms, &mut problems);
        let ready_delay = delay("ready-delay-ms", self.ready_delay_ms, &mut problems);
        let crash_after = delay("crash-after-ms", self.crash_after_ms, &mut problems);
        let budget_wait = delay("budget-wait-ms", self.budget_wait_ms, &mut problems);
        let lease_ttl = leases::Ttl::from_secs(self.lease_ttl_secs)
            .map_err(|e| problems.push(format!("--lease-ttl-secs: {e}")))
            .ok();
        let hosts = if problems.is_empty() {
            self.layout(&mut problems)
        } else {
            Vec::new()
        };
        match (service, lease_ttl) {
            (Some(service), Some(lease_ttl)) if problems.is_empty() => Ok(SimConfig {
                etcd: self.etcd.clone(),
                coordinators: self.coordinators.clone(),
                service,
                hosts,
                instances_per_host: self.instances_per_host,
                start_delay,
                ready_delay,
                crash_after,
                fate: Fate {
                    seed: self.seed,
                    releases,
                    fail_ppm,
                    fail_mode: self.fail_mode,
                    crash_ppm,
                },
                lease_ttl,
                budget_wait: (!self.no_budget).then_some(budget_wait),
                hosts_per_connection: self.hosts_per_connection,
                join_concurrency: self.join_concurrency,
            }),
            _ => Err(ConfigError { problems }),
        }
    }

    /// Host ids, clusters and addresses (the counts are already in bounds).
    fn layout(&self, problems: &mut Vec<String>) -> Vec<HostSpec> {
        let base = u32::from(self.address_base);
        let last = u32::try_from(self.hosts)
            .ok()
            .and_then(|n| base.checked_add(n));
        let in_loopback = |a: u32| Ipv4Addr::from(a).octets()[0] == 127;
        if !in_loopback(base) || !last.is_some_and(in_loopback) {
            problems.push(format!(
                "--address-base {}: the {} host addresses after it must stay within 127.0.0.0/8",
                self.address_base, self.hosts
            ));
            return Vec::new();
        }
        let mut hosts = Vec::with_capacity(self.hosts);
        for index in 0..self.hosts {
            let id = format!("{}-{index:05}", self.id_prefix);
            let cluster = format!("{}-{}", self.cluster_prefix, index % self.clusters);
            let (id, cluster) = match (AgentId::parse(&id), ClusterName::parse(&cluster)) {
                (Ok(id), Ok(cluster)) => (id, cluster),
                (Err(e), _) => {
                    problems.push(format!("--id-prefix: host id {id:?}: {e}"));
                    return Vec::new();
                }
                (_, Err(e)) => {
                    problems.push(format!("--cluster-prefix: cluster {cluster:?}: {e}"));
                    return Vec::new();
                }
            };
            let offset = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let ip = Ipv4Addr::from(base.saturating_add(offset));
            hosts.push(HostSpec {
                index,
                id,
                cluster,
                address: SocketAddr::new(ip.into(), self.port),
            });
        }
        hosts
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut all = vec![
            "lockstep-nodesim",
            "--etcd",
            "http://127.0.0.1:2379",
            "--coordinator",
            "http://127.0.0.1:7000",
            "--port",
            "7100",
        ];
        all.extend_from_slice(extra);
        Args::try_parse_from(all).unwrap()
    }

    #[test]
    fn hosts_get_distinct_loopback_addresses_and_round_robin_clusters() {
        let c = args(&["--hosts", "5", "--clusters", "2"])
            .validate()
            .unwrap();
        assert_eq!(c.hosts[0].address.to_string(), "127.64.0.1:7100");
        assert_eq!(c.hosts[4].address.to_string(), "127.64.0.5:7100");
        assert_eq!(c.hosts[3].cluster.as_str(), "cluster-1");
        assert_eq!(c.hosts[3].id.as_str(), "sim-00003");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = args(&[
            "--hosts",
            "20001",
            "--fail-rate",
            "1.5",
            "--service",
            "Bad Name",
            "--fail-release",
            "md5:x",
        ])
        .validate()
        .unwrap_err();
        let text = err.to_string();
        for flag in ["--hosts", "--fail-rate", "--service", "--fail-release"] {
            assert!(text.contains(flag), "{flag} missing from {text}");
        }
    }

    #[test]
    fn addresses_must_stay_in_loopback() {
        let err = args(&["--hosts", "300", "--address-base", "127.255.255.0"])
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("--address-base"), "{err}");
    }
}
