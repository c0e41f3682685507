//! The per-instance `NOTIFY_SOCKET` server: what an instance told the agent
//! through sd_notify(3).
//!
//! Owns one unix datagram socket per instance (in the agent's runtime dir,
//! mode 0600, optionally handed to the app's user), the task that reads it,
//! and the latest [`NotifyState`], published on a `watch` channel. The task
//! belongs to the [`NotifySocket`]: dropping it stops the task and removes
//! the socket file (if it is still the one this socket bound).
//!
//! ```text
//! app ──sendmsg "READY=1\nSTATUS=up"──> socket (SO_PASSCRED)
//!   task: recvmsg ─> sender pid from SCM_CREDENTIALS
//!         ├─ pid == instance pid, or its pgrp/session == instance pid ─> parse ─> apply ─> watch
//!         └─ anyone else ─> debug log, kept in a small ring in case it is the
//!            instance that is about to be named by set_main_pid (spawn race)
//! ```
//!
//! A sender other than the main process is matched through its
//! `/proc/<pid>/stat` when its datagram is read; one that has already exited
//! by then (a `systemd-notify`-style helper) can only match by its own pid,
//! the same limit systemd has.
//!
//! Must never: count a message whose sender is not the instance (or in its
//! process group or session), keep a file descriptor someone passed in a
//! message, read an unbounded datagram, or panic on what an app sends.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, UnixCredentials, cmsg_space, recvmsg, setsockopt, sockopt,
};
use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{ProbeError, ProbeFailure};

/// Largest datagram read; longer ones are dropped whole (systemd uses the
/// same bound, PIPE_BUF).
pub const MAX_DATAGRAM: usize = 4096;
/// Longest `STATUS=` kept (characters); the rest is cut.
pub const MAX_STATUS: usize = 512;
/// Messages from not-yet-accepted senders remembered for [`NotifySocket::set_main_pid`].
const RING: usize = 16;
/// Descriptors a sender may attach (FDSTORE=1); they are closed at once.
const MAX_PASSED_FDS: usize = 16;
/// Mode of the socket file: only its owner (the agent, or the app's user
/// after [`NotifySocket::set_owner`]) may send.
const SOCKET_MODE: u32 = 0o600;

/// What the instance has told the agent so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyState {
    /// The instance pid messages are accepted for (from [`NotifySocket::set_main_pid`]).
    pub pid: Option<u32>,
    /// `READY=1` was seen.
    pub ready: bool,
    /// `STOPPING=1` was seen.
    pub stopping: bool,
    /// `RELOADING=1` was seen and no `READY=1` since.
    pub reloading: bool,
    /// The latest `STATUS=`.
    pub status: Option<String>,
    /// The latest `MAINPID=` (recorded, not acted on: the supervisor decides).
    pub main_pid: Option<u32>,
    /// The latest `ERRNO=`.
    pub errno: Option<i32>,
    /// When the latest `WATCHDOG=1` arrived.
    pub last_watchdog: Option<Instant>,
}

/// One understood `KEY=VALUE` line of an sd_notify message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    Ready,
    Stopping,
    Reloading,
    Watchdog,
    Status(String),
    MainPid(u32),
    Errno(i32),
}

