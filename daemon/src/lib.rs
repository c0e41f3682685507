//! What every lockstep daemon (`lockstep-agent`, `lockstep-coordinator`)
//! does to live under systemd, in one place so both behave alike.
//!
//! - [`ServiceManager`]: `Type=notify` (READY, STATUS, STOPPING) and the
//!   watchdog, through the `sd-notify` crate.
//! - [`logging::init`]: logs that fit where they go — syslog priority
//!   prefixes when stderr is the journal (so `journalctl -p warning` works),
//!   colour only on a terminal, plain lines in a file.
//!
//! Must never: decide anything about the fleet, or block the runtime.

#![forbid(unsafe_code)]

pub mod logging;
mod notify;

pub use notify::{NotifyError, ServiceManager, WatchdogTask};
