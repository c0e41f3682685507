//! A minimal HTTP/1.1 client for tests, and `Poller`: a client that hits a
//! service the whole time a test changes it and counts every failure.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// A request the poller or a test counts as failed if it takes longer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One request with `Connection: close`; returns status and body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send to {addr}: {e}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("read from {addr}: {e}"))?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| format!("no status line from {addr}: {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{method} {path} on {addr} timed out"))?
}

/// What a poller saw.
#[derive(Debug, Clone, Default)]
pub struct PollReport {
    pub succeeded: u64,
    pub failed: u64,
    /// The first few failures, for the assertion message.
    pub failures: Vec<String>,
    /// Every distinct version that answered, in order of first answer.
    pub versions: Vec<String>,
}

/// Sends `POST /publish` to `addr` in a loop until stopped.
#[derive(Debug)]
pub struct Poller {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<PollReport>>,
    task: tokio::task::JoinHandle<()>,
}

impl Poller {
    pub fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(PollReport::default()));
        let task = tokio::spawn({
            let stop = stop.clone();
            let report = report.clone();
            async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let outcome = request(addr, "POST", "/publish", &format!("message-{n}")).await;
                    let mut report = report.lock().await;
                    match outcome {
                        Ok((200, body)) => {
                            report.succeeded += 1;
                            if let Some(version) = json_field(&body, "version") {
                                if !report.versions.contains(&version) {
                                    report.versions.push(version);
                                }
                            }
                        }
                        Ok((status, body)) => {
                            report.failed += 1;
                            if report.failures.len() < 10 {
                                report.failures.push(format!("status {status}: {body}"));
                            }
                        }
                        Err(err) => {
                            report.failed += 1;
                            if report.failures.len() < 10 {
                                report.failures.push(err);
                            }
                        }
                    }
                }
            }
        });
        Self { stop, report, task }
    }

    pub async fn snapshot(&self) -> PollReport {
        self.report.lock().await.clone()
    }

    pub async fn stop(self) -> PollReport {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.report.lock().await.clone()
    }
}

/// A string field of a flat JSON object, without a JSON dependency.
pub fn json_field(body: &str, field: &str) -> Option<String> {
    let key = format!("\"{field}\":");
    let rest = body.split_once(&key)?.1.trim_start();
    let rest = rest.strip_prefix('"')?;
    rest.split_once('"').map(|(value, _)| value.to_owned())
}
