//! The live fleet view: what each agent last reported over its `Report`
//! stream (registration, service status, instance events), and the
//! `rollout::Fleet` of a service built from it.
//!
//! An agent is reachable while one of its report streams is open, or its
//! last report is younger than three status intervals. It leaves the view
//! once no stream is open and its etcd registration is gone.
//!
//! Drivers wake on every change and judge only the agents that changed
//! since they last looked ([`FleetView::changes_since`]): at 10,000 hosts a
//! full judgement per report was most of the coordinator's CPU. A snapshot
//! that says what the view already holds changes nothing and wakes nobody.
//!
//! Must never: invent state an agent did not report, or block on IO while
//! holding its lock.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    /// How many agents `agents` holds, read without its lock (by every
    /// report's acknowledgement, for the status interval).
    tracked: AtomicUsize,
    changes: Mutex<ChangeLog>,
    /// The generation after the newest change (`ChangeLog::next`).
    changed: watch::Sender<u64>,
    configured_interval: Duration,
    streams_opened: AtomicU64,
}

/// The agents whose view changed, oldest first, numbered by generation.
/// Bounded: a reader that fell further behind than [`CHANGES_KEPT`] is
/// told to look at everything.
#[derive(Debug, Default)]
struct ChangeLog {
    /// The generation of `agents[0]`.
    first: u64,
    agents: VecDeque<String>,
}

impl ChangeLog {
    fn next(&self) -> u64 {
        self.first + self.agents.len() as u64
    }

    fn push(&mut self, agent: &str) -> u64 {
        if self.agents.len() == CHANGES_KEPT {
            self.agents.pop_front();
            self.first += 1;
        }
        self.agents.push_back(agent.to_owned());
        self.next()
    }
}

/// Changes a reader may fall behind by before it must look at every agent.
pub const CHANGES_KEPT: usize = 16_384;

/// What changed since a reader's cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// These agents (and no other).
    Agents(HashSet<String>),
    /// More than the log keeps: judge every agent.
    Everything,
}

/// Full snapshots the whole fleet sends a second, at most: above this
/// many agents per status interval, the interval each agent is told
/// stretches (Nomad spreads heartbeats the same way, its
/// `max_heartbeats_per_second`). Events still arrive as they happen; only
/// the periodic re-statement slows.
pub const MAX_SNAPSHOTS_PER_SECOND: u64 = 500;

