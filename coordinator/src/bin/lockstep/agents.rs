//! `lockstep agents [--cluster C] [--all]`: every agent the coordinator
//! knows, with reachability, last report, and per service the release and
//! readiness; above `render::AGENTS_LISTED` agents (without `--all`), the
//! fleet per cluster and only the agents unreachable or not ready.
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
    /// List every agent, however many (above 50, the text output is
    /// otherwise a summary per cluster and the agents that need attention).
    #[arg(long)]
    pub all: bool,
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
        Output::Text if args.all || agents.len() <= render::AGENTS_LISTED => {
            print!("{}", render::agents(&agents, fmt::now_unix_ms()));
            Ok(())
        }
        Output::Text => {
            print!("{}", render::agents_summary(&agents, fmt::now_unix_ms()));
            Ok(())
        }
    }
}
