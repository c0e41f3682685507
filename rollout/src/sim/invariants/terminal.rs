//! Invariant 4: every deployment ends in a terminal state without a human,
//! with every instance on one release (the target, or the one it ran
//! before), and the outcome says which.
//!
//! Checked when the run has settled: the engine finished within a bound of
//! virtual time that needs no operator, and each instance's final release
//! agrees with the outcome.

use std::collections::HashSet;

use crate::engine::Outcome;
use crate::fleet::{InstanceId, ReleaseDigest};
use crate::plan::Plan;

use super::Violation;

/// The latest virtual time by which a deployment must have ended: the
/// progress deadline, then one healthy deadline per revert, plus slack for
/// in-flight checks and reports.
pub fn bound_ms(plan: &Plan) -> u64 {
    let g = &plan.gates;
    let checks = plan
        .clusters
        .iter()
        .flat_map(|c| c.checks.iter().map(|k| k.timeout.0))
        .max()
        .unwrap_or(0);
    g.progress_deadline.0
        + (plan.instances.len() as u64 + 1) * g.healthy_deadline.0
        + checks
        + 60_000
}

fn bad(message: String) -> Violation {
    Violation {
        invariant: "4 (terminal, consistent)",
        message,
    }
}

/// Checks the settled run. `running[ix]` is what instance `ix` runs now,
/// `initial[ix]` what it ran before the deployment: an instance that already
/// ran the target and was never touched may still run it after a rollback.
pub fn check(
    plan: &Plan,
    outcome: Option<&Outcome>,
    finished_at: Option<u64>,
    running: &[&ReleaseDigest],
    initial: &[&ReleaseDigest],
) -> Result<(), Violation> {
    let Some(outcome) = outcome else {
        return Err(bad(
            "the run settled but the deployment never reached a terminal state".to_owned(),
        ));
    };
    let bound = bound_ms(plan);
    if let Some(t) = finished_at {
        if t > bound {
            return Err(bad(format!(
                "finished at {t} ms, after the bound of {bound} ms"
            )));
        }
    }
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
