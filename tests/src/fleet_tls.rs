//! `FleetFixture::start_tls`: the fleet of `fleet.rs`, each agent with a
//! `[tls]` table and a certificate of its own from a `TestPki`.

use crate::free_loopback_port;
use crate::{AgentFixture, DEMO_SERVICE, FleetFixture, FleetHost, HarnessError, TestPki};

impl FleetFixture {
    /// Starts one agent per `(id, cluster)` like `start`, over mTLS: agent
    /// `id` presents `<id>.agents.lockstep` from `pki`, dials the
    /// (`https://`) `coordinators` with it, and obeys commands only from
    /// `trusted_coordinators`.
    pub async fn start_tls(
        layout: &[(&str, &str)],
        etcd: &[String],
        coordinators: &[String],
        pki: &TestPki,
        trusted_coordinators: &[&str],
    ) -> Result<Self, HarnessError> {
        let quote = |items: &[&str]| {
            items
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let coordinators: Vec<&str> = coordinators.iter().map(String::as_str).collect();
        let etcd: Vec<&str> = etcd.iter().map(String::as_str).collect();
        let mut hosts = Vec::with_capacity(layout.len());
        for (id, cluster) in layout {
            let port = free_loopback_port()?;
            let files = pki.issue(&format!("{id}.agents.lockstep"))?;
            let top = format!("services = [\"{DEMO_SERVICE}\"]\n");
            let extra = format!(
                "\n[coordinator]\nurls = [{coordinators}]\n\n[etcd]\nendpoints = [{etcd}]\nlease_ttl = \"3s\"\nbudget_wait = \"60s\"\n\n[listen_overrides.{DEMO_SERVICE}]\nhttp = \"127.0.0.1:{port}\"\n\n[tls]\n{files}trusted_coordinators = [{trusted}]\n",
                coordinators = quote(&coordinators),
                etcd = quote(&etcd),
                files = files.toml_lines(),
                trusted = quote(trusted_coordinators),
            );
            let agent = AgentFixture::start_configured(id, cluster, &top, &extra).await?;
            hosts.push(FleetHost {
                id: (*id).to_owned(),
                cluster: (*cluster).to_owned(),
                agent,
                ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                port,
            });
        }
        Ok(Self { hosts })
    }
}
