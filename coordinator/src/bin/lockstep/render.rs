//! Text output: proto messages in, strings out. Every verb's text rendering
//! lives here so it can be tested without a coordinator.
//!
//! Must never: read the clock (callers pass `now`), print, or do IO.

use std::collections::BTreeMap;

use proto::v1::{
    AgentSummary, Deployment, DeploymentEvent, DeploymentEventKind, DeploymentState, HistoryEntry,
    LockHolder, LockInfo, LockKind, ReleaseSummary,
};

use crate::client::EXIT_FAILED;
use crate::fmt::{age, duration_ms, or_dash, release_short, table, ttl_left, utc, utc_time};
use crate::json;

/// `watch` exits 0 succeeded, 3 rolled back, 4 aborted, 5 failed.
pub const EXIT_ROLLED_BACK: u8 = 3;
pub const EXIT_ABORTED: u8 = 4;
pub const EXIT_ROLLBACK_FAILED: u8 = 5;

/// The exit code of a deployment that has ended; `None` while it runs.
pub fn exit_code_for(state: i32) -> Option<u8> {
    match DeploymentState::try_from(state).ok()? {
        DeploymentState::Succeeded => Some(0),
        DeploymentState::RolledBack => Some(EXIT_ROLLED_BACK),
        DeploymentState::Aborted => Some(EXIT_ABORTED),
        DeploymentState::Failed => Some(EXIT_ROLLBACK_FAILED),
        DeploymentState::Unspecified
        | DeploymentState::Running
        | DeploymentState::Paused
        | DeploymentState::AwaitingApproval
        | DeploymentState::RollingBack => None,
    }
}

/// A terminal state nobody here knows would otherwise look like success.
pub fn exit_code_or_failed(state: i32) -> u8 {
    exit_code_for(state).unwrap_or(EXIT_FAILED)
}

/// `alice@laptop (pid 812)`.
pub fn holder(h: Option<&LockHolder>) -> String {
    match h {
        None => "-".to_owned(),
        Some(h) => {
            let who = match (h.user.is_empty(), h.host.is_empty()) {
                (true, true) => "?".to_owned(),
                (true, false) => h.host.clone(),
                (false, true) => h.user.clone(),
                (false, false) => format!("{}@{}", h.user, h.host),
            };
            if h.pid == 0 {
                who
            } else {
                format!("{who} (pid {})", h.pid)
            }
        }
    }
}

/// The last segment of a lock key (`/lockstep/v1/locks/deploy/web` -> `web`).
pub fn key_name(key: &str) -> &str {
    key.rsplit('/').find(|s| !s.is_empty()).unwrap_or(key)
}

/// Why `deploy`/`rollback` was refused because the service is locked, and
/// what to do about it.
pub fn locked(service: &str, lock: Option<&LockInfo>, now: i64) -> String {
    let Some(l) = lock else {
        return format!(
            "{service} is locked by another deployment (the coordinator did not say which); see `lockstep locks`, and wait for it or break it with `lockstep locks break {service} --reason TEXT`"
        );
    };
    let purpose = or_dash(&l.purpose);
    let mut out = format!("{service} is locked by another deployment:\n");
    out.push_str(&format!("  holder:   {}\n", holder(l.holder.as_ref())));
    out.push_str(&format!("  purpose:  {purpose}\n"));
    out.push_str(&format!(
        "  since:    {} ({})\n",
        age(l.since_unix_ms, now),
        utc(l.since_unix_ms)
    ));
    out.push_str(&format!("  ttl left: {}\n", lock_ttl(l)));
    out.push_str(&format!(
        "  token:    {}\n  key:      {}\n",
        l.fencing_token, l.key
    ));
    out.push_str(&format!(
        "follow it with `lockstep watch {purpose}` and deploy when it ends; only if its holder is gone for good: `lockstep locks break {service} --reason TEXT`"
    ));
    out
}

