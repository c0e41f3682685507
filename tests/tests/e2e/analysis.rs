//! Analysis gates with the real thing (#16 deliver 2, and deliver 4's
//! analysis part): a real Prometheus scrapes every host's demo app every
//! second (one scrape job per host, so `job` is the host's id), a client
//! posts to every host the whole time, and the coordinator's
//! `[prometheus] url` points at it. A release that is ready but answers
//! 20 % of requests with 500 passes readiness and is rolled back by the
//! canary's error-rate analysis; a good release passes; with Prometheus
//! down the deployment halts as inconclusive, neither passed nor rolled
//! back.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lockstep_tests::http::{PollReport, Poller};
use lockstep_tests::operator::{
    agents_known, every_host_serves, finished, push, record, served_version, start_deploy,
    strategy_with, text,
};
use lockstep_tests::{
    CoordinatorFixture, DEMO_SERVICE, DemoRelease, EtcdCluster, FleetFixture, PrometheusFixture,
    ScrapeJob, free_loopback_port, lockstep, wait_for,
};

const TTL_SECS: u64 = 3;
/// Every host overrides the release's listen address with its own port.
const ANY_PORT: u16 = 1;
const DEADLINE: Duration = Duration::from_secs(120);
/// One cluster of three: the canary is one host, the rest go after it.
const LAYOUT: &[(&str, &str)] = &[("web-1", "web"), ("web-2", "web"), ("web-3", "web")];

/// The demo's error rate on the measured hosts: 500s over all publishes
/// in the last 5 s (`or vector(0)`: no 500 series yet is a rate of 0, not
/// "no data").
const ERROR_RATE: &str = r#"(sum(rate(demo_http_requests_total{job=~"$hosts",route="/publish",code="500"}[5s])) or vector(0)) / sum(rate(demo_http_requests_total{job=~"$hosts",route="/publish"}[5s]))"#;

/// The canary's error rate must stay under 5 % over three measurements
/// 2 s apart; one failure or one inconclusive measurement decides.
fn analysed(extra: &str) -> String {
    format!(
        "rehearse_rollback = false\nbake_time = \"0s\"\n\
         [[strategy.analysis]]\nname = \"error-rate\"\nquery = '{ERROR_RATE}'\n\
         success = \"result < 0.05\"\ninterval = \"2s\"\ncount = 3\nphases = [\"canary\"]\n{extra}"
    )
}

struct Stage {
    etcd: EtcdCluster,
    _coordinator: CoordinatorFixture,
    urls: Vec<String>,
    fleet: FleetFixture,
    prometheus: PrometheusFixture,
    work: tempfile::TempDir,
}

impl Stage {
    /// etcd, a coordinator whose `[prometheus] url` is a Prometheus that
    /// scrapes every host, and the fleet on a good 1.0.0.
    async fn start() -> Self {
        let etcd = EtcdCluster::single().await.unwrap();
        let prometheus_addr: SocketAddr = ([127, 0, 0, 1], free_loopback_port().unwrap()).into();
        let coordinator = CoordinatorFixture::start_with_tables(
            &etcd.endpoints(),
            TTL_SECS,
            None,
            &format!("[prometheus]\nurl = \"http://{prometheus_addr}\"\n"),
        )
        .await
        .unwrap();
        let urls = vec![coordinator.url()];
        let fleet = FleetFixture::start(LAYOUT, &etcd.endpoints(), &urls)
            .await
            .unwrap();
        agents_known(&urls, LAYOUT.len()).await.unwrap();
        let jobs: Vec<ScrapeJob> = fleet
            .hosts
            .iter()
            .map(|h| ScrapeJob {
                name: h.id.clone(),
                targets: vec![h.addr()],
            })
            .collect();
        let prometheus = PrometheusFixture::start_at(prometheus_addr, &jobs)
            .await
            .unwrap();
        let work = tempfile::tempdir().unwrap();
        let stage = Self {
            etcd,
            _coordinator: coordinator,
            urls,
            fleet,
            prometheus,
            work,
        };
        let plain = stage.strategy("plain", "");
        let v1 = DemoRelease::new("1.0.0", ANY_PORT)
            .build(stage.work.path())
            .unwrap();
        let r = stage.deploy(&v1, &plain).await;
        assert_eq!(r["state"], "succeeded", "{r}");
        every_host_serves(&stage.fleet, "1.0.0").await.unwrap();
        stage
    }

