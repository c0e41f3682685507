//! The control plane trusts only who it should (#14): roles from
//! certificate identities, strategy checks that are configuration and not
//! requests, agents bound to their certificate or etcd registration, and
//! audit actors from the certificate. Real etcd, coordinators and agents;
//! the attacker is a small gRPC client speaking the protocol directly.

use std::path::Path;
use std::time::Duration;

use lockstep_tests::operator::{agents_known, push, text};
use lockstep_tests::{
    AgentFixture, CoordinatorFixture, DemoRelease, EtcdCluster, FleetFixture, TestPki, TlsFiles,
    lockstep, lockstep_tls, wait_for,
};
use proto::v1 as pb;
use proto::v1::coordinator_service_client::CoordinatorServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

const DEADLINE: Duration = Duration::from_secs(120);
const TTL_SECS: u64 = 3;
const COORDINATOR: &str = "coordinator.lockstep";
const OPERATOR: &str = "operator.lockstep";

/// A `CoordinatorService` client for `url`, presenting `files` when given.
async fn client(url: &str, files: Option<&TlsFiles>) -> CoordinatorServiceClient<Channel> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    if let Some(files) = files {
        let material = tls::TlsMaterial::load(&tls::TlsPaths {
            ca: files.ca.clone(),
            cert: files.cert.clone(),
            key: files.key.clone(),
        })
        .unwrap();
        endpoint = endpoint.tls_config(material.client_config()).unwrap();
    }
    CoordinatorServiceClient::new(endpoint.connect().await.unwrap())
}

/// A Deploy of `digest` to the demo service with `strategy` (TOML), as
/// `attacker@x` claims to be.
fn deploy_request(digest: &str, strategy: &str) -> pb::DeployRequest {
    pb::DeployRequest {
        service: "demo".to_owned(),
        release_digest: digest.to_owned(),
        strategy_toml: strategy.to_owned(),
        actor: Some(pb::Actor {
            user: "attacker".to_owned(),
            host: "x".to_owned(),
        }),
        reason: "security test".to_owned(),
    }
}

const FAST: &str = "[strategy]\nmin_healthy_time = \"500ms\"\nhealthy_deadline = \"30s\"\n";

/// The strategy of Seen 1: a check whose argv copies `secret` to `stolen`.
fn stealing_strategy(secret: &Path, stolen: &Path) -> String {
    format!(
        "{FAST}[[strategy.checks]]\nname = \"steal\"\nargv = [\"/bin/sh\", \"-c\", \"cat {} > {}\"]\n",
        secret.display(),
        stolen.display()
    )
}

/// A TLS coordinator with one agent `host` reporting to it, and release
/// 1.0.0 pushed by the operator: its digest.
struct TlsFleet {
    pki: TestPki,
    etcd: EtcdCluster,
    coordinator: CoordinatorFixture,
    fleet: FleetFixture,
    operator: TlsFiles,
    digest: String,
    _work: tempfile::TempDir,
}

async fn tls_fleet(hosts: &[(&str, &str)]) -> TlsFleet {
    let pki = TestPki::new("lockstep test CA").unwrap();
    let operator = pki.issue(OPERATOR).unwrap();
    let etcd = EtcdCluster::single().await.unwrap();
    let coordinator = CoordinatorFixture::start_tls(
        &etcd.endpoints(),
        TTL_SECS,
        &pki.issue(COORDINATOR).unwrap(),
    )
    .await
    .unwrap();
    let urls = vec![coordinator.url()];
    let fleet = FleetFixture::start_tls(hosts, &etcd.endpoints(), &urls, &pki, &[COORDINATOR])
        .await
        .unwrap();
    wait_for("every agent to report over mTLS", DEADLINE, || async {
        let output = lockstep_tls(&urls, &operator, &["--output", "json", "agents"])
            .await
            .map_err(|e| e.to_string())?;
        let listed: serde_json::Value = serde_json::from_slice(&output.stdout)
            .map_err(|e| format!("{e}: {}", text(&output)))?;
        let reachable = listed["agents"]
            .as_array()
            .map(|a| a.iter().filter(|x| x["reachable"] == true).count())
            .unwrap_or(0);
        if reachable == hosts.len() {
            Ok(())
        } else {
            Err(format!("{reachable} reachable: {listed}"))
        }
    })
    .await
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let bundle = DemoRelease::new("1.0.0", 1).build(work.path()).unwrap();
    let bundle = bundle.display().to_string();
    let output = lockstep_tls(&urls, &operator, &["release", "push", &bundle])
        .await
        .unwrap();
    assert!(output.status.success(), "push: {}", text(&output));
    let digest = lockstep_tests::operator::last_line(&output);
    TlsFleet {
        pki,
        etcd,
        coordinator,
        fleet,
        operator,
        digest,
        _work: work,
    }
}

