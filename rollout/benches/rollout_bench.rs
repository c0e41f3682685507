//! Figures for the issue: time to plan a 10,000-instance fleet, and the time
//! of a complete simulated rollout of 10,000 instances (single-threaded, so
//! wall time is CPU time). Goal: plan < 50 ms, rollout < 1 s.
//!
//! `cargo bench -p rollout --bench rollout_bench`

use std::time::{Duration, Instant};

use rollout::sim::{self, Scenario};
use rollout::{PlanInput, plan};

const INSTANCES: usize = 10_000;

fn best_and_median(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[0], v[v.len() / 2])
}

fn main() {
    let sc = Scenario::large(INSTANCES, 7);
    let previous = sc.fleet.clusters[0].instances[0].release;
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let p = plan(&PlanInput {
            fleet: &sc.fleet,
            strategy: &sc.strategy,
            target: &sc.plan.target,
            previous: &previous,
            overlap: sc.plan.overlap,
        });
        times.push(t.elapsed());
        assert!(p.is_ok());
    }
    let (best, median) = best_and_median(times);
    println!(
        "plan {INSTANCES} instances ({} clusters, {} batches): best {:.2} ms, median {:.2} ms",
        sc.plan.clusters.len(),
        sc.plan.batch_count(),
        best.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e3
    );

    let t = Instant::now();
    let text = sc.plan.render();
    println!(
        "render plan of {INSTANCES} instances: {:.2} ms ({} lines)",
        t.elapsed().as_secs_f64() * 1e3,
        text.lines().count()
    );

    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..5 {
        let t = Instant::now();
        let r = sim::run_scenario(&sc, false);
        times.push(t.elapsed());
        last = Some(r);
    }
    let (best, median) = best_and_median(times);
    let r = match last {
        Some(Ok(r)) => r,
        other => panic!("large rollout did not succeed: {other:?}"),
    };
    println!(
        "simulated rollout of {INSTANCES} instances ({}; {} engine steps, {} simulated events, finished at {:.1} h virtual, invariants checked every step): best {:.1} ms, median {:.1} ms",
        r.outcome,
        r.engine_steps,
        r.steps,
        r.finished_ms as f64 / 3.6e6,
        best.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e3
    );
}
