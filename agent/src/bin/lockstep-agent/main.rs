//! `lockstep-agent`: one per host, run by systemd (`Type=notify`).
//!
//! ```text
//! start: config -> state + release store -> [metrics] endpoint (/readyz:
//!        not ready yet) -> every service runs its current release
//!        (adopting the instances a previous agent left running) -> /readyz
//!        ready (with [etcd]: while the session lives) -> control socket +
//!        AgentService -> report streams to the coordinators -> READY=1,
//!        watchdog
//! SIGTERM/SIGINT: STOPPING=1 -> stop serving APIs -> finish switches in
//!        flight -> leave every instance running, recorded for the next
//!        agent (apps_on_agent_stop = "keep", the default) or stop each
//!        gracefully ("stop") -> end the report streams -> exit 0
//! ```
//!
//! `lockstep-agent __exec-shim` is the process-start shim (see
//! `agent::supervisor::shim`); it is dispatched before anything else runs.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use agent::config::{AgentConfig, AppsOnAgentStop};
use agent::control::{self, Access};
use agent::grpc::AgentGrpc;
use agent::host::Host;
use agent::task::OwnedTask;
use agent::telemetry::{self, AgentMetrics};
use agent::uplink::Uplink;
use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use daemon::ServiceManager;
use proto::v1::agent_service_server::AgentServiceServer;
use tokio::sync::watch;

/// How long the start waits for etcd to confirm the registration: enough
/// for a connect, a lease and a claim with their own deadlines; beyond it
/// the agent starts unchecked (fail static).
const REGISTRATION_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Two workers: the agent's work is mostly waiting; more threads only cost
/// memory on every host.
const WORKER_THREADS: usize = 2;

#[derive(Debug, Parser)]
#[command(
    name = "lockstep-agent",
    version,
    about = "Lockstep's per-host agent",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// The agent's configuration file.
    #[arg(long, default_value = "/etc/lockstep/agent.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a configuration file and exit (0: valid).
    CheckConfig { file: PathBuf },
}

