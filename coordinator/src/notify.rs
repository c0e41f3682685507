//! Notifications (`[[notify]]` webhooks): which deployment events a webhook
//! is sent, the body (JSON or Slack-compatible text), its HMAC-SHA256
//! signature, the retry schedule, and the delivery workers.
//!
//! ```text
//! driver ──try_send──► queue (bounded, per webhook) ──► worker: POST, retry with backoff, give up
//!          full: dropped, counted                         lockstep_notifications_total{webhook,result}
//! ```
//!
//! Must never: block or fail a rollout (the driver only `try_send`s), log a
//! secret, or retry without a bound.

use std::collections::BTreeSet;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::body::Bytes;
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::http_client::{self, HttpError, Origin, Transport};
use crate::record::{DeploymentState, EventKind, EventRecord};
use crate::telemetry::CoordinatorMetrics;

/// More webhooks than this is a misconfiguration, not a fleet's need.
pub const MAX_WEBHOOKS: usize = 16;
/// A URL longer than this is refused at load.
pub const MAX_URL_BYTES: usize = 2048;
/// A webhook that answers slower than this is down (connect included).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one event is retried before it is given up: long enough to
/// ride out a receiver's restart, short enough not to pile up.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(600);
/// Events waiting per webhook; a rollout emits a few dozen, so a full
/// queue means the receiver has been down a long time.
pub const QUEUE_LENGTH: usize = 1024;
/// A receiver's answer is read only to end the exchange; bounded.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The secret file is a key, not a document.
const MAX_SECRET_BYTES: u64 = 4096;
/// First retry delay and the cap of the exponential backoff.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// What a webhook can be sent: a deployment event, named as the operator
/// thinks of it (`Finished` is split by outcome, a halt from a pause).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Topic {
    Started,
    Succeeded,
    RolledBack,
    Failed,
    Aborted,
    Halted,
    Paused,
    Resumed,
    AwaitingApproval,
    RollbackStarted,
    InstanceFailed,
}

impl Topic {
    pub const ALL: [Topic; 11] = [
        Self::Started,
        Self::Succeeded,
        Self::RolledBack,
        Self::Failed,
        Self::Aborted,
        Self::Halted,
        Self::Paused,
        Self::Resumed,
        Self::AwaitingApproval,
        Self::RollbackStarted,
        Self::InstanceFailed,
    ];
    /// Without `events`: how a deployment ended, and a halt (someone must act).
    pub const DEFAULT: [Topic; 5] = [
        Self::Succeeded,
        Self::RolledBack,
        Self::Failed,
        Self::Aborted,
        Self::Halted,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Succeeded => "succeeded",
            Self::RolledBack => "rolled_back",
            Self::Failed => "failed",
            Self::Aborted => "aborted",
            Self::Halted => "halted",
            Self::Paused => "paused",
            Self::Resumed => "resumed",
            Self::AwaitingApproval => "awaiting_approval",
            Self::RollbackStarted => "rollback_started",
            Self::InstanceFailed => "instance_failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.label() == text)
    }

    /// The topic of a recorded event, if it has one; `halted`: the
    /// deployment's engine is halted (a `paused` event is then the halt).
    pub fn of(event: &EventRecord, halted: bool) -> Option<Self> {
        Some(match event.kind {
            EventKind::Started => Self::Started,
            EventKind::Finished => match event.state {
                DeploymentState::Succeeded => Self::Succeeded,
                DeploymentState::RolledBack => Self::RolledBack,
                DeploymentState::Aborted => Self::Aborted,
                DeploymentState::Failed => Self::Failed,
                _ => return None,
            },
            EventKind::Paused if halted => Self::Halted,
            EventKind::Paused => Self::Paused,
            EventKind::Resumed => Self::Resumed,
            EventKind::AwaitingApproval => Self::AwaitingApproval,
            EventKind::RollbackStarted => Self::RollbackStarted,
            EventKind::InstanceFailed => Self::InstanceFailed,
            _ => return None,
        })
    }
}

