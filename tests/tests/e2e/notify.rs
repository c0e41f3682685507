//! Notifications end to end (#16 deliver 3 and 4): a coordinator with a
//! `[[notify]]` webhook pointing at a receiver that is not listening yet,
//! a deploy that succeeds while it is down (the rollout does not wait for
//! it), then the receiver starts, and a deploy that rolls back. Every
//! selected event arrives exactly once by its delivery id, with a valid
//! HMAC-SHA256 signature, and `/metrics` counts the deliveries. Over
//! https too: to a receiver whose certificate chains to the webhook's
//! `ca_file`, and none to one whose certificate does not.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hmac::{Hmac, Mac};
use lockstep_tests::http::request;
use lockstep_tests::operator::{agents_known, finished, push, start_deploy, strategy};
use lockstep_tests::{
    CoordinatorFixture, Delivery, DemoRelease, EtcdCluster, FleetFixture, TestPki, WebhookReceiver,
    free_loopback_port, wait_for,
};
use sha2::Sha256;

const TTL_SECS: u64 = 3;
const ANY_PORT: u16 = 1;
const DEADLINE: Duration = Duration::from_secs(180);
const SECRET: &str = "e2e-webhook-secret";
const LAYOUT: &[(&str, &str)] = &[("n-1", "n"), ("n-2", "n")];

/// `(deployment, event)` of every delivery, checked: signature, headers
/// and body agree.
fn checked(deliveries: &[Delivery]) -> Vec<(String, String, String)> {
    deliveries
        .iter()
        .map(|d| {
            assert_eq!(d.method, "POST");
            assert_eq!(d.path, "/hooks/lockstep");
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).unwrap();
            mac.update(&d.body);
            let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
            assert_eq!(d.headers.get("x-lockstep-signature"), Some(&want), "{d:?}");
            let body: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
            let event = body["event"].as_str().unwrap().to_owned();
            assert_eq!(d.headers.get("x-lockstep-event"), Some(&event), "{d:?}");
            let delivery = body["delivery"].as_str().unwrap().to_owned();
            assert_eq!(d.headers.get("x-lockstep-delivery"), Some(&delivery));
            assert_eq!(body["service"], "demo", "{body}");
            (
                delivery,
                body["deployment"].as_str().unwrap().to_owned(),
                event,
            )
        })
        .collect()
}

/// Waits until the receiver has every `(deployment, event)` in `want`.
async fn arrived(
    receiver: &WebhookReceiver,
    want: &[(&str, &str)],
) -> Vec<(String, String, String)> {
    wait_for("the webhook deliveries", DEADLINE, || async {
        let got = checked(&receiver.deliveries());
        let missing: Vec<_> = want
            .iter()
            .filter(|(d, e)| !got.iter().any(|(_, gd, ge)| gd == d && ge == e))
            .collect();
        if missing.is_empty() {
            Ok(got)
        } else {
            Err(format!("missing {missing:?}; got {got:?}"))
        }
    })
    .await
    .unwrap()
}

