//! The web view (`[web] listen`): one page of the fleet, the current
//! deployment's live timeline, history and locks, served by every
//! coordinator; read-only but for the operator actions in `actions.rs`.
//!
//! ```text
//! GET /                       the page (index.html, app.js, style.css: embedded, no build step)
//! GET /api/fleet              FleetView (memory)            ─┐
//! GET /api/deployments        active + newest finished (etcd) ├─ JSON, each etcd read bounded at 3 s;
//!                             (the active ones with           │  the page counts gates down itself
//!                             Engine::waits: gates, deadlines)│
//! GET /api/history            per service (etcd)              │
//! GET /api/locks              locks and budget slots (etcd)  ─┘
//! GET /api/releases/show?service=S&release=NAME   a release's manifest and files ─┐ `release_read.rs`, as
//! GET /api/releases/diff?service=S&from=A&to=B    what changed from A to B        ─┘ ShowRelease/DiffReleases
//! GET /api/deployments/ID/events   SSE: the journal's events, the stream
//!                             `lockstep watch` reads (`forward_events`), `id:` = seq,
//!                             resumed after `Last-Event-ID`; at most MAX_EVENT_STREAMS open
//! POST /api/deployments/ID/{pause,resume,approve,abort}   with a reason, only for
//!                             a caller the CLI's policy lets operate, never under [tls]
//!                             (`actions.rs`)
//! ```
//!
//! Owns the HTTP routes and their bounds. Must never: change the fleet
//! but through an action `actions::permit` allowed, serve an unbounded
//! read, or decide what a page shows (`view.rs` does, without IO).

pub mod actions;
pub mod view;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

use crate::bounds;
use crate::journal::JournalError;
use crate::leader::{Coordinator, NotServed};
use crate::release_read::{self, ReadError};
use crate::service::ETCD_ANSWER_DEADLINE;
use actions::{Action, ActionRefused};
use view::{BadQuery, DeploymentView, EventView, FleetGrid, LockView, WaitView};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// Live event streams one coordinator serves at once: enough for an
/// incident's room of people with a few tabs each; past it a page is told
/// to close a tab (or use `lockstep watch`), not queued.
pub const MAX_EVENT_STREAMS: usize = 64;
/// A request line longer than this is refused before any handler runs:
/// every query the page sends is a few dozen bytes.
const MAX_URI_BYTES: usize = 1024;
/// Active deployments one request reads (one etcd read each): there is at
/// most one per service.
const MAX_ACTIVE_READ: usize = 64;
/// How soon a browser reconnects a broken event stream (the SSE `retry:`).
const RECONNECT_AFTER: Duration = Duration::from_secs(2);
/// Events buffered between etcd and one slow browser.
const STREAM_BUFFER: usize = 64;