/// Parses one datagram: newline-separated `KEY=VALUE` lines. Lines it does
/// not understand (other keys, bad values, no `=`) are skipped.
pub fn parse_message(msg: &[u8]) -> Vec<Assignment> {
    msg.split(|b| *b == b'\n')
        .filter_map(|line| {
            let eq = line.iter().position(|b| *b == b'=')?;
            let (key, value) = (&line[..eq], &line[eq + 1..]);
            match key {
                b"READY" => (value == b"1").then_some(Assignment::Ready),
                b"STOPPING" => (value == b"1").then_some(Assignment::Stopping),
                b"RELOADING" => (value == b"1").then_some(Assignment::Reloading),
                b"WATCHDOG" => (value == b"1").then_some(Assignment::Watchdog),
                b"STATUS" => Some(Assignment::Status(
                    String::from_utf8_lossy(value)
                        .chars()
                        .map(|c| if c.is_control() { ' ' } else { c })
                        .take(MAX_STATUS)
                        .collect(),
                )),
                b"MAINPID" => std::str::from_utf8(value)
                    .ok()?
                    .parse::<u32>()
                    .ok()
                    .filter(|p| *p > 0)
                    .map(Assignment::MainPid),
                b"ERRNO" => std::str::from_utf8(value)
                    .ok()?
                    .parse::<i32>()
                    .ok()
                    .filter(|e| *e >= 0)
                    .map(Assignment::Errno),
                _ => None,
            }
        })
        .collect()
}

impl NotifyState {
    /// Applies a parsed message, in order.
    pub fn apply(&mut self, message: &[Assignment], now: Instant) {
        for a in message {
            match a {
                Assignment::Ready => {
                    self.ready = true;
                    self.reloading = false;
                }
                Assignment::Stopping => self.stopping = true,
                Assignment::Reloading => self.reloading = true,
                Assignment::Watchdog => self.last_watchdog = Some(now),
                Assignment::Status(s) => self.status = Some(s.clone()),
                Assignment::MainPid(p) => self.main_pid = Some(*p),
                Assignment::Errno(e) => self.errno = Some(*e),
            }
        }
    }
}

/// The notify probe's verdict on a state, for the instance whose pid is `pid`.
pub fn check_state(state: &NotifyState, pid: u32) -> Result<(), ProbeFailure> {
    if state.pid != Some(pid) {
        // What the socket holds is about another (earlier) process.
        return Err(ProbeFailure::NotReady { status: None });
    }
    if state.stopping {
        return Err(ProbeFailure::Stopping {
            status: state.status.clone(),
        });
    }
    if !state.ready {
        return Err(ProbeFailure::NotReady {
            status: state.status.clone(),
        });
    }
    Ok(())
}

/// Who sent a datagram, as the kernel says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    pub pid: u32,
    /// Process group and session from /proc, when the sender still exists.
    pub pgrp: Option<u32>,
    pub session: Option<u32>,
}

impl Sender {
    /// The sender is the instance `pid`, or in its process group or session.
    pub fn belongs_to(&self, pid: u32) -> bool {
        self.pid == pid || self.pgrp == Some(pid) || self.session == Some(pid)
    }
}

/// Reads `(pgrp, session)` from the text of `/proc/<pid>/stat`.
pub fn parse_proc_stat(stat: &str) -> Option<(u32, u32)> {
    // "pid (comm) state ppid pgrp session ..."; comm may hold spaces and ')'.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_ascii_whitespace().skip(2);
    let pgrp = fields.next()?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    Some((pgrp, session))
}

#[derive(Debug)]
struct Shared {
    expected: Option<u32>,
    /// Rejected messages, newest last, replayed when their sender becomes the instance.
    ring: VecDeque<(Sender, Vec<Assignment>)>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    shared: Mutex<Shared>,
    state: watch::Sender<NotifyState>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding this lock leaves consistent data (plain fields).
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a message from `sender` if it is the instance's; else remembers it.
    fn offer(&self, sender: Sender, message: Vec<Assignment>) {
        let mut shared = self.lock();
        match shared.expected {
            Some(pid) if sender.belongs_to(pid) => {
                tracing::debug!(path = %self.path.display(), pid, sender = sender.pid, ?message, "sd_notify message");
                self.state
                    .send_modify(|s| s.apply(&message, Instant::now()));
            }
            expected => {
                tracing::debug!(
                    path = %self.path.display(),
                    sender = sender.pid,
                    sender_pgrp = sender.pgrp,
                    expected,
                    "ignoring sd_notify message from a process that is not the instance"
                );
                if shared.ring.len() == RING {
                    shared.ring.pop_front();
                }
                shared.ring.push_back((sender, message));
            }
        }
    }
}