/// `format`: the body a webhook is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// The event as a JSON object (see `render`).
    Json,
    /// `{"text": "..."}`, which Slack's incoming webhooks (and Mattermost,
    /// Rocket.Chat) post as a message.
    Slack,
}

/// Where a webhook is: `http[s]://host[:port][/path][?query]`. `Debug`
/// shows the origin only: the path may be a credential (Slack's is).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    origin: Origin,
    path: String,
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookUrl")
            .field("origin", &self.origin.to_string())
            .finish_non_exhaustive()
    }
}

impl WebhookUrl {
    /// Parses `http[s]://host[:port][/path][?query]` (the port defaults to
    /// the scheme's), without credentials or fragment.
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.len() > MAX_URL_BYTES {
            return Err(format!("longer than {MAX_URL_BYTES} bytes"));
        }
        let (origin, path) = Origin::split(url)?;
        let path = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        if path.contains('#') {
            return Err(format!(
                "{url:?}: no fragment (#...): it is never sent to the server"
            ));
        }
        path.parse::<hyper::Uri>()
            .map_err(|e| format!("{url:?}: {e}"))?;
        Ok(Self { origin, path })
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.origin, self.path)
    }
}

/// The HMAC key of a webhook, keyed once; never printed.
#[derive(Clone)]
pub struct Secret {
    key: Vec<u8>,
    mac: Hmac<Sha256>,
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A key of any length but none (HMAC pads or hashes it).
    pub fn new(key: Vec<u8>) -> Result<Self, String> {
        if key.is_empty() {
            return Err("the key is empty".to_owned());
        }
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&key)
            .map_err(|e| format!("HMAC-SHA256 refuses a key of {} bytes: {e}", key.len()))?;
        Ok(Self { key, mac })
    }

    /// Reads `secret_file`: at most 4 KiB, not empty (trailing newline
    /// dropped), and not readable by others (it signs every delivery).
    pub fn load(path: &Path) -> Result<Self, String> {
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("{}: {}", path.display(), cli::chain(&e)))?;
        if meta.permissions().mode() & 0o007 != 0 {
            return Err(format!(
                "{} is readable by others (mode {:o}): chmod o-rwx it",
                path.display(),
                meta.permissions().mode() & 0o777
            ));
        }
        if meta.len() > MAX_SECRET_BYTES {
            return Err(format!(
                "{} is larger than {MAX_SECRET_BYTES} bytes",
                path.display()
            ));
        }
        let mut key =
            std::fs::read(path).map_err(|e| format!("{}: {}", path.display(), cli::chain(&e)))?;
        while key.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            key.pop();
        }
        if key.is_empty() {
            return Err(format!("{} is empty", path.display()));
        }
        Self::new(key).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// One valid `[[notify]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub name: String,
    pub url: WebhookUrl,
    /// Plain for http://; for https:// the CAs the receiver must chain to.
    pub transport: Transport,
    pub topics: BTreeSet<Topic>,
    pub secret: Secret,
    pub format: BodyFormat,
    /// One POST, connect included.
    pub timeout: Duration,
    /// How long one event is retried before it is given up.
    pub retry_for: Duration,
}

impl Webhook {
    pub fn wants(&self, topic: Topic) -> bool {
        self.topics.contains(&topic)
    }
}

/// One event on its way to webhooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub topic: Topic,
    pub deployment: String,
    pub service: String,
    pub event: EventRecord,
}

impl Notification {
    /// `X-Lockstep-Delivery`: the same for an event on every retry and
    /// from any coordinator (deployment and sequence number), so a
    /// receiver drops duplicates by it.
    pub fn delivery_id(&self) -> String {
        format!("{}/{}", self.deployment, self.event.seq)
    }
}

#[derive(Serialize)]
struct JsonBody<'a> {
    delivery: String,
    event: &'static str,
    deployment: &'a str,
    service: &'a str,
    seq: u64,
    at_unix_ms: i64,
    state: &'static str,
    cluster: &'a str,
    instance: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct SlackBody {
    text: String,
}

