//! Starting (or adopting) one instance of a release on this host's
//! sockets, and waiting for instances to be ready.

use release::StoredRelease;

use super::reconcile::Recorded;
use super::steps::all_ready;
use super::{Host, HostError, stop_all};
use crate::instance::{HostedInstance, InstanceSite};
use crate::supervisor::{AdoptedProcess, ListenSockets};

impl Host {
    pub(super) fn start_instance(
        &self,
        release: &StoredRelease,
        sockets: &ListenSockets,
        slot: u32,
    ) -> Result<HostedInstance, HostError> {
        self.launch_instance(release, sockets, slot, None)
    }

    pub(super) fn adopt_instance(
        &self,
        release: &StoredRelease,
        sockets: &ListenSockets,
        found: Recorded,
    ) -> Result<HostedInstance, HostError> {
        let slot = found.record.slot;
        let process = AdoptedProcess {
            pid: found.record.pid,
            pidfd: found.pidfd,
            ready: found.record.ready,
        };
        self.launch_instance(release, sockets, slot, Some(process))
    }

    pub(super) fn launch_instance(
        &self,
        release: &StoredRelease,
        sockets: &ListenSockets,
        slot: u32,
        adopted: Option<AdoptedProcess>,
    ) -> Result<HostedInstance, HostError> {
        let probe = retarget(
            &release.manifest.readiness().probe,
            release.manifest.listen(),
            &self.listen(release.manifest.service().as_str(), release),
        );
        let (log_dir, runtime_dir, records) = (
            self.config.log_dir(),
            self.config.runtime_dir(),
            self.config.process_dir(),
        );
        let site = InstanceSite {
            log_dir: &log_dir,
            runtime_dir: &runtime_dir,
            shim: &self.shim,
            records: &records,
            events: &self.events,
            metrics: &self.metrics,
        };
        let launched = match adopted {
            Some(process) => {
                HostedInstance::adopt(release, &probe, slot, sockets.clone(), site, process)
            }
            None => HostedInstance::start(release, &probe, slot, sockets.clone(), site),
        };
        launched.map_err(|source| HostError::Instance {
            service: release.manifest.service().to_string(),
            source,
        })
    }

    /// Waits until every instance is ready; on the first failure stops them
    /// all and reports the failing one's log.
    pub(super) async fn wait_ready(
        &self,
        service: &str,
        release: &StoredRelease,
        instances: Vec<HostedInstance>,
    ) -> Result<Vec<HostedInstance>, HostError> {
        match all_ready(service, release, &instances).await {
            Ok(()) => Ok(instances),
            Err(failure) => {
                stop_all(instances).await;
                Err(HostError::SwitchFailed(failure))
            }
        }
    }

    /// The release's `[[listen]]` sockets with this host's overrides applied.
    pub(super) fn listen(
        &self,
        service: &str,
        release: &StoredRelease,
    ) -> Vec<release::manifest::Listen> {
        let overrides = self.config.listen_overrides.get(service);
        release
            .manifest
            .listen()
            .iter()
            .map(|l| release::manifest::Listen {
                name: l.name.clone(),
                address: overrides
                    .and_then(|o| o.get(&l.name))
                    .copied()
                    .unwrap_or(l.address),
            })
            .collect()
    }

    pub(super) fn bind(
        &self,
        service: &str,
        release: &StoredRelease,
    ) -> Result<ListenSockets, HostError> {
        ListenSockets::bind(&self.listen(service, release), release.manifest.overlap()).map_err(
            |source| HostError::Sockets {
                service: service.to_owned(),
                source,
            },
        )
    }
}

/// The readiness probe aimed where this host serves: an http or tcp probe
/// of a `[[listen]]` address that `listen_overrides` moves follows it.
fn retarget(
    probe: &release::manifest::Readiness,
    manifest: &[release::manifest::Listen],
    here: &[release::manifest::Listen],
) -> release::manifest::Readiness {
    use release::manifest::Readiness;
    let moved = |host: &str, port: u16| {
        let ip = match host {
            "localhost" => Some(std::net::IpAddr::from([127, 0, 0, 1])),
            h => h.parse().ok(),
        };
        manifest.iter().zip(here).find_map(|(from, to)| {
            let same = from.address.port() == port
                && (from.address.ip().is_unspecified() || Some(from.address.ip()) == ip);
            (same && from.address != to.address).then_some(to.address)
        })
    };
    match probe {
        Readiness::Http { url } => match moved(url.host(), url.port()) {
            Some(to) => Readiness::Http { url: url.at(to) },
            None => probe.clone(),
        },
        Readiness::Tcp { addr } => match moved(&addr.ip().to_string(), addr.port()) {
            Some(to) => Readiness::Tcp { addr: to },
            None => probe.clone(),
        },
        Readiness::Exec { .. } | Readiness::Notify => probe.clone(),
    }
}

#[cfg(test)]
mod tests {
    use release::manifest::{HttpUrl, Listen, Readiness};

    use super::retarget;

    fn listen(addr: &str) -> Vec<Listen> {
        vec![Listen {
            name: "http".into(),
            address: addr.parse().unwrap(),
        }]
    }

    fn http(url: &str) -> Readiness {
        Readiness::Http {
            url: HttpUrl::parse(url).unwrap(),
        }
    }

    #[test]
    fn a_probe_of_a_moved_listen_address_follows_it() {
        let manifest = listen("127.0.0.1:8080");
        let here = listen("127.0.0.1:9001");
        assert_eq!(
            retarget(&http("http://127.0.0.1:8080/ready?x=1"), &manifest, &here),
            http("http://127.0.0.1:9001/ready?x=1")
        );
        assert_eq!(
            retarget(&http("http://localhost:8080/"), &manifest, &here),
            http("http://127.0.0.1:9001/")
        );
        let tcp = Readiness::Tcp {
            addr: "127.0.0.1:8080".parse().unwrap(),
        };
        assert_eq!(
            retarget(&tcp, &manifest, &here),
            Readiness::Tcp {
                addr: "127.0.0.1:9001".parse().unwrap()
            }
        );
    }

    #[test]
    fn a_wildcard_listen_address_matches_a_probe_of_any_local_ip() {
        let manifest = listen("0.0.0.0:8080");
        let here = listen("127.0.0.1:9001");
        assert_eq!(
            retarget(&http("http://127.0.0.1:8080/"), &manifest, &here),
            http("http://127.0.0.1:9001/")
        );
    }

    #[test]
    fn other_probes_are_left_alone() {
        let manifest = listen("127.0.0.1:8080");
        let here = listen("127.0.0.1:9001");
        let other_port = http("http://127.0.0.1:8081/");
        assert_eq!(retarget(&other_port, &manifest, &here), other_port);
        let unmoved = http("http://127.0.0.1:8080/");
        assert_eq!(retarget(&unmoved, &manifest, &manifest), unmoved);
        assert_eq!(
            retarget(&Readiness::Notify, &manifest, &here),
            Readiness::Notify
        );
    }
}
