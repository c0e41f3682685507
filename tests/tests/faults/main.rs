//! Fault tests on a fleet of network namespaces (#18 deliver 7): every
//! etcd member, coordinator and agent in a node of its own on a
//! [`NetnsLab`]'s bridge, the test body in an operator node, a client on
//! every demo app the whole time. Each test breaks one thing mid-rollout
//! and checks that the deployment completes with no failed client request
//! and, at the end, that no deployment lock, budget slot or agent
//! registration is left that nothing holds.
//!
//! | fault | test |
//! |---|---|
//! | an agent killed (kill -9) mid-switch | `an_agent_killed_mid_switch_gets_the_apply_again_and_the_rollout_completes` |
//! | the etcd leader member unplugged | `the_etcd_leader_unplugged_mid_rollout_does_not_stop_it` |
//! | an etcd follower killed (kill -9) | `an_etcd_follower_killed_mid_rollout_does_not_stop_it` |
//! | an etcd member paused (SIGSTOP) for 10 s | `an_etcd_member_paused_for_ten_seconds_mid_rollout_leaves_nothing_behind` |
//! | the leading coordinator partitioned from etcd, its Apply held in transit and delivered after the takeover | `a_leader_cut_off_from_etcd_is_replaced_and_its_late_apply_is_refused` |
//! | the leading coordinator frozen until the standby took over, then woken | `a_frozen_leader_that_wakes_after_the_takeover_changes_nothing` |
//! | an agent's downloads on a disk too small for a release | `a_release_too_big_for_an_agents_disk_rolls_back_and_the_next_one_deploys` |
//!
//! Runs as root (namespaces, nftables); skips with the reason elsewhere.
//! One at a time (`.config/nextest.toml`): each lab runs 3 etcd members,
//! 2 coordinators and 4 agents with their apps.

// Test helpers panic on failure: the panic is the test's report.
#![allow(clippy::unwrap_used)]

mod soak;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coordinator::fault_injection::HOLD_APPLY_ENV;
use lockstep_tests::http::Poller;
use lockstep_tests::operator::{
    agents_known, budget_keys, deploy_lock, every_host_serves, finished, leader_url, on_target,
    push, record, start_deploy, text, until_leading,
};
use lockstep_tests::{
    CoordinatorFixture, DEMO_SERVICE, DemoRelease, EtcdCluster, FleetFixture, LabNode, NetnsLab,
    Place, lockstep, wait_for,
};

/// Generous, for a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(120);
/// The coordinators' etcd lease: a partitioned leader loses its
/// leadership this long after its last keep-alive.
const COORDINATOR_TTL_SECS: u64 = 5;
/// The agents' etcd lease: 3 s cannot survive an etcd leader election
/// under load.
const AGENT_TTL: &str = "10s";
/// Every host overrides the release's listen address with its own.
const ANY_PORT: u16 = 1;
/// Two clusters of two.
const LAYOUT: &[(&str, &str)] = &[
    ("eu-1", "eu"),
    ("eu-2", "eu"),
    ("us-1", "us"),
    ("us-2", "us"),
];
/// Every rollout's `healthy_deadline`: one that waits it out fails the
/// test's own deadlines first.
const HEALTHY_DEADLINE: Duration = Duration::from_secs(300);
/// How long the paused etcd member stays paused.
const PAUSE: Duration = Duration::from_secs(10);
/// The filler that makes a release too big for the small disk.
const TOO_BIG: usize = 16 << 20;
/// What the small disk holds besides one normal-size release.
const SMALL_DISK_ROOM: u64 = 2 << 20;

/// The namespaces of one test: nothing runs in them yet.
struct Nodes {
    lab: Arc<NetnsLab>,
    operator: LabNode,
    etcd: Vec<LabNode>,
    coordinators: Vec<LabNode>,
    agents: Vec<LabNode>,
}

