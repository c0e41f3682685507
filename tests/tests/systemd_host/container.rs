//! A Debian 12 machine with systemd as PID 1, for the packages' test.
//!
//! ```text
//! DebianRoot::ensure(cache)   debootstrap once into cache/ROOT_NAME (systemd,
//!                             dbus, python3; etcd-server downloaded, not
//!                             installed), reused by every later run
//! Machine::boot(root, binds)  systemd-nspawn --boot --ephemeral
//!                             --private-network: a throw-away copy of the
//!                             root, its own loopback, systemd as PID 1
//! machine.sh("…")             nsenter into all its namespaces, as root,
//!                             with a deadline
//! drop                        poweroff, then SIGKILL; nspawn deletes the copy
//! ```
//!
//! Needs root, `debootstrap` and `systemd-nspawn` (`systemd-container`);
//! every failure says which step failed and shows what it printed. Nothing
//! here waits without a deadline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The cached root's name: change it when the package list changes, so an
/// old cache is never used for a new list.
const ROOT_NAME: &str = "bookworm-systemd-v2";
/// What the machine has besides `minbase`: an init, a bus for systemctl,
/// and python3 for the test's HTTP client (scripts/lib/demo-client.py).
const PACKAGES: &str = "systemd,systemd-sysv,dbus,python3,procps";
/// Downloaded into the root's apt cache when it is made, installed by the
/// test with apt inside the (network-less) machine.
const DOWNLOADED: &[&str] = &["etcd-server"];

/// Making the root: a few hundred packages from the mirror.
const DEBOOTSTRAP_DEADLINE: Duration = Duration::from_secs(600);
/// systemd reaching `running` inside a fresh copy.
const BOOT_DEADLINE: Duration = Duration::from_secs(120);
/// A clean poweroff.
const POWEROFF_DEADLINE: Duration = Duration::from_secs(30);
/// Where the machine's PATH looks.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A Debian 12 root file system with systemd, made once and kept.
#[derive(Debug)]
pub struct DebianRoot {
    path: PathBuf,
}

impl DebianRoot {
    /// The root under `cache`, made with debootstrap if it is not there yet.
    pub fn ensure(cache: &Path) -> Result<DebianRoot, String> {
        let path = cache.join(ROOT_NAME);
        remove_leftover_copies(cache)?;
        if path.join("usr/lib/systemd/systemd").is_file() {
            return Ok(DebianRoot { path });
        }
        let partial = cache.join(format!("{ROOT_NAME}.partial"));
        if partial.exists() {
            std::fs::remove_dir_all(&partial)
                .map_err(|e| format!("cannot remove {}: {e}", partial.display()))?;
        }
        std::fs::create_dir_all(cache)
            .map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
        let mut debootstrap = Command::new("debootstrap");
        debootstrap
            .args([
                "--variant=minbase",
                &format!("--include={PACKAGES}"),
                "bookworm",
            ])
            .arg(&partial);
        // The mirror this machine's own apt uses, when it names one.
        if let Some(mirror) = host_mirror() {
            debootstrap.arg(mirror);
        }
        run(
            "debootstrap a Debian 12 root",
            &mut debootstrap,
            DEBOOTSTRAP_DEADLINE,
        )?;
        let mut download = Command::new("chroot");
        download.arg(&partial).args([
            "sh",
            "-c",
            &format!(
                "apt-get update -qq && apt-get install -qq --download-only -y {}",
                DOWNLOADED.join(" ")
            ),
        ]);
        run(
            "download etcd-server into the root",
            &mut download,
            DEBOOTSTRAP_DEADLINE,
        )?;
        // debootstrap copies the host's /etc/hosts; the machine has no
        // network but its own loopback, and etcd listens on `localhost`.
        let hosts = partial.join("etc/hosts");
        std::fs::write(
            &hosts,
            "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
        )
        .map_err(|e| format!("cannot write {}: {e}", hosts.display()))?;
        std::fs::rename(&partial, &path).map_err(|e| {
            format!(
                "cannot move {} to {}: {e}",
                partial.display(),
                path.display()
            )
        })?;
        Ok(DebianRoot { path })
    }
}