/// Reproduces #14 Seen 1: "Strategy checks run the caller's commands on the
/// coordinator. A Deploy whose strategy has [[strategy.checks]] argv =
/// ["/bin/sh","-c", …], sent unauthenticated or with an agent's
/// certificate, reads the coordinator's private key."
#[tokio::test]
async fn seen_1_a_deploy_cannot_make_the_coordinator_run_its_commands() {
    let setup = tls_fleet(&[("s1-a", "eu")]).await;
    let url = setup.coordinator.url();
    let key = setup.pki.ca().with_file_name(format!("{COORDINATOR}.key"));
    assert!(key.exists(), "{}", key.display());
    let stolen = setup.coordinator.dir().join("stolen-key");
    let strategy = stealing_strategy(&key, &stolen);
    // With an agent's certificate: agents report and fetch, nothing else.
    let agent = setup.pki.issue("s1-a.agents.lockstep").unwrap();
    let as_agent = client(&url, Some(&agent))
        .await
        .deploy(deploy_request(&setup.digest, &strategy))
        .await;
    // As the operator: a strategy may not carry commands at all.
    let as_operator = client(&url, Some(&setup.operator))
        .await
        .deploy(deploy_request(&setup.digest, &strategy))
        .await;
    let started = |answer: &Result<tonic::Response<pb::DeployResponse>, tonic::Status>| {
        answer
            .as_ref()
            .is_ok_and(|r| r.get_ref().outcome() == pb::DeployOutcome::Started)
    };
    if started(&as_agent) || started(&as_operator) {
        let copied = wait_for("the check to copy the key", DEADLINE, || async {
            std::fs::read_to_string(&stolen).map_err(|e| e.to_string())
        })
        .await;
        panic!(
            "a Deploy carrying argv was started (as agent: {as_agent:?}; as operator: {as_operator:?}) and its check ran on the coordinator: {copied:?}"
        );
    }
    let denied = as_agent.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("s1-a.agents.lockstep") && denied.message().contains("operator"),
        "{denied:?}"
    );
    let refused = as_operator.unwrap().into_inner();
    assert_eq!(refused.outcome(), pb::DeployOutcome::RefusedInvalid);
    let problems = refused.problems.join("\n");
    assert!(
        problems.contains("argv") && problems.contains("coordinator.toml"),
        "{problems}"
    );
    assert!(!stolen.exists(), "the check ran");
}

/// Reproduces #14 Seen 2: "Agent impersonation. A Report stream registering
/// as ag2 (with its own address; over mTLS with ag1's certificate too)
/// receives ag2's Apply and fencing token; its fake 'ready' makes the
/// deployment succeed while the real ag2 never switched."
#[tokio::test]
async fn seen_2_a_report_stream_cannot_register_as_another_agent() {
    // Over mTLS, ag1's certificate cannot register ag2.
    let setup = tls_fleet(&[("ag1", "eu"), ("ag2", "eu")]).await;
    let ag1 = setup.pki.issue("ag1.agents.lockstep").unwrap();
    let ag2_address = setup
        .fleet
        .host("ag2")
        .unwrap()
        .agent
        .grpc_addr()
        .to_string();
    let refused = report_as(
        &setup.coordinator.url(),
        Some(&ag1),
        identity("ag2", "eu", &ag2_address),
    )
    .await
    .expect_err("the coordinator took ag1's certificate registering as ag2");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("ag1.agents.lockstep") && refused.message().contains("ag2"),
        "{refused:?}"
    );
    drop(setup);

    // Without TLS, an agent id is bound to its etcd registration: another
    // address is refused, and so is an id nobody registered.
    let etcd = EtcdCluster::single().await.unwrap();
    let coordinator = CoordinatorFixture::start(&etcd.endpoints(), TTL_SECS)
        .await
        .unwrap();
    let urls = vec![coordinator.url()];
    let fleet = FleetFixture::start(&[("ag2", "eu")], &etcd.endpoints(), &urls)
        .await
        .unwrap();
    agents_known(&urls, 1).await.unwrap();
    let real = fleet.host("ag2").unwrap().agent.grpc_addr().to_string();
    let elsewhere = report_as(&urls[0], None, identity("ag2", "eu", "127.0.0.1:1"))
        .await
        .expect_err("the coordinator took ag2's registration with the attacker's address");
    assert_eq!(
        elsewhere.code(),
        tonic::Code::PermissionDenied,
        "{elsewhere:?}"
    );
    assert!(
        elsewhere.message().contains("127.0.0.1:1") && elsewhere.message().contains(&real),
        "{elsewhere:?}"
    );
    let nobody = report_as(&urls[0], None, identity("ag9", "eu", "127.0.0.1:1"))
        .await
        .expect_err("the coordinator took a registration etcd does not know");
    assert_eq!(nobody.code(), tonic::Code::PermissionDenied, "{nobody:?}");
    assert!(nobody.message().contains("ag9"), "{nobody:?}");
    // The real agent is still listed with its own address.
    let listed = lockstep(&urls, &["--output", "json", "agents"])
        .await
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let addresses: Vec<&str> = listed["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["identity"]["grpc_address"].as_str())
        .collect();
    assert_eq!(addresses, [real.as_str()], "{listed}");
}

fn identity(agent: &str, cluster: &str, address: &str) -> pb::AgentIdentity {
    pb::AgentIdentity {
        agent_id: agent.to_owned(),
        cluster: cluster.to_owned(),
        hostname: "attacker".to_owned(),
        grpc_address: address.to_owned(),
        agent_version: "0".to_owned(),
        services: vec!["demo".to_owned()],
    }
}

