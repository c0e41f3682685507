//! Idle RSS of the real `lockstep-agent` with 1 and with 50 instances
//! (issue #4, item 9: "agent RSS idle with 1 and with 50 instances";
//! goal: under 15 MB with 50).
//!
//! For each count N: a fresh data dir and `agent.toml`, the agent binary
//! started as a child, `agentctl install` of a bundle whose app is a shell
//! script that `exec`s `sleep` (N instances, an `exec` readiness probe that
//! exits 0, every 10 s), a wait until `agentctl --output json status`
//! shows N ready instances, `SETTLE` of idling, then the agent's VmRSS,
//! VmHWM, RssAnon/RssFile and threads from /proc, and its resident memory
//! by mapping (smaps). Also the agent with no service at all, as the
//! baseline. Then SIGTERM: the agent must exit and no app process may be
//! left (any left is killed, and the bench fails).
//!
//! ```text
//! bench ─spawn─▶ lockstep-agent --config T/agent.toml ─▶ N × shim ▶ sh ▶ sleep
//!   └─ agentctl --socket T/agent.sock install / status
//! ```
//!
//! Run: `cargo bench -p agent --bench agent_rss`. Cargo builds the agent's
//! binaries in the bench's own profile before it runs a bench and tells it
//! where they are (`CARGO_BIN_EXE_*`), so the agent measured is the release
//! build without a separate `cargo build --release -p agent --bins`
//! (running that first does no harm).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const AGENT: &str = env!("CARGO_BIN_EXE_lockstep-agent");
const AGENTCTL: &str = env!("CARGO_BIN_EXE_agentctl");
/// Instance counts measured, as the issue asks.
const COUNTS: [u32; 2] = [1, 50];
/// Idle time before reading the figures: every instance has settled and
/// the probes have run at least once after readiness.
const SETTLE: Duration = Duration::from_secs(12);
const START_TIMEOUT: Duration = Duration::from_secs(30);
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

fn main() {
    // `cargo bench` passes `--bench`; a test run (`cargo test --benches`) does not.
    if !std::env::args().any(|a| a == "--bench") {
        println!("agent_rss bench: run with `cargo bench -p agent --bench agent_rss`");
        return;
    }
    println!("agent: {AGENT}");
    let idle = Agent::start("none");
    idle.wait_answering();
    std::thread::sleep(SETTLE);
    report("no service", &idle, 0);
    idle.stop();
    for n in COUNTS {
        let agent = Agent::start(&format!("n{n}"));
        agent.wait_answering();
        let bundle = build_bundle(agent.dir(), n);
        let began = Instant::now();
        let installed = agent.agentctl(&["install", path_str(&bundle)]);
        assert!(
            installed.status.success(),
            "install of {n} instances failed: {}\nagent log:\n{}",
            String::from_utf8_lossy(&installed.stderr),
            agent.log()
        );
        let pids = agent.wait_ready(n);
        let took = began.elapsed();
        std::thread::sleep(SETTLE);
        report(&format!("{n} instance(s)"), &agent, n);
        println!("  install to {n} ready: {} ms", took.as_millis());
        agent.stop();
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        assert!(
            left.is_empty(),
            "app processes left after the agent stopped: {left:?}"
        );
        println!(
            "  SIGTERM: the agent exited; 0 of {} app processes left",
            pids.len()
        );
    }
}

fn report(what: &str, agent: &Agent, n: u32) {
    let pid = agent.pid();
    let status = proc_status(pid);
    let kb = |key: &str| status.get(key).copied().unwrap_or(0);
    println!(
        "agent rss idle, {what:<16} VmRSS {:>6.1} MB   VmHWM {:>6.1} MB   RssAnon {:>6.1} MB   RssFile {:>6.1} MB   threads {}",
        mb(kb("VmRSS")),
        mb(kb("VmHWM")),
        mb(kb("RssAnon")),
        mb(kb("RssFile")),
        kb("Threads"),
    );
    let by_mapping = smaps_rss(pid, Path::new(AGENT));
    let parts: Vec<String> = by_mapping
        .iter()
        .map(|(k, v)| format!("{k} {:.1} MB", mb(*v)))
        .collect();
    println!("  resident by mapping: {}", parts.join(", "));
    if n == 50 {
        let rss = mb(kb("VmRSS"));
        let verdict = if rss < 15.0 { "meets" } else { "misses" };
        println!("  goal (< 15 MB with 50 instances): {verdict} it at {rss:.1} MB");
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn path_str(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", p.display()))
}

/// A release of `bench`: N × `bin/app` (exec sleep), `bin/ready` exits 0.
fn build_bundle(dir: &Path, n: u32) -> PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("bin")).unwrap_or_else(|e| panic!("release tree: {e}"));
    let script = |name: &str, body: &str| {
        let path = tree.join("bin").join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n"))
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    };
    script("app", "exec sleep 100000");
    script("ready", "exit 0");
    let manifest = format!(
        r#"[release]
service = "bench"
version = "1.0.0"

[run]
command = ["bin/app"]
instances = {n}
stop_timeout = "5s"

[readiness]
exec = ["bin/ready"]
interval = "10s"
timeout = "5s"
healthy_deadline = "60s"
"#
    );
    std::fs::write(tree.join("release.toml"), manifest)
        .unwrap_or_else(|e| panic!("release.toml: {e}"));
    let out = dir.join(format!("bench-{n}.lsr"));
    release::bundle::build_file(&tree, &out, None).unwrap_or_else(|e| panic!("build bundle: {e}"));
    out
}

