//! Mutual TLS on every gRPC hop: a rollout end to end over mTLS, an agent
//! refusing commands (and reads) from identities it does not trust, and the CLI
//! refused without a certificate the coordinator trusts. Every key and
//! certificate comes from a `TestPki` generated at test time.

use std::time::Duration;

use lockstep_tests::operator::{last_line, served_version, strategy, text, until_leading};
use lockstep_tests::{
    AgentFixture, CoordinatorFixture, DemoRelease, EtcdCluster, FleetFixture, TestPki, TlsFiles,
    lockstep, lockstep_tls, wait_for,
};
use proto::v1::agent_service_client::AgentServiceClient;
use tonic::transport::Endpoint;

const DEADLINE: Duration = Duration::from_secs(120);
const TTL_SECS: u64 = 3;
const COORDINATOR: &str = "coordinator.lockstep";

#[tokio::test]
async fn a_rollout_runs_end_to_end_over_mutual_tls() {
    let pki = TestPki::new("lockstep test CA").unwrap();
    let operator = pki.issue("operator.lockstep").unwrap();
    let coordinator_files = pki.issue(COORDINATOR).unwrap();
    let etcd = EtcdCluster::single().await.unwrap();
    let leader = CoordinatorFixture::start_tls(&etcd.endpoints(), TTL_SECS, &coordinator_files)
        .await
        .unwrap();
    assert!(leader.url().starts_with("https://"), "{}", leader.url());
    until_leading(&etcd, &leader.url()).await.unwrap();
    let standby = CoordinatorFixture::start_tls(&etcd.endpoints(), TTL_SECS, &coordinator_files)
        .await
        .unwrap();
    // The standby first: the CLI follows its redirect to the leader's
    // https:// URL.
    let urls = vec![standby.url(), leader.url()];
    let layout = [("tls-west-1", "west"), ("tls-east-1", "east")];
    let fleet = FleetFixture::start_tls(&layout, &etcd.endpoints(), &urls, &pki, &[COORDINATOR])
        .await
        .unwrap();

    wait_for("every agent to report over mTLS", DEADLINE, || async {
        let output = lockstep_tls(&urls, &operator, &["--output", "json", "agents"])
            .await
            .map_err(|e| e.to_string())?;
        let listed: serde_json::Value = serde_json::from_slice(&output.stdout)
            .map_err(|e| format!("{e}: {}", text(&output)))?;
        let reachable = listed
            .as_array()
            .or_else(|| listed["agents"].as_array())
            .map(|a| a.iter().filter(|x| x["reachable"] == true).count())
            .unwrap_or(0);
        if reachable == layout.len() {
            Ok(())
        } else {
            Err(format!("{reachable} reachable: {listed}"))
        }
    })
    .await
    .unwrap();

    let work = tempfile::tempdir().unwrap();
    let fast = strategy(work.path(), "fast", "500ms")
        .unwrap()
        .display()
        .to_string();
    for version in ["1.0.0", "2.0.0"] {
        let bundle = DemoRelease::new(version, 1).build(work.path()).unwrap();
        let mut digest = String::new();
        for url in &urls {
            let output = lockstep_tls(
                std::slice::from_ref(url),
                &operator,
                &["release", "push", &bundle.display().to_string()],
            )
            .await
            .unwrap();
            assert!(output.status.success(), "push {version}: {}", text(&output));
            digest = last_line(&output);
        }
        assert!(digest.starts_with("sha256:"), "push printed {digest:?}");
        let output = lockstep_tls(
            &urls,
            &operator,
            &[
                "deploy",
                "--service",
                "demo",
                "--release",
                &digest,
                "--strategy",
                &fast,
                "--wait",
            ],
        )
        .await
        .unwrap();
        assert!(
            output.status.success(),
            "deploy --wait {version}: {}\nleader log:\n{}",
            text(&output),
            leader.log_text()
        );
        for host in &fleet.hosts {
            assert_eq!(
                served_version(host.addr()).await.unwrap(),
                version,
                "host {}",
                host.id
            );
            assert_eq!(host.agent.current_version("demo").await.unwrap(), version);
        }
    }

    // Both sides said they run with TLS, neither warned about plain text.
    for coordinator in [&leader, &standby] {
        let log = coordinator.log_text();
        assert!(
            log.contains("mTLS: every caller needs a certificate"),
            "{log}"
        );
        assert!(!log.contains("plain-text"), "{log}");
    }
    for host in &fleet.hosts {
        let log = host.agent.log_text();
        assert!(log.contains("AgentService requires mTLS"), "{log}");
        assert!(!log.contains("plain-text"), "{log}");
    }
}

