//! How the agent dials a coordinator and paces its retries: one place for
//! connect timeouts, HTTP/2 keep-alive and capped, jittered backoff, shared
//! by the report streams (`uplink`) and release fetches (`fetch`).
//!
//! An `https://` coordinator is dialled with the agent's `[tls]` material:
//! the coordinator must chain to `tls.ca`, and the agent presents its own
//! certificate.
//!
//! Must never: retry by itself (callers own their loops and deadlines), or
//! hand out a pause outside the bounds it was given.

use cli::chain;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// A coordinator that does not accept a connection within this is treated
/// as down; the caller tries again (or another coordinator).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings find a coordinator that vanished without closing the
/// connection (host down, network partition) within interval + timeout.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the coordinator at `url`, over mTLS with `tls` when `url`
/// is `https://`. The error says what failed and carries the transport's
/// causes, for logs and error messages.
pub async fn connect(url: &str, tls: Option<&tls::TlsMaterial>) -> Result<Channel, String> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("`{url}` is not a usable URL: {}", chain(&e)))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let https = url.starts_with("https://");
    if https {
        let tls = tls.ok_or_else(|| {
            format!("`{url}` is https, but agent.toml has no [tls] table with this agent's certificate; add one (or use http:// for a plain-text demo)")
        })?;
        endpoint = endpoint
            .tls_config(tls.client_config())
            .map_err(|e| format!("cannot set up TLS for `{url}`: {}", chain(&e)))?;
    }
    endpoint.connect().await.map_err(|e| {
        let mut message = format!("cannot connect: {}", chain(&e));
        if https {
            message.push_str(" (check that the coordinator's certificate chains to tls.ca and names the host in the URL, and that it trusts this agent's CA)");
        }
        message
    })
}

/// Capped exponential backoff with jitter: each pause is drawn from
/// [base/2, base] (never below `min`), and base doubles up to `max`. The
/// jitter keeps a fleet of agents from reconnecting in lockstep after a
/// coordinator restarts.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    base: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        Self {
            min,
            max,
            base: min,
        }
    }

    /// The pause before the next retry; each call lengthens the next one.
    pub fn next_pause(&mut self) -> Duration {
        let base = self.base;
        self.base = base.saturating_mul(2).min(self.max);
        let half = base / 2;
        let jitter = half.mul_f64(fastrand::f64());
        (half + jitter).clamp(self.min, self.max)
    }

    /// Back to the shortest pause (the last attempt went well).
    pub fn reset(&mut self) {
        self.base = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_stay_within_bounds_and_reset() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut backoff = Backoff::new(min, max);
        let pauses: Vec<Duration> = (0..20).map(|_| backoff.next_pause()).collect();
        assert!(pauses.iter().all(|p| (min..=max).contains(p)), "{pauses:?}");
        // Base 100 ms doubles: by the 8th pause it is capped at 5 s, so the
        // pause is at least 2.5 s.
        assert!(pauses[8..].iter().all(|p| *p >= max / 2), "{pauses:?}");
        backoff.reset();
        assert!(backoff.next_pause() <= min * 2);
    }

    #[test]
    fn chain_names_every_cause_once() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let outer = crate::fetch::FetchError::Io {
            path: "/x".into(),
            source: inner,
        };
        let text = chain(&outer);
        assert!(text.contains("refused"), "{text}");
        assert_eq!(text.matches("refused").count(), 1, "{text}");
    }
}
