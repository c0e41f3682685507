//! `lockstep plan --service S --release VERSION|DIGEST [--strategy FILE]`: how a
//! deployment would roll out, without starting it. Exit 1 when the plan has
//! problems (each says how to fix it).
//!
//! Must never: start or change anything.

use std::path::PathBuf;

use proto::v1::PlanRequest;

use crate::client::{Coordinators, Failure};
use crate::{Output, json, print_json, release_name, strategy};

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
}

pub async fn run(c: &mut Coordinators, args: Args, output: Output) -> Result<(), Failure> {
    let release_digest = release_name::resolve(c, &args.service, &args.release).await?;
    let request = PlanRequest {
        service: args.service.clone(),
        release_digest,
        strategy_toml: strategy::load(args.strategy.as_deref())?,
    };
    let plan = c
        .call(|mut client| {
            let request = request.clone();
            async move { client.plan(request).await }
        })
        .await?;
    match output {
        Output::Json => print_json(&json::plan_response(&plan))?,
        Output::Text => {
            if plan.problems.is_empty() {
                print!("{}", with_newline(&plan.rendered));
            } else {
                println!("the plan for {} cannot run:", args.service);
                for p in &plan.problems {
                    println!("  - {p}");
                }
            }
        }
    }
    if plan.problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::Refused(format!(
            "the plan for {} has {} problem(s); fix them and run `lockstep plan` again",
            args.service,
            plan.problems.len()
        )))
    }
}

fn with_newline(s: &str) -> String {
    if s.is_empty() || s.ends_with('\n') {
        s.to_owned()
    } else {
        format!("{s}\n")
    }
}