/// `lockstep status ID` and what pause/resume/approve/abort print.
pub fn deployment(d: &Deployment, now: i64) -> String {
    let mut out = format!("deployment {}\n", d.id);
    let target = d.target.as_ref().map_or_else(
        || "-".to_owned(),
        |t| format!("{} {}", or_dash(&t.version), or_dash(&t.digest)),
    );
    let actor = d.actor.as_ref().map_or_else(|| "-".to_owned(), actor_name);
    out.push_str(&format!("  service:  {}\n", d.service));
    out.push_str(&format!("  target:   {target}\n"));
    out.push_str(&format!(
        "  state:    {}\n",
        json::deployment_state(d.state)
    ));
    if !d.reason.is_empty() {
        out.push_str(&format!("  reason:   {}\n", d.reason));
    }
    if !d.outcome.is_empty() {
        out.push_str(&format!("  outcome:  {}\n", d.outcome));
    }
    out.push_str(&format!("  actor:    {actor}\n"));
    out.push_str(&format!(
        "  created:  {} ({})\n",
        utc(d.created_unix_ms),
        age(d.created_unix_ms, now)
    ));
    if d.finished_unix_ms > 0 {
        out.push_str(&format!(
            "  finished: {} (took {})\n",
            utc(d.finished_unix_ms),
            duration_ms(d.finished_unix_ms.saturating_sub(d.created_unix_ms))
        ));
    }
    out.push_str(&format!("  token:    {}\n", d.fencing_token));
    if !d.clusters.is_empty() {
        let rows: Vec<Vec<String>> = d
            .clusters
            .iter()
            .map(|c| {
                vec![
                    format!("  {}", c.cluster),
                    format!("{}/{}", c.on_target, c.instances),
                    c.failed.to_string(),
                ]
            })
            .collect();
        out.push_str(&table(&["  CLUSTER", "ON TARGET", "FAILED"], &rows));
    }
    out
}

/// One line per event: `12:03:04Z #7 instance_ready eu-1 host-a/web#0 (running) message`.
pub fn event_line(e: &DeploymentEvent) -> String {
    let mut out = format!(
        "{} #{} {}",
        utc_time(e.at_unix_ms),
        e.seq,
        json::event_kind(e.kind)
    );
    if !e.cluster.is_empty() {
        out.push(' ');
        out.push_str(&e.cluster);
    }
    if let Some(i) = &e.instance {
        out.push_str(&format!(" {}/{}#{}", i.agent_id, i.service, i.slot));
    }
    out.push_str(&format!(" ({})", json::deployment_state(e.state)));
    // A failure's detail (with the app's log lines) is shown whole once, on
    // the instance_failed event; the events that carry it on (rollback
    // started, finished) show its first line.
    let message = if e.kind == DeploymentEventKind::InstanceFailed as i32 {
        e.message.as_str()
    } else {
        e.message.lines().next().unwrap_or_default()
    };
    if !message.is_empty() {
        out.push_str(": ");
        out.push_str(message);
    }
    out
}

/// The last line of `watch`: how the deployment ended.
pub fn finished_line(d: &Deployment) -> String {
    let state = json::deployment_state(d.state).replace('_', " ");
    // The outcome starts with the state ("rolled_back: …"), and its log
    // lines were shown with the failure: its first line, without the state.
    let first = d.outcome.lines().next().unwrap_or_default();
    let outcome = first
        .strip_prefix(json::deployment_state(d.state).as_str())
        .map_or(first, |rest| rest.trim_start_matches(':').trim_start());
    if outcome.is_empty() {
        format!("deployment {} {state}", d.id)
    } else {
        format!("deployment {} {state}: {outcome}", d.id)
    }
}

/// The last line of `watch` when only the terminal state is known.
pub fn finished_state_line(id: &str, state: i32) -> String {
    format!(
        "deployment {id} {}",
        json::deployment_state(state).replace('_', " ")
    )
}

/// Ready instances / all instances of one service on one agent.
fn ready_of(s: &proto::v1::ServiceStatus) -> (usize, usize) {
    (
        s.instances.iter().filter(|i| i.ready).count(),
        s.instances.len(),
    )
}

pub fn agents(list: &[AgentSummary], now: i64) -> String {
    if list.is_empty() {
        return "no agents have registered\n".to_owned();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            let (id, cluster) = a.identity.as_ref().map_or_else(
                || ("?".to_owned(), "?".to_owned()),
                |i| (i.agent_id.clone(), i.cluster.clone()),
            );
            let services: Vec<String> = a
                .services
                .iter()
                .map(|s| {
                    let (ready, total) = ready_of(s);
                    let release = s
                        .current
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), |r| release_short(&r.version, &r.digest));
                    format!("{} {release} {ready}/{total}", s.service)
                })
                .collect();
            vec![
                id,
                cluster,
                if a.reachable { "yes" } else { "NO" }.to_owned(),
                age(a.last_report_unix_ms, now),
                if services.is_empty() {
                    "-".to_owned()
                } else {
                    services.join(", ")
                },
            ]
        })
        .collect();
    table(
        &["AGENT", "CLUSTER", "REACHABLE", "LAST REPORT", "SERVICES"],
        &rows,
    )
}

