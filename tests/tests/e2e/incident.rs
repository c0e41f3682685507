//! The 2019-12-06 incident (`../shared/context/incident-2019-12-06.txt`)
//! replayed end to end, one test per failure it had, with real etcd,
//! coordinators, agents and demo apps:
//!
//! | the incident | the test |
//! |---|---|
//! | new code needed new config; rolling back code alone left the config incompatible | `a_refused_config_is_rolled_back_with_its_code_and_no_client_request_fails` |
//! | low-redundancy clusters went completely down | `a_single_host_cluster_keeps_serving_through_a_good_and_a_bad_deploy` |
//! | the deploy script was stopped half-way and had to be re-run by hand | `a_standby_finishes_the_rollout_of_a_killed_leader_and_the_old_token_is_refused` |
//! | a spurious "deployment in progress" check had to be bypassed by hand | `a_killed_deployers_lock_expires_with_its_lease_and_the_next_deploy_needs_no_bypass` |
//! | engineers restarted processes on every instance at once | `restarts_on_every_host_at_once_take_turns_and_the_cluster_keeps_its_floor` |
//! | … by hand, with nothing recorded | `a_forced_restart_with_etcd_down_works_and_is_audited_once_etcd_is_back` |

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{EventType, WatchOptions};
use leases::{AuditLog, BudgetPolicy, DisruptionBudget};
use lockstep_tests::http::{PollReport, Poller, request};
use lockstep_tests::operator::{
    Served, agents_known, deploy, deploy_lock, deployment_id, every_host_serves, finished,
    history_entry, leader_and_standby, leader_url, lockstep_json, published, push, record, served,
    start_deploy, strategy, strategy_with, text,
};
use lockstep_tests::{
    AgentFixture, CoordinatorFixture, DEMO_SERVICE, DemoRelease, EtcdCluster, FleetFixture,
    free_loopback_port, wait_for,
};

const DEADLINE: Duration = Duration::from_secs(120);
/// Short leases so failover and expiry finish quickly; still several
/// keep-alives per lease.
const TTL_SECS: u64 = 3;
/// The key the incident's app did not know.
const REFUSED_KEY: &str = "metrics_endpoint";
/// Every host overrides the release's listen address with its own port.
const ANY_PORT: u16 = 1;

const TWO_CLUSTERS: &[(&str, &str)] = &[("west-1", "west"), ("west-2", "west"), ("east-1", "east")];

/// etcd, one coordinator and a fleet of agents that all reached it.
struct Stage {
    etcd: EtcdCluster,
    coordinator: CoordinatorFixture,
    urls: Vec<String>,
    fleet: FleetFixture,
}

impl Stage {
    async fn start(layout: &[(&str, &str)]) -> Self {
        let etcd = EtcdCluster::single().await.unwrap();
        let coordinator = CoordinatorFixture::start(&etcd.endpoints(), TTL_SECS)
            .await
            .unwrap();
        let urls = vec![coordinator.url()];
        let fleet = FleetFixture::start(layout, &etcd.endpoints(), &urls)
            .await
            .unwrap();
        agents_known(&urls, layout.len()).await.unwrap();
        Self {
            etcd,
            coordinator,
            urls,
            fleet,
        }
    }

    /// Pushes `bundle` and rolls it out with `strategy`; fails unless the
    /// deployment succeeds. Returns the release's digest.
    async fn roll_out(&self, bundle: &Path, strategy: &Path) -> String {
        let digest = push(&self.urls, bundle).await.unwrap();
        let id = start_deploy(&self.urls, &digest, strategy).await.unwrap();
        let r = finished(&self.etcd, &id).await.unwrap();
        assert_eq!(r["state"], "succeeded", "{r}");
        digest
    }

    /// `lockstep deploy --wait`; fails unless it exits `code` (0 done,
    /// 3 rolled back). Returns the deployment id.
    async fn deploy_waiting(&self, digest: &str, strategy: &Path, code: i32) -> String {
        let output = deploy(&self.urls, digest, strategy, &["--wait"])
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(code), "{}", text(&output));
        deployment_id(&output).unwrap()
    }
}

