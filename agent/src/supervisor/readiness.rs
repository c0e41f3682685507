//! The readiness interface between the supervisor and the probes.
//!
//! Owns the [`ReadinessCheck`] trait (one probe attempt against a pid) and
//! [`AlwaysReady`], the check for runs without probes and for tests. The
//! probe kinds themselves live in `agent::probe`; the schedule (every
//! `interval`, bounded by `timeout`, the healthy deadline and the liveness
//! threshold) belongs to the supervisor's driver and policy.
//!
//! Must never: retry, sleep between attempts, or decide what a failure means.

use std::future::Future;
use std::pin::Pin;

/// One probe attempt against an instance.
pub trait ReadinessCheck: Send + 'static {
    /// One probe attempt against the instance whose main pid is `pid`.
    fn check(&mut self, pid: u32) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;

    /// Resolves when an attempt could answer differently before the next
    /// interval (e.g. a notify socket received a datagram); the schedule
    /// then probes at once. Default: never, so the interval alone decides.
    fn changed(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::pending())
    }
}

/// Ready as soon as it runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysReady;

impl ReadinessCheck for AlwaysReady {
    fn check(
        &mut self,
        _pid: u32,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(std::future::ready(Ok(())))
    }
}