/// Above this many agents, `lockstep agents` prints the fleet per cluster
/// and only the agents that need attention (a table of thousands of rows
/// is read by nobody); `--all` lists every agent.
pub const AGENTS_LISTED: usize = 50;

/// `lockstep agents` for a large fleet: per cluster and service, agents
/// up, instances ready and releases; then the unreachable agents and
/// those with an instance not ready (the first [`AGENTS_LISTED`]).
pub fn agents_summary(list: &[AgentSummary], now: i64) -> String {
    let mut out = format!(
        "{} agents, per cluster (`lockstep agents --all` lists every agent):\n",
        list.len()
    );
    out.push_str(&fleet_table(&rollup(list)));
    let attention: Vec<AgentSummary> = list
        .iter()
        .filter(|a| {
            !a.reachable
                || a.services.iter().any(|s| {
                    let (ready, total) = ready_of(s);
                    ready < total
                })
        })
        .cloned()
        .collect();
    if attention.is_empty() {
        out.push_str("\nevery agent is reachable and every instance ready\n");
        return out;
    }
    let shown = attention.len().min(AGENTS_LISTED);
    out.push_str(&format!(
        "\n{} agents unreachable or not ready{}:\n",
        attention.len(),
        if shown < attention.len() {
            format!(" (the first {shown})")
        } else {
            String::new()
        }
    ));
    out.push_str(&agents(&attention[..shown], now));
    out
}

/// A lock's TTL left, or that it has no lease (and so is no lock).
fn lock_ttl(l: &LockInfo) -> String {
    if l.leaseless {
        "no lease (ignored)".to_owned()
    } else {
        ttl_left(l.ttl_left_ms)
    }
}

