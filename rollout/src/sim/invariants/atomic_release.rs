//! Invariant 5: no instance runs a mix of one release's code and another's
//! config.
//!
//! A release is one digest for code + config + run spec, so the engine can
//! only break this by sending an instance something other than a whole
//! known release: the target, or the release *that instance* ran before.

use crate::engine::Action;
use crate::plan::Plan;

use super::Violation;

/// Checks every `Apply` the engine emits.
#[derive(Debug, Default)]
pub struct AtomicRelease;

impl AtomicRelease {
    /// Checks one step's actions.
    pub fn check(
        &self,
        plan: &Plan,
        position: impl Fn(&crate::fleet::InstanceId) -> Option<usize>,
        actions: &[Action],
    ) -> Result<(), Violation> {
        for a in actions {
            if let Action::Apply {
                instance, release, ..
            } = a
            {
                let Some(ix) = position(instance) else {
                    return Err(Violation {
                        invariant: "5 (atomic release)",
                        message: format!("apply to {instance}, which is not in the plan"),
                    });
                };
                let original = &plan.instances[ix].original;
                if release != &plan.target && release != original {
                    return Err(Violation {
                        invariant: "5 (atomic release)",
                        message: format!(
                            "apply of {release} to {instance}: neither the target nor its own previous release {original}"
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}
