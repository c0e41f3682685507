//! What one journal step writes (#15 deliver 2): every step of a deployment
//! puts its whole `DeploymentRecord` (the engine with every instance) in one
//! etcd transaction. Prints the record's size at the start and at the end
//! of a simulated rollout, for fleets of 150 to 10,000 instances, against
//! etcd's default request limit (1.5 MiB) and the goal for the
//! largest transaction (128 KiB).
//!
//! `cargo bench -p coordinator --bench journal_record`

use coordinator::record::{DeploymentKind, DeploymentRecord, DeploymentState, RECORD_FORMAT};
use rollout::sim::{self, Scenario};
use rollout::{DeploymentId, Engine, FencingToken};

const ETCD_REQUEST_LIMIT: usize = 1536 * 1024;
const GOAL: usize = 128 * 1024;

fn record(engine: Engine, sc: &Scenario) -> DeploymentRecord {
    let clusters_of = sc
        .plan
        .instances
        .iter()
        .filter_map(|i| {
            sc.plan
                .clusters
                .get(i.cluster)
                .map(|c| (i.id.to_string(), c.name.to_string()))
        })
        .collect();
    DeploymentRecord {
        format: RECORD_FORMAT,
        id: "web-1796500000000".to_owned(),
        service: "web".to_owned(),
        target_digest: sc.plan.target.to_string(),
        target_version: "2.0.0".to_owned(),
        actor_user: "operator.lockstep".to_owned(),
        actor_host: "laptop".to_owned(),
        reason: "bench".to_owned(),
        kind: DeploymentKind::Deploy,
        created_unix_ms: 1_796_500_000_000,
        finished_unix_ms: 0,
        state: DeploymentState::Running,
        outcome: String::new(),
        token: 7,
        next_seq: 1,
        clusters_of,
        progress: Default::default(),
        operator_said: String::new(),
        engine,
    }
}

fn main() {
    println!("instances  clusters  batches  record at start  vs 1.5 MiB limit  vs 128 KiB goal");
    for n in [150, 1_000, 3_000, 10_000] {
        let sc = Scenario::large(n, 7);
        let engine = Engine::new(
            DeploymentId("web-1796500000000".to_owned()),
            sc.plan.clone(),
            FencingToken(7),
        );
        let bytes = serde_json::to_vec(&record(engine, &sc)).map_or(0, |v| v.len());
        println!(
            "{n:>9}  {:>8}  {:>7}  {:>12} B  {:>15.2}x  {:>14.2}x",
            sc.plan.clusters.len(),
            sc.plan.batch_count(),
            bytes,
            bytes as f64 / ETCD_REQUEST_LIMIT as f64,
            bytes as f64 / GOAL as f64,
        );
        if n == 10_000 {
            let steps = sim::run_scenario(&sc, false).map_or(0, |r| r.engine_steps);
            println!(
                "a simulated rollout of {n} instances takes {steps} engine steps: about {:.1} GB written to etcd if every step rewrote a record this size",
                steps as f64 * bytes as f64 / 1e9
            );
        }
    }
}