/// The first `deb` mirror in this machine's apt sources (one-line or
/// deb822 format), if any.
fn host_mirror() -> Option<String> {
    let one_line = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    let deb822 = std::fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "sources"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect::<Vec<_>>()
        .join("\n");
    let from_one_line = one_line.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("deb"))
            .then(|| words.find(|w| w.starts_with("http")))
            .flatten()
    });
    let from_deb822 = deb822
        .lines()
        .filter_map(|l| l.strip_prefix("URIs:"))
        .flat_map(str::split_whitespace)
        .find(|uri| uri.starts_with("http") && !uri.contains("security"));
    from_one_line.or(from_deb822).map(str::to_owned)
}

/// Ephemeral copies nspawn could not delete (a test killed mid-run).
fn remove_leftover_copies(cache: &Path) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(".#machine.")
        {
            std::fs::remove_dir_all(entry.path())
                .map_err(|e| format!("cannot remove {}: {e}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// A booted throw-away copy of a [`DebianRoot`]; powered off on drop.
#[derive(Debug)]
pub struct Machine {
    nspawn: Child,
    init_pid: u32,
    console: PathBuf,
}

impl Machine {
    /// Boots a copy of `root` with `binds` (host path, machine path) mounted
    /// read-only; returns once systemd says the system is up.
    pub fn boot(
        root: &DebianRoot,
        binds: &[(&Path, &str)],
        console: PathBuf,
    ) -> Result<Machine, String> {
        ensure_nspawn_runtime_dir()?;
        let log = std::fs::File::create(&console)
            .map_err(|e| format!("cannot create {}: {e}", console.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("cannot reuse {}: {e}", console.display()))?;
        let mut nspawn = Command::new("systemd-nspawn");
        nspawn
            .args([
                "--quiet",
                "--boot",
                "--ephemeral",
                "--private-network",
                // No machined, no scope unit: the test's machine need not run
                // systemd itself.
                "--keep-unit",
                "--register=no",
                "--console=pipe",
                // nspawn's seccomp filter refuses pidfd_getfd, which the
                // agent uses to adopt its apps' sockets after a restart
                // (the operator guide says the same for containers).
                "--system-call-filter=pidfd_getfd",
            ])
            .arg("--directory")
            .arg(&root.path);
        for (host, inside) in binds {
            nspawn.arg(format!("--bind-ro={}:{inside}", host.display()));
        }
        let nspawn = nspawn
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot run systemd-nspawn: {e}"))?;
        let mut machine = Machine {
            init_pid: 0,
            nspawn,
            console,
        };
        machine.init_pid = machine.wait_for_init()?;
        machine.wait_until_running()?;
        Ok(machine)
    }

    /// Runs `script` with `sh -c` inside the machine as root; its stdout, or
    /// an error with its exit status and output. Killed after `deadline`.
    pub fn sh(&self, script: &str, deadline: Duration) -> Result<String, String> {
        let output = self.sh_output(script, deadline)?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "`{script}` in the machine: {}\nstdout:\n{}\nstderr:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// Like [`Machine::sh`], whatever the exit status.
    pub fn sh_output(&self, script: &str, deadline: Duration) -> Result<Output, String> {
        let mut command = Command::new("timeout");
        command
            .args(["--kill-after=5", &format!("{}", deadline.as_secs().max(1))])
            .args(["nsenter", "--target", &self.init_pid.to_string(), "--all"])
            .args([
                "env",
                "-i",
                &format!("PATH={PATH}"),
                "LANG=C.UTF-8",
                "SYSTEMD_PAGER=",
            ])
            .args(["SYSTEMD_COLORS=0", "sh", "-c", script])
            .stdin(Stdio::null());
        command
            .output()
            .map_err(|e| format!("cannot run nsenter for `{script}`: {e}"))
    }

    /// What the machine's console printed so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// The machine's PID 1 (systemd), as the host sees it: the `systemd`
    /// process nearest below nspawn.
    fn wait_for_init(&mut self) -> Result<u32, String> {
        let nspawn = self.nspawn.id();
        let start = Instant::now();
        while start.elapsed() < BOOT_DEADLINE {
            if let Ok(Some(status)) = self.nspawn.try_wait() {
                return Err(format!(
                    "systemd-nspawn exited ({status}) before the machine booted\nconsole:\n{}",
                    self.console()
                ));
            }
            if let Some(pid) = init_below(nspawn) {
                return Ok(pid);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "no systemd started under systemd-nspawn within {BOOT_DEADLINE:?}\nconsole:\n{}",
            self.console()
        ))
    }

    fn wait_until_running(&self) -> Result<(), String> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < BOOT_DEADLINE {
            match self.sh_output("systemctl is-system-running", Duration::from_secs(10)) {
                Ok(out) => {
                    last = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                    match last.as_str() {
                        "running" => return Ok(()),
                        "degraded" => {
                            let failed = self
                                .sh("systemctl --failed --no-legend", Duration::from_secs(10))
                                .unwrap_or_default();
                            return Err(format!("the machine booted degraded:\n{failed}"));
                        }
                        _ => {}
                    }
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!(
            "the machine did not reach `running` within {BOOT_DEADLINE:?} (last: {last})\nconsole:\n{}",
            self.console()
        ))
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if self.init_pid != 0 {
            let _ = self.sh_output("systemctl poweroff", Duration::from_secs(10));
        }
        let start = Instant::now();
        while start.elapsed() < POWEROFF_DEADLINE {
            if matches!(self.nspawn.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // nspawn's own cleanup cannot run after SIGKILL; the next
        // DebianRoot::ensure removes the copy it leaves.
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// nspawn keeps per-machine state below /run/systemd/nspawn and refuses to
/// delete it from anything but a tmpfs; some hosts (a CI VM whose /run is
/// on disk) have none there.
fn ensure_nspawn_runtime_dir() -> Result<(), String> {
    let dir = Path::new("/run/systemd/nspawn");
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let fstype = Command::new("findmnt")
        .args(["--noheadings", "--output", "FSTYPE", "--target"])
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run findmnt: {e}"))?;
    if String::from_utf8_lossy(&fstype.stdout).trim() == "tmpfs" {
        return Ok(());
    }
    run(
        "mount a tmpfs on /run/systemd/nspawn",
        Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(dir),
        Duration::from_secs(10),
    )
    .map(drop)
}

/// The pid of the `systemd` process with the fewest generations below
/// `ancestor`, from /proc.
fn init_below(ancestor: u32) -> Option<u32> {
    let mut parents = std::collections::HashMap::new();
    let mut systemds = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may hold spaces and parentheses.
        let Some((head, tail)) = stat.rsplit_once(") ") else {
            continue;
        };
        let comm = head.split_once(" (").map(|(_, c)| c).unwrap_or_default();
        let Some(ppid) = tail
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        parents.insert(pid, ppid);
        if comm == "systemd" {
            systemds.push(pid);
        }
    }
    systemds
        .into_iter()
        .filter_map(|pid| {
            let mut depth = 0;
            let mut at = pid;
            while let Some(&parent) = parents.get(&at) {
                depth += 1;
                if parent == ancestor {
                    return Some((depth, pid));
                }
                if parent <= 1 || depth > 16 {
                    return None;
                }
                at = parent;
            }
            None
        })
        .min()
        .map(|(_, pid)| pid)
}

/// Runs a host command to completion within `deadline`; its stdout, or an
/// error naming `what` with everything it printed. Output goes to files, not
/// pipes: a chatty command (debootstrap) must never block on a full pipe.
fn run(what: &str, command: &mut Command, deadline: Duration) -> Result<String, String> {
    let capture = |name: &str| {
        tempfile::tempfile()
            .map_err(|e| format!("{what}: cannot create a file for its {name}: {e}"))
    };
    let (stdout, stderr) = (capture("stdout")?, capture("stderr")?);
    let read_back = |mut file: &std::fs::File| {
        use std::io::{Read, Seek};
        let mut text = String::new();
        let _ = file.rewind();
        let _ = file.read_to_string(&mut text);
        text
    };
    let mut child = command
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().map_err(|e| format!("{what}: {e}"))?)
        .stderr(stderr.try_clone().map_err(|e| format!("{what}: {e}"))?)
        .spawn()
        .map_err(|e| format!("{what}: cannot start {:?}: {e}", command.get_program()))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{what}: killed after {deadline:?}\nstdout:\n{}\nstderr:\n{}",
                    read_back(&stdout),
                    read_back(&stderr)
                ));
            }
            Err(e) => return Err(format!("{what}: {e}")),
        }
    };
    if status.success() {
        Ok(read_back(&stdout))
    } else {
        Err(format!(
            "{what}: {status}\nstdout:\n{}\nstderr:\n{}",
            read_back(&stdout),
            read_back(&stderr)
        ))
    }
}
