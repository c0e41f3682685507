//! Invariant 2: at most one deployment of a service is active.
//!
//! From the engine's side: one engine drives at a time (a restored engine
//! replaces the old one and holds a strictly newer token), every apply
//! carries the driving engine's token, a deployment finishes exactly once,
//! `Finish`/`StepDown` is the last action, and a finished engine emits
//! nothing ever again. The lease side (a dead holder's lock expires within
//! its TTL) is the `leases` crate's to test against etcd.

use crate::engine::Action;
use crate::fleet::FencingToken;

use super::Violation;

/// Counts finishes and watches tokens.
#[derive(Debug, Default)]
pub struct SingleDeployment {
    finishes: usize,
    last_token: Option<FencingToken>,
}

impl SingleDeployment {
    /// A new engine took over with `token`.
    pub fn takeover(&mut self, token: FencingToken) -> Result<(), Violation> {
        if self.last_token.is_some_and(|t| token <= t) {
            return Err(Violation {
                invariant: "2 (single deployment)",
                message: format!(
                    "a restored engine holds {token}, not newer than the previous one's"
                ),
            });
        }
        self.last_token = Some(token);
        Ok(())
    }

    /// Checks one step: `was_done` is whether the engine was finished before it.
    pub fn check(
        &mut self,
        was_done: bool,
        token: FencingToken,
        actions: &[Action],
    ) -> Result<(), Violation> {
        let bad = |message: String| {
            Err(Violation {
                invariant: "2 (single deployment)",
                message,
            })
        };
        if was_done && !actions.is_empty() {
            return bad(format!(
                "a finished engine emitted {} action(s): {:?}",
                actions.len(),
                actions[0]
            ));
        }
        for (k, a) in actions.iter().enumerate() {
            match a {
                Action::Apply {
                    token: t, instance, ..
                } if *t != token => {
                    return bad(format!(
                        "apply to {instance} carries {t}, but the driving engine holds {token}"
                    ));
                }
                Action::Finish(_) | Action::StepDown { .. } => {
                    if matches!(a, Action::Finish(_)) {
                        self.finishes += 1;
                        if self.finishes > 1 {
                            return bad("the deployment finished twice".to_owned());
                        }
                    }
                    if k + 1 != actions.len() {
                        return bad(format!("{a:?} was followed by more actions"));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}
