//! `agentctl fence show SERVICE` / `agentctl fence reset SERVICE --reason
//! TEXT [--force]`: a service's fencing high-water mark beside what etcd's
//! deployment lock says, and the break-glass that lowers a mark no
//! coordinator can reach (#14 Seen 3) — to what etcd justifies, or to 0
//! with `--force` — audited.

use proto::v1::{ControlFenceRequest, ControlFenceResponse, FenceLockState};
use serde::Serialize;

use crate::connect::{Connected, Failure};
use crate::{Output, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// The service's high-water mark and its deployment lock in etcd.
    Show { service: String },
    /// Lower the mark to the deployment lock's token (or, with the lock
    /// free, etcd's revision). Audited; needs --reason.
    Reset {
        service: String,
        /// Why, for the audit log.
        #[arg(long)]
        reason: String,
        /// Reset to 0 whatever etcd says (etcd unreachable, or no [etcd]).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Serialize)]
struct FenceShown {
    service: String,
    high_water: u64,
    lock_key: String,
    lock: &'static str,
    /// The lock's token when held; etcd's revision when free.
    lock_token: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    unread: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reset_to: Option<u64>,
}

fn shown(r: &ControlFenceResponse) -> FenceShown {
    let lock = match r.lock_state() {
        FenceLockState::Held => "held",
        FenceLockState::Free => "free",
        FenceLockState::Unreadable => "unreadable",
        FenceLockState::Unchecked => "unchecked",
        FenceLockState::Unspecified => "unknown",
    };
    FenceShown {
        service: r.service.clone(),
        high_water: r.high_water,
        lock_key: r.lock_key.clone(),
        lock,
        lock_token: r.lock_token,
        unread: r.unread.clone(),
        reset_to: r.reset.then_some(r.reset_to),
    }
}

pub async fn run(mut c: Connected, args: Args, output: Output) -> Result<(), Failure> {
    let request = match args.action {
        Action::Show { service } => ControlFenceRequest {
            service,
            ..Default::default()
        },
        Action::Reset {
            service,
            reason,
            force,
        } => ControlFenceRequest {
            service,
            reset: true,
            force,
            reason,
        },
    };
    let reset = request.reset;
    let response = c
        .client
        .fence(request)
        .await
        .map_err(|s| c.fail(&s))?
        .into_inner();
    let shown = shown(&response);
    match output {
        Output::Json => print_json(&shown)?,
        Output::Text => print_text(&shown, reset),
    }
    Ok(())
}

fn print_text(f: &FenceShown, reset: bool) {
    println!("{}: fencing high-water mark {}", f.service, f.high_water);
    match f.lock {
        "held" => println!("  etcd: {} held with token {}", f.lock_key, f.lock_token),
        "free" => println!(
            "  etcd: {} free (etcd revision {}: every later lock's token is above it)",
            f.lock_key, f.lock_token
        ),
        "unchecked" => println!("  etcd: none configured, tokens are not checked against a lock"),
        _ => println!("  etcd: cannot read {}: {}", f.lock_key, f.unread),
    }
    match (reset, f.reset_to) {
        (_, Some(to)) => println!("  reset: mark lowered to {to} (audited)"),
        (true, None) => println!("  reset: nothing to do, etcd justifies the mark"),
        (false, None) => {}
    }
}
