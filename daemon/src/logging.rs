//! Logs that fit where they go.
//!
//! - stderr is the journal (`JOURNAL_STREAM` names stderr's device and
//!   inode, as systemd sets it): log to journald natively, each event with
//!   its priority (error 3, warn 4, info 5, debug 6, trace 7) and its fields,
//!   so `journalctl -p warning` shows exactly the warnings and errors.
//! - otherwise plain lines on stderr, coloured only when stderr is a
//!   terminal and `NO_COLOR` is unset: a log file never gets escape codes.
//!
//! The filter is `RUST_LOG`, or the caller's default.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where [`init`] sent the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Journald,
    Stderr { ansi: bool },
}

/// Installs the global subscriber; `default_filter` applies when `RUST_LOG`
/// is unset or invalid. Call once, first thing in `main`.
pub fn init(default_filter: &str) -> LogTarget {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    if stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref()) {
        match tracing_journald::layer() {
            Ok(journald) => {
                tracing_subscriber::registry()
                    .with(filter)
                    .with(journald)
                    .init();
                return LogTarget::Journald;
            }
            // No journald socket (a container without it): stderr still
            // reaches the journal, as plain lines.
            Err(err) => eprintln!("cannot log to journald natively, logging to stderr: {err}"),
        }
    }
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    LogTarget::Stderr { ansi }
}

/// True when `journal_stream` ("DEVICE:INODE") is stderr's own: a child that
/// inherited the variable but whose stderr was redirected is not logging to
/// the journal.
fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(parse_journal_stream) else {
        return false;
    };
    nix::sys::stat::fstat(std::io::stderr().as_fd())
        .is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
}

fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert_eq!(parse_journal_stream("8:1234"), Some((8, 1234)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("x:1"), None);
        assert_eq!(parse_journal_stream(""), None);
    }

    #[test]
    fn a_journal_stream_that_is_not_stderr_is_not_the_journal() {
        assert!(!stderr_is_journal(None));
        assert!(!stderr_is_journal(Some("0:0")));
        assert!(!stderr_is_journal(Some("garbage")));
    }
}
