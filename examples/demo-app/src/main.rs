//! `demo-app`: a small HTTP service used by the Lockstep demo and tests.
//!
//! This file only parses the command line and hands over to [`app::run`];
//! the exit codes are listed in `app`.

#![forbid(unsafe_code)]

mod app;
mod config;
mod listener;
mod metrics;
mod notify;
mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// A small HTTP service that refuses to start on a config key it does not
/// know. Fault flags override the config's `[faults]` table.
#[derive(Debug, Parser)]
#[command(name = "demo-app")]
pub struct Cli {
    /// The TOML config file (relative paths are from the working directory).
    #[arg(long, value_name = "PATH", default_value = config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Address to bind when no socket is passed through LISTEN_FDS
    /// (overrides the config's `listen`).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Exit 1 right after loading the config.
    #[arg(long)]
    pub fail_at_start: bool,
    /// Exit 1 right after loading the config while this file exists.
    #[arg(long, value_name = "PATH")]
    pub fail_at_start_while_exists: Option<PathBuf>,
    /// Answer 503 on /healthz (and delay READY=1) for this long.
    #[arg(long, value_name = "MS")]
    pub ready_after_ms: Option<u64>,
    /// Exit by itself after this long (with --crash-exit-code, default 70).
    #[arg(long, value_name = "MS")]
    pub crash_after_ms: Option<u64>,
    /// The exit code of --crash-after-ms (0: the app ends as if done).
    #[arg(long, value_name = "CODE")]
    pub crash_exit_code: Option<u8>,
    /// Answer 503 on /healthz and /publish from this moment on.
    #[arg(long, value_name = "MS")]
    pub unhealthy_after_ms: Option<u64>,
    /// On SIGTERM/SIGINT, keep serving this long before stopping.
    #[arg(long, value_name = "MS")]
    pub shutdown_delay_ms: Option<u64>,
}

fn main() -> ExitCode {
    app::run(Cli::parse())
}
