//! Each virtual host's Report stream to every coordinator, by the real
//! agent's own loop (`agent::uplink::report`, a `VirtualHost` being a
//! `Reporter`): registration, a status snapshot, every status event, and a
//! snapshot at the pace the coordinator's acks ask for. The
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
use agent::uplink::{
    HEALTHY_STREAM, RECONNECT_PAUSE_MAX, RECONNECT_PAUSE_MIN, Reporter, StreamError, report,
};
use proto::v1 as pb;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::host::VirtualHost;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const KEEP_ALIVE: Duration = Duration::from_secs(10);

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

impl Reporter for VirtualHost {
    fn identity(&self) -> pb::AgentIdentity {
        VirtualHost::identity(self)
    }

    fn snapshot(&self) -> impl std::future::Future<Output = pb::StatusResponse> + Send {
        std::future::ready(pb::StatusResponse {
            agent: Some(VirtualHost::identity(self)),
            services: vec![self.status()],
        })
    }

    fn events(&self) -> broadcast::Receiver<pb::StatusEvent> {
        self.subscribe()
    }
}

/// One host's stream to one coordinator, forever.
pub async fn keep_reporting(host: Arc<VirtualHost>, connections: Connections) {
    let mut backoff = Backoff::new(RECONNECT_PAUSE_MIN, RECONNECT_PAUSE_MAX);
    let url = connections.url.clone();
    loop {
        host.registered().await;
        let opened = Instant::now();
        let channel = connections.for_host(host.index);
        match report(host.as_ref(), channel, &url).await {
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
