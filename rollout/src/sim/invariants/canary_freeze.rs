//! Invariant 6: once a canary fails, no further instance receives that
//! release.
//!
//! Checked in its stronger form, which the engine promises: once any
//! failure of the target (an instance failed or crash-looped on it, or a
//! check failed) has reached the engine, it never emits `Apply(target)`.

use crate::engine::{Action, Event};
use crate::fleet::ReleaseDigest;

use super::Violation;

/// Remembers whether a failure has been delivered.
#[derive(Debug, Default)]
pub struct CanaryFreeze {
    frozen_by: Option<String>,
}

impl CanaryFreeze {
    /// Call with each event before the engine sees it.
    pub fn observe(&mut self, target: &ReleaseDigest, event: &Event) {
        if self.frozen_by.is_some() {
            return;
        }
        let what = match event {
            Event::InstanceFailed {
                instance, release, ..
            }
            | Event::InstanceCrashLooping {
                instance, release, ..
            } if release == target => {
                format!("{instance} failed on the target")
            }
            Event::CheckFailed { run, .. } => format!("check run {} failed", run.0),
            _ => return,
        };
        self.frozen_by = Some(what);
    }

    /// Checks one step's actions.
    pub fn check(&self, target: &ReleaseDigest, actions: &[Action]) -> Result<(), Violation> {
        let Some(why) = &self.frozen_by else {
            return Ok(());
        };
        for a in actions {
            if let Action::Apply {
                instance, release, ..
            } = a
            {
                if release == target {
                    return Err(Violation {
                        invariant: "6 (no target after a failure)",
                        message: format!("apply of the target to {instance} after {why}"),
                    });
                }
            }
        }
        Ok(())
    }
}
