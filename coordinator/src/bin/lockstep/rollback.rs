//! `lockstep rollback SERVICE [--strategy FILE] [--reason TEXT] [--wait]`:
//! deploys the release the service ran before its current one, with the
//! same safety, output and exit codes as `deploy`.
//!
//! Must never: switch agents directly; the coordinator runs it as a
//! deployment.

use std::path::PathBuf;

use proto::v1::RollbackServiceRequest;

use crate::client::{self, Coordinators, Failure};
use crate::{Output, deploy, strategy};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service to roll back.
    pub service: String,
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
    let request = RollbackServiceRequest {
        service: args.service.clone(),
        strategy_toml: strategy::load(args.strategy.as_deref())?,
        actor: Some(client::actor()),
        reason: args.reason,
    };
    let response = c
        .call(|mut client| {
            let request = request.clone();
            async move { client.rollback(request).await }
        })
        .await?;
    deploy::conclude(c, &args.service, &response, args.wait, output).await
}
