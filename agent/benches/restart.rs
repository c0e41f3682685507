//! Restart latency and idle RSS: lockstep's supervisor beside runit's
//! `runsv` and supervisord, supervising the same program (`sleep 1000`).
//!
//! Restart latency: from `kill -9` of the supervised process to its
//! replacement running the program (a new pid whose /proc cmdline is the
//! program's, i.e. after exec). Each process has been up at least
//! `UPTIME_BEFORE_KILL` when it is killed: runsv delays restarts of a
//! service that ran less than a second, and lockstep restarts at once only
//! after a stable run (`STABLE_PERIOD`, also a second). The three are killed
//! in turn, round after round, so they are measured side by side under the
//! same load.
//!
//! RSS: VmRSS of the supervisor, idle, with 1 and with 50 supervised
//! processes. For lockstep this process plays the agent (tokio runtime +
//! supervisor); for runsv, one runsv per service, summed; for supervisord,
//! its one process.
//!
//! Run: `cargo bench -p agent --bench restart` (`LOCKSTEP_BENCH_KILLS=N`
//! changes the number of kills per supervisor, default 100). runsv and
//! supervisord come from the Debian packages `runit` and `supervisor`; when
//! missing, their columns are skipped with the reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent::supervisor::{AlwaysReady, Instance, InstanceSpec, PolicyConfig};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use release::manifest::{ProbeTiming, RestartPolicy, RunSpec};
use release::paths::RelativePath;

const UPTIME_BEFORE_KILL: Duration = Duration::from_millis(1200);
const DETECT_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_micros(50);
const SETTLE: Duration = Duration::from_secs(2);
const MANY: usize = 50;

fn main() {
    // `cargo bench` passes `--bench`; a test run (`cargo test --benches`) does not.
    if !std::env::args().any(|a| a == "--bench") {
        println!("restart bench: run with `cargo bench -p agent --bench restart`");
        return;
    }
    let kills: usize = std::env::var("LOCKSTEP_BENCH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let sleep =
        find(&["/usr/bin/sleep", "/bin/sleep"]).unwrap_or_else(|| PathBuf::from("/bin/sleep"));
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("tokio runtime: {e}"));
    let _guard = rt.enter();

    let mut subjects: Vec<Box<dyn Subject>> = Vec::new();
    subjects.push(Box::new(Lockstep::start(tmp.path(), &sleep, 1)));
    match which("runsv") {
        Some(runsv) => subjects.push(Box::new(Runsv::start(&runsv, tmp.path(), &sleep, 1, "one"))),
        None => println!("runsv: skipped: `runsv` not found (apt-get install -y runit)"),
    }
    match which("supervisord") {
        Some(sd) => subjects.push(Box::new(Supervisord::start(
            &sd,
            tmp.path(),
            &sleep,
            1,
            "one",
        ))),
        None => println!(
            "supervisord: skipped: `supervisord` not found (apt-get install -y supervisor)"
        ),
    }
    let want = vec![RELATIVE_ARGV0.to_owned(), "1000".to_owned()];
    let want_abs = vec![sleep.to_string_lossy().into_owned(), "1000".to_owned()];

    // Everything up and idle: RSS with one supervised process.
    for s in &mut subjects {
        s.wait_running(&want, &want_abs);
    }
    std::thread::sleep(SETTLE);
    let rss_one: Vec<u64> = subjects.iter().map(|s| s.rss_kb()).collect();

    // Kill rounds.
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); subjects.len()];
    let mut up_since: Vec<Instant> = vec![Instant::now(); subjects.len()];
    for _ in 0..kills {
        for (i, s) in subjects.iter_mut().enumerate() {
            let wait = UPTIME_BEFORE_KILL.saturating_sub(up_since[i].elapsed());
            std::thread::sleep(wait);
            let old = s.current_pid(&want, &want_abs);
            let t0 = Instant::now();
            kill(Pid::from_raw(old as i32), Signal::SIGKILL)
                .unwrap_or_else(|e| panic!("kill {old}: {e}"));
            loop {
                if let Some(p) = s.current_pid_opt(&want, &want_abs)
                    && p != old
                {
                    break;
                }
                assert!(
                    t0.elapsed() < DETECT_TIMEOUT,
                    "{}: no replacement for pid {old}",
                    s.name()
                );
                std::thread::sleep(POLL);
            }
            samples[i].push(t0.elapsed());
            up_since[i] = Instant::now();
        }
    }
    for (s, d) in subjects.iter().zip(&mut samples) {
        d.sort();
        println!(
            "restart {:<12} median {:>8.2} ms   p99 {:>8.2} ms   ({} kills, kill -9 to replacement exec'd)",
            s.name(),
            ms(percentile(d, 0.5)),
            ms(percentile(d, 0.99)),
            d.len()
        );
    }
    for s in subjects.drain(..) {
        s.shutdown();
    }

    // RSS with MANY supervised processes.
    let mut many: Vec<Box<dyn Subject>> = Vec::new();
    many.push(Box::new(Lockstep::start(tmp.path(), &sleep, MANY)));
    if let Some(runsv) = which("runsv") {
        many.push(Box::new(Runsv::start(
            &runsv,
            tmp.path(),
            &sleep,
            MANY,
            "many",
        )));
    }
    if let Some(sd) = which("supervisord") {
        many.push(Box::new(Supervisord::start(
            &sd,
            tmp.path(),
            &sleep,
            MANY,
            "many",
        )));
    }
    for s in &mut many {
        s.wait_all_running(MANY, &want, &want_abs);
    }
    std::thread::sleep(SETTLE);
    for (i, s) in many.iter().enumerate() {
        println!(
            "rss     {:<12} 1 process {:>7.1} MB   {MANY} processes {:>7.1} MB   ({})",
            s.name(),
            rss_one[i] as f64 / 1024.0,
            s.rss_kb() as f64 / 1024.0,
            s.rss_note()
        );
    }
    for s in many.drain(..) {
        s.shutdown();
    }
}

