//! `lockstep deploy --service S --release VERSION|DIGEST [--strategy FILE]
//! [--reason TEXT] [--wait]`: starts a deployment and prints its id last.
//! Also owns what `deploy` and `rollback` print for a `DeployResponse`.
//!
//! Must never: retry a refused deployment or break a lock by itself: a
//! locked service is reported with its holder (exit 75) and the operator
//! decides.

use std::path::PathBuf;

use proto::v1::{DeployOutcome, DeployRequest, DeployResponse};

use crate::client::{self, Coordinators, Failure};
use crate::{
    Output, fmt, json, print_json, print_json_line, release_name, render, strategy, watch,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service to deploy.
    #[arg(long)]
    pub service: String,
    /// The release: its version, its digest (sha256:...), or a unique prefix
    /// of the digest (`lockstep release list` shows them).
    #[arg(long, value_name = "VERSION|DIGEST")]
    pub release: String,
    /// A TOML file with a [strategy] table; default: the built-in strategy (`lockstep plan` shows it).
    #[arg(long, value_name = "FILE")]
    pub strategy: Option<PathBuf>,
    /// Why, for the history and the audit log.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Follow the deployment to its end, like `lockstep watch` (same exit codes).
    #[arg(long)]
    pub wait: bool,
}

pub async fn run(c: &mut Coordinators, args: Args, output: Output) -> Result<(), Failure> {
    let release_digest = release_name::resolve(c, &args.service, &args.release).await?;
    let request = DeployRequest {
        service: args.service.clone(),
        release_digest,
        strategy_toml: strategy::load(args.strategy.as_deref())?,
        actor: Some(client::actor()),
        reason: args.reason,
    };
    let response = c
        .call(|mut client| {
            let request = request.clone();
            async move { client.deploy(request).await }
        })
        .await?;
    conclude(c, &args.service, &response, args.wait, output).await
}

/// Prints a `DeployResponse` and, with `wait`, follows the deployment.
pub async fn conclude(
    c: &mut Coordinators,
    service: &str,
    response: &DeployResponse,
    wait: bool,
    output: Output,
) -> Result<(), Failure> {
    if output == Output::Json {
        // With --wait the events follow, one object per line: keep one
        // JSON value per line throughout.
        if wait {
            print_json_line(&json::deploy_response(response))?;
        } else {
            print_json(&json::deploy_response(response))?;
        }
    }
    match DeployOutcome::try_from(response.outcome) {
        Ok(DeployOutcome::Started) => {
            if output == Output::Text {
                println!("{}", response.deployment_id);
                if !wait {
                    eprintln!(
                        "lockstep: deployment of {service} started; follow it with `lockstep watch {}`",
                        response.deployment_id
                    );
                }
            }
            if wait {
                watch::run(c, &response.deployment_id, output).await
            } else {
                Ok(())
            }
        }
        Ok(DeployOutcome::RefusedLocked) => Err(Failure::Locked(render::locked(
            service,
            response.lock.as_ref(),
            fmt::now_unix_ms(),
        ))),
        Ok(DeployOutcome::RefusedInvalid) => {
            let mut text = format!("the plan for {service} cannot run:");
            for p in &response.problems {
                text.push_str("\n  - ");
                text.push_str(p);
            }
            text.push_str("\nfix the problems (check with `lockstep plan`) and deploy again");
            Err(Failure::Refused(text))
        }
        Ok(DeployOutcome::Unspecified) | Err(_) => Err(Failure::Refused(format!(
            "the coordinator answered with an outcome this lockstep does not know ({}); upgrade lockstep, and check `lockstep status` for what happened",
            json::deploy_outcome(response.outcome)
        ))),
    }
}
