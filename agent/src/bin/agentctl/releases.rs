//! `agentctl releases SERVICE`.

use proto::v1::{ReleasesRequest, SwitchOutcomeKind};
use serde::Serialize;

use crate::connect::{Connected, Failure};
use crate::{Output, print_json, view};

#[derive(Debug, clap::Args)]
pub struct Args {
    service: String,
}

#[derive(Debug, Serialize)]
struct ReleasesView {
    current: Option<view::ReleaseView>,
    previous: Vec<view::ReleaseView>,
    history: Vec<SwitchView>,
}

#[derive(Debug, Serialize)]
struct SwitchView {
    at_unix_ms: i64,
    from: String,
    to: String,
    trigger: String,
    succeeded: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    reason: String,
}

pub async fn run(mut c: Connected, args: Args, output: Output) -> Result<(), Failure> {
    let response = c
        .client
        .releases(ReleasesRequest {
            service: args.service.clone(),
        })
        .await
        .map_err(|s| c.fail(&s))?
        .into_inner();
    let shown = ReleasesView {
        current: view::release(response.current.as_ref()),
        previous: response
            .previous
            .iter()
            .filter_map(|r| view::release(Some(r)))
            .collect(),
        history: response
            .history
            .iter()
            .map(|h| SwitchView {
                at_unix_ms: h.at_unix_ms,
                from: h.from_digest.clone(),
                to: h.to_digest.clone(),
                trigger: h.trigger.clone(),
                succeeded: h.outcome() == SwitchOutcomeKind::Succeeded,
                reason: h.reason.clone(),
            })
            .collect(),
    };
    match output {
        Output::Json => print_json(&shown)?,
        Output::Text => {
            let line = |r: &view::ReleaseView| format!("{} {}", r.version, r.digest);
            match &shown.current {
                Some(r) => println!("current   {}", line(r)),
                None => println!("current   none"),
            }
            for r in &shown.previous {
                println!("previous  {}", line(r));
            }
            println!("history (oldest first):");
            for h in &shown.history {
                let outcome = if h.succeeded { "ok" } else { "FAILED" };
                println!(
                    "  {} {} -> {} [{}] {} {}",
                    h.at_unix_ms,
                    short(&h.from),
                    short(&h.to),
                    h.trigger,
                    outcome,
                    h.reason
                );
            }
        }
    }
    Ok(())
}

fn short(digest: &str) -> &str {
    match digest.get(..19) {
        Some(prefix) if !digest.is_empty() => prefix,
        _ if digest.is_empty() => "-",
        _ => digest,
    }
}
