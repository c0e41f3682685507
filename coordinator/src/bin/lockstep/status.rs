//! `lockstep status [ID]`: without ID, the fleet per cluster (agents up,
//! per service: readiness and the releases running) and the deployment
//! locks (who deploys what); with ID, one deployment.
//!
//! Must never: change anything.

use std::collections::BTreeMap;

use proto::v1::{GetDeploymentRequest, ListLocksRequest, LockKind};

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
    let agents = crate::agents::list(c, "").await?;
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
    // A deployment lock names its deployment: its state (paused, awaiting
    // approval, rolling back) is what the operator needs to see.
    let mut deployments = Vec::new();
    for lock in locks
        .iter()
        .filter(|l| l.kind == LockKind::Deployment as i32 && !l.purpose.is_empty())
    {
        let request = GetDeploymentRequest {
            deployment_id: lock.purpose.clone(),
        };
        let read = c
            .call(|mut client| {
                let request = request.clone();
                async move { client.get_deployment(request).await }
            })
            .await;
        match read {
            Ok(d) => deployments.push(d),
            Err(err @ (Failure::Unreachable { .. } | Failure::NoLeader { .. })) => return Err(err),
            // A lock whose deployment has no record (its first journal
            // write failed while the lock was held, #15): the fleet is
            // still worth showing, the state as `?`.
            Err(err) => eprintln!(
                "lockstep: deployment {} (lock {}) cannot be read: {err}",
                lock.purpose, lock.key
            ),
        }
    }
    let states: BTreeMap<String, String> = deployments
        .iter()
        .map(|d| (d.id.clone(), json::deployment_state(d.state)))
        .collect();
    match output {
        Output::Json => {
            let doc = serde_json::json!({
                "clusters": render::rollup(&agents),
                "deployments": deployments.iter().map(|d| serde_json::json!({
                    "id": d.id,
                    "service": d.service,
                    "state": json::deployment_state(d.state),
                    "outcome": d.outcome,
                })).collect::<Vec<_>>(),
                "locks": locks.iter().map(json::lock).collect::<Vec<_>>(),
            });
            print_json(&doc)
        }
        Output::Text => {
            print!(
                "{}",
                render::status(&agents, &locks, &states, fmt::now_unix_ms())
            );
            Ok(())
        }
    }
}
