//! `lockstep-coordinator`: serves `CoordinatorService`, campaigns for
//! leadership, and while leading drives every active deployment.
//!
//! ```text
//! start: config -> etcd -> release depot -> bind listen (and [metrics]
//!        listen, [web] listen) -> serve gRPC (and /metrics, /healthz,
//!        /readyz; the read-only web view)
//!        -> READY=1 -> leadership loop (campaign, lead, repeat)
//! SIGTERM/SIGINT: STOPPING=1 -> resign (a standby takes over at once)
//!        and end every Report and WatchDeployment stream (agents and
//!        watchers move to another coordinator) -> stop serving -> exit 0,
//!        all within SHUTDOWN_GRACE whatever clients or etcd do
//! ```

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use coordinator::config::CoordinatorConfig;
use coordinator::depot::ReleaseDepot;
use coordinator::leader::Coordinator;
use coordinator::service::CoordinatorGrpc;
use proto::v1::coordinator_service_server::CoordinatorServiceServer;
use tokio::sync::watch;

/// How long start-up waits for etcd before giving up with a clear error.
const ETCD_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// From SIGTERM to exit, at most: under the 5 s operators are promised,
/// whatever streams are open or however slow etcd is to take the
/// resignation (a lease that is not revoked expires by itself).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);
/// HTTP/2 pings close a Report stream whose agent vanished without closing
/// its connection (host down, partition) within interval + timeout, so it
/// stops counting against the agent's stream limit (`fleet::MAX_STREAMS_PER_AGENT`).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// What the runtime gives blocking tasks (a FetchRelease read) at exit.
const RUNTIME_EXIT_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, Parser)]
#[command(
    name = "lockstep-coordinator",
    version,
    about = "Lockstep's coordinator: sequences rollouts across the fleet",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// The coordinator's configuration file.
    #[arg(long, default_value = "/etc/lockstep/coordinator.toml")]
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
    if let Some(code) = cli::generate_if_asked(Cli::command) {
        return code;
    }
    let cli = Cli::parse();
    daemon::logging::init("info");
    let result = match cli.command {
        Some(Command::CheckConfig { file }) => CoordinatorConfig::load(&file)
            .map(|c| {
                println!(
                    "{}: valid (listen {}, advertise {}, tls {}, {} role rule(s), {} named check(s), metrics {}, web {})",
                    file.display(),
                    c.listen,
                    c.advertise_url,
                    c.tls.as_ref().map_or_else(
                        || "off (plain text)".to_owned(),
                        |t| format!("on as {}", t.identity())
                    ),
                    c.access.rules.len(),
                    c.checks.len(),
                    c.metrics_listen
                        .map_or_else(|| "off".to_owned(), |a| format!("on {a}")),
                    c.web_listen.map_or_else(
                        || "off".to_owned(),
                        |a| match (c.tls.is_some(), c.access.insecure_operators) {
                            (true, _) => format!("on {a} (read-only)"),
                            (false, false) => format!("on {a} (actions from loopback)"),
                            (false, true) => format!("on {a} (actions from any address)"),
                        }
                    ),
                )
            })
            .map_err(Into::into),
        None => run(&cli.config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lockstep-coordinator: {}", cli::Chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(config_path: &Path) -> Result<()> {
    let config = CoordinatorConfig::load(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(config));
    runtime.shutdown_timeout(RUNTIME_EXIT_GRACE);
    result
}

async fn serve(config: CoordinatorConfig) -> Result<()> {
    let (client, depot) = open_depot(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (listen): is another coordinator running on this port?",
                config.listen
            )
        })?;
    let metrics_listener = bind_endpoint(
        config.metrics_listen,
        "metrics.listen",
        "serving /metrics, /healthz and /readyz",
    )
    .await?;
    let web_listener =
        bind_endpoint(config.web_listen, "web.listen", "serving the web view").await?;
    let mut server_builder = grpc_server(&config)?;
    let coordinator = Arc::new(Coordinator::new(config.clone(), client, depot));
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn({
        let grpc = CoordinatorGrpc::new(coordinator.clone(), stop_rx.clone());
        let mut stop = stop_rx.clone();
        async move {
            server_builder
                .add_service(CoordinatorServiceServer::new(grpc))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                    },
                )
                .await
        }
    });
    let metrics = metrics_listener.map(|listener| {
        let mut stop = stop_rx.clone();
        tokio::spawn(exposition::serve(
            listener,
            coordinator.endpoint(),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ))
    });
    let web = web_listener.map(|listener| {
        tokio::spawn(coordinator::web::serve(
            listener,
            coordinator.clone(),
            stop_rx.clone(),
        ))
    });
    let leadership = tokio::spawn(coordinator.clone().run_leadership(stop_rx.clone()));
    let mirror = tokio::spawn(coordinator::mirror::run(
        coordinator.depot.clone(),
        config.tls.clone(),
        config.status_interval,
        stop_rx.clone(),
    ));
    tracing::info!(listen = %config.listen, advertise = config.advertise_url, "coordinator serving");
    let manager = daemon::ServiceManager::from_env();
    notify(manager.ready().and_then(|()| manager.status("serving")));
    let _watchdog = manager.spawn_watchdog();

    let signal = shutdown_signal().await?;
    tracing::info!(signal, "shutting down");
    notify(manager.stopping());
    let _ = stop_tx.send(true);
    // Resigning, the mirror and the server's drain run at once, under one
    // deadline: a task still running then is abandoned (the process exits).
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    let (leadership, mirror, server, (), ()) = tokio::join!(
        within(deadline, leadership),
        within(deadline, mirror),
        within(deadline, server),
        endpoint_stopped("metrics endpoint", deadline, metrics),
        endpoint_stopped("web view", deadline, web),
    );
    for (task, ended) in [("leadership", leadership), ("release mirror", mirror)] {
        match ended {
            Some(Ok(())) => {}
            Some(Err(err)) => tracing::error!(task, error = %err, "task failed"),
            None => {
                tracing::warn!(task, after = ?SHUTDOWN_GRACE, "task did not end in time; exiting without it")
            }
        }
    }
    match server {
        Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(err))) => Err(err).context("gRPC server failed"),
        Some(Err(err)) => Err(err).context("gRPC server task failed"),
        None => {
            tracing::warn!(after = ?SHUTDOWN_GRACE, "a client kept its connection open; exiting without waiting for it");
            Ok(())
        }
    }
}