/// The body of a delivery.
pub fn render(format: BodyFormat, n: &Notification) -> Result<Vec<u8>, serde_json::Error> {
    match format {
        BodyFormat::Json => serde_json::to_vec(&JsonBody {
            delivery: n.delivery_id(),
            event: n.topic.label(),
            deployment: &n.deployment,
            service: &n.service,
            seq: n.event.seq,
            at_unix_ms: n.event.at_unix_ms,
            state: n.event.state.label(),
            cluster: &n.event.cluster,
            instance: &n.event.instance,
            message: &n.event.message,
        }),
        BodyFormat::Slack => {
            let on = if n.event.instance.is_empty() {
                String::new()
            } else {
                format!(" on {}", n.event.instance)
            };
            serde_json::to_vec(&SlackBody {
                text: format!(
                    "lockstep: {} {} {}{on}: {}",
                    n.service,
                    n.deployment,
                    n.topic.label(),
                    n.event.message
                ),
            })
        }
    }
}

/// `X-Lockstep-Signature`: `sha256=` and the hex HMAC-SHA256 of `body`.
pub fn sign(secret: &Secret, body: &[u8]) -> String {
    let mut mac = secret.mac.clone();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    RetryAfter(Duration),
    GiveUp,
}

/// After a failed attempt: retry after `delay` (the backoff's next) unless
/// the receiver refused the request itself (a 4xx other than 408/429:
/// sending it again cannot help) or the retry would start after
/// `retry_for` since the first attempt.
pub fn next_after(
    status: Option<u16>,
    delay: Option<Duration>,
    elapsed: Duration,
    retry_for: Duration,
) -> Next {
    let refused = status.is_some_and(|s| (400..500).contains(&s) && s != 408 && s != 429);
    match delay {
        Some(delay) if !refused && elapsed + delay <= retry_for => Next::RetryAfter(delay),
        _ => Next::GiveUp,
    }
}

/// The backoff between attempts: 0.5 s doubling to 30 s, jittered, no
/// attempt limit (`retry_for` bounds it).
fn backoff() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(FIRST_RETRY)
        .with_max_delay(MAX_RETRY_DELAY)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Why one attempt failed. Names the webhook's origin, never its path:
/// a Slack webhook's path is its credential.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("webhook {origin}")]
    Exchange {
        origin: String,
        #[source]
        source: HttpError,
    },
    #[error("webhook {origin}: no answer within {timeout:?}")]
    Timeout { origin: String, timeout: Duration },
    #[error("webhook {origin}: answered {status}")]
    Status { origin: String, status: u16 },
}

impl DeliveryError {
    fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The driver's handle: one bounded queue per webhook.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    queues: Vec<(Arc<Webhook>, mpsc::Sender<Arc<Notification>>)>,
    metrics: CoordinatorMetrics,
}

impl Notifier {
    /// Starts a worker per webhook; they end once every `Notifier` clone
    /// is dropped and their queue is delivered (or given up).
    pub fn start(webhooks: &[Webhook], metrics: CoordinatorMetrics) -> Self {
        let queues = webhooks
            .iter()
            .map(|w| {
                let webhook = Arc::new(w.clone());
                let (tx, rx) = mpsc::channel(QUEUE_LENGTH);
                tokio::spawn(work(webhook.clone(), rx, metrics.clone()));
                (webhook, tx)
            })
            .collect();
        Self { queues, metrics }
    }

    /// Hands the events each webhook wants to its worker; never waits: a
    /// full queue drops the event, counted and logged.
    pub fn notify(&self, deployment: &str, service: &str, events: &[EventRecord], halted: bool) {
        for event in events {
            let Some(topic) = Topic::of(event, halted) else {
                continue;
            };
            let mut notification = None;
            for (webhook, queue) in self.queues.iter().filter(|(w, _)| w.wants(topic)) {
                let n = notification
                    .get_or_insert_with(|| {
                        Arc::new(Notification {
                            topic,
                            deployment: deployment.to_owned(),
                            service: service.to_owned(),
                            event: event.clone(),
                        })
                    })
                    .clone();
                if let Err(err) = queue.try_send(n) {
                    self.metrics.notification(&webhook.name, "dropped");
                    tracing::warn!(webhook = webhook.name, deployment, seq = event.seq, event = topic.label(), error = %err, "notification dropped: the webhook's queue is full or closed");
                }
            }
        }
    }
}

