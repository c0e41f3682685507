//! The agent's own side of systemd: `Type=notify` and the watchdog.
//!
//! Owns talking to the service manager that runs `lockstep-agent`, per
//! sd_notify(3) and sd_watchdog_enabled(3): `READY=1` once the agent
//! serves, `STATUS=` lines, `STOPPING=1` when an orderly shutdown starts
//! (the SIGTERM handling itself is the binary's), and `WATCHDOG=1` every
//! half `WATCHDOG_USEC` from a task owned by a [`WatchdogTask`].
//!
//! ```text
//! env NOTIFY_SOCKET=/run/systemd/notify | @abstract
//!     WATCHDOG_USEC=N [WATCHDOG_PID=agent pid] ──from_env──> ServiceManager
//!   notify_ready / notify_status / notify_stopping ──one datagram──> systemd
//!   spawn_watchdog ──every N/2 µs "WATCHDOG=1"──> systemd   (until the handle drops)
//! ```
//!
//! Sending never blocks the runtime: the socket is non-blocking. A datagram
//! to a local unix socket is queued in the receiver's buffer at once; the
//! only way it could wait is a full receive queue, i.e. systemd not reading,
//! and then the send fails with `WouldBlock` instead of stalling a worker. A
//! lost `WATCHDOG=1` is repeated half an interval later, before systemd
//! would act on it.
//!
//! Without `NOTIFY_SOCKET` (not run by systemd) every call does nothing.
//!
//! Must never: block the runtime, change the process environment (tests and
//! other threads read it), or send a message systemd would parse as more
//! than the caller meant (a newline in a status is replaced).

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// Why the service manager cannot be reached or understood.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("NOTIFY_SOCKET={value:?} is neither an absolute path nor an abstract name (`@name`)")]
    BadNotifySocket { value: String },
    #[error("WATCHDOG_USEC={value:?} is not a positive number of microseconds")]
    BadWatchdogUsec { value: String },
    #[error("WATCHDOG_PID={value:?} is not a process id")]
    BadWatchdogPid { value: String },
    #[error("cannot create a socket for NOTIFY_SOCKET={socket}")]
    Socket {
        socket: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot send {message:?} to the service manager at {socket}")]
    Send {
        socket: String,
        message: String,
        #[source]
        source: io::Error,
    },
}

/// The service manager that runs the agent (or nothing, outside systemd).
#[derive(Debug, Clone)]
pub struct ServiceManager {
    target: Option<Arc<Target>>,
    watchdog: Option<Duration>,
}

#[derive(Debug)]
struct Target {
    shown: String,
    addr: SocketAddr,
    sock: UnixDatagram,
}

impl ServiceManager {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the
    /// environment (without unsetting them).
    pub fn from_env() -> Result<ServiceManager, SystemdError> {
        let notify = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var_os("WATCHDOG_USEC");
        let wpid = std::env::var_os("WATCHDOG_PID");
        ServiceManager::from_vars(
            notify.as_deref(),
            usec.as_deref(),
            wpid.as_deref(),
            std::process::id(),
        )
    }

    /// Like [`ServiceManager::from_env`] from explicit values; `own_pid` is
    /// the pid the watchdog must be meant for when `WATCHDOG_PID` is set.
    pub fn from_vars(
        notify_socket: Option<&OsStr>,
        watchdog_usec: Option<&OsStr>,
        watchdog_pid: Option<&OsStr>,
        own_pid: u32,
    ) -> Result<ServiceManager, SystemdError> {
        let watchdog = match watchdog_usec {
            None => None,
            Some(raw) => {
                let bad = || SystemdError::BadWatchdogUsec {
                    value: raw.to_string_lossy().into_owned(),
                };
                let usec: u64 = raw.to_str().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
                if usec == 0 {
                    return Err(bad());
                }
                Some(Duration::from_micros(usec))
            }
        };
        let for_us = match watchdog_pid {
            None => true,
            Some(raw) => {
                let pid: u32 = raw
                    .to_str()
                    .and_then(|s| s.parse().ok())
                    .filter(|p| *p > 0)
                    .ok_or_else(|| SystemdError::BadWatchdogPid {
                        value: raw.to_string_lossy().into_owned(),
                    })?;
                pid == own_pid
            }
        };
        let watchdog = watchdog.filter(|_| for_us);
        let target = match notify_socket {
            None => None,
            Some(raw) if raw.is_empty() => None,
            Some(raw) => Some(Arc::new(Target::open(raw)?)),
        };
        Ok(ServiceManager { target, watchdog })
    }

