//! The rollout engine: a pure state machine that sequences one deployment.
//!
//! Owns the plan (waves of canary and clusters, in batches) and the decisions:
//! `Engine::step(now, event) -> Vec<Action>`. The coordinator owns the effects:
//! it sends the applies, runs the checks, fires the timers, persists the
//! engine (serde) after every step, and feeds results back as events.
//!
//! Must never: read a clock, sleep, draw randomness, touch a network or etcd,
//! or depend on tokio. Time and failures arrive as events, so the simulator in
//! [`sim`] drives it deterministically through thousands of faulty fleets.
//!
//! ```text
//!  Strategy::from_toml ─┐
//!  Fleet, target, prev ─┴─► plan() ─► Plan ─► Engine::new ─► step(Start)
//!
//!                     ┌──────────── Pause / (wave done, pause_between_clusters)
//!                     ▼                                         │
//!   Created ──► Running ◄── Resume / Approve ── Paused / AwaitingApproval
//!                 │  │
//!                 │  └─ any failure, deadline, check or analysis failed ─┬─ auto_rollback ──► RollingBack
//!                 │                                                      └─ otherwise ──────► Halted
//!                 │  └─ analysis inconclusive ─┬─ on_inconclusive = halt ─────► Halted
//!                 │                            └─ rollback ───────────────────► RollingBack
//!                 │        Halted ── operator Rollback ──► RollingBack
//!                 │        Halted ── progress deadline / Abort ──► aborted
//!                 │  operator Rollback ─────────────────────────────────► RollingBack
//!                 │  operator Abort ──────────────────────────────────────► aborted
//!                 ▼ last batch passed
//!              Baking ── bake_time passed and bake analyses passed ──► succeeded
//!                 └── unhealthy, Rollback ──► RollingBack; Abort ──► aborted
//!
//!            RollingBack ──► rolled_back (every revert confirmed)
//!                        └─► failed      (names the instances)
//! ```
//!
//! A batch advances only when every instance reported ready on the release
//! its pass wants, stayed ready for `min_healthy_time`, and the cluster's
//! checks and analyses passed (an inconclusive analysis halts for the
//! operator, or rolls back if so configured; it never passes). Every instance confirmed ready stays watched until the
//! deployment ends (`Engine::watched`): its exit, restart or lost readiness
//! (`Event::InstanceUnhealthy`) fails the deployment like a failure in the
//! current batch, also during the bake after the last batch. The first failure freezes the target (no further apply of
//! it, ever) and, with `auto_rollback`, reverts every touched instance to the
//! release *it* ran before, most recently touched first, within each
//! cluster's disruption budget.
//!
//! A fenced-out engine (`AgentRefused` with its own token) returns
//! `Action::StepDown` and nothing after it.

pub mod analysis;
pub mod engine;
pub mod fleet;
pub mod plan;
pub mod sim;
pub mod strategy;

pub use analysis::{Analysis, AnalysisRunId, Bindings, Verdict};
pub use engine::AnalysisScope;
pub use engine::{
    Action, Command, Engine, Event, Notice, Outcome, Reason, Status, Step, Wait, WaitKind, Watched,
};
pub use fleet::Fleet;
pub use fleet::{
    ApplyId, CheckRunId, Cluster, ClusterName, DeploymentId, DurationMs, FencingToken, IdError,
    Installed, Instance, InstanceId, Millis, Overlap, ReleaseDigest, TimerId,
};
pub use plan::{
    ClusterPlan, Gates, Plan, PlanError, PlanErrors, PlanInput, PlannedInstance, Wave, WaveKind,
    plan,
};
pub use strategy::{
    Capacity, Check, ClusterOrder, ClusterOverride, Quantity, Strategy, StrategyError,
    StrategyErrors,
};