/// Why a request was not answered; each says what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("bad query: {0}")]
    Query(#[from] BadQuery),
    #[error("{0}")]
    NotFound(String),
    #[error("{what}: etcd did not answer within {ETCD_ANSWER_DEADLINE:?}; the page retries")]
    Deadline { what: &'static str },
    #[error("{what}")]
    Etcd {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "this coordinator already serves {MAX_EVENT_STREAMS} live timelines: close a tab, open another coordinator's page, or use `lockstep watch`"
    )]
    TooManyStreams,
    #[error("the request is longer than {MAX_URI_BYTES} bytes")]
    TooLong,
    #[error("{0}")]
    Action(#[source] ActionRefused),
    #[error("{0}")]
    Command(#[source] NotServed),
    #[error(
        "etcd did not answer within {ETCD_ANSWER_DEADLINE:?}; the action may still take effect once it does: check the timeline before trying again"
    )]
    CommandDeadline,
    #[error("{0}")]
    Release(#[source] ReadError),
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Query(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Deadline { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Etcd { .. } => StatusCode::BAD_GATEWAY,
            Self::TooManyStreams => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooLong => StatusCode::URI_TOO_LONG,
            Self::Action(
                ActionRefused::Tls
                | ActionRefused::Role(_)
                | ActionRefused::Header(_)
                | ActionRefused::Site { .. },
            ) => StatusCode::FORBIDDEN,
            Self::Action(_) => StatusCode::BAD_REQUEST,
            Self::Command(NotServed::Invalid(_)) => StatusCode::BAD_REQUEST,
            Self::Command(NotServed::NotFound(_)) => StatusCode::NOT_FOUND,
            Self::Command(NotServed::NotLeader { .. } | NotServed::Refused(_)) => {
                StatusCode::CONFLICT
            }
            Self::Command(NotServed::Internal { .. }) => StatusCode::BAD_GATEWAY,
            Self::CommandDeadline => StatusCode::GATEWAY_TIMEOUT,
            Self::Release(err) if err.is_bad_name() => StatusCode::BAD_REQUEST,
            Self::Release(err) if err.is_unknown() => StatusCode::NOT_FOUND,
            Self::Release(ReadError::Busy | ReadError::NotHere { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Release(ReadError::Deadline) => StatusCode::GATEWAY_TIMEOUT,
            Self::Release(_) => StatusCode::BAD_GATEWAY,
        };
        if status.is_server_error() {
            tracing::warn!(error = %cli::Chain(&self), "web view request failed");
        }
        (status, cli::Chain(&self).to_string()).into_response()
    }
}

fn etcd_error<E>(what: &'static str) -> impl FnOnce(E) -> WebError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |source| WebError::Etcd {
        what,
        source: Box::new(source),
    }
}

/// `read`'s answer, or [`WebError::Deadline`] after `ETCD_ANSWER_DEADLINE`.
async fn bounded<T>(
    what: &'static str,
    read: impl Future<Output = Result<T, WebError>>,
) -> Result<T, WebError> {
    tokio::time::timeout(ETCD_ANSWER_DEADLINE, read)
        .await
        .unwrap_or(Err(WebError::Deadline { what }))
}

#[derive(Debug, Clone)]
struct WebState {
    coordinator: Arc<Coordinator>,
    streams: Arc<Semaphore>,
    stopping: watch::Receiver<bool>,
}

/// Serves the web view on `listener` until `stopping` turns true; live
/// event streams end then, so the browser reconnects elsewhere.
pub async fn serve(
    listener: TcpListener,
    coordinator: Arc<Coordinator>,
    stopping: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut stop = stopping.clone();
    let state = WebState {
        coordinator,
        streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
        stopping,
    };
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}

fn router(state: WebState) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/assets/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/api/fleet", get(fleet))
        .route("/api/deployments", get(deployments))
        .route("/api/history", get(history))
        .route("/api/locks", get(locks))
        .route("/api/releases/show", get(show_release))
        .route("/api/releases/diff", get(diff_releases))
        .route("/api/deployments/{id}/events", get(events))
        .route("/api/deployments/{id}/{verb}", axum::routing::post(act))
        .layer(middleware::from_fn(bounded_request))
        .with_state(state)
}

/// Refuses an overlong request line, and marks every answer as not to be
/// cached, sniffed or framed, with scripts only from this page.
async fn bounded_request(request: Request, next: Next) -> Response {
    let length = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    let mut response = if length > MAX_URI_BYTES {
        WebError::TooLong.into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "cannot encode a web view answer");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the answer: {err}"),
            )
                .into_response()
        }
    }
}

async fn fleet(State(state): State<WebState>) -> Response {
    json(&FleetGrid::of(&state.coordinator.fleet.agents("")))
}

#[derive(Debug, Serialize)]
struct Deployments {
    /// What the timeline follows: the newest deployment, running or not.
    current: Option<DeploymentView>,
    active: Vec<DeploymentView>,
    /// Whether this caller may pause, resume, approve and abort here.
    can_operate: bool,
    /// This coordinator's clock: the page counts down to a gate's
    /// `until_unix_ms` from it, whatever the browser's clock says.
    server_now_unix_ms: i64,
}

