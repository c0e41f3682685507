//! Logs that fit where they go.
//!
//! - stderr is the journal (`JOURNAL_STREAM` names stderr's device and
//!   inode, as systemd sets it): each line starts with its syslog priority
//!   (`<3>` error, `<4>` warn, `<6>` info, `<7>` debug and trace), which
//!   journald turns into the entry's priority, so `journalctl -p warning`
//!   shows exactly the warnings and errors. The line keeps its fields
//!   (`error=…`, `service=…`) in the message, where `journalctl` shows them
//!   by default; no timestamp, the journal has its own.
//! - otherwise plain lines on stderr, coloured only when stderr is a
//!   terminal and `NO_COLOR` is unset: a log file never gets escape codes.
//!
//! The filter is `RUST_LOG`, or the caller's default.

use std::fmt;
use std::io::IsTerminal;
use std::os::fd::AsFd;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Where [`init`] sent the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// stderr is the journal: lines carry syslog priority prefixes.
    Journal,
    Stderr {
        ansi: bool,
    },
}

/// Installs the global subscriber; `default_filter` applies when `RUST_LOG`
/// is unset or invalid. Call once, first thing in `main`.
pub fn init(default_filter: &str) -> LogTarget {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref()) {
        let format = tracing_subscriber::fmt::format()
            .without_time()
            .with_ansi(false);
        builder
            .with_ansi(false)
            .event_format(SyslogPriority(format))
            .init();
        return LogTarget::Journal;
    }
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    builder.with_ansi(ansi).init();
    LogTarget::Stderr { ansi }
}

/// sd-daemon(3)'s priority prefix for a level.
fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// An event format that puts `<N>` (the level's syslog priority) first.
struct SyslogPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for SyslogPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", syslog_priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
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

    #[test]
    fn warnings_and_errors_are_what_journalctl_p_warning_shows() {
        // journalctl -p warning: priorities 0..=4.
        assert!(syslog_priority(Level::ERROR) <= 4);
        assert!(syslog_priority(Level::WARN) <= 4);
        assert!(syslog_priority(Level::INFO) > 4);
        assert!(syslog_priority(Level::DEBUG) > 4);
    }
}
