//! `lockstep-nodesim`: parses the command line, starts the simulation, and
//! runs until SIGTERM or SIGINT.

use anyhow::Context;
use clap::Parser;
use nodesim::Simulation;
use nodesim::config::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Each of thousands of hosts opening its stream is not news.
    daemon::logging::init("info,agent::uplink=warn");
    let config = args.validate()?;
    let simulation = Simulation::start(&config).await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        _ = terminate.recv() => {}
        interrupted = tokio::signal::ctrl_c() => interrupted.context("cannot listen for SIGINT")?,
    }
    tracing::info!(hosts = simulation.hosts.len(), "stopping");
    drop(simulation);
    Ok(())
}