async fn deployments(
    State(state): State<WebState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
) -> Result<Response, WebError> {
    let coordinator = &state.coordinator;
    let (active, finished) = bounded("reading the deployments", async {
        let ids = coordinator
            .journal
            .active()
            .await
            .map_err(etcd_error("cannot list the active deployments"))?;
        let mut active = Vec::new();
        for id in ids.iter().take(MAX_ACTIVE_READ) {
            match coordinator.record(id).await {
                Ok(record) => {
                    let mut view = DeploymentView::of(&record.wire());
                    view.waits = record.waits.iter().map(WaitView::of).collect();
                    active.push(view);
                }
                // Ended between the two reads: the history has it.
                Err(NotServed::NotFound(_)) => {}
                Err(err) => return Err(etcd_error("cannot read an active deployment")(err)),
            }
        }
        let mut finished = Vec::new();
        for service in services(coordinator) {
            let newest = newest_finished(coordinator, &service, 1).await?;
            finished.extend(newest.into_iter().map(|d| DeploymentView::of(&d)));
        }
        Ok((active, finished))
    })
    .await?;
    let latest = finished.iter().max_by_key(|d| d.created_unix_ms);
    let current = view::current(&active, latest).cloned();
    let config = &coordinator.config;
    let can_operate =
        actions::permit(config.tls.is_some(), &config.access, peer, Action::Pause).is_ok();
    Ok(json(&Deployments {
        current,
        active,
        can_operate,
        server_now_unix_ms: crate::now_unix_ms(),
    }))
}

/// The services the fleet knows (assigned or reported), at most
/// `MAX_HISTORY_SERVICES`.
fn services(coordinator: &Coordinator) -> Vec<String> {
    let mut names = std::collections::BTreeSet::new();
    for agent in coordinator.fleet.agents("") {
        if let Some(identity) = &agent.identity {
            names.extend(identity.services.iter().cloned());
        }
        names.extend(agent.services.iter().map(|s| s.service.clone()));
    }
    names.into_iter().take(view::MAX_HISTORY_SERVICES).collect()
}

async fn newest_finished(
    coordinator: &Coordinator,
    service: &str,
    limit: usize,
) -> Result<Vec<pb::Deployment>, WebError> {
    let entries = coordinator
        .journal
        .history(service, limit)
        .await
        .map_err(etcd_error::<JournalError>("cannot read the history"))?;
    Ok(entries
        .into_iter()
        .map(|(_, record)| record.wire())
        .collect())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    service: Option<String>,
    limit: Option<String>,
}

#[derive(Debug, Serialize)]
struct ServiceHistory {
    service: String,
    deployments: Vec<DeploymentView>,
}

async fn history(
    State(state): State<WebState>,
    Query(query): Query<HistoryQuery>,
) -> Result<Response, WebError> {
    let limit = view::history_limit(query.limit.as_deref())?;
    let services = match query.service.filter(|s| !s.is_empty()) {
        Some(service) => {
            bounds::service(&service).map_err(BadQuery::Malformed)?;
            vec![service]
        }
        None => services(&state.coordinator),
    };
    let out = bounded("reading the history", async {
        let mut out = Vec::new();
        for service in services {
            let deployments = newest_finished(&state.coordinator, &service, limit).await?;
            out.push(ServiceHistory {
                service,
                deployments: deployments.iter().map(DeploymentView::of).collect(),
            });
        }
        Ok(out)
    })
    .await?;
    Ok(json(&out))
}

