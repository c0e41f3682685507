//! Notifications end to end (#16 deliver 3 and 4): a coordinator with a
//! `[[notify]]` webhook pointing at a receiver that is not listening yet,
//! a deploy that succeeds while it is down (the rollout does not wait for
//! it), then the receiver starts, and a deploy that rolls back. Every
//! selected event arrives exactly once by its delivery id, with a valid
//! HMAC-SHA256 signature, and `/metrics` counts the deliveries.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use hmac::{Hmac, Mac};
use lockstep_tests::http::request;
use lockstep_tests::operator::{agents_known, finished, push, start_deploy, strategy};
use lockstep_tests::{
    CoordinatorFixture, Delivery, DemoRelease, EtcdCluster, FleetFixture, WebhookReceiver,
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

#[tokio::test]
async fn every_selected_event_arrives_once_signed_even_after_a_receiver_outage() {
    let etcd = EtcdCluster::single().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let secret = work.path().join("notify.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
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
    let sample = |text: &str, result: &str| {
        let series = format!("lockstep_notifications_total{{webhook=\"e2e\",result=\"{result}\"}}");
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse::<f64>().ok())
    };
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
