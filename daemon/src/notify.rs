//! The systemd notify protocol (sd_notify(3), sd_watchdog_enabled(3)) as the
//! daemons use it: READY once serving, STATUS lines, STOPPING when an orderly
//! shutdown starts, and WATCHDOG=1 every half `WATCHDOG_USEC` from a task a
//! [`WatchdogTask`] owns. The protocol itself is the `sd-notify` crate's.
//!
//! ```text
//! env NOTIFY_SOCKET, WATCHDOG_USEC [WATCHDOG_PID] ──from_env──> ServiceManager
//!   ready / status / stopping ──one datagram──> systemd
//!   spawn_watchdog ──every N/2 "WATCHDOG=1"──> systemd (until the task drops)
//! ```
//!
//! Without `NOTIFY_SOCKET` (not run by systemd) every call does nothing.
//! A datagram to a local socket is queued at once; a lost `WATCHDOG=1` is
//! repeated half an interval later, before systemd would act on it.
//!
//! Must never: change the process environment (other threads read it), or
//! send a status systemd would parse as more than one field.

use std::io;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// A message the service manager did not get.
#[derive(Debug, thiserror::Error)]
#[error("cannot send {message} to the service manager (NOTIFY_SOCKET)")]
pub struct NotifyError {
    message: &'static str,
    #[source]
    source: io::Error,
}

/// The service manager that runs this daemon (or nothing, outside systemd).
#[derive(Debug, Clone)]
pub struct ServiceManager {
    enabled: bool,
    watchdog: Option<Duration>,
}

impl ServiceManager {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (a watchdog
    /// meant for another pid is not ours) without unsetting them.
    pub fn from_env() -> ServiceManager {
        ServiceManager {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty()),
            watchdog: sd_notify::watchdog_enabled().filter(|d| !d.is_zero()),
        }
    }

    /// True when a service manager listens (`NOTIFY_SOCKET` is set).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The watchdog timeout systemd enforces, if any.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.watchdog
    }

    pub fn ready(&self) -> Result<(), NotifyError> {
        self.send("READY=1", &[NotifyState::Ready])
    }

    /// `STATUS=`: one line (newlines become spaces), shown by `systemctl status`.
    pub fn status(&self, status: &str) -> Result<(), NotifyError> {
        let line = status.replace(['\n', '\r'], " ");
        self.send("STATUS=", &[NotifyState::Status(&line)])
    }

    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.send("STOPPING=1", &[NotifyState::Stopping])
    }

    /// Sends `WATCHDOG=1` every half timeout until the task is dropped; no
    /// task when systemd set no watchdog. Needs a tokio runtime.
    pub fn spawn_watchdog(&self) -> Option<WatchdogTask> {
        let interval = self.watchdog? / 2;
        let manager = self.clone();
        Some(WatchdogTask(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(err) = manager.send("WATCHDOG=1", &[NotifyState::Watchdog]) {
                    tracing::warn!(error = %err, "watchdog keep-alive not sent");
                }
            }
        })))
    }

    fn send(&self, message: &'static str, states: &[NotifyState<'_>]) -> Result<(), NotifyError> {
        if !self.enabled {
            return Ok(());
        }
        sd_notify::notify(states).map_err(|source| NotifyError { message, source })
    }
}

/// The watchdog keep-alive task; stops when dropped.
#[derive(Debug)]
pub struct WatchdogTask(JoinHandle<()>);

impl Drop for WatchdogTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
