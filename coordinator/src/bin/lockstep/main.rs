//! `lockstep`: the operator CLI. Parses arguments and dispatches to one file
//! per verb; no logic lives here.
//!
//! Exit codes: 0 done (a watched deployment succeeded); 1 refused or failed
//! (the message says what to do next), or a plan with problems; 2 bad
//! usage; 3 the watched deployment rolled back; 4 it was aborted; 5 its
//! rollback failed; 69 no coordinator (or no leader) reachable, or no
//! answer within `--timeout` (a hung coordinator or etcd); 75 the
//! service is locked by another deployment; 77 not allowed.
//!
//! Must never: hold business logic (it belongs in the library crates), or
//! print anything but the verb's output on stdout (errors go to stderr).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

mod agents;
mod client;
mod control;
mod deploy;
mod fmt;
mod history;
mod json;
mod locks;
mod plan;
mod release_cmd;
mod release_name;
mod render;
mod restart;
mod rollback;
mod status;
mod strategy;
mod watch;

use crate::client::{Coordinators, DEFAULT_COORDINATOR, Failure};

/// Lockstep: roll releases across a fleet, one immutable bundle at a time.
#[derive(Debug, Parser)]
#[command(
    name = "lockstep",
    version,
    about = "Lockstep: roll releases across a fleet, one immutable bundle at a time"
)]
struct Cli {
    /// Coordinator URL, tried in order until one answers; repeat the flag or
    /// separate URLs with commas. Followers redirect to the leader.
    #[arg(
        long = "coordinator",
        value_name = "URL",
        global = true,
        env = "LOCKSTEP_COORDINATOR",
        value_delimiter = ',',
        default_value = DEFAULT_COORDINATOR
    )]
    coordinators: Vec<String>,
    /// The CA (PEM) a TLS (`https://`) coordinator's certificate must chain to.
    #[arg(long, global = true, value_name = "FILE", env = "LOCKSTEP_CA")]
    ca: Option<PathBuf>,
    /// The operator's client certificate (PEM) for `https://` coordinators.
    #[arg(long, global = true, value_name = "FILE", env = "LOCKSTEP_CERT")]
    cert: Option<PathBuf>,
    /// The private key (PEM) of `--cert`. Not `--key`: that is a release's
    /// public key (`release verify --key`), and one name for both keys once
    /// made the TLS key be read as a release key.
    #[arg(
        long = "tls-key",
        global = true,
        value_name = "FILE",
        env = "LOCKSTEP_TLS_KEY"
    )]
    tls_key: Option<PathBuf>,
    /// How long to wait for a coordinator to connect, and for each answer
    /// (`500ms`, `5s`, `1m`); then exit 69. A `watch` stream is bounded
    /// while it opens and while it is silent, not for its length.
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        env = "LOCKSTEP_TIMEOUT",
        default_value = client::DEFAULT_TIMEOUT,
        value_parser = client::parse_timeout
    )]
    timeout: std::time::Duration,
    /// Output format: text for people, json for scripts (`watch`: one event
    /// object per line).
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
    /// Build, sign, inspect, verify, push and list release bundles.
    #[command(subcommand)]
    Release(release_cmd::ReleaseCommand),
    /// Show how a release would roll out (waves, batches, approvals) without deploying it.
    Plan(plan::Args),
    /// Start a deployment; prints its id last (exit 75 if another deployment holds the lock).
    Deploy(deploy::Args),
    /// Follow a deployment to its end; the exit code is its outcome.
    Watch(watch::Args),
    /// The fleet per cluster and the deployments in progress; with ID, one deployment.
    Status(status::Args),
    /// Pause a deployment; `resume` continues it.
    Pause(control::PauseArgs),
    /// Resume a paused deployment.
    Resume(control::IdArgs),
    /// Let a deployment waiting for approval continue to its next cluster.
    Approve(control::ApproveArgs),
    /// Stop a deployment for good (--reason required).
    Abort(control::AbortArgs),
    /// Deploy the last release that succeeded on a service (or `--to` one), without a rehearsal.
    Rollback(rollback::Args),
    /// Restart a service's processes on every host (or one cluster's), rolling, as a deployment.
    Restart(restart::Args),
    /// Agents: reachability, last report, services with release and readiness.
    Agents(agents::Args),
    /// Locks: who holds what, why, since when; `locks break` to break one.
    Locks(locks::Args),
    /// A service's deployments, most recent first.
    History(history::Args),
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let urls = client::parse_urls(&cli.coordinators).map_err(Failure::Local)?;
    let mut c = Coordinators::new(urls, cli.timeout).with_tls(client::TlsFlags {
        ca: cli.ca,
        cert: cli.cert,
        key: cli.tls_key,
    });
    let output = cli.output;
    match cli.command {
        Command::Release(cmd) => release_cmd::run(&mut c, cmd, output).await,
        Command::Plan(args) => plan::run(&mut c, args, output).await,
        Command::Deploy(args) => deploy::run(&mut c, args, output).await,
        Command::Watch(args) => watch::run(&mut c, &args.id, output).await,
        Command::Status(args) => status::run(&mut c, args, output).await,
        Command::Pause(args) => control::pause(&mut c, args, output).await,
        Command::Resume(args) => control::resume(&mut c, args, output).await,
        Command::Approve(args) => control::approve(&mut c, args, output).await,
        Command::Abort(args) => control::abort(&mut c, args, output).await,
        Command::Rollback(args) => rollback::run(&mut c, args, output).await,
        Command::Restart(args) => restart::run(&mut c, args, output).await,
        Command::Agents(args) => agents::run(&mut c, args, output).await,
        Command::Locks(args) => locks::run(&mut c, args, output).await,
        Command::History(args) => history::run(&mut c, args, output).await,
    }
}