async fn locks(State(state): State<WebState>) -> Result<Response, WebError> {
    let locks = bounded("listing the locks", async {
        crate::service::list_locks(&state.coordinator.client, "")
            .await
            .map_err(etcd_error("cannot list the locks"))
    })
    .await?;
    let now = crate::now_unix_ms();
    let views: Vec<LockView> = locks.iter().map(|l| LockView::of(l, now)).collect();
    Ok(json(&views))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShowQuery {
    service: Option<String>,
    release: String,
}

#[derive(Debug, Serialize)]
struct ShownRelease {
    release: crate::release_diff::ReleaseName,
    manifest_toml: String,
    files: Vec<release::contents::FileContent>,
    files_truncated: bool,
}

/// A release's manifest and files: what `lockstep release show` prints.
async fn show_release(
    State(state): State<WebState>,
    Query(query): Query<ShowQuery>,
) -> Result<Response, WebError> {
    let service = query.service.unwrap_or_default();
    bounds::service_filter(&service).map_err(BadQuery::Malformed)?;
    let (entry, contents) = release_read::show(&state.coordinator.depot, &service, &query.release)
        .await
        .map_err(WebError::Release)?;
    Ok(json(&ShownRelease {
        release: crate::release_diff::ReleaseName {
            service: entry.service,
            version: entry.version,
            digest: entry.digest,
        },
        manifest_toml: crate::wire::manifest_text(&contents),
        files: contents.files,
        files_truncated: contents.files_truncated,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffQuery {
    service: Option<String>,
    from: String,
    to: String,
}

/// What changed from one release to another: the comparison
/// `lockstep release diff` prints (`release_diff::diff`).
async fn diff_releases(
    State(state): State<WebState>,
    Query(query): Query<DiffQuery>,
) -> Result<Response, WebError> {
    let service = query.service.unwrap_or_default();
    bounds::service_filter(&service).map_err(BadQuery::Malformed)?;
    let diff = release_read::diff(&state.coordinator.depot, &service, &query.from, &query.to)
        .await
        .map_err(WebError::Release)?;
    Ok(json(&diff))
}

/// Pauses, resumes, approves or aborts deployment `id` for a caller the
/// CLI's policy lets operate (`actions.rs`), recording who and why.
async fn act(
    State(state): State<WebState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Path((id, verb)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, WebError> {
    bounds::deployment_id(&id).map_err(BadQuery::Malformed)?;
    let action = Action::parse(&verb).ok_or_else(|| {
        WebError::NotFound(format!(
            "no action {:?}: pause, resume, approve or abort",
            verb.chars().take(40).collect::<String>()
        ))
    })?;
    let coordinator = &state.coordinator;
    let config = &coordinator.config;
    let granted = actions::permit(config.tls.is_some(), &config.access, peer, action)
        .map_err(|refused| {
            tracing::warn!(%peer, action = action.verb(), deployment = id, reason = %refused, "web view action refused");
            WebError::Action(refused)
        })?;
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    actions::same_site(text(header::HOST), text(header::ORIGIN)).map_err(WebError::Action)?;
    let header = headers
        .get(actions::ACTION_HEADER)
        .map(HeaderValue::as_bytes);
    let body = actions::checked_body(action, header, &body).map_err(WebError::Action)?;
    bounds::cluster_filter(&body.cluster).map_err(BadQuery::Malformed)?;
    let said = format!("{} (web view): {}", granted.who, body.reason.trim());
    let cluster = (action == Action::Approve).then_some(body.cluster.as_str());
    let deployment = tokio::time::timeout(
        ETCD_ANSWER_DEADLINE,
        coordinator.command(&id, action.command(), cluster, said),
    )
    .await
    .map_err(|_| WebError::CommandDeadline)?
    .map_err(WebError::Command)?;
    tracing::info!(%peer, action = action.verb(), deployment = id, who = granted.who, "web view action taken");
    Ok(json(&DeploymentView::of(&deployment)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    from: Option<String>,
}

/// The deployment's events as Server-Sent Events, from the first (or
/// after the browser's `Last-Event-ID`), ending after `finished`.
async fn events(
    State(state): State<WebState>,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, WebError> {
    bounds::deployment_id(&id).map_err(BadQuery::Malformed)?;
    let last = match headers.get("last-event-id") {
        Some(value) => Some(value.to_str().map_err(|_| BadQuery::Seq {
            field: "Last-Event-ID",
            value: "(not text)".to_owned(),
        })?),
        None => None,
    };
    let from = view::first_seq(last, query.from.as_deref())?;
    let permit = state
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| WebError::TooManyStreams)?;
    let coordinator = state.coordinator.clone();
    let record = bounded("reading the deployment", async {
        coordinator.record(&id).await.map_err(|err| match err {
            NotServed::NotFound(m) => WebError::NotFound(m),
            other => etcd_error("cannot read the deployment")(other),
        })
    })
    .await?;
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let journal = coordinator.journal.clone();
    let mut stopping = state.stopping.clone();
    tokio::spawn(async move {
        let closed = tx.clone();
        tokio::select! {
            () = crate::service::forward_events(journal, id, record.service, from, tx.clone()) => {}
            // The browser went away: stop watching etcd for it now.
            () = closed.closed() => {}
            () = async { let _ = stopping.wait_for(|s| *s).await; } => {
                let _ = tx.send(Err(crate::service::shutting_down())).await;
            }
        }
    });
    let stream = ReceiverStream::new(rx).map(move |item| {
        // The slot is held as long as the browser's stream is open.
        let _slot = &permit;
        Ok(sse_event(item))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn sse_event(item: Result<pb::DeploymentEvent, tonic::Status>) -> Event {
    match item {
        Ok(event) => {
            let view = EventView::of(&event);
            match serde_json::to_string(&view) {
                Ok(data) => Event::default()
                    .id(event.seq.to_string())
                    .event("deployment")
                    .retry(RECONNECT_AFTER)
                    .data(data),
                Err(err) => Event::default()
                    .event("interrupted")
                    .data(format!("cannot encode event {}: {err}", event.seq)),
            }
        }
        // The stream ends after this; the browser reconnects with the
        // last seq it saw.
        Err(status) => Event::default()
            .event("interrupted")
            .retry(RECONNECT_AFTER)
            .data(status.message().replace('\n', " ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--name: #rrggbb;` declarations of the page's style sheet.
    fn colour(name: &str) -> [f64; 3] {
        let decl = format!("--{name}: #");
        let at = STYLE_CSS.find(&decl).unwrap() + decl.len();
        let hex = &STYLE_CSS[at..at + 6];
        let channel = |i: usize| {
            let c = f64::from(u8::from_str_radix(&hex[i..i + 2], 16).unwrap()) / 255.0;
            if c <= 0.039_28 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        };
        [channel(0), channel(2), channel(4)]
    }

    /// WCAG 2 contrast ratio of two colours.
    fn contrast(a: &str, b: &str) -> f64 {
        let luminance = |[r, g, b]: [f64; 3]| 0.2126 * r + 0.7152 * g + 0.0722 * b;
        let (x, y) = (luminance(colour(a)), luminance(colour(b)));
        (x.max(y) + 0.05) / (x.min(y) + 0.05)
    }

    /// Every text colour on the background it is shown on reads at WCAG
    /// AA (4.5:1); `--nocapture` prints each ratio.
    #[test]
    fn the_page_text_contrast_is_at_least_wcag_aa() {
        for (text, background) in [
            ("text", "page"),
            ("text", "panel"),
            ("muted", "page"),
            ("muted", "panel"),
            ("link", "page"),
            ("ok", "ok-bg"),
            ("warn", "warn-bg"),
            ("bad", "bad-bg"),
            ("bad", "page"),
            ("off", "off-bg"),
            ("add", "add-bg"),
            ("del", "del-bg"),
        ] {
            let ratio = contrast(text, background);
            println!("--{text} on --{background}: {ratio:.2}:1");
            assert!(ratio >= 4.5, "--{text} on --{background} is {ratio:.2}:1");
        }
    }

    /// The page names no resource outside this coordinator: it works
    /// without internet, under `default-src 'self'`.
    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("style.css", STYLE_CSS),
        ] {
            for scheme in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(scheme), "{name} refers to {scheme}");
            }
        }
        assert!(INDEX_HTML.contains("src=\"/assets/app.js\""));
        assert!(INDEX_HTML.contains("href=\"/assets/style.css\""));
    }
}
