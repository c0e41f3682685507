//! `lockstep history SERVICE [--limit N]`: a service's deployments, most
//! recent first.
//!
//! Must never: change anything.

use proto::v1::HistoryRequest;

use crate::client::{Coordinators, Failure};
use crate::{Output, json, print_json, render};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service.
    pub service: String,
    /// At most this many deployments (0: the coordinator's default).
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
}

pub async fn run(c: &mut Coordinators, args: Args, output: Output) -> Result<(), Failure> {
    let request = HistoryRequest {
        service: args.service.clone(),
        limit: args.limit,
    };
    let entries = c
        .call(|mut client| {
            let request = request.clone();
            async move { client.history(request).await }
        })
        .await?
        .entries;
    match output {
        Output::Json => print_json(&serde_json::json!({
            "entries": entries.iter().map(json::history_entry).collect::<Vec<_>>(),
        })),
        Output::Text => {
            print!("{}", render::history(&entries, &args.service));
            Ok(())
        }
    }
}