/// The environment variable that once named both the TLS key and a release
/// key; refused so that neither is ever read in place of the other.
const RETIRED_KEY_VARIABLE: &str = "LOCKSTEP_KEY";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    cli::end_quietly_when_stdout_closes();
    if let Some(code) = cli::generate_if_asked(Cli::command) {
        return code;
    }
    if std::env::var_os(RETIRED_KEY_VARIABLE).is_some() {
        eprintln!(
            "lockstep: {RETIRED_KEY_VARIABLE} is no longer read (it named both the TLS key and a release key): set LOCKSTEP_TLS_KEY (or --tls-key) for the TLS client key, pass a release's public key with `release verify --key`, and unset {RETIRED_KEY_VARIABLE}"
        );
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if !failure.already_shown() {
                eprintln!("lockstep: {failure}");
            }
            failure.exit_code()
        }
    }
}

/// Prints `value` as pretty JSON (one document per command).
fn print_json(value: &serde_json::Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::Local(format!("cannot render JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

/// Prints `value` as one line of JSON (streams: one object per line).
fn print_json_line(value: &serde_json::Value) -> Result<(), Failure> {
    let text = serde_json::to_string(value)
        .map_err(|e| Failure::Local(format!("cannot render JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("lockstep").chain(args.iter().copied()))
    }

    const DIGEST: &str = "sha256:abababababababababababababababababababababababababababababababab";

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn coordinators_repeat_and_split_on_commas() {
        let cli = parse(&[
            "--coordinator",
            "http://a:1,http://b:2",
            "--coordinator",
            "c:3",
            "agents",
        ])
        .unwrap();
        assert_eq!(cli.coordinators, ["http://a:1", "http://b:2", "c:3"]);
        // After the verb works too (clap: the later occurrences win).
        let cli = parse(&["agents", "--coordinator", "d:4,e:5"]).unwrap();
        assert_eq!(cli.coordinators, ["d:4", "e:5"]);
    }

    #[test]
    fn output_is_global() {
        let cli = parse(&["locks", "--output", "json"]).unwrap();
        assert_eq!(cli.output, Output::Json);
        let cli = parse(&["--output", "json", "history", "web", "--limit", "5"]).unwrap();
        assert_eq!(cli.output, Output::Json);
        assert!(matches!(cli.command, Command::History(h) if h.limit == 5 && h.service == "web"));
        assert!(parse(&["agents", "--output", "yaml"]).is_err());
    }

    #[test]
    fn deploy_requires_service_and_a_release_name() {
        let cli = parse(&[
            "deploy",
            "--service",
            "web",
            "--release",
            DIGEST,
            "--reason",
            "fix",
            "--wait",
        ])
        .unwrap();
        let Command::Deploy(d) = cli.command else {
            panic!("not deploy");
        };
        assert!(d.wait);
        assert_eq!(d.reason, "fix");
        assert!(parse(&["deploy", "--service", "web"]).is_err());
        // A version or a digest prefix is resolved against the index later.
        let cli = parse(&["deploy", "--service", "web", "--release", "1.4.2"]).unwrap();
        assert!(matches!(cli.command, Command::Deploy(d) if d.release == "1.4.2"));
        let cli = parse(&["rollback", "web", "--to", "abcd"]).unwrap();
        assert!(matches!(cli.command, Command::Rollback(r) if r.to.as_deref() == Some("abcd")));
    }

    #[test]
    fn abort_requires_a_reason_and_approve_takes_a_cluster() {
        assert!(parse(&["abort", "d-1"]).is_err());
        assert!(parse(&["abort", "d-1", "--reason", "bad canary"]).is_ok());
        let cli = parse(&["approve", "d-1", "--cluster", "eu-1"]).unwrap();
        assert!(matches!(cli.command, Command::Approve(a) if a.cluster.as_deref() == Some("eu-1")));
        assert!(parse(&["pause", "d-1"]).is_ok());
        assert!(parse(&["resume"]).is_err());
    }

    #[test]
    fn locks_break_requires_a_reason() {
        assert!(parse(&["locks", "break", "web"]).is_err());
        let cli = parse(&["locks", "break", "web", "--reason", "holder died"]).unwrap();
        let Command::Locks(l) = cli.command else {
            panic!("not locks");
        };
        assert!(matches!(
            l.action,
            Some(locks::Action::Break { ref service, ref reason }) if service == "web" && reason == "holder died"
        ));
        let cli = parse(&["locks", "--cluster", "eu-1"]).unwrap();
        assert!(
            matches!(cli.command, Command::Locks(l) if l.cluster.as_deref() == Some("eu-1") && l.action.is_none())
        );
    }

    #[test]
    fn release_verbs_parse() {
        assert!(parse(&["release", "push", "app.lsr"]).is_ok());
        assert!(parse(&["release", "list", "--service", "web"]).is_ok());
        assert!(parse(&["release", "build", "app", "-o", "a.lsr"]).is_ok());
        assert!(parse(&["release", "inspect", "a.lsr", "--output", "json"]).is_ok());
        assert!(parse(&["rollback", "web", "--wait"]).is_ok());
        let cli = parse(&["restart", "web", "--cluster", "eu-1", "--wait"]).unwrap();
        assert!(
            matches!(cli.command, Command::Restart(r) if r.cluster.as_deref() == Some("eu-1") && r.wait)
        );
        assert!(parse(&["status"]).is_ok());
        assert!(parse(&["status", "d-1"]).is_ok());
        assert!(parse(&["watch"]).is_err());
    }
}
