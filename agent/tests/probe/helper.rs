//! Fixtures for the probe tests: a release root in a temp dir, tiny HTTP
//! servers, process checks through /proc, and `wait_for` instead of sleeps.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use release::manifest::Command;
use release::paths::RelativePath;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Polls `cond` every 10ms until it holds; panics naming `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A release root: a temp dir with `sh` linked to /bin/sh, so probes can run
/// shell snippets without writing executables (which races with forks
/// elsewhere in the test binary: ETXTBSY).
pub struct ReleaseRoot {
    pub dir: tempfile::TempDir,
}

impl ReleaseRoot {
    pub fn new() -> ReleaseRoot {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/bin/sh", dir.path().join("sh")).unwrap();
        ReleaseRoot { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// `program args...` as a manifest command (program relative to the root).
pub fn command(program: &str, args: &[&str]) -> Command {
    Command {
        program: RelativePath::non_empty_from_bytes(program.as_bytes()).unwrap(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
    }
}

/// `sh -c script` from the release root.
pub fn shell(script: &str) -> Command {
    command("sh", &["-c", script])
}

/// Whether `pid` is still a live process (absent or zombie counts as gone:
/// an orphan's reaper in a container may be slow).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .unwrap_or("");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

/// An HTTP server on 127.0.0.1 that answers every request with the status
/// line `HTTP/1.1 {code} {reason}`; the code can be changed while it runs.
pub struct StatusServer {
    pub addr: SocketAddr,
    pub code: Arc<AtomicU16>,
    task: JoinHandle<()>,
}

impl StatusServer {
    pub async fn start(code: u16) -> StatusServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(AtomicU16::new(code));
        let code = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let code = code.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let reason = match code {
                        200 => "OK",
                        302 => "Found",
                        503 => "Service Unavailable",
                        _ => "Whatever",
                    };
                    let answer = format!(
                        "HTTP/1.1 {code} {reason}\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                });
            }
        });
        StatusServer {
            addr,
            code: shared,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP server that, on each connection, reads the request and then sends
/// `answer` one byte at a time, and keeps the connection open afterwards.
pub async fn dribble_server(answer: &'static [u8]) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                for b in answer {
                    if conn.write_all(&[*b]).await.is_err() {
                        return;
                    }
                    let _ = conn.flush().await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    (addr, task)
}

/// A TCP server that sends `answer` forever (an endless line), never a newline.
pub async fn endless_server() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let chunk = [b'A'; 4096];
                let _ = conn.write_all(b"HTTP/1.1 200 ").await;
                while conn.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    (addr, task)
}

/// A port on 127.0.0.1 that nothing listens on, outside the ephemeral
/// range so no outgoing connection takes it meanwhile.
pub fn free_port() -> u16 {
    lockstep_tests::free_loopback_port().unwrap()
}
