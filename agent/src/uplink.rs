//! `Uplink`: the agent's `Report` stream to every coordinator of the fleet,
//! how coordinators learn that this host exists and what it runs.
//!
//! ```text
//! per coordinator URL, one task:
//!   connect -> Report stream: seq 1 registration (Host::identity),
//!              seq 2 status snapshot, then every StatusEvent (a lagged
//!              event receiver sends a snapshot instead) and a snapshot
//!              every status_interval_ms (from the latest ReportAck)
//!   stream error or end -> log -> backoff 100 ms..5 s with jitter
//!              (reset after a stream that lived > 30 s) -> connect again
//! ```
//!
//! One stream's loop (`report`) is shared with `lockstep-nodesim`, whose
//! virtual hosts are [`Reporter`]s too, so the simulator reports exactly
//! as an agent does.
//!
//! Must never: let a coordinator's absence or slowness reach the apps or
//! the host (it only delays reports), or keep a task alive after its
//! `Uplink` is dropped.

use std::sync::Arc;
use std::time::Duration;

use proto::v1 as pb;
use proto::v1::coordinator_service_client::CoordinatorServiceClient;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::dial::{self, Backoff};
use crate::host::Host;
use crate::task::OwnedTask;

/// Snapshot pace until the coordinator's first ack says otherwise.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_millis(5000);
/// A coordinator asking for snapshots faster than this gets this: a
/// snapshot walks every service, and the stream must leave room for events.
const MIN_STATUS_INTERVAL: Duration = Duration::from_millis(100);
pub const RECONNECT_PAUSE_MIN: Duration = Duration::from_millis(100);
pub const RECONNECT_PAUSE_MAX: Duration = Duration::from_secs(5);
/// A stream that lived this long was healthy: the next failure starts the
/// backoff from its shortest pause again.
pub const HEALTHY_STREAM: Duration = Duration::from_secs(30);
/// How long the coordinator may take to answer the opening of a stream.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Reports queued for the stream beyond the one being built; when they
/// back up, events wait in the host's broadcast buffer, and if that
/// overflows the coordinator gets a snapshot instead of the lost events.
const OUTBOX: usize = 16;

/// The report streams; dropping it ends them all.
#[derive(Debug)]
pub struct Uplink {
    _streams: Vec<OwnedTask>,
}

impl Uplink {
    /// Starts one report stream per coordinator; never waits for them.
    pub fn start(host: Arc<Host>, urls: &[String]) -> Self {
        let streams = urls
            .iter()
            .map(|url| OwnedTask::spawn(keep_reporting(host.clone(), url.clone())))
            .collect();
        Self { _streams: streams }
    }
}

/// What a Report stream speaks for.
pub trait Reporter: Send + Sync {
    /// Who the stream registers as.
    fn identity(&self) -> pb::AgentIdentity;
    /// Every service now, as `AgentService.Status` would answer.
    fn snapshot(&self) -> impl std::future::Future<Output = pb::StatusResponse> + Send;
    /// Every status event from now on.
    fn events(&self) -> broadcast::Receiver<pb::StatusEvent>;
}

impl Reporter for Host {
    fn identity(&self) -> pb::AgentIdentity {
        Host::identity(self)
    }

    fn snapshot(&self) -> impl std::future::Future<Output = pb::StatusResponse> + Send {
        snapshot(self)
    }

    fn events(&self) -> broadcast::Receiver<pb::StatusEvent> {
        self.subscribe()
    }
}

/// Why a Report stream ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{0}")]
    Connect(String),
    #[error("the coordinator did not answer the stream's opening within {OPEN_TIMEOUT:?}")]
    OpenTimeout,
    #[error("the coordinator refused the stream: {0}")]
    Refused(String),
    #[error("the stream broke: {0}")]
    Broken(String),
    #[error("the stream's sender ended")]
    SenderGone,
    #[error("the host's status events ended (agent shutting down)")]
    HostGone,
}

/// One coordinator, forever: report, and reconnect when the stream ends.
async fn keep_reporting(host: Arc<Host>, url: String) {
    let agent = host.config().id.to_string();
    let mut backoff = Backoff::new(RECONNECT_PAUSE_MIN, RECONNECT_PAUSE_MAX);
    loop {
        let opened = Instant::now();
        let result = connect_and_report(&host, &url).await;
        let lived_ms = u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &result {
            Ok(()) => {
                tracing::info!(
                    agent,
                    coordinator = url,
                    lived_ms,
                    "coordinator ended the report stream"
                );
            }
            Err(StreamError::HostGone) => return,
            Err(err) => {
                tracing::warn!(agent, coordinator = url, lived_ms, error = %err, "report stream failed");
            }
        }
        if opened.elapsed() > HEALTHY_STREAM {
            backoff.reset();
        }
        let pause = backoff.next_pause();
        tracing::debug!(
            agent,
            coordinator = url,
            pause_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
            "reconnecting to the coordinator"
        );
        tokio::time::sleep(pause).await;
    }
}