/// One instance's `NOTIFY_SOCKET`. Dropping it stops its task and removes the file.
#[derive(Debug)]
pub struct NotifySocket {
    inner: Arc<Inner>,
    /// (dev, ino) of the file this socket bound, so drop never removes a successor's.
    identity: Option<(u64, u64)>,
    task: JoinHandle<()>,
}

impl NotifySocket {
    /// Binds a datagram socket at `path` (a stale socket there is removed
    /// first; anything else there is an error), mode 0600, with
    /// SO_PASSCRED, and starts reading it. Must be called inside a tokio
    /// runtime. The calls are local filesystem and socket syscalls on the
    /// runtime dir that never wait on a disk or a peer, as `bind` does.
    pub fn bind(path: &Path) -> Result<NotifySocket, ProbeError> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => match std::fs::remove_file(path) {
                Ok(()) => tracing::debug!(path = %path.display(), "removed stale notify socket"),
                // Its owner (the instance this one replaces) removed it
                // meanwhile: what we wanted.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ProbeError::RemoveStale {
                        path: path.to_owned(),
                        source,
                    });
                }
            },
            Ok(_) => {
                return Err(ProbeError::NotASocket {
                    path: path.to_owned(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ProbeError::RemoveStale {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        let bind_err = |source| ProbeError::Bind {
            path: path.to_owned(),
            source,
        };
        let std_sock = std::os::unix::net::UnixDatagram::bind(path).map_err(bind_err)?;
        // From here on a failure must not leave the file behind.
        let cleanup = |e: ProbeError| {
            let _ = std::fs::remove_file(path);
            e
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(
            |source| {
                cleanup(ProbeError::Permissions {
                    path: path.to_owned(),
                    mode: SOCKET_MODE,
                    source,
                })
            },
        )?;
        setsockopt(&std_sock, sockopt::PassCred, &true).map_err(|source| {
            cleanup(ProbeError::PassCred {
                path: path.to_owned(),
                source,
            })
        })?;
        std_sock
            .set_nonblocking(true)
            .map_err(|e| cleanup(bind_err(e)))?;
        let sock = UnixDatagram::from_std(std_sock).map_err(|e| cleanup(bind_err(e)))?;
        let identity = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));

        let (state, _) = watch::channel(NotifyState::default());
        let inner = Arc::new(Inner {
            path: path.to_owned(),
            shared: Mutex::new(Shared {
                expected: None,
                ring: VecDeque::new(),
            }),
            state,
        });
        let task = tokio::spawn(read_loop(sock, Arc::clone(&inner)));
        tracing::debug!(path = %path.display(), "notify socket bound");
        Ok(NotifySocket {
            inner,
            identity,
            task,
        })
    }

    /// The socket's path (the instance's `NOTIFY_SOCKET`).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Hands the socket file to the app's user so it may send (mode stays 0600).
    pub fn set_owner(&self, uid: u32, gid: u32) -> Result<(), ProbeError> {
        std::os::unix::fs::chown(self.path(), Some(uid), Some(gid)).map_err(|source| {
            ProbeError::Owner {
                path: self.path().to_owned(),
                uid,
                gid,
                source,
            }
        })
    }

    /// Names the instance process (call right after each spawn, a restart
    /// included). The state starts over for it; messages it sent before it
    /// was named (kept in a small ring) are applied now.
    pub fn set_main_pid(&self, pid: u32) {
        let mut shared = self.inner.lock();
        shared.expected = Some(pid);
        let mut fresh = NotifyState {
            pid: Some(pid),
            ..NotifyState::default()
        };
        let now = Instant::now();
        for (sender, message) in std::mem::take(&mut shared.ring) {
            if sender.belongs_to(pid) {
                fresh.apply(&message, now);
            }
        }
        self.inner.state.send_replace(fresh);
        tracing::debug!(path = %self.path().display(), pid, "notify socket now accepts this instance");
    }

    /// Names an adopted instance process that the previous agent had seen
    /// send READY=1 (`ready`): it will not send it again.
    pub fn adopt_main_pid(&self, pid: u32, ready: bool) {
        self.set_main_pid(pid);
        if ready {
            self.inner.state.send_modify(|s| s.ready = true);
        }
    }

    /// The latest state, and every change after it.
    pub fn subscribe(&self) -> watch::Receiver<NotifyState> {
        self.inner.state.subscribe()
    }

    /// The latest state.
    pub fn state(&self) -> NotifyState {
        self.inner.state.borrow().clone()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.task.abort();
        let path = self.path();
        let same = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if same.is_some() && same == self.identity {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::debug!(path = %path.display(), error = %e, "cannot remove notify socket");
            }
        }
    }
}

/// One received datagram.
struct Datagram {
    bytes: Vec<u8>,
    sender_pid: Option<u32>,
    truncated: bool,
}

async fn read_loop(sock: UnixDatagram, inner: Arc<Inner>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut cmsg =
        vec![0u8; cmsg_space::<UnixCredentials>() + cmsg_space::<[i32; MAX_PASSED_FDS]>()];
    loop {
        if let Err(e) = sock.readable().await {
            tracing::warn!(path = %inner.path.display(), error = %e, "notify socket failed; no more sd_notify messages from this instance");
            return;
        }
        let received = sock.try_io(Interest::READABLE, || {
            receive(sock.as_raw_fd(), &mut buf, &mut cmsg)
        });
        let dgram = match received {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::debug!(path = %inner.path.display(), error = %e, "cannot receive on notify socket");
                continue;
            }
        };
        let Some(pid) = dgram.sender_pid.filter(|p| *p > 0) else {
            tracing::debug!(path = %inner.path.display(), "ignoring sd_notify message without sender credentials");
            continue;
        };
        if dgram.truncated {
            tracing::debug!(path = %inner.path.display(), sender = pid, "ignoring sd_notify message longer than {MAX_DATAGRAM} bytes");
            continue;
        }
        let message = parse_message(&dgram.bytes);
        if message.is_empty() {
            continue;
        }
        let expected = inner.lock().expected;
        let sender = if expected == Some(pid) {
            Sender {
                pid,
                pgrp: None,
                session: None,
            }
        } else {
            sender_of(pid).await
        };
        inner.offer(sender, message);
    }
}

