//! Printing the answer to install, restart and rollback.

use proto::v1::SwitchReply;
use serde::Serialize;

use crate::connect::Failure;
use crate::{Output, print_json, view};

#[derive(Debug, Serialize)]
struct ReplyView {
    accepted: bool,
    message: String,
    service: Option<view::ServiceView>,
}

/// Prints the reply; a refusal becomes a failure (exit 1) carrying the
/// agent's message, which says what to do next.
pub fn print(reply: &SwitchReply, output: Output) -> Result<(), Failure> {
    let verdict = reply.verdict.clone().unwrap_or_default();
    let accepted = view::accepted(verdict.outcome());
    let shown = ReplyView {
        accepted,
        message: verdict.message.clone(),
        service: reply.service.as_ref().map(view::service),
    };
    match output {
        Output::Json => print_json(&shown)?,
        Output::Text => {
            if accepted {
                println!("{}", shown.message);
            }
            if let Some(service) = &shown.service {
                print!("{}", view::render_service(service));
            }
        }
    }
    if accepted {
        Ok(())
    } else {
        Err(Failure::Refused(verdict.message))
    }
}
