//! etcd with TLS and authentication (#14 deliver 6): a real etcd serving
//! TLS only, requiring client certificates, with users and roles set up by
//! `scripts/etcd-roles`; real coordinator, agents and demo apps.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use lockstep_tests::operator::{
    agents_known, deploy, every_host_serves, push, strategy, text, until_leading,
};
use lockstep_tests::{
    CoordinatorFixture, DemoRelease, EtcdCluster, FleetFixture, Place, TestPki, TlsFiles, wait_for,
};

const DEADLINE: Duration = Duration::from_secs(120);

fn password_file(dir: &Path, name: &str, password: &str) -> PathBuf {
    let path = dir.join(format!("{name}.password"));
    std::fs::write(&path, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// `[etcd]` lines presenting `tls` and the etcd `user`.
fn etcd_lines(tls: &TlsFiles, user: &str, password: &Path) -> String {
    format!(
        "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nuser = \"{user}\"\npassword_file = \"{}\"\n",
        tls.ca.display(),
        tls.cert.display(),
        tls.key.display(),
        password.display()
    )
}

/// An etcd client as `user`, over TLS with `tls`.
async fn client_as(etcd: &EtcdCluster, tls: &TlsFiles, user: &str, password: &str) -> Client {
    let read = |p: &Path| std::fs::read(p).unwrap();
    let options = ConnectOptions::new()
        .with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(read(&tls.ca)))
                .identity(Identity::from_pem(read(&tls.cert), read(&tls.key))),
        )
        .with_user(user, password)
        .with_timeout(Duration::from_secs(5));
    Client::connect(etcd.endpoints(), Some(options))
        .await
        .unwrap()
}

