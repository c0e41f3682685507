//! lockstep-agent as systemd runs it, with this test in systemd's place: the
//! agent's sd_notify protocol (READY, STATUS, WATCHDOG, STOPPING) arrives at
//! a NOTIFY_SOCKET the test listens on. And the files in `systemd/` agree
//! with the binaries: the example config passes `check-config`, and the
//! paths the units, tmpfiles.d and the config name are the agent's.
//! (`scripts/lib/verify-units.sh` checks the unit files themselves.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use lockstep_tests::{free_loopback_port, wait_for, workspace_bin};

/// Generous: the agent starts and stops in well under a second when the
/// machine is idle, and these tests run beside others on two cores.
const DEADLINE: Duration = Duration::from_secs(60);
/// WATCHDOG_USEC given to the agent: a keep-alive every 200ms.
const WATCHDOG_USEC: &str = "400000";
/// Keep-alives to count before calling the watchdog repeating.
const KEEPALIVES: usize = 3;

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A `lockstep-agent` started the way systemd starts it; killed on drop.
struct NotifiedAgent {
    child: Option<Child>,
    log: PathBuf,
}

impl NotifiedAgent {
    fn start(config: &Path, notify_socket: &Path, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL"])
            .arg(workspace_bin("lockstep-agent").unwrap())
            .arg("--config")
            .arg(config)
            .env("NOTIFY_SOCKET", notify_socket)
            .env("WATCHDOG_USEC", WATCHDOG_USEC)
            // systemd sets it to the main pid; unset, the watchdog is ours.
            .env_remove("WATCHDOG_PID")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            log,
        }
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().unwrap()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn sigterm(&mut self) {
        let pid = i32::try_from(self.child().id()).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }

    async fn exit_status(&mut self) -> ExitStatus {
        let status = wait_for("the agent to exit", DEADLINE, || {
            let status = self.child().try_wait();
            async move {
                match status {
                    Ok(Some(status)) => Ok(status),
                    Ok(None) => Err("still running".to_owned()),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", self.log_text()));
        self.child = None;
        status
    }
}

impl Drop for NotifiedAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The messages that reached the NOTIFY_SOCKET, in order.
struct NotifySocket {
    socket: tokio::net::UnixDatagram,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(path: &Path) -> Self {
        Self {
            socket: tokio::net::UnixDatagram::bind(path).unwrap(),
            seen: Vec::new(),
        }
    }

    /// Receives until `done(messages so far)` holds, checked as each message
    /// arrives (so the caller sees the world as it was at that message);
    /// panics with every message and the agent's log after [`DEADLINE`].
    async fn until(&mut self, what: &str, agent: &NotifiedAgent, done: impl Fn(&[String]) -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut buf = [0u8; 4096];
        while !done(&self.seen) {
            match tokio::time::timeout_at(deadline, self.socket.recv(&mut buf)).await {
                Ok(Ok(n)) => self.push(&buf[..n]),
                Ok(Err(e)) => panic!("cannot receive on the NOTIFY_SOCKET: {e}"),
                Err(_) => panic!(
                    "timed out after {DEADLINE:?} waiting for {what}\nmessages: {:?}\nagent log:\n{}",
                    self.seen,
                    agent.log_text()
                ),
            }
        }
    }

    /// Takes whatever has arrived without waiting.
    fn receive_queued(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.try_recv(&mut buf) {
            self.push(&buf[..n]);
        }
    }

    /// One datagram may carry several newline-separated assignments, as
    /// sd_notify(3) allows; each is recorded on its own.
    fn push(&mut self, message: &[u8]) {
        self.seen.extend(
            String::from_utf8_lossy(message)
                .lines()
                .filter(|line| !line.is_empty())
                .map(str::to_owned),
        );
    }

    fn position(&self, message: &str) -> Option<usize> {
        self.seen.iter().position(|m| m == message)
    }
}

fn count(messages: &[String], message: &str) -> usize {
    messages.iter().filter(|m| *m == message).count()
}

#[tokio::test]
async fn the_agent_notifies_ready_status_watchdog_and_stopping_then_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let control_socket = dir.path().join("agent.sock");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "id = \"notify-1\"\ncluster = \"eu-1\"\ndata_dir = \"{data}\"\n\n[control]\nsocket = \"{socket}\"\n\n[grpc]\nlisten = \"127.0.0.1:{port}\"\n",
            data = dir.path().join("data").display(),
            socket = control_socket.display(),
            port = free_loopback_port().unwrap(),
        ),
    )
    .unwrap();
    let notify_path = dir.path().join("notify");
    let mut notify = NotifySocket::bind(&notify_path);
    let mut agent = NotifiedAgent::start(&config, &notify_path, dir.path().join("agent.log"));

    // READY=1 means serving: agentctl's socket is there when it arrives.
    notify
        .until("READY=1", &agent, |seen| {
            seen.iter().any(|m| m == "READY=1")
        })
        .await;
    assert!(
        control_socket.exists(),
        "READY=1 arrived before the control socket existed: systemd would report the agent \
         up while agentctl cannot reach it\nagent log:\n{}",
        agent.log_text()
    );
    let ready = notify.position("READY=1").unwrap();
    assert!(
        notify.seen[..ready]
            .iter()
            .any(|m| m.starts_with("STATUS=")),
        "no STATUS= while starting: {:?}",
        notify.seen
    );

    // Keep-alives repeat (every 200ms here; counted, not timed), and
    // `systemctl status` gets a status once the agent serves.
    notify
        .until(
            &format!("{KEEPALIVES} WATCHDOG=1 and a STATUS= after READY=1"),
            &agent,
            |seen| {
                count(seen, "WATCHDOG=1") >= KEEPALIVES
                    && seen[ready..].iter().any(|m| m.starts_with("STATUS="))
            },
        )
        .await;

    agent.sigterm();
    notify
        .until("STOPPING=1", &agent, |seen| {
            seen.iter().any(|m| m == "STOPPING=1")
        })
        .await;
    let status = agent.exit_status().await;
    assert!(
        status.success(),
        "the agent exited with {status} after SIGTERM\nagent log:\n{}",
        agent.log_text()
    );
    notify.receive_queued();
    assert_eq!(
        count(&notify.seen, "READY=1"),
        1,
        "READY=1 exactly once: {:?}",
        notify.seen
    );
    assert!(
        notify.position("STOPPING=1") > Some(ready),
        "STOPPING=1 after READY=1: {:?}",
        notify.seen
    );
}

fn check_config(path: &Path) -> Output {
    Command::new(workspace_bin("lockstep-agent").unwrap())
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap()
}

fn assert_valid(path: &Path) {
    let output = check_config(path);
    assert!(
        output.status.success(),
        "lockstep-agent check-config {} failed ({}):\n{}",
        path.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("valid"), "{stdout}");
}

/// `section.key` -> raw value of every `key = value` line outside comments
/// (a flat file like agent.toml; keys before any section have no prefix).
fn toml_keys(text: &str) -> BTreeMap<String, String> {
    let mut section = String::new();
    let mut keys = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = format!("{name}.");
        } else if let Some((key, value)) = line.split_once(" = ") {
            if !line.starts_with('#') {
                keys.insert(format!("{section}{key}"), value.to_owned());
            }
        }
    }
    keys
}

