//! The live fleet view: what each agent last reported over its `Report`
//! stream (registration, service status, instance events), and the
//! `rollout::Fleet` of a service built from it.
//!
//! An agent is reachable while one of its report streams is open, or its
//! last report is younger than three status intervals. It leaves the view
//! once no stream is open and its etcd registration is gone.
//!
//! Must never: invent state an agent did not report, or block on IO while
//! holding its lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ids::DigestError;
use proto::v1 as pb;
use rollout::{Cluster, ClusterName, Fleet, Installed, Instance, InstanceId, ReleaseDigest};
use tokio::sync::watch;

/// Whether a reported release reference names `release`.
pub fn names(reference: Option<&pb::ReleaseRef>, release: &ReleaseDigest) -> bool {
    reference.is_some_and(|r| ReleaseDigest::parse(&r.digest).is_ok_and(|d| d == *release))
}

/// What a host runs of a service, from its last report: no report of the
/// service, or one without a current release, is `Installed::Nothing`.
pub fn installed(status: Option<&pb::ServiceStatus>) -> Result<Installed, DigestError> {
    match status.and_then(|s| s.current.as_ref()) {
        None => Ok(Installed::Nothing),
        Some(release) => ReleaseDigest::parse(&release.digest).map(Installed::Release),
    }
}

/// What the coordinator knows about one agent.
#[derive(Debug, Clone)]
pub struct AgentEntry {
    pub identity: pb::AgentIdentity,
    pub services: BTreeMap<String, pb::ServiceStatus>,
    pub last_report: Instant,
    pub last_report_unix_ms: i64,
    pub open_streams: usize,
    /// Which report stream opening this is, across all agents: a new
    /// value means the agent (re)connected, perhaps as a new process that
    /// knows nothing of the commands its predecessor took.
    pub stream_epoch: u64,
}

/// Every agent that has reported to this coordinator.
#[derive(Debug)]
pub struct FleetView {
    agents: Mutex<HashMap<String, AgentEntry>>,
    changed: watch::Sender<u64>,
    stale_after: Duration,
    streams_opened: AtomicU64,
}

/// A service's fleet, ready for `rollout::plan`.
#[derive(Debug, Clone)]
pub struct ServiceFleet {
    pub fleet: Fleet,
    /// What most of the fleet runs now other than the target (the rollback
    /// default; `Installed::Nothing` for a first install); `None` when every
    /// host runs the target and none remembers an earlier release.
    pub previous: Option<Installed>,
    /// Hosts assigned the service that cannot be reached now.
    pub unreachable: Vec<String>,
}

/// Report streams one agent may hold open at once: a reconnecting agent
/// overlaps its old stream for a moment, never by more than a few.
pub const MAX_STREAMS_PER_AGENT: usize = 4;
/// Agents one coordinator tracks: ten times the fleet Lockstep is sized for.
pub const MAX_AGENTS: usize = 10_000;

/// Why a Report stream was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamRefused {
    #[error(
        "agent {agent:?} already has {limit} report streams open on this coordinator (the limit per agent): this one is refused until one closes"
    )]
    TooManyStreams { agent: String, limit: usize },
    #[error("this coordinator already tracks {limit} agents (the limit): a new agent is refused")]
    TooManyAgents { limit: usize },
}

impl FleetView {
    pub fn new(status_interval: Duration) -> Self {
        Self {
            agents: Mutex::new(HashMap::new()),
            changed: watch::Sender::new(0),
            stale_after: status_interval * 3,
            streams_opened: AtomicU64::new(0),
        }
    }