    /// A manager that is not there: every call does nothing.
    pub fn disabled() -> ServiceManager {
        ServiceManager {
            target: None,
            watchdog: None,
        }
    }

    /// Whether a `NOTIFY_SOCKET` was given.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// `READY=1`: the agent is serving.
    pub fn notify_ready(&self) -> Result<(), SystemdError> {
        self.send("READY=1")
    }

    /// `STATUS=...` (one line; newlines and other control characters become spaces).
    pub fn notify_status(&self, status: &str) -> Result<(), SystemdError> {
        let line: String = status
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        self.send(&format!("STATUS={line}"))
    }

    /// `STOPPING=1`: an orderly shutdown has begun.
    pub fn notify_stopping(&self) -> Result<(), SystemdError> {
        self.send("STOPPING=1")
    }

    /// `WATCHDOG=1`: one keep-alive (the [`WatchdogTask`] sends these).
    pub fn notify_watchdog(&self) -> Result<(), SystemdError> {
        self.send("WATCHDOG=1")
    }

    /// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when the
    /// watchdog is on and meant for this process.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        match (&self.target, self.watchdog) {
            (Some(_), Some(d)) => Some(d / 2),
            _ => None,
        }
    }

    /// Starts sending `WATCHDOG=1` at [`ServiceManager::watchdog_interval`]
    /// (the first one at once) until the returned handle is dropped. With no
    /// watchdog the handle holds no task. Must be called inside a tokio
    /// runtime.
    pub fn spawn_watchdog(&self) -> WatchdogTask {
        let Some(period) = self.watchdog_interval() else {
            return WatchdogTask { task: None };
        };
        let manager = self.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if let Err(e) = manager.notify_watchdog() {
                    tracing::warn!(error = %e, period_ms = period.as_millis(), "watchdog keep-alive not sent");
                }
            }
        });
        tracing::debug!(
            period_ms = period.as_millis(),
            "systemd watchdog keep-alive started"
        );
        WatchdogTask { task: Some(task) }
    }

    fn send(&self, message: &str) -> Result<(), SystemdError> {
        let Some(t) = &self.target else {
            return Ok(());
        };
        t.sock
            .send_to_addr(message.as_bytes(), &t.addr)
            .map(|_| ())
            .map_err(|source| SystemdError::Send {
                socket: t.shown.clone(),
                message: message.to_owned(),
                source,
            })
    }
}

impl Target {
    fn open(raw: &OsStr) -> Result<Target, SystemdError> {
        let shown = raw.to_string_lossy().into_owned();
        let bad = || SystemdError::BadNotifySocket {
            value: shown.clone(),
        };
        let bytes = raw.as_bytes();
        let addr = match bytes.first() {
            Some(b'/') => SocketAddr::from_pathname(raw).map_err(|_| bad())?,
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]).map_err(|_| bad())?,
            _ => return Err(bad()),
        };
        let socket_err = |source| SystemdError::Socket {
            socket: shown.clone(),
            source,
        };
        let sock = UnixDatagram::unbound().map_err(socket_err)?;
        sock.set_nonblocking(true).map_err(socket_err)?;
        Ok(Target { shown, addr, sock })
    }
}

/// The watchdog keep-alive task; it stops when this is dropped.
#[derive(Debug)]
pub struct WatchdogTask {
    task: Option<JoinHandle<()>>,
}