/// Calls `Apply` on the agent at `addr` as the holder of `client`
/// (`None`: plain text, no certificate).
async fn apply_as(
    addr: std::net::SocketAddr,
    client: Option<&TlsFiles>,
    digest: &str,
) -> Result<proto::v1::ApplyResponse, String> {
    let endpoint = match client {
        Some(files) => {
            let material = tls::TlsMaterial::load(&tls::TlsPaths {
                ca: files.ca.clone(),
                cert: files.cert.clone(),
                key: files.key.clone(),
            })
            .unwrap();
            Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(material.client_config())
                .unwrap()
        }
        None => Endpoint::from_shared(format!("http://{addr}")).unwrap(),
    };
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    AgentServiceClient::new(channel)
        .apply(proto::v1::ApplyRequest {
            service: "demo".to_owned(),
            release_digest: digest.to_owned(),
            fencing_token: 1,
            deployment_id: "demo-tls-test".to_owned(),
            command_seq: 0,
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
}

/// Calls `Status` on the agent at `addr` as the holder of `client`.
async fn status_as(addr: std::net::SocketAddr, client: &TlsFiles) -> Result<(), String> {
    let material = tls::TlsMaterial::load(&tls::TlsPaths {
        ca: client.ca.clone(),
        cert: client.cert.clone(),
        key: client.key.clone(),
    })
    .unwrap();
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(material.client_config())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    AgentServiceClient::new(channel)
        .status(proto::v1::StatusRequest::default())
        .await
        .map(drop)
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
}

#[tokio::test]
async fn an_agent_obeys_apply_only_from_a_coordinator_it_trusts() {
    let pki = TestPki::new("lockstep test CA").unwrap();
    let agent_files = pki.issue("host-tls.agents.lockstep").unwrap();
    let agent = AgentFixture::start_with(
        "host-tls",
        "eu-1",
        &format!(
            "\n[tls]\n{}trusted_coordinators = [\"{COORDINATOR}\"]\nviewers = [\"viewer.*\"]\n",
            agent_files.toml_lines()
        ),
    )
    .await
    .unwrap();
    let port = lockstep_tests::free_loopback_port().unwrap();
    let v1 = DemoRelease::new("1.0.0", port).build(agent.dir()).unwrap();
    let v2 = DemoRelease::new("2.0.0", port).build(agent.dir()).unwrap();
    agent.install(&v1).await.unwrap();
    agent.install(&v2).await.unwrap();
    assert_eq!(agent.current_version("demo").await.unwrap(), "2.0.0");
    let releases = agent.agentctl_json(&["releases", "demo"]).await.unwrap();
    let v1_digest = releases["previous"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let addr = agent.grpc_addr();

    // Same CA, but not a coordinator this agent trusts.
    let intruder = pki.issue("intruder.lockstep").unwrap();
    let refused = apply_as(addr, Some(&intruder), &v1_digest)
        .await
        .unwrap_err();
    assert!(refused.starts_with("PermissionDenied"), "{refused}");
    assert!(refused.contains("intruder.lockstep"), "{refused}");
    assert!(refused.contains("tls.trusted_coordinators"), "{refused}");

    // Reads follow roles too: the intruder may not read Status, a viewer
    // (tls.viewers) and the trusted coordinator may.
    let refused = status_as(addr, &intruder).await.unwrap_err();
    assert!(refused.starts_with("PermissionDenied"), "{refused}");
    assert!(
        refused.contains("intruder.lockstep") && refused.contains("tls.viewers"),
        "{refused}"
    );
    let viewer = pki.issue("viewer.lockstep").unwrap();
    status_as(addr, &viewer).await.unwrap();
    status_as(addr, &pki.issue(COORDINATOR).unwrap())
        .await
        .unwrap();

    // No certificate at all: plain text does not get through.
    let plain = apply_as(addr, None, &v1_digest).await;
    assert!(plain.is_err(), "plain text was answered: {plain:?}");

    // The trusted name, but from a CA the agent does not trust.
    let stranger_ca = TestPki::new("someone else's CA").unwrap();
    let impostor = TlsFiles {
        ca: pki.ca().to_owned(),
        ..stranger_ca.issue(COORDINATOR).unwrap()
    };
    let forged = apply_as(addr, Some(&impostor), &v1_digest).await;
    assert!(forged.is_err(), "a foreign CA was accepted: {forged:?}");

    assert_eq!(agent.current_version("demo").await.unwrap(), "2.0.0");
    assert_eq!(
        served_version(([127, 0, 0, 1], port).into()).await.unwrap(),
        "2.0.0"
    );
    let log = agent.log_text();
    assert!(
        log.contains("refused a command from an untrusted identity"),
        "{log}"
    );

    // The trusted coordinator's certificate is obeyed: the refusals above
    // were about identity, not about the request.
    let coordinator = pki.issue(COORDINATOR).unwrap();
    let accepted = apply_as(addr, Some(&coordinator), &v1_digest)
        .await
        .unwrap();
    let verdict = accepted.verdict.unwrap();
    assert_eq!(
        verdict.outcome(),
        proto::v1::CommandOutcome::Accepted,
        "{verdict:?}"
    );
    wait_for("the trusted Apply to switch to 1.0.0", DEADLINE, || async {
        match agent.current_version("demo").await.unwrap().as_str() {
            "1.0.0" => Ok(()),
            other => Err(format!("current {other}")),
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_cli_is_refused_without_a_certificate_the_coordinator_trusts() {
    let pki = TestPki::new("lockstep test CA").unwrap();
    let etcd = EtcdCluster::single().await.unwrap();
    let coordinator = CoordinatorFixture::start_tls(
        &etcd.endpoints(),
        TTL_SECS,
        &pki.issue(COORDINATOR).unwrap(),
    )
    .await
    .unwrap();
    let urls = vec![coordinator.url()];

    // An https URL and no certificate: the CLI says what it needs.
    let output = lockstep(&urls, &["agents"]).await.unwrap();
    assert!(!output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("client certificate"), "{}", text(&output));
    assert!(stderr.contains("--cert"), "{}", text(&output));

    // A certificate from a CA the coordinator does not trust: refused by
    // the coordinator in the handshake.
    let stranger_ca = TestPki::new("someone else's CA").unwrap();
    let stranger = TlsFiles {
        ca: pki.ca().to_owned(),
        ..stranger_ca.issue("operator.lockstep").unwrap()
    };
    let output = lockstep_tls(&urls, &stranger, &["agents"]).await.unwrap();
    assert!(!output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr).to_lowercase();
    assert!(
        stderr.contains("tls") && stderr.contains("certificate"),
        "{}",
        text(&output)
    );

    // Plain text to a TLS coordinator gets nowhere.
    let plain = vec![coordinator.url().replacen("https://", "http://", 1)];
    let output = lockstep(&plain, &["agents"]).await.unwrap();
    assert!(!output.status.success(), "{}", text(&output));

    // A file that cannot be read is named.
    let missing = TlsFiles {
        key: pki.ca().with_file_name("missing.key"),
        ..pki.issue("operator.lockstep").unwrap()
    };
    let output = lockstep_tls(&urls, &missing, &["agents"]).await.unwrap();
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("missing.key"),
        "{}",
        text(&output)
    );

    // The operator's own certificate works.
    let operator = pki.issue("operator.lockstep").unwrap();
    let output = lockstep_tls(&urls, &operator, &["agents"]).await.unwrap();
    assert!(output.status.success(), "{}", text(&output));
}
