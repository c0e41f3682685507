//! `agentctl locks`: who holds the cluster's disruption budget, who waits.

use proto::v1::{ControlLocksRequest, LockInfo};
use serde::Serialize;

use crate::connect::{Connected, Failure};
use crate::{Output, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {}

#[derive(Debug, Serialize)]
struct LocksView {
    cluster: String,
    budget: u32,
    holders: Vec<LockView>,
    waiters: Vec<LockView>,
    #[serde(skip_serializing_if = "String::is_empty")]
    unavailable: String,
}

#[derive(Debug, Serialize)]
struct LockView {
    key: String,
    holder: String,
    purpose: String,
    since_unix_ms: i64,
}

fn lock(info: &LockInfo) -> LockView {
    let holder = info
        .holder
        .as_ref()
        .map(|h| format!("{}@{} (pid {})", h.user, h.host, h.pid))
        .unwrap_or_default();
    LockView {
        key: info.key.clone(),
        holder,
        purpose: info.purpose.clone(),
        since_unix_ms: info.since_unix_ms,
    }
}

pub async fn run(mut c: Connected, _args: Args, output: Output) -> Result<(), Failure> {
    let response = c
        .client
        .locks(ControlLocksRequest {})
        .await
        .map_err(|s| c.fail(&s))?
        .into_inner();
    let shown = LocksView {
        cluster: response.cluster,
        budget: response.budget,
        holders: response.holders.iter().map(lock).collect(),
        waiters: response.waiters.iter().map(lock).collect(),
        unavailable: response.unavailable,
    };
    match output {
        Output::Json => print_json(&shown)?,
        Output::Text => {
            if !shown.unavailable.is_empty() {
                println!("etcd unavailable: {}", shown.unavailable);
                return Ok(());
            }
            println!(
                "cluster {}: disruption budget {}",
                shown.cluster, shown.budget
            );
            for (what, list) in [("holds", &shown.holders), ("waits", &shown.waiters)] {
                for l in list {
                    println!("  {what}  {}  {}  ({})", l.key, l.holder, l.purpose);
                }
            }
            if shown.holders.is_empty() && shown.waiters.is_empty() {
                println!("  nobody holds or waits");
            }
        }
    }
    Ok(())
}
