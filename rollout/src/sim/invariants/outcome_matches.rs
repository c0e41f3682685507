//! Invariant 8 (its release half): what a terminal deployment reports is
//! what the hosts run. Checked at the instant the engine finishes, not only
//! once the run has settled: `succeeded` means every instance runs the
//! target now; `rolled_back` that every instance runs the release it ran
//! before; `aborted` and `failed` that every instance not named in the
//! outcome does.

use std::collections::HashSet;

use crate::engine::Outcome;
use crate::fleet::{Installed, InstanceId};
use crate::plan::Plan;

use super::Violation;

fn bad(message: String) -> Violation {
    Violation {
        invariant: "8 (outcome matches the hosts)",
        message,
    }
}

/// `running[ix]` is what instance `ix` runs now, `initial[ix]` what it ran
/// before the deployment: an instance that already ran the target and was
/// never touched may still run it after a rollback.
pub fn check(
    plan: &Plan,
    outcome: &Outcome,
    running: &[&Installed],
    initial: &[&Installed],
) -> Result<(), Violation> {
    let set = |v: &[InstanceId]| v.iter().cloned().collect::<HashSet<_>>();
    let (may_be_target, must_be_original): (HashSet<InstanceId>, bool) = match outcome {
        Outcome::Succeeded => (HashSet::new(), false),
        Outcome::RolledBack { .. } => (HashSet::new(), true),
        Outcome::Aborted {
            on_target,
            unsettled,
            ..
        } => {
            let mut s = set(on_target);
            s.extend(unsettled.iter().cloned());
            (s, true)
        }
        Outcome::Failed { instances, .. } => (set(instances), true),
    };
    for (ix, inst) in plan.instances.iter().enumerate() {
        let r = running[ix];
        let on_target = r == &plan.target;
        if !on_target && r != &inst.original {
            return Err(bad(format!(
                "{} runs {r}, neither the target nor its previous release {}",
                inst.id, inst.original
            )));
        }
        match outcome {
            Outcome::Succeeded if !on_target => {
                return Err(bad(format!("outcome succeeded but {} runs {r}", inst.id)));
            }
            _ if must_be_original
                && r != &inst.original
                && r != initial[ix]
                && !may_be_target.contains(&inst.id) =>
            {
                return Err(bad(format!(
                    "outcome {outcome} but {} runs the target and is not named in it",
                    inst.id
                )));
            }
            _ => {}
        }
    }
    Ok(())
}
