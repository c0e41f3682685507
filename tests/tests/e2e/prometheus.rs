//! The metrics path end to end, with a real Prometheus (#16): a demo app
//! installed by a real agent serves `/metrics`, the exposition passes
//! `promtool check metrics`, and Prometheus scrapes and answers a query
//! over it. The analysis gates are built on this.

use std::time::Duration;

use lockstep_tests::http::request;
use lockstep_tests::{
    AgentFixture, DemoRelease, PrometheusFixture, ScrapeJob, free_loopback_port,
    promtool_check_metrics, wait_for,
};

const DEADLINE: Duration = Duration::from_secs(120);

/// A release that is ready but answers 20 % of `/publish` with 500: the
/// errors are counted, pass promtool's checks, and Prometheus sees them.
#[tokio::test]
async fn prometheus_scrapes_the_demo_apps_error_count() {
    let agent = AgentFixture::start("prom-1", "eu").await.unwrap();
    let port = free_loopback_port().unwrap();
    let erring = DemoRelease::new("1.0.0", port)
        .with_config("[faults]\nerror_percent = 20\n")
        .build(agent.dir())
        .unwrap();
    agent.install(&erring).await.unwrap();
    let addr = ([127, 0, 0, 1], port).into();
    let mut codes = Vec::new();
    for i in 0..50 {
        let (code, _) = request(addr, "POST", "/publish", &format!("m{i}"))
            .await
            .unwrap();
        codes.push(code);
    }
    assert_eq!(codes.iter().filter(|c| **c == 500).count(), 10, "{codes:?}");

    let (status, exposition) = request(addr, "GET", "/metrics", "").await.unwrap();
    assert_eq!(status, 200, "{exposition}");
    promtool_check_metrics(&exposition).unwrap();

    let prometheus = PrometheusFixture::start(&[ScrapeJob {
        name: "demo".into(),
        targets: vec![addr],
    }])
    .await
    .unwrap();
    let query = r#"sum(demo_http_requests_total{job="demo",route="/publish",code="500"})"#;
    wait_for(
        "Prometheus to have scraped the errors",
        DEADLINE,
        || async {
            match prometheus.scalar(query).await {
                Ok(Some(10.0)) => Ok(()),
                other => Err(format!("{query} = {other:?}")),
            }
        },
    )
    .await
    .unwrap();
}