pub fn locks(list: &[LockInfo], now: i64) -> String {
    if list.is_empty() {
        return "no locks are held\n".to_owned();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|l| {
            vec![
                json::lock_kind(l.kind),
                l.key.clone(),
                holder(l.holder.as_ref()),
                or_dash(&l.purpose),
                age(l.since_unix_ms, now),
                lock_ttl(l),
                l.fencing_token.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "KIND", "KEY", "HOLDER", "PURPOSE", "AGE", "TTL LEFT", "TOKEN",
        ],
        &rows,
    )
}

pub fn broken_lock(broken: Option<&LockInfo>, audit_seq: u64, now: i64) -> String {
    match broken {
        None => format!(
            "broke the lock (the coordinator did not describe it); audit record {audit_seq}\n"
        ),
        Some(l) if l.leaseless => format!(
            "deleted {} lock key {}: it had no lease, so it was not a lock Lockstep took (written by {} for {} since {})\naudit record {audit_seq}\n",
            json::lock_kind(l.kind),
            l.key,
            holder(l.holder.as_ref()),
            or_dash(&l.purpose),
            age(l.since_unix_ms, now),
        ),
        Some(l) => format!(
            "broke {} lock {}: held by {} for {} since {}, token {}\naudit record {audit_seq}\n",
            json::lock_kind(l.kind),
            l.key,
            holder(l.holder.as_ref()),
            or_dash(&l.purpose),
            age(l.since_unix_ms, now),
            l.fencing_token
        ),
    }
}

pub fn history(entries: &[HistoryEntry], service: &str) -> String {
    if entries.is_empty() {
        return format!("no deployments of {service} yet\n");
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .filter_map(|e| e.deployment.as_ref())
        .map(|d| {
            let (version, digest) = d
                .target
                .as_ref()
                .map_or((String::new(), String::new()), |t| {
                    (t.version.clone(), t.digest.clone())
                });
            vec![
                d.id.clone(),
                json::deployment_state(d.state),
                release_short(&version, &digest),
                d.actor.as_ref().map_or_else(|| "-".to_owned(), actor_name),
                utc(d.created_unix_ms),
                utc(d.finished_unix_ms),
                or_dash(&d.reason),
                // One row per deployment: a failure's log lines are in
                // `lockstep status ID` and `--output json`.
                or_dash(d.outcome.lines().next().unwrap_or_default()),
            ]
        })
        .collect();
    table(
        &[
            "ID", "STATE", "TARGET", "ACTOR", "STARTED", "FINISHED", "REASON", "OUTCOME",
        ],
        &rows,
    )
}

pub fn releases(list: &[ReleaseSummary], now: i64) -> String {
    if list.is_empty() {
        return "no releases pushed\n".to_owned();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            let (service, version, digest) = r.release.as_ref().map_or_else(
                || ("?".to_owned(), "-".to_owned(), "-".to_owned()),
                |r| (r.service.clone(), or_dash(&r.version), or_dash(&r.digest)),
            );
            vec![
                service,
                version,
                if r.signed { "yes" } else { "no" }.to_owned(),
                r.size.to_string(),
                age(r.pushed_unix_ms, now),
                r.holders.len().to_string(),
                digest,
            ]
        })
        .collect();
    table(
        &[
            "SERVICE", "VERSION", "SIGNED", "BYTES", "PUSHED", "COPIES", "DIGEST",
        ],
        &rows,
    )
}

/// One service's view across a cluster, for `status`.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServiceRollup {
    pub service: String,
    /// `version/digest-short` -> number of agents running it.
    pub releases: BTreeMap<String, usize>,
    pub ready: usize,
    pub instances: usize,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClusterRollup {
    pub cluster: String,
    pub agents: usize,
    pub reachable: usize,
    pub services: Vec<ServiceRollup>,
}

/// Agents folded into one line per (cluster, service).
pub fn rollup(list: &[AgentSummary]) -> Vec<ClusterRollup> {
    let mut clusters: BTreeMap<String, (ClusterRollup, BTreeMap<String, ServiceRollup>)> =
        BTreeMap::new();
    for a in list {
        let cluster = a
            .identity
            .as_ref()
            .map_or_else(String::new, |i| i.cluster.clone());
        let (c, services) = clusters.entry(cluster.clone()).or_insert_with(|| {
            (
                ClusterRollup {
                    cluster,
                    ..ClusterRollup::default()
                },
                BTreeMap::new(),
            )
        });
        c.agents += 1;
        if a.reachable {
            c.reachable += 1;
        }
        // Assigned but not installed still belongs in the picture.
        let assigned = a.identity.iter().flat_map(|i| i.services.iter());
        for name in assigned {
            services
                .entry(name.clone())
                .or_insert_with(|| ServiceRollup {
                    service: name.clone(),
                    ..ServiceRollup::default()
                });
        }
        for s in &a.services {
            let r = services
                .entry(s.service.clone())
                .or_insert_with(|| ServiceRollup {
                    service: s.service.clone(),
                    ..ServiceRollup::default()
                });
            let release = s
                .current
                .as_ref()
                .map_or_else(|| "-".to_owned(), |c| release_short(&c.version, &c.digest));
            *r.releases.entry(release).or_default() += 1;
            let (ready, total) = ready_of(s);
            r.ready += ready;
            r.instances += total;
        }
    }
    clusters
        .into_values()
        .map(|(mut c, services)| {
            c.services = services.into_values().collect();
            c
        })
        .collect()
}

/// One row per (cluster, service): agents up, instances ready, releases.
fn fleet_table(clusters: &[ClusterRollup]) -> String {
    let mut rows = Vec::new();
    for c in clusters {
        let agents = format!("{}/{}", c.reachable, c.agents);
        if c.services.is_empty() {
            rows.push(vec![
                or_dash(&c.cluster),
                agents.clone(),
                "-".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
            ]);
        }
        for s in &c.services {
            let releases: Vec<String> = s
                .releases
                .iter()
                .map(|(r, n)| format!("{r} x{n}"))
                .collect();
            rows.push(vec![
                or_dash(&c.cluster),
                agents.clone(),
                s.service.clone(),
                format!("{}/{}", s.ready, s.instances),
                if releases.is_empty() {
                    "not installed".to_owned()
                } else {
                    releases.join(", ")
                },
            ]);
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    table(
        &["CLUSTER", "AGENTS UP", "SERVICE", "READY", "RELEASES"],
        &rows,
    )
}

/// `lockstep status`: the fleet per cluster, then who deploys what.
/// `lockstep status`: the fleet per cluster, then the deployments in
/// progress with their `states` (deployment id -> state, e.g. `paused`;
/// `?` when it could not be read).
pub fn status(
    list: &[AgentSummary],
    locks: &[LockInfo],
    states: &BTreeMap<String, String>,
    now: i64,
) -> String {
    let mut out = String::new();
    let clusters = rollup(list);
    if clusters.is_empty() {
        out.push_str("no agents have registered\n");
    }
    out.push_str(&fleet_table(&clusters));
    out.push('\n');
    let deploy_locks: Vec<&LockInfo> = locks
        .iter()
        .filter(|l| l.kind == LockKind::Deployment as i32)
        .collect();
    if deploy_locks.is_empty() {
        out.push_str("no deployment in progress\n");
    } else {
        let rows: Vec<Vec<String>> = deploy_locks
            .iter()
            .map(|l| {
                vec![
                    key_name(&l.key).to_owned(),
                    or_dash(&l.purpose),
                    states
                        .get(&l.purpose)
                        .cloned()
                        .unwrap_or_else(|| "?".to_owned()),
                    holder(l.holder.as_ref()),
                    age(l.since_unix_ms, now),
                    lock_ttl(l),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "SERVICE",
                "DEPLOYMENT",
                "STATE",
                "HOLDER",
                "SINCE",
                "TTL LEFT",
            ],
            &rows,
        ));
    }
    if let Some(leader) = locks.iter().find(|l| l.kind == LockKind::Leader as i32) {
        out.push_str(&format!(
            "leader: {} (since {})\n",
            holder(leader.holder.as_ref()),
            age(leader.since_unix_ms, now)
        ));
    }
    out
}

/// Who started a deployment: `user@host`, or the coordinator's verified
/// description alone when it records no host (an identity from a
/// certificate or a plain-text peer, with the caller's claim beside it).
fn actor_name(a: &proto::v1::Actor) -> String {
    if a.host.is_empty() {
        a.user.clone()
    } else {
        format!("{}@{}", a.user, a.host)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use proto::v1::{
        Actor, AgentIdentity, ClusterProgress, InstanceRef, InstanceStatus, ReleaseRef,
        ServiceStatus,
    };

    use super::*;

    const NOW: i64 = 1_709_210_096_000;
    fn digest() -> String {
        format!("sha256:{}", "ab".repeat(32))
    }

    fn lock() -> LockInfo {
        LockInfo {
            kind: LockKind::Deployment as i32,
            key: "/lockstep/v1/locks/deploy/web".to_owned(),
            holder: Some(LockHolder {
                host: "coord-1".to_owned(),
                pid: 812,
                user: "alice".to_owned(),
            }),
            purpose: "d-41".to_owned(),
            since_unix_ms: NOW - 192_000,
            ttl_left_ms: 8_400,
            fencing_token: 17,
            leaseless: false,
        }
    }

    fn agent(id: &str, cluster: &str, ready: &[bool]) -> AgentSummary {
        AgentSummary {
            identity: Some(AgentIdentity {
                agent_id: id.to_owned(),
                cluster: cluster.to_owned(),
                services: vec!["web".to_owned(), "api".to_owned()],
                ..AgentIdentity::default()
            }),
            reachable: true,
            last_report_unix_ms: NOW - 2_000,
            services: vec![ServiceStatus {
                service: "web".to_owned(),
                current: Some(ReleaseRef {
                    service: "web".to_owned(),
                    digest: digest(),
                    version: "1.4.2".to_owned(),
                }),
                instances: ready
                    .iter()
                    .enumerate()
                    .map(|(slot, r)| InstanceStatus {
                        instance: Some(InstanceRef {
                            agent_id: id.to_owned(),
                            service: "web".to_owned(),
                            slot: u32::try_from(slot).unwrap(),
                        }),
                        ready: *r,
                        ..InstanceStatus::default()
                    })
                    .collect(),
                ..ServiceStatus::default()
            }],
        }
    }

    #[test]
    fn exit_codes_follow_the_outcome() {
        assert_eq!(exit_code_for(DeploymentState::Succeeded as i32), Some(0));
        assert_eq!(exit_code_for(DeploymentState::RolledBack as i32), Some(3));
        assert_eq!(exit_code_for(DeploymentState::Aborted as i32), Some(4));
        assert_eq!(exit_code_for(DeploymentState::Failed as i32), Some(5));
        assert_eq!(exit_code_for(DeploymentState::Running as i32), None);
        assert_eq!(exit_code_for(DeploymentState::RollingBack as i32), None);
        assert_eq!(exit_code_for(42), None);
        assert_eq!(exit_code_or_failed(42), 1);
    }

    #[test]
    fn locked_names_holder_purpose_age_and_ttl() {
        let text = locked("web", Some(&lock()), NOW);
        assert!(text.contains("alice@coord-1 (pid 812)"), "{text}");
        assert!(text.contains("purpose:  d-41"), "{text}");
        assert!(text.contains("3m12s ago"), "{text}");
        assert!(text.contains("ttl left: 8s"), "{text}");
        assert!(text.contains("lockstep watch d-41"), "{text}");
        assert!(text.contains("lockstep locks break web --reason"), "{text}");
    }

    #[test]
    fn locks_table() {
        let text = locks(&[lock()], NOW);
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "KIND        KEY                            HOLDER                   PURPOSE  AGE        TTL LEFT  TOKEN"
        );
        assert_eq!(
            lines.next().unwrap(),
            "deployment  /lockstep/v1/locks/deploy/web  alice@coord-1 (pid 812)  d-41     3m12s ago  8s        17"
        );
        assert_eq!(locks(&[], NOW), "no locks are held\n");
    }

    /// Issue #15 deliver 4: at 1,000 hosts `lockstep agents` printed a
    /// thousand rows; above AGENTS_LISTED it summarises per cluster and
    /// lists only the agents that need attention.
    #[test]
    fn a_large_fleet_is_summarised_with_the_agents_that_need_attention() {
        let mut list: Vec<AgentSummary> = (0..120)
            .map(|i| agent(&format!("host-{i:03}"), &format!("c-{}", i % 3), &[true]))
            .collect();
        list[7].reachable = false;
        list[8] = agent("host-008", "c-2", &[false]);
        let text = agents_summary(&list, NOW);
        assert!(text.starts_with("120 agents, per cluster"), "{text}");
        let c1 = text.lines().find(|l| l.starts_with("c-1")).unwrap();
        assert!(c1.contains("39/40"), "{text}");
        assert!(
            text.contains("2 agents unreachable or not ready:"),
            "{text}"
        );
        assert!(
            text.contains("host-007") && text.contains("host-008"),
            "{text}"
        );
        assert!(!text.contains("host-009"), "{text}");
        assert!(text.lines().count() < 20, "{text}");
    }

    #[test]
    fn agents_table_shows_release_and_readiness() {
        let text = agents(&[agent("host-a", "eu-1", &[true, false])], NOW);
        let row = text.lines().nth(1).unwrap();
        assert!(
            row.starts_with("host-a  eu-1     yes        2s ago"),
            "{row}"
        );
        assert!(row.ends_with("web 1.4.2/abababababab 1/2"), "{row}");
    }

    #[test]
    fn status_rolls_agents_up_per_cluster() {
        let list = [
            agent("a", "eu-1", &[true, true]),
            agent("b", "eu-1", &[true, false]),
            agent("c", "us-1", &[true]),
        ];
        let r = rollup(&list);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].agents, 2);
        let web = r[0].services.iter().find(|s| s.service == "web").unwrap();
        assert_eq!((web.ready, web.instances), (3, 4));
        assert_eq!(web.releases.get("1.4.2/abababababab"), Some(&2));
        let api = r[0].services.iter().find(|s| s.service == "api").unwrap();
        assert!(api.releases.is_empty());
        let states = BTreeMap::from([("d-41".to_owned(), "awaiting_approval".to_owned())]);
        let text = status(&list, &[lock()], &states, NOW);
        assert!(
            text.contains("eu-1     2/2        web      3/4    1.4.2/abababababab x2"),
            "{text}"
        );
        assert!(text.contains("not installed"), "{text}");
        assert!(
            text.contains("web      d-41        awaiting_approval"),
            "{text}"
        );
        assert!(text.contains("STATE"), "{text}");
    }

    #[test]
    fn deployment_renders_progress() {
        let d = Deployment {
            id: "d-42".to_owned(),
            service: "web".to_owned(),
            target: Some(ReleaseRef {
                service: "web".to_owned(),
                digest: digest(),
                version: "1.4.3".to_owned(),
            }),
            state: DeploymentState::RolledBack as i32,
            reason: "JIRA-7".to_owned(),
            outcome: "canary check failed".to_owned(),
            fencing_token: 18,
            actor: Some(Actor {
                user: "bob".to_owned(),
                host: "laptop".to_owned(),
            }),
            created_unix_ms: NOW - 60_000,
            finished_unix_ms: NOW,
            clusters: vec![ClusterProgress {
                cluster: "eu-1".to_owned(),
                instances: 4,
                on_target: 0,
                failed: 1,
            }],
        };
        let text = deployment(&d, NOW);
        assert!(text.contains("state:    rolled_back"), "{text}");
        assert!(text.contains("reason:   JIRA-7"), "{text}");
        assert!(text.contains("outcome:  canary check failed"), "{text}");
        assert!(text.contains("took 1m00s"), "{text}");
        assert!(text.contains("  eu-1     0/4        1"), "{text}");
        assert_eq!(
            finished_line(&d),
            "deployment d-42 rolled back: canary check failed"
        );
        let h = history(
            &[HistoryEntry {
                seq: 3,
                deployment: Some(d),
            }],
            "web",
        );
        assert!(
            h.contains("d-42  rolled_back  1.4.3/abababababab  bob@laptop"),
            "{h}"
        );
    }

    #[test]
    fn a_failures_log_lines_are_shown_once() {
        let event = |kind: DeploymentEventKind| DeploymentEvent {
            seq: 4,
            at_unix_ms: NOW,
            deployment_id: "d-1".to_owned(),
            kind: kind as i32,
            state: DeploymentState::RollingBack as i32,
            cluster: String::new(),
            instance: None,
            message: "instance a failed: exited 78\nlast log lines:\nunknown key".to_owned(),
        };
        let failed = event_line(&event(DeploymentEventKind::InstanceFailed));
        assert!(failed.contains("unknown key"), "{failed}");
        let rollback = event_line(&event(DeploymentEventKind::RollbackStarted));
        assert!(
            rollback.ends_with("instance a failed: exited 78"),
            "{rollback}"
        );
        let d = Deployment {
            id: "d-1".to_owned(),
            state: DeploymentState::RolledBack as i32,
            outcome: "rolled_back: instance a failed: exited 78\nunknown key".to_owned(),
            ..Default::default()
        };
        assert_eq!(
            finished_line(&d),
            "deployment d-1 rolled back: instance a failed: exited 78"
        );
    }

    #[test]
    fn event_lines() {
        let e = DeploymentEvent {
            seq: 7,
            at_unix_ms: NOW,
            deployment_id: "d-1".to_owned(),
            kind: proto::v1::DeploymentEventKind::InstanceReady as i32,
            state: DeploymentState::Running as i32,
            cluster: "eu-1".to_owned(),
            instance: Some(InstanceRef {
                agent_id: "host-a".to_owned(),
                service: "web".to_owned(),
                slot: 0,
            }),
            message: "ready in 1.2s".to_owned(),
        };
        assert_eq!(
            event_line(&e),
            "12:34:56Z #7 instance_ready eu-1 host-a/web#0 (running): ready in 1.2s"
        );
    }

    #[test]
    fn key_names() {
        assert_eq!(key_name("/lockstep/v1/locks/deploy/web"), "web");
        assert_eq!(key_name("web/"), "web");
        assert_eq!(key_name(""), "");
    }

    #[test]
    fn an_actor_without_a_host_is_shown_without_an_at_sign() {
        let verified = Actor {
            user: "plain-text caller 127.0.0.1:4000 (claims: root@vm)".into(),
            host: String::new(),
        };
        assert_eq!(
            actor_name(&verified),
            "plain-text caller 127.0.0.1:4000 (claims: root@vm)"
        );
        let claimed = Actor {
            user: "alice".into(),
            host: "ops-1".into(),
        };
        assert_eq!(actor_name(&claimed), "alice@ops-1");
    }
}
