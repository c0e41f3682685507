//! The simulator: drives the engine against a simulated fleet in virtual
//! time with seeded faults, and checks DESIGN.md's invariants 1, 2, 4, 5, 6 and 8
//! after every step.
//!
//! Owns scenario generation (`scenario`), the world and driver (`world`),
//! the PRNG (`rng`) and one file per invariant (`invariants/`). Must never
//! be needed by the engine: it is a test harness that ships in the crate so
//! `lockstep`'s developers can replay a seed with `simulate --seed S`.
//!
//! ```text
//!   seed ─► Scenario::generate ─► World::run ─► Ok(report) | Err(failure)
//!                                     │ violation
//!                                     ▼
//!                     shrink: turn fault classes off while it still fails
//!                                     ▼
//!                     seed + remaining faults + trace of the last steps
//! ```

pub mod invariants;
pub mod rng;
pub mod scenario;
pub mod world;

use std::fmt;

pub use scenario::{FaultClass, Faults, Scenario};
pub use world::{RunFailure, RunReport, World};

/// A seed that broke an invariant, shrunk to the fewest fault classes that
/// still break it, with the trace of that run.
#[derive(Debug, Clone)]
pub struct SeedFailure {
    /// The seed.
    pub seed: u64,
    /// Fault classes still switched on after shrinking.
    pub faults: Vec<FaultClass>,
    /// The failure of the shrunk run, with its trace.
    pub failure: RunFailure,
}

impl fmt::Display for SeedFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {} violates {}", self.seed, self.failure.violation)?;
        writeln!(f, "  at virtual time {} ms", self.failure.at_ms)?;
        writeln!(f, "  minimal fault classes: {:?}", self.faults)?;
        writeln!(
            f,
            "  replay: cargo run -p rollout --bin simulate -- --seed {}",
            self.seed
        )?;
        writeln!(f, "  trace (last {} lines):", self.failure.trace.len())?;
        for line in &self.failure.trace {
            writeln!(f, "    {line}")?;
        }
        Ok(())
    }
}

/// Runs one scenario with its faults.
pub fn run_scenario(sc: &Scenario, trace: bool) -> Result<RunReport, RunFailure> {
    World::new(sc, trace).run()
}

/// Runs one scenario and keeps every engine input in `RunReport::inputs`.
pub fn run_scenario_recorded(sc: &Scenario) -> Result<RunReport, RunFailure> {
    World::new(sc, false).recording().run()
}

/// Runs the scenario for `seed`; on a violation, shrinks it and returns the
/// seed, the remaining faults and a trace.
pub fn run_seed(seed: u64) -> Result<RunReport, Box<SeedFailure>> {
    let sc = Scenario::generate(seed);
    match run_scenario(&sc, false) {
        Ok(r) => Ok(r),
        Err(_) => Err(Box::new(shrink(sc))),
    }
}

/// Turns fault classes off one at a time, keeping each change that still
/// fails, then re-runs the result with tracing on.
pub fn shrink(mut sc: Scenario) -> SeedFailure {
    for class in FaultClass::ALL {
        if !sc.faults.has(class) {
            continue;
        }
        let mut trial = sc.clone();
        trial.faults = sc.faults.without(class);
        if run_scenario(&trial, false).is_err() {
            sc = trial;
        }
    }
    let faults = FaultClass::ALL
        .into_iter()
        .filter(|c| sc.faults.has(*c))
        .collect();
    let failure = match run_scenario(&sc, true) {
        Err(f) => f,
        Ok(_) => RunFailure {
            violation: invariants::Violation {
                invariant: "?",
                message: "the failure did not reproduce with tracing on".to_owned(),
            },
            at_ms: 0,
            trace: Vec::new(),
        },
    };
    SeedFailure {
        seed: sc.seed,
        faults,
        failure,
    }
}

/// Totals over many seeds.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Seeds run.
    pub runs: u64,
    /// Outcomes: succeeded, rolled back, aborted, failed.
    pub outcomes: [u64; 4],
    /// Engine steps over all runs.
    pub engine_steps: u64,
    /// Coordinator restarts over all runs.
    pub restarts: u64,
    /// Failing seeds (shrunk).
    pub failures: Vec<SeedFailure>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [s, r, a, x] = self.outcomes;
        write!(
            f,
            "{} runs: {s} succeeded, {r} rolled_back, {a} aborted, {x} failed; {} engine steps, {} coordinator restarts; {} invariant violation(s)",
            self.runs,
            self.engine_steps,
            self.restarts,
            self.failures.len()
        )
    }
}

/// Runs seeds `start..start + count`, stopping after `max_failures` failures.
pub fn run_many(start: u64, count: u64, max_failures: usize) -> Summary {
    let mut sum = Summary::default();
    for seed in start..start.saturating_add(count) {
        sum.runs += 1;
        match run_seed(seed) {
            Ok(r) => {
                let k = match r.outcome {
                    crate::engine::Outcome::Succeeded => 0,
                    crate::engine::Outcome::RolledBack { .. } => 1,
                    crate::engine::Outcome::Aborted { .. } => 2,
                    crate::engine::Outcome::Failed { .. } => 3,
                };
                sum.outcomes[k] += 1;
                sum.engine_steps += r.engine_steps;
                sum.restarts += u64::from(r.restarts);
            }
            Err(e) => {
                sum.failures.push(*e);
                if sum.failures.len() >= max_failures {
                    break;
                }
            }
        }
    }
    sum
}
