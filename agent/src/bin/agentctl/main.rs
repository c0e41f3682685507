//! `agentctl`: the operator's tool on a host. Talks to the local
//! lockstep-agent over its Unix socket; every planned disruption goes
//! through the same disruption budget and locks as a deployment.
//!
//! Exit codes: 0 done; 1 refused or failed (the message says what to do
//! next); 2 bad usage; 69 the agent is not reachable; 77 not allowed.

#![forbid(unsafe_code)]

mod connect;
mod fence;
mod install;
mod locks;
mod logs;
mod releases;
mod restart;
mod rollback;
mod status;
mod switch_reply;
mod view;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::connect::Failure;

#[derive(Debug, Parser)]
#[command(
    name = "agentctl",
    version,
    about = "Inspect and operate the lockstep-agent on this host"
)]
struct Cli {
    /// The agent's control socket.
    #[arg(long, global = true, default_value = agent::config::DEFAULT_CONTROL_SOCKET, env = "LOCKSTEP_AGENT_SOCKET")]
    socket: PathBuf,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Services on this host: release, pids, state, readiness, restarts, uptime.
    Status(status::Args),
    /// Verify and unpack a bundle, then switch its service to it (start-before-stop).
    Install(install::Args),
    /// Restart a service's instances one by one, start-before-stop where possible.
    Restart(restart::Args),
    /// Switch a service back to the release it ran before.
    Rollback(rollback::Args),
    /// A service's current and previous releases and its switch history.
    Releases(releases::Args),
    /// A service's logs.
    Logs(logs::Args),
    /// The disruption budget and locks of this host's cluster.
    Locks(locks::Args),
    /// A service's fencing high-water mark; break-glass reset (audited).
    Fence(fence::Args),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    cli::end_quietly_when_stdout_closes();
    if let Some(code) = cli::generate_if_asked(Cli::command) {
        return code;
    }
    let cli = Cli::parse();
    let result = async {
        let client = connect::control_client(&cli.socket).await?;
        match cli.command {
            Command::Status(args) => status::run(client, args, cli.output).await,
            Command::Install(args) => install::run(client, args, cli.output).await,
            Command::Restart(args) => restart::run(client, args, cli.output).await,
            Command::Rollback(args) => rollback::run(client, args, cli.output).await,
            Command::Releases(args) => releases::run(client, args, cli.output).await,
            Command::Logs(args) => logs::run(client, args, cli.output).await,
            Command::Locks(args) => locks::run(client, args, cli.output).await,
            Command::Fence(args) => fence::run(client, args, cli.output).await,
        }
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("agentctl: {failure}");
            failure.exit_code()
        }
    }
}

/// Says on stderr what a slow command is waiting for (text output only).
fn announce(output: Output, what: &str) {
    if output == Output::Text {
        eprintln!(
            "agentctl: {what} (waits for a free slot in the cluster's disruption budget when the agent uses etcd)"
        );
    }
}

/// Prints `value` as pretty JSON.
fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::Local(format!("cannot render JSON: {e}")))?;
    println!("{text}");
    Ok(())
}
