//! Fixtures: the real `demo-app` binary in a temp dir on a free loopback
//! port, a minimal HTTP/1.1 client, and `wait_for` instead of fixed sleeps.
//! Every child is killed and reaped on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_demo-app");
pub const SOCKET_ACTIVATE: &str = "/usr/bin/systemd-socket-activate";

/// Generous: two shared cores, several apps starting at once.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `cond` every 20 ms until it holds; panics naming `what` at `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    lockstep_tests::free_loopback_port().unwrap()
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// One HTTP/1.1 request with `Connection: close`.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<Response> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP head in {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    Ok(Response {
        status,
        body: body.to_owned(),
    })
}

/// How to start one app.
#[derive(Debug)]
pub struct AppBuilder {
    config: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// `None`: the binary itself with `--listen` on a free port.
    wrapper: Option<Vec<String>>,
    listen_flag: bool,
}

impl AppBuilder {
    pub fn new() -> Self {
        Self {
            config: "version = \"test-1\"\n".into(),
            args: Vec::new(),
            env: Vec::new(),
            wrapper: None,
            listen_flag: true,
        }
    }

    pub fn config(mut self, text: &str) -> Self {
        self.config = text.into();
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// No `--listen` flag: the config's `listen` (or its default) applies.
    pub fn without_listen_flag(mut self) -> Self {
        self.listen_flag = false;
        self
    }

    /// Runs `demo-app` under `program args...` (e.g. systemd-socket-activate);
    /// the app then gets no `--listen` flag.
    pub fn wrapped_in(mut self, program_and_args: &[&str]) -> Self {
        self.wrapper = Some(program_and_args.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Writes `config.toml` into a fresh temp dir and starts the app there
    /// (working directory = the temp dir, so the default `--config` finds it).
    pub fn spawn(self) -> App {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), &self.config).unwrap();
        let stderr_path = dir.path().join("stderr.log");
        let port = free_port();
        let mut cmd = match &self.wrapper {
            None => {
                let mut c = Command::new(BIN);
                if self.listen_flag {
                    c.arg("--listen").arg(format!("127.0.0.1:{port}"));
                }
                c
            }
            Some(w) => {
                let mut c = Command::new(&w[0]);
                c.args(&w[1..]).arg(BIN);
                c
            }
        };
        cmd.args(&self.args)
            .current_dir(dir.path())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("LOCKSTEP_RELEASE_VERSION")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        App {
            child: Some(child),
            port,
            dir,
            stderr_path,
            spawned: Instant::now(),
        }
    }

    /// Starts the app and waits for it to exit by itself.
    pub fn run_to_exit(self) -> (ExitStatus, String) {
        let mut app = self.spawn();
        let status = app.wait_exit(DEADLINE);
        (status, app.stderr())
    }
}

/// A running app; killed and reaped on drop.
#[derive(Debug)]
pub struct App {
    child: Option<Child>,
    /// The `--listen` port (unused when wrapped).
    pub port: u16,
    pub dir: TempDir,
    stderr_path: PathBuf,
    pub spawned: Instant,
}

impl App {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn get(&self, path: &str) -> std::io::Result<Response> {
        http(self.port, "GET", path, "")
    }

    pub fn post(&self, path: &str, body: &str) -> std::io::Result<Response> {
        http(self.port, "POST", path, body)
    }

    /// Waits until the app answers HTTP at all, and returns that first answer.
    pub fn first_healthz(&self) -> Response {
        let mut first = None;
        wait_for("the app to answer /healthz", DEADLINE, || {
            first = self.get("/healthz").ok();
            first.is_some()
        });
        first.unwrap()
    }

    pub fn wait_healthy(&self) {
        wait_for("/healthz 200", DEADLINE, || {
            self.get("/healthz").is_ok_and(|r| r.status == 200)
        });
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    /// Waits for the process to exit by itself; panics (with its stderr) at
    /// the timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let mut status = None;
        wait_for("the app to exit", timeout, || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
