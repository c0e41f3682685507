//! `lockstep`: the operator CLI. Parses arguments and dispatches to one file
//! per verb; no logic lives here.
//!
//! Must never: hold business logic (it belongs in the library crates), or
//! print anything but the verb's output on stdout (errors go to stderr).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod release_cmd;

/// Lockstep: roll releases across a fleet, one immutable bundle at a time.
#[derive(Debug, Parser)]
#[command(
    name = "lockstep",
    version,
    about = "Lockstep: roll releases across a fleet, one immutable bundle at a time"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build, sign, inspect and verify release bundles.
    #[command(subcommand)]
    Release(release_cmd::ReleaseCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Release(cmd) => release_cmd::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