fn main() -> ExitCode {
    if std::env::args_os().nth(1).as_deref() == Some(agent::supervisor::EXEC_SHIM_ARG.as_ref()) {
        return agent::supervisor::run_exec_shim();
    }
    if let Some(code) = cli::generate_if_asked(Cli::command) {
        return code;
    }
    let cli = Cli::parse();
    daemon::logging::init("info");
    match cli.command {
        Some(Command::CheckConfig { file }) => match AgentConfig::load(&file) {
            Ok(config) => {
                let coordinators = config
                    .coordinator
                    .as_ref()
                    .map_or_else(|| "none".to_owned(), |c| c.urls.join(", "));
                let services = if config.services.is_empty() {
                    "none".to_owned()
                } else {
                    config
                        .services
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let tls = config.tls.as_ref().map_or_else(
                    || "off (plain text)".to_owned(),
                    |t| {
                        format!(
                            "on as {}, trusting coordinators {}",
                            t.material.identity(),
                            t.trusted_coordinators.join(", ")
                        )
                    },
                );
                let metrics = config
                    .metrics_listen
                    .map_or_else(|| "off".to_owned(), |a| format!("http://{a}/metrics"));
                println!(
                    "{}: valid (agent {} in cluster {}; services: {services}; coordinators: {coordinators}; tls: {tls}; metrics: {metrics})",
                    file.display(),
                    config.id,
                    config.cluster
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("lockstep-agent: {}", cli::Chain(&err));
                ExitCode::FAILURE
            }
        },
        None => match run(&cli.config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("lockstep-agent: {}", cli::Chain(err.as_ref()));
                ExitCode::FAILURE
            }
        },
    }
}

fn run(config_path: &std::path::Path) -> Result<()> {
    let config = AgentConfig::load(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: AgentConfig) -> Result<()> {
    let manager = ServiceManager::from_env();
    notify(&manager, |m| m.status("starting"));
    let access = Access::new(config.control_group.as_deref())?;
    let grpc_listener = tokio::net::TcpListener::bind(config.grpc_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on grpc.listen {} (is another agent running?)",
                config.grpc_listen
            )
        })?;
    let metrics_listener = bind_metrics(config.metrics_listen).await?;
    let shim = PathBuf::from(agent::supervisor::DEFAULT_SHIM);
    let host = Host::open_with_metrics(config.clone(), shim, AgentMetrics::default()).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let (readiness, metrics_server) = serve_metrics(metrics_listener, &host, stopped());
    // Before any app is touched: an agent configured with a live agent's
    // id must not adopt, start or stop anything.
    if let Some(cluster) = host.cluster() {
        cluster.registered_at_start(REGISTRATION_WAIT).await?;
    }

    for (service, err) in host.reconcile().await {
        tracing::error!(service, error = %err, "service not running after start; fix the release and install again");
    }
    let _readiness = OwnedTask::spawn(track_readiness(host.clone(), readiness));
    let control_listener = control::bind(&config.control_socket, &access).await?;
    let control = tokio::spawn({
        let host = host.clone();
        let shutdown = stopped();
        async move { control::serve(host, access, control_listener, shutdown).await }
    });
    let mut grpc_builder = tonic::transport::Server::builder();
    match &config.tls {
        Some(tls) => {
            grpc_builder = grpc_builder
                .tls_config(tls.material.server_config())
                .context("cannot set up TLS for AgentService ([tls])")?;
            tracing::info!(
                grpc = %config.grpc_listen,
                identity = %tls.material.identity(),
                trusted_coordinators = tls.trusted_coordinators.join(", "),
                "AgentService requires mTLS; commands only from trusted coordinators"
            );
        }
        None => tracing::warn!(
            grpc = %config.grpc_listen,
            "plain-text AgentService: no [tls] configured, so it accepts commands from anyone who can reach its port; fine for a local demo, not for a fleet"
        ),
    }
    if config.etcd.is_none() {
        tracing::warn!(
            grpc = %config.grpc_listen,
            "no [etcd] configured: a coordinator's fencing token cannot be checked against its deployment lock, only against the highest token seen; a forged future token would be taken (agentctl fence reset --force undoes its mark)"
        );
    }
    let grpc = Arc::new(AgentGrpc::new(host.clone()));
    let grpc_server = tokio::spawn({
        let grpc = grpc.clone();
        let shutdown = stopped();
        async move {
            grpc_builder
                .add_service(AgentServiceServer::from_arc(grpc))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                    shutdown,
                )
                .await
        }
    });
    // After AgentService is up: a coordinator that learns of this agent
    // from its registration may call it at once.
    let uplink = config
        .coordinator
        .as_ref()
        .map(|c| Uplink::start(host.clone(), &c.urls));
    let grpc_addr: SocketAddr = config.grpc_listen;
    tracing::info!(agent = %config.id, cluster = %config.cluster, grpc = %grpc_addr, control = %config.control_socket.display(), "agent serving");
    notify(&manager, ServiceManager::ready);
    notify(&manager, |m| m.status("serving"));
    let _watchdog = manager.spawn_watchdog();

    let reason = shutdown_signal().await?;
    tracing::info!(signal = reason, "shutting down");
    notify(&manager, ServiceManager::stopping);
    let _ = stop_tx.send(true);
    grpc.drain().await;
    match config.apps_on_agent_stop {
        // The apps keep serving; the next agent adopts them.
        AppsOnAgentStop::Keep => host.detach_all().await,
        AppsOnAgentStop::Stop => host.stop_all().await,
    }
    // Only now: the coordinators saw the switches in flight end and the
    // instances stop.
    drop(uplink);
    // A graceful server shutdown waits for every open connection to close;
    // a client that never answers must not keep the agent from exiting.
    let mut servers = vec![
        ("control socket", drained(control).await),
        ("AgentService", drained(grpc_server).await),
    ];
    if let Some(server) = metrics_server {
        servers.push(("metrics endpoint", drained(server).await));
    }
    for (name, ended) in servers {
        log_server_end(name, ended);
    }
    Ok(())
}