async fn work(
    webhook: Arc<Webhook>,
    mut queue: mpsc::Receiver<Arc<Notification>>,
    metrics: CoordinatorMetrics,
) {
    while let Some(n) = queue.recv().await {
        let result = deliver(&webhook, &n).await;
        metrics.notification(&webhook.name, result);
    }
}

/// Sends one event until it is taken or given up; `"delivered"` or `"failed"`.
async fn deliver(webhook: &Webhook, n: &Notification) -> &'static str {
    let body = match render(webhook.format, n) {
        Ok(body) => Bytes::from(body),
        Err(err) => {
            tracing::warn!(webhook = webhook.name, delivery = n.delivery_id(), error = %cli::chain(&err), "notification given up: cannot encode its body");
            return "failed";
        }
    };
    let signature = sign(&webhook.secret, &body);
    let delivery = n.delivery_id();
    let first = Instant::now();
    let mut delays = backoff();
    let mut attempt = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        let result = post(webhook, n.topic, &delivery, &signature, body.clone()).await;
        let err = match result {
            Ok(()) => {
                tracing::debug!(
                    webhook = webhook.name,
                    delivery,
                    attempt,
                    "notification delivered"
                );
                return "delivered";
            }
            Err(err) => err,
        };
        match next_after(
            err.status(),
            delays.next(),
            first.elapsed(),
            webhook.retry_for,
        ) {
            Next::RetryAfter(delay) => {
                tracing::info!(webhook = webhook.name, delivery, attempt, retry_in = ?delay, error = %cli::chain(&err), "notification not delivered yet");
                tokio::time::sleep(delay).await;
            }
            Next::GiveUp => {
                tracing::warn!(webhook = webhook.name, delivery, attempt, event = n.topic.label(), error = %cli::chain(&err), "notification given up");
                return "failed";
            }
        }
    }
}

async fn post(
    webhook: &Webhook,
    topic: Topic,
    delivery: &str,
    signature: &str,
    body: Bytes,
) -> Result<(), DeliveryError> {
    let origin = || webhook.url.origin().to_string();
    match tokio::time::timeout(
        webhook.timeout,
        exchange(webhook, topic, delivery, signature, body),
    )
    .await
    {
        Err(_) => Err(DeliveryError::Timeout {
            origin: origin(),
            timeout: webhook.timeout,
        }),
        Ok(result) => result,
    }
}