/// Whether `user` may put `key`: `Err` carries etcd's refusal.
async fn put(client: &mut Client, key: &str) -> Result<(), String> {
    client
        .put(key, "x", None)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// #14 deliver 6: on main, `[etcd]` had no TLS or user keys at all and an
/// `https://` endpoint was refused, so a fleet could only use an etcd that
/// anyone on its network may write. Here etcd serves TLS only with client
/// certificates and authentication on; the coordinator and two agents
/// connect with their `[etcd]` files and users, and a deployment succeeds.
/// An agent's etcd user (the role `scripts/etcd-roles agent` grants) may
/// write its own registration and budget slots, and may not write the
/// leader key, a deployment lock, a deployment or another agent's
/// registration.
#[tokio::test]
async fn with_tls_and_roles_on_etcd_a_deployment_succeeds_and_an_agent_writes_only_its_own_keys() {
    let pki = TestPki::new("etcd-security").unwrap();
    let etcd = EtcdCluster::single_secured(&pki).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let root_pw = password_file(work.path(), "root", "root-secret");
    etcd.roles(&["enable", &root_pw.display().to_string()])
        .await
        .unwrap();
    let coordinator_pw = password_file(work.path(), "coordinator", "coordinator-secret");
    etcd.roles(&[
        "coordinator",
        "lockstep-coordinator",
        &coordinator_pw.display().to_string(),
    ])
    .await
    .unwrap();
    let hosts = [("sec-a", "eu"), ("sec-b", "eu")];
    let mut agent_files = Vec::new();
    for (id, cluster) in hosts {
        let pw = password_file(work.path(), id, &format!("{id}-secret"));
        etcd.roles(&["agent", id, cluster, &pw.display().to_string()])
            .await
            .unwrap();
        agent_files.push((id, pki.issue(&format!("lockstep-agent-{id}")).unwrap(), pw));
    }

    let coordinator_tls = pki.issue("lockstep-coordinator").unwrap();
    let coordinator = CoordinatorFixture::start_with_etcd(
        &etcd.endpoints(),
        3,
        &etcd_lines(&coordinator_tls, "lockstep-coordinator", &coordinator_pw),
    )
    .await
    .unwrap();
    let urls = vec![coordinator.url()];
    let layout: Vec<(&str, &str, Place)> = hosts
        .iter()
        .map(|(id, cluster)| (*id, *cluster, Place::loopback()))
        .collect();
    let lines = |id: &str| {
        let (_, tls, pw) = agent_files.iter().find(|(a, _, _)| *a == id).unwrap();
        etcd_lines(tls, &format!("lockstep-agent-{id}"), pw)
    };
    let fleet =
        FleetFixture::start_with_etcd_lines(&layout, &etcd.endpoints(), &urls, "3s", &lines)
            .await
            .unwrap();
    agents_known(&urls, 2).await.unwrap();
    let bundle = DemoRelease::new("1.0.0", 1).build(work.path()).unwrap();
    let digest = push(&urls, &bundle).await.unwrap();
    let plan = strategy(work.path(), "fast", "500ms").unwrap();
    let deployed = deploy(&urls, &digest, &plan, &["--wait"]).await.unwrap();
    assert!(deployed.status.success(), "{}", text(&deployed));
    every_host_serves(&fleet, "1.0.0").await.unwrap();

    let (_, tls_a, _) = &agent_files[0];
    let mut as_a = client_as(&etcd, tls_a, "lockstep-agent-sec-a", "sec-a-secret").await;
    put(&mut as_a, "/lockstep/v1/clusters/eu/budget/sec-a/probe")
        .await
        .unwrap();
    for key in [
        "/lockstep/v1/leader",
        "/lockstep/v1/locks/deploy/demo",
        "/lockstep/v1/deployments/forged",
        "/lockstep/v1/agents/sec-b",
        "/lockstep/v1/clusters/eu/budget/sec-b/demo",
        "/lockstep/v1/clusters/eu/policy",
    ] {
        let refused = put(&mut as_a, key).await.unwrap_err();
        assert!(refused.contains("permission denied"), "{key}: {refused}");
    }
    drop(fleet);
}

/// A wrong etcd password is named at once: the agent logs etcd's refusal
/// (it keeps its apps running, unregistered, as with any etcd trouble).
#[tokio::test]
async fn a_wrong_etcd_password_is_reported_with_etcds_refusal() {
    let pki = TestPki::new("etcd-password").unwrap();
    let etcd = EtcdCluster::single_secured(&pki).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let root_pw = password_file(work.path(), "root", "root-secret");
    etcd.roles(&["enable", &root_pw.display().to_string()])
        .await
        .unwrap();
    let right = password_file(work.path(), "right", "right");
    etcd.roles(&["agent", "pw-a", "eu", &right.display().to_string()])
        .await
        .unwrap();
    let wrong = password_file(work.path(), "wrong", "wrong");
    let tls = pki.issue("lockstep-agent-pw-a").unwrap();
    let lines = |_: &str| etcd_lines(&tls, "lockstep-agent-pw-a", &wrong);
    let layout = [("pw-a", "eu", Place::loopback())];
    let fleet = FleetFixture::start_with_etcd_lines(
        &layout,
        &etcd.endpoints(),
        &["http://127.0.0.1:1".to_owned()],
        "3s",
        &lines,
    )
    .await
    .unwrap();
    let agent = &fleet.hosts[0].agent;
    wait_for("the agent to log etcd's refusal", DEADLINE, || async {
        let log = agent.log_text();
        if log.contains("authentication failed") {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    })
    .await
    .unwrap();
}

/// #14 deliver 6 ("a lease-less key is ignored and reported, and `locks
/// break` deletes a lease-less key and says so"): on main a deployment lock
/// key written without a lease (by hand, or by anything but Lockstep) said
/// "deployment in progress" for ever, the incident's stale check, and a
/// lease-less budget slot held a slot for ever. Here `lockstep locks` shows
/// the key as no lock, a deployment takes the lock and the budget anyway,
/// and `locks break` deletes such a key, saying it had no lease.
#[tokio::test]
async fn lease_less_lock_and_slot_keys_are_ignored_reported_and_breakable() {
    let etcd = EtcdCluster::single().await.unwrap();
    let coordinator = CoordinatorFixture::start(&etcd.endpoints(), 3)
        .await
        .unwrap();
    let urls = vec![coordinator.url()];
    let fleet = FleetFixture::start(&[("ll-a", "eu")], &etcd.endpoints(), &urls)
        .await
        .unwrap();
    agents_known(&urls, 1).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let bundle = DemoRelease::new("1.0.0", 1).build(work.path()).unwrap();
    let digest = push(&urls, &bundle).await.unwrap();

    let stale = serde_json::json!({
        "holder": {"host": "by-hand", "pid": 1, "user": "ops"},
        "purpose": "stale",
        "since_unix_ms": 0
    })
    .to_string();
    let lock_key = leases::keys::deploy_lock("demo");
    let mut client = etcd.client().await.unwrap();
    client
        .put(lock_key.as_str(), stale.as_str(), None)
        .await
        .unwrap();
    client
        .put(
            "/lockstep/v1/clusters/eu/budget/ghost/demo",
            stale.as_str(),
            None,
        )
        .await
        .unwrap();
    let listed = coordinator.lockstep(&["locks"]).await.unwrap();
    assert!(
        text(&listed).contains("no lease (ignored)"),
        "{}",
        text(&listed)
    );

    let plan = strategy(work.path(), "fast", "500ms").unwrap();
    let deployed = deploy(&urls, &digest, &plan, &["--wait"]).await.unwrap();
    assert!(deployed.status.success(), "{}", text(&deployed));
    every_host_serves(&fleet, "1.0.0").await.unwrap();
    assert!(
        coordinator.log_text().contains("lock key has no lease"),
        "the coordinator did not report the lease-less lock key"
    );

    client
        .put(lock_key.as_str(), stale.as_str(), None)
        .await
        .unwrap();
    let broken = coordinator
        .lockstep(&["locks", "break", "demo", "--reason", "hand-written key"])
        .await
        .unwrap();
    assert!(broken.status.success(), "{}", text(&broken));
    assert!(
        text(&broken).contains("it had no lease"),
        "{}",
        text(&broken)
    );
    let left = client.get(lock_key.as_str(), None).await.unwrap();
    assert!(left.kvs().is_empty(), "the lease-less key is still there");
}

/// #14 Seen 6: "a lease-less `/lockstep/v1/leader` stops every election and
/// points the CLI at another URL". Here a coordinator started over such a
/// key takes the leadership (the key was no leader) and answers the CLI
/// itself.
#[tokio::test]
async fn a_lease_less_leader_key_stops_no_election() {
    let etcd = EtcdCluster::single().await.unwrap();
    let forged = serde_json::json!({
        "holder": {"host": "elsewhere", "pid": 1, "user": "x"},
        "purpose": "http://127.0.0.1:1",
        "since_unix_ms": 0
    })
    .to_string();
    let mut client = etcd.client().await.unwrap();
    client
        .put(leases::keys::LEADER, forged.as_str(), None)
        .await
        .unwrap();
    let coordinator = CoordinatorFixture::start(&etcd.endpoints(), 3)
        .await
        .unwrap();
    until_leading(&etcd, &coordinator.url()).await.unwrap();
    let status = coordinator.lockstep(&["status"]).await.unwrap();
    assert!(status.status.success(), "{}", text(&status));
}
