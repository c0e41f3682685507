//! The coordinator's metrics and health endpoints end to end (#16 deliver
//! 1): a coordinator with `[metrics] listen`, a fleet, a good deploy and a
//! refused-config deploy that rolls back. Its `/metrics` passes `promtool
//! check metrics` and counts what happened, `/healthz` and `/readyz`
//! answer 200, and a real Prometheus scraping it sees the leader. A
//! standby that follows a known leader is ready too; without etcd neither
//! is.

use std::net::SocketAddr;
use std::time::Duration;

use lockstep_tests::http::request;
use lockstep_tests::operator::{agents_known, finished, push, start_deploy, strategy};
use lockstep_tests::{
    CoordinatorFixture, DemoRelease, EtcdCluster, FleetFixture, PrometheusFixture, ScrapeJob,
    free_loopback_port, promtool_check_metrics, wait_for,
};

const TTL_SECS: u64 = 3;
/// Every host overrides the release's listen address with its own port.
const ANY_PORT: u16 = 1;
const DEADLINE: Duration = Duration::from_secs(120);
/// A coordinator with `[metrics] listen` on a free port, and that address.
async fn coordinator(etcd: &EtcdCluster) -> (CoordinatorFixture, SocketAddr) {
    let metrics: SocketAddr = ([127, 0, 0, 1], free_loopback_port().unwrap()).into();
    let coordinator = CoordinatorFixture::start_with_tables(
        &etcd.endpoints(),
        TTL_SECS,
        None,
        &format!("[metrics]\nlisten = \"{metrics}\"\n"),
    )
    .await
    .unwrap();
    (coordinator, metrics)
}

/// Waits until `/readyz` answers `code`; its body.
async fn readyz(addr: SocketAddr, code: u16) -> String {
    wait_for("/readyz", DEADLINE, || async {
        match request(addr, "GET", "/readyz", "").await? {
            (c, body) if c == code => Ok(body),
            (c, body) => Err(format!("/readyz answered {c}: {body}")),
        }
    })
    .await
    .unwrap()
}

const LAYOUT: &[(&str, &str)] = &[("m-1", "m"), ("m-2", "m")];

/// The value of the sample `series` (name and labels, as exposed) in
/// Prometheus text `exposition`.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

async fn scrape(addr: SocketAddr) -> Result<String, String> {
    match request(addr, "GET", "/metrics", "").await? {
        (200, text) => Ok(text),
        (code, text) => Err(format!("/metrics answered {code}: {text}")),
    }
}