/// The lab's nodes, or `None` (with the reason printed) where network
/// namespaces cannot be made.
fn nodes() -> Option<Nodes> {
    if let Some(why) = NetnsLab::unavailable() {
        eprintln!("skipped: {why}");
        return None;
    }
    let mut lab = NetnsLab::new().unwrap();
    let operator = lab.add_node("operator").unwrap();
    let etcd = (0..3)
        .map(|i| lab.add_node(&format!("etcd-{i}")).unwrap())
        .collect();
    let coordinators = (0..2)
        .map(|i| lab.add_node(&format!("coordinator-{i}")).unwrap())
        .collect();
    let agents = LAYOUT
        .iter()
        .map(|(id, _)| lab.add_node(id).unwrap())
        .collect();
    Some(Nodes {
        lab: Arc::new(lab),
        operator,
        etcd,
        coordinators,
        agents,
    })
}

/// Runs `body` in the operator node with the lab's fleet started; the
/// lab (and everything in it) is removed afterwards.
fn in_lab<F, Fut>(name: &str, body: F)
where
    F: FnOnce(Nodes, Fleet) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(nodes) = nodes() else {
        return;
    };
    let started = Instant::now();
    let lab = nodes.lab.clone();
    let operator = nodes.operator.clone();
    lab.run(&operator, async move {
        let fleet = Fleet::start(&nodes).await;
        body(nodes, fleet).await;
    })
    .unwrap();
    drop(lab);
    eprintln!("{name}: {:.1?} in all", started.elapsed());
}

/// Everything the lab runs, started and on release 1.0.0, with a client
/// on every demo app.
struct Fleet {
    etcd: EtcdCluster,
    /// The first leads, the second stands by.
    coordinators: Vec<CoordinatorFixture>,
    urls: Vec<String>,
    fleet: FleetFixture,
    work: tempfile::TempDir,
    /// The first coordinator's Apply hold file (`LOCKSTEP_FAULT_HOLD_APPLY`,
    /// `coordinator/src/fault_injection.rs`): while it names a release,
    /// that coordinator's Applies of it are held in transit.
    hold_apply: PathBuf,
    /// 1.0.0's digest.
    d1: String,
    pollers: Vec<(String, Poller)>,
}

impl Fleet {
    async fn start(nodes: &Nodes) -> Self {
        let places: Vec<Place> = nodes.etcd.iter().map(Place::from).collect();
        let etcd = EtcdCluster::placed(&places).await.unwrap();
        let endpoints = etcd.endpoints();
        let work = tempfile::tempdir().unwrap();
        let hold_apply = work.path().join("hold-apply");
        let mut coordinators = Vec::new();
        for node in &nodes.coordinators {
            let env: &[(&str, &Path)] = if coordinators.is_empty() {
                &[(HOLD_APPLY_ENV, &hold_apply)]
            } else {
                &[]
            };
            let coordinator = CoordinatorFixture::start_placed_with_env(
                &endpoints,
                COORDINATOR_TTL_SECS,
                &Place::from(node),
                // The operator's node is not loopback.
                "insecure_operators = true",
                env,
            )
            .await
            .unwrap();
            if coordinators.is_empty() {
                until_leading(&etcd, &coordinator.url()).await.unwrap();
            }
            coordinators.push(coordinator);
        }
        let urls: Vec<String> = coordinators.iter().map(CoordinatorFixture::url).collect();
        let layout: Vec<(&str, &str, Place)> = LAYOUT
            .iter()
            .zip(&nodes.agents)
            .map(|((id, cluster), node)| (*id, *cluster, Place::from(node)))
            .collect();
        let fleet = FleetFixture::start_placed(&layout, &endpoints, &urls, AGENT_TTL)
            .await
            .unwrap();
        agents_known(&urls, LAYOUT.len()).await.unwrap();
        let v1 = DemoRelease::new("1.0.0", ANY_PORT)
            .build(work.path())
            .unwrap();
        let d1 = push(&urls, &v1).await.unwrap();
        let quick = strategy(work.path(), "quick", "500ms");
        let id = start_deploy(&urls, &d1, &quick).await.unwrap();
        let r = finished(&etcd, &id).await.unwrap();
        assert_eq!(r["state"], "succeeded", "{r}");
        let pollers = fleet
            .hosts
            .iter()
            .map(|h| (h.id.clone(), Poller::start(h.addr())))
            .collect();
        Self {
            etcd,
            coordinators,
            urls,
            fleet,
            work,
            hold_apply,
            d1,
            pollers,
        }
    }