/// One stream, until it fails or the coordinator ends it.
async fn connect_and_report(host: &Host, url: &str) -> Result<(), StreamError> {
    let tls = host.config().tls.as_ref().map(|t| &t.material);
    let channel = dial::connect(url, tls)
        .await
        .map_err(StreamError::Connect)?;
    report(host, channel, url).await
}

/// One stream over `channel`: the registration, a snapshot, then every
/// event and a snapshot at the pace the acks ask for, until the stream
/// fails or the coordinator ends it.
pub async fn report<R: Reporter>(
    reporter: &R,
    channel: Channel,
    url: &str,
) -> Result<(), StreamError> {
    let mut client = CoordinatorServiceClient::new(channel);
    let identity = reporter.identity();
    let agent = identity.agent_id.clone();
    // Subscribed before the first snapshot: nothing that happens after the
    // snapshot is missed.
    let mut events = reporter.events();
    let (tx, rx) = mpsc::channel(OUTBOX);
    let mut seq = 0;
    let mut send = |body: pb::agent_report::Body| {
        seq += 1;
        pb::AgentReport {
            seq,
            body: Some(body),
        }
    };
    // Queued before the call: tonic sends them as soon as the stream opens.
    let opening = [
        send(pb::agent_report::Body::Registration(identity)),
        send(pb::agent_report::Body::Status(reporter.snapshot().await)),
    ];
    for report in opening {
        tx.send(report).await.map_err(|_| StreamError::SenderGone)?;
    }
    let opened = tokio::time::timeout(
        OPEN_TIMEOUT,
        client.report(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .map_err(|_| StreamError::OpenTimeout)?
    .map_err(|status| StreamError::Refused(status_text(&status)))?;
    let mut acks = opened.into_inner();
    tracing::info!(agent, coordinator = url, "report stream open");

    let mut interval = DEFAULT_STATUS_INTERVAL;
    let mut last_snapshot = Instant::now();
    // At most one report waits for room in the outbox; while it waits no
    // event is taken from the host, so a slow coordinator costs a
    // snapshot, never unbounded memory. Acks are read all the while.
    let mut pending: Option<pb::agent_report::Body> = None;
    loop {
        tokio::select! {
            ack = acks.message() => match ack {
                Ok(Some(ack)) => {
                    if ack.status_interval_ms > 0 {
                        interval = Duration::from_millis(ack.status_interval_ms).max(MIN_STATUS_INTERVAL);
                    }
                }
                Ok(None) => return Ok(()),
                Err(status) => return Err(StreamError::Broken(status_text(&status))),
            },
            permit = tx.reserve(), if pending.is_some() => {
                let permit = permit.map_err(|_| StreamError::SenderGone)?;
                if let Some(body) = pending.take() {
                    permit.send(send(body));
                }
            }
            event = events.recv(), if pending.is_none() => {
                pending = Some(match event {
                    Ok(event) => pb::agent_report::Body::Event(event),
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(agent, coordinator = url, missed, "status events lagged; sending a snapshot");
                        last_snapshot = Instant::now();
                        pb::agent_report::Body::Status(reporter.snapshot().await)
                    }
                    Err(RecvError::Closed) => return Err(StreamError::HostGone),
                });
            }
            () = tokio::time::sleep_until(last_snapshot + interval), if pending.is_none() => {
                last_snapshot = Instant::now();
                pending = Some(pb::agent_report::Body::Status(reporter.snapshot().await));
            }
        }
    }
}

/// Every service on this host, as `AgentService.Status` would answer.
async fn snapshot(host: &Host) -> pb::StatusResponse {
    let services = match host.status("").await {
        Ok(services) => services,
        Err(err) => {
            // Only a named unknown service fails; "" never does.
            tracing::warn!(error = %err, "cannot take a status snapshot");
            Vec::new()
        }
    };
    pb::StatusResponse {
        agent: Some(host.identity()),
        services,
    }
}

fn status_text(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(source) = std::error::Error::source(status) {
        text.push_str(": ");
        text.push_str(&cli::chain(source));
    }
    text
}