/// Waits until every `(series, at least)` holds in one scrape; that scrape.
async fn scrape_until(addr: SocketAddr, expected: &[(&str, f64)]) -> String {
    wait_for("the coordinator's metrics", DEADLINE, || async {
        let text = scrape(addr).await?;
        for (series, least) in expected {
            match sample(&text, series) {
                Some(v) if v >= *least => {}
                other => return Err(format!("{series} = {other:?}, want ≥ {least}\n{text}")),
            }
        }
        Ok(text)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_coordinator_counts_deployments_rollbacks_agents_and_pushes() {
    let etcd = EtcdCluster::single().await.unwrap();
    let (leader, metrics) = coordinator(&etcd).await;
    let urls = vec![leader.url()];
    let fleet = FleetFixture::start(LAYOUT, &etcd.endpoints(), &urls)
        .await
        .unwrap();
    agents_known(&urls, LAYOUT.len()).await.unwrap();

    let work = tempfile::tempdir().unwrap();
    let fast = strategy(work.path(), "fast", "500ms").unwrap();
    let good = DemoRelease::new("1.0.0", ANY_PORT)
        .build(work.path())
        .unwrap();
    let refused = DemoRelease::new("2.0.0", ANY_PORT)
        .with_unknown_config_key()
        .build(work.path())
        .unwrap();
    for (bundle, state) in [(&good, "succeeded"), (&refused, "rolled_back")] {
        let digest = push(&urls, bundle).await.unwrap();
        let id = start_deploy(&urls, &digest, &fast).await.unwrap();
        let r = finished(&etcd, &id).await.unwrap();
        assert_eq!(r["state"], state, "{r}");
    }

    let text = scrape_until(
        metrics,
        &[
            (
                "lockstep_deployments_finished_total{outcome=\"rolled_back\"}",
                1.0,
            ),
            ("lockstep_rollbacks_total{reason=\"instance_failed\"}", 1.0),
        ],
    )
    .await;
    promtool_check_metrics(&text).unwrap();
    let fleet_size = f64::from(u32::try_from(fleet.hosts.len()).unwrap());
    for (series, want) in [
        ("lockstep_coordinator_leader", 1.0),
        ("lockstep_deployments_started_total{kind=\"deploy\"}", 2.0),
        (
            "lockstep_deployments_finished_total{outcome=\"rolled_back\"}",
            1.0,
        ),
        ("lockstep_rollbacks_total{reason=\"instance_failed\"}", 1.0),
        ("lockstep_agents{state=\"connected\"}", fleet_size),
        ("lockstep_agents{state=\"unreachable\"}", 0.0),
        ("lockstep_release_pushes_total{result=\"accepted\"}", 2.0),
        ("lockstep_deployments_active{state=\"running\"}", 0.0),
        ("lockstep_deployments_active{state=\"rolling_back\"}", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
    }
    let at_least = |series: &str, least: f64| {
        let v = sample(&text, series).unwrap_or(0.0);
        assert!(v >= least, "{series} = {v}, want ≥ {least} in\n{text}");
    };
    at_least(
        "lockstep_deployments_finished_total{outcome=\"succeeded\"}",
        1.0,
    );
    at_least("lockstep_release_push_bytes_total", 1.0);
    // The journal's fenced writes and the election's reads, counted by
    // the etcd client (#16 deliver 1: etcd request latency and errors).
    at_least(
        "lockstep_etcd_request_duration_seconds_count{op=\"txn\",outcome=\"answered\"}",
        1.0,
    );
    at_least(
        "lockstep_etcd_request_duration_seconds_count{op=\"get\",outcome=\"answered\"}",
        1.0,
    );
    at_least("lockstep_release_fetch_bytes_total", 1.0);
    at_least("lockstep_batch_duration_seconds_count", 1.0);
    // Each journal transaction's size, and the largest (#15 deliver 2: the
    // load generator reads the bound from here).
    at_least("lockstep_journal_txn_bytes_count", 1.0);
    at_least("lockstep_journal_txn_bytes_largest", 256.0);
    at_least(
        "lockstep_deployment_duration_seconds_count{outcome=\"rolled_back\"}",
        1.0,
    );

    let (code, body) = request(metrics, "GET", "/healthz", "").await.unwrap();
    assert_eq!(code, 200, "/healthz: {body}");
    readyz(metrics, 200).await;

    let prometheus = PrometheusFixture::start(&[ScrapeJob {
        name: "coordinator".into(),
        targets: vec![metrics],
    }])
    .await
    .unwrap();
    let query = r#"lockstep_coordinator_leader{job="coordinator"}"#;
    wait_for("Prometheus to scrape the leader", DEADLINE, || async {
        match prometheus.scalar(query).await {
            Ok(Some(1.0)) => Ok(()),
            other => Err(format!("{query} = {other:?}")),
        }
    })
    .await
    .unwrap();
}

/// `/readyz`: a standby is ready once it reads who leads, and does not
/// count itself the leader; with etcd gone neither coordinator is ready,
/// and says why, while `/healthz` still answers.
#[tokio::test]
async fn readiness_follows_the_etcd_session_and_the_known_leader() {
    let mut etcd = EtcdCluster::single().await.unwrap();
    let (_leader, leader_metrics) = coordinator(&etcd).await;
    readyz(leader_metrics, 200).await;
    let (_standby, standby_metrics) = coordinator(&etcd).await;
    readyz(standby_metrics, 200).await;
    let text = scrape(standby_metrics).await.unwrap();
    assert_eq!(
        sample(&text, "lockstep_coordinator_leader"),
        Some(0.0),
        "{text}"
    );
    let text = scrape(leader_metrics).await.unwrap();
    assert_eq!(
        sample(&text, "lockstep_coordinator_leader"),
        Some(1.0),
        "{text}"
    );

    etcd.kill(0).unwrap();
    for addr in [leader_metrics, standby_metrics] {
        let why = readyz(addr, 503).await;
        assert!(!why.trim().is_empty(), "a 503 says why");
        let (code, _) = request(addr, "GET", "/healthz", "").await.unwrap();
        assert_eq!(code, 200);
    }
    let text = scrape(leader_metrics).await.unwrap();
    assert_eq!(
        sample(&text, "lockstep_coordinator_leader"),
        Some(0.0),
        "{text}"
    );
}
