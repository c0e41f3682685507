//! Each virtual host's Report stream to every coordinator, as the real
//! agent's (`agent::uplink`): registration, a status snapshot, every status
//! event, and a snapshot at the pace the coordinator's acks ask for. The
//! streams of many hosts share a few HTTP/2 connections (`Connections`),
//! since a server caps the concurrent streams of one connection.
//!
//! ```text
//! host i -> connection i / hosts_per_connection (lazily connected, shared)
//!   wait until registered -> stream: seq 1 registration, seq 2 snapshot,
//!   events (lagged: a snapshot), snapshot every interval
//!   error or end -> backoff 100 ms..5 s with jitter -> again
//! ```
//!
//! Must never: open a stream before the host holds its registration (the
//! coordinator refuses it), or queue reports without bound.

use std::sync::Arc;
use std::time::Duration;

use agent::dial::Backoff;
use proto::v1 as pb;
use proto::v1::coordinator_service_client::CoordinatorServiceClient;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::host::VirtualHost;

const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(5);
const MIN_STATUS_INTERVAL: Duration = Duration::from_millis(100);
const RECONNECT_PAUSE_MIN: Duration = Duration::from_millis(100);
const RECONNECT_PAUSE_MAX: Duration = Duration::from_secs(5);
const HEALTHY_STREAM: Duration = Duration::from_secs(30);
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const KEEP_ALIVE: Duration = Duration::from_secs(10);
const OUTBOX: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("`{url}` is not a usable coordinator URL: {source}")]
    Url {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Lazily connected HTTP/2 connections to one coordinator.
#[derive(Debug, Clone)]
pub struct Connections {
    url: String,
    channels: Vec<Channel>,
    hosts_per_connection: usize,
}

impl Connections {
    /// Enough connections to `url` for `hosts` streams, at most
    /// `hosts_per_connection` each.
    pub fn new(url: &str, hosts: usize, hosts_per_connection: usize) -> Result<Self, UplinkError> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|source| UplinkError::Url {
                url: url.to_owned(),
                source,
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEP_ALIVE)
            .keep_alive_timeout(KEEP_ALIVE)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        let per = hosts_per_connection.max(1);
        let count = hosts.div_ceil(per).max(1);
        // Each `connect_lazy` is its own connection (not a shared pool).
        let channels = (0..count).map(|_| endpoint.connect_lazy()).collect();
        Ok(Self {
            url: url.to_owned(),
            channels,
            hosts_per_connection: per,
        })
    }

    fn for_host(&self, index: usize) -> Channel {
        let slot = (index / self.hosts_per_connection).min(self.channels.len() - 1);
        self.channels[slot].clone()
    }
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("the coordinator did not answer the stream's opening within {OPEN_TIMEOUT:?}")]
    OpenTimeout,
    #[error("the coordinator refused the stream: {0}")]
    Refused(String),
    #[error("the stream broke: {0}")]
    Broken(String),
    #[error("the stream's sender ended")]
    SenderGone,
    #[error("the host's status events ended")]
    HostGone,
}

/// One host's stream to one coordinator, forever.
pub async fn keep_reporting(host: Arc<VirtualHost>, connections: Connections) {
    let mut backoff = Backoff::new(RECONNECT_PAUSE_MIN, RECONNECT_PAUSE_MAX);
    let url = connections.url.clone();
    loop {
        host.registered().await;
        let opened = Instant::now();
        let channel = connections.for_host(host.index);
        match report(&host, channel, &url).await {
            Ok(()) => {
                tracing::info!(agent = %host.id, coordinator = url, "coordinator ended the report stream")
            }
            Err(StreamError::HostGone) => return,
            Err(err) => {
                tracing::warn!(agent = %host.id, coordinator = url, error = %err, "report stream failed")
            }
        }
        if opened.elapsed() > HEALTHY_STREAM {
            backoff.reset();
        }
        tokio::time::sleep(backoff.next_pause()).await;
    }
}

fn snapshot(host: &VirtualHost) -> pb::StatusResponse {
    pb::StatusResponse {
        agent: Some(host.identity()),
        services: vec![host.status()],
    }
}

async fn report(host: &VirtualHost, channel: Channel, url: &str) -> Result<(), StreamError> {
    let mut client = CoordinatorServiceClient::new(channel);
    let mut events = host.subscribe();
    let (tx, rx) = mpsc::channel(OUTBOX);
    let mut seq = 0;
    let mut send = |body: pb::agent_report::Body| {
        seq += 1;
        pb::AgentReport {
            seq,
            body: Some(body),
        }
    };
    for report in [
        send(pb::agent_report::Body::Registration(host.identity())),
        send(pb::agent_report::Body::Status(snapshot(host))),
    ] {
        tx.send(report).await.map_err(|_| StreamError::SenderGone)?;
    }
    let opened = tokio::time::timeout(
        OPEN_TIMEOUT,
        client.report(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .map_err(|_| StreamError::OpenTimeout)?
    .map_err(|status| StreamError::Refused(cli::chain(&status)))?;
    let mut acks = opened.into_inner();
    tracing::debug!(agent = %host.id, coordinator = url, "report stream open");
    let mut interval = DEFAULT_STATUS_INTERVAL;
    let mut last_snapshot = Instant::now();
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
                Err(status) => return Err(StreamError::Broken(cli::chain(&status))),
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
                    Err(RecvError::Lagged(_)) => {
                        last_snapshot = Instant::now();
                        pb::agent_report::Body::Status(snapshot(host))
                    }
                    Err(RecvError::Closed) => return Err(StreamError::HostGone),
                });
            }
            () = tokio::time::sleep_until(last_snapshot + interval), if pending.is_none() => {
                last_snapshot = Instant::now();
                pending = Some(pb::agent_report::Body::Status(snapshot(host)));
            }
        }
    }
}
