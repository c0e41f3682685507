//! `wait_for`: poll a condition until it holds or a deadline passes.
//!
//! Deadlines are generous on purpose — tests must pass on a loaded 2-core
//! machine — and a timeout reports what was awaited and the last reason it
//! did not hold.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is polled: quick enough to keep tests short, slow
/// enough not to load the machine.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
#[error("timed out after {timeout:?} waiting for {what}; last: {last}")]
pub struct WaitTimeout {
    pub what: String,
    pub timeout: Duration,
    pub last: String,
}

/// Polls `probe` until it returns `Ok(value)`, or fails with the last `Err`
/// once `timeout` has passed.
pub async fn wait_for<T, E, F, Fut>(
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> Result<T, WaitTimeout>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match tokio::time::timeout_at(deadline, probe()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(err)) => err.to_string(),
            Err(_) => "the probe itself did not finish before the deadline".to_owned(),
        };
        if Instant::now() + POLL_INTERVAL >= deadline {
            return Err(WaitTimeout {
                what: what.to_owned(),
                timeout,
                last,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