/// The agent under measurement; dropping it stops it and kills strays.
struct Agent {
    dir: tempfile::TempDir,
    socket: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Agent {
    fn start(id: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("agent-rss-")
            .tempdir()
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        let socket = dir.path().join("agent.sock");
        let port =
            lockstep_tests::free_loopback_port().unwrap_or_else(|e| panic!("free port: {e}"));
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "id = \"bench-{id}\"\ncluster = \"bench\"\ndata_dir = \"{data}\"\napps_on_agent_stop = \"stop\"\n\n[control]\nsocket = \"{socket}\"\n\n[grpc]\nlisten = \"127.0.0.1:{port}\"\n",
                data = dir.path().join("data").display(),
                socket = socket.display(),
            ),
        )
        .unwrap_or_else(|e| panic!("agent.toml: {e}"));
        let log = dir.path().join("agent.log");
        let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("agent.log: {e}"));
        let err = out.try_clone().unwrap_or_else(|e| panic!("agent.log: {e}"));
        // The agent's own defaults: no RUST_LOG, no systemd.
        let child = Command::new(AGENT)
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {AGENT}: {e}"));
        Self {
            dir,
            socket,
            log,
            child: Some(child),
        }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn agentctl(&self, args: &[&str]) -> Output {
        Command::new(AGENTCTL)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {AGENTCTL}: {e}"))
    }

    fn wait_answering(&self) {
        let began = Instant::now();
        while !self.agentctl(&["status"]).status.success() {
            assert!(
                began.elapsed() < START_TIMEOUT,
                "the agent did not answer within {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Waits until `n` instances are ready; returns their pids.
    fn wait_ready(&self, n: u32) -> Vec<u32> {
        let began = Instant::now();
        loop {
            let out = self.agentctl(&["--output", "json", "status", "bench"]);
            let status: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
            let instances = status["services"][0]["instances"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let ready: Vec<u32> = instances
                .iter()
                .filter(|i| i["ready"] == true)
                .filter_map(|i| i["pid"].as_u64())
                .filter_map(|p| u32::try_from(p).ok())
                .collect();
            if ready.len() == n as usize {
                return ready;
            }
            assert!(
                began.elapsed() < READY_TIMEOUT,
                "{} of {n} instances ready after {READY_TIMEOUT:?}: {status}",
                ready.len()
            );
            std::thread::sleep(POLL);
        }
    }

    /// SIGTERM, and the agent must exit (stopping its apps) in time.
    fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let exited = terminate(&mut child);
        let strays = kill_strays(self.dir.path());
        assert!(
            exited,
            "the agent ignored SIGTERM for {STOP_TIMEOUT:?}:\n{}",
            self.log()
        );
        assert!(
            strays.is_empty(),
            "processes left in {} after the agent stopped (killed): {strays:?}",
            self.dir.path().display()
        );
    }
}

impl Drop for Agent {
    /// A panic mid-bench: stop the agent anyway, then whatever it left.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
        kill_strays(self.dir.path());
    }
}

/// SIGTERM, wait up to `STOP_TIMEOUT`, then SIGKILL; always reaped. True
/// when it exited by itself.
fn terminate(child: &mut Child) -> bool {
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let _ = kill(pid, Signal::SIGTERM);
    let began = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) if began.elapsed() < STOP_TIMEOUT => std::thread::sleep(POLL),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// Kills every process whose working directory is inside `dir` (the apps
/// run in their release's directory under the data dir); returns them.
fn kill_strays(dir: &Path) -> Vec<u32> {
    let mut killed = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return killed;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir)) {
            let _ = kill(
                Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)),
                Signal::SIGKILL,
            );
            killed.push(pid);
        }
    }
    killed
}

/// Running (not a zombie, not gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat.get(i + 2..i + 3))
            .is_some_and(|state| state != "Z")
    })
}

/// `/proc/PID/status` fields in kB (and `Threads` as a count).
fn proc_status(pid: u32) -> BTreeMap<String, u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            let n = value.split_whitespace().next()?.parse().ok()?;
            Some((key.to_owned(), n))
        })
        .collect()
}

/// Resident kB by kind of mapping: the agent binary, shared libraries,
/// the heap, anonymous mappings (thread stacks, allocator arenas), stacks
/// and the rest.
fn smaps_rss(pid: u32, exe: &Path) -> BTreeMap<&'static str, u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let exe = exe.to_string_lossy();
    let mut out = BTreeMap::new();
    let mut kind = "other";
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // A mapping's header: "start-end perms offset dev inode [path]".
        if fields
            .first()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            let path = fields.get(5).copied().unwrap_or("");
            kind = if path.is_empty() {
                "anonymous"
            } else if path == exe || path.ends_with("/lockstep-agent") {
                "binary"
            } else if path == "[heap]" {
                "heap"
            } else if path == "[stack]" {
                "main stack"
            } else if path.contains(".so") {
                "libraries"
            } else {
                "other"
            };
        } else if fields.first() == Some(&"Rss:") {
            let kb: u64 = fields.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
            *out.entry(kind).or_insert(0) += kb;
        }
    }
    out
}
