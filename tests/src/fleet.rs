//! `FleetFixture`: agents in clusters, each hosting the demo service on a
//! port of its own (through its `listen_overrides`), all reporting to the
//! given coordinators and sharing one etcd.

use std::net::{IpAddr, SocketAddr};

use crate::{AgentFixture, HarnessError, Place, free_loopback_port};

/// The service the demo releases deploy.
pub const DEMO_SERVICE: &str = "demo";

/// One agent of the fleet and the port its demo instance serves on.
#[derive(Debug)]
pub struct FleetHost {
    pub id: String,
    pub cluster: String,
    pub agent: AgentFixture,
    /// The address its demo instance serves on (loopback unless placed).
    pub ip: IpAddr,
    pub port: u16,
}

impl FleetHost {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

/// Agents started one after the other.
#[derive(Debug)]
pub struct FleetFixture {
    pub hosts: Vec<FleetHost>,
}

impl FleetFixture {
    /// Starts one agent per `(id, cluster)`, each with a 3 s etcd lease
    /// (a dead agent's slots free quickly).
    pub async fn start(
        layout: &[(&str, &str)],
        etcd: &[String],
        coordinators: &[String],
    ) -> Result<Self, HarnessError> {
        Self::start_with_lease(layout, etcd, coordinators, "3s").await
    }

    /// Like `start`, with `lease_ttl` (e.g. `"10s"`, the agent's default)
    /// for each agent's etcd session.
    pub async fn start_with_lease(
        layout: &[(&str, &str)],
        etcd: &[String],
        coordinators: &[String],
        lease_ttl: &str,
    ) -> Result<Self, HarnessError> {
        let placed: Vec<(&str, &str, Place)> = layout
            .iter()
            .map(|(id, cluster)| (*id, *cluster, Place::loopback()))
            .collect();
        Self::start_placed(&placed, etcd, coordinators, lease_ttl).await
    }

    /// Like `start_with_lease`, each agent run at its place (e.g. a lab
    /// node): its gRPC service and its demo instance listen on that
    /// place's address.
    pub async fn start_placed(
        layout: &[(&str, &str, Place)],
        etcd: &[String],
        coordinators: &[String],
        lease_ttl: &str,
    ) -> Result<Self, HarnessError> {
        Self::start_with_etcd_lines(layout, etcd, coordinators, lease_ttl, &|_| String::new()).await
    }

    /// Like `start_placed`, with `etcd_lines(agent id)` added to each
    /// agent's `[etcd]` table (e.g. its TLS files and etcd user).
    pub async fn start_with_etcd_lines(
        layout: &[(&str, &str, Place)],
        etcd: &[String],
        coordinators: &[String],
        lease_ttl: &str,
        etcd_lines: &(dyn Fn(&str) -> String + Sync),
    ) -> Result<Self, HarnessError> {
        let quote = |items: &[String]| {
            items
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut hosts = Vec::with_capacity(layout.len());
        for (id, cluster, place) in layout {
            let ip = place.ip();
            let port = free_loopback_port()?;
            let top = format!("services = [\"{DEMO_SERVICE}\"]\n");
            let extra = format!(
                "\n[coordinator]\nurls = [{coordinators}]\n\n[etcd]\nendpoints = [{etcd}]\nlease_ttl = \"{lease_ttl}\"\nbudget_wait = \"60s\"\n{lines}\n[listen_overrides.{DEMO_SERVICE}]\nhttp = \"{ip}:{port}\"\n",
                coordinators = quote(coordinators),
                etcd = quote(etcd),
                lines = etcd_lines(id),
            );
            let agent = AgentFixture::start_placed(id, cluster, &top, &extra, place).await?;
            hosts.push(FleetHost {
                id: (*id).to_owned(),
                cluster: (*cluster).to_owned(),
                agent,
                ip,
                port,
            });
        }
        Ok(Self { hosts })
    }

    pub fn host(&self, id: &str) -> Option<&FleetHost> {
        self.hosts.iter().find(|h| h.id == id)
    }
}
