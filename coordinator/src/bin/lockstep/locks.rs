//! `lockstep locks [--cluster C]`: every lock, who holds it, why, since
//! when, until when. `lockstep locks break SERVICE --reason TEXT`: the
//! break-glass revocation of a service's deployment lock, audited.
//!
//! Must never: break a lock without a reason, or break anything but the
//! one lock named.

use proto::v1::{BreakLockRequest, ListLocksRequest};

use crate::client::{self, Coordinators, Failure};
use crate::{Output, fmt, json, print_json, render};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this cluster's locks.
    #[arg(long)]
    pub cluster: Option<String>,
    #[command(subcommand)]
    pub action: Option<Action>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Break-glass: revoke SERVICE's deployment lock (its holder loses its
    /// fencing token); writes an audit record.
    Break {
        /// The service whose deployment lock to break.
        service: String,
        /// Why (required): recorded in the audit log.
        #[arg(long)]
        reason: String,
    },
}

pub async fn run(c: &mut Coordinators, args: Args, output: Output) -> Result<(), Failure> {
    match args.action {
        Some(Action::Break { service, reason }) => breaks(c, service, reason, output).await,
        None => list(c, args.cluster.unwrap_or_default(), output).await,
    }
}

async fn list(c: &mut Coordinators, cluster: String, output: Output) -> Result<(), Failure> {
    let request = ListLocksRequest { cluster };
    let locks = c
        .call(|mut client| {
            let request = request.clone();
            async move { client.list_locks(request).await }
        })
        .await?
        .locks;
    match output {
        Output::Json => print_json(&serde_json::json!({
            "locks": locks.iter().map(json::lock).collect::<Vec<_>>(),
        })),
        Output::Text => {
            print!("{}", render::locks(&locks, fmt::now_unix_ms()));
            Ok(())
        }
    }
}

async fn breaks(
    c: &mut Coordinators,
    service: String,
    reason: String,
    output: Output,
) -> Result<(), Failure> {
    if reason.trim().is_empty() {
        return Err(Failure::Local(
            "--reason must say why the lock is broken (it goes into the audit log)".to_owned(),
        ));
    }
    let request = BreakLockRequest {
        service,
        actor: Some(client::actor()),
        reason,
    };
    let response = c
        .call(|mut client| {
            let request = request.clone();
            async move { client.break_lock(request).await }
        })
        .await?;
    match output {
        Output::Json => print_json(&json::break_lock_response(&response)),
        Output::Text => {
            print!(
                "{}",
                render::broken_lock(
                    response.broken.as_ref(),
                    response.audit_seq,
                    fmt::now_unix_ms()
                )
            );
            Ok(())
        }
    }
}