    /// Pushes 2.0.0 (with `config` lines) and starts its rollout with
    /// `strategy`; the deployment id and the digest.
    async fn roll_out_v2(&self, config: &str, strategy: &Path) -> (String, String) {
        let v2 = DemoRelease::new("2.0.0", ANY_PORT)
            .with_config(config)
            .build(self.work.path())
            .unwrap();
        let d2 = push(&self.urls, &v2).await.unwrap();
        let id = start_deploy(&self.urls, &d2, strategy).await.unwrap();
        (id, d2)
    }

    /// Waits until the deployment runs with at least one instance on its
    /// target; its fencing token.
    async fn under_way(&self, id: &str) -> u64 {
        wait_for("the first instance to be on 2.0.0", DEADLINE, || async {
            let r = record(&self.etcd, id).await.map_err(|e| e.to_string())?;
            match (r["state"].as_str(), r["token"].as_u64()) {
                (Some("running"), Some(token)) if on_target(&r) >= 1 => Ok(token),
                _ => Err(format!("{r}")),
            }
        })
        .await
        .unwrap()
    }

    /// Waits until the first coordinator holds an Apply (see
    /// `hold_apply`); the agent it is for and its fencing token.
    async fn held_apply(&self) -> (String, u64) {
        let mut marker = self.hold_apply.clone().into_os_string();
        marker.push(".held");
        let marker = PathBuf::from(marker);
        wait_for("the leader to hold an Apply", DEADLINE, || async {
            let text = std::fs::read_to_string(&marker).map_err(|e| {
                format!(
                    "{}: {e} (is lockstep-coordinator built with its `fault-injection` feature? `cargo build --workspace --bins` does that)",
                    marker.display()
                )
            })?;
            let first = text.lines().next().unwrap_or_default();
            match first.split_whitespace().collect::<Vec<_>>()[..] {
                [agent, _release, token] => token
                    .parse::<u64>()
                    .map(|t| (agent.to_owned(), t))
                    .map_err(|e| format!("{first:?}: {e}")),
                _ => Err(format!("{first:?} is not `agent release token`")),
            }
        })
        .await
        .unwrap()
    }

    /// Waits for the deployment to end; fails unless it succeeded and
    /// every host serves 2.0.0. The final record.
    async fn succeeded(&self, id: &str) -> serde_json::Value {
        let r = finished(&self.etcd, id).await.unwrap();
        assert_eq!(r["state"], "succeeded", "{r}");
        every_host_serves(&self.fleet, "2.0.0").await.unwrap();
        r
    }

    /// No client request failed; nothing is left that nothing holds: no
    /// deployment lock, no budget slot, and exactly one registration per
    /// agent, each on a live lease.
    async fn nothing_left(mut self) {
        for (host, poller) in std::mem::take(&mut self.pollers) {
            let report = poller.stop().await;
            assert_eq!(
                report.failed, 0,
                "a client of {host} saw failures: {report:?}"
            );
            assert!(
                report.succeeded > 0,
                "the client of {host} never got through"
            );
        }
        self.leftovers().await.unwrap();
        for coordinator in &self.coordinators {
            let log = coordinator.log_text();
            assert!(!log.contains("panicked"), "a coordinator panicked:\n{log}");
        }
    }
}

