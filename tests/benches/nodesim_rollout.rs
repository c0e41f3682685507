//! The coordinator at fleet size (#15 deliver 4): for each host count, a
//! real etcd, one real coordinator and `lockstep-nodesim` with that many
//! virtual hosts (one instance each; one simulator per 9,000: see
//! `NodesimFixture::HOSTS_PER_PROCESS`) over K clusters; a first install,
//! then DEPLOYMENTS deployments alternating two releases. Per size it
//! prints:
//! - the rollout's wall time against its plan's minimum (the sum over
//!   batches of the simulator's start + ready delay + `min_healthy_time`,
//!   plus the plan's final `bake_time`):
//!   the first update's and the mean and worst over all;
//! - the first update's batch timeline, from the journal's events
//!   (`lockstep_tests::timeline`): a batch's applies to its first and last
//!   readiness, and its last readiness to the next batch's applies;
//! - the coordinator's peak RSS (VmHWM) and CPU seconds per deployment
//!   (utime + stime from /proc/PID/stat, before and after), and etcd's
//!   and the simulators' CPU with how busy the cores were;
//! - etcd bytes written per deployment: etcd's own
//!   `etcd_disk_wal_write_bytes_total` (every write that went through
//!   raft) and `etcd_network_client_grpc_received_bytes_total` (every
//!   request byte, reads and keep-alives included);
//! - the largest journal transaction (`lockstep_journal_txn_bytes_largest`),
//!   and the journal's transactions per deployment with etcd's mean answer
//!   time for a txn (`lockstep_etcd_request_duration_seconds{op="txn"}`):
//!   they commit one after another, so their product is time the rollout
//!   waits on them;
//! - etcd's db size (`etcd_mvcc_db_total_size_in_bytes`, and in use)
//!   after the deployments, the live keys under `/lockstep/` and their
//!   bytes, and the db size once compacted and defragmented (with
//!   `--retention=1s --keep=1` the coordinator prunes each finished
//!   deployment to its summary);
//! - the coordinator's RSS with every host reporting before any
//!   deployment, and after the first install (what dialling every agent
//!   adds);
//! - the time `lockstep status` and `lockstep agents` take (text output),
//!   and how many lines they print.
//!
//! The simulator runs with `--no-budget`: its hosts take no disruption
//! budget slots, so etcd's writes during a deployment are the
//! coordinator's (its journal, events and lock), not the hosts'.
//!
//! `cargo build --release --workspace --bins && cargo bench -p lockstep-tests --bench nodesim_rollout -- 1000 10000 [--clusters=3] [--deployments=20] [--max-unavailable=50%] [--deadline-secs=900] [--retention=1s --keep=1]`
//!
//! A size whose deployment does not end says what the coordinator last
//! warned about and goes on to the next size.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use lockstep_tests::operator::{push, record, start_deploy};
use lockstep_tests::timeline::{BatchTimeline, deployment_events};
use lockstep_tests::{
    CoordinatorFixture, DemoRelease, EtcdCluster, NodesimFixture, NodesimOptions, Usage,
    free_loopback_port, lockstep, wait_for,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const START_DELAY_MS: u64 = 50;
const READY_DELAY_MS: u64 = 200;
const MIN_HEALTHY_MS: u64 = 1000;
/// The strategy's default (3 × min_healthy_time), written out.
const BAKE_MS: u64 = 3000;

fn text_flag(name: &str) -> Option<String> {
    std::env::args().find_map(|a| a.strip_prefix(&format!("--{name}=")).map(str::to_owned))
}

fn flag(name: &str, default: usize) -> usize {
    text_flag(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sizes() -> Vec<usize> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .filter_map(|a| a.parse().ok())
        .collect();
    if sizes.is_empty() { vec![1000] } else { sizes }
}

/// GET over HTTP/1.0 (no chunked body to undo), bounded.
async fn get(addr: SocketAddr, path: &str) -> String {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut body = Vec::new();
        stream.read_to_end(&mut body).await.ok()?;
        Some(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// The sum of every sample of `name` (all label sets).
fn metric(text: &str, name: &str) -> Option<f64> {
    metric_with(text, name, "")
}

/// The sum of the samples of `name` whose labels contain `label`.
fn metric_with(text: &str, name: &str, label: &str) -> Option<f64> {
    let mut found = None;
    // The HTTP head and comments have no sample: skipped.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let bare = series.split('{').next().unwrap_or(series);
        if bare == name && series.contains(label) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    found
}

/// Where a deployment's time goes in the journal: its transactions are
/// committed one after another, so their count times etcd's answer time
/// is time the rollout spends waiting on them.
fn commit_profile(before: &str, after: &str, deployments: usize) {
    let delta = |name: &str, label: &str| {
        metric_with(after, name, label).unwrap_or(0.0)
            - metric_with(before, name, label).unwrap_or(0.0)
    };
    let txns = delta("lockstep_journal_txn_bytes_count", "");
    let etcd_count = delta("lockstep_etcd_request_duration_seconds_count", "op=\"txn\"");
    let etcd_sum = delta("lockstep_etcd_request_duration_seconds_sum", "op=\"txn\"");
    if txns == 0.0 || etcd_count == 0.0 {
        println!("nodesim_rollout: journal commit profile: n/a (no journal metrics)");
        return;
    }
    let mean = etcd_sum / etcd_count;
    println!(
        "nodesim_rollout: journal: {:.0} transactions per deployment, etcd txn answered in {:.2} ms on average: {:.2} s per deployment spent committing, one at a time",
        txns / deployments as f64,
        mean * 1e3,
        txns * mean / deployments as f64
    );
}

fn etcd_addr(etcd: &EtcdCluster) -> SocketAddr {
    let url = &etcd.endpoints()[0];
    url.trim_start_matches("http://").parse().unwrap()
}

/// Deploys `digest` and waits for the end; `Err` says why it did not end
/// within `limit` (the coordinator's last warning, e.g. a journal write
/// etcd refuses, which it retries forever).
async fn deploy_and_wait(
    etcd: &EtcdCluster,
    coordinator: &CoordinatorFixture,
    digest: &str,
    strategy: &Path,
    limit: Duration,
) -> Result<(Duration, serde_json::Value), String> {
    let urls = [coordinator.url()];
    let started = Instant::now();
    let id = match start_deploy(&urls, digest, strategy).await {
        Ok(id) => id,
        Err(err) => return Err(format!("{err}{}", last_warnings(coordinator))),
    };
    let finished = wait_for("the rollout to end", limit, || async {
        let r = record(etcd, &id).await.map_err(|e| e.to_string())?;
        match r["state"].as_str() {
            Some("running" | "paused" | "awaiting_approval" | "rolling_back") | None => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Err(format!("{}", r["state"]))
            }
            Some(_) => Ok(r),
        }
    })
    .await;
    match finished {
        Ok(r) => Ok((started.elapsed(), r)),
        Err(err) => Err(format!("{err}{}", last_warnings(coordinator))),
    }
}

/// The coordinator's warnings and errors: how many, and the last three.
fn last_warnings(coordinator: &CoordinatorFixture) -> String {
    let log = coordinator.log_text();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    let last: Vec<&str> = warnings.iter().rev().take(3).rev().copied().collect();
    format!(
        "\nthe coordinator logged {} warnings and errors; the last:\n  {}",
        warnings.len(),
        last.join("\n  ")
    )
}

/// The plan's minimum: each batch's start + ready delay +
/// `min_healthy_time`, then the final bake (the strategy's, set here).
fn plan_minimum(record: &serde_json::Value) -> Duration {
    let per_batch = Duration::from_millis(START_DELAY_MS + READY_DELAY_MS + MIN_HEALTHY_MS);
    per_batch * u32::try_from(batches(record)).unwrap() + Duration::from_millis(BAKE_MS)
}

/// Batches in the plan, every wave's (the record's header says).
fn batches(record: &serde_json::Value) -> usize {
    record["batches"]
        .as_u64()
        .and_then(|b| usize::try_from(b).ok())
        .unwrap_or(0)
}

/// Agents the coordinator counts as connected (its `lockstep_agents`
/// gauge: no `lockstep agents` listing, whose size grows with the fleet).
async fn reachable(metrics: SocketAddr) -> usize {
    get(metrics, "/metrics")
        .await
        .lines()
        .find_map(|l| l.strip_prefix("lockstep_agents{state=\"connected\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as usize)
}

/// `lockstep ARGS` (text): wall time, line count, success.
async fn timed(urls: &[String], args: &[&str]) -> (Duration, usize, String) {
    let started = Instant::now();
    let output = lockstep(urls, args).await.unwrap();
    let took = started.elapsed();
    let lines = String::from_utf8_lossy(&output.stdout).lines().count();
    let failure = if output.status.success() {
        String::new()
    } else {
        format!(
            " FAILED: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )
    };
    (took, lines, failure)
}

/// What does not need a deployment: the coordinator's peak RSS, and how
/// long `lockstep status` and `lockstep agents` take (text output).
async fn fleet_figures(coordinator: &CoordinatorFixture, urls: &[String]) {
    if let Some(pid) = coordinator.pid() {
        let peak = Usage::of(pid).unwrap().peak_rss_bytes;
        println!(
            "nodesim_rollout: coordinator peak RSS {:.1} MB (VmHWM)",
            peak as f64 / 1e6
        );
    }
    for args in [&["status"][..], &["agents"][..]] {
        let (took, lines, failure) = timed(urls, args).await;
        println!(
            "nodesim_rollout: `lockstep {}` {:.3} s, {lines} lines{failure} (goal < 1 s)",
            args.join(" "),
            took.as_secs_f64()
        );
    }
}

async fn run(hosts: usize, clusters: usize, deployments: usize, max_unavailable: &str) {
    // Far above any plan's minimum here: a deployment still running then
    // is stuck.
    let limit = Duration::from_secs(u64::try_from(flag("deadline-secs", 900)).unwrap());
    let etcd = EtcdCluster::single().await.unwrap();
    let metrics_port = free_loopback_port().unwrap();
    // `[history]`: the coordinator's defaults unless the flags say.
    let history = match (text_flag("retention"), text_flag("keep")) {
        (None, None) => String::new(),
        (retention, keep) => format!(
            "[history]\nretention = \"{}\"\nkeep = {}\n",
            retention.unwrap_or_else(|| "720h".to_owned()),
            keep.unwrap_or_else(|| "20".to_owned())
        ),
    };
    let coordinator = CoordinatorFixture::start_with_tables(
        &etcd.endpoints(),
        10,
        None,
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n{history}"),
    )
    .await
    .unwrap();
    let metrics_addr: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let urls = vec![coordinator.url()];
    let mut client = etcd.client().await.unwrap();
    for c in 0..clusters {
        client
            .put(
                format!("/lockstep/v1/clusters/cluster-{c}/policy"),
                format!("{{\"max_disruptions\":{hosts}}}"),
                None,
            )
            .await
            .unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let mut digests = Vec::new();
    for version in ["1.0.0", "2.0.0"] {
        let bundle = DemoRelease::new(version, 1).build(work.path()).unwrap();
        digests.push(push(&urls, &bundle).await.unwrap());
    }
    // One process holds at most HOSTS_PER_PROCESS hosts (two open files
    // each): a larger fleet is several simulators, each with its own ids
    // and addresses.
    let shards = hosts.div_ceil(NodesimFixture::HOSTS_PER_PROCESS);
    let joined = Instant::now();
    let mut sims = Vec::with_capacity(shards);
    for shard in 0..shards {
        let options = NodesimOptions {
            hosts: hosts / shards + usize::from(shard < hosts % shards),
            clusters,
            start_delay_ms: START_DELAY_MS,
            ready_delay_ms: READY_DELAY_MS,
            id_prefix: format!("sim{shard}"),
            address_base: std::net::Ipv4Addr::new(127, 64 + u8::try_from(shard).unwrap(), 0, 0),
            extra: vec!["--no-budget".to_owned()],
            ..NodesimOptions::default()
        };
        sims.push(
            NodesimFixture::start(&etcd.endpoints(), &urls, &options)
                .await
                .unwrap(),
        );
    }
    let known = wait_for(
        "every virtual host to report",
        Duration::from_secs(900),
        || async {
            match reachable(metrics_addr).await {
                n if n >= hosts => Ok(()),
                n => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Err(format!("{n} of {hosts} reachable"))
                }
            }
        },
    )
    .await;
    if let Err(err) = known {
        let log = sims[0].log_text();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        panic!(
            "{err}\nnodesim log (last lines, newest first):\n{}",
            tail.join("\n")
        );
    }
    println!(
        "nodesim_rollout: {hosts} hosts in {clusters} clusters registered and reporting in {:.1} s",
        joined.elapsed().as_secs_f64()
    );
    let rss_mb = |pid| Usage::of(pid).map_or(f64::NAN, |u| u.rss_bytes as f64 / 1e6);
    if let Some(pid) = coordinator.pid() {
        // Where the memory goes: what the Report streams and the fleet
        // view hold, before any deployment dials an agent.
        println!(
            "nodesim_rollout: coordinator RSS with every host reporting, before any deployment: {:.1} MB (VmRSS)",
            rss_mb(pid)
        );
    }
    let strategy = work.path().join("strategy.toml");
    std::fs::write(
        &strategy,
        format!(
            "[strategy]\ncanary = 1\nrehearse_rollback = false\nmax_unavailable = \"{max_unavailable}\"\nmin_healthy = \"50%\"\nmin_healthy_time = \"{MIN_HEALTHY_MS}ms\"\nbake_time = \"{BAKE_MS}ms\"\nhealthy_deadline = \"120s\"\n"
        ),
    )
    .unwrap();
    let (first_wall, first) =
        match deploy_and_wait(&etcd, &coordinator, &digests[0], &strategy, limit).await {
            Ok(done) => done,
            Err(why) => {
                println!("nodesim_rollout: FAILED: the first install did not end: {why}");
                fleet_figures(&coordinator, &urls).await;
                return;
            }
        };
    assert_eq!(first["state"], "succeeded", "first install: {first}");
    println!(
        "nodesim_rollout: first install {:.2} s ({} batches)",
        first_wall.as_secs_f64(),
        batches(&first)
    );
    let pid = coordinator.pid().unwrap();
    println!(
        "nodesim_rollout: coordinator RSS after the first install: {:.1} MB (VmRSS)",
        rss_mb(pid)
    );
    let etcd_metrics = etcd_addr(&etcd);
    let before_etcd = get(etcd_metrics, "/metrics").await;
    let before_coordinator = get(metrics_addr, "/metrics").await;
    let cpu_before = Usage::of(pid).unwrap().cpu_seconds;
    // Everyone else on the same cores: etcd and the simulators.
    let others: Vec<u32> = etcd
        .pid(0)
        .ok()
        .flatten()
        .into_iter()
        .chain(sims.iter().filter_map(NodesimFixture::pid))
        .collect();
    let cpu_of = |pids: &[u32]| -> f64 {
        pids.iter()
            .filter_map(|p| Usage::of(*p).ok())
            .map(|u| u.cpu_seconds)
            .sum()
    };
    let others_before = cpu_of(&others);
    let mut walls = Duration::ZERO;
    let mut ratios = Vec::new();
    for n in 0..deployments {
        let digest = &digests[(n + 1) % 2];
        let (wall, r) = match deploy_and_wait(&etcd, &coordinator, digest, &strategy, limit).await {
            Ok(done) => done,
            Err(why) => {
                println!("nodesim_rollout: FAILED: deployment {n} did not end: {why}");
                fleet_figures(&coordinator, &urls).await;
                return;
            }
        };
        assert_eq!(r["state"], "succeeded", "deployment {n}: {r}");
        walls += wall;
        let minimum = plan_minimum(&r);
        ratios.push(wall.as_secs_f64() / minimum.as_secs_f64());
        if n == 0 {
            println!(
                "nodesim_rollout: first update wall {:.2} s, plan minimum {:.2} s ({} batches + bake), ratio {:.3}",
                wall.as_secs_f64(),
                minimum.as_secs_f64(),
                batches(&r),
                ratios[0]
            );
            match deployment_events(&etcd, r["id"].as_str().unwrap_or_default()).await {
                Ok(events) => println!(
                    "nodesim_rollout: {}",
                    BatchTimeline::of(&events)
                        .describe(START_DELAY_MS + READY_DELAY_MS, MIN_HEALTHY_MS)
                ),
                Err(err) => println!("nodesim_rollout: batch timeline: n/a ({err})"),
            }
        }
    }
    let cpu_after = Usage::of(pid).unwrap().cpu_seconds;
    let others_after = cpu_of(&others);
    let after_etcd = get(etcd_metrics, "/metrics").await;
    let per = |name: &str| match (metric(&before_etcd, name), metric(&after_etcd, name)) {
        (Some(b), Some(a)) => format!("{:.0} KiB", (a - b) / deployments as f64 / 1024.0),
        _ => "n/a".to_owned(),
    };
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    let worst = ratios.iter().copied().fold(0.0, f64::max);
    println!(
        "nodesim_rollout: {deployments} deployments: ratio mean {mean:.3}, worst {worst:.3} (goal <= 1.05)"
    );
    println!(
        "nodesim_rollout: coordinator CPU {:.2} s per deployment (utime + stime)",
        (cpu_after - cpu_before) / deployments as f64
    );
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "nodesim_rollout: etcd and the simulators: CPU {:.2} s per deployment; all three used {:.0} % of the {cores} cores' time during the deployments",
        (others_after - others_before) / deployments as f64,
        100.0 * (cpu_after - cpu_before + others_after - others_before)
            / (walls.as_secs_f64() * cores as f64)
    );
    println!(
        "nodesim_rollout: etcd per deployment: WAL written {} (etcd_disk_wal_write_bytes_total), client requests {} (etcd_network_client_grpc_received_bytes_total)",
        per("etcd_disk_wal_write_bytes_total"),
        per("etcd_network_client_grpc_received_bytes_total")
    );
    let coordinator_metrics = get(metrics_addr, "/metrics").await;
    println!(
        "nodesim_rollout: largest journal transaction: {}",
        metric(&coordinator_metrics, "lockstep_journal_txn_bytes_largest").map_or(
            "n/a (lockstep_journal_txn_bytes_largest not exported)".to_owned(),
            |b| format!("{b:.0} bytes (goal <= 131072)")
        )
    );
    commit_profile(&before_coordinator, &coordinator_metrics, deployments);
    let mb = |name: &str| {
        metric(&after_etcd, name).map_or("n/a".to_owned(), |v| format!("{:.1} MB", v / 1e6))
    };
    println!(
        "nodesim_rollout: etcd db after {} deployments: {} ({} in use)",
        deployments + 1,
        mb("etcd_mvcc_db_total_size_in_bytes"),
        mb("etcd_mvcc_db_total_size_in_use_in_bytes")
    );
    live_footprint(&etcd).await;
    fleet_figures(&coordinator, &urls).await;
    drop(sims);
}

/// What the coordinator keeps in etcd now, whatever etcd's history holds:
/// the live keys and their bytes, then the db size once etcd compacts and
/// defragments (as a cluster with `--auto-compaction-retention` does).
async fn live_footprint(etcd: &EtcdCluster) {
    let mut client = etcd.client().await.unwrap();
    // In pages: at 10,000 hosts the whole prefix is about 19 MB, over
    // the client's 4 MiB answer limit, and 500 keys (snapshot chunks of up
    // to 64 KiB among them) made one page of 4.5 MB: 50 stay under it.
    let (mut keys, mut bytes, mut deployments, mut revision) = (0, 0, 0, 0);
    let mut from = b"/lockstep/".to_vec();
    loop {
        let options = etcd_client::GetOptions::new()
            .with_range("/lockstep0")
            .with_limit(50)
            .with_revision(revision);
        let page = match client.get(from.clone(), Some(options)).await {
            Ok(page) => page,
            Err(err) => {
                println!("nodesim_rollout: live under /lockstep/: n/a ({err})");
                return;
            }
        };
        if revision == 0 {
            revision = page.header().map_or(0, |h| h.revision());
        }
        for kv in page.kvs() {
            keys += 1;
            bytes += kv.key().len() + kv.value().len();
            if kv.key().starts_with(b"/lockstep/v1/deployments/") {
                deployments += 1;
            }
        }
        match page.kvs().last() {
            Some(last) if page.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    println!(
        "nodesim_rollout: live under /lockstep/: {keys} keys, {:.1} MB ({deployments} keys under deployments/)",
        bytes as f64 / 1e6
    );
    client
        .compact(
            revision,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    client.defragment().await.unwrap();
    let status = client.status().await.unwrap();
    println!(
        "nodesim_rollout: etcd db after compaction and defragment: {:.1} MB",
        status.db_size() as f64 / 1e6
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let clusters = flag("clusters", 3);
    let max_unavailable = text_flag("max-unavailable").unwrap_or_else(|| "50%".to_owned());
    let deployments = flag("deployments", 20).max(1);
    for hosts in sizes() {
        println!(
            "nodesim_rollout: === {hosts} hosts, {clusters} clusters, max_unavailable {max_unavailable} ==="
        );
        run(hosts, clusters, deployments, &max_unavailable).await;
    }
}