    fn strategy(&self, name: &str, extra: &str) -> PathBuf {
        strategy_with(self.work.path(), name, "2s", extra).unwrap()
    }

    fn release(&self, version: &str, faults: &str) -> PathBuf {
        DemoRelease::new(version, ANY_PORT)
            .with_config(&format!("[faults]\n{faults}"))
            .build(self.work.path())
            .unwrap()
    }

    async fn deploy(&self, bundle: &Path, strategy: &Path) -> serde_json::Value {
        let digest = push(&self.urls, bundle).await.unwrap();
        let id = start_deploy(&self.urls, &digest, strategy).await.unwrap();
        finished(&self.etcd, &id).await.unwrap()
    }

    /// A client on every host, once Prometheus has seen each one's traffic
    /// (so the first measurement has data).
    async fn clients(&self) -> Vec<(String, Poller)> {
        let pollers: Vec<(String, Poller)> = self
            .fleet
            .hosts
            .iter()
            .map(|h| (h.id.clone(), Poller::start(h.addr())))
            .collect();
        let seen = r#"count(rate(demo_http_requests_total{route="/publish"}[5s]) > 0)"#;
        let hosts = self.fleet.hosts.len() as f64;
        wait_for(
            "Prometheus to see every host's traffic",
            DEADLINE,
            || async {
                match self.prometheus.scalar(seen).await {
                    Ok(Some(n)) if n >= hosts => Ok(()),
                    other => Err(format!("{seen} = {other:?}")),
                }
            },
        )
        .await
        .unwrap();
        pollers
    }
}

async fn stop(pollers: Vec<(String, Poller)>) -> Vec<(String, PollReport)> {
    let mut reports = Vec::new();
    for (host, poller) in pollers {
        reports.push((host, poller.stop().await));
    }
    reports
}

/// #16 deliver 2/4: a release that starts and becomes ready but answers
/// 20 % of `/publish` with 500 passes readiness, and the canary's
/// error-rate analysis rolls it back: the reason names the analysis, the
/// measured value, the condition and the query, and no client of a host
/// outside the canary saw a failed request.
#[tokio::test]
async fn an_error_serving_canary_is_rolled_back_by_its_analysis() {
    let stage = Stage::start().await;
    let erring = stage.release("2.0.0", "error_percent = 20\n");
    let strategy = stage.strategy("analysed", &analysed(""));
    let clients = stage.clients().await;
    let r = stage.deploy(&erring, &strategy).await;
    let reports = stop(clients).await;
    assert_eq!(r["state"], "rolled_back", "{r}");
    let outcome = r["outcome"].as_str().unwrap_or_default();
    println!("reason: {outcome}");
    for want in [
        "analysis error-rate failed (canary)",
        "does not satisfy result < 0.05",
        "query: (sum(rate(demo_http_requests_total{job=~\"$hosts\"",
    ] {
        assert!(outcome.contains(want), "{want:?} missing from: {outcome}");
    }
    // The canary is the one host whose client saw the bad release.
    let canary: Vec<&String> = reports
        .iter()
        .filter(|(_, r)| r.versions.iter().any(|v| v == "2.0.0"))
        .map(|(host, _)| host)
        .collect();
    assert_eq!(canary.len(), 1, "one canary: {reports:?}");
    for (host, report) in &reports {
        if host == canary[0] {
            assert!(report.failed > 0, "the canary served no error: {report:?}");
        } else {
            assert_eq!(report.failed, 0, "{host} outside the canary: {report:?}");
        }
    }
    every_host_serves(&stage.fleet, "1.0.0").await.unwrap();
}

