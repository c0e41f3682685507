//! `lockstep restart SERVICE [--cluster C] [--strategy FILE] [--reason TEXT]
//! [--wait]`: a rolling restart of the release the service runs, run by
//! the coordinator as a deployment (same waves, gates, budget, history,
//! output and exit codes as `deploy`), so nobody restarts hosts by hand.
//!
//! Must never: restart agents directly; the coordinator runs it.

use std::path::PathBuf;

use proto::v1::RestartServiceRequest;

use crate::client::{self, Coordinators, Failure};
use crate::{Output, deploy, strategy};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service to restart.
    pub service: String,
    /// Only this cluster's hosts; default: every cluster hosting the service.
    #[arg(long)]
    pub cluster: Option<String>,
    /// A TOML file with a [strategy] table; default: the built-in strategy.
    #[arg(long, value_name = "FILE")]
    pub strategy: Option<PathBuf>,
    /// Why, for the history.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Follow the restart to its end, like `lockstep watch` (same exit codes).
    #[arg(long)]
    pub wait: bool,
}

pub async fn run(c: &mut Coordinators, args: Args, output: Output) -> Result<(), Failure> {
    let request = RestartServiceRequest {
        service: args.service.clone(),
        cluster: args.cluster.unwrap_or_default(),
        strategy_toml: strategy::load(args.strategy.as_deref())?,
        actor: Some(client::actor()),
        reason: args.reason,
    };
    let response = c
        .call(|mut client| {
            let request = request.clone();
            async move { client.restart(request).await }
        })
        .await?;
    deploy::conclude(c, &args.service, &response, args.wait, output).await
}
