//! A scripted `CoordinatorService` on 127.0.0.1:0 (only `FetchRelease` and
//! `Report` do anything), a real release bundle, and polling with deadlines.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::v1 as pb;
use proto::v1::coordinator_service_server::{CoordinatorService, CoordinatorServiceServer};
use release::ReleaseDigest;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub const MANIFEST: &str = r#"[release]
service = "demo"
version = "1.0.0"

[run]
command = ["bin/app"]

[[listen]]
name = "http"
address = "127.0.0.1:8080"

[readiness]
http = "http://127.0.0.1:8080/healthz"
"#;

/// Bytes per chunk: small, so a bundle takes several chunks.
pub const CHUNK: usize = 4096;

/// A built bundle: its bytes and digest.
pub struct Bundle {
    pub bytes: Vec<u8>,
    pub digest: ReleaseDigest,
}

/// Builds a real release (manifest, executable, some incompressible data)
/// with the `release` crate.
pub fn bundle(dir: &Path) -> Bundle {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::write(tree.join("release.toml"), MANIFEST).unwrap();
    let app = tree.join("bin/app");
    std::fs::write(&app, b"#!/bin/sh\nexec sleep 1000\n").unwrap();
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let noise: Vec<u8> = (0..5 * CHUNK).map(|_| rng.u8(..)).collect();
    std::fs::write(tree.join("data.bin"), noise).unwrap();
    let out = dir.join("demo.lsr");
    let built = release::bundle::build_file(&tree, &out, None).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    assert!(
        bytes.len() > 3 * CHUNK,
        "bundle too small to chunk: {}",
        bytes.len()
    );
    Bundle {
        bytes,
        digest: built.digest,
    }
}

/// What the fake does with a `FetchRelease`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    Whole,
    /// The first request gets one chunk, then the stream breaks.
    BreakFirstAttempt,
    /// Every byte in place but one flipped.
    Corrupt,
    NotFound,
    /// Announces a size no disk has (an exbibyte), then sends the bundle.
    Oversized,
}

#[derive(Debug)]
pub struct Fake {
    bundle: Vec<u8>,
    digest: String,
    serve: Serve,
    /// The first report stream is dropped after this many reports.
    drop_first_stream_after: usize,
    status_interval_ms: u64,
    pub fetches: Arc<Mutex<Vec<pb::FetchReleaseRequest>>>,
    pub streams: Arc<Mutex<Vec<Vec<pb::AgentReport>>>>,
    /// Report streams that have ended, whichever side ended them.
    ended: Arc<AtomicUsize>,
}

impl Fake {
    pub fn new(bundle: &Bundle, serve: Serve) -> Self {
        Self {
            bundle: bundle.bytes.clone(),
            digest: bundle.digest.to_string(),
            serve,
            drop_first_stream_after: usize::MAX,
            status_interval_ms: 0,
            fetches: Arc::default(),
            streams: Arc::default(),
            ended: Arc::default(),
        }
    }

    /// For report tests: no bundle.
    pub fn reports(drop_first_stream_after: usize, status_interval_ms: u64) -> Self {
        Self {
            bundle: Vec::new(),
            digest: String::new(),
            serve: Serve::NotFound,
            drop_first_stream_after,
            status_interval_ms,
            fetches: Arc::default(),
            streams: Arc::default(),
            ended: Arc::default(),
        }
    }

    pub fn offsets(&self) -> Vec<u64> {
        self.fetches
            .lock()
            .unwrap()
            .iter()
            .map(|f| f.offset)
            .collect()
    }

    pub fn ended(&self) -> usize {
        self.ended.load(Ordering::SeqCst)
    }

    pub fn streams(&self) -> Vec<Vec<pb::AgentReport>> {
        self.streams.lock().unwrap().clone()
    }
}

/// A fake serving on a loopback port; dropping it stops the server.
pub struct Running {
    pub url: String,
    pub fake: Arc<Fake>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub async fn serve(fake: Fake) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let fake = Arc::new(fake);
    let service = CoordinatorServiceServer::from_arc(fake.clone());
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    Running { url, fake, server }
}

/// A URL where nothing listens (bound, then closed).
pub async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

/// Polls `done` until it holds; fails the test after `within`.
pub async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every file under `dir` (recursively), for "nothing left behind" checks.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
            out.push(path);
        } else {
            out.push(path);
        }
    }
    out
}

