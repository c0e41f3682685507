//! Receiving a pushed bundle: its header and data into the depot's
//! `Incoming`, within the push limits (`[releases]` in coordinator.toml):
//! how large one push may be, how many may be received at once, how long a
//! push may go quiet.
//!
//! Must never: write past the size limit, hold a push slot for a client
//! that stopped sending, or take a push beyond the concurrency limit (it is
//! refused at once, RESOURCE_EXHAUSTED, rather than queued).

use std::sync::Arc;
use std::time::Duration;

use proto::v1 as pb;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

use crate::depot::Incoming;

/// 4 GiB: the unpack limit of one entry, so a release that can be unpacked
/// at all can be pushed.
pub const DEFAULT_MAX_BUNDLE_BYTES: u64 = 4 << 30;
/// Pushes received at once; each is a temporary file and, at its end, a
/// full verification (a complete unpack into scratch).
pub const DEFAULT_MAX_CONCURRENT_PUSHES: usize = 4;
/// A push that sends nothing for this long is abandoned.
pub const DEFAULT_PUSH_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The bounds on pushes, from `[releases]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushLimits {
    pub max_bundle_bytes: u64,
    pub max_concurrent: usize,
    pub idle_timeout: Duration,
}

impl Default for PushLimits {
    fn default() -> Self {
        Self {
            max_bundle_bytes: DEFAULT_MAX_BUNDLE_BYTES,
            max_concurrent: DEFAULT_MAX_CONCURRENT_PUSHES,
            idle_timeout: DEFAULT_PUSH_IDLE_TIMEOUT,
        }
    }
}

/// Why a push was cut off; each names the limit and its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushRefused {
    #[error(
        "{limit} pushes are already being received by this coordinator (releases.max_concurrent_pushes = {limit}): retry when one has finished"
    )]
    Busy { limit: usize },
    #[error(
        "the push declares {declared} bytes, over the {limit}-byte limit (releases.max_bundle_bytes)"
    )]
    DeclaredTooLarge { declared: u64, limit: u64 },
    #[error("the push went past the {limit}-byte limit (releases.max_bundle_bytes)")]
    TooLarge { limit: u64 },
    #[error(
        "the push sent nothing for {idle:?} (releases.push_idle_timeout): abandoned; push again"
    )]
    Idle { idle: Duration },
}

impl PushRefused {
    fn status(&self) -> Status {
        match self {
            Self::Busy { .. } => Status::resource_exhausted(self.to_string()),
            Self::DeclaredTooLarge { .. } | Self::TooLarge { .. } => {
                Status::invalid_argument(self.to_string())
            }
            Self::Idle { .. } => Status::deadline_exceeded(self.to_string()),
        }
    }
}

impl PushLimits {
    /// A header's declared size (0: not declared).
    pub fn check_declared(&self, declared: u64) -> Result<(), PushRefused> {
        if declared > self.max_bundle_bytes {
            return Err(PushRefused::DeclaredTooLarge {
                declared,
                limit: self.max_bundle_bytes,
            });
        }
        Ok(())
    }

    /// Whether `more` bytes may follow the `written` ones.
    pub fn check_growth(&self, written: u64, more: usize) -> Result<(), PushRefused> {
        if written.saturating_add(more as u64) > self.max_bundle_bytes {
            return Err(PushRefused::TooLarge {
                limit: self.max_bundle_bytes,
            });
        }
        Ok(())
    }
}

/// The push slots of one coordinator.
#[derive(Debug, Clone)]
pub struct PushGate {
    limits: PushLimits,
    slots: Arc<Semaphore>,
}

impl PushGate {
    pub fn new(limits: PushLimits) -> Self {
        Self {
            limits,
            slots: Arc::new(Semaphore::new(limits.max_concurrent)),
        }
    }

    /// A slot for one push, held until the push is committed or dropped.
    pub fn enter(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            let refused = PushRefused::Busy {
                limit: self.limits.max_concurrent,
            };
            tracing::warn!(error = %refused, "push refused");
            refused.status()
        })
    }

    /// Reads a push's header and data into `incoming`, and checks it
    /// arrived whole.
    pub async fn receive(
        &self,
        mut inbound: Streaming<pb::PushReleaseChunk>,
        mut incoming: Incoming,
    ) -> Result<(pb::PushReleaseHeader, Incoming), Status> {
        let limits = self.limits;
        let mut header: Option<pb::PushReleaseHeader> = None;
        loop {
            let next = tokio::time::timeout(limits.idle_timeout, inbound.next())
                .await
                .map_err(|_| {
                    PushRefused::Idle {
                        idle: limits.idle_timeout,
                    }
                    .status()
                })?;
            let Some(message) = next else { break };
            match message?.body {
                Some(pb::push_release_chunk::Body::Header(h)) if header.is_none() => {
                    limits
                        .check_declared(h.total_size)
                        .map_err(|e| e.status())?;
                    header = Some(h);
                }
                Some(pb::push_release_chunk::Body::Header(_)) => {
                    return Err(Status::invalid_argument("the push sent a second header"));
                }
                Some(pb::push_release_chunk::Body::Data(data)) => {
                    if header.is_none() {
                        return Err(Status::invalid_argument(
                            "the push must start with a header",
                        ));
                    }
                    limits
                        .check_growth(incoming.written(), data.len())
                        .map_err(|e| e.status())?;
                    incoming = tokio::task::spawn_blocking(move || {
                        incoming.write(&data).map(|()| incoming)
                    })
                    .await
                    .map_err(|e| Status::internal(cli::chain(&e)))?
                    .map_err(|e| Status::internal(cli::chain(&e)))?;
                }
                None => {}
            }
        }
        let header = header.ok_or_else(|| Status::invalid_argument("the push sent nothing"))?;
        if header.total_size != 0 && header.total_size != incoming.written() {
            return Err(Status::data_loss(format!(
                "the push ended after {} of {} bytes: push again",
                incoming.written(),
                header.total_size
            )));
        }
        Ok((header, incoming))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: u64) -> PushLimits {
        PushLimits {
            max_bundle_bytes: max,
            ..PushLimits::default()
        }
    }

    #[test]
    fn a_declared_size_over_the_limit_is_refused_naming_the_key() {
        assert_eq!(limits(100).check_declared(100), Ok(()));
        assert_eq!(limits(100).check_declared(0), Ok(()));
        let err = limits(100).check_declared(101).unwrap_err();
        assert!(
            err.to_string().contains("releases.max_bundle_bytes"),
            "{err}"
        );
    }

    #[test]
    fn growth_is_refused_before_the_byte_that_would_pass_the_limit() {
        assert_eq!(limits(100).check_growth(60, 40), Ok(()));
        assert_eq!(
            limits(100).check_growth(60, 41),
            Err(PushRefused::TooLarge { limit: 100 })
        );
        assert!(limits(100).check_growth(u64::MAX, 1).is_err());
    }

    #[test]
    fn pushes_past_the_concurrency_limit_are_refused_not_queued() {
        let gate = PushGate::new(PushLimits {
            max_concurrent: 2,
            ..PushLimits::default()
        });
        let a = gate.enter().unwrap();
        let _b = gate.enter().unwrap();
        let refused = gate.enter().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused
                .message()
                .contains("releases.max_concurrent_pushes = 2"),
            "{}",
            refused.message()
        );
        drop(a);
        assert!(gate.enter().is_ok(), "a finished push frees its slot");
    }
}
