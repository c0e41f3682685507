//! A daemon's metrics endpoint on its own listener (`[metrics] listen`):
//!
//! ```text
//! GET /metrics   200, the registry in the format the scraper asks for
//! GET /healthz   200 "ok": the process is up and answering
//! GET /readyz    200 "ready" | 503 "<why not>": it can do its job now
//! ```
//!
//! Must never: block on anything but the registry's own locks, or serve
//! anything but these three paths.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::{Format, encode};

/// What `/readyz` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Not ready, and why (shown to whoever asks).
    NotReady(String),
}

/// Brings gauges that are read, not counted (agents reachable now), up to
/// date just before a scrape encodes them.
pub type BeforeScrape = Arc<dyn Fn() + Send + Sync>;

/// What an endpoint serves.
#[derive(Clone)]
pub struct Endpoint {
    pub registry: Arc<Registry>,
    pub readiness: watch::Receiver<Readiness>,
    pub before_scrape: Option<BeforeScrape>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("readiness", &*self.readiness.borrow())
            .finish_non_exhaustive()
    }
}

/// Serves the three paths on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    endpoint: Endpoint,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(endpoint);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(endpoint): State<Endpoint>, headers: HeaderMap) -> Response {
    if let Some(refresh) = &endpoint.before_scrape {
        refresh();
    }
    let accept = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok());
    let format = Format::negotiate(accept);
    match encode(&endpoint.registry, format) {
        Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {e}\n"),
        )
            .into_response(),
    }
}

async fn readyz(State(endpoint): State<Endpoint>) -> Response {
    match &*endpoint.readiness.borrow() {
        Readiness::Ready => (StatusCode::OK, "ready\n".to_owned()).into_response(),
        Readiness::NotReady(why) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str, accept: &str) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let content_type = head
            .lines()
            .find_map(|l| l.strip_prefix("content-type: "))
            .unwrap_or_default()
            .to_owned();
        (code, content_type, body.to_owned())
    }

    #[tokio::test]
    async fn metrics_health_and_readiness_are_served() {
        let mut registry = Registry::default();
        let pushes = Counter::<u64>::default();
        registry.register("lockstep_pushes", "Pushes", pushes.clone());
        pushes.inc();
        let (ready, readiness) = watch::channel(Readiness::NotReady("no etcd session".into()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let scrapes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = scrapes.clone();
        let endpoint = Endpoint {
            registry: Arc::new(registry),
            readiness,
            before_scrape: Some(Arc::new(move || {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })),
        };
        let server = tokio::spawn(serve(listener, endpoint, async {
            let _ = stopped.await;
        }));

        let (code, kind, body) = get(addr, "/metrics", "*/*").await;
        assert_eq!(code, 200);
        assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
        assert!(body.contains("lockstep_pushes_total 1\n"), "{body}");
        let (_, kind, body) = get(addr, "/metrics", "application/openmetrics-text").await;
        assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert_eq!(scrapes.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert_eq!(get(addr, "/healthz", "*/*").await.0, 200);
        let (code, _, body) = get(addr, "/readyz", "*/*").await;
        assert_eq!((code, body.as_str()), (503, "no etcd session\n"));
        ready.send_replace(Readiness::Ready);
        assert_eq!(get(addr, "/readyz", "*/*").await.0, 200);

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