/// Acks every report; drops the first stream after `drop_after` reports.
async fn acknowledge(
    inbound: &mut tonic::Streaming<pb::AgentReport>,
    streams: &Mutex<Vec<Vec<pb::AgentReport>>>,
    index: usize,
    drop_after: usize,
    interval: u64,
    tx: tokio::sync::mpsc::Sender<Result<pb::ReportAck, Status>>,
) {
    while let Ok(Some(report)) = inbound.message().await {
        let seq = report.seq;
        let count = {
            let mut streams = streams.lock().unwrap();
            streams[index].push(report);
            streams[index].len()
        };
        let ack = pb::ReportAck {
            seq,
            status_interval_ms: interval,
        };
        if tx.send(Ok(ack)).await.is_err() {
            return;
        }
        if index == 0 && count >= drop_after {
            let _ = tx
                .send(Err(Status::unavailable("coordinator restarting (test)")))
                .await;
            return;
        }
    }
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl CoordinatorService for Fake {
    type ReportStream = Boxed<pb::ReportAck>;

    async fn report(
        &self,
        request: Request<tonic::Streaming<pb::AgentReport>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        let mut inbound = request.into_inner();
        let streams = self.streams.clone();
        let index = {
            let mut streams = streams.lock().unwrap();
            streams.push(Vec::new());
            streams.len() - 1
        };
        let (drop_after, interval) = (self.drop_first_stream_after, self.status_interval_ms);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let ended = self.ended.clone();
        tokio::spawn(async move {
            acknowledge(&mut inbound, &streams, index, drop_after, interval, tx).await;
            ended.fetch_add(1, Ordering::SeqCst);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type FetchReleaseStream = Boxed<pb::ReleaseChunk>;

    async fn fetch_release(
        &self,
        request: Request<pb::FetchReleaseRequest>,
    ) -> Result<Response<Self::FetchReleaseStream>, Status> {
        let request = request.into_inner();
        let attempt = {
            let mut fetches = self.fetches.lock().unwrap();
            fetches.push(request.clone());
            fetches.len()
        };
        if self.serve == Serve::NotFound || request.digest != self.digest {
            return Err(Status::not_found(format!("no release {}", request.digest)));
        }
        let mut bytes = self.bundle.clone();
        if self.serve == Serve::Corrupt {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
        }
        let total = if self.serve == Serve::Oversized {
            1 << 60
        } else {
            bytes.len() as u64
        };
        let mut items = Vec::new();
        for start in (request.offset as usize..bytes.len()).step_by(CHUNK) {
            let end = (start + CHUNK).min(bytes.len());
            items.push(Ok(pb::ReleaseChunk {
                offset: start as u64,
                data: bytes[start..end].to_vec(),
                total_size: total,
            }));
            if self.serve == Serve::BreakFirstAttempt && attempt == 1 {
                items.push(Err(Status::unavailable("connection reset (test)")));
                break;
            }
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn push_release(
        &self,
        _: Request<tonic::Streaming<pb::PushReleaseChunk>>,
    ) -> Result<Response<pb::PushReleaseResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn list_releases(
        &self,
        _: Request<pb::ListReleasesRequest>,
    ) -> Result<Response<pb::ListReleasesResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn show_release(
        &self,
        _: Request<pb::ShowReleaseRequest>,
    ) -> Result<Response<pb::ReleaseContents>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn diff_releases(
        &self,
        _: Request<pb::DiffReleasesRequest>,
    ) -> Result<Response<pb::ReleaseDiff>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn plan(
        &self,
        _: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn deploy(
        &self,
        _: Request<pb::DeployRequest>,
    ) -> Result<Response<pb::DeployResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn rollback_target(
        &self,
        _: Request<pb::RollbackServiceRequest>,
    ) -> Result<Response<pb::RollbackTargetResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn restart(
        &self,
        _: Request<pb::RestartServiceRequest>,
    ) -> Result<Response<pb::DeployResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn get_deployment(
        &self,
        _: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    type WatchDeploymentStream = Boxed<pb::DeploymentEvent>;

    async fn watch_deployment(
        &self,
        _: Request<pb::WatchDeploymentRequest>,
    ) -> Result<Response<Self::WatchDeploymentStream>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn pause(
        &self,
        _: Request<pb::PauseRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn resume(
        &self,
        _: Request<pb::ResumeRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn approve(
        &self,
        _: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn abort(
        &self,
        _: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn rollback(
        &self,
        _: Request<pb::RollbackServiceRequest>,
    ) -> Result<Response<pb::DeployResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn list_agents(
        &self,
        _: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn list_locks(
        &self,
        _: Request<pb::ListLocksRequest>,
    ) -> Result<Response<pb::ListLocksResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn break_lock(
        &self,
        _: Request<pb::BreakLockRequest>,
    ) -> Result<Response<pb::BreakLockResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn history(
        &self,
        _: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

/// An agent config with coordinators and `services`, data under `dir`.
pub fn agent_config(dir: &Path, urls: &[&str], services: &str) -> agent::config::AgentConfig {
    let urls = urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "id = \"web-1\"\ncluster = \"eu-1\"\ndata_dir = \"{data}\"\nservices = [{services}]\n\n[control]\nsocket = \"{data}/agent.sock\"\n\n[grpc]\nlisten = \"127.0.0.1:0\"\n\n[coordinator]\nurls = [{urls}]\nfetch_timeout = \"30s\"\n",
        data = dir.display()
    );
    agent::config::AgentConfig::parse(&text, &dir.join("agent.toml")).unwrap()
}
