//! What the journal writes per deployment (#15 deliver 2), format 2: each
//! step puts a small header, its entry and its events' pages; a snapshot
//! of the whole record is written when the log since the last one
//! outweighs it. Drives a simulated fault-free rollout through the same
//! pure bookkeeping and transaction plans the driver uses
//! (`step_log::{advance, plan_step, plan_snapshot}`), with readinesses of
//! one moment in one step as the driver groups them (`steps_of`), and
//! prints, for
//! 150 / 1,000 / 10,000 instances (clusters of 100, batches of 25; and
//! 10,000 in one batch): bytes per step (mean, max), the largest
//! transaction (bytes, operations), snapshots (size, count) and the total
//! written, against the goal (128 KiB, 128 operations) and what format 1
//! (the whole record every step) wrote.
//!
//! `cargo bench -p coordinator --bench journal_record`

use coordinator::record::{DeploymentKind, DeploymentRecord, DeploymentState, RECORD_FORMAT};
use coordinator::step_log::{
    TxnPlan, plan_create, plan_snapshot, plan_step, snapshot_due, steps_of,
};
use rollout::sim::{self, Scenario};
use rollout::{DeploymentId, Engine, Event, FencingToken, Millis};

const GOAL_BYTES: usize = 128 * 1024;
const GOAL_OPS: usize = 128;

fn record(sc: &Scenario) -> DeploymentRecord {
    let plan = &sc.plan;
    let clusters_of = plan
        .instances
        .iter()
        .filter_map(|i| {
            plan.clusters
                .get(i.cluster)
                .map(|c| (i.id.to_string(), c.name.to_string()))
        })
        .collect();
    DeploymentRecord {
        format: RECORD_FORMAT,
        id: "web-1796500000000".to_owned(),
        service: "web".to_owned(),
        target_digest: plan.target.to_string(),
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
        engine: Engine::new(
            DeploymentId("web-1796500000000".to_owned()),
            plan.clone(),
            FencingToken(7),
        ),
        log: Default::default(),
    }
}

#[derive(Default)]
struct Tally {
    steps: usize,
    step_bytes: usize,
    max_step_bytes: usize,
    largest_txn: usize,
    largest_ops: usize,
    snapshots: usize,
    snapshot_bytes: usize,
    total: usize,
}

impl Tally {
    fn txn(&mut self, txn: &TxnPlan) -> usize {
        let bytes = txn.bytes();
        self.largest_txn = self.largest_txn.max(bytes);
        self.largest_ops = self.largest_ops.max(txn.op_count());
        self.total += bytes;
        bytes
    }
}

fn run(label: &str, sc: &Scenario) -> Result<(), String> {
    let report =
        sim::run_scenario_recorded(sc).map_err(|e| format!("the simulated run failed: {e:?}"))?;
    let mut record = record(sc);
    let format_1_record = serde_json::to_vec(&record).map_or(0, |v| v.len());
    let mut t = Tally::default();
    let (chunks, create) = plan_create(&mut record).map_err(|e| e.to_string())?;
    for txn in chunks.iter().chain([&create]) {
        t.txn(txn);
    }
    t.snapshots += 1;
    t.snapshot_bytes = record.log.snapshot_bytes as usize;
    // The run's clock starts at 0; the record's at its creation.
    let created = u64::try_from(record.created_unix_ms).unwrap_or(0);
    let inputs: Vec<(Millis, Event)> = report
        .inputs
        .iter()
        .map(|(now, event)| (Millis(now.0 + created), event.clone()))
        .collect();
    // The driver's steps: readinesses of one moment together.
    for entry in steps_of(&inputs) {
        let advanced = record.advance(&entry);
        let (commit, pages) = plan_step(&mut record, &entry, &advanced.events, advanced.finish)
            .map_err(|e| e.to_string())?;
        let bytes: usize = [&commit]
            .into_iter()
            .chain(&pages)
            .map(|txn| t.txn(txn))
            .sum();
        t.steps += 1;
        t.step_bytes += bytes;
        t.max_step_bytes = t.max_step_bytes.max(bytes);
        if !advanced.finish && snapshot_due(&record.log) {
            let (chunks, switch) = plan_snapshot(&mut record).map_err(|e| e.to_string())?;
            for txn in chunks.iter().chain([&switch]) {
                t.txn(txn);
            }
            t.snapshots += 1;
            t.snapshot_bytes = t.snapshot_bytes.max(record.log.snapshot_bytes as usize);
        }
    }
    println!(
        "{label:<22} {:>9} {:>6} {:>7} {:>9} {:>9} {:>9} B {:>4} {:>11} B {:>3} {:>10.1} MB {:>10.1} GB  {}",
        sc.plan.instances.len(),
        sc.plan.batch_count(),
        t.steps,
        t.step_bytes / t.steps.max(1),
        t.max_step_bytes,
        t.largest_txn,
        t.largest_ops,
        t.snapshot_bytes,
        t.snapshots,
        t.total as f64 / 1e6,
        t.steps as f64 * format_1_record as f64 / 1e9,
        if t.largest_txn <= GOAL_BYTES && t.largest_ops <= GOAL_OPS {
            "within 128 KiB / 128 ops"
        } else {
            "OVER THE GOAL"
        }
    );
    Ok(())
}

fn main() {
    println!(
        "{:<22} {:>9} {:>6} {:>7} {:>9} {:>9} {:>11} {:>4} {:>13} {:>3} {:>13} {:>13}",
        "fleet",
        "instances",
        "batches",
        "steps",
        "step mean",
        "step max",
        "largest txn",
        "ops",
        "snapshot max",
        "n",
        "total written",
        "format 1 wrote"
    );
    let mut runs: Vec<(&str, Scenario)> = [150, 1_000, 10_000]
        .into_iter()
        .map(|n| ("clusters of 100", Scenario::large(n, 7)))
        .collect();
    runs.push(("one batch of all", Scenario::single_batch(10_000, 7)));
    for (label, sc) in &runs {
        if let Err(err) = run(label, sc) {
            eprintln!("{label}: {err}");
            std::process::exit(1);
        }
    }
}