async fn exchange(
    webhook: &Webhook,
    topic: Topic,
    delivery: &str,
    signature: &str,
    body: Bytes,
) -> Result<(), DeliveryError> {
    let failed = |source| DeliveryError::Exchange {
        origin: webhook.url.origin().to_string(),
        source,
    };
    let request = http_client::request(&webhook.url.origin, hyper::Method::POST, &webhook.url.path)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "lockstep-coordinator")
        .header("X-Lockstep-Event", topic.label())
        .header("X-Lockstep-Delivery", delivery)
        .header("X-Lockstep-Signature", signature)
        .body(Full::new(body))
        .map_err(|e| failed(HttpError::Request(e)))?;
    // `post` bounds the whole exchange by `timeout`; the connect is too.
    let response = http_client::send(
        &webhook.url.origin,
        &webhook.transport,
        request,
        webhook.timeout,
    )
    .await
    .map_err(failed)?;
    let status = response.status();
    // Read (bounded) so the receiver is not cut off mid-answer; what it
    // says does not matter, only its status.
    if let Err(error) = http_client::read_body(response, MAX_ANSWER_BYTES).await {
        tracing::debug!(webhook = webhook.name, error = %cli::chain(&error), "webhook answer not read whole");
    }
    if status.is_success() {
        Ok(())
    } else {
        Err(DeliveryError::Status {
            origin: webhook.url.origin().to_string(),
            status: status.as_u16(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, state: DeploymentState) -> EventRecord {
        EventRecord {
            seq: 7,
            at_unix_ms: 1_700_000_000_000,
            kind,
            state,
            cluster: "eu".to_owned(),
            instance: String::new(),
            message: "rolled back: \"web-2\" failed".to_owned(),
        }
    }

    #[test]
    fn topics_split_finished_by_outcome_and_a_halt_from_a_pause() {
        use DeploymentState as S;
        use EventKind as K;
        let of = |k, s, halted| Topic::of(&event(k, s), halted);
        assert_eq!(of(K::Finished, S::Succeeded, false), Some(Topic::Succeeded));
        assert_eq!(
            of(K::Finished, S::RolledBack, false),
            Some(Topic::RolledBack)
        );
        assert_eq!(of(K::Finished, S::Aborted, false), Some(Topic::Aborted));
        assert_eq!(of(K::Finished, S::Failed, false), Some(Topic::Failed));
        assert_eq!(of(K::Paused, S::Paused, true), Some(Topic::Halted));
        assert_eq!(of(K::Paused, S::Paused, false), Some(Topic::Paused));
        assert_eq!(
            of(K::InstanceFailed, S::Running, false),
            Some(Topic::InstanceFailed)
        );
        assert_eq!(of(K::InstanceReady, S::Running, false), None);
        assert_eq!(of(K::WaveStarted, S::Running, false), None);
        for t in Topic::ALL {
            assert_eq!(Topic::parse(t.label()), Some(t));
        }
        assert_eq!(Topic::parse("finished"), None);
    }

    fn notification() -> Notification {
        Notification {
            topic: Topic::RolledBack,
            deployment: "d-42".to_owned(),
            service: "web".to_owned(),
            event: event(EventKind::Finished, DeploymentState::RolledBack),
        }
    }

    #[test]
    fn the_json_body_carries_the_event_and_its_delivery_id() {
        let body: serde_json::Value =
            serde_json::from_slice(&render(BodyFormat::Json, &notification()).unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "delivery": "d-42/7", "event": "rolled_back", "deployment": "d-42",
                "service": "web", "seq": 7, "at_unix_ms": 1_700_000_000_000_i64,
                "state": "rolled_back", "cluster": "eu", "instance": "",
                "message": "rolled back: \"web-2\" failed",
            })
        );
    }

    #[test]
    fn the_slack_body_is_one_text_line() {
        let body: serde_json::Value =
            serde_json::from_slice(&render(BodyFormat::Slack, &notification()).unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"text": "lockstep: web d-42 rolled_back: rolled back: \"web-2\" failed"})
        );
    }

    #[test]
    fn the_signature_is_rfc_4231_hmac_sha256_in_hex() {
        // RFC 4231 test case 2.
        let secret = Secret::new(b"Jefe".to_vec()).unwrap();
        assert_eq!(
            sign(&secret, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_ne!(
            sign(&secret, b"other"),
            sign(&secret, b"what do ya want for nothing?")
        );
    }

    #[test]
    fn retries_stop_at_retry_for_or_on_a_refusal() {
        let s = Duration::from_secs;
        let limit = s(30);
        assert_eq!(
            next_after(None, Some(s(2)), s(10), limit),
            Next::RetryAfter(s(2))
        );
        assert_eq!(
            next_after(Some(503), Some(s(2)), s(28), limit),
            Next::RetryAfter(s(2))
        );
        assert_eq!(
            next_after(Some(429), Some(s(1)), s(0), limit),
            Next::RetryAfter(s(1))
        );
        assert_eq!(next_after(None, Some(s(2)), s(29), limit), Next::GiveUp);
        assert_eq!(next_after(Some(404), Some(s(1)), s(0), limit), Next::GiveUp);
        assert_eq!(next_after(None, None, s(0), limit), Next::GiveUp);
        let delays: Vec<Duration> = backoff().take(12).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= FIRST_RETRY && *d <= MAX_RETRY_DELAY * 2)
        );
    }

    #[test]
    fn http_and_https_urls_with_a_host_and_the_default_port() {
        let url = WebhookUrl::parse("http://127.0.0.1:8080/hooks/a?x=1").unwrap();
        assert_eq!(url.origin().authority(), "127.0.0.1:8080");
        assert_eq!(url.path, "/hooks/a?x=1");
        assert_eq!(WebhookUrl::parse("http://h:1").unwrap().path, "/");
        assert_eq!(WebhookUrl::parse("http://h:1?q").unwrap().path, "/?q");
        // Slack's incoming webhooks: https, no port.
        let slack = WebhookUrl::parse("https://hooks.slack.com/services/T0/B0/x").unwrap();
        assert_eq!(
            slack.to_string(),
            "https://hooks.slack.com/services/T0/B0/x"
        );
        assert_eq!(slack.origin().scheme(), http_client::Scheme::Https);
        assert!(WebhookUrl::parse("https://[::1]:8443/h").is_ok());
        assert!(!format!("{slack:?}").contains("services"), "{slack:?}");
        assert!(
            WebhookUrl::parse("ftp://h:1/")
                .unwrap_err()
                .contains("https://")
        );
        assert!(WebhookUrl::parse("http://u:p@h:1/").is_err());
        assert!(
            WebhookUrl::parse("http://h:1/a#b")
                .unwrap_err()
                .contains("fragment")
        );
        assert!(WebhookUrl::parse("http://:1/").is_err());
        let long = format!("http://h:1/{}", "a".repeat(MAX_URL_BYTES));
        assert!(WebhookUrl::parse(&long).unwrap_err().contains("longer"));
    }

    #[test]
    fn a_secret_readable_by_others_or_empty_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            Secret::load(&path)
                .unwrap_err()
                .contains("readable by others")
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            Secret::load(&path).unwrap(),
            Secret::new(b"s3cret".to_vec()).unwrap()
        );
        std::fs::write(&path, "\n").unwrap();
        assert!(Secret::load(&path).unwrap_err().contains("empty"));
    }

    /// The driver's side never waits: past the queue's room an event is
    /// dropped and counted; events the webhook did not select are not queued.
    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let webhook = Arc::new(Webhook {
            name: "chat".to_owned(),
            url: WebhookUrl::parse("http://127.0.0.1:1/").unwrap(),
            transport: Transport::Plain,
            topics: [Topic::Started, Topic::RolledBack].into_iter().collect(),
            secret: Secret::new(b"k".to_vec()).unwrap(),
            format: BodyFormat::Json,
            timeout: DEFAULT_TIMEOUT,
            retry_for: DEFAULT_RETRY_FOR,
        });
        let (tx, mut rx) = mpsc::channel(1);
        let metrics = CoordinatorMetrics::default();
        let notifier = Notifier {
            queues: vec![(webhook, tx)],
            metrics: metrics.clone(),
        };
        let mut started = event(EventKind::Started, DeploymentState::Running);
        started.seq = 1;
        let ready = event(EventKind::InstanceReady, DeploymentState::Running);
        let ended = event(EventKind::Finished, DeploymentState::RolledBack);
        notifier.notify("d-1", "web", &[started, ready, ended], false);
        let queued = rx.try_recv().unwrap();
        assert_eq!(
            (queued.topic, queued.delivery_id().as_str()),
            (Topic::Started, "d-1/1")
        );
        assert!(rx.try_recv().is_err());
        let text =
            exposition::encode(&metrics.registry(), exposition::Format::PrometheusText).unwrap();
        assert!(
            text.contains("lockstep_notifications_total{webhook=\"chat\",result=\"dropped\"} 1"),
            "{text}"
        );
    }
}