impl WatchdogTask {
    /// Whether keep-alives are being sent (false without a watchdog).
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for WatchdogTask {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn os(s: &str) -> OsString {
        OsString::from(s)
    }

    async fn recv(sock: &tokio::net::UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
            .await
            .expect("a message within 5s")
            .unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn environment_is_read_per_sd_watchdog_enabled() {
        let none = ServiceManager::from_vars(None, None, None, 1).unwrap();
        assert!(!none.is_enabled());
        assert_eq!(none.watchdog_interval(), None);
        none.notify_ready().unwrap();

        let sm = ServiceManager::from_vars(
            Some(&os("@lockstep-test-unused")),
            Some(&os("30000000")),
            None,
            1,
        )
        .unwrap();
        assert_eq!(sm.watchdog_interval(), Some(Duration::from_secs(15)));
        let mine = ServiceManager::from_vars(
            Some(&os("/run/x")),
            Some(&os("2000000")),
            Some(&os("42")),
            42,
        )
        .unwrap();
        assert_eq!(mine.watchdog_interval(), Some(Duration::from_secs(1)));
        let other = ServiceManager::from_vars(
            Some(&os("/run/x")),
            Some(&os("2000000")),
            Some(&os("43")),
            42,
        )
        .unwrap();
        assert_eq!(
            other.watchdog_interval(),
            None,
            "watchdog meant for another pid"
        );

        for (n, u, p) in [
            ("relative", None, None),
            ("/x", Some("0"), None),
            ("/x", Some("ten"), None),
            ("/x", None, Some("-1")),
        ] {
            let err = ServiceManager::from_vars(
                Some(&os(n)),
                u.map(os).as_deref(),
                p.map(os).as_deref(),
                1,
            )
            .unwrap_err();
            let text = err.to_string();
            assert!(text.contains(u.or(p).unwrap_or(n)), "{text}");
        }
    }

    #[tokio::test]
    async fn messages_arrive_at_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = tokio::net::UnixDatagram::bind(&path).unwrap();
        let sm = ServiceManager::from_vars(Some(path.as_os_str()), None, None, 1).unwrap();
        assert!(sm.is_enabled());
        sm.notify_ready().unwrap();
        assert_eq!(recv(&sock).await, "READY=1");
        sm.notify_status("serving 2 releases\nREADY=1").unwrap();
        assert_eq!(recv(&sock).await, "STATUS=serving 2 releases READY=1");
        sm.notify_stopping().unwrap();
        assert_eq!(recv(&sock).await, "STOPPING=1");
    }

    #[tokio::test]
    async fn messages_arrive_at_an_abstract_socket() {
        let name = format!(
            "lockstep-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let std_sock = UnixDatagram::bind_addr(&addr).unwrap();
        std_sock.set_nonblocking(true).unwrap();
        let sock = tokio::net::UnixDatagram::from_std(std_sock).unwrap();
        let sm = ServiceManager::from_vars(Some(&os(&format!("@{name}"))), None, None, 1).unwrap();
        sm.notify_ready().unwrap();
        assert_eq!(recv(&sock).await, "READY=1");
    }

    #[tokio::test]
    async fn sending_to_a_missing_socket_is_an_error_naming_it() {
        let sm =
            ServiceManager::from_vars(Some(&os("/nonexistent/notify")), None, None, 1).unwrap();
        let err = sm.notify_ready().unwrap_err();
        assert!(err.to_string().contains("/nonexistent/notify"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watchdog_repeats_at_half_the_interval_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = tokio::net::UnixDatagram::bind(&path).unwrap();
        // WATCHDOG_USEC = 200ms: a keep-alive every 100ms.
        let sm = ServiceManager::from_vars(Some(path.as_os_str()), Some(&os("200000")), None, 1)
            .unwrap();
        assert_eq!(sm.watchdog_interval(), Some(Duration::from_millis(100)));
        let task = sm.spawn_watchdog();
        assert!(task.is_running());
        // Repeats: three in a row (counted, not timed: the box may be loaded).
        for _ in 0..3 {
            assert_eq!(recv(&sock).await, "WATCHDOG=1");
        }
        drop(task);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = [0u8; 64];
        while sock.try_recv(&mut buf).is_ok() {}
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(
            sock.try_recv(&mut buf).is_err(),
            "keep-alive after the handle dropped"
        );
    }

    #[test]
    fn no_watchdog_no_task() {
        let sm = ServiceManager::disabled();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let task = rt.block_on(async { sm.spawn_watchdog() });
        assert!(!task.is_running());
    }
}
