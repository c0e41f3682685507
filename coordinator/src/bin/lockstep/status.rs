//! `lockstep status [ID]`: without ID, the fleet per cluster (agents up,
//! per service: readiness and the releases running) and the deployment
//! locks (who deploys what); with ID, one deployment.
//!
//! Must never: change anything.

use proto::v1::{GetDeploymentRequest, ListAgentsRequest, ListLocksRequest};

use crate::client::{Coordinators, Failure};
use crate::{Output, fmt, json, print_json, render};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A deployment id: show that deployment.
    pub id: Option<String>,
}

pub async fn run(c: &mut Coordinators, args: Args, output: Output) -> Result<(), Failure> {
    match args.id {
        Some(id) => deployment(c, id, output).await,
        None => fleet(c, output).await,
    }
}

async fn deployment(c: &mut Coordinators, id: String, output: Output) -> Result<(), Failure> {
    let request = GetDeploymentRequest { deployment_id: id };
    let d = c
        .call(|mut client| {
            let request = request.clone();
            async move { client.get_deployment(request).await }
        })
        .await?;
    match output {
        Output::Json => print_json(&json::deployment(&d)),
        Output::Text => {
            print!("{}", render::deployment(&d, fmt::now_unix_ms()));
            Ok(())
        }
    }
}

async fn fleet(c: &mut Coordinators, output: Output) -> Result<(), Failure> {
    let agents = c
        .call(|mut client| async move {
            client
                .list_agents(ListAgentsRequest {
                    cluster: String::new(),
                })
                .await
        })
        .await?
        .agents;
    let locks = c
        .call(|mut client| async move {
            client
                .list_locks(ListLocksRequest {
                    cluster: String::new(),
                })
                .await
        })
        .await?
        .locks;
    match output {
        Output::Json => {
            let doc = serde_json::json!({
                "clusters": render::rollup(&agents),
                "locks": locks.iter().map(json::lock).collect::<Vec<_>>(),
            });
            print_json(&doc)
        }
        Output::Text => {
            print!("{}", render::status(&agents, &locks, fmt::now_unix_ms()));
            Ok(())
        }
    }
}