/// Reads the process group and session of `pid` (procfs, off the runtime).
async fn sender_of(pid: u32) -> Sender {
    let ids = match tokio::fs::read_to_string(format!("/proc/{pid}/stat")).await {
        Ok(stat) => parse_proc_stat(&stat),
        Err(_) => None,
    };
    Sender {
        pid,
        pgrp: ids.map(|(g, _)| g),
        session: ids.map(|(_, s)| s),
    }
}

/// One `recvmsg`: the bytes, the sender's pid, and whether it was cut.
/// Descriptors passed along are closed at once.
fn receive(fd: i32, buf: &mut [u8], cmsg: &mut [u8]) -> io::Result<Datagram> {
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        fd,
        &mut iov,
        Some(cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_TRUNC,
    )?;
    let mut sender_pid = None;
    let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.bytes > MAX_DATAGRAM;
    let bytes = msg.bytes.min(MAX_DATAGRAM);
    match msg.cmsgs() {
        Ok(cmsgs) => {
            for c in cmsgs {
                match c {
                    ControlMessageOwned::ScmCredentials(cred) => {
                        sender_pid = u32::try_from(cred.pid()).ok();
                    }
                    ControlMessageOwned::ScmRights(fds) => {
                        for fd in fds {
                            let _ = nix::unistd::close(fd);
                        }
                    }
                    _ => {}
                }
            }
        }
        Err(_) => {
            // Control data cut short: the credentials cannot be trusted to be there.
            sender_pid = None;
        }
    }
    Ok(Datagram {
        bytes: buf[..bytes].to_vec(),
        sender_pid,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_messages_parse() {
        assert_eq!(parse_message(b"READY=1"), vec![Assignment::Ready]);
        assert_eq!(
            parse_message(b"READY=1\nSTATUS=serving 3 listeners\nMAINPID=4242\n"),
            vec![
                Assignment::Ready,
                Assignment::Status("serving 3 listeners".into()),
                Assignment::MainPid(4242)
            ]
        );
        assert_eq!(
            parse_message(b"STOPPING=1\nRELOADING=1\nWATCHDOG=1\nERRNO=2"),
            vec![
                Assignment::Stopping,
                Assignment::Reloading,
                Assignment::Watchdog,
                Assignment::Errno(2)
            ]
        );
        assert_eq!(
            parse_message(b"STATUS="),
            vec![Assignment::Status(String::new())]
        );
    }

    #[test]
    fn unknown_and_bad_lines_are_skipped() {
        assert!(parse_message(b"").is_empty());
        assert!(parse_message(b"READY=0\nREADY\nFDSTORE=1\nWATCHDOG=trigger").is_empty());
        assert!(parse_message(b"MAINPID=0\nMAINPID=-1\nMAINPID=x\nERRNO=-3").is_empty());
        assert_eq!(
            parse_message(b"X=1\nREADY=1\nready=1"),
            vec![Assignment::Ready]
        );
    }

    #[test]
    fn state_follows_messages() {
        let now = Instant::now();
        let mut s = NotifyState {
            pid: Some(7),
            ..NotifyState::default()
        };
        assert_eq!(
            check_state(&s, 7),
            Err(ProbeFailure::NotReady { status: None })
        );
        s.apply(&parse_message(b"STATUS=starting"), now);
        assert_eq!(
            check_state(&s, 7).unwrap_err().to_string(),
            "no READY=1 yet (status: starting)"
        );
        s.apply(&parse_message(b"RELOADING=1"), now);
        assert!(s.reloading);
        s.apply(&parse_message(b"READY=1\nWATCHDOG=1"), now);
        assert!(!s.reloading);
        assert_eq!(s.last_watchdog, Some(now));
        assert_eq!(check_state(&s, 7), Ok(()));
        assert!(check_state(&s, 8).is_err(), "state about another pid");
        s.apply(&parse_message(b"STOPPING=1\nSTATUS=draining"), now);
        assert_eq!(
            check_state(&s, 7),
            Err(ProbeFailure::Stopping {
                status: Some("draining".into())
            })
        );
    }

    #[test]
    fn proc_stat_fields() {
        let stat = "4242 (my app) x) S 1 4240 4200 0 -1 4194560 ...";
        assert_eq!(parse_proc_stat(stat), Some((4240, 4200)));
        assert_eq!(parse_proc_stat("garbage"), None);
        assert_eq!(parse_proc_stat("1 (a) S 0"), None);
        let me = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_proc_stat(&me).is_some());
    }

    #[test]
    fn senders_belong_by_pid_group_or_session() {
        let s = Sender {
            pid: 10,
            pgrp: Some(5),
            session: Some(1),
        };
        assert!(s.belongs_to(10) && s.belongs_to(5) && s.belongs_to(1));
        assert!(!s.belongs_to(11));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..8192)) {
            let msg = parse_message(&bytes);
            let mut s = NotifyState::default();
            s.apply(&msg, Instant::now());
            if let Some(status) = s.status {
                prop_assert!(status.chars().count() <= MAX_STATUS);
                prop_assert!(!status.contains('\n'));
            }
        }

        #[test]
        fn status_survives_round_trip(status in "[a-zA-Z0-9 .:/_-]{0,100}") {
            let msg = format!("READY=1\nSTATUS={status}");
            prop_assert_eq!(
                parse_message(msg.as_bytes()),
                vec![Assignment::Ready, Assignment::Status(status)]
            );
        }
    }
}
