//! Startup, the fault timers, and shutdown: everything between `main` and the
//! routes.
//!
//! ```text
//! load config ──err──▶ exit 78
//!   │ fail_at_start (or fail_at_start_while_exists and the file exists) ─▶ exit 1
//! take/bind socket ─err─▶ exit 71
//!   │
//! serve ──┬─ after ready_after ───────▶ READY=1
//!         ├─ after unhealthy_after ───▶ STATUS=unhealthy (healthz 503)
//!         ├─ after crash_after ───────▶ exit crash_exit_code (70)
//!         └─ SIGTERM/SIGINT ──▶ STOPPING=1, wait shutdown_delay,
//!                               stop accepting, finish in-flight ─▶ exit 0
//! ```
//!
//! Exit codes: 0 graceful stop; 1 `fail_at_start` or an unexpected runtime
//! error; 2 bad command line (clap); 70 `crash_after_ms` (or its
//! `crash_exit_code`); 71 no listening socket (bind failed, or a LISTEN_FDS
//! socket is unusable); 78 config error.
//!
//! Must never: parse config keys itself, or exit 0 on any failure (an
//! injected `crash_exit_code = 0` is the one asked-for exception).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;
use tracing_subscriber::EnvFilter;

use crate::Cli;
use crate::config::{self, Config};
use crate::listener::{self, ActivationEnv, Choice, Source};
use crate::notify::Notifier;
use crate::server::{self, AppState};

/// The environment variable the agent sets to the release's version; used
/// when the config has no `version` key.
pub const VERSION_ENV: &str = "LOCKSTEP_RELEASE_VERSION";

pub const EXIT_FAIL_AT_START: u8 = 1;
pub const EXIT_RUNTIME: u8 = 1;
/// EX_OSERR: no listening socket.
pub const EXIT_LISTENER: u8 = 71;
/// EX_CONFIG.
pub const EXIT_CONFIG: u8 = 78;

/// Prints `demo-app: <line>` for every line of the error and its sources.
fn report(err: &dyn std::error::Error) {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    for line in text.lines() {
        eprintln!("demo-app: {line}");
    }
}

fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn apply_overrides(config: &mut Config, cli: &Cli) {
    let f = &mut config.faults;
    f.fail_at_start |= cli.fail_at_start;
    if let Some(path) = &cli.fail_at_start_while_exists {
        f.fail_at_start_while_exists = Some(path.clone());
    }
    if let Some(code) = cli.crash_exit_code {
        f.crash_exit_code = code;
    }
    if let Some(ms) = cli.ready_after_ms {
        f.ready_after = Duration::from_millis(ms);
    }
    if let Some(ms) = cli.crash_after_ms {
        f.crash_after = Some(Duration::from_millis(ms));
    }
    if let Some(ms) = cli.unhealthy_after_ms {
        f.unhealthy_after = Some(Duration::from_millis(ms));
    }
    if let Some(ms) = cli.shutdown_delay_ms {
        f.shutdown_delay = Duration::from_millis(ms);
    }
    if let Some(addr) = cli.listen {
        config.listen = addr;
    }
}

