//! Durable records of running app processes: what a restarted agent needs
//! to adopt the apps its predecessor started.
//!
//! Owns one JSON file per running process (`DIR/SERVICE-SLOT-DIGEST12-PID.json`:
//! during a restart two processes of one slot and release overlap), written
//! atomically (temp + fsync + rename + fsync of the directory) when
//! a process starts or becomes ready and removed when it has ended; telling
//! whether a recorded process is still the same one (pid + start time +
//! boot id: a pid alone may have been reused); and the adoption verdict.
//!
//! ```text
//! driver: Started ─▶ Some(record) ─┐                       ┌─▶ save (atomic)
//!         Ready   ─▶ ready = true ─┼─▶ watch ─▶ recorder ──┤
//!         Exited  ─▶ None ─────────┘   (coalesces)         └─▶ remove
//! agent start: load_all ─▶ observe(pid) ─▶ verdict: Adopt | Stop | Forget
//!              find_strays: an app of ours (NOTIFY_SOCKET in our runtime
//!              dir) that no record names ─▶ stopped
//! ```
//!
//! A stray exists only if an agent died between spawning a process and
//! writing its record (milliseconds): it must not keep the service's port
//! from the agent that comes next.
//!
//! Must never: call a process the recorded one unless its start time and
//! boot match (a reused pid belongs to someone else), or count a zombie as
//! alive.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

