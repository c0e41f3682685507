//! `lockstep-nodesim` as a coordinator's fleet (#15 deliver 3): fifty
//! virtual hosts over three clusters, each registered in etcd and
//! reporting like a real agent, deployed with the real `lockstep` CLI.
//! Real etcd, a real coordinator, the real simulator binary.

use std::time::Duration;

use leases::{BudgetPolicy, DisruptionBudget};
use lockstep_tests::operator::{
    agents_known, finished, lockstep_json, push, start_deploy, strategy_with,
};
use lockstep_tests::{
    CoordinatorFixture, DemoRelease, EtcdCluster, NodesimFixture, NodesimOptions, wait_for,
};

const HOSTS: usize = 50;
const CLUSTERS: usize = 3;
const TTL_SECS: u64 = 3;
const DEADLINE: Duration = Duration::from_secs(120);

struct Stage {
    _work: tempfile::TempDir,
    etcd: EtcdCluster,
    _coordinator: CoordinatorFixture,
    urls: Vec<String>,
    strategy: std::path::PathBuf,
    v1: String,
    v2: String,
}

/// etcd with room in every cluster's budget for a whole batch, a
/// coordinator, and two releases pushed to it.
async fn stage() -> Stage {
    let work = tempfile::tempdir().unwrap();
    let etcd = EtcdCluster::single().await.unwrap();
    let client = crate::failover_client(&etcd).await;
    for c in 0..CLUSTERS {
        DisruptionBudget::new(&format!("cluster-{c}"))
            .set_policy(
                &client,
                BudgetPolicy {
                    max_disruptions: 20,
                },
            )
            .await
            .unwrap();
    }
    let coordinator = CoordinatorFixture::start(&etcd.endpoints(), TTL_SECS)
        .await
        .unwrap();
    let urls = vec![coordinator.url()];
    let mut digests = Vec::new();
    for version in ["1.0.0", "2.0.0"] {
        let bundle = DemoRelease::new(version, 1).build(work.path()).unwrap();
        digests.push(push(&urls, &bundle).await.unwrap());
    }
    let strategy = strategy_with(
        work.path(),
        "sim",
        "300ms",
        "canary = 1\nrehearse_rollback = false\nmax_unavailable = \"50%\"\nmin_healthy = \"50%\"\n",
    )
    .unwrap();
    let (v2, v1) = (digests.pop().unwrap(), digests.pop().unwrap());
    Stage {
        _work: work,
        etcd,
        _coordinator: coordinator,
        urls,
        strategy,
        v1,
        v2,
    }
}

async fn simulate(stage: &Stage, options: NodesimOptions) -> NodesimFixture {
    let hosts = options.hosts;
    let sim = NodesimFixture::start(&stage.etcd.endpoints(), &stage.urls, &options)
        .await
        .unwrap();
    if let Err(err) = agents_known(&stage.urls, hosts).await {
        panic!("{err}\nnodesim log:\n{}", sim.log_text());
    }
    sim
}

async fn deploy(stage: &Stage, digest: &str) -> serde_json::Value {
    let id = start_deploy(&stage.urls, digest, &stage.strategy)
        .await
        .unwrap();
    finished(&stage.etcd, &id).await.unwrap()
}

/// How many hosts `lockstep agents` shows on `digest`, of how many.
async fn on_release(urls: &[String], digest: &str) -> (usize, usize) {
    let listed = lockstep_json(urls, &["agents"]).await.unwrap();
    let agents = listed["agents"].as_array().cloned().unwrap_or_default();
    let on = agents
        .iter()
        .filter(|a| {
            a["services"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["current"]["digest"] == digest))
        })
        .count();
    (on, agents.len())
}

/// Every host's Report stream has caught up with its last switch.
async fn every_host_on(urls: &[String], digest: &str) {
    wait_for(
        "every host on the release in `lockstep agents`",
        DEADLINE,
        || async {
            match on_release(urls, digest).await {
                (on, all) if on == HOSTS && all == HOSTS => Ok(()),
                seen => Err(format!("{seen:?} of {HOSTS}")),
            }
        },
    )
    .await
    .unwrap();
}

/// Issue #15 deliver 3: the simulator's hosts are a fleet the coordinator
/// deploys to like real agents: a first install and an update both end
/// `succeeded`, every host on the new release.
#[tokio::test]
async fn fifty_virtual_hosts_in_three_clusters_take_a_first_install_and_an_update() {
    let stage = stage().await;
    let options = NodesimOptions {
        hosts: HOSTS,
        clusters: CLUSTERS,
        ..NodesimOptions::default()
    };
    let sim = simulate(&stage, options).await;
    for digest in [&stage.v1, &stage.v2] {
        let r = deploy(&stage, digest).await;
        assert_eq!(
            r["state"],
            "succeeded",
            "{r}\nnodesim log:\n{}",
            sim.log_text()
        );
        every_host_on(&stage.urls, digest).await;
    }
}

