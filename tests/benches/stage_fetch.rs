//! Staging at scale: one coordinator serving a release of SIZE_MB to HOSTS
//! agents through `FetchRelease`, the call an agent makes when it is
//! staged or applied a release it does not hold. It prints, for each
//! concurrency given, the wall time, the coordinator's egress (payload
//! bytes served) and its CPU seconds. The driver stages 4 hosts at a time
//! (`STAGE_CONCURRENCY`); an Apply to a host not yet staged fetches at
//! once, so a whole batch can fetch together.
//!
//! Only the coordinator's side is measured: the fetching "agents" are
//! tasks of this process, each on its own connection, that count bytes
//! (real agents verify the digest on their own hosts' CPUs).
//!
//! `cargo build --release --workspace --bins && cargo bench -p lockstep-tests --bench stage_fetch [-- HOSTS SIZE_MB CONCURRENCY...]`
//! (defaults: 1000 hosts, 50 MB, concurrency 4 and 64)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use lockstep_tests::operator::push;
use lockstep_tests::{CoordinatorFixture, DemoRelease, EtcdCluster, Usage};
use proto::v1::FetchReleaseRequest;
use proto::v1::coordinator_service_client::CoordinatorServiceClient;
use tonic::transport::{Channel, Endpoint};

fn numbers() -> Vec<u64> {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// One agent's fetch of the whole release; the bytes it received.
async fn fetch(channel: Channel, digest: String) -> u64 {
    let mut client = CoordinatorServiceClient::new(channel);
    let mut stream = client
        .fetch_release(FetchReleaseRequest { digest, offset: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut bytes = 0u64;
    while let Some(chunk) = stream.message().await.unwrap() {
        bytes += chunk.data.len() as u64;
    }
    bytes
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = numbers();
    let hosts = args.first().copied().unwrap_or(1000);
    let size_mb = args.get(1).copied().unwrap_or(50);
    let concurrencies = match args.get(2..) {
        Some(given) if !given.is_empty() => given.to_vec(),
        _ => vec![4, 64],
    };
    let etcd = EtcdCluster::single().await.unwrap();
    let coordinator = CoordinatorFixture::start(&etcd.endpoints(), 10)
        .await
        .unwrap();
    let pid = coordinator.pid().unwrap();
    let urls = vec![coordinator.url()];
    let work = tempfile::tempdir().unwrap();
    let bundle = DemoRelease::new("1.0.0", 1)
        .with_payload(usize::try_from(size_mb).unwrap() * 1024 * 1024)
        .build(work.path())
        .unwrap();
    let size = std::fs::metadata(&bundle).unwrap().len();
    let digest = push(&urls, &bundle).await.unwrap();
    for concurrency in concurrencies {
        // One connection per fetch in flight, as each agent has its own.
        let mut channels = Vec::new();
        for _ in 0..concurrency {
            channels.push(
                Endpoint::from_shared(coordinator.url())
                    .unwrap()
                    .connect()
                    .await
                    .unwrap(),
            );
        }
        let cpu_before = Usage::of(pid).unwrap().cpu_seconds;
        let started = Instant::now();
        let permits = Arc::new(tokio::sync::Semaphore::new(
            usize::try_from(concurrency).unwrap(),
        ));
        let mut fetches = tokio::task::JoinSet::new();
        for host in 0..hosts {
            let channel = channels[usize::try_from(host % concurrency).unwrap()].clone();
            let (permits, digest) = (permits.clone(), digest.clone());
            fetches.spawn(async move {
                let _permit = permits.acquire_owned().await.unwrap();
                fetch(channel, digest).await
            });
        }
        let mut egress = 0u64;
        while let Some(bytes) = fetches.join_next().await {
            let bytes = bytes.unwrap();
            assert_eq!(bytes, size, "a fetch ended short");
            egress += bytes;
        }
        let wall = started.elapsed().as_secs_f64();
        let cpu = Usage::of(pid).unwrap().cpu_seconds - cpu_before;
        let gb = egress as f64 / 1e9;
        println!(
            "stage_fetch: {hosts} hosts x {:.1} MB, {concurrency} at a time: {wall:.1} s, coordinator egress {gb:.2} GB ({:.2} GB/s), coordinator CPU {cpu:.1} s ({:.2} s per GB)",
            size as f64 / 1e6,
            gb / wall,
            cpu / gb
        );
    }
}
