//! `mirror`: every coordinator keeps its own copy of every indexed release,
//! so a release pushed to one coordinator survives that coordinator's death
//! and agents can fetch it from any of them.
//!
//! ```text
//! every status_interval: list /lockstep/v1/releases/
//!   entry whose blob is not here -> FetchRelease from a holder (its
//!   `holders`: the coordinators that stored it) -> depot.commit: the same
//!   full verification as a push -> this coordinator joins `holders`
//! ```
//!
//! Must never: store a bundle without the depot's verification, or name
//! itself a holder of a release it has not stored.

use std::time::Duration;

use cli::Chain;
use proto::v1::FetchReleaseRequest;
use proto::v1::coordinator_service_client::CoordinatorServiceClient;
use release::ReleaseDigest;
use tokio::sync::watch;
use tonic::transport::Endpoint;

use crate::depot::{DepotError, ReleaseDepot, ReleaseEntry};

/// How long connecting to a peer coordinator may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A copy that makes no progress for this long is abandoned until the next
/// round.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Chunk messages are as large as the serving coordinator makes them.
const MAX_CHUNK_MESSAGE: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("no coordinator holding {digest} answered: {attempts}")]
    NoHolder { digest: String, attempts: String },
    #[error(transparent)]
    Depot(#[from] DepotError),
}

/// Copies missing releases from their holders until `stop` turns true.
pub async fn run(
    depot: ReleaseDepot,
    tls: Option<tls::TlsMaterial>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let entries = match depot.list("").await {
            Ok(entries) => entries,
            Err(err) => {
                tracing::warn!(error = %err, "release mirror cannot read the index; retrying");
                continue;
            }
        };
        for entry in entries {
            if *stop.borrow() {
                return;
            }
            let Ok(digest) = entry.digest.parse::<ReleaseDigest>() else {
                continue;
            };
            if depot.holds(&digest) {
                continue;
            }
            match copy(&depot, tls.as_ref(), &entry, &digest).await {
                Ok(()) => tracing::info!(
                    service = entry.service,
                    digest = entry.digest,
                    "release mirrored from another coordinator"
                ),
                Err(err) => tracing::warn!(
                    service = entry.service,
                    digest = entry.digest,
                    error = %err,
                    "cannot mirror a release yet; retrying"
                ),
            }
        }
    }
}

/// Why one holder could not serve a release.
#[derive(Debug, thiserror::Error)]
enum DownloadError {
    #[error("not a usable URL")]
    Url(#[source] tonic::transport::Error),
    #[error("cannot set up TLS")]
    Tls(#[source] tonic::transport::Error),
    #[error("cannot connect")]
    Connect(#[source] tonic::transport::Error),
    #[error("the fetch failed")]
    Fetch(#[source] tonic::Status),
    #[error("chunk at offset {offset} after {written} bytes")]
    Gap { offset: u64, written: u64 },
    #[error("cannot write the download")]
    Depot(#[source] DepotError),
    #[error("the writing task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// One release from the first holder that serves it whole.
async fn copy(
    depot: &ReleaseDepot,
    tls: Option<&tls::TlsMaterial>,
    entry: &ReleaseEntry,
    digest: &ReleaseDigest,
) -> Result<(), MirrorError> {
    let mut attempts = Vec::new();
    for holder in entry.holders.iter().filter(|h| *h != depot.me()) {
        match tokio::time::timeout(FETCH_TIMEOUT, download(depot, tls, holder, digest)).await {
            Ok(Ok(incoming)) => {
                depot.commit(incoming, Some(*digest)).await?;
                return Ok(());
            }
            Ok(Err(err)) => attempts.push(format!("{holder}: {}", Chain(&err))),
            Err(_) => attempts.push(format!("{holder}: no end within {FETCH_TIMEOUT:?}")),
        }
    }
    Err(MirrorError::NoHolder {
        digest: digest.to_string(),
        attempts: if attempts.is_empty() {
            "no other coordinator is recorded as holding it".to_owned()
        } else {
            attempts.join("; ")
        },
    })
}

async fn download(
    depot: &ReleaseDepot,
    tls: Option<&tls::TlsMaterial>,
    holder: &str,
    digest: &ReleaseDigest,
) -> Result<crate::depot::Incoming, DownloadError> {
    let mut endpoint = Endpoint::from_shared(holder.to_owned())
        .map_err(DownloadError::Url)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.client_config())
            .map_err(DownloadError::Tls)?;
    }
    let channel = endpoint.connect().await.map_err(DownloadError::Connect)?;
    let mut client =
        CoordinatorServiceClient::new(channel).max_decoding_message_size(MAX_CHUNK_MESSAGE);
    let mut stream = client
        .fetch_release(FetchReleaseRequest {
            digest: digest.to_string(),
            offset: 0,
        })
        .await
        .map_err(DownloadError::Fetch)?
        .into_inner();
    let mut incoming = depot.incoming().map_err(DownloadError::Depot)?;
    while let Some(chunk) = stream.message().await.map_err(DownloadError::Fetch)? {
        if chunk.offset != incoming.written() {
            return Err(DownloadError::Gap {
                offset: chunk.offset,
                written: incoming.written(),
            });
        }
        incoming =
            tokio::task::spawn_blocking(move || incoming.write(&chunk.data).map(|()| incoming))
                .await
                .map_err(DownloadError::Task)?
                .map_err(DownloadError::Depot)?;
    }
    Ok(incoming)
}