/// How often each of `agents` agents sends a full snapshot: the configured
/// interval, or longer when the fleet would otherwise send more than
/// [`MAX_SNAPSHOTS_PER_SECOND`].
pub fn status_interval(configured: Duration, agents: usize) -> Duration {
    let spread = Duration::from_millis((agents as u64 * 1000).div_ceil(MAX_SNAPSHOTS_PER_SECOND));
    configured.max(spread)
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
            tracked: AtomicUsize::new(0),
            changes: Mutex::new(ChangeLog::default()),
            changed: watch::Sender::new(0),
            configured_interval: status_interval,
            streams_opened: AtomicU64::new(0),
        }
    }

    /// Bumps on every change; drivers re-evaluate the agents that changed
    /// ([`Self::changes_since`]) on it.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The agents changed since `cursor` (a generation this view gave
    /// out; 0 at first), and the cursor to ask with next time.
    pub fn changes_since(&self, cursor: u64) -> (Changed, u64) {
        let changes = self
            .changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = changes.next();
        if cursor < changes.first {
            return (Changed::Everything, next);
        }
        let skip = usize::try_from(cursor - changes.first).unwrap_or(usize::MAX);
        let agents = changes.agents.iter().skip(skip).cloned().collect();
        (Changed::Agents(agents), next)
    }

    /// The generation the next change will be after: a reader that starts
    /// here (having judged everything) sees only later changes.
    pub fn cursor(&self) -> u64 {
        self.changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .next()
    }

    /// How often each agent is asked to send a full snapshot now (see
    /// [`status_interval`]).
    pub fn status_interval(&self) -> Duration {
        status_interval(
            self.configured_interval,
            self.tracked.load(Ordering::Relaxed),
        )
    }

    fn with_agents<T>(&self, f: impl FnOnce(&mut HashMap<String, AgentEntry>) -> T) -> T {
        let mut agents = self
            .agents
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let out = f(&mut agents);
        self.tracked.store(agents.len(), Ordering::Relaxed);
        out
    }

    /// Records that `agent`'s view changed (after the change is in the
    /// view, so a reader woken by it reads the change).
    fn touch(&self, agent: &str) {
        let next = self
            .changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(agent);
        self.changed.send_replace(next);
    }

    /// A report stream opened with this registration, unless the agent
    /// already has [`MAX_STREAMS_PER_AGENT`] open or the view already knows
    /// [`MAX_AGENTS`] agents: one caller's registrations are bounded.
    pub fn stream_opened(&self, identity: pb::AgentIdentity) -> Result<(), StreamRefused> {
        let epoch = self.streams_opened.fetch_add(1, Ordering::Relaxed) + 1;
        let id = identity.agent_id.clone();
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
        self.touch(&id);
        Ok(())
    }

    pub fn stream_closed(&self, agent: &str) {
        self.with_agents(|agents| {
            if let Some(entry) = agents.get_mut(agent) {
                entry.open_streams = entry.open_streams.saturating_sub(1);
            }
        });
        self.touch(agent);
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
            self.touch(agent);
        }
        removed
    }

    /// A full snapshot of an agent's services. Wakes the drivers only if
    /// it says something new (or the agent had gone stale): most
    /// snapshots re-state what the view holds.
    pub fn status(&self, agent: &str, status: pb::StatusResponse) {
        let stale_after = self.status_interval() * 3;
        let changed = self.with_agents(|agents| {
            let Some(entry) = agents.get_mut(agent) else {
                return false;
            };
            let services: BTreeMap<String, pb::ServiceStatus> = status
                .services
                .into_iter()
                .map(|s| (s.service.clone(), s))
                .collect();
            let changed = services != entry.services || !reachable(entry, stale_after);
            entry.services = services;
            entry.last_report = Instant::now();
            entry.last_report_unix_ms = crate::now_unix_ms();
            changed
        });
        if changed {
            self.touch(agent);
        }
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
        self.touch(agent);
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
        reachable(entry, self.status_interval() * 3)
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
        self.agents_page(cluster, None, usize::MAX).0
    }

    /// At most `limit` agents of `cluster` (empty: all) sorted by cluster
    /// then id, starting after `after`; and whether more follow.
    pub fn agents_page(
        &self,
        cluster: &str,
        after: Option<&pb::AgentKey>,
        limit: usize,
    ) -> (Vec<pb::AgentSummary>, bool) {
        let after = after.map(|k| (k.cluster.as_str(), k.agent_id.as_str()));
        self.with_agents(|agents| {
            let mut page: Vec<&AgentEntry> = agents
                .values()
                .filter(|e| cluster.is_empty() || e.identity.cluster == cluster)
                .filter(|e| after.is_none_or(|after| key(e) > after))
                .collect();
            page.sort_unstable_by(|a, b| key(a).cmp(&key(b)));
            let more = page.len() > limit;
            page.truncate(limit);
            let page = page
                .into_iter()
                .map(|e| pb::AgentSummary {
                    identity: Some(e.identity.clone()),
                    reachable: self.reachable(e),
                    last_report_unix_ms: e.last_report_unix_ms,
                    services: e.services.values().cloned().collect(),
                })
                .collect();
            (page, more)
        })
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

/// Where an agent sorts in listings.
fn key(entry: &AgentEntry) -> (&str, &str) {
    (&entry.identity.cluster, &entry.identity.agent_id)
}

fn reachable(entry: &AgentEntry, stale_after: Duration) -> bool {
    entry.open_streams > 0 || entry.last_report.elapsed() < stale_after
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
        // No stream open and no report within three intervals (a few ms
        // here: zero, stretched for two agents).
        view.stream_closed("b");
        let deadline = Instant::now() + Duration::from_secs(10);
        while view.reachability() != (1, 1) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
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

    fn in_cluster(id: &str, cluster: &str) -> pb::AgentIdentity {
        pb::AgentIdentity {
            agent_id: id.to_owned(),
            cluster: cluster.to_owned(),
            ..Default::default()
        }
    }

    fn snapshot(service: &str, digest: &str) -> pb::StatusResponse {
        pb::StatusResponse {
            services: vec![pb::ServiceStatus {
                service: service.to_owned(),
                current: Some(pb::ReleaseRef {
                    digest: digest.to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn ids(page: &[pb::AgentSummary]) -> Vec<String> {
        page.iter()
            .filter_map(|a| a.identity.as_ref().map(|i| i.agent_id.clone()))
            .collect()
    }

    #[test]
    fn pages_of_agents_follow_cluster_then_id_and_end() {
        let view = FleetView::new(Duration::from_secs(1));
        for (id, cluster) in [("c", "b"), ("a", "b"), ("z", "a"), ("b", "b"), ("y", "c")] {
            view.stream_opened(in_cluster(id, cluster)).unwrap();
        }
        let (first, more) = view.agents_page("", None, 2);
        assert_eq!((ids(&first), more), (vec!["z".into(), "a".into()], true));
        let after = pb::AgentKey {
            cluster: "b".into(),
            agent_id: "a".into(),
        };
        let (second, more) = view.agents_page("", Some(&after), 2);
        assert_eq!((ids(&second), more), (vec!["b".into(), "c".into()], true));
        let after = pb::AgentKey {
            cluster: "b".into(),
            agent_id: "c".into(),
        };
        let (last, more) = view.agents_page("", Some(&after), 2);
        assert_eq!((ids(&last), more), (vec!["y".into()], false));
        let (cluster_b, more) = view.agents_page("b", None, 3);
        assert_eq!(ids(&cluster_b), ["a", "b", "c"]);
        assert!(!more, "exactly a page is the last page");
        assert_eq!(ids(&view.agents("")), ["z", "a", "b", "c", "y"]);
    }

    #[test]
    fn a_reader_sees_which_agents_changed_and_a_repeated_snapshot_is_no_change() {
        let view = FleetView::new(Duration::from_secs(60));
        let start = view.cursor();
        view.stream_opened(identity("a")).unwrap();
        view.stream_opened(identity("b")).unwrap();
        let (changed, cursor) = view.changes_since(start);
        assert_eq!(changed, Changed::Agents(["a".into(), "b".into()].into()));
        view.status("a", snapshot("web", "sha256:1"));
        let (changed, cursor) = view.changes_since(cursor);
        assert_eq!(changed, Changed::Agents(["a".into()].into()));
        let mut woken = view.subscribe();
        woken.mark_unchanged();
        view.status("a", snapshot("web", "sha256:1"));
        assert!(
            !woken.has_changed().unwrap(),
            "the same snapshot again wakes nobody"
        );
        assert_eq!(
            view.changes_since(cursor).0,
            Changed::Agents(HashSet::new())
        );
        view.status("a", snapshot("web", "sha256:2"));
        assert!(woken.has_changed().unwrap());
        assert_eq!(
            view.changes_since(cursor).0,
            Changed::Agents(["a".into()].into())
        );
    }

    #[test]
    fn a_reader_that_fell_behind_the_log_looks_at_everything() {
        let view = FleetView::new(Duration::from_secs(60));
        view.stream_opened(identity("a")).unwrap();
        let start = view.cursor();
        for n in 0..=CHANGES_KEPT {
            view.status("a", snapshot("web", &format!("sha256:{n}")));
        }
        let (changed, cursor) = view.changes_since(start);
        assert_eq!(changed, Changed::Everything);
        assert_eq!(
            view.changes_since(cursor).0,
            Changed::Agents(HashSet::new())
        );
    }

    #[test]
    fn the_status_interval_stretches_so_the_fleet_sends_a_bounded_rate() {
        let two = Duration::from_secs(2);
        assert_eq!(status_interval(two, 0), two);
        assert_eq!(status_interval(two, 1_000), two, "500 a second exactly");
        assert_eq!(status_interval(two, 10_000), Duration::from_secs(20));
        assert_eq!(status_interval(two, 1_001), Duration::from_millis(2_002));
        let view = FleetView::new(two);
        assert_eq!(view.status_interval(), two);
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
