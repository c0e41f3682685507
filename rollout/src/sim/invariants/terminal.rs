//! Invariant 4: every deployment ends in a terminal state without a human,
//! with every instance on one release (the target, or the one it ran
//! before), and the outcome says which.
//!
//! Checked when the run has settled: the engine finished within a bound of
//! virtual time that needs no operator, and each instance's final release
//! agrees with the outcome.

use crate::engine::Outcome;
use crate::fleet::Installed;
use crate::plan::Plan;

use super::Violation;

/// The latest virtual time by which a deployment must have ended: the
/// progress deadline, the bake or its analyses (and a halt after it), then one healthy deadline per revert, plus slack for
/// in-flight checks and reports.
pub fn bound_ms(plan: &Plan) -> u64 {
    let g = &plan.gates;
    let checks = plan
        .clusters
        .iter()
        .flat_map(|c| c.checks.iter().map(|k| k.timeout.0))
        .max()
        .unwrap_or(0);
    // The bake lasts as long as its longest analysis, if longer.
    let bake_analyses = plan
        .analyses_in(crate::analysis::Phase::Bake)
        .map(|(_, a)| a.deadline().0)
        .max();
    let bake = g.bake_time.0.max(bake_analyses.unwrap_or(0));
    // A failure in the bake without auto_rollback, or an inconclusive bake
    // analysis that halts, halts with a progress deadline of its own.
    let halts_in_bake = plan
        .analyses_in(crate::analysis::Phase::Bake)
        .any(|(_, a)| a.on_inconclusive == crate::analysis::OnInconclusive::Halt);
    let halt_after_bake = if bake > 0 && (!g.auto_rollback || halts_in_bake) {
        g.progress_deadline.0
    } else {
        0
    };
    g.progress_deadline.0
        + bake
        + halt_after_bake
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
    running: &[&Installed],
    initial: &[&Installed],
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
    super::outcome_matches::check(plan, outcome, running, initial)
}
