//! `agentctl status`.

use proto::v1::StatusRequest;
use serde::Serialize;

use crate::connect::{Connected, Failure};
use crate::{Output, print_json, view};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this service.
    service: Option<String>,
}

#[derive(Debug, Serialize)]
struct StatusView {
    agent: String,
    cluster: String,
    services: Vec<view::ServiceView>,
}

pub async fn run(mut c: Connected, args: Args, output: Output) -> Result<(), Failure> {
    let response = c
        .client
        .status(StatusRequest {
            service: args.service.unwrap_or_default(),
        })
        .await
        .map_err(|s| c.fail(&s))?
        .into_inner();
    let identity = response.agent.unwrap_or_default();
    let status = StatusView {
        agent: identity.agent_id,
        cluster: identity.cluster,
        services: response.services.iter().map(view::service).collect(),
    };
    match output {
        Output::Json => print_json(&status)?,
        Output::Text => {
            println!("agent {} in cluster {}", status.agent, status.cluster);
            if status.services.is_empty() {
                println!("no services installed (agentctl install BUNDLE)");
            }
            for service in &status.services {
                print!("{}", view::render_service(service));
            }
        }
    }
    Ok(())
}
