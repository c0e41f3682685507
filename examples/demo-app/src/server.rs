//! The HTTP routes and the health state they report.
//!
//! Owns: `/healthz`, `/version`, `/publish`, `/metrics` (see `metrics`),
//! and [`Health`], which is computed
//! from the time since serving began plus the stopping flag (so it needs no
//! timers and is testable with any instant).
//!
//! ```text
//! GET  /healthz   200 "ok\n" | 503 "<reason>\n"
//! GET  /version   200 {"version","config_digest","pid"}
//! POST /publish   200 {"published","by_pid","version"} | 400 | 500 | 503 {"error"}
//! GET  /metrics   200 OpenMetrics text
//! ```
//!
//! Must never: exit the process, read the config file, or touch sockets
//! other than through the router it returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use crate::config::Faults;
use crate::metrics::{self, AppMetrics};

/// Longest artificial delay `/publish?delay_ms=` accepts; enough to hold a
/// request in flight across a stop, short enough to not wedge a test.
pub const MAX_PUBLISH_DELAY: Duration = Duration::from_secs(60);

/// Whether the instance should receive traffic, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    NotReady { remaining: Duration },
    Unhealthy { after: Duration },
    Stopping,
}

impl Health {
    /// The `/healthz` body for a non-ok state (and "ok").
    pub fn reason(&self) -> String {
        match self {
            Health::Ok => "ok".into(),
            Health::NotReady { remaining } => {
                format!("not ready: ready in {} ms", remaining.as_millis())
            }
            Health::Unhealthy { after } => format!(
                "unhealthy: unhealthy_after_ms={} has passed",
                after.as_millis()
            ),
            Health::Stopping => "stopping".into(),
        }
    }
}

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub version: String,
    pub config_digest: String,
    pub message_prefix: String,
    pub pid: u32,
    pub faults: Faults,
    /// When serving began; the fault durations count from here.
    pub started: Instant,
    stopping: AtomicBool,
    /// `/publish` requests so far: `faults.error_percent` picks from it.
    published: AtomicU64,
}

impl AppState {
    pub fn new(
        version: String,
        config_digest: String,
        message_prefix: String,
        faults: Faults,
        started: Instant,
    ) -> Self {
        Self {
            version,
            config_digest,
            message_prefix,
            pid: std::process::id(),
            faults,
            started,
            stopping: AtomicBool::new(false),
            published: AtomicU64::new(0),
        }
    }

    /// Whether the next `/publish` is one `faults.error_percent` fails:
    /// request k fails when k × percent / 100 passes a whole number, so
    /// the failures are spread evenly (20 % fails every fifth).
    fn next_publish_fails(&self) -> bool {
        let k = self.published.fetch_add(1, Ordering::Relaxed) + 1;
        let p = u64::from(self.faults.error_percent);
        k * p / 100 != (k - 1) * p / 100
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Health at `now`. Stopping outranks unhealthy, which outranks not ready.
    pub fn health_at(&self, now: Instant) -> Health {
        let elapsed = now.saturating_duration_since(self.started);
        if self.stopping.load(Ordering::SeqCst) {
            return Health::Stopping;
        }
        if let Some(after) = self.faults.unhealthy_after {
            if elapsed >= after {
                return Health::Unhealthy { after };
            }
        }
        if elapsed < self.faults.ready_after {
            return Health::NotReady {
                remaining: self.faults.ready_after - elapsed,
            };
        }
        Health::Ok
    }

    pub fn health(&self) -> Health {
        self.health_at(Instant::now())
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let metrics = Arc::new(AppMetrics::default());
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/version", get(version))
        .route("/publish", post(publish))
        .with_state(state);
    let exposition = Router::new()
        .route("/metrics", get(metrics::exposition))
        .with_state(metrics.clone());
    routes
        .merge(exposition)
        .route_layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::track,
        ))
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    match state.health() {
        Health::Ok => (StatusCode::OK, "ok\n").into_response(),
        other => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", other.reason()),
        )
            .into_response(),
    }
}

async fn version(State(state): State<Arc<AppState>>) -> Response {
    Json(json!({
        "version": state.version,
        "config_digest": state.config_digest,
        "pid": state.pid,
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
struct PublishQuery {
    message: Option<String>,
    delay_ms: Option<u64>,
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Echoes the message (request body, or `?message=` when the body is empty)
/// with the configured prefix. `?delay_ms=N` holds the request N ms first.
/// Not-ready and stopping instances still do the work (a warming or draining
/// instance that shares a socket must not turn requests into errors);
/// unhealthy ones refuse it with 503, as a broken instance would.
async fn publish(
    State(state): State<Arc<AppState>>,
    Query(query): Query<PublishQuery>,
    body: Bytes,
) -> Response {
    if let health @ Health::Unhealthy { .. } = state.health() {
        return error(StatusCode::SERVICE_UNAVAILABLE, health.reason());
    }
    if state.next_publish_fails() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "injected error (faults.error_percent = {})",
                state.faults.error_percent
            ),
        );
    }
    let message = if body.is_empty() {
        match query.message {
            Some(m) if !m.is_empty() => m,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "no message: send it as the request body or as ?message=".into(),
                );
            }
        }
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(m) => m,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "the message (request body) is not valid UTF-8".into(),
                );
            }
        }
    };
    if let Some(ms) = query.delay_ms {
        let delay = Duration::from_millis(ms);
        if delay > MAX_PUBLISH_DELAY {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "delay_ms={ms} is more than {}",
                    MAX_PUBLISH_DELAY.as_millis()
                ),
            );
        }
        tracing::info!(delay_ms = ms, "publish: holding the request");
        tokio::time::sleep(delay).await;
    }
    tracing::debug!(len = message.len(), "published");
    Json(json!({
        "published": format!("{}{}", state.message_prefix, message),
        "by_pid": state.pid,
        "version": state.version,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(faults: Faults, started: Instant) -> AppState {
        AppState::new(
            "1".into(),
            "sha256:x".into(),
            String::new(),
            faults,
            started,
        )
    }

    #[test]
    fn health_follows_the_fault_timeline() {
        let t0 = Instant::now();
        let s = state(
            Faults {
                ready_after: Duration::from_millis(100),
                unhealthy_after: Some(Duration::from_millis(300)),
                ..Faults::default()
            },
            t0,
        );
        assert_eq!(
            s.health_at(t0 + Duration::from_millis(40)),
            Health::NotReady {
                remaining: Duration::from_millis(60)
            }
        );
        assert_eq!(s.health_at(t0 + Duration::from_millis(100)), Health::Ok);
        assert_eq!(
            s.health_at(t0 + Duration::from_millis(300)),
            Health::Unhealthy {
                after: Duration::from_millis(300)
            }
        );
        s.set_stopping();
        assert_eq!(
            s.health_at(t0 + Duration::from_millis(300)),
            Health::Stopping
        );
    }

    #[test]
    fn error_percent_fails_that_share_of_publishes_evenly() {
        let s = state(
            Faults {
                error_percent: 20,
                ..Faults::default()
            },
            Instant::now(),
        );
        let fails: Vec<bool> = (0..10).map(|_| s.next_publish_fails()).collect();
        assert_eq!(
            fails,
            [
                false, false, false, false, true, false, false, false, false, true
            ]
        );
        let none = state(Faults::default(), Instant::now());
        assert!((0..100).all(|_| !none.next_publish_fails()));
    }

    #[test]
    fn no_faults_is_healthy_at_once() {
        let t0 = Instant::now();
        assert_eq!(state(Faults::default(), t0).health_at(t0), Health::Ok);
    }
}
