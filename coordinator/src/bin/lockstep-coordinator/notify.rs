//! The systemd notify protocol, as much as the coordinator needs: READY,
//! STOPPING, STATUS and the watchdog. Without `NOTIFY_SOCKET` every call is
//! a no-op.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

#[derive(Debug)]
pub struct Notifier {
    target: Option<SocketAddr>,
    watchdog: Option<Duration>,
}

impl Notifier {
    pub fn from_env() -> Self {
        let target =
            std::env::var("NOTIFY_SOCKET")
                .ok()
                .and_then(|path| match path.strip_prefix('@') {
                    Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).ok(),
                    None => SocketAddr::from_pathname(path).ok(),
                });
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|_| {
                std::env::var("WATCHDOG_PID")
                    .map(|pid| pid == std::process::id().to_string())
                    .unwrap_or(true)
            })
            .map(Duration::from_micros);
        Self { target, watchdog }
    }

    pub fn send(&self, message: &str) {
        let Some(target) = &self.target else { return };
        let sent = UnixDatagram::unbound()
            .and_then(|socket| socket.send_to_addr(message.as_bytes(), target));
        if let Err(err) = sent {
            tracing::warn!(error = %err, "cannot notify the service manager");
        }
    }

    /// Sends WATCHDOG=1 at half the interval until the returned task drops.
    pub fn spawn_watchdog(&self) -> Option<WatchdogTask> {
        let interval = self.watchdog? / 2;
        let notifier = Self {
            target: self.target.clone(),
            watchdog: None,
        };
        Some(WatchdogTask(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                notifier.send("WATCHDOG=1");
            }
        })))
    }
}

/// Stops the watchdog pings when dropped.
#[derive(Debug)]
pub struct WatchdogTask(tokio::task::JoinHandle<()>);

impl Drop for WatchdogTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