/// Opens a Report stream registering `identity`; the sender keeping it
/// open once the coordinator acknowledged the registration, or its
/// refusal.
async fn report_as(
    url: &str,
    files: Option<&TlsFiles>,
    identity: pb::AgentIdentity,
) -> Result<mpsc::Sender<pb::AgentReport>, tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::AgentReport {
        seq: 1,
        body: Some(pb::agent_report::Body::Registration(identity)),
    })
    .await
    .unwrap();
    let mut acks = client(url, files)
        .await
        .report(ReceiverStream::new(rx))
        .await?
        .into_inner();
    match acks.message().await? {
        Some(_) => Ok(tx),
        None => Err(tonic::Status::unknown("the stream ended without an ack")),
    }
}

/// Reproduces #14 Seen 4: "Ghost registrations never expire: a Report
/// naming services=[x] that then closes blocks every deploy of x until the
/// coordinator restarts."
#[tokio::test]
async fn seen_4_a_closed_report_stream_whose_lease_is_gone_stops_blocking_deploys() {
    let etcd = EtcdCluster::single().await.unwrap();
    let coordinator = CoordinatorFixture::start(&etcd.endpoints(), TTL_SECS)
        .await
        .unwrap();
    let urls = vec![coordinator.url()];
    let fleet = FleetFixture::start(&[("host-a", "eu")], &etcd.endpoints(), &urls)
        .await
        .unwrap();
    agents_known(&urls, 1).await.unwrap();
    // The ghost registers in etcd as an agent would (lease-bound), reports
    // once with services = [demo], then goes away: stream closed, lease
    // revoked.
    let mut client = etcd.client().await.unwrap();
    let lease = client.lease_grant(60, None).await.unwrap().id();
    let ghost = identity("ghost", "eu", "127.0.0.1:1");
    let record =
        serde_json::json!({"agent": "ghost", "cluster": "eu", "grpc_address": "127.0.0.1:1"});
    client
        .put(
            leases::keys::agent("ghost"),
            record.to_string(),
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    let stream = report_as(&urls[0], None, ghost).await.unwrap();
    drop(stream);
    client.lease_revoke(lease).await.unwrap();

    let work = tempfile::tempdir().unwrap();
    let bundle = DemoRelease::new("1.0.0", 1).build(work.path()).unwrap();
    let digest = push(&urls, &bundle).await.unwrap();
    let mut grpc = self::client(&urls[0], None).await;
    let plan = wait_for(
        "the ghost to stop blocking deploys of demo",
        DEADLINE,
        || {
            let mut grpc = grpc.clone();
            let digest = digest.clone();
            async move {
                let plan = grpc
                    .plan(pb::PlanRequest {
                        service: "demo".to_owned(),
                        release_digest: digest,
                        strategy_toml: FAST.to_owned(),
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                if !plan.problems.is_empty() {
                    Err(plan.problems.join("; "))
                } else if plan.rendered.contains("ghost") {
                    Err(format!("the plan includes the ghost: {}", plan.rendered))
                } else {
                    Ok(plan)
                }
            }
        },
    )
    .await
    .unwrap();
    assert!(plan.rendered.contains("host-a"), "{}", plan.rendered);
    let agents = grpc
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<String> = agents
        .agents
        .iter()
        .filter_map(|a| a.identity.as_ref().map(|i| i.agent_id.clone()))
        .collect();
    assert_eq!(ids, ["host-a"]);
    drop(fleet);
}

/// Reproduces #14 Seen 7: "The audit actor is what the client says
/// (attacker@x), not the certificate's identity." Also: only operators
/// change the fleet, and a refusal is audited.
#[tokio::test]
async fn seen_7_the_actor_is_the_certificates_identity_and_roles_are_enforced() {
    let setup = tls_fleet(&[("s7-a", "eu")]).await;
    let url = setup.coordinator.url();
    let mut as_operator = client(&url, Some(&setup.operator)).await;
    let started = as_operator
        .deploy(deploy_request(&setup.digest, FAST))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.outcome(), pb::DeployOutcome::Started, "{started:?}");
    let deployment = as_operator
        .get_deployment(pb::GetDeploymentRequest {
            deployment_id: started.deployment_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let actor = deployment.actor.unwrap_or_default();
    assert_eq!(
        actor.user, "operator.lockstep (claims: attacker@x)",
        "{actor:?}"
    );
    // A viewer reads, and may not change anything.
    let viewer = setup.pki.issue("viewer.lockstep").unwrap();
    let mut as_viewer = client(&url, Some(&viewer)).await;
    assert!(
        as_viewer
            .list_agents(pb::ListAgentsRequest::default())
            .await
            .is_ok()
    );
    let denied = as_viewer
        .abort(pb::AbortRequest {
            deployment_id: started.deployment_id.clone(),
            actor: None,
            reason: "viewer".to_owned(),
        })
        .await;
    let denied = denied.expect_err("a viewer aborted a deployment");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("viewer.lockstep")
            && denied.message().contains("needs the operator role"),
        "{denied:?}"
    );
    let client = crate::failover_client(&setup.etcd).await;
    let audited = wait_for("the refusal in the audit log", DEADLINE, || async {
        let records = leases::AuditLog::recent(&client, 10)
            .await
            .map_err(|e| e.to_string())?;
        records
            .into_iter()
            .map(|(_, r)| r)
            .find(|r| r.action == "refused-call" && r.target == "Abort")
            .ok_or_else(|| "no refused-call record".to_owned())
    })
    .await
    .unwrap();
    assert!(
        audited.actor.user.contains("viewer.lockstep"),
        "{audited:?}"
    );
    let log = setup.coordinator.log_text();
    assert!(log.contains("refused a call"), "{log}");
}

/// Checks are configuration: a strategy names a `[[checks]]` entry of
/// coordinator.toml and passes its declared parameters, each one whole
/// argv element (no shell); an unknown name, an undeclared parameter or
/// an argv is refused at deploy time.
#[tokio::test]
async fn a_strategy_runs_only_named_checks_with_declared_parameters() {
    let etcd = EtcdCluster::single().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let said = work.path().join("said");
    let tables = format!(
        "[[checks]]\nname = \"record\"\nargv = [\"/bin/sh\", \"-c\", \"printf %s \\\"$1\\\" > {}\", \"record\", \"{{word}}\"]\nparams = [\"word\"]\ntimeout = \"20s\"\n",
        said.display()
    );
    let coordinator =
        CoordinatorFixture::start_with_tables(&etcd.endpoints(), TTL_SECS, None, &tables)
            .await
            .unwrap();
    let urls = vec![coordinator.url()];
    let _fleet = FleetFixture::start(&[("nc-a", "eu")], &etcd.endpoints(), &urls)
        .await
        .unwrap();
    agents_known(&urls, 1).await.unwrap();
    let bundle = DemoRelease::new("1.0.0", 1).build(work.path()).unwrap();
    let digest = push(&urls, &bundle).await.unwrap();
    let mut grpc = client(&urls[0], None).await;
    let refused = |strategy: String| {
        let mut grpc = grpc.clone();
        let digest = digest.clone();
        async move {
            let answer = grpc
                .deploy(deploy_request(&digest, &strategy))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                answer.outcome(),
                pb::DeployOutcome::RefusedInvalid,
                "{answer:?}"
            );
            answer.problems.join("\n")
        }
    };
    let unknown = refused(format!("{FAST}[[strategy.checks]]\nname = \"steal\"\n")).await;
    assert!(
        unknown.contains("\"steal\"")
            && unknown.contains("no such check")
            && unknown.contains("record"),
        "{unknown}"
    );
    let undeclared = refused(format!(
        "{FAST}[[strategy.checks]]\nname = \"record\"\nparams = {{ word = \"x\", file = \"/etc/passwd\" }}\n"
    ))
    .await;
    assert!(
        undeclared.contains("\"file\" is not declared"),
        "{undeclared}"
    );
    let commands = refused(stealing_strategy(
        &coordinator.dir().join("coordinator.toml"),
        &said,
    ))
    .await;
    assert!(commands.contains("argv is not accepted"), "{commands}");
    assert!(!said.exists());

    let word = "hello; touch /tmp/pwned $(id)";
    // No canary: the plan lists a cluster wave's checks.
    let strategy = format!(
        "{FAST}canary = 0\nrehearse_rollback = false\n[[strategy.checks]]\nname = \"record\"\nparams = {{ word = \"{word}\" }}\n"
    );
    let plan = grpc
        .plan(pb::PlanRequest {
            service: "demo".to_owned(),
            release_digest: digest.clone(),
            strategy_toml: strategy.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        plan.rendered
            .contains(&format!("checks: record(word={word}) within 20s")),
        "{}",
        plan.rendered
    );
    let started = grpc
        .deploy(deploy_request(&digest, &strategy))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.outcome(), pb::DeployOutcome::Started, "{started:?}");
    let record = lockstep_tests::operator::finished(&etcd, &started.deployment_id)
        .await
        .unwrap();
    assert_eq!(record["state"], "succeeded", "{record}");
    assert_eq!(std::fs::read_to_string(&said).unwrap(), word);
}

/// An IPv4 address of this machine other than loopback: a caller from it
/// is not local.
fn non_loopback_ipv4() -> Option<std::net::IpAddr> {
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter_map(|interface| interface.address?.as_sockaddr_in().map(|a| a.ip()))
        .find(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .map(std::net::IpAddr::V4)
}

fn break_lock_request() -> pb::BreakLockRequest {
    pb::BreakLockRequest {
        service: "demo".to_owned(),
        actor: None,
        reason: "security test".to_owned(),
    }
}

/// Without TLS there is no identity: reads are answered from anywhere,
/// operator calls only from loopback unless `insecure_operators = true`.
#[tokio::test]
async fn without_tls_operator_calls_come_only_from_loopback_unless_insecure_operators() {
    let ip = non_loopback_ipv4().expect("this test needs a non-loopback IPv4 address");
    let etcd = EtcdCluster::single().await.unwrap();
    let strict = CoordinatorFixture::start_on(&etcd.endpoints(), TTL_SECS, ip, "")
        .await
        .unwrap();
    let mut remote = client(&strict.url(), None).await;
    remote
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .unwrap();
    let denied = remote.break_lock(break_lock_request()).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains(&ip.to_string())
            && denied.message().contains("insecure_operators = true"),
        "{denied:?}"
    );
    let insecure =
        CoordinatorFixture::start_on(&etcd.endpoints(), TTL_SECS, ip, "insecure_operators = true")
            .await
            .unwrap();
    let answered = client(&insecure.url(), None)
        .await
        .break_lock(break_lock_request())
        .await
        .unwrap_err();
    // Let through: there is simply no lock to break.
    assert_eq!(answered.code(), tonic::Code::NotFound, "{answered:?}");
}

/// An `AgentService` client for the agent at `addr`, presenting `files`.
async fn agent_client(
    addr: std::net::SocketAddr,
    files: &TlsFiles,
) -> proto::v1::agent_service_client::AgentServiceClient<Channel> {
    let material = tls::TlsMaterial::load(&tls::TlsPaths {
        ca: files.ca.clone(),
        cert: files.cert.clone(),
        key: files.key.clone(),
    })
    .unwrap();
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(material.client_config())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .connect()
        .await
        .unwrap();
    proto::v1::agent_service_client::AgentServiceClient::new(channel)
}

/// The demo service's durable fencing high-water mark on `agent`, from
/// its state file.
fn durable_mark(agent: &lockstep_tests::AgentFixture) -> u64 {
    let path = agent.dir().join("data/state.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    state["services"]["demo"]["fencing_high_water"]
        .as_u64()
        .unwrap_or(0)
}

/// Deploys `digest` as the operator and waits until it succeeded.
async fn deployed(setup: &TlsFleet, digest: &str) -> serde_json::Value {
    let mut as_operator = client(&setup.coordinator.url(), Some(&setup.operator)).await;
    let started = as_operator
        .deploy(deploy_request(digest, FAST))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.outcome(), pb::DeployOutcome::Started, "{started:?}");
    let record = lockstep_tests::operator::finished(&setup.etcd, &started.deployment_id)
        .await
        .unwrap();
    assert_eq!(record["state"], "succeeded", "{record}");
    record
}

/// Reproduces #14 Seen 3: "A future fencing token wedges a service for
/// good. An Apply with token 2^64-1 for an unknown digest is refused, but
/// the agent has already made the token its durable high-water mark;
/// every later deployment steps down." Sent with the coordinator's own
/// certificate: an Apply with token 2^64-1 for an unknown digest, then
/// one for a release the coordinators hold (valid but for its token), and
/// a Stage of it. Each is refused, the host's durable mark and release are
/// unchanged, and the next deployment succeeds.
#[tokio::test]
async fn seen_3_a_future_fencing_token_is_refused_and_wedges_nothing() {
    let setup = tls_fleet(&[("s3-a", "eu")]).await;
    deployed(&setup, &setup.digest).await;
    let host = &setup.fleet.hosts[0];
    assert_eq!(host.agent.current_version("demo").await.unwrap(), "1.0.0");
    let work = tempfile::tempdir().unwrap();
    let bundle = DemoRelease::new("2.0.0", 1).build(work.path()).unwrap();
    let bundle = bundle.display().to_string();
    let urls = vec![setup.coordinator.url()];
    let output = lockstep_tls(&urls, &setup.operator, &["release", "push", &bundle])
        .await
        .unwrap();
    assert!(output.status.success(), "push: {}", text(&output));
    let digest2 = lockstep_tests::operator::last_line(&output);
    let mark = durable_mark(&host.agent);
    assert!(mark > 0, "the first deployment left no mark");

    let coordinator = setup.pki.issue(COORDINATOR).unwrap();
    let mut agent = agent_client(host.agent.grpc_addr(), &coordinator).await;
    let unknown = format!("sha256:{}", "f".repeat(64));
    for digest in [unknown.as_str(), digest2.as_str()] {
        let verdict = agent
            .apply(pb::ApplyRequest {
                service: "demo".to_owned(),
                release_digest: digest.to_owned(),
                fencing_token: u64::MAX,
                deployment_id: "forged".to_owned(),
                command_seq: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .verdict
            .unwrap();
        assert_eq!(
            verdict.outcome(),
            pb::CommandOutcome::Refused,
            "{digest}: {verdict:?}"
        );
        assert_eq!(durable_mark(&host.agent), mark, "{digest}: {verdict:?}");
    }
    let staged = agent
        .stage(pb::StageRequest {
            service: "demo".to_owned(),
            release_digest: digest2.clone(),
            fencing_token: u64::MAX,
        })
        .await
        .unwrap()
        .into_inner()
        .verdict
        .unwrap();
    assert_eq!(staged.outcome(), pb::CommandOutcome::Refused, "{staged:?}");
    assert_eq!(durable_mark(&host.agent), mark, "{staged:?}");
    assert_eq!(host.agent.current_version("demo").await.unwrap(), "1.0.0");

    let record = deployed(&setup, &digest2).await;
    assert_eq!(host.agent.current_version("demo").await.unwrap(), "2.0.0");
    let token = record["token"].as_u64().unwrap();
    assert_eq!(durable_mark(&host.agent), token, "{record}");
}

/// Sets the demo service's mark in `agent`'s state file to `mark`, as an
/// agent wedged by #14 Seen 3 left it (the agent must be stopped).
fn wedge(agent: &lockstep_tests::AgentFixture, mark: u64) {
    let path = agent.dir().join("data/state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    state["services"]["demo"]["fencing_high_water"] = mark.into();
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
}

/// #14 deliver 4, the break-glass: a host whose mark is already wedged
/// (2^64-1, as an agent before tokens were checked against etcd took it)
/// is recovered with `agentctl fence reset`, which lowers the mark only to
/// what etcd justifies (the lock is free: etcd's revision), needs a
/// reason, and writes an audit record; the next deployment then succeeds.
#[tokio::test]
async fn a_wedged_mark_is_lowered_by_agentctl_fence_reset_to_what_etcd_justifies() {
    let mut setup = tls_fleet(&[("fence-a", "eu")]).await;
    deployed(&setup, &setup.digest).await;
    {
        let host = &mut setup.fleet.hosts[0];
        host.agent.stop().await.unwrap();
        wedge(&host.agent, u64::MAX);
        host.agent.start_again().await.unwrap();
    }
    let agent = &setup.fleet.hosts[0].agent;
    let shown = agent
        .agentctl_json(&["fence", "show", "demo"])
        .await
        .unwrap();
    assert_eq!(shown["high_water"].as_u64(), Some(u64::MAX), "{shown}");
    assert_eq!(shown["lock"], "free", "{shown}");
    assert_eq!(
        shown["lock_key"], "/lockstep/v1/locks/deploy/demo",
        "{shown}"
    );
    let revision = shown["lock_token"].as_u64().unwrap();
    assert!(revision > 0, "{shown}");

    let no_reason = agent.agentctl(&["fence", "reset", "demo"]).await.unwrap();
    assert_eq!(no_reason.status.code(), Some(2), "{}", text(&no_reason));
    assert_eq!(durable_mark(agent), u64::MAX);

    let reset = agent
        .agentctl_json(&[
            "fence",
            "reset",
            "demo",
            "--reason",
            "wedged by a forged token",
        ])
        .await
        .unwrap();
    let lowered = reset["reset_to"].as_u64().unwrap();
    assert!(lowered >= revision && lowered < u64::MAX, "{reset}");
    assert_eq!(durable_mark(agent), lowered);
    let client = crate::failover_client(&setup.etcd).await;
    let audited = wait_for("the reset in the audit log", DEADLINE, || async {
        let records = leases::AuditLog::recent(&client, 10)
            .await
            .map_err(|e| e.to_string())?;
        records
            .into_iter()
            .map(|(_, r)| r)
            .find(|r| r.action == "fence-reset")
            .ok_or_else(|| "no fence-reset record".to_owned())
    })
    .await
    .unwrap();
    assert_eq!(audited.target, "fence-a/demo", "{audited:?}");
    assert_eq!(audited.reason, "wedged by a forged token", "{audited:?}");

    // Nothing more to lower: etcd justifies the mark now.
    let again = agent
        .agentctl_json(&["fence", "reset", "demo", "--reason", "again"])
        .await
        .unwrap();
    assert!(again.get("reset_to").is_none(), "{again}");

    let work = tempfile::tempdir().unwrap();
    let bundle = DemoRelease::new("2.0.0", 1).build(work.path()).unwrap();
    let urls = vec![setup.coordinator.url()];
    let output = lockstep_tls(
        &urls,
        &setup.operator,
        &["release", "push", &bundle.display().to_string()],
    )
    .await
    .unwrap();
    assert!(output.status.success(), "push: {}", text(&output));
    let digest2 = lockstep_tests::operator::last_line(&output);
    deployed(&setup, &digest2).await;
    assert_eq!(agent.current_version("demo").await.unwrap(), "2.0.0");
}

/// #14 deliver 4, the availability trade-off: an agent that cannot read
/// the deployment lock (etcd down) refuses a coordinator's token as
/// FENCING_UNVERIFIED and writes nothing; with etcd up and no lock held,
/// a token is refused as not the lock's. `agentctl fence reset` of a
/// wedged mark then needs `--force` (to 0), audited locally.
#[tokio::test]
async fn with_etcd_down_a_token_is_unverified_and_only_a_forced_reset_lowers_a_mark() {
    let mut etcd = EtcdCluster::single().await.unwrap();
    let mut agent =
        lockstep_tests::AgentFixture::start_with("fence-b", "solo", &etcd.agent_table("3s", "5s"))
            .await
            .unwrap();
    let port = lockstep_tests::free_loopback_port().unwrap();
    let v1 = DemoRelease::new("1.0.0", port).build(agent.dir()).unwrap();
    agent.install(&v1).await.unwrap();
    let releases = agent.agentctl_json(&["releases", "demo"]).await.unwrap();
    let digest = releases["current"]["digest"].as_str().unwrap().to_owned();
    let client = proto::v1::agent_service_client::AgentServiceClient::connect(format!(
        "http://{}",
        agent.grpc_addr()
    ))
    .await
    .unwrap();
    let apply = |token: u64| pb::ApplyRequest {
        service: "demo".to_owned(),
        release_digest: digest.clone(),
        fencing_token: token,
        deployment_id: "no-lock".to_owned(),
        command_seq: 0,
    };
    let verdict = client
        .clone()
        .apply(apply(5))
        .await
        .unwrap()
        .into_inner()
        .verdict
        .unwrap();
    assert_eq!(
        verdict.refusal(),
        pb::RefusalReason::StaleFencingToken,
        "{verdict:?}"
    );
    assert!(verdict.message.contains("nobody holds it"), "{verdict:?}");
    assert_eq!(durable_mark(&agent), 0);

    etcd.kill(0).unwrap();
    let verdict = wait_for(
        "the agent to refuse an unverifiable token",
        DEADLINE,
        || async {
            let verdict = client
                .clone()
                .apply(apply(5))
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .verdict
                .ok_or("no verdict")?;
            if verdict.refusal() == pb::RefusalReason::FencingUnverified {
                Ok(verdict)
            } else {
                Err(format!("{verdict:?}"))
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        verdict.outcome(),
        pb::CommandOutcome::Refused,
        "{verdict:?}"
    );
    assert_eq!(durable_mark(&agent), 0);

    agent.stop().await.unwrap();
    wedge(&agent, u64::MAX);
    agent.start_again().await.unwrap();
    let shown = agent
        .agentctl_json(&["fence", "show", "demo"])
        .await
        .unwrap();
    assert_eq!(shown["lock"], "unreadable", "{shown}");
    assert_eq!(shown["high_water"].as_u64(), Some(u64::MAX), "{shown}");
    let refused = agent
        .agentctl(&["fence", "reset", "demo", "--reason", "etcd is down"])
        .await
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("--force"), "{}", text(&refused));
    assert_eq!(durable_mark(&agent), u64::MAX);

    const REASON: &str = "wedged mark, etcd down";
    let forced = agent
        .agentctl_json(&["fence", "reset", "demo", "--force", "--reason", REASON])
        .await
        .unwrap();
    assert_eq!(forced["reset_to"].as_u64(), Some(0), "{forced}");
    assert_eq!(durable_mark(&agent), 0);
    let local = std::fs::read_to_string(agent.dir().join("data/audit.jsonl")).unwrap();
    assert!(
        local.contains("fence-reset") && local.contains(REASON),
        "{local}"
    );
}

/// Reproduces #14 Seen 4 and 5 (unbounded input): "40 streams with 3 MB
/// identities add 140 MB RSS and make `lockstep agents` fail (message too
/// large)"; "a refused Apply with a 2.5 MB service name is persisted into
/// state.json". Names are refused at the door, with the field and the rule
/// and never the megabytes echoed back; nothing is registered or written.
#[tokio::test]
async fn names_are_bounded_at_the_door_of_the_coordinator_and_the_agent() {
    let etcd = EtcdCluster::single().await.unwrap();
    let coordinator = CoordinatorFixture::start(&etcd.endpoints(), TTL_SECS)
        .await
        .unwrap();
    let url = coordinator.url();
    let huge = "a".repeat(3_000_000);

    let refused = report_as(&url, None, identity(&huge, "eu", "127.0.0.1:1"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("`agent_id`"),
        "{}",
        refused.message()
    );
    assert!(
        refused.message().len() < 1024,
        "{} bytes",
        refused.message().len()
    );
    let mut grpc = client(&url, None).await;
    let agents = grpc
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(agents.agents.is_empty(), "{agents:?}");

    let plan = grpc
        .plan(pb::PlanRequest {
            service: huge.clone(),
            release_digest: String::new(),
            strategy_toml: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(plan.code(), tonic::Code::InvalidArgument, "{plan:?}");
    assert!(
        plan.message()
            .contains("is not a valid service name (1-63 of"),
        "{}",
        plan.message()
    );
    assert!(
        plan.message().len() < 1024,
        "{} bytes",
        plan.message().len()
    );

    let agent = AgentFixture::start("bounded-1", "eu").await.unwrap();
    let state = agent.dir().join("data").join("state.json");
    let before = std::fs::read(&state).ok();
    let mut agent_grpc = proto::v1::agent_service_client::AgentServiceClient::connect(format!(
        "http://{}",
        agent.grpc_addr()
    ))
    .await
    .unwrap();
    let apply = agent_grpc
        .apply(pb::ApplyRequest {
            service: huge.chars().take(2_500_000).collect(),
            release_digest: format!("sha256:{}", "0".repeat(64)),
            fencing_token: 1,
            deployment_id: "bounded".to_owned(),
            command_seq: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(apply.code(), tonic::Code::InvalidArgument, "{apply:?}");
    assert!(apply.message().contains("`service`"), "{}", apply.message());
    assert_eq!(std::fs::read(&state).ok(), before, "state.json changed");
}

/// Issue #14 deliver 5 ("pushes: size, concurrency, idle timeout"): on main
/// a push had no size limit, no bound on how many ran at once, and a client
/// that sent a header and then nothing held its temporary file open for
/// ever. Here a push one byte over `max_bundle_bytes` is cut off naming the
/// key, a stalled push holds the only slot so a second is refused at once
/// (RESOURCE_EXHAUSTED naming `max_concurrent_pushes`), the stalled one is
/// abandoned after `push_idle_timeout`, and then the slot is free again.
/// Nothing half-received stays in the depot.
#[tokio::test]
async fn pushes_are_bounded_in_size_concurrency_and_idleness() {
    let etcd = EtcdCluster::single().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let bundle = DemoRelease::new("1.0.0", 1).build(work.path()).unwrap();
    let size = std::fs::metadata(&bundle).unwrap().len();
    let tables = format!(
        "[releases]\nmax_bundle_bytes = {}\nmax_concurrent_pushes = 1\npush_idle_timeout = \"3s\"\n",
        size - 1
    );
    let coordinator =
        CoordinatorFixture::start_with_tables(&etcd.endpoints(), TTL_SECS, None, &tables)
            .await
            .unwrap();
    let urls = vec![coordinator.url()];
    let bundle_arg = bundle.display().to_string();

    let too_large = lockstep(&urls, &["release", "push", &bundle_arg])
        .await
        .unwrap();
    assert!(!too_large.status.success(), "{}", text(&too_large));
    assert!(
        text(&too_large).contains(&format!(
            "{}-byte limit (releases.max_bundle_bytes)",
            size - 1
        )),
        "{}",
        text(&too_large)
    );

    // A client that sends its header and then nothing.
    let mut grpc = client(&urls[0], None).await;
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::PushReleaseChunk {
        body: Some(pb::push_release_chunk::Body::Header(
            pb::PushReleaseHeader {
                total_size: 10,
                ..Default::default()
            },
        )),
    })
    .await
    .unwrap();
    let stalled = tokio::spawn(async move { grpc.push_release(ReceiverStream::new(rx)).await });
    let depot = coordinator.dir().join("releases");
    let in_depot = |depot: std::path::PathBuf| async move {
        let names: Vec<String> = std::fs::read_dir(&depot)
            .map_err(|e| e.to_string())?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(names)
    };
    wait_for("the stalled push to take its slot", DEADLINE, || {
        let depot = depot.clone();
        async move {
            let names = in_depot(depot).await?;
            if names.iter().any(|n| n.starts_with(".incoming-")) {
                Ok(())
            } else {
                Err(format!("depot holds {names:?}"))
            }
        }
    })
    .await
    .unwrap();
    let busy = lockstep(&urls, &["release", "push", &bundle_arg])
        .await
        .unwrap();
    assert!(
        text(&busy).contains("releases.max_concurrent_pushes = 1"),
        "{}",
        text(&busy)
    );
    assert_eq!(
        busy.status.code(),
        Some(69),
        "busy is worth a retry: {}",
        text(&busy)
    );
    assert!(!busy.status.success(), "{}", text(&busy));

    let abandoned = tokio::time::timeout(DEADLINE, stalled)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(
        abandoned.code(),
        tonic::Code::DeadlineExceeded,
        "{abandoned:?}"
    );
    assert!(
        abandoned.message().contains("releases.push_idle_timeout"),
        "{abandoned:?}"
    );
    drop(tx);

    // The slot is free: the next push gets as far as the size limit.
    let again = lockstep(&urls, &["release", "push", &bundle_arg])
        .await
        .unwrap();
    assert!(
        text(&again).contains("releases.max_bundle_bytes"),
        "{}",
        text(&again)
    );
    let left = in_depot(depot).await.unwrap();
    assert!(
        left.is_empty(),
        "half-received pushes left in the depot: {left:?}"
    );
}

/// Issue #14 deliver 5 ("registrations per caller"): on main one caller
/// holding an agent's registration could open Report streams for it
/// without end, each kept in memory by the coordinator. Here the fifth
/// stream of one agent is refused (RESOURCE_EXHAUSTED, naming the limit)
/// while four are open, and taken again once one closes.
#[tokio::test]
async fn one_agent_holds_at_most_four_report_streams() {
    let etcd = EtcdCluster::single().await.unwrap();
    let coordinator = CoordinatorFixture::start(&etcd.endpoints(), TTL_SECS)
        .await
        .unwrap();
    let url = coordinator.url();
    let mut client = etcd.client().await.unwrap();
    let lease = client.lease_grant(60, None).await.unwrap().id();
    let record =
        serde_json::json!({"agent": "many", "cluster": "eu", "grpc_address": "127.0.0.1:1"});
    client
        .put(
            leases::keys::agent("many"),
            record.to_string(),
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    let me = || identity("many", "eu", "127.0.0.1:1");
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(report_as(&url, None, me()).await.unwrap());
    }
    let refused = report_as(&url, None, me()).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused
            .message()
            .contains("already has 4 report streams open"),
        "{refused:?}"
    );
    drop(open.pop());
    wait_for("a closed stream to free its place", DEADLINE, || async {
        report_as(&url, None, me()).await.map_err(|s| s.to_string())
    })
    .await
    .unwrap();
}
