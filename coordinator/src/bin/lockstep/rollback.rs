//! `lockstep rollback SERVICE [--to VERSION|DIGEST] [--strategy FILE]
//! [--reason TEXT] [--wait]`: deploys the last release that succeeded on
//! the service (or the one `--to` names), without a rehearsal, with the
//! same safety, output and exit codes as `deploy`. Says which release and
//! why before it acts.
//!
//! Must never: switch agents directly (the coordinator runs it as a
//! deployment), or deploy another release than the one it announced.

use std::path::PathBuf;

use proto::v1::RollbackServiceRequest;

use crate::client::{self, Coordinators, Failure};
use crate::{Output, deploy, release_name, strategy};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service to roll back.
    pub service: String,
    /// The release to go to: version, digest or unique digest prefix;
    /// default: the last release that succeeded on the service (`lockstep
    /// history` shows them), other than the one every host runs.
    #[arg(long, value_name = "VERSION|DIGEST")]
    pub to: Option<String>,
    /// A TOML file with a [strategy] table; default: the service's strategy.
    #[arg(long, value_name = "FILE")]
    pub strategy: Option<PathBuf>,
    /// Why, for the history and the audit log.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Follow the rollback to its end, like `lockstep watch` (same exit codes).
    #[arg(long)]
    pub wait: bool,
}

pub async fn run(c: &mut Coordinators, args: Args, output: Output) -> Result<(), Failure> {
    let named = match &args.to {
        Some(name) => release_name::resolve(c, &args.service, name).await?,
        None => String::new(),
    };
    let mut request = RollbackServiceRequest {
        service: args.service.clone(),
        strategy_toml: strategy::load(args.strategy.as_deref())?,
        actor: Some(client::actor()),
        reason: args.reason,
        release_digest: named,
    };
    let target = c
        .call(|mut client| {
            let request = request.clone();
            async move { client.rollback_target(request).await }
        })
        .await?;
    let release = target.release.unwrap_or_default();
    eprintln!(
        "lockstep: rolling back {} to {} ({}): {}",
        args.service, release.version, release.digest, target.why
    );
    // The release announced, not whatever is last-good by the time the
    // call lands.
    request.release_digest = release.digest;
    let response = c
        .call(|mut client| {
            let request = request.clone();
            async move { client.rollback(request).await }
        })
        .await?;
    deploy::conclude(c, &args.service, &response, args.wait, output).await
}