/// The webhook's secret file, mode 0600.
fn secret_file(dir: &Path) -> PathBuf {
    let secret = dir.join("notify.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    secret
}

/// `lockstep_notifications_total{webhook="e2e",result}` in an exposition.
fn notifications(text: &str, result: &str) -> Option<f64> {
    let series = format!("lockstep_notifications_total{{webhook=\"e2e\",result=\"{result}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse::<f64>().ok())
}

#[tokio::test]
async fn every_selected_event_arrives_once_signed_even_after_a_receiver_outage() {
    let etcd = EtcdCluster::single().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let secret = secret_file(work.path());
    let hook_port = free_loopback_port().unwrap();
    let metrics: SocketAddr = ([127, 0, 0, 1], free_loopback_port().unwrap()).into();
    let coordinator = CoordinatorFixture::start_with_tables(
        &etcd.endpoints(),
        TTL_SECS,
        None,
        &format!(
            "[metrics]\nlisten = \"{metrics}\"\n\n[[notify]]\nname = \"e2e\"\nurl = \"http://127.0.0.1:{hook_port}/hooks/lockstep\"\nevents = [\"started\", \"succeeded\", \"rolled_back\", \"rollback_started\"]\nsecret_file = {secret:?}\ntimeout = \"5s\"\nretry_for = \"150s\"\n"
        ),
    )
    .await
    .unwrap();
    let urls = vec![coordinator.url()];
    let _fleet = FleetFixture::start(LAYOUT, &etcd.endpoints(), &urls)
        .await
        .unwrap();
    agents_known(&urls, LAYOUT.len()).await.unwrap();
    let fast = strategy(work.path(), "fast", "500ms").unwrap();

    // The receiver is down: the deployment finishes all the same.
    let good = DemoRelease::new("1.0.0", ANY_PORT)
        .build(work.path())
        .unwrap();
    let digest = push(&urls, &good).await.unwrap();
    let first = start_deploy(&urls, &digest, &fast).await.unwrap();
    let r = finished(&etcd, &first).await.unwrap();
    assert_eq!(r["state"], "succeeded", "{r}");

    let receiver = WebhookReceiver::start(hook_port).await.unwrap();
    arrived(&receiver, &[(&first, "started"), (&first, "succeeded")]).await;

    let refused = DemoRelease::new("2.0.0", ANY_PORT)
        .with_unknown_config_key()
        .build(work.path())
        .unwrap();
    let digest = push(&urls, &refused).await.unwrap();
    let second = start_deploy(&urls, &digest, &fast).await.unwrap();
    let r = finished(&etcd, &second).await.unwrap();
    assert_eq!(r["state"], "rolled_back", "{r}");
    let got = arrived(
        &receiver,
        &[
            (&second, "started"),
            (&second, "rollback_started"),
            (&second, "rolled_back"),
        ],
    )
    .await;

    // Exactly once by delivery id, and nothing that was not selected.
    let mut by_id: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, _, _) in &got {
        *by_id.entry(id.as_str()).or_default() += 1;
    }
    assert!(by_id.values().all(|n| *n == 1), "duplicates: {got:?}");
    let mut events: Vec<(&str, &str)> = got
        .iter()
        .map(|(_, d, e)| (d.as_str(), e.as_str()))
        .collect();
    events.sort_unstable();
    let mut want = vec![
        (first.as_str(), "started"),
        (first.as_str(), "succeeded"),
        (second.as_str(), "started"),
        (second.as_str(), "rollback_started"),
        (second.as_str(), "rolled_back"),
    ];
    want.sort_unstable();
    assert_eq!(events, want);

    // The first deploy's events were retried while the receiver was down.
    let log = coordinator.log_text();
    assert!(
        log.contains("notification not delivered yet"),
        "no retry in the coordinator's log:\n{log}"
    );

    // Each event counted once, delivered; none given up or dropped.
    let sample = notifications;
    let text = wait_for("the delivered notifications counted", DEADLINE, || async {
        let (code, text) = request(metrics, "GET", "/metrics", "").await?;
        match (code, sample(&text, "delivered")) {
            (200, Some(v)) if v >= 5.0 => Ok(text),
            (code, v) => Err(format!("delivered = {v:?} ({code})\n{text}")),
        }
    })
    .await
    .unwrap();
    assert_eq!(sample(&text, "delivered"), Some(5.0), "{text}");
    assert_eq!(sample(&text, "failed"), None, "{text}");
    assert_eq!(sample(&text, "dropped"), None, "{text}");
}

/// A coordinator whose only webhook, "e2e", is `url` with `ca_file`,
/// sending `started` and `succeeded`, given up after `retry_for`; a
/// two-host fleet; and one good deployment run to its end. Returns the
/// deployment id with the fixtures it needs alive.
async fn deploy_notifying(
    work: &Path,
    url: &str,
    ca_file: &Path,
    retry_for: &str,
) -> (
    String,
    SocketAddr,
    CoordinatorFixture,
    FleetFixture,
    EtcdCluster,
) {
    let etcd = EtcdCluster::single().await.unwrap();
    let secret = secret_file(work);
    let metrics: SocketAddr = ([127, 0, 0, 1], free_loopback_port().unwrap()).into();
    let coordinator = CoordinatorFixture::start_with_tables(
        &etcd.endpoints(),
        TTL_SECS,
        None,
        &format!(
            "[metrics]\nlisten = \"{metrics}\"\n\n[[notify]]\nname = \"e2e\"\nurl = \"{url}\"\nca_file = {ca_file:?}\nevents = [\"started\", \"succeeded\"]\nsecret_file = {secret:?}\ntimeout = \"5s\"\nretry_for = \"{retry_for}\"\n"
        ),
    )
    .await
    .unwrap();
    let urls = vec![coordinator.url()];
    let fleet = FleetFixture::start(LAYOUT, &etcd.endpoints(), &urls)
        .await
        .unwrap();
    agents_known(&urls, LAYOUT.len()).await.unwrap();
    let fast = strategy(work, "fast", "500ms").unwrap();
    let good = DemoRelease::new("1.0.0", ANY_PORT).build(work).unwrap();
    let digest = push(&urls, &good).await.unwrap();
    let id = start_deploy(&urls, &digest, &fast).await.unwrap();
    let r = finished(&etcd, &id).await.unwrap();
    assert_eq!(r["state"], "succeeded", "{r}");
    (id, metrics, coordinator, fleet, etcd)
}

/// #16 (https webhooks): a receiver serving https with a certificate from
/// the CA in the webhook's `ca_file` gets the deployment's events, signed,
/// once each, and they are counted delivered.
#[tokio::test]
async fn notifications_arrive_over_https_signed_from_a_receiver_of_the_ca_file() {
    let work = tempfile::tempdir().unwrap();
    let pki = TestPki::new("hooks CA").unwrap();
    let port = free_loopback_port().unwrap();
    let receiver = WebhookReceiver::start_tls(port, &pki.issue("hooks.test").unwrap())
        .await
        .unwrap();
    let url = format!("https://127.0.0.1:{port}/hooks/lockstep");
    let (id, metrics, coordinator, _fleet, _etcd) =
        deploy_notifying(work.path(), &url, pki.ca(), "150s").await;
    let got = arrived(&receiver, &[(&id, "started"), (&id, "succeeded")]).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let text = wait_for("the https deliveries counted", DEADLINE, || async {
        let (code, text) = request(metrics, "GET", "/metrics", "").await?;
        match (code, notifications(&text, "delivered")) {
            (200, Some(v)) if v >= 2.0 => Ok(text),
            (code, v) => Err(format!("delivered = {v:?} ({code})\n{text}")),
        }
    })
    .await
    .unwrap();
    assert_eq!(notifications(&text, "delivered"), Some(2.0), "{text}");
    assert_eq!(notifications(&text, "failed"), None, "{text}");
    drop(coordinator);
}

/// #16 (https webhooks): a receiver whose certificate is not from the CA
/// in the webhook's `ca_file` gets nothing; each event is given up after
/// `retry_for`, counted `failed`, and the log names the TLS failure.
#[tokio::test]
async fn a_receiver_not_from_the_ca_file_gets_nothing_and_the_failure_is_counted() {
    let work = tempfile::tempdir().unwrap();
    let trusted = TestPki::new("hooks CA").unwrap();
    let impostor = TestPki::new("another CA").unwrap();
    let port = free_loopback_port().unwrap();
    let receiver = WebhookReceiver::start_tls(port, &impostor.issue("hooks.test").unwrap())
        .await
        .unwrap();
    let url = format!("https://127.0.0.1:{port}/hooks/lockstep");
    let (_id, metrics, coordinator, _fleet, _etcd) =
        deploy_notifying(work.path(), &url, trusted.ca(), "2s").await;
    let text = wait_for("both events counted failed", DEADLINE, || async {
        let (code, text) = request(metrics, "GET", "/metrics", "").await?;
        match (code, notifications(&text, "failed")) {
            (200, Some(v)) if v >= 2.0 => Ok(text),
            (code, v) => Err(format!("failed = {v:?} ({code})\n{text}")),
        }
    })
    .await
    .unwrap();
    assert_eq!(notifications(&text, "failed"), Some(2.0), "{text}");
    assert_eq!(notifications(&text, "delivered"), None, "{text}");
    assert!(
        receiver.deliveries().is_empty(),
        "{:?}",
        receiver.deliveries()
    );
    let log = coordinator.log_text();
    let given_up: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("notification given up"))
        .collect();
    assert_eq!(given_up.len(), 2, "{log}");
    for line in given_up {
        assert!(
            line.contains(&format!(
                "webhook https://127.0.0.1:{port}: TLS handshake with 127.0.0.1 failed: invalid peer certificate: UnknownIssuer"
            )) && !line.contains("/hooks/lockstep"),
            "{line}"
        );
    }
}