    /// Bumps on every change; drivers re-evaluate their instances on it.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn with_agents<T>(&self, f: impl FnOnce(&mut HashMap<String, AgentEntry>) -> T) -> T {
        let mut agents = self
            .agents
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut agents)
    }

    fn touch(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A report stream opened with this registration, unless the agent
    /// already has [`MAX_STREAMS_PER_AGENT`] open or the view already knows
    /// [`MAX_AGENTS`] agents: one caller's registrations are bounded.
    pub fn stream_opened(&self, identity: pb::AgentIdentity) -> Result<(), StreamRefused> {
        let epoch = self.streams_opened.fetch_add(1, Ordering::Relaxed) + 1;
        self.with_agents(|agents| {
            if !agents.contains_key(&identity.agent_id) && agents.len() >= MAX_AGENTS {
                return Err(StreamRefused::TooManyAgents { limit: MAX_AGENTS });
            }
            let entry = agents
                .entry(identity.agent_id.clone())
                .or_insert_with(|| AgentEntry {
                    identity: identity.clone(),
                    services: BTreeMap::new(),
                    last_report: Instant::now(),
                    last_report_unix_ms: crate::now_unix_ms(),
                    open_streams: 0,
                    stream_epoch: epoch,
                });
            if entry.open_streams >= MAX_STREAMS_PER_AGENT {
                return Err(StreamRefused::TooManyStreams {
                    agent: identity.agent_id.clone(),
                    limit: MAX_STREAMS_PER_AGENT,
                });
            }
            entry.identity = identity;
            entry.open_streams += 1;
            entry.stream_epoch = epoch;
            entry.last_report = Instant::now();
            entry.last_report_unix_ms = crate::now_unix_ms();
            Ok(())
        })?;
        self.touch();
        Ok(())
    }

    pub fn stream_closed(&self, agent: &str) {
        self.with_agents(|agents| {
            if let Some(entry) = agents.get_mut(agent) {
                entry.open_streams = entry.open_streams.saturating_sub(1);
            }
        });
        self.touch();
    }

    /// How many report streams of `agent` are open now.
    pub fn open_streams(&self, agent: &str) -> usize {
        self.with_agents(|agents| agents.get(agent).map_or(0, |e| e.open_streams))
    }

    /// Removes `agent` when none of its streams is open (its registration
    /// is gone: see `agent_binding::expire_when_unregistered`); whether it
    /// was removed.
    pub fn forget_if_closed(&self, agent: &str) -> bool {
        let removed = self.with_agents(|agents| {
            if agents.get(agent).is_some_and(|e| e.open_streams == 0) {
                agents.remove(agent).is_some()
            } else {
                false
            }
        });
        if removed {
            self.touch();
        }
        removed
    }

    /// A full snapshot of an agent's services.
    pub fn status(&self, agent: &str, status: pb::StatusResponse) {
        self.with_agents(|agents| {
            if let Some(entry) = agents.get_mut(agent) {
                entry.services = status
                    .services
                    .into_iter()
                    .map(|s| (s.service.clone(), s))
                    .collect();
                entry.last_report = Instant::now();
                entry.last_report_unix_ms = crate::now_unix_ms();
            }
        });
        self.touch();
    }

    /// One change: a whole service (a switch ended) or one instance.
    pub fn event(&self, agent: &str, event: pb::StatusEvent) {
        self.with_agents(|agents| {
            let Some(entry) = agents.get_mut(agent) else {
                return;
            };
            entry.last_report = Instant::now();
            entry.last_report_unix_ms = crate::now_unix_ms();
            if let Some(service) = event.service {
                entry.services.insert(service.service.clone(), service);
            } else if let Some(instance) = event.instance {
                merge_instance(&mut entry.services, instance);
            }
        });
        self.touch();
    }

    pub fn is_reachable(&self, agent: &str) -> bool {
        self.with_agents(|agents| agents.get(agent).is_some_and(|e| self.reachable(e)))
    }

    /// How many agents are reachable now, and how many are not (for
    /// `lockstep_agents`).
    pub fn reachability(&self) -> (usize, usize) {
        self.with_agents(|agents| {
            let connected = agents.values().filter(|e| self.reachable(e)).count();
            (connected, agents.len() - connected)
        })
    }

    fn reachable(&self, entry: &AgentEntry) -> bool {
        entry.open_streams > 0 || entry.last_report.elapsed() < self.stale_after
    }

    /// The last reported status of `service` on `agent`.
    pub fn service(&self, agent: &str, service: &str) -> Option<pb::ServiceStatus> {
        self.with_agents(|agents| agents.get(agent)?.services.get(service).cloned())
    }

    /// The epoch of the agent's newest report stream (see
    /// `AgentEntry::stream_epoch`).
    pub fn stream_epoch(&self, agent: &str) -> Option<u64> {
        self.with_agents(|agents| agents.get(agent).map(|e| e.stream_epoch))
    }

    /// The gRPC address of an agent's AgentService.
    pub fn address(&self, agent: &str) -> Option<String> {
        self.with_agents(|agents| {
            agents
                .get(agent)
                .map(|e| e.identity.grpc_address.clone())
                .filter(|a| !a.is_empty())
        })
    }

    /// Every agent, sorted by cluster then id, with reachability.
    pub fn agents(&self, cluster: &str) -> Vec<pb::AgentSummary> {
        let mut out: Vec<pb::AgentSummary> = self.with_agents(|agents| {
            agents
                .values()
                .filter(|e| cluster.is_empty() || e.identity.cluster == cluster)
                .map(|e| pb::AgentSummary {
                    identity: Some(e.identity.clone()),
                    reachable: self.reachable(e),
                    last_report_unix_ms: e.last_report_unix_ms,
                    services: e.services.values().cloned().collect(),
                })
                .collect()
        });
        out.sort_by(|a, b| {
            let key = |s: &pb::AgentSummary| {
                s.identity
                    .as_ref()
                    .map(|i| (i.cluster.clone(), i.agent_id.clone()))
            };
            key(a).cmp(&key(b))
        });
        out
    }

    /// The hosts of `service` (assigned in their config, or running it),
    /// grouped by cluster, each with the release it runs now.
    pub fn service_fleet(&self, service: &str, target: &ReleaseDigest) -> ServiceFleet {
        let mut clusters: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
        let mut unreachable = Vec::new();
        let mut counts: BTreeMap<Installed, usize> = BTreeMap::new();
        self.with_agents(|agents| {
            let mut hosts: Vec<&AgentEntry> = agents
                .values()
                .filter(|e| {
                    e.identity.services.iter().any(|s| s == service)
                        || e.services.contains_key(service)
                })
                .collect();
            hosts.sort_by(|a, b| a.identity.agent_id.cmp(&b.identity.agent_id));
            for entry in hosts {
                if !self.reachable(entry) {
                    unreachable.push(entry.identity.agent_id.clone());
                    continue;
                }
                let (Ok(id), Ok(release)) = (
                    InstanceId::new(entry.identity.agent_id.clone()),
                    installed(entry.services.get(service)),
                ) else {
                    unreachable.push(entry.identity.agent_id.clone());
                    continue;
                };
                if release != *target {
                    *counts.entry(release).or_default() += 1;
                }
                clusters
                    .entry(entry.identity.cluster.clone())
                    .or_default()
                    .push(Instance { id, release });
            }
        });
        let fleet = Fleet {
            clusters: clusters
                .into_iter()
                .filter_map(|(name, instances)| {
                    Some(Cluster {
                        name: ClusterName::parse(&name).ok()?,
                        instances,
                        // The leader reads the hosts' budget from etcd.
                        max_disruptions: None,
                    })
                })
                .collect(),
        };
        let previous = counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(release, _)| release)
            .or_else(|| {
                // Every host already runs the target: roll back to what
                // they ran before it.
                self.previous_release(service)
                    .and_then(|r| ReleaseDigest::parse(&r.digest).ok())
                    .map(Installed::Release)
            });
        ServiceFleet {
            fleet,
            previous,
            unreachable,
        }
    }

    /// The release every host of `service` runs now, when they all run the
    /// same one (`None`: mixed, or no host reports it).
    pub fn uniform_current(&self, service: &str) -> Option<String> {
        match self.current_releases(service, None).as_slice() {
            [Some(only)] => Some(only.clone()),
            _ => None,
        }
    }

    /// The releases hosts of `service` (in `cluster`, if given) run now,
    /// each once (`None`: a host that runs none of it).
    pub fn current_releases(&self, service: &str, cluster: Option<&str>) -> Vec<Option<String>> {
        let mut seen = std::collections::BTreeSet::new();
        self.with_agents(|agents| {
            for entry in agents.values() {
                if cluster.is_some_and(|c| c != entry.identity.cluster) {
                    continue;
                }
                if let Some(s) = entry.services.get(service) {
                    seen.insert(s.current.as_ref().map(|r| r.digest.clone()));
                }
            }
        });
        seen.into_iter().collect()
    }

    /// What hosts of `service` ran before their current release, most
    /// common first.
    pub fn previous_release(&self, service: &str) -> Option<pb::ReleaseRef> {
        let mut counts: BTreeMap<String, (usize, pb::ReleaseRef)> = BTreeMap::new();
        self.with_agents(|agents| {
            for entry in agents.values() {
                if let Some(previous) = entry.services.get(service).and_then(|s| s.previous.first())
                {
                    counts
                        .entry(previous.digest.clone())
                        .or_insert_with(|| (0, previous.clone()))
                        .0 += 1;
                }
            }
        });
        counts.into_values().max_by_key(|(n, _)| *n).map(|(_, r)| r)
    }
}

