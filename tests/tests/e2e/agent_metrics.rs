//! The agent's metrics endpoint end to end (#16): a real agent with
//! `[metrics] listen` installs a demo release, its app is killed and
//! restarted, and `/metrics` says so — in an exposition `promtool check
//! metrics` accepts, and to a real Prometheus scraping it. Also: a taken
//! port stops the agent naming the key; `/readyz` follows the etcd session;
//! a deploy through a coordinator counts fetched bytes and the budget wait.

use std::net::SocketAddr;
use std::time::Duration;

use lockstep_tests::http::request;
use lockstep_tests::{
    AgentFixture, DemoRelease, PrometheusFixture, ScrapeJob, free_loopback_port,
    promtool_check_metrics, wait_for,
};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(120);

/// The value of the sample `series` (name and labels, exactly as exposed).
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    })
}

async fn scrape(addr: SocketAddr) -> Result<String, String> {
    match request(addr, "GET", "/metrics", "").await? {
        (200, body) => Ok(body),
        (code, body) => Err(format!("/metrics answered {code}: {body}")),
    }
}

/// The demo's single instance, once ready: its pid.
async fn ready_pid(agent: &AgentFixture, not: Option<i64>) -> i64 {
    wait_for("the demo instance to be ready", DEADLINE, || async {
        let status: Value = agent
            .agentctl_json(&["status", "demo"])
            .await
            .map_err(|e| e.to_string())?;
        let i = &status["services"][0]["instances"][0];
        match (i["ready"] == true, i["pid"].as_i64()) {
            (true, Some(pid)) if Some(pid) != not => Ok(pid),
            _ => Err(format!("instance is {i}")),
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_agent_exposes_its_restarts_switches_and_health() {
    let metrics: SocketAddr = ([127, 0, 0, 1], free_loopback_port().unwrap()).into();
    let agent = AgentFixture::start_with(
        "metrics-1",
        "eu",
        &format!("\n[metrics]\nlisten = \"{metrics}\"\n"),
    )
    .await
    .unwrap();
    let port = free_loopback_port().unwrap();
    let release = DemoRelease::new("1.0.0", port).build(agent.dir()).unwrap();
    agent.install(&release).await.unwrap();
    let pid = ready_pid(&agent, None).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    ready_pid(&agent, Some(pid)).await;

    let exposition = wait_for("the restart to be counted", DEADLINE, || async {
        let text = scrape(metrics).await?;
        let wanted = [
            (
                r#"lockstep_agent_instances{service="demo",state="ready"}"#,
                1.0,
            ),
            (r#"lockstep_agent_restarts_total{service="demo"}"#, 1.0),
            (
                r#"lockstep_agent_switches_total{service="demo",outcome="succeeded"}"#,
                1.0,
            ),
        ];
        for (series, at_least) in wanted {
            match sample(&text, series) {
                Some(v) if v >= at_least => {}
                other => return Err(format!("{series} = {other:?} in\n{text}")),
            }
        }
        Ok(text)
    })
    .await
    .unwrap();
    promtool_check_metrics(&exposition).unwrap();
    assert_eq!(
        sample(
            &exposition,
            r#"lockstep_agent_instances{service="demo",state="ready"}"#
        ),
        Some(1.0),
        "{exposition}"
    );
    assert!(
        sample(
            &exposition,
            r#"lockstep_agent_probe_duration_seconds_count{service="demo"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{exposition}"
    );
    assert_eq!(
        sample(&exposition, "lockstep_agent_etcd_session"),
        Some(0.0),
        "no [etcd]: {exposition}"
    );
    for path in ["/healthz", "/readyz"] {
        let (code, body) = request(metrics, "GET", path, "").await.unwrap();
        assert_eq!(code, 200, "{path}: {body}");
    }

    let prometheus = PrometheusFixture::start(&[ScrapeJob {
        name: "agent".into(),
        targets: vec![metrics],
    }])
    .await
    .unwrap();
    let query = r#"sum(lockstep_agent_restarts_total{job="agent",service="demo"})"#;
    wait_for(
        "Prometheus to have scraped the restart",
        DEADLINE,
        || async {
            match prometheus.scalar(query).await {
                Ok(Some(n)) if n >= 1.0 => Ok(()),
                other => Err(format!("{query} = {other:?}")),
            }
        },
    )
    .await
    .unwrap();
}

/// `[metrics] listen` on a port something else holds: the agent refuses
/// to start and names the key.
#[tokio::test]
async fn a_taken_metrics_port_is_refused_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let grpc = free_loopback_port().unwrap();
    std::fs::write(
        &config,
        format!(
            "id = \"metrics-2\"\ncluster = \"eu\"\ndata_dir = \"{data}\"\n[control]\nsocket = \"{sock}\"\n[grpc]\nlisten = \"127.0.0.1:{grpc}\"\n[metrics]\nlisten = \"{addr}\"\n",
            data = dir.path().join("data").display(),
            sock = dir.path().join("agent.sock").display(),
        ),
    )
    .unwrap();
    let agent = lockstep_tests::workspace_bin("lockstep-agent").unwrap();
    let output = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new(&agent)
            .arg("--config")
            .arg(&config)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("metrics.listen") && stderr.contains(&addr.to_string()),
        "{stderr}"
    );
}

/// With `[etcd]`, `/readyz` and `lockstep_agent_etcd_session` follow the
/// session: ready while it lives, 503 naming it once etcd is gone, ready
/// again when etcd is back.
#[tokio::test]
async fn readiness_follows_the_etcd_session() {
    let mut etcd = lockstep_tests::EtcdCluster::single().await.unwrap();
    let metrics: SocketAddr = ([127, 0, 0, 1], free_loopback_port().unwrap()).into();
    let extra = format!(
        "{}\n[metrics]\nlisten = \"{metrics}\"\n",
        etcd.agent_table("5s", "5s")
    );
    let _agent = AgentFixture::start_with("metrics-3", "eu", &extra)
        .await
        .unwrap();
    let session_and_readyz = |session: f64, code: u16, says: &'static str| async move {
        let text = scrape(metrics).await?;
        let alive = sample(&text, "lockstep_agent_etcd_session");
        let (status, body) = request(metrics, "GET", "/readyz", "").await?;
        if alive == Some(session) && status == code && body.contains(says) {
            Ok(())
        } else {
            Err(format!("etcd_session {alive:?}, /readyz {status}: {body}"))
        }
    };
    wait_for("a live session, ready", DEADLINE, || {
        session_and_readyz(1.0, 200, "ready")
    })
    .await
    .unwrap();
    // The registration and the session's grant went through the etcd
    // client, which counts every request (#16 deliver 1).
    let text = scrape(metrics).await.unwrap();
    let granted = sample(
        &text,
        "lockstep_etcd_request_duration_seconds_count{op=\"lease grant\",outcome=\"answered\"}",
    );
    assert!(granted.is_some_and(|n| n >= 1.0), "{text}");
    etcd.kill(0).unwrap();
    wait_for("the lost session, not ready", DEADLINE, || {
        session_and_readyz(0.0, 503, "no etcd session")
    })
    .await
    .unwrap();
    etcd.restart(0).await.unwrap();
    wait_for("a new session, ready again", DEADLINE, || {
        session_and_readyz(1.0, 200, "ready")
    })
    .await
    .unwrap();
}

/// A deploy through a coordinator: the agent fetches the release (its
/// bytes counted), takes a budget slot (its wait observed) and switches.
#[tokio::test]
async fn a_deploy_counts_the_fetched_bytes_and_the_budget_wait() {
    use lockstep_tests::operator::{agents_known, finished, push, start_deploy, strategy};
    let etcd = lockstep_tests::EtcdCluster::single().await.unwrap();
    let coordinator = lockstep_tests::CoordinatorFixture::start(&etcd.endpoints(), 3)
        .await
        .unwrap();
    let urls = vec![coordinator.url()];
    let metrics: SocketAddr = ([127, 0, 0, 1], free_loopback_port().unwrap()).into();
    let port = free_loopback_port().unwrap();
    let extra = format!(
        "\n[coordinator]\nurls = [\"{url}\"]\n{etcd}\n[listen_overrides.demo]\nhttp = \"127.0.0.1:{port}\"\n\n[metrics]\nlisten = \"{metrics}\"\n",
        url = urls[0],
        etcd = etcd.agent_table("3s", "60s"),
    );
    let _agent = AgentFixture::start_configured("fetch-1", "f", "services = [\"demo\"]\n", &extra)
        .await
        .unwrap();
    agents_known(&urls, 1).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let fast = strategy(work.path(), "fast", "200ms").unwrap();
    let mut bundle_bytes = 0;
    // The first release disrupts nothing (no slot); the second replaces it.
    for version in ["1.0.0", "2.0.0"] {
        let bundle = DemoRelease::new(version, 1).build(work.path()).unwrap();
        bundle_bytes += std::fs::metadata(&bundle).unwrap().len();
        let digest = push(&urls, &bundle).await.unwrap();
        let id = start_deploy(&urls, &digest, &fast).await.unwrap();
        let r = finished(&etcd, &id).await.unwrap();
        assert_eq!(r["state"], "succeeded", "{r}");
    }

    let text = scrape(metrics).await.unwrap();
    promtool_check_metrics(&text).unwrap();
    assert_eq!(
        sample(&text, "lockstep_agent_fetch_bytes_total"),
        Some(bundle_bytes as f64),
        "{text}"
    );
    assert!(
        sample(&text, "lockstep_agent_budget_wait_seconds_count").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"lockstep_agent_switches_total{service="demo",outcome="succeeded"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "lockstep_agent_etcd_session"),
        Some(1.0),
        "{text}"
    );
}