const RELATIVE_ARGV0: &str = "bin/sleep";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

fn find(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

fn which(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Children of `parent` running the program (after exec).
fn children_running(parent: u32, want: &[String]) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let mut f = stat[close + 2..].split(' ');
        let state = f.next();
        let ppid = f.next().and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) && state != Some("Z") && cmdline(pid) == want {
            out.push(pid);
        }
    }
    out
}

trait Subject {
    fn name(&self) -> &'static str;
    /// The supervised process's pid once it runs the program.
    fn current_pid_opt(&self, want: &[String], want_abs: &[String]) -> Option<u32>;
    fn current_pid(&self, want: &[String], want_abs: &[String]) -> u32 {
        let t0 = Instant::now();
        loop {
            if let Some(p) = self.current_pid_opt(want, want_abs) {
                return p;
            }
            assert!(
                t0.elapsed() < DETECT_TIMEOUT * 3,
                "{}: never running",
                self.name()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    fn wait_running(&mut self, want: &[String], want_abs: &[String]) {
        self.current_pid(want, want_abs);
    }
    fn wait_all_running(&mut self, n: usize, want: &[String], want_abs: &[String]);
    fn rss_kb(&self) -> u64;
    fn rss_note(&self) -> &'static str;
    fn shutdown(self: Box<Self>);
}

struct Lockstep {
    instances: Vec<Instance>,
}

impl Lockstep {
    fn start(tmp: &Path, sleep: &Path, n: usize) -> Self {
        let root = tmp.join(format!("lockstep-{n}"));
        std::fs::create_dir_all(root.join("bin")).unwrap_or_else(|e| panic!("{e}"));
        let _ = std::os::unix::fs::symlink(sleep, root.join("bin/sleep"));
        let instances = (0..n)
            .map(|slot| {
                let run = RunSpec {
                    command: release::manifest::Command {
                        program: RelativePath::non_empty_from_bytes(RELATIVE_ARGV0.as_bytes())
                            .unwrap_or_else(|e| panic!("{e}")),
                        args: vec!["1000".to_owned()],
                    },
                    env: BTreeMap::new(),
                    working_dir: RelativePath::root(),
                    user: None,
                    group: None,
                    instances: 1,
                    restart: RestartPolicy::Always,
                    stop_signal: Signal::SIGTERM,
                    stop_timeout: Duration::from_secs(5),
                };
                let mut spec = InstanceSpec::new(
                    "bench",
                    slot as u32,
                    ("sha256:bench".to_owned(), "1".to_owned()),
                    root.clone(),
                    run,
                    ProbeTiming {
                        interval: Duration::from_secs(1),
                        timeout: Duration::from_secs(1),
                        healthy_deadline: Duration::from_secs(60),
                    },
                    root.join("logs"),
                );
                spec.policy = PolicyConfig::default();
                spec.shim = PathBuf::from(env!("CARGO_BIN_EXE_lockstep-agent"));
                Instance::start(spec, Box::new(AlwaysReady)).unwrap_or_else(|e| panic!("{e}"))
            })
            .collect();
        Self { instances }
    }
}

impl Subject for Lockstep {
    fn name(&self) -> &'static str {
        "lockstep"
    }
    fn current_pid_opt(&self, want: &[String], _: &[String]) -> Option<u32> {
        let pid = self.instances.first()?.pid()?;
        (cmdline(pid) == want).then_some(pid)
    }
    fn wait_all_running(&mut self, _n: usize, want: &[String], _: &[String]) {
        let t0 = Instant::now();
        while !self
            .instances
            .iter()
            .all(|i| i.pid().is_some_and(|p| cmdline(p) == want))
        {
            assert!(
                t0.elapsed() < DETECT_TIMEOUT * 3,
                "lockstep: not all running"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    fn rss_kb(&self) -> u64 {
        rss_kb(std::process::id())
    }
    fn rss_note(&self) -> &'static str {
        "the bench process: tokio runtime + supervisor"
    }
    fn shutdown(mut self: Box<Self>) {
        let rt = tokio::runtime::Handle::current();
        for i in self.instances.drain(..) {
            if let Err(e) = rt.block_on(i.stop()) {
                eprintln!("lockstep stop: {e}");
            }
        }
    }
}

impl Drop for Lockstep {
    /// On a panic: no graceful stop possible, kill the groups.
    fn drop(&mut self) {
        for i in &self.instances {
            if let Some(pid) = i.pid() {
                let _ = nix::sys::signal::killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}

struct Runsv {
    procs: Vec<(Child, PathBuf)>,
}

impl Runsv {
    fn start(runsv: &Path, tmp: &Path, sleep: &Path, n: usize, tag: &str) -> Self {
        let procs = (0..n)
            .map(|i| {
                let dir = tmp.join(format!("runsv-{tag}-{i}"));
                std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
                let run = dir.join("run");
                std::fs::write(&run, format!("#!/bin/sh\nexec {} 1000\n", sleep.display()))
                    .unwrap_or_else(|e| panic!("{e}"));
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755))
                    .unwrap_or_else(|e| panic!("{e}"));
                let child = Command::new(runsv)
                    .arg(&dir)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| panic!("runsv: {e}"));
                (child, dir)
            })
            .collect();
        Self { procs }
    }

    fn pid_of(&self, i: usize, want_abs: &[String]) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.procs[i].1.join("supervise/pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (cmdline(pid) == want_abs).then_some(pid)
    }
}

impl Subject for Runsv {
    fn name(&self) -> &'static str {
        "runsv"
    }
    fn current_pid_opt(&self, _: &[String], want_abs: &[String]) -> Option<u32> {
        self.pid_of(0, want_abs)
    }
    fn wait_all_running(&mut self, n: usize, _: &[String], want_abs: &[String]) {
        let t0 = Instant::now();
        while !(0..n).all(|i| self.pid_of(i, want_abs).is_some()) {
            assert!(t0.elapsed() < DETECT_TIMEOUT * 3, "runsv: not all running");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    fn rss_kb(&self) -> u64 {
        self.procs.iter().map(|(c, _)| rss_kb(c.id())).sum()
    }
    fn rss_note(&self) -> &'static str {
        "sum over one runsv per service"
    }
    fn shutdown(self: Box<Self>) {}
}

impl Drop for Runsv {
    fn drop(&mut self) {
        // `x` on the control pipe: stop the service, then exit.
        for (mut child, dir) in self.procs.drain(..) {
            if let Ok(pid) = std::fs::read_to_string(dir.join("supervise/pid"))
                && let Ok(pid) = pid.trim().parse::<i32>()
                && pid > 0
            {
                let _ = std::fs::write(dir.join("supervise/control"), "x");
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let _ = child.wait();
        }
    }
}

struct Supervisord {
    child: Child,
}

impl Supervisord {
    fn start(bin: &Path, tmp: &Path, sleep: &Path, n: usize, tag: &str) -> Self {
        let dir = tmp.join(format!("supervisord-{tag}"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let mut conf = format!(
            "[supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\nchildlogdir={d}\n",
            d = dir.display()
        );
        for i in 0..n {
            conf.push_str(&format!(
                "\n[program:s{i}]\ncommand={} 1000\nautorestart=true\nstartretries=1000000\nstdout_logfile={d}/s{i}.log\nstderr_logfile={d}/s{i}.err\n",
                sleep.display(),
                d = dir.display()
            ));
        }
        let path = dir.join("supervisord.conf");
        std::fs::write(&path, conf).unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(bin)
            .arg("-n")
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("supervisord: {e}"));
        Self { child }
    }
}

impl Subject for Supervisord {
    fn name(&self) -> &'static str {
        "supervisord"
    }
    fn current_pid_opt(&self, _: &[String], want_abs: &[String]) -> Option<u32> {
        children_running(self.child.id(), want_abs).first().copied()
    }
    fn wait_all_running(&mut self, n: usize, _: &[String], want_abs: &[String]) {
        let t0 = Instant::now();
        while children_running(self.child.id(), want_abs).len() < n {
            assert!(
                t0.elapsed() < DETECT_TIMEOUT * 3,
                "supervisord: not all running"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    fn rss_kb(&self) -> u64 {
        rss_kb(self.child.id())
    }
    fn rss_note(&self) -> &'static str {
        "the supervisord process"
    }
    fn shutdown(self: Box<Self>) {}
}

impl Drop for Supervisord {
    fn drop(&mut self) {
        // supervisord stops its programs on SIGTERM.
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}
