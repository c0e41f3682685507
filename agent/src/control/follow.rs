//! `AgentControl.Logs` with `follow`: the last lines of each instance, then
//! every new line, from a task that belongs to the response stream.
//!
//! ```text
//! start ─▶ host.logs(service, 0): live paths ─▶ Follower::start (blocking pool)
//! task:   every FOLLOW_POLL       Follower::poll (blocking pool) ─▶ mpsc ─▶ client
//!         every FOLLOW_DISCOVER   host.logs again: a switch's new files
//! ends:   stream dropped (client gone: the task is aborted, and it also
//!         watches the receiver) | agent stopping (UNAVAILABLE sent) |
//!         a log cannot be read (the error sent as the last item)
//! ```
//!
//! Must never: keep running for a client that is gone, hold up the agent's
//! shutdown (tonic's graceful shutdown waits for every open stream), read
//! files on the async runtime, or wait for a switch to end before passing
//! on the lines the old instances write meanwhile.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use cli::chain;
use proto::v1 as pb;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{LogStream, not_found};
use crate::host::Host;
use crate::logfollow::{Follower, LogLine};
use crate::supervisor::LOG_KEEP;
use crate::task::OwnedTask;

/// How often a follower looks for new lines: soon enough to read as live,
/// rare enough that an idle follower costs next to nothing (one fstat and
/// one stat per instance log).
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// How often a follower asks the host for the instances' log files, to
/// notice a switch to another release (another file). Rarer than
/// `FOLLOW_POLL`: the question takes the service's lock, and a switch
/// starting in that instant would be refused as busy.
const FOLLOW_DISCOVER: Duration = Duration::from_secs(1);
/// How long a follower waits for that answer: a switch holds the service
/// for its whole length, and the old instances' lines must keep coming.
const FOLLOW_DISCOVER_WAIT: Duration = Duration::from_millis(50);
/// Lines buffered for a client; a slower client holds its follower back
/// instead of growing the buffer.
const FOLLOW_BUFFER: usize = 256;

type LineSender = mpsc::Sender<Result<pb::LogLine, Status>>;

/// Starts following `service` (one slot, if given): the stream yields the
/// last `lines` of each instance, then new lines, until it is dropped or
/// `stopping` turns true.
pub(super) async fn start(
    host: Arc<Host>,
    service: String,
    slot: Option<u32>,
    lines: usize,
    stopping: watch::Receiver<bool>,
) -> Result<LogStream, Status> {
    let paths = log_paths(&host, &service, slot).await?;
    let log_dir = host.config().log_dir();
    let job_service = service.clone();
    let (follower, first, paths) = tokio::task::spawn_blocking(move || {
        Follower::start(&job_service, &log_dir, &paths, lines, LOG_KEEP)
            .map(|(follower, first)| (follower, first, paths))
    })
    .await
    .map_err(|e| Status::internal(chain(&e)))?
    .map_err(|e| Status::internal(chain(&e)))?;
    let (tx, rx) = mpsc::channel(FOLLOW_BUFFER);
    let job = FollowJob {
        host,
        service,
        slot,
        follower,
        paths,
    };
    let producer = OwnedTask::spawn(job.run(first, tx, stopping));
    Ok(Box::pin(Followed {
        lines: ReceiverStream::new(rx),
        _producer: producer,
    }))
}

/// The live log file of each instance of `service` (of one slot, if given).
async fn log_paths(
    host: &Host,
    service: &str,
    slot: Option<u32>,
) -> Result<Vec<(u32, PathBuf)>, Status> {
    let found = host.logs(service, 0).await.map_err(|e| not_found(&e))?;
    Ok(found
        .into_iter()
        .filter(|(s, _, _)| slot.is_none_or(|want| want == *s))
        .map(|(s, path, _)| (s, path))
        .collect())
}

/// One follow call's producer.
#[derive(Debug)]
struct FollowJob {
    host: Arc<Host>,
    service: String,
    slot: Option<u32>,
    follower: Follower,
    /// The files followed: (slot, live path).
    paths: Vec<(u32, PathBuf)>,
}

impl FollowJob {
    async fn run(self, first: Vec<LogLine>, tx: LineSender, mut stopping: watch::Receiver<bool>) {
        // Logs the end however it comes, an abort by the stream's drop too.
        let mut ended = Ended {
            service: self.service.clone(),
            reason: "the client went away".to_owned(),
        };
        tracing::info!(service = ended.service, slot = ?self.slot, files = self.paths.len(), "log follow started");
        let failure = tokio::select! {
            () = tx.closed() => None,
            _ = stopping.wait_for(|stop| *stop) => {
                Some(Status::unavailable("the agent is shutting down"))
            }
            result = self.stream(first, &tx) => result.err(),
        };
        if let Some(status) = failure {
            status.message().clone_into(&mut ended.reason);
            // The last item; a client that stopped reading cannot hold this
            // task past shutdown.
            tokio::select! {
                biased;
                _ = tx.send(Err(status)) => {}
                _ = stopping.wait_for(|stop| *stop) => {}
            }
        }
    }

    /// Ok once the receiver is gone; Err to report to the client.
    async fn stream(mut self, first: Vec<LogLine>, tx: &LineSender) -> Result<(), Status> {
        if send(tx, first).await.is_err() {
            return Ok(());
        }
        let mut next_discovery = Instant::now() + FOLLOW_DISCOVER;
        loop {
            if Instant::now() >= next_discovery {
                self.discover().await?;
                next_discovery = Instant::now() + FOLLOW_DISCOVER;
            }
            let mut follower = self.follower;
            let paths = self.paths.clone();
            let (follower, batch) = tokio::task::spawn_blocking(move || {
                let batch = follower.poll(&paths);
                (follower, batch)
            })
            .await
            .map_err(|e| Status::internal(chain(&e)))?;
            self.follower = follower;
            let batch = batch.map_err(|e| Status::internal(chain(&e)))?;
            if send(tx, batch.lines).await.is_err() {
                return Ok(());
            }
            if !batch.more {
                tokio::time::sleep(FOLLOW_POLL).await;
            }
        }
    }

    /// Asks the host for the current log files; keeps the known ones while
    /// a switch holds the service.
    async fn discover(&mut self) -> Result<(), Status> {
        let found = tokio::time::timeout(
            FOLLOW_DISCOVER_WAIT,
            log_paths(&self.host, &self.service, self.slot),
        )
        .await;
        let Ok(paths) = found else {
            return Ok(());
        };
        let paths = paths?;
        if paths != self.paths {
            tracing::info!(
                service = self.service,
                files = paths.len(),
                "log follow moves to other files"
            );
            self.paths = paths;
        }
        Ok(())
    }
}

/// Logs the end of a follow when dropped.
#[derive(Debug)]
struct Ended {
    service: String,
    reason: String,
}

impl Drop for Ended {
    fn drop(&mut self) {
        tracing::info!(
            service = self.service,
            reason = self.reason,
            "log follow ended"
        );
    }
}

/// Sends lines in order; Err once the receiver is gone.
async fn send(tx: &LineSender, lines: Vec<LogLine>) -> Result<(), ()> {
    for LogLine { slot, line } in lines {
        tx.send(Ok(pb::LogLine { slot, line }))
            .await
            .map_err(|_| ())?;
    }
    Ok(())
}

/// The lines, and the task producing them: dropping the stream (tonic does
/// when the client goes away) stops the task.
struct Followed {
    lines: ReceiverStream<Result<pb::LogLine, Status>>,
    _producer: OwnedTask,
}

impl Stream for Followed {
    type Item = Result<pb::LogLine, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.get_mut().lines).poll_next(cx)
    }
}
