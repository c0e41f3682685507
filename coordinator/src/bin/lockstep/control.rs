//! `lockstep pause|resume|approve|abort ID`: the four calls that steer a
//! running deployment. Each prints the deployment as it is afterwards.
//!
//! Must never: decide whether the call is allowed (the coordinator refuses
//! with a message saying why, e.g. approving a deployment not waiting).

use proto::v1::{AbortRequest, ApproveRequest, Deployment, PauseRequest, ResumeRequest};

use crate::client::{self, Coordinators, Failure};
use crate::{Output, fmt, json, print_json, render};

#[derive(Debug, clap::Args)]
pub struct IdArgs {
    /// The deployment id.
    pub id: String,
}

#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    /// The deployment id.
    pub id: String,
    /// Why, for the history.
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    /// The deployment id.
    pub id: String,
    /// The cluster the approval is for; refused if the deployment waits on another.
    #[arg(long)]
    pub cluster: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct AbortArgs {
    /// The deployment id.
    pub id: String,
    /// Why (required): recorded in the history.
    #[arg(long)]
    pub reason: String,
}

pub async fn pause(c: &mut Coordinators, args: PauseArgs, output: Output) -> Result<(), Failure> {
    let request = PauseRequest {
        deployment_id: args.id,
        actor: Some(client::actor()),
        reason: args.reason,
    };
    let d = c
        .call(|mut client| {
            let request = request.clone();
            async move { client.pause(request).await }
        })
        .await?;
    show(&d, output)
}

pub async fn resume(c: &mut Coordinators, args: IdArgs, output: Output) -> Result<(), Failure> {
    let request = ResumeRequest {
        deployment_id: args.id,
        actor: Some(client::actor()),
    };
    let d = c
        .call(|mut client| {
            let request = request.clone();
            async move { client.resume(request).await }
        })
        .await?;
    show(&d, output)
}

pub async fn approve(
    c: &mut Coordinators,
    args: ApproveArgs,
    output: Output,
) -> Result<(), Failure> {
    let request = ApproveRequest {
        deployment_id: args.id,
        actor: Some(client::actor()),
        cluster: args.cluster.unwrap_or_default(),
    };
    let d = c
        .call(|mut client| {
            let request = request.clone();
            async move { client.approve(request).await }
        })
        .await?;
    show(&d, output)
}

pub async fn abort(c: &mut Coordinators, args: AbortArgs, output: Output) -> Result<(), Failure> {
    if args.reason.trim().is_empty() {
        return Err(Failure::Local(
            "--reason must say why the deployment is aborted (it goes into the history)".to_owned(),
        ));
    }
    let request = AbortRequest {
        deployment_id: args.id,
        actor: Some(client::actor()),
        reason: args.reason,
    };
    let d = c
        .call(|mut client| {
            let request = request.clone();
            async move { client.abort(request).await }
        })
        .await?;
    show(&d, output)
}

fn show(d: &Deployment, output: Output) -> Result<(), Failure> {
    match output {
        Output::Json => print_json(&json::deployment(d)),
        Output::Text => {
            print!("{}", render::deployment(d, fmt::now_unix_ms()));
            Ok(())
        }
    }
}