/// #16 deliver 2/4: `lockstep plan` shows the analysis, a good release
/// passes it, and no client saw a failed request.
#[tokio::test]
async fn a_good_release_passes_its_analysis() {
    let stage = Stage::start().await;
    let good = stage.release("2.0.0", "error_percent = 0\n");
    let strategy = stage.strategy("analysed", &analysed(""));
    let digest = push(&stage.urls, &good).await.unwrap();
    let strategy_arg = strategy.display().to_string();
    let plan = lockstep(
        &stage.urls,
        &[
            "plan",
            "--service",
            DEMO_SERVICE,
            "--release",
            &digest,
            "--strategy",
            &strategy_arg,
        ],
    )
    .await
    .unwrap();
    let shown = text(&plan);
    assert!(plan.status.success(), "{shown}");
    for want in [
        "error-rate: result < 0.05, 3 x 2s, failure_limit 0, inconclusive_limit 0 [canary], inconclusive: halt",
        &format!("query: {ERROR_RATE}"),
    ] {
        assert!(shown.contains(want), "{want:?} missing from: {shown}");
    }
    let clients = stage.clients().await;
    let id = start_deploy(&stage.urls, &digest, &strategy).await.unwrap();
    let r = finished(&stage.etcd, &id).await.unwrap();
    let reports = stop(clients).await;
    assert_eq!(r["state"], "succeeded", "{r}");
    for (host, report) in &reports {
        assert_eq!(report.failed, 0, "{host}: {report:?}");
    }
    every_host_serves(&stage.fleet, "2.0.0").await.unwrap();
}

/// #16 deliver 2/4: with Prometheus down the canary's analysis cannot
/// measure: the deployment halts for the operator as inconclusive (state
/// paused, the reason says why), with the canary left on the new release
/// and the rest on the old one: neither passed nor rolled back.
#[tokio::test]
async fn with_prometheus_down_the_deployment_halts_as_inconclusive() {
    let mut stage = Stage::start().await;
    stage.prometheus.kill();
    let good = stage.release("2.0.0", "error_percent = 0\n");
    let strategy = stage.strategy("analysed", &analysed(""));
    let digest = push(&stage.urls, &good).await.unwrap();
    let id = start_deploy(&stage.urls, &digest, &strategy).await.unwrap();
    let r = wait_for("the deployment to halt", DEADLINE, || async {
        let r = record(&stage.etcd, &id).await.map_err(|e| e.to_string())?;
        if r["state"] == "paused" {
            Ok(r)
        } else {
            Err(format!("state {} outcome {}", r["state"], r["outcome"]))
        }
    })
    .await
    .unwrap();
    let outcome = r["outcome"].as_str().unwrap_or_default();
    println!("reason: {outcome}");
    assert!(
        outcome.starts_with("halted: analysis error-rate inconclusive (canary)"),
        "{outcome}"
    );
    assert!(outcome.contains("cannot connect"), "{outcome}");
    // Exactly one host, the canary, runs the new release: nothing passed
    // and nothing was rolled back.
    let mut versions = Vec::new();
    for host in &stage.fleet.hosts {
        versions.push(served_version(host.addr()).await.unwrap());
    }
    versions.sort();
    assert_eq!(versions, ["1.0.0", "1.0.0", "2.0.0"]);
}

/// #16 (https to Prometheus): a real Prometheus serving its API over TLS
/// (`--web.config.file`, a certificate from a test CA) answers the
/// coordinator's analysis client when `ca_file` is that CA, and the same
/// client trusting another CA gets an inconclusive error naming the TLS
/// failure, not an answer.
#[tokio::test]
async fn the_analysis_client_queries_a_real_prometheus_over_https_only_from_its_ca() {
    use coordinator::analysis::{PrometheusEndpoint, query};
    use rollout::analysis::Sample;
    let pki = lockstep_tests::TestPki::new("prometheus CA").unwrap();
    let prometheus = PrometheusFixture::start_tls(&[], &pki.issue("prometheus.test").unwrap())
        .await
        .unwrap();
    let url = prometheus.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let timeout = Duration::from_secs(10);
    let trusted = PrometheusEndpoint::parse(&url, Some(pki.ca())).unwrap();
    assert_eq!(
        query(&trusted, "vector(0.25)", timeout).await,
        Sample::Value(0.25)
    );
    let other = lockstep_tests::TestPki::new("another CA").unwrap();
    let untrusted = PrometheusEndpoint::parse(&url, Some(other.ca())).unwrap();
    let Sample::Error(why) = query(&untrusted, "vector(0.25)", timeout).await else {
        panic!("a Prometheus from another CA answered");
    };
    assert_eq!(
        why,
        format!(
            "prometheus {url}: TLS handshake with 127.0.0.1 failed: invalid peer certificate: UnknownIssuer"
        )
    );
    // Plain http to the TLS port is no answer either.
    let plain = PrometheusEndpoint::parse(&url.replace("https://", "http://"), None).unwrap();
    assert!(matches!(
        query(&plain, "vector(0.25)", timeout).await,
        Sample::Error(_)
    ));
}