/// After SIGKILL, how long to wait for an unwanted process to be gone.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// Why a record could not be written, removed or read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot write process record {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove process record {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read process records in {path}: {source}")]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("process record {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// One running app process, as the agent that started (or adopted) it saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessRecord {
    pub service: String,
    pub slot: u32,
    pub release_digest: String,
    /// Main pid; also its process group and session (the shim calls setsid).
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat` (clock ticks after boot).
    pub start_time: u64,
    /// `/proc/sys/kernel/random/boot_id` when it started.
    pub boot_id: String,
    /// It had passed its readiness probe (a notify-probed app says READY=1
    /// once; a new agent cannot hear it again).
    pub ready: bool,
    /// Signal number and timeout for stopping it without its manifest.
    pub stop_signal: i32,
    pub stop_timeout_ms: u64,
    /// `[[listen]]` names in fd order from fd 3 (`LISTEN_FDNAMES`).
    pub sockets: Vec<String>,
}

/// What `/proc` says about a pid now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// The process state letter (`R`, `S`, `Z`, …).
    pub state: char,
    pub start_time: u64,
}

/// What to do with a recorded process at agent start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Alive, of the service's current release, in a slot it still has.
    Adopt,
    /// Alive but not wanted (another release, a slot beyond `instances`,
    /// a service with no current release): stop it.
    Stop,
    /// Gone (or its pid now belongs to another process): drop the record.
    Forget,
}

impl ProcessRecord {
    /// `DIR/SERVICE-SLOT-DIGEST12-PID.json`.
    pub fn path_in(&self, dir: &Path) -> PathBuf {
        dir.join(format!(
            "{}-{}-{}-{}.json",
            self.service,
            self.slot,
            short_digest(&self.release_digest),
            self.pid
        ))
    }
}

/// The first 12 hex digits of a `sha256:` digest.
pub fn short_digest(digest: &str) -> String {
    digest
        .strip_prefix("sha256:")
        .unwrap_or(digest)
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect()
}

/// `(state, start_time)` from the text of `/proc/PID/stat`.
pub fn parse_stat(stat: &str) -> Option<Observed> {
    // "pid (comm) state ppid ... starttime(22) ..."; comm may hold spaces and ')'.
    let after_comm = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = after_comm.split_ascii_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // fields[0] is field 3 (state), so field 22 is fields[19].
    let start_time = fields.get(19)?.parse().ok()?;
    Some(Observed { state, start_time })
}

/// What `/proc` says about `pid` now (`None`: no such process).
pub fn observe(pid: u32) -> Option<Observed> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .as_deref()
        .and_then(parse_stat)
}

/// When a process with this `start_time` (clock ticks after boot) started:
/// the boot time (`btime` in `/proc/stat`) plus the ticks.
pub fn started_at(start_time: u64) -> Option<std::time::SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let ticks = u64::try_from(
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()?,
    )
    .ok()
    .filter(|t| *t > 0)?;
    let since_boot = Duration::from_millis(start_time.saturating_mul(1000) / ticks);
    Some(std::time::UNIX_EPOCH + Duration::from_secs(btime) + since_boot)
}

/// This boot's id (empty if unreadable: then no record matches across a reboot).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The recorded process is alive and still the one recorded.
pub fn is_alive(record: &ProcessRecord, observed: Option<Observed>, boot_id: &str) -> bool {
    match observed {
        Some(o) => {
            o.state != 'Z'
                && o.state != 'X'
                && o.start_time == record.start_time
                && !boot_id.is_empty()
                && record.boot_id == boot_id
        }
        None => false,
    }
}

/// The adoption rule: alive, of the current release, in a slot that exists.
pub fn verdict(record: &ProcessRecord, alive: bool, current: Option<&str>, slots: u32) -> Verdict {
    if !alive {
        Verdict::Forget
    } else if current == Some(record.release_digest.as_str()) && record.slot < slots {
        Verdict::Adopt
    } else {
        Verdict::Stop
    }
}

/// Writes `record` to `path` atomically.
pub fn save(path: &Path, record: &ProcessRecord) -> Result<(), RecordError> {
    let err = |source| RecordError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let json = serde_json::to_vec_pretty(record).map_err(|e| err(std::io::Error::other(e)))?;
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    temp.write_all(&json).map_err(err)?;
    temp.as_file().sync_all().map_err(err)?;
    temp.persist(path).map_err(|e| err(e.error))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)
}

/// Removes the record at `path` (absent is fine), durably.
pub fn remove(path: &Path) -> Result<(), RecordError> {
    let err = |source| RecordError::Remove {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(e)),
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)
}

/// A record file and what it holds (or why it cannot be read).
pub type LoadedRecord = (PathBuf, Result<ProcessRecord, RecordError>);

/// Every record in `dir` (none if it does not exist); unreadable ones as errors.
pub fn load_all(dir: &Path) -> Result<Vec<LoadedRecord>, RecordError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(RecordError::List {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| RecordError::List {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let parsed = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                serde_json::from_slice::<ProcessRecord>(&bytes).map_err(|e| e.to_string())
            })
            .map_err(|reason| RecordError::Invalid {
                path: path.clone(),
                reason,
            });
        out.push((path, parsed));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A pidfd for `pid`, if it still names the recorded process (opened
/// first, then checked: a pid reused after the check cannot slip in).
pub fn open_if_alive(record: &ProcessRecord, boot_id: &str) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(record.pid).ok()?)?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()?;
    is_alive(record, observe(record.pid), boot_id).then_some(pidfd)
}

/// Duplicates the app's `[[listen]]` sockets (its fds 3..) into the agent.
pub fn take_sockets(record: &ProcessRecord, pidfd: &OwnedFd) -> std::io::Result<Vec<OwnedFd>> {
    (0..record.sockets.len())
        .map(|i| {
            let fd = 3 + i32::try_from(i).map_err(std::io::Error::other)?;
            rustix::process::pidfd_getfd(pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
                .map_err(std::io::Error::from)
        })
        .collect()
}

/// Waits until the process behind `pidfd` has ended, at most `limit`.
pub async fn ended_within(pidfd: &AsyncFd<OwnedFd>, limit: Duration) -> bool {
    tokio::time::timeout(limit, pidfd.readable()).await.is_ok()
}

/// The value of `NOTIFY_SOCKET` in the text of `/proc/PID/environ`.
pub fn notify_socket_of(environ: &[u8]) -> Option<&[u8]> {
    environ
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(b"NOTIFY_SOCKET=".as_slice()))
}

/// Processes started by an agent with this `runtime_dir` (their
/// NOTIFY_SOCKET is in it) other than `known` and the processes in their
/// sessions (an app's own workers inherit its environment), each with a
/// pidfd opened before its environment was read again (a reused pid is not
/// taken for it).
pub fn find_strays(runtime_dir: &Path, known: &[u32]) -> Vec<(u32, OwnedFd)> {
    let mut prefix = runtime_dir.as_os_str().as_encoded_bytes().to_vec();
    prefix.push(b'/');
    let ours = |pid: u32| {
        std::fs::read(format!("/proc/{pid}/environ"))
            .ok()
            .is_some_and(|env| notify_socket_of(&env).is_some_and(|v| v.starts_with(&prefix)))
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut strays = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || known.contains(&pid) || !ours(pid) {
            continue;
        }
        let session = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| crate::probe::notify::parse_proc_stat(&stat));
        if session.is_some_and(|(pgrp, sid)| known.contains(&pgrp) || known.contains(&sid)) {
            continue;
        }
        let Some(raw) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            continue;
        };
        let Ok(pidfd) = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())
        else {
            continue;
        };
        if ours(pid) {
            strays.push((pid, pidfd));
        }
    }
    strays
}

/// Stops a recorded process nobody wants (another release, a removed
/// slot): its stop signal to the group, its stop timeout, SIGKILL.
pub async fn stop_unwanted(record: &ProcessRecord, pidfd: OwnedFd) {
    tracing::info!(
        service = %record.service,
        slot = record.slot,
        release = %record.release_digest,
        pid = record.pid,
        "stopping a left-over instance process that is not wanted"
    );
    let signal = Signal::try_from(record.stop_signal).unwrap_or(Signal::SIGTERM);
    stop_process(
        record.pid,
        pidfd,
        signal,
        Duration::from_millis(record.stop_timeout_ms),
    )
    .await;
}

/// The stop signal to `pid`'s process group, up to `timeout` for it to
/// end, then SIGKILL.
pub async fn stop_process(pid: u32, pidfd: OwnedFd, signal: Signal, timeout: Duration) {
    let group = Pid::from_raw(pid as i32);
    // See `instance::Driver::adopt` on why `new` (an OwnedFd cannot be
    // closed behind the registration) rather than the `unsafe` `register`.
    #[allow(deprecated)]
    let pidfd = match AsyncFd::new(pidfd) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(pid, error = %e, "cannot watch an unwanted process; killing it");
            let _ = killpg(group, Signal::SIGKILL);
            return;
        }
    };
    let _ = killpg(group, signal);
    if !ended_within(&pidfd, timeout).await {
        let _ = killpg(group, Signal::SIGKILL);
        if !ended_within(&pidfd, KILL_WAIT).await {
            tracing::warn!(pid, "left-over process survived SIGKILL");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ProcessRecord {
        ProcessRecord {
            service: "web".into(),
            slot: 0,
            release_digest: format!("sha256:{}", "ab".repeat(32)),
            pid: 4242,
            start_time: 123_456,
            boot_id: "boot-1".into(),
            ready: true,
            stop_signal: 15,
            stop_timeout_ms: 30_000,
            sockets: vec!["http".into()],
        }
    }

    #[test]
    fn start_time_is_field_22_even_when_comm_has_spaces_and_parens() {
        let stat = "4242 (demo) app) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 123456 1000 50 18446744073709551615";
        assert_eq!(
            parse_stat(stat),
            Some(Observed {
                state: 'S',
                start_time: 123_456
            })
        );
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn our_own_process_is_observed_alive() {
        let me = std::process::id();
        let o = observe(me).unwrap();
        let mut r = record();
        r.pid = me;
        r.start_time = o.start_time;
        r.boot_id = boot_id();
        assert!(is_alive(&r, Some(o), &boot_id()));
        // This test process started moments ago.
        let started = started_at(o.start_time).unwrap();
        let age = std::time::SystemTime::now()
            .duration_since(started)
            .unwrap_or_default();
        assert!(age < Duration::from_secs(600), "{age:?}");
    }

    #[test]
    fn a_reused_pid_a_zombie_or_another_boot_is_not_the_recorded_process() {
        let r = record();
        let same = Observed {
            state: 'S',
            start_time: 123_456,
        };
        assert!(is_alive(&r, Some(same), "boot-1"));
        let reused = Observed {
            start_time: 999,
            ..same
        };
        assert!(!is_alive(&r, Some(reused), "boot-1"));
        let zombie = Observed { state: 'Z', ..same };
        assert!(!is_alive(&r, Some(zombie), "boot-1"));
        assert!(!is_alive(&r, Some(same), "boot-2"));
        assert!(!is_alive(&r, None, "boot-1"));
    }

    #[test]
    fn only_a_live_process_of_the_current_release_in_an_existing_slot_is_adopted() {
        let r = record();
        let current = r.release_digest.clone();
        assert_eq!(verdict(&r, true, Some(&current), 1), Verdict::Adopt);
        assert_eq!(verdict(&r, false, Some(&current), 1), Verdict::Forget);
        assert_eq!(verdict(&r, true, Some("sha256:other"), 1), Verdict::Stop);
        assert_eq!(verdict(&r, true, None, 1), Verdict::Stop);
        let mut beyond = r.clone();
        beyond.slot = 2;
        assert_eq!(verdict(&beyond, true, Some(&current), 2), Verdict::Stop);
    }

    #[test]
    fn notify_socket_is_found_among_the_environment() {
        let env = b"PATH=/bin\0NOTIFY_SOCKET=/var/lib/lockstep/run/web-0-ab.notify\0X=1\0";
        assert_eq!(
            notify_socket_of(env),
            Some(b"/var/lib/lockstep/run/web-0-ab.notify".as_slice())
        );
        assert_eq!(notify_socket_of(b"PATH=/bin\0"), None);
    }

    #[test]
    fn a_process_with_its_notify_socket_in_our_runtime_dir_is_a_stray_unless_known() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env("NOTIFY_SOCKET", dir.path().join("web-0-ab.notify"))
            .spawn()
            .unwrap();
        let pid = child.id();
        let found = |known: &[u32]| {
            find_strays(dir.path(), known)
                .into_iter()
                .map(|(p, _)| p)
                .collect::<Vec<_>>()
        };
        // The environment is there once exec is done.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while found(&[]) != vec![pid] && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(found(&[]), vec![pid]);
        assert!(found(&[pid]).is_empty());
        // A worker of a known app (in its process group) is not a stray.
        let group = nix::unistd::getpgrp().as_raw() as u32;
        assert!(found(&[group]).is_empty());
        let other = tempfile::tempdir().unwrap();
        assert!(find_strays(other.path(), &[]).is_empty());
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn records_round_trip_and_removal_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let r = record();
        let path = r.path_in(dir.path());
        assert!(path.ends_with("web-0-abababababab-4242.json"));
        save(&path, &r).unwrap();
        std::fs::write(dir.path().join("broken.json"), b"{").unwrap();
        let all = load_all(dir.path()).unwrap();
        assert_eq!(all.len(), 2);
        assert!(all[0].1.is_err(), "broken.json sorts first");
        assert_eq!(all[1].1.as_ref().unwrap(), &r);
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert!(load_all(&dir.path().join("missing")).unwrap().is_empty());
    }
}
