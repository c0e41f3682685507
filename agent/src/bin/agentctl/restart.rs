//! `agentctl restart SERVICE [--force --reason TEXT]`.

use proto::v1::ControlRestartRequest;

use crate::connect::{Connected, Failure};
use crate::{Output, switch_reply};

#[derive(Debug, clap::Args)]
pub struct Args {
    service: String,
    /// Break-glass: skip the cluster's disruption budget. Audited; needs --reason.
    #[arg(long, requires = "reason")]
    force: bool,
    /// Why, for the history and the audit log.
    #[arg(long)]
    reason: Option<String>,
}

pub async fn run(mut c: Connected, args: Args, output: Output) -> Result<(), Failure> {
    crate::announce(output, &format!("restarting {}", args.service));
    let reply = c
        .client
        .restart(ControlRestartRequest {
            service: args.service,
            force: args.force,
            reason: args.reason.unwrap_or_default(),
        })
        .await
        .map_err(|s| c.fail(&s))?
        .into_inner();
    switch_reply::print(&reply, output)
}