fn merge_instance(
    services: &mut BTreeMap<String, pb::ServiceStatus>,
    instance: pb::InstanceStatus,
) {
    let Some(r) = instance.instance.as_ref() else {
        return;
    };
    let Some(service) = services.get_mut(&r.service) else {
        return;
    };
    let release = instance.release.as_ref().map(|r| r.digest.clone());
    if let Some(existing) = service.instances.iter_mut().find(|i| {
        i.instance.as_ref().map(|x| x.slot) == Some(r.slot)
            && i.release.as_ref().map(|r| r.digest.clone()) == release
    }) {
        *existing = instance;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(id: &str) -> pb::AgentIdentity {
        pb::AgentIdentity {
            agent_id: id.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn reachability_counts_open_streams_and_fresh_reports() {
        let view = FleetView::new(Duration::ZERO);
        view.stream_opened(identity("a")).unwrap();
        view.stream_opened(identity("b")).unwrap();
        assert_eq!(view.reachability(), (2, 0));
        // No stream open and no report within three intervals (zero here).
        view.stream_closed("b");
        assert_eq!(view.reachability(), (1, 1));
    }

    #[test]
    fn one_agent_holds_a_bounded_number_of_streams() {
        let view = FleetView::new(Duration::from_secs(1));
        for _ in 0..MAX_STREAMS_PER_AGENT {
            view.stream_opened(identity("a")).unwrap();
        }
        let refused = view.stream_opened(identity("a")).unwrap_err();
        assert!(
            refused.to_string().contains("already has 4 report streams"),
            "{refused}"
        );
        assert_eq!(view.open_streams("a"), MAX_STREAMS_PER_AGENT);
        view.stream_closed("a");
        view.stream_opened(identity("a")).unwrap();
        view.stream_opened(identity("b")).unwrap();
    }

    #[test]
    fn a_host_without_a_current_release_runs_nothing() {
        assert_eq!(installed(None), Ok(Installed::Nothing));
        assert_eq!(
            installed(Some(&pb::ServiceStatus::default())),
            Ok(Installed::Nothing)
        );
        let digest = ReleaseDigest::of_bytes(b"v1");
        let status = pb::ServiceStatus {
            current: Some(pb::ReleaseRef {
                digest: digest.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(installed(Some(&status)), Ok(Installed::Release(digest)));
        let garbled = pb::ServiceStatus {
            current: Some(pb::ReleaseRef {
                digest: "sha256:nope".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(installed(Some(&garbled)).is_err());
    }
}