impl Fleet {
    /// Waits until no deployment lock, no budget slot and exactly one
    /// registration per agent, on a live lease, are left; an error naming
    /// what is left when that does not happen within [`DEADLINE`].
    async fn leftovers(&self) -> Result<(), String> {
        let etcd = &self.etcd;
        wait_for("no deployment lock", DEADLINE, || async {
            match deploy_lock(etcd).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(held) => Err(format!("held: {held:?}")),
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        wait_for("no budget slot", DEADLINE, || async {
            let keys = budget_keys(etcd).await.map_err(|e| e.to_string())?;
            if keys.is_empty() {
                Ok(())
            } else {
                Err(format!("left: {keys:?}"))
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        let expected: BTreeSet<String> = LAYOUT.iter().map(|(id, _)| (*id).to_owned()).collect();
        wait_for("one live registration per agent", DEADLINE, || async {
            let found = registrations(etcd).await?;
            if found == expected {
                Ok(())
            } else {
                Err(format!("registered on live leases: {found:?}"))
            }
        })
        .await
        .map_err(|e| e.to_string())
    }
}

/// The ids registered under `/lockstep/v1/agents/`; an error for a key on
/// no lease or on a lease that is gone.
async fn registrations(etcd: &EtcdCluster) -> Result<BTreeSet<String>, String> {
    let mut client = etcd.client().await.map_err(|e| e.to_string())?;
    let prefix = "/lockstep/v1/agents/";
    let response = client
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .map_err(|e| e.to_string())?;
    let mut ids = BTreeSet::new();
    for kv in response.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let live = kv.lease() != 0
            && client
                .lease_time_to_live(kv.lease(), None)
                .await
                .map_err(|e| e.to_string())?
                .ttl()
                > 0;
        if !live {
            return Err(format!(
                "{key} is on lease {} that nothing holds",
                kv.lease()
            ));
        }
        ids.insert(key.trim_start_matches(prefix).to_owned());
    }
    Ok(ids)
}

/// A strategy file with [`HEALTHY_DEADLINE`].
fn strategy(dir: &Path, name: &str, min_healthy_time: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[strategy]\nmin_healthy_time = \"{min_healthy_time}\"\nhealthy_deadline = \"{}s\"\n",
            HEALTHY_DEADLINE.as_secs()
        ),
    )
    .unwrap();
    path
}

/// (a) #18 Seen 6: an agent killed with SIGKILL while its switch to a
/// release slow to become ready is in flight, and started again. The
/// coordinator re-sends the apply when it returns; the deployment
/// succeeds without waiting out `healthy_deadline` (5 min).
#[test]
fn an_agent_killed_mid_switch_gets_the_apply_again_and_the_rollout_completes() {
    in_lab("agent killed mid-switch", |_nodes, mut fleet| async move {
        let quick = strategy(fleet.work.path(), "quick-2", "500ms");
        // Ready only after 4 s: each switch is in flight long enough to
        // kill its agent inside it.
        let (id, _) = fleet
            .roll_out_v2("[faults]\nready_after_ms = 4000\n", &quick)
            .await;
        let hosts = &fleet.fleet.hosts;
        let switching = wait_for("an agent to be switching to 2.0.0", DEADLINE, || async {
            for (index, host) in hosts.iter().enumerate() {
                let status = host
                    .agent
                    .agentctl_json(&["status", DEMO_SERVICE])
                    .await
                    .map_err(|e| e.to_string())?;
                if status["services"][0]["switch"] == "switching" {
                    return Ok(index);
                }
            }
            Err("none switching".to_owned())
        })
        .await
        .unwrap();
        let killed_at = Instant::now();
        let host = &mut fleet.fleet.hosts[switching];
        host.agent.kill().await.unwrap();
        host.agent.start_again().await.unwrap();
        fleet.succeeded(&id).await;
        let took = killed_at.elapsed();
        eprintln!(
            "killed {}; the deployment ended {took:.1?} later",
            fleet.fleet.hosts[switching].id
        );
        assert!(took < HEALTHY_DEADLINE, "waited out the deadline: {took:?}");
        let watch = text(&lockstep(&fleet.urls, &["watch", &id]).await.unwrap());
        assert!(
            watch.contains("sent again"),
            "the apply was sent again: {watch}"
        );
        fleet.nothing_left().await;
    });
}

/// (b) #18 Seen 1: the etcd leader member's link cut while a rollout is
/// under way. The members left elect a leader, the daemons fail over to
/// them, and the rollout completes.
#[test]
fn the_etcd_leader_unplugged_mid_rollout_does_not_stop_it() {
    in_lab("etcd leader unplugged", |nodes, mut fleet| async move {
        let lab = &nodes.lab;
        let steady = strategy(fleet.work.path(), "steady", "2s");
        let (id, _) = fleet.roll_out_v2("", &steady).await;
        fleet.under_way(&id).await;
        let leader = fleet.etcd.leader().await.unwrap();
        let unplugged_at = Instant::now();
        let unplugged_wall = std::time::SystemTime::now();
        fleet.etcd.set_reachable(leader, false).unwrap();
        lab.unplug(&nodes.etcd[leader]).unwrap();
        fleet.succeeded(&id).await;
        eprintln!(
            "unplugged etcd member {leader}; the deployment ended {:.1?} later",
            unplugged_at.elapsed()
        );
        for (n, coordinator) in fleet.coordinators.iter().enumerate() {
            for (offset, line) in leadership_since(&coordinator.log_text(), unplugged_wall) {
                eprintln!("coordinator-{n} at +{offset:.1}s: {line}");
            }
        }
        lab.plug(&nodes.etcd[leader]).unwrap();
        fleet.etcd.set_reachable(leader, true).unwrap();
        fleet.etcd.wait_healthy(leader).await.unwrap();
        fleet.nothing_left().await;
    });
}

/// (b') #18 Seen 1, a follower: an etcd member that does not lead killed
/// (SIGKILL) mid-rollout; the rollout completes, and the member, started
/// again, rejoins.
#[test]
fn an_etcd_follower_killed_mid_rollout_does_not_stop_it() {
    in_lab("etcd follower killed", |_nodes, mut fleet| async move {
        let steady = strategy(fleet.work.path(), "steady", "2s");
        let (id, _) = fleet.roll_out_v2("", &steady).await;
        fleet.under_way(&id).await;
        let leader = fleet.etcd.leader().await.unwrap();
        let follower = (leader + 1) % fleet.etcd.len();
        let killed_at = Instant::now();
        fleet.etcd.kill(follower).unwrap();
        fleet.succeeded(&id).await;
        eprintln!(
            "killed etcd member {follower} (a follower); the deployment ended {:.1?} later",
            killed_at.elapsed()
        );
        fleet.etcd.restart(follower).await.unwrap();
        fleet.nothing_left().await;
    });
}

/// (c) #18 Seen 2 and 3: the etcd leader member frozen (SIGSTOP) for
/// 10 s while a rollout writes its journal: the writes are retried, the
/// rollout completes, and no lock or slot outlives it.
#[test]
fn an_etcd_member_paused_for_ten_seconds_mid_rollout_leaves_nothing_behind() {
    in_lab("etcd member paused", |_nodes, mut fleet| async move {
        let steady = strategy(fleet.work.path(), "steady", "2s");
        let (id, _) = fleet.roll_out_v2("", &steady).await;
        fleet.under_way(&id).await;
        let member = fleet.etcd.leader().await.unwrap();
        let before = record(&fleet.etcd, &id).await.unwrap();
        let paused_at = Instant::now();
        fleet.etcd.pause(member).unwrap();
        // Paused for PAUSE at least, and across a journal write: the
        // record changed (on the members left) while the member slept.
        let etcd = &fleet.etcd;
        wait_for("a journal write during a 10 s pause", DEADLINE, || async {
            let now = record(etcd, &id).await.map_err(|e| e.to_string())?;
            let elapsed = paused_at.elapsed();
            if now != before && elapsed >= PAUSE {
                Ok(())
            } else {
                Err(format!("{elapsed:.1?} paused; record {now}"))
            }
        })
        .await
        .unwrap();
        fleet.etcd.resume(member).unwrap();
        fleet.succeeded(&id).await;
        eprintln!(
            "paused etcd member {member}; the deployment ended {:.1?} after the pause began",
            paused_at.elapsed()
        );
        fleet.etcd.wait_healthy(member).await.unwrap();
        fleet.nothing_left().await;
    });
}

/// (d) #18 deliver 7, "leader partitioned from etcd -> standby completes,
/// stale Apply refused (make the old leader actually send one)". The
/// leading coordinator's Apply of the canary's rehearsal (back to 1.0.0)
/// is held in transit by its fault-injection point; the leader is then
/// cut off from every etcd member (nftables) but not from the agents: it
/// steps down, the standby takes over with a higher token and completes
/// the deployment. The partition heals and the held Apply goes out with
/// the old token: the agent refuses it as stale, and neither that host
/// (its release, its durable state) nor the finished deployment changes.
#[test]
fn a_leader_cut_off_from_etcd_is_replaced_and_its_late_apply_is_refused() {
    in_lab("leader partitioned from etcd", |nodes, fleet| async move {
        let lab = &nodes.lab;
        let steady = strategy(fleet.work.path(), "steady", "2s");
        std::fs::write(&fleet.hold_apply, &fleet.d1).unwrap();
        let (id, _) = fleet.roll_out_v2("", &steady).await;
        let (held_on, old_token) = fleet.held_apply().await;
        let cut_at = Instant::now();
        for member in &nodes.etcd {
            lab.partition(&nodes.coordinators[0], member).unwrap();
        }
        let r = fleet.succeeded(&id).await;
        eprintln!(
            "cut the leader off etcd; the deployment ended {:.1?} later",
            cut_at.elapsed()
        );
        let new_token = r["token"].as_u64().unwrap();
        assert!(
            new_token > old_token,
            "resumed with token {new_token} after {old_token}"
        );
        assert_eq!(leader_url(&fleet.etcd).await, Some(fleet.urls[1].clone()));
        let old_leader = &fleet.coordinators[0];
        wait_for("the old leader to step down", DEADLINE, || async {
            if old_leader.log_text().contains("leadership lost") {
                Ok(())
            } else {
                Err("its log does not say `leadership lost`")
            }
        })
        .await
        .unwrap();

        let host = fleet.fleet.host(&held_on).unwrap();
        let state_file = host.agent.dir().join("data").join("state.json");
        let state_before = std::fs::read(&state_file).unwrap();
        for member in &nodes.etcd {
            lab.heal(member).unwrap();
        }
        lab.heal(&nodes.coordinators[0]).unwrap();
        std::fs::remove_file(&fleet.hold_apply).unwrap();
        let delivered = wait_for("the held Apply to be delivered", DEADLINE, || async {
            old_leader
                .log_text()
                .lines()
                .find(|l| l.contains("held Apply delivered"))
                .map(str::to_owned)
                .ok_or("the old leader's log does not say `held Apply delivered`")
        })
        .await
        .unwrap();
        eprintln!("the old leader's late Apply: {delivered}");
        assert!(
            delivered.contains("StaleFencingToken")
                && delivered.contains(&format!(
                    "fencing token {old_token} is older than {new_token}"
                )),
            "{held_on} refused token {old_token} as stale: {delivered}"
        );
        assert_eq!(
            std::fs::read(&state_file).unwrap(),
            state_before,
            "{held_on}'s durable state changed"
        );
        every_host_serves(&fleet.fleet, "2.0.0").await.unwrap();
        let after = record(&fleet.etcd, &id).await.unwrap();
        assert_eq!(after["state"], "succeeded", "{after}");
        assert_eq!(after["token"].as_u64(), Some(new_token), "{after}");
        fleet.nothing_left().await;
    });
}

/// (d') The leading coordinator frozen (SIGSTOP) mid-rollout until the
/// standby has taken over and completed the deployment, then woken: the
/// old leader's driver resumes where it stopped, with its old token.
/// Whatever it sends is refused (an Apply: the agents have seen the
/// standby's token; a journal write: fenced in etcd), it steps down, and
/// the deployment's record, the hosts and the locks stay as the standby
/// left them.
#[test]
fn a_frozen_leader_that_wakes_after_the_takeover_changes_nothing() {
    in_lab("frozen leader wakes", |_nodes, fleet| async move {
        let steady = strategy(fleet.work.path(), "steady", "2s");
        let (id, _) = fleet.roll_out_v2("", &steady).await;
        let old_token = fleet.under_way(&id).await;
        let old_leader = &fleet.coordinators[0];
        old_leader.pause().unwrap();
        let r = fleet.succeeded(&id).await;
        let new_token = r["token"].as_u64().unwrap();
        assert!(
            new_token > old_token,
            "resumed with token {new_token} after {old_token}"
        );
        assert_eq!(leader_url(&fleet.etcd).await, Some(fleet.urls[1].clone()));
        old_leader.resume().unwrap();
        wait_for("the woken leader to step down", DEADLINE, || async {
            let log = old_leader.log_text();
            if log.contains("leadership lost") || log.contains("stepping down") {
                Ok(())
            } else {
                Err("its log says neither `leadership lost` nor `stepping down`")
            }
        })
        .await
        .unwrap();
        let sent_stale = old_leader
            .log_text()
            .contains("an agent has seen a newer fencing token");
        eprintln!("the woken leader sent an Apply with its old token: {sent_stale}");
        let after = record(&fleet.etcd, &id).await.unwrap();
        assert_eq!(after["state"], "succeeded", "{after}");
        assert_eq!(after["token"].as_u64(), Some(new_token), "{after}");
        every_host_serves(&fleet.fleet, "2.0.0").await.unwrap();
        assert_eq!(leader_url(&fleet.etcd).await, Some(fleet.urls[1].clone()));
        fleet.nothing_left().await;
    });
}

/// A tmpfs mounted over `dir` in one process's mount namespace (an agent's:
/// `ip netns exec` gave it one of its own), so only that agent and its apps
/// see it. Dropping it unmounts it; were that skipped, the mount would go
/// with the namespace when its last process ends (the lab kills them all).
struct SmallDisk {
    namespace: String,
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(pid: u32, dir: &Path, bytes: u64) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let disk = Self {
            namespace: format!("--mount=/proc/{pid}/ns/mnt"),
            dir: dir.to_owned(),
        };
        let size = format!("size={bytes}");
        let dir = dir.to_str().unwrap();
        disk.run(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &size,
            "lockstep-small-disk",
            dir,
        ])
        .unwrap();
        disk
    }

