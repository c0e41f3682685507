//! `lockstep agents [--cluster C]`: every agent the coordinator knows, with
//! reachability, last report, and per service the release and readiness.
//!
//! Must never: change anything.

use proto::v1::ListAgentsRequest;

use crate::client::{Coordinators, Failure};
use crate::{Output, fmt, json, print_json, render};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this cluster.
    #[arg(long)]
    pub cluster: Option<String>,
}

pub async fn run(c: &mut Coordinators, args: Args, output: Output) -> Result<(), Failure> {
    let request = ListAgentsRequest {
        cluster: args.cluster.unwrap_or_default(),
    };
    let agents = c
        .call(|mut client| {
            let request = request.clone();
            async move { client.list_agents(request).await }
        })
        .await?
        .agents;
    match output {
        Output::Json => print_json(&serde_json::json!({
            "agents": agents.iter().map(json::agent).collect::<Vec<_>>(),
        })),
        Output::Text => {
            print!("{}", render::agents(&agents, fmt::now_unix_ms()));
            Ok(())
        }
    }
}