/// A client on every host of the fleet, each named by its host.
fn clients(fleet: &FleetFixture) -> Vec<(String, Poller)> {
    fleet
        .hosts
        .iter()
        .map(|h| (h.id.clone(), Poller::start(h.addr())))
        .collect()
}

/// A demo release whose config gives `/publish` a prefix of its own, so
/// a response tells which release's config the serving process loaded.
fn demo(version: &str) -> DemoRelease {
    DemoRelease::new(version, ANY_PORT).with_config(&format!("message_prefix = \"{version}> \"\n"))
}

/// What every host serves: code (version), config (digest and the
/// config-driven `/publish` prefix) and the serving process.
async fn fleet_snapshot(fleet: &FleetFixture) -> BTreeMap<String, (Served, String)> {
    let mut seen = BTreeMap::new();
    for host in &fleet.hosts {
        let served = served(host.addr()).await.unwrap();
        let echoed = published(host.addr(), "hello").await.unwrap();
        seen.insert(host.id.clone(), (served, echoed));
    }
    seen
}

/// Fails unless every host serves `version` with that release's config.
async fn every_host_serves_code_and_config(fleet: &FleetFixture, version: &str) {
    for (host, (served, echoed)) in fleet_snapshot(fleet).await {
        assert_eq!(served.version, version, "host {host} code");
        assert_eq!(echoed, format!("{version}> hello"), "host {host} config");
    }
}

/// Both views of the deployment lock say nobody holds it.
async fn no_deploy_lock(etcd: &EtcdCluster, urls: &[String]) {
    assert_eq!(deploy_lock(etcd).await.unwrap(), None, "etcd");
    let locks = lockstep_json(urls, &["locks"]).await.unwrap();
    let held: Vec<_> = locks["locks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| {
            l["key"]
                .as_str()
                .unwrap_or_default()
                .contains("/locks/deploy/")
        })
        .collect();
    assert!(held.is_empty(), "`lockstep locks` still lists {held:?}");
}

