//! `lockstep agents [--cluster C] [--all]`: every agent the coordinator
//! knows, with reachability, last report, and per service the release and
//! readiness; above `render::AGENTS_LISTED` agents (without `--all`), the
//! fleet per cluster and only the agents unreachable or not ready.
//!
//! Must never: change anything.

use proto::v1::{AgentSummary, ListAgentsRequest};

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

/// Agents a page of ListAgents holds: about 0.5 MB (all 10,000 agents
/// of a coordinator were 4.9 MB), well inside gRPC's default 4 MiB.
const PAGE_SIZE: u32 = 1_000;
/// Pages followed before giving up: a coordinator tracks at most 10,000
/// agents (10 pages), so more means the pages do not end.
const MAX_PAGES: usize = 100;

/// Every agent (of `cluster`; empty: all), a page at a time.
pub async fn list(c: &mut Coordinators, cluster: &str) -> Result<Vec<AgentSummary>, Failure> {
    let mut agents = Vec::new();
    let mut after = None;
    for _ in 0..MAX_PAGES {
        let request = ListAgentsRequest {
            cluster: cluster.to_owned(),
            page_size: PAGE_SIZE,
            after: after.clone(),
        };
        let page = c
            .call(|mut client| {
                let request = request.clone();
                async move { client.list_agents(request).await }
            })
            .await?;
        agents.extend(page.agents);
        match page.next {
            None => return Ok(agents),
            next => after = next,
        }
    }
    Err(Failure::Refused(format!(
        "the coordinator's list of agents did not end after {MAX_PAGES} pages of {PAGE_SIZE}; report this as a bug"
    )))
}

pub async fn run(c: &mut Coordinators, args: Args, output: Output) -> Result<(), Failure> {
    let agents = list(c, args.cluster.as_deref().unwrap_or_default()).await?;
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