/// The example with every optional line (`# key = value`, `# [section]`)
/// uncommented; prose is left alone.
fn uncommented(example: &str) -> String {
    let is_key = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b"_.-".contains(&b))
    };
    let optional = |rest: &str| {
        rest.split_once(" = ").is_some_and(|(key, _)| is_key(key))
            || rest
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .is_some_and(is_key)
    };
    example
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if optional(rest) => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_example_config_passes_check_config_as_shipped_and_with_every_key_set() {
    // As shipped: id is left to the host name, which must be a valid agent
    // id on the machine running this (it is on Debian and in CI).
    // check-config runs the agent's start checks against this host too:
    // without the `lockstep` group sysusers.d creates, it says so.
    let example = repo_file("systemd/agent.toml.example");
    if nix::unistd::Group::from_name("lockstep")
        .ok()
        .flatten()
        .is_some()
    {
        assert_valid(&example);
    } else {
        let output = check_config(&example);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("control.group") && stderr.contains("`lockstep` does not exist"),
            "{stderr}"
        );
        assert_eq!(
            stderr.matches("\n  ").count(),
            1,
            "one problem only: {stderr}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let shipped = dir.path().join("shipped.toml");
    std::fs::write(&shipped, on_this_host(&read(&example), dir.path())).unwrap();
    assert_valid(&shipped);
    let full = dir.path().join("agent.toml");
    let text = uncommented(&read(&example));
    let pki = lockstep_tests::TestPki::new("example CA").unwrap();
    let here = on_this_host(&with_test_tls(&text, &pki), dir.path());
    std::fs::write(&full, here).unwrap();
    assert_valid(&full);

    // check-config refuses unknown keys, so none is invented; and none is
    // missing: every key of the newest config fixture is shown.
    let keys = toml_keys(&text);
    let fixture = toml_keys(&read(&repo_file("agent/tests/fixtures/agent-v2.toml")));
    let missing: Vec<_> = fixture.keys().filter(|k| !keys.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "keys missing from the example: {missing:?}"
    );

    // The limits the example calls the defaults are the defaults.
    let defaults = release::unpack::UnpackLimits::default();
    for (key, value) in [
        ("releases.max_entry_bytes", defaults.max_entry_bytes),
        ("releases.max_total_bytes", defaults.max_total_bytes),
        ("releases.max_entries", defaults.max_entries),
    ] {
        assert_eq!(keys[key], value.to_string(), "{key}");
    }
}

/// The example as a host set up by systemd/README.md has it: its control
/// group one that exists here (the test's own), its trusted release key a
/// key file written into `dir` (check-config loads both, as the agent's
/// start does).
fn on_this_host(text: &str, dir: &Path) -> String {
    let gid = nix::unistd::getgid();
    let group = nix::unistd::Group::from_gid(gid).unwrap().unwrap().name;
    assert!(
        text.contains("group = \"lockstep\""),
        "the example names no group"
    );
    let key = dir.join("release.pub");
    let public = release::SecretKey::generate().unwrap().public();
    std::fs::write(&key, public.to_file_text()).unwrap();
    text.replace("group = \"lockstep\"", &format!("group = \"{group}\""))
        .replace("/etc/lockstep/release.pub", &key.display().to_string())
}

/// The uncommented example, its `[tls]` files replaced by ones generated
/// now (check-config reads and checks them) and its coordinator URLs made
/// https:// as `[tls]` requires.
fn with_test_tls(text: &str, pki: &lockstep_tests::TestPki) -> String {
    let files = pki.issue("agent.lockstep").unwrap();
    let mut out = text.replace("http://coordinator-", "https://coordinator-");
    for (shipped, generated) in [
        ("/etc/lockstep/tls/ca.pem", &files.ca),
        ("/etc/lockstep/tls/agent.pem", &files.cert),
        ("/etc/lockstep/tls/agent.key", &files.key),
    ] {
        assert!(
            out.contains(shipped),
            "the example no longer names {shipped}"
        );
        out = out.replace(shipped, &generated.display().to_string());
    }
    out
}

/// The value clap shows as `[default: VALUE]` for `flag` in `BIN --help`.
fn help_default(bin: &str, flag: &str) -> String {
    let output = Command::new(workspace_bin(bin).unwrap())
        .arg("--help")
        .env_remove("LOCKSTEP_AGENT_SOCKET")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    let after_flag = help
        .split_once(flag)
        .unwrap_or_else(|| panic!("{bin} --help has no {flag}:\n{help}"))
        .1;
    let default = after_flag
        .split_once("[default: ")
        .and_then(|(_, rest)| rest.split_once(']'))
        .unwrap_or_else(|| panic!("{bin} --help shows no default for {flag}:\n{help}"))
        .0;
    default.to_owned()
}

/// The value of `key=` in a unit file (the last, as systemd reads it).
fn unit_setting(unit: &str, key: &str) -> String {
    unit.lines()
        .rev()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
        .to_owned()
}

#[test]
fn units_tmpfiles_sysusers_and_example_agree_with_the_agent_on_paths() {
    let unit = read(&repo_file("systemd/lockstep-agent.service"));
    let tmpfiles = read(&repo_file("systemd/tmpfiles.d/lockstep-agent.conf"));
    let sysusers = read(&repo_file("systemd/sysusers.d/lockstep-agent.conf"));
    let example = toml_keys(&uncommented(&read(&repo_file(
        "systemd/agent.toml.example",
    ))));
    let quoted = |s: &str| format!("\"{s}\"");

    // The config the unit starts the agent with is the agent's default one.
    let config = help_default("lockstep-agent", "--config");
    assert_eq!(
        unit_setting(&unit, "ExecStart"),
        format!("/usr/bin/lockstep-agent --config {config}")
    );

    // The control socket: agentctl's default, the example's, and in the
    // directory tmpfiles.d makes for group `lockstep`, which sysusers.d makes
    // and the example names as the control group.
    let socket = help_default("agentctl", "--socket");
    assert_eq!(example["control.socket"], quoted(&socket));
    let socket_dir = Path::new(&socket).parent().unwrap().to_str().unwrap();
    let entry = tmpfiles
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(1) == Some(&socket_dir))
        .unwrap_or_else(|| panic!("no tmpfiles.d entry for {socket_dir}"));
    assert_eq!(entry[..5], ["d", socket_dir, "0750", "root", "lockstep"]);
    assert!(
        sysusers.lines().any(|l| l.trim() == "g lockstep -"),
        "sysusers.d makes no group lockstep"
    );
    assert_eq!(example["control.group"], quoted("lockstep"));

    // The data dir is the unit's state directory.
    assert_eq!(
        example["data_dir"],
        quoted(&format!(
            "/var/lib/{}",
            unit_setting(&unit, "StateDirectory")
        ))
    );
}