/// etcd (within `ETCD_CONNECT_TIMEOUT`) and the release depot on it.
async fn open_depot(config: &CoordinatorConfig) -> Result<(leases::Etcd, ReleaseDepot)> {
    let client = tokio::time::timeout(
        ETCD_CONNECT_TIMEOUT,
        leases::Etcd::connect_with(
            &config.etcd_endpoints,
            leases::EtcdTiming::default(),
            &config.etcd_access,
        ),
    )
    .await
    .map_err(|_| anyhow::anyhow!("etcd did not answer within {ETCD_CONNECT_TIMEOUT:?}"))
    .and_then(|r| r.map_err(Into::into))
    .with_context(|| {
        format!(
            "cannot reach etcd at {} (etcd.endpoints): is it running?",
            config.etcd_endpoints.join(", ")
        )
    })?;
    let trusted = release::TrustedKeys::load(&config.trusted_keys)
        .context("cannot load releases.trusted_keys")?;
    if trusted.is_empty() {
        tracing::warn!("releases.trusted_keys is empty: unsigned bundles are accepted");
    }
    let depot = ReleaseDepot::open(
        &config.store_dir,
        trusted,
        client.clone(),
        &config.advertise_url,
    )
    .context("cannot open the release depot (store_dir)")?;
    Ok((client, depot))
}

/// The gRPC server, with mTLS when `[tls]` is set (and a log line saying
/// which).
fn grpc_server(config: &CoordinatorConfig) -> Result<tonic::transport::Server> {
    let mut server_builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    match &config.tls {
        Some(tls) => {
            server_builder = server_builder
                .tls_config(tls.server_config())
                .context("cannot set up TLS for CoordinatorService ([tls])")?;
            tracing::info!(
                listen = %config.listen,
                identity = %tls.identity(),
                "mTLS: every caller needs a certificate chained to tls.ca; agents are dialled over https"
            );
        }
        None => tracing::warn!(
            listen = %config.listen,
            insecure_operators = config.access.insecure_operators,
            "plain-text gRPC: no [tls] configured; fine for a local demo, not for a fleet (operator calls only from loopback unless insecure_operators = true)"
        ),
    }
    Ok(server_builder)
}

/// `[metrics] listen` or `[web] listen`, bound at start so a taken port
/// stops the daemon with the key named.
async fn bind_endpoint(
    addr: Option<std::net::SocketAddr>,
    key: &str,
    serving: &'static str,
) -> Result<Option<tokio::net::TcpListener>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} ({key}): is another process using this port?")
    })?;
    tracing::info!(listen = %addr, "{serving}");
    Ok(Some(listener))
}

/// Waits (until `deadline`) for an HTTP endpoint (metrics, web view) to
/// stop, if it runs.
async fn endpoint_stopped(
    what: &'static str,
    deadline: tokio::time::Instant,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
) {
    let Some(task) = task else {
        return;
    };
    match within(deadline, task).await {
        Some(Ok(Ok(()))) => {}
        Some(Ok(Err(err))) => tracing::error!(what, error = %err, "the endpoint failed"),
        Some(Err(err)) => tracing::error!(what, error = %err, "the endpoint task failed"),
        None => {
            tracing::warn!(what, after = ?SHUTDOWN_GRACE, "a client kept its connection open; exiting without waiting for it")
        }
    }
}

/// A task's outcome, or `None` (and the task aborted) when it did not end
/// by `deadline`.
async fn within<T>(
    deadline: tokio::time::Instant,
    task: tokio::task::JoinHandle<T>,
) -> Option<Result<T, tokio::task::JoinError>> {
    let abort = task.abort_handle();
    match tokio::time::timeout_at(deadline, task).await {
        Ok(ended) => Some(ended),
        Err(_) => {
            abort.abort();
            None
        }
    }
}

/// A message systemd did not get is worth a warning, never an exit.
fn notify(sent: Result<(), daemon::NotifyError>) {
    if let Err(err) = sent {
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