pub fn run(cli: Cli) -> ExitCode {
    init_logging();

    let env_version = std::env::var(VERSION_ENV).ok();
    let mut config = match config::load(&cli.config, env_version.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            report(&e);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    apply_overrides(&mut config, &cli);

    if config.faults.fail_at_start {
        eprintln!(
            "demo-app: fail_at_start fault is set (config {} or --fail-at-start): refusing to start",
            config.path.display()
        );
        return ExitCode::from(EXIT_FAIL_AT_START);
    }
    if let Some(path) = &config.faults.fail_at_start_while_exists {
        if path.exists() {
            eprintln!(
                "demo-app: fail_at_start_while_exists fault: {} exists: refusing to start",
                path.display()
            );
            return ExitCode::from(EXIT_FAIL_AT_START);
        }
    }

    // Before the runtime exists: taking LISTEN_FDS edits the environment.
    let (std_listener, source) =
        match listener::choose(&ActivationEnv::from_process_env(), std::process::id()).and_then(
            |choice| {
                if let Choice::Bind { reason } = &choice {
                    tracing::debug!(%reason, "binding the listening socket myself");
                }
                listener::acquire(&choice, config.listen)
            },
        ) {
            Ok(l) => l,
            Err(e) => {
                report(&e);
                return ExitCode::from(EXIT_LISTENER);
            }
        };

    let notifier = match Notifier::new(std::env::var("NOTIFY_SOCKET").ok().as_deref()) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "not sending sd_notify messages");
            Notifier::disabled()
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            report(&e);
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match runtime.block_on(serve(config, std_listener, source, notifier)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(e.as_ref());
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn notify(notifier: &Notifier, state: &str) {
    if let Err(e) = notifier.send(state) {
        tracing::warn!(error = %e, state, "sd_notify failed");
    }
}

async fn serve(
    config: Config,
    std_listener: std::net::TcpListener,
    source: Source,
    notifier: Notifier,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let local: SocketAddr = listener.local_addr()?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    let faults = config.faults.clone();
    let state = Arc::new(AppState::new(
        config.version.clone(),
        config.digest.clone(),
        config.message_prefix.clone(),
        faults.clone(),
        Instant::now(),
    ));
    let notifier = Arc::new(notifier);

    let (socket, fd_name) = match &source {
        Source::Inherited { index, name } => (
            format!("LISTEN_FDS fd {}", 3 + index),
            name.clone().unwrap_or_default(),
        ),
        Source::Bound => ("bound".to_owned(), String::new()),
    };
    tracing::info!(
        version = %config.version,
        config_digest = %config.digest,
        config = %config.path.display(),
        listen = %local,
        socket = %socket,
        fd_name = %fd_name,
        pid = state.pid,
        sd_notify = notifier.is_enabled(),
        ready_after_ms = faults.ready_after.as_millis() as u64,
        "demo-app started"
    );
    notify(
        &notifier,
        &format!("STATUS=starting version {} on {local}", config.version),
    );

    {
        let notifier = notifier.clone();
        let version = config.version.clone();
        tokio::spawn(async move {
            tokio::time::sleep(faults.ready_after).await;
            tracing::info!("ready");
            notify(
                &notifier,
                &format!("READY=1\nSTATUS=serving version {version} on {local}"),
            );
        });
    }
    if let Some(after) = faults.unhealthy_after {
        let notifier = notifier.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            tracing::warn!(
                unhealthy_after_ms = after.as_millis() as u64,
                "unhealthy_after fault: /healthz now answers 503"
            );
            notify(&notifier, "STATUS=unhealthy (injected fault)");
        });
    }
    if let Some(after) = faults.crash_after {
        let code = faults.crash_exit_code;
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            tracing::error!(
                crash_after_ms = after.as_millis() as u64,
                code,
                "crash_after fault: exiting"
            );
            std::process::exit(i32::from(code));
        });
    }

    let shutdown = {
        let state = state.clone();
        let notifier = notifier.clone();
        async move {
            let which = tokio::select! {
                _ = sigterm.recv() => "SIGTERM",
                _ = sigint.recv() => "SIGINT",
            };
            state.set_stopping();
            tracing::info!(
                signal = which,
                shutdown_delay_ms = faults.shutdown_delay.as_millis() as u64,
                "stopping: finishing in-flight requests"
            );
            notify(&notifier, &format!("STOPPING=1\nSTATUS=stopping ({which})"));
            tokio::time::sleep(faults.shutdown_delay).await;
        }
    };

    serve_until(listener, server::router(state.clone()), shutdown).await;
    tracing::info!("stopped");
    Ok(())
}

/// After the stop signal, how long connections accepted just before it get
/// to present their request before idle connections are closed. hyper
/// closes a connection whose request it has not read yet as idle; the
/// client would see a reset although the request was on its way.
const ACCEPT_DRAIN: Duration = Duration::from_millis(250);
/// In-flight requests get this long to finish after the stop signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves HTTP/1 on `listener` until `shutdown`, then: stop accepting (the
/// socket may be shared with the next release, which keeps accepting),
/// let just-accepted connections present their requests, finish every
/// request in flight, and return.
async fn serve_until(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let service = hyper_util::service::TowerToHyperService::new(router.clone());
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::time::sleep(ACCEPT_DRAIN).await;
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_s = DRAIN_TIMEOUT.as_secs(),
            "requests still in flight at the drain timeout; exiting"
        );
    }
}
