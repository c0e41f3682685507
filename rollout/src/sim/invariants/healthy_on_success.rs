//! Invariant 8 (its health half): no terminal `succeeded` once a touched
//! host was reported unhealthy on the target: an instance that failed,
//! crash-looped, exited or stopped being ready after it was ready, in its
//! own batch, while later waves ran, or in the bake window after the last
//! batch.

use crate::engine::{Action, Event, Outcome};
use crate::fleet::ReleaseDigest;

use super::Violation;

/// Remembers the first unhealthy report about the target that reached the engine.
#[derive(Debug, Default)]
pub struct HealthyOnSuccess {
    unhealthy: Option<String>,
}

impl HealthyOnSuccess {
    /// Call with each event before the engine sees it.
    pub fn observe(&mut self, target: &ReleaseDigest, event: &Event) {
        if self.unhealthy.is_some() {
            return;
        }
        let instance = match event {
            Event::InstanceUnhealthy {
                instance, release, ..
            }
            | Event::InstanceCrashLooping {
                instance, release, ..
            }
            | Event::InstanceFailed {
                instance, release, ..
            } if release == target => instance,
            _ => return,
        };
        self.unhealthy = Some(format!("{instance} was reported unhealthy on the target"));
    }

    /// Checks one step's actions.
    pub fn check(&self, actions: &[Action]) -> Result<(), Violation> {
        let Some(why) = &self.unhealthy else {
            return Ok(());
        };
        if actions
            .iter()
            .any(|a| matches!(a, Action::Finish(Outcome::Succeeded)))
        {
            return Err(Violation {
                invariant: "8 (no success while a host is unhealthy)",
                message: format!("finished succeeded after {why}"),
            });
        }
        Ok(())
    }
}
