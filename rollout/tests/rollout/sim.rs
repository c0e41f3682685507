//! The simulator over 10,000 seeds: every invariant after every step.

use rollout::sim::{self, Scenario};

#[test]
fn ten_thousand_seeded_fleets_keep_every_invariant() {
    let summary = sim::run_many(0, 10_000, 3);
    for f in &summary.failures {
        eprintln!("{f}");
    }
    println!("{summary}");
    assert!(summary.failures.is_empty(), "{summary}");
    // The faults must actually bite: every kind of ending shows up.
    assert!(summary.outcomes.iter().all(|&n| n > 0), "{summary}");
    assert!(summary.restarts > 0);
}

#[test]
fn a_seed_replays_identically() {
    let a = sim::run_seed(4242).unwrap();
    let b = sim::run_seed(4242).unwrap();
    assert_eq!(
        (a.outcome, a.engine_steps, a.virtual_ms),
        (b.outcome, b.engine_steps, b.virtual_ms)
    );
}

#[test]
fn a_fault_free_large_fleet_succeeds() {
    let sc = Scenario::large(1_000, 1);
    let r = sim::run_scenario(&sc, false).unwrap();
    assert_eq!(r.outcome, rollout::Outcome::Succeeded);
}