/// Issue #15 (the 10,000-host run): ListAgents answered every agent in one
/// message, 4.9 MB at 10,000 hosts, over gRPC's default 4 MiB. It now
/// answers in pages: pages of 7 list the 50 hosts each once, in cluster
/// then id order, and the last page says no more follow. On main the
/// page size was ignored (one answer of 50).
#[tokio::test]
async fn fifty_virtual_hosts_list_in_pages_each_once_in_order() {
    use proto::v1 as pb;
    let stage = stage().await;
    let options = NodesimOptions {
        hosts: HOSTS,
        clusters: CLUSTERS,
        ..NodesimOptions::default()
    };
    let _sim = simulate(&stage, options).await;
    let channel = tonic::transport::Endpoint::from_shared(stage.urls[0].clone())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let mut grpc = pb::coordinator_service_client::CoordinatorServiceClient::new(channel);
    let (mut listed, mut pages, mut after) = (Vec::new(), 0, None);
    loop {
        let page = grpc
            .list_agents(pb::ListAgentsRequest {
                page_size: 7,
                after: after.take(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.agents.len() <= 7, "a page of {}", page.agents.len());
        listed.extend(
            page.agents
                .into_iter()
                .filter_map(|a| a.identity.map(|i| (i.cluster, i.agent_id))),
        );
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(pages < 20, "the pages do not end: {listed:?}");
    }
    assert_eq!(pages, HOSTS.div_ceil(7));
    let mut sorted = listed.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(listed, sorted, "each once, in cluster then id order");
    assert_eq!(listed.len(), HOSTS);
}

/// Issue #15 deliver 3 (failure rate): every host fails the second
/// release, so its canary fails, and the deployment ends `rolled_back`
/// with every host back on the first release.
#[tokio::test]
async fn a_release_every_virtual_host_fails_rolls_back_at_the_canary() {
    let stage = stage().await;
    let options = NodesimOptions {
        hosts: HOSTS,
        clusters: CLUSTERS,
        fail_rate: 1.0,
        fail_releases: vec![stage.v2.clone()],
        ..NodesimOptions::default()
    };
    let sim = simulate(&stage, options).await;
    let first = deploy(&stage, &stage.v1).await;
    assert_eq!(first["state"], "succeeded", "{first}");
    every_host_on(&stage.urls, &stage.v1).await;
    let bad = deploy(&stage, &stage.v2).await;
    assert_eq!(
        bad["state"],
        "rolled_back",
        "{bad}\nnodesim log:\n{}",
        sim.log_text()
    );
    every_host_on(&stage.urls, &stage.v1).await;
    let (on_bad, _) = on_release(&stage.urls, &stage.v2).await;
    assert_eq!(on_bad, 0, "hosts left on the failing release");
}

/// Issue #15 deliver 2, found by the nodesim bench (deliver 4): at 1,000
/// hosts in 3 clusters with `max_unavailable = "50%"`, the step that
/// starts a batch of ~166 hosts writes one journal transaction with an
/// event per instance — over etcd's default 128 operations per
/// transaction. etcd refuses it ("too many operations in txn request"),
/// the leader resumes the deployment from the journal and fails the same
/// way, forever; the deployment never ends. Here: one batch of 150.
/// It failed before the journal's format 2 (event pages, bounded steps).
#[tokio::test]
async fn a_batch_of_150_virtual_hosts_fits_in_the_journal() {
    const BATCH: usize = 150;
    let stage = stage().await;
    DisruptionBudget::new("cluster-0")
        .set_policy(
            &crate::failover_client(&stage.etcd).await,
            BudgetPolicy {
                max_disruptions: 200,
            },
        )
        .await
        .unwrap();
    let options = NodesimOptions {
        hosts: BATCH,
        clusters: 1,
        ..NodesimOptions::default()
    };
    let _sim = simulate(&stage, options).await;
    let one_batch = strategy_with(
        stage._work.path(),
        "one-batch",
        "300ms",
        "canary = 0\nrehearse_rollback = false\nmax_unavailable = \"100%\"\nmin_healthy = 0\n",
    )
    .unwrap();
    let id = start_deploy(&stage.urls, &stage.v1, &one_batch)
        .await
        .unwrap();
    let r = finished(&stage.etcd, &id).await.unwrap();
    assert_eq!(r["state"], "succeeded", "{r}");
}

/// Issue #15 deliver 4 (nodesim bench, 10,000 hosts): a deployment whose
/// first journal write etcd refused left its lock naming a deployment
/// with no record, and `lockstep status` failed as a whole ("no
/// deployment …") instead of showing the fleet with that state unknown.
#[tokio::test]
async fn status_shows_the_fleet_when_a_locks_deployment_has_no_record() {
    let etcd = EtcdCluster::single().await.unwrap();
    let coordinator = CoordinatorFixture::start(&etcd.endpoints(), TTL_SECS)
        .await
        .unwrap();
    let session = leases::Session::grant(
        crate::failover_client(&etcd).await,
        leases::Ttl::from_secs(10).unwrap(),
    )
    .await
    .unwrap();
    let _lock = leases::FencedMutex::deployment("demo")
        .try_lock(&session, "demo-never-recorded")
        .await
        .unwrap();
    let output = coordinator.lockstep(&["status"]).await.unwrap();
    let text = lockstep_tests::operator::text(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("demo-never-recorded"), "{text}");
    assert!(text.contains("cannot be read"), "{text}");
}