    /// Runs `args` in the namespace; its stdout, or an error with stderr.
    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = std::process::Command::new("nsenter")
            .arg(&self.namespace)
            .args(args)
            .output()
            .map_err(|e| format!("nsenter {args:?}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "nsenter {args:?}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The names in the mounted directory, as the agent sees them.
    fn files(&self) -> Vec<String> {
        let listing = self.run(&["ls", "-A", self.dir.to_str().unwrap()]).unwrap();
        listing.lines().map(str::to_owned).collect()
    }

    /// `df`'s line for the mount, as the agent sees it.
    fn usage(&self) -> String {
        self.run(&["df", "-B1", self.dir.to_str().unwrap()])
            .unwrap_or_else(|e| e)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if let Err(e) = self.run(&["umount", self.dir.to_str().unwrap_or_default()]) {
            eprintln!("cannot unmount the small disk (it goes with the namespace): {e}");
        }
    }
}

/// (e) #18 Seen 4 and deliver 7, "failed fetch on a full disk -> next
/// release deploys": us-2's downloads (`data_dir/incoming`) on a tmpfs
/// with room for one normal release and little more. A release too big
/// for it fails to fetch there, before writing, with an error saying how
/// much space it needs; the deployment rolls back every host it switched.
/// Then a normal release deploys everywhere, and no partial download is
/// left on the small disk.
#[test]
fn a_release_too_big_for_an_agents_disk_rolls_back_and_the_next_one_deploys() {
    in_lab("full disk", |_nodes, fleet| async move {
        let normal = DemoRelease::new("2.0.0", ANY_PORT)
            .build(fleet.work.path())
            .unwrap();
        let normal_size = std::fs::metadata(&normal).unwrap().len();
        let small = &fleet.fleet.hosts[3];
        let incoming = small.agent.data_dir().join("incoming");
        let disk = SmallDisk::mount(
            small.agent.pid().unwrap(),
            &incoming,
            normal_size + SMALL_DISK_ROOM,
        );
        eprintln!("{}'s incoming/: {}", small.id, disk.usage());

        let big = DemoRelease::new("1.5.0", ANY_PORT)
            .with_payload(TOO_BIG)
            .build(fleet.work.path())
            .unwrap();
        let big_digest = push(&fleet.urls, &big).await.unwrap();
        let quick = strategy(fleet.work.path(), "quick-2", "500ms");
        let id = start_deploy(&fleet.urls, &big_digest, &quick)
            .await
            .unwrap();
        let r = finished(&fleet.etcd, &id).await.unwrap();
        assert_eq!(r["state"], "rolled_back", "{r}");
        let watch = text(&lockstep(&fleet.urls, &["watch", &id]).await.unwrap());
        let why = watch
            .lines()
            .find(|l| l.contains(&small.id) && l.contains("are free"))
            .unwrap_or_else(|| panic!("no line says {} lacks the space: {watch}", small.id));
        eprintln!("{why}");
        every_host_serves(&fleet.fleet, "1.0.0").await.unwrap();
        assert_eq!(disk.files(), Vec::<String>::new(), "left in incoming/");

        let d2 = push(&fleet.urls, &normal).await.unwrap();
        let id = start_deploy(&fleet.urls, &d2, &quick).await.unwrap();
        fleet.succeeded(&id).await;
        assert_eq!(disk.files(), Vec::<String>::new(), "left in incoming/");
        drop(disk);
        fleet.nothing_left().await;
    });
}

/// The log lines about the etcd session and leadership written after
/// `since`, each with its offset in seconds: how long the coordinators
/// were without a leader, for the record (printed, never asserted).
fn leadership_since(log: &str, since: std::time::SystemTime) -> Vec<(f64, String)> {
    const DAY: f64 = 86_400.0;
    let since = since
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        % DAY;
    log.lines()
        .filter(|l| {
            ["leases::", "coordinator::leader", "revoke"]
                .iter()
                .any(|w| l.contains(w))
        })
        .filter_map(|l| {
            // `2026-12-05T17:52:36.167603Z …`: the time of day.
            let time = l.get(11..26)?;
            let mut parts = time.split(':');
            let h: f64 = parts.next()?.parse().ok()?;
            let m: f64 = parts.next()?.parse().ok()?;
            let s: f64 = parts.next()?.parse().ok()?;
            let offset = (h * 3600.0 + m * 60.0 + s - since).rem_euclid(DAY);
            (offset < DAY / 2.0).then(|| (offset, l.chars().skip(27).take(300).collect()))
        })
        .collect()
}
