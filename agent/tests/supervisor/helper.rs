//! Fixtures: a release root with the programs the tests run, specs, waits,
//! and /proc inspection.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use agent::supervisor::{InstanceSpec, InstanceStatus, ReadinessCheck};
use nix::sys::signal::Signal;
use release::manifest::{Command, ProbeTiming, RestartPolicy, RunSpec};
use release::paths::RelativePath;
use tokio::sync::watch;

/// Generous: CI machines are slow and shared.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The demo app next to this test binary (target/<profile>/demo-app).
pub fn demo_app() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join("demo-app");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p demo-app` first (same CARGO_TARGET_DIR)",
        path.display()
    );
    path
}

/// A release root holding `bin/{sh,sleep,echo,demo-app}` (symlinks) and a log dir.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("release");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        for (name, target) in [
            ("sh", which("sh")),
            ("sleep", which("sleep")),
            ("echo", which("echo")),
            ("demo-app", demo_app()),
        ] {
            std::os::unix::fs::symlink(target, root.join("bin").join(name)).unwrap();
        }
        // The demo app reads config.toml from its working dir (the root).
        std::fs::write(root.join("config.toml"), "message_prefix = \"t: \"\n").unwrap();
        Self { dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("release")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// A spec running `argv` (argv[0] relative to the root) with fast probes.
    pub fn spec(&self, argv: &[&str]) -> InstanceSpec {
        self.spec_for("app", 0, "sha256:aaaaaaaaaaaaaaaa", argv)
    }

    pub fn spec_for(&self, service: &str, slot: u32, digest: &str, argv: &[&str]) -> InstanceSpec {
        let mut spec = InstanceSpec::new(
            service,
            slot,
            (digest.to_owned(), "1.0.0".to_owned()),
            self.root(),
            run_spec(argv),
            ProbeTiming {
                interval: Duration::from_millis(50),
                timeout: Duration::from_secs(1),
                healthy_deadline: Duration::from_secs(30),
            },
            self.log_dir(),
        );
        spec.shim = PathBuf::from(env!("CARGO_BIN_EXE_lockstep-agent"));
        spec
    }
}

fn which(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found in /usr/bin or /bin");
}

pub fn run_spec(argv: &[&str]) -> RunSpec {
    RunSpec {
        command: Command {
            program: RelativePath::non_empty_from_bytes(argv[0].as_bytes()).unwrap(),
            args: argv[1..].iter().map(|s| (*s).to_owned()).collect(),
        },
        env: BTreeMap::new(),
        working_dir: RelativePath::root(),
        user: None,
        group: None,
        instances: 1,
        restart: RestartPolicy::Always,
        stop_signal: Signal::SIGTERM,
        stop_timeout: Duration::from_secs(5),
    }
}

/// Waits until the status satisfies `pred`; panics with the last status after `deadline`.
pub async fn wait_status(
    rx: &mut watch::Receiver<InstanceStatus>,
    deadline: Duration,
    what: &str,
    pred: impl Fn(&InstanceStatus) -> bool,
) -> InstanceStatus {
    let result = tokio::time::timeout(deadline, rx.wait_for(|s| pred(s)))
        .await
        .map(|r| r.map(|s| s.clone()));
    match result {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => panic!("status channel closed while waiting for {what}"),
        Err(_) => panic!(
            "timed out waiting for {what}; last status {:?}",
            *rx.borrow()
        ),
    }
}

/// Polls `cond` every 10 ms until it holds; panics after `deadline`.
pub async fn wait_for(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + deadline;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_field(&stat, 0) != Some("Z"),
        Err(_) => false,
    }
}

/// Field `i` after the `(comm)` of /proc/PID/stat (0 = state, 2 = pgrp).
fn stat_field(stat: &str, i: usize) -> Option<&str> {
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(i)
}

/// Live pids whose process group is `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if stat_field(&stat, 2) == Some(&pgid.to_string()) && stat_field(&stat, 0) != Some("Z") {
            out.push(pid);
        }
    }
    out
}

/// The environment a process was exec'd with.
pub fn environ(pid: u32) -> BTreeMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

pub fn cmdline(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

pub fn kill9(pid: u32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
}

/// One HTTP/1.0 GET; returns the body of a 200 answer.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)
        .await
        .map_err(|e| e.to_string())?;
    let (head, body) = buf.split_once("\r\n\r\n").ok_or("no header end")?;
    if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
        Ok(body.to_owned())
    } else {
        Err(head.lines().next().unwrap_or_default().to_owned())
    }
}

/// Ready when GET /healthz on `addr` answers 200.
pub struct HttpReady(pub std::net::SocketAddr);

impl ReadinessCheck for HttpReady {
    fn check(
        &mut self,
        _pid: u32,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        let addr = self.0;
        Box::pin(async move { http_get(addr, "/healthz").await.map(drop) })
    }
}

/// Fds of this process without close-on-exec: they pass to every child
/// (e.g. cargo's jobserver pipes), the agent cannot close them in safe Rust.
pub fn inherited_fds() -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/fdinfo").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(info) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            .unwrap_or(0);
        if flags & 0o2000000 == 0 {
            out.push(name);
        }
    }
    out
}