fn log_server_end(name: &str, ended: Option<Result<()>>) {
    match ended {
        Some(Ok(())) => {}
        Some(Err(err)) => {
            tracing::error!(server = name, error = %err, "server ended with an error")
        }
        None => tracing::warn!(
            server = name,
            after = ?SERVER_DRAIN,
            "a client kept its connection open; exiting without waiting for it"
        ),
    }
}

/// `[metrics] listen`, bound before any app is touched; `None` when unset.
async fn bind_metrics(listen: Option<SocketAddr>) -> Result<Option<tokio::net::TcpListener>> {
    let Some(addr) = listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on metrics.listen {addr} (is another agent or exporter using it?)")
    })?;
    tracing::info!(metrics = %addr, "serving /metrics, /healthz, /readyz");
    Ok(Some(listener))
}

/// Serves the metrics endpoint on `listener` (when configured) until
/// `shutdown`; `/readyz` answers what the returned sender says (not ready
/// until told otherwise).
fn serve_metrics(
    listener: Option<tokio::net::TcpListener>,
    host: &Arc<Host>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (
    watch::Sender<exposition::Readiness>,
    Option<tokio::task::JoinHandle<std::io::Result<()>>>,
) {
    let (readiness, readiness_rx) = watch::channel(telemetry::readiness(false, None));
    let server = listener.map(|listener| {
        let endpoint = metrics_endpoint(host, readiness_rx);
        tokio::spawn(exposition::serve(listener, endpoint, shutdown))
    });
    (readiness, server)
}

/// `/metrics` from the host's registry (its read-at-scrape gauges brought
/// up to date first), `/readyz` from `readiness`.
fn metrics_endpoint(
    host: &Arc<Host>,
    readiness: watch::Receiver<exposition::Readiness>,
) -> exposition::Endpoint {
    let refreshed = Arc::downgrade(host);
    exposition::Endpoint {
        registry: host.metrics().registry(),
        readiness,
        before_scrape: Some(Arc::new(move || {
            if let Some(host) = refreshed.upgrade() {
                host.refresh_gauges();
            }
        })),
    }
}

/// Called once the services are started: ready from now on, with `[etcd]`
/// only while the session lives.
async fn track_readiness(host: Arc<Host>, readiness: watch::Sender<exposition::Readiness>) {
    let Some(cluster) = host.cluster().cloned() else {
        readiness.send_replace(telemetry::readiness(true, None));
        return;
    };
    drop(host);
    let mut sessions = cluster.session_changes();
    loop {
        let alive = cluster.session().is_some();
        readiness.send_if_modified(|r| {
            let now = telemetry::readiness(true, Some(alive));
            let changed = *r != now;
            *r = now;
            changed
        });
        if sessions.changed().await.is_err() {
            return;
        }
    }
}

/// How long the APIs' servers get to close their connections at shutdown.
const SERVER_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// A server task's outcome, or `None` (and the task aborted) when it did
/// not end within [`SERVER_DRAIN`].
async fn drained<E: Into<anyhow::Error>>(
    task: tokio::task::JoinHandle<Result<(), E>>,
) -> Option<Result<()>> {
    let abort = task.abort_handle();
    match tokio::time::timeout(SERVER_DRAIN, task).await {
        Ok(Ok(result)) => Some(result.map_err(Into::into)),
        Ok(Err(err)) => Some(Err(anyhow::Error::from(err).context("server task failed"))),
        Err(_) => {
            abort.abort();
            None
        }
    }
}

fn notify(
    manager: &ServiceManager,
    send: impl FnOnce(&ServiceManager) -> Result<(), daemon::NotifyError>,
) {
    if let Err(err) = send(manager) {
        tracing::warn!(error = %err, "cannot notify the service manager");
    }
}

/// SIGTERM or SIGINT, as one shutdown event.
async fn shutdown_signal() -> Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
