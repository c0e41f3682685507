//! `agentctl logs SERVICE [-f] [-n N]`.

use proto::v1::LogsRequest;
use serde::Serialize;

use crate::connect::{Connected, Failure};
use crate::{Output, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    service: String,
    /// Keep printing new lines as they are written.
    #[arg(short, long)]
    follow: bool,
    /// How many of the last lines to print first.
    #[arg(short = 'n', long, default_value_t = 50)]
    lines: u32,
    /// Only this instance slot.
    #[arg(long)]
    slot: Option<u32>,
}

#[derive(Debug, Serialize)]
struct LineView<'a> {
    slot: u32,
    line: &'a str,
}

pub async fn run(mut c: Connected, args: Args, output: Output) -> Result<(), Failure> {
    let mut stream = c
        .client
        .logs(LogsRequest {
            service: args.service,
            slot: args.slot,
            lines: args.lines,
            follow: args.follow,
        })
        .await
        .map_err(|s| c.fail(&s))?
        .into_inner();
    while let Some(line) = stream.message().await.map_err(|s| c.fail(&s))? {
        match output {
            Output::Json => print_json(&LineView {
                slot: line.slot,
                line: &line.line,
            })?,
            Output::Text => println!("[{}] {}", line.slot, line.line),
        }
    }
    Ok(())
}