/// Fails unless `canary` alone tried `refused` (and failed), and every host
/// is on `current`: the release stopped at its canary.
async fn only_the_canary_tried(fleet: &FleetFixture, canary: &str, current: &str, refused: &str) {
    for host in &fleet.hosts {
        let releases = host
            .agent
            .agentctl_json(&["releases", DEMO_SERVICE])
            .await
            .unwrap();
        assert_eq!(
            releases["current"]["digest"], current,
            "{}: {releases}",
            host.id
        );
        let tried: Vec<_> = releases["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|switch| switch["to"] == refused)
            .collect();
        if host.id == canary {
            assert_eq!(tried.len(), 1, "{}: {releases}", host.id);
            assert_eq!(tried[0]["succeeded"], false, "{}: {releases}", host.id);
        } else {
            assert!(
                tried.is_empty(),
                "{} received the refused release: {releases}",
                host.id
            );
        }
    }
}

fn assert_no_failure(host: &str, report: &PollReport, allowed: &[&str]) {
    assert_eq!(
        report.failed, 0,
        "a client of {host} saw failures: {report:?}"
    );
    assert!(
        report.succeeded > 0,
        "the client of {host} never got through"
    );
    assert!(
        report
            .versions
            .iter()
            .all(|v| allowed.contains(&v.as_str())),
        "{host} answered with a version outside {allowed:?}: {report:?}"
    );
}

/// Replays: the incident's new version needed new config, shipped apart
/// from the code; the app refused the config, and rolling the code back
/// without the config left no version able to start.
#[tokio::test]
async fn a_refused_config_is_rolled_back_with_its_code_and_no_client_request_fails() {
    let stage = Stage::start(TWO_CLUSTERS).await;
    let Stage {
        etcd, urls, fleet, ..
    } = &stage;
    let work = tempfile::tempdir().unwrap();
    // The two-host cluster first, so the canary has a cluster-mate and
    // another cluster behind it that must both never see the release.
    let west_first = strategy_with(
        work.path(),
        "west-first",
        "500ms",
        "order = [\"west\", \"east\"]\n",
    )
    .unwrap();
    let v1 = demo("1.0.0").build(work.path()).unwrap();
    let d1 = stage.roll_out(&v1, &west_first).await;
    every_host_serves_code_and_config(fleet, "1.0.0").await;
    let before = fleet_snapshot(fleet).await;

    let v3 = demo("3.0.0")
        .with_unknown_config_key()
        .build(work.path())
        .unwrap();
    let d3 = push(urls, &v3).await.unwrap();
    let west_first_arg = west_first.display().to_string();
    let plan = lockstep_json(
        urls,
        &[
            "plan",
            "--service",
            DEMO_SERVICE,
            "--release",
            &d3,
            "--strategy",
            &west_first_arg,
        ],
    )
    .await
    .unwrap();
    assert_eq!(plan["waves"][0]["kind"], "canary", "{plan}");
    let canary = plan["waves"][0]["batches"][0]["instances"][0]["agent_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(fleet.host(&canary).unwrap().cluster, "west", "{plan}");

    let pollers = clients(fleet);
    let id3 = stage.deploy_waiting(&d3, &west_first, 3).await;
    for (host, poller) in pollers {
        assert_no_failure(&host, &poller.stop().await, &["1.0.0"]);
    }

    // Code and config together: every host serves 1.0.0 with 1.0.0's
    // config, from the very process that served it before (start-before-
    // stop: the old one never stopped).
    assert_eq!(fleet_snapshot(fleet).await, before);
    every_host_serves_code_and_config(fleet, "1.0.0").await;

    // The canary failed, and it alone ever received the release.
    only_the_canary_tried(fleet, &canary, &d1, &d3).await;

    // No lock is left, and history says rolled back, where and why.
    no_deploy_lock(etcd, urls).await;
    let entry = history_entry(urls, &id3).await.unwrap();
    assert_eq!(entry["state"], "rolled_back", "{entry}");
    let outcome = entry["outcome"].as_str().unwrap();
    assert!(
        outcome.contains(REFUSED_KEY),
        "the outcome names the refused key: {outcome}"
    );
    assert!(
        outcome.contains(&format!("instance {canary} failed")),
        "the outcome names the canary: {outcome}"
    );
    assert_eq!(record(etcd, &id3).await.unwrap()["state"], "rolled_back");
}

/// Replays: the clusters with the least redundancy went down completely,
/// because the new version had replaced the old before it was known to
/// start. A cluster of one host keeps serving through a good deploy and a
/// bad one; the good one also rolls on, cluster by cluster, to a cluster
/// of two.
#[tokio::test]
async fn a_single_host_cluster_keeps_serving_through_a_good_and_a_bad_deploy() {
    let layout = &[("solo-1", "solo"), ("pair-1", "pair"), ("pair-2", "pair")];
    let stage = Stage::start(layout).await;
    let Stage {
        etcd, urls, fleet, ..
    } = &stage;
    let solo = fleet.host("solo-1").unwrap();
    let work = tempfile::tempdir().unwrap();
    let fast = strategy(work.path(), "fast", "500ms").unwrap();
    stage
        .roll_out(&demo("1.0.0").build(work.path()).unwrap(), &fast)
        .await;
    let v2 = demo("2.0.0").build(work.path()).unwrap();
    let v3 = demo("3.0.0")
        .with_unknown_config_key()
        .build(work.path())
        .unwrap();

    // Smallest cluster first: the single host is the canary of both
    // deploys, so it goes through the rehearsal (2 -> 1 -> 2) and the
    // refusal, with a client on it the whole time.
    let solo_client = Poller::start(solo.addr());
    let d2 = push(urls, &v2).await.unwrap();
    let id2 = stage.deploy_waiting(&d2, &fast, 0).await;
    let after_good = solo_client.snapshot().await;
    assert_no_failure("solo-1", &after_good, &["1.0.0", "2.0.0"]);
    assert!(
        after_good.versions.contains(&"2.0.0".to_owned()),
        "the client never saw 2.0.0: {after_good:?}"
    );
    every_host_serves_code_and_config(fleet, "2.0.0").await;
    let entry = history_entry(urls, &id2).await.unwrap();
    assert_eq!(entry["state"], "succeeded", "{entry}");
    let served_before = served(solo.addr()).await.unwrap();

    let d3 = push(urls, &v3).await.unwrap();
    let id3 = stage.deploy_waiting(&d3, &fast, 3).await;
    let report = solo_client.stop().await;
    assert_no_failure("solo-1", &report, &["1.0.0", "2.0.0"]);
    assert!(
        report.succeeded > after_good.succeeded,
        "the client got no answer during the bad deploy: {report:?}"
    );
    // The single host never stopped serving 2.0.0: same process, same
    // config; and the bad release stopped at it.
    assert_eq!(served(solo.addr()).await.unwrap(), served_before);
    only_the_canary_tried(fleet, &solo.id, &d2, &d3).await;
    every_host_serves_code_and_config(fleet, "2.0.0").await;
    let entry = history_entry(urls, &id3).await.unwrap();
    assert_eq!(entry["state"], "rolled_back", "{entry}");
    assert!(
        entry["outcome"]
            .as_str()
            .unwrap()
            .contains("instance solo-1 failed"),
        "{entry}"
    );
    no_deploy_lock(etcd, urls).await;
}

/// Replays: the deploy script was stopped half-way through and had to be
/// re-run by hand. Here the coordinator driving the rollout is killed
/// mid-rollout; the standby resumes and ends it with no human step, and
/// what the dead leader might still send is refused.
///
/// Multi-threaded: the test's own gRPC connection to an agent must answer
/// the agent's GOAWAY while the fixtures' blocking drop stops that agent,
/// or the agent waits for it until the fixture kills it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_finishes_the_rollout_of_a_killed_leader_and_the_old_token_is_refused() {
    let etcd = EtcdCluster::single().await.unwrap();
    let (mut first, second) = leader_and_standby(&etcd, TTL_SECS).await.unwrap();
    let urls = vec![first.url(), second.url()];
    let fleet = FleetFixture::start(TWO_CLUSTERS, &etcd.endpoints(), &urls)
        .await
        .unwrap();
    agents_known(&[second.url()], TWO_CLUSTERS.len())
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let v1 = demo("1.0.0").build(work.path()).unwrap();
    let v2 = demo("2.0.0").build(work.path()).unwrap();
    let fast = strategy(work.path(), "fast", "500ms").unwrap();
    let d1 = push(&urls, &v1).await.unwrap();
    let id = start_deploy(&urls, &d1, &fast).await.unwrap();
    let first_install = finished(&etcd, &id).await.unwrap();
    assert_eq!(first_install["state"], "succeeded", "{first_install}");

    // Each batch stays under observation for a while: time to kill the
    // leader between batches.
    let pollers = clients(&fleet);
    let slow = strategy(work.path(), "slow", "3s").unwrap();
    let d2 = push(&urls, &v2).await.unwrap();
    let id = start_deploy(&urls, &d2, &slow).await.unwrap();
    let old_token = wait_for("the first instance to be on 2.0.0", DEADLINE, || async {
        let r = record(&etcd, &id).await.map_err(|e| e.to_string())?;
        let on_target = lockstep_tests::operator::on_target(&r);
        match (r["state"].as_str(), r["token"].as_u64()) {
            (Some("running"), Some(token)) if on_target >= 1 => Ok(token),
            _ => Err(format!("{r}")),
        }
    })
    .await
    .unwrap();
    first.kill();

    // No human step from here: the standby takes over and ends it.
    let r = finished(&etcd, &id).await.unwrap();
    assert_eq!(r["state"], "succeeded", "{r}");
    let new_token = r["token"].as_u64().unwrap();
    assert!(
        new_token > old_token,
        "resumed with token {new_token} after {old_token}"
    );
    every_host_serves_code_and_config(&fleet, "2.0.0").await;
    assert_eq!(leader_url(&etcd).await, Some(second.url()));
    for (host, poller) in pollers {
        assert_no_failure(&host, &poller.stop().await, &["1.0.0", "2.0.0"]);
    }
    let entry = history_entry(&urls, &id).await.unwrap();
    assert_eq!(entry["state"], "succeeded", "{entry}");
    assert_eq!(entry["fencing_token"].as_u64(), Some(new_token), "{entry}");
    no_deploy_lock(&etcd, &urls).await;

    // What the dead leader would send, were it to come back: refused.
    let host = &fleet.hosts[0];
    let mut agent = proto::v1::agent_service_client::AgentServiceClient::connect(format!(
        "http://{}",
        host.agent.grpc_addr()
    ))
    .await
    .unwrap();
    let verdict = agent
        .apply(proto::v1::ApplyRequest {
            service: DEMO_SERVICE.into(),
            release_digest: d1.clone(),
            fencing_token: old_token,
            deployment_id: id.clone(),
            command_seq: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .verdict
        .unwrap();
    assert_eq!(
        verdict.refusal(),
        proto::v1::RefusalReason::StaleFencingToken,
        "{verdict:?}"
    );
    every_host_serves(&fleet, "2.0.0").await.unwrap();
}

/// Replays: a safety check saw "another deployment in progress" that was
/// long dead, and engineers had to learn how to bypass it. Here the
/// deployer is killed holding the lock; the lock goes with its lease's
/// TTL, and the next deploy goes through without anyone breaking it.
#[tokio::test]
async fn a_killed_deployers_lock_expires_with_its_lease_and_the_next_deploy_needs_no_bypass() {
    let Stage {
        etcd,
        coordinator: mut deployer,
        urls,
        fleet,
    } = Stage::start(&TWO_CLUSTERS[..1]).await;
    let work = tempfile::tempdir().unwrap();
    let v1 = demo("1.0.0").build(work.path()).unwrap();
    let v2 = demo("2.0.0").build(work.path()).unwrap();
    let d1 = push(&urls, &v1).await.unwrap();
    // Long enough under observation for the refused deploy below.
    let slow = strategy(work.path(), "slow", "5s").unwrap();
    let fast = strategy(work.path(), "fast", "500ms").unwrap();
    let id = start_deploy(&urls, &d1, &slow).await.unwrap();

    // A second deploy while one is active is refused at once, naming the
    // holder; the lock is visible with its TTL.
    let d2 = push(&urls, &v2).await.unwrap();
    let output = deploy(&urls, &d2, &fast, &[]).await.unwrap();
    assert_eq!(output.status.code(), Some(75), "refused: {}", text(&output));
    let said = text(&output);
    assert!(said.contains(&id), "names the holding deployment: {said}");
    let (stale_lease, _) = deploy_lock(&etcd).await.unwrap().unwrap();
    let locks = lockstep_json(&urls, &["locks"]).await.unwrap();
    let shown = locks["locks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| {
            l["key"]
                .as_str()
                .unwrap_or_default()
                .ends_with("/locks/deploy/demo")
        })
        .cloned()
        .unwrap_or_else(|| panic!("`lockstep locks` does not show the deploy lock: {locks}"));
    let ttl_left = shown["ttl_left_ms"].as_i64().unwrap();
    assert!(
        ttl_left > 0 && ttl_left <= i64::try_from(TTL_SECS * 1000).unwrap(),
        "{shown}"
    );

    // The deployer dies holding the lock and comes back (systemd restarts
    // it): its old lease expires by itself, the new process takes the lock
    // with a higher token, finishes the deployment, and the next deploy
    // goes through.
    let locked_token = record(&etcd, &id).await.unwrap()["token"].as_u64().unwrap();
    deployer.kill();
    deployer.restart().await.unwrap();
    let r = finished(&etcd, &id).await.unwrap();
    assert_eq!(r["state"], "succeeded", "{r}");
    assert!(r["token"].as_u64().unwrap() > locked_token, "{r}");
    let mut client = etcd.client().await.unwrap();
    let stale = client.lease_time_to_live(stale_lease, None).await.unwrap();
    assert_eq!(
        stale.ttl(),
        -1,
        "the killed deployer's lease is still alive"
    );
    agents_known(&urls, 1).await.unwrap();
    let output = deploy(&urls, &d2, &fast, &["--wait"]).await.unwrap();
    assert!(
        output.status.success(),
        "deploy after takeover: {}",
        text(&output)
    );
    every_host_serves(&fleet, "2.0.0").await.unwrap();
    no_deploy_lock(&etcd, &urls).await;

    // No bypass: nobody broke a lock, so the audit log is empty.
    let audit = AuditLog::recent(&crate::failover_client(&etcd).await, 10)
        .await
        .unwrap();
    assert!(audit.is_empty(), "break-glass was used: {audit:?}");
}

/// An `[etcd]` table for agents started without a coordinator.
fn etcd_table(etcd: &EtcdCluster, budget_wait: &str) -> String {
    etcd.agent_table("5s", budget_wait)
}

fn addr(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// Serving means ready: the agent holds the socket across a restart, so a
/// request during one waits rather than fails; `/healthz` says whether the
/// instance behind it is really up.
async fn serving(port: u16) -> bool {
    matches!(
        request(addr(port), "GET", "/healthz", "").await,
        Ok((200, _))
    )
}

async fn wait_registered(agent: &AgentFixture) {
    wait_for("the agent to reach etcd", DEADLINE, || async {
        let out = agent
            .agentctl_json(&["locks"])
            .await
            .map_err(|e| e.to_string())?;
        match out["unavailable"].as_str() {
            None => Ok(()),
            Some(reason) => Err(reason.to_owned()),
        }
    })
    .await
    .unwrap();
}

/// How many hosts served, sampled round after round.
#[derive(Debug, Default)]
struct Availability {
    rounds: u32,
    /// Rounds in which exactly this many hosts were down, by count.
    down: BTreeMap<usize, u32>,
    /// Rounds not counted: they took longer than `SNAPSHOT`, so their
    /// answers are not one moment's picture.
    slow: u32,
}

/// How long a round of requests may take to count as one moment. A slow
/// round (a loaded machine) can see a host finish its restart and, later
/// in the same round, the next host (which took the freed slot) go down:
/// two down in the round, never at once. A real breach of the floor lasts
/// the whole restart of the second host (1.5 s here), so fast rounds see it.
const SNAPSHOT: Duration = Duration::from_millis(50);

/// What etcd's history of a cluster's budget shows.
#[derive(Debug, Default)]
struct BudgetHistory {
    most_holders: usize,
    most_waiters: usize,
    /// Every name that held a slot.
    held: BTreeSet<String>,
    /// Names whose slot has been released again.
    released: BTreeSet<String>,
}

/// Replays every change to `cluster`'s budget keys after `revision`, until
/// each of `names` has taken and released its slot.
async fn budget_history(
    etcd: &EtcdCluster,
    cluster: &str,
    revision: i64,
    names: &[String],
) -> BudgetHistory {
    let prefix = format!("/lockstep/v1/clusters/{cluster}/");
    let holders = format!("{prefix}budget/");
    let waiters = format!("{prefix}budget-queue/");
    let mut client = etcd.client().await.unwrap();
    let every_change_since = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut stream = client
        .watch(prefix.as_str(), Some(every_change_since))
        .await
        .unwrap();
    let mut history = BudgetHistory::default();
    let (mut holding, mut waiting) = (BTreeSet::new(), BTreeSet::new());
    let mut last_revision = revision;
    while !names.iter().all(|n| history.released.contains(n)) {
        let response = tokio::time::timeout(DEADLINE, stream.message())
            .await
            .unwrap_or_else(|_| panic!("the budget went quiet: {history:?}"))
            .unwrap()
            .unwrap();
        for event in response.events() {
            let revision = event.kv().unwrap().mod_revision();
            if revision != last_revision {
                // Events of one revision are one transaction: count
                // between revisions.
                history.most_holders = history.most_holders.max(holding.len());
                history.most_waiters = history.most_waiters.max(waiting.len());
                last_revision = revision;
            }
            let key = event.kv().unwrap().key_str().unwrap().to_owned();
            let put = event.event_type() == EventType::Put;
            if let Some(name) = key.strip_prefix(holders.as_str()) {
                if put {
                    holding.insert(name.to_owned());
                    history.held.insert(name.to_owned());
                } else {
                    holding.remove(name);
                    history.released.insert(name.to_owned());
                }
            } else if let Some(name) = key.strip_prefix(waiters.as_str()) {
                if put {
                    waiting.insert(name.to_owned());
                } else {
                    waiting.remove(name);
                }
            }
        }
        history.most_holders = history.most_holders.max(holding.len());
        history.most_waiters = history.most_waiters.max(waiting.len());
    }
    history
}

/// Replays: engineers connected to every instance and restarted the
/// application processes by hand, all at once. Here `agentctl restart` runs
/// on every host of a three-host cluster at the same moment; the cluster's
/// disruption budget (one at a time) makes them take turns, so the cluster
/// never has fewer than two hosts serving. The release stops before it
/// starts (overlap none), so the budget, not start-before-stop, is what
/// keeps the floor.
#[tokio::test]
async fn restarts_on_every_host_at_once_take_turns_and_the_cluster_keeps_its_floor() {
    const CLUSTER: &str = "trio";
    let etcd = EtcdCluster::single().await.unwrap();
    let client = crate::failover_client(&etcd).await;
    DisruptionBudget::new(CLUSTER)
        .set_policy(&client, BudgetPolicy { max_disruptions: 1 })
        .await
        .unwrap();
    let table = etcd_table(&etcd, "60s");
    let mut hosts = Vec::new();
    for id in ["trio-1", "trio-2", "trio-3"] {
        let agent = AgentFixture::start_with(id, CLUSTER, &table).await.unwrap();
        let port = free_loopback_port().unwrap();
        // A restart really takes the instance down, for as long as the
        // app needs to become ready again.
        let bundle = DemoRelease::new("1.0.0", port)
            .with_overlap("none")
            .with_config("[faults]\nready_after_ms = 1500\n")
            .build(agent.dir())
            .unwrap();
        agent.install(&bundle).await.unwrap();
        wait_registered(&agent).await;
        hosts.push((id.to_owned(), agent, port));
    }
    let ports: Vec<u16> = hosts.iter().map(|(_, _, port)| *port).collect();
    let mut pids = Vec::new();
    for port in &ports {
        pids.push(served(addr(*port)).await.unwrap().pid);
    }
    let revision = client
        .clone()
        .get("/lockstep/v1/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    // A client asks every host, round after round, for the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let watch = tokio::spawn({
        let stop = stop.clone();
        let ports = ports.clone();
        async move {
            let mut seen = Availability::default();
            while !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                let up = tokio::join!(serving(ports[0]), serving(ports[1]), serving(ports[2]));
                let up = [up.0, up.1, up.2];
                seen.rounds += 1;
                if began.elapsed() > SNAPSHOT {
                    seen.slow += 1;
                    continue;
                }
                *seen
                    .down
                    .entry(up.iter().filter(|u| !**u).count())
                    .or_default() += 1;
            }
            seen
        }
    });
    let restart = ["restart", DEMO_SERVICE, "--reason", "kernel update"];
    let outputs = tokio::join!(
        hosts[0].1.agentctl(&restart),
        hosts[1].1.agentctl(&restart),
        hosts[2].1.agentctl(&restart),
    );
    let outputs = [outputs.0.unwrap(), outputs.1.unwrap(), outputs.2.unwrap()];
    stop.store(true, Ordering::Relaxed);
    let seen = watch.await.unwrap();

    for ((id, _, port), (output, pid)) in hosts.iter().zip(outputs.iter().zip(&pids)) {
        assert!(
            output.status.success(),
            "{id}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let now = served(addr(*port)).await.unwrap();
        assert_ne!(now.pid, *pid, "{id} was not restarted");
    }
    // The floor: never more than one of three down at once, and the
    // restarts really took instances down.
    assert!(
        seen.down.keys().all(|down| *down <= 1),
        "more than one host was down at once: {seen:?}"
    );
    assert!(
        seen.down.get(&1).copied().unwrap_or(0) > 0,
        "the restarts never took an instance down: {seen:?}"
    );
    // The budget: every host took a slot, never two at once, and some
    // waited in the queue for their turn.
    let names: Vec<String> = hosts
        .iter()
        .map(|(id, _, _)| format!("{id}/{DEMO_SERVICE}"))
        .collect();
    let budget = budget_history(&etcd, CLUSTER, revision, &names).await;
    assert_eq!(budget.most_holders, 1, "{budget:?}");
    assert_eq!(budget.held, names.iter().cloned().collect(), "{budget:?}");
    assert!(
        budget.most_waiters >= 1,
        "the restarts never contended: {budget:?}"
    );
}

/// Replays: engineers forced restarts by hand on every unhealthy instance,
/// with nothing recorded. Here etcd is down: a planned restart waits for
/// the budget and then fails saying how to force it; a forced one works at
/// once, is recorded locally, and lands in etcd's audit log, once, when
/// etcd is back.
#[tokio::test]
async fn a_forced_restart_with_etcd_down_works_and_is_audited_once_etcd_is_back() {
    let mut etcd = EtcdCluster::single().await.unwrap();
    let agent = AgentFixture::start_with("host-c", "solo", &etcd_table(&etcd, "3s"))
        .await
        .unwrap();
    let port = free_loopback_port().unwrap();
    let bundle = DemoRelease::new("1.0.0", port).build(agent.dir()).unwrap();
    agent.install(&bundle).await.unwrap();
    wait_registered(&agent).await;
    let before = served(addr(port)).await.unwrap();

    etcd.kill(0).unwrap();
    // Fail static: the app is untouched by etcd's loss.
    assert!(serving(port).await);

    let planned = agent
        .agentctl(&["restart", DEMO_SERVICE, "--reason", "routine"])
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&planned.stderr);
    assert!(
        planned.status.code() == Some(1)
            && said.contains("unreachable")
            && said.contains("--force"),
        "a planned restart without etcd must fail, saying how to force it: {planned:?}"
    );
    assert_eq!(
        served(addr(port)).await.unwrap(),
        before,
        "a refused restart restarted"
    );

    const REASON: &str = "app wedged while etcd is down";
    let forced = agent
        .agentctl(&["restart", DEMO_SERVICE, "--force", "--reason", REASON])
        .await
        .unwrap();
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    let after = served(addr(port)).await.unwrap();
    assert_ne!(after.pid, before.pid, "the forced restart did not restart");
    assert_eq!(after.version, before.version);
    let local = agent.dir().join("data/audit.jsonl");
    let pending = std::fs::read_to_string(&local).unwrap();
    assert!(pending.contains(REASON), "not recorded locally: {pending}");

    etcd.restart(0).await.unwrap();
    let client = crate::failover_client(&etcd).await;
    let record = wait_for(
        "the forced restart's audit record in etcd",
        DEADLINE,
        || async {
            let records = AuditLog::recent(&client, 10)
                .await
                .map_err(|e| e.to_string())?;
            if local.exists() {
                return Err(format!("{} is not uploaded yet", local.display()));
            }
            match records.as_slice() {
                [(_, record)] => Ok(record.clone()),
                other => Err(format!("{} records: {other:?}", other.len())),
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(record.action, "forced-restart");
    assert_eq!(record.target, "host-c/demo");
    assert_eq!(record.reason, REASON);
    assert_eq!(record.actor.user, "root");
    assert!(serving(port).await);
}
