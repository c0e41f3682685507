//! `agentctl rollback SERVICE`.

use proto::v1::ControlRollbackRequest;

use crate::connect::{Connected, Failure};
use crate::{Output, switch_reply};

#[derive(Debug, clap::Args)]
pub struct Args {
    service: String,
    /// Why, for the history.
    #[arg(long, default_value = "")]
    reason: String,
}

pub async fn run(mut c: Connected, args: Args, output: Output) -> Result<(), Failure> {
    crate::announce(output, &format!("rolling {} back", args.service));
    let reply = c
        .client
        .rollback(ControlRollbackRequest {
            service: args.service,
            reason: args.reason,
        })
        .await
        .map_err(|s| c.fail(&s))?
        .into_inner();
    switch_reply::print(&reply, output)
}
