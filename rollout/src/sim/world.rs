//! The simulated world: agents, network, checks, timers, operator and a
//! coordinator that can crash, all in virtual time, driving one engine.
//!
//! Owns the fault model and the driver loop; checks the invariants at every
//! step. Must never reach into the engine's state: it only sees what a real
//! coordinator sees (actions, `status()`, `outcome()`, and the serialised
//! state it would persist).
//!
//! ```text
//!   heap of (virtual time, event) ──► agent / engine / operator ──► new events
//!                        ▲                                             │
//!                        └───────────── latency, faults ───────────────┘
//! ```

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use crate::analysis::Verdict;
use crate::engine::{Action, Command, Engine, Event, Outcome, Status};
use crate::fleet::{ApplyId, DeploymentId, FencingToken, Installed, InstanceId, Millis};
use crate::sim::invariants::{Checkers, Violation, outcome_matches, terminal};
use crate::sim::rng::Rng;
use crate::sim::scenario::Scenario;

/// How many trace lines a failure report keeps.
const TRACE_LINES: usize = 120;
/// A real takeover waits out a lease TTL; without a gap and a cap, restarts
/// (each re-issuing every in-flight apply, each refused apply a new step)
/// would breed faster than the run can end.
const MIN_MS_BETWEEN_RESTARTS: u64 = 1_000;
const MAX_RESTARTS: u32 = 30;

/// A run's result when every invariant held.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// How it ended.
    pub outcome: Outcome,
    /// Events processed.
    pub steps: u64,
    /// Engine steps.
    pub engine_steps: u64,
    /// Virtual time when the engine finished, ms.
    pub finished_ms: u64,
    /// Virtual time when the last message settled, ms.
    pub virtual_ms: u64,
    /// Coordinator restarts.
    pub restarts: u32,
    /// Every engine input in order, with its time, when recording was
    /// asked for (`run_scenario_recorded`): what a journal would persist.
    pub inputs: Vec<(Millis, Event)>,
}

/// A broken invariant with the trace that led to it.
#[derive(Debug, Clone)]
pub struct RunFailure {
    /// What broke.
    pub violation: Violation,
    /// Virtual time, ms.
    pub at_ms: u64,
    /// The last events and actions (empty unless tracing was on).
    pub trace: Vec<String>,
}

#[derive(Debug, Clone)]
struct Cmd {
    release: Installed,
    token: FencingToken,
    apply: ApplyId,
}

#[derive(Debug)]
enum Ev {
    /// To the engine; `epoch` 0 means from the network (survives restarts),
    /// otherwise it belongs to that coordinator incarnation.
    ToEngine {
        epoch: u64,
        event: Event,
    },
    ToAgent {
        ix: usize,
        cmd: Cmd,
    },
    StartDone {
        ix: usize,
        switch_no: u64,
    },
    Flap {
        ix: usize,
        switch_no: u64,
    },
    /// The target's process exits once after ready; the supervisor restarts it.
    Crash {
        ix: usize,
        switch_no: u64,
    },
    Cut {
        ix: usize,
    },
    Heal {
        ix: usize,
    },
    Detect {
        ix: usize,
        cut_gen: u64,
    },
    Operator(Command),
}

#[derive(Debug)]
struct Sched {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Sched {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Sched {}
impl PartialOrd for Sched {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Sched {
    fn cmp(&self, o: &Self) -> Ordering {
        // Min-heap on (time, insertion order).
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Debug)]
struct Agent {
    running: Installed,
    serving: bool,
    /// Down because a switch stopped its serving process (overlap none).
    switch_down: bool,
    pending: Option<(ApplyId, Installed)>,
    switch_no: u64,
    last: Option<(FencingToken, ApplyId)>,
    max_token: FencingToken,
    cut: u32,
    cut_gen: u64,
    inbox: Vec<Cmd>,
    outbox: Vec<Event>,
    last_report: Option<Event>,
}

/// One simulated run.
#[derive(Debug)]
pub struct World<'a> {
    sc: &'a Scenario,
    rng: Rng,
    now: u64,
    seq: u64,
    heap: BinaryHeap<Sched>,
    agents: Vec<Agent>,
    index: HashMap<InstanceId, usize>,
    down: Vec<usize>,
    initial: Vec<Installed>,
    engine: Engine,
    epoch: u64,
    token: FencingToken,
    checkers: Checkers,
    approval_scheduled: bool,
    finished_at: Option<u64>,
    restarts: u32,
    last_restart: u64,
    steps: u64,
    engine_steps: u64,
    trace: Option<VecDeque<String>>,
    inputs: Option<Vec<(Millis, Event)>>,
}

impl<'a> World<'a> {
    /// A world for `sc`; `trace` keeps the last lines for a failure report.
    pub fn new(sc: &'a Scenario, trace: bool) -> Self {
        let plan = &sc.plan;
        let agents = plan
            .instances
            .iter()
            .map(|i| {
                // What it runs now: the fleet's release (the plan stores the
                // rollback target, which differs when it already ran the target).
                Agent {
                    running: i.original,
                    serving: true,
                    switch_down: false,
                    pending: None,
                    switch_no: 0,
                    last: None,
                    max_token: FencingToken(0),
                    cut: 0,
                    cut_gen: 0,
                    inbox: Vec::new(),
                    outbox: Vec::new(),
                    last_report: None,
                }
            })
            .collect::<Vec<_>>();
        let index: HashMap<InstanceId, usize> = plan
            .instances
            .iter()
            .enumerate()
            .map(|(ix, i)| (i.id.clone(), ix))
            .collect();
        let mut w = World {
            sc,
            rng: Rng::new(sc.world_seed),
            now: 0,
            seq: 0,
            heap: BinaryHeap::new(),
            agents,
            index,
            down: vec![0; plan.clusters.len()],
            initial: Vec::new(),
            engine: Engine::new(
                DeploymentId(format!("sim-{}", sc.seed)),
                plan.clone(),
                FencingToken(1),
            ),
            epoch: 1,
            token: FencingToken(1),
            checkers: Checkers::default(),
            approval_scheduled: false,
            finished_at: None,
            restarts: 0,
            last_restart: 0,
            steps: 0,
            engine_steps: 0,
            trace: trace.then(VecDeque::new),
            inputs: None,
        };
        // Instances that already ran the target really run it.
        for c in &sc.fleet.clusters {
            for i in &c.instances {
                if let Some(&ix) = w.index.get(&i.id) {
                    w.agents[ix].running = i.release;
                }
            }
        }
        w.initial = w.agents.iter().map(|a| a.running).collect();
        w
    }

    fn at(&mut self, delay: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Sched {
            at: self.now + delay,
            seq: self.seq,
            ev,
        });
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            if t.len() == TRACE_LINES {
                t.pop_front();
            }
            t.push_back(format!("{:>9}ms {}", self.now, line()));
        }
    }

    fn fail(&self, violation: Violation) -> RunFailure {
        RunFailure {
            violation,
            at_ms: self.now,
            trace: self.trace.iter().flatten().cloned().collect(),
        }
    }

    /// Records every engine input in the report.
    pub fn recording(mut self) -> Self {
        self.inputs = Some(Vec::new());
        self
    }

    /// Runs to the end: the engine finished and every message settled.
    pub fn run(mut self) -> Result<RunReport, RunFailure> {
        let sc: &'a Scenario = self.sc;
        let f = &sc.faults;
        for (id, from, to) in f.unreachable.clone() {
            if let Some(&ix) = self.index.get(&id) {
                self.at(from, Ev::Cut { ix });
                self.at(to, Ev::Heal { ix });
            }
        }
        let op = f.operator.clone();
        if let Some((at, resume)) = op.pause {
            self.at(at, Ev::Operator(Command::Pause));
            if let Some(r) = resume {
                self.at(r, Ev::Operator(Command::Resume));
            }
        }
        if let Some(at) = op.abort_at {
            self.at(at, Ev::Operator(Command::Abort));
        }
        if let Some(at) = op.rollback_at {
            self.at(at, Ev::Operator(Command::Rollback));
        }
        self.checkers
            .single
            .takeover(self.token)
            .map_err(|v| self.fail(v))?;
        self.engine_step(Event::Start)?;

        let bound = terminal::bound_ms(&self.sc.plan);
        let max_steps = 200 + 400 * self.agents.len() as u64 * 4;
        while let Some(s) = self.heap.pop() {
            self.now = s.at;
            self.steps += 1;
            if self.finished_at.is_none() && self.now > bound {
                return Err(self.fail(Violation {
                    invariant: "4 (terminal, consistent)",
                    message: format!(
                        "no terminal state by {} ms (bound {bound} ms); status {:?}",
                        self.now,
                        self.engine.status()
                    ),
                }));
            }
            if self.steps > max_steps * 10 {
                return Err(self.fail(Violation {
                    invariant: "4 (terminal, consistent)",
                    message: format!("no end after {} simulated events (livelock?)", self.steps),
                }));
            }
            match s.ev {
                Ev::ToEngine { epoch, event } => {
                    if epoch == 0 || epoch == self.epoch {
                        if let Event::Operator(Command::Approve) = event {
                            self.approval_scheduled = false;
                        }
                        self.engine_step(event)?;
                    }
                }
                Ev::Operator(cmd) => self.engine_step(Event::Operator(cmd))?,
                Ev::ToAgent { ix, cmd } => self.agent_receive(ix, cmd)?,
                Ev::StartDone { ix, switch_no } => self.start_done(ix, switch_no)?,
                Ev::Flap { ix, switch_no } => {
                    let target = Installed::Release(self.sc.plan.target);
                    let a = &mut self.agents[ix];
                    if a.switch_no == switch_no && a.serving && a.running == target {
                        a.serving = false;
                        let apply = a.last.map(|l| l.1).unwrap_or(ApplyId(0));
                        self.note(|| format!("agent {ix} flaps"));
                        let instance = self.sc.plan.instances[ix].id.clone();
                        self.report(
                            ix,
                            Event::InstanceCrashLooping {
                                instance,
                                apply,
                                release: target,
                            },
                        );
                    }
                }
                Ev::Crash { ix, switch_no } => self.crash(ix, switch_no),
                Ev::Cut { ix } => {
                    let a = &mut self.agents[ix];
                    a.cut += 1;
                    a.cut_gen += 1;
                    let g = a.cut_gen;
                    let d = self.rng.range(100, 2_000);
                    self.at(d, Ev::Detect { ix, cut_gen: g });
                }
                Ev::Detect { ix, cut_gen } => {
                    let a = &self.agents[ix];
                    if a.cut > 0 && a.cut_gen == cut_gen {
                        let instance = self.sc.plan.instances[ix].id.clone();
                        self.engine_step(Event::InstanceUnreachable { instance })?;
                    }
                }
                Ev::Heal { ix } => {
                    let a = &mut self.agents[ix];
                    a.cut = a.cut.saturating_sub(1);
                    if a.cut == 0 {
                        let inbox = std::mem::take(&mut a.inbox);
                        let outbox = std::mem::take(&mut a.outbox);
                        let again = a.last_report.clone();
                        for e in outbox {
                            self.network(e);
                        }
                        for cmd in inbox {
                            self.agent_receive(ix, cmd)?;
                        }
                        // Reconnected agents tell the coordinator where they are.
                        if let Some(e) = again {
                            self.network(e);
                        }
                    }
                }
            }
        }

        let running: Vec<&Installed> = self.agents.iter().map(|a| &a.running).collect();
        let initial: Vec<&Installed> = self.initial.iter().collect();
        terminal::check(
            &self.sc.plan,
            self.engine.outcome(),
            self.finished_at,
            &running,
            &initial,
        )
        .map_err(|v| self.fail(v))?;
        let outcome = self.engine.outcome().cloned().ok_or_else(|| {
            self.fail(Violation {
                invariant: "4 (terminal, consistent)",
                message: "no outcome".to_owned(),
            })
        })?;
        Ok(RunReport {
            outcome,
            steps: self.steps,
            engine_steps: self.engine_steps,
            finished_ms: self.finished_at.unwrap_or(self.now),
            virtual_ms: self.now,
            restarts: self.restarts,
            inputs: self.inputs.take().unwrap_or_default(),
        })
    }

    fn engine_step(&mut self, event: Event) -> Result<(), RunFailure> {
        self.engine_steps += 1;
        self.note(|| format!("-> {event:?}"));
        self.checkers.canary.observe(&self.sc.plan.target, &event);
        self.checkers.healthy.observe(&self.sc.plan.target, &event);
        let was_done = self.engine.is_done();
        if let Some(inputs) = &mut self.inputs {
            inputs.push((Millis(self.now), event.clone()));
        }
        let actions = self.engine.step(Millis(self.now), event);
        self.check_actions(was_done, &actions)?;
        if self.engine.outcome().is_some() && self.finished_at.is_none() {
            self.finished_at = Some(self.now);
        }

        let restart = !self.engine.is_done()
            && self.rng.chance(self.sc.faults.restart_permille)
            && self.restarts < MAX_RESTARTS
            && (self.restarts == 0 || self.now >= self.last_restart + MIN_MS_BETWEEN_RESTARTS);
        if restart && self.rng.chance(500) {
            // Crashed after persisting the state but before acting on it.
            self.note(|| format!("coordinator crashes; {} action(s) lost", actions.len()));
        } else {
            self.execute(actions);
        }
        if restart {
            self.restart()?;
        }
        if !self.approval_scheduled {
            if let (
                Status::Running {
                    awaiting_approval: true,
                    ..
                },
                Some(d),
            ) = (self.engine.status(), self.sc.faults.operator.approve_after)
            {
                self.approval_scheduled = true;
                self.at(
                    d,
                    Ev::ToEngine {
                        epoch: 0,
                        event: Event::Operator(Command::Approve),
                    },
                );
            }
        }
        Ok(())
    }

    fn check_actions(&mut self, was_done: bool, actions: &[Action]) -> Result<(), RunFailure> {
        for a in actions {
            self.note(|| format!("   <- {a:?}"));
        }
        let plan = &self.sc.plan;
        let index = &self.index;
        let r = self
            .checkers
            .single
            .check(was_done, self.engine.token(), actions)
            .and_then(|()| {
                self.checkers
                    .atomic
                    .check(plan, |id| index.get(id).copied(), actions)
            })
            .and_then(|()| self.checkers.canary.check(&plan.target, actions))
            .and_then(|()| self.checkers.healthy.check(actions))
            .and_then(|()| self.outcome_matches(actions));
        r.map_err(|v| self.fail(v))
    }

    /// Invariant 8 at the instant of finishing: the outcome against what
    /// every agent runs right now.
    fn outcome_matches(&self, actions: &[Action]) -> Result<(), Violation> {
        let Some(outcome) = actions.iter().find_map(|a| match a {
            Action::Finish(o) => Some(o),
            _ => None,
        }) else {
            return Ok(());
        };
        let running: Vec<&Installed> = self.agents.iter().map(|a| &a.running).collect();
        let initial: Vec<&Installed> = self.initial.iter().collect();
        outcome_matches::check(&self.sc.plan, outcome, &running, &initial)
    }

    fn restart(&mut self) -> Result<(), RunFailure> {
        self.restarts += 1;
        self.last_restart = self.now;
        self.epoch += 1;
        self.token = FencingToken(self.token.0 + 1);
        let json = serde_json::to_string(&self.engine).map_err(|e| {
            self.fail(Violation {
                invariant: "2 (single deployment)",
                message: format!("engine state did not serialise: {e}"),
            })
        })?;
        self.engine = serde_json::from_str(&json).map_err(|e| {
            self.fail(Violation {
                invariant: "2 (single deployment)",
                message: format!("persisted engine state did not load: {e}"),
            })
        })?;
        let token = self.token;
        self.note(|| format!("coordinator restarts from persisted state, {token}"));
        self.checkers
            .single
            .takeover(self.token)
            .map_err(|v| self.fail(v))?;
        self.engine_steps += 1;
        let event = Event::Recovered { token: self.token };
        self.note(|| format!("-> {event:?}"));
        let was_done = self.engine.is_done();
        if let Some(inputs) = &mut self.inputs {
            inputs.push((Millis(self.now), event.clone()));
        }
        let actions = self.engine.step(Millis(self.now), event);
        self.check_actions(was_done, &actions)?;
        if self.engine.outcome().is_some() && self.finished_at.is_none() {
            self.finished_at = Some(self.now);
        }
        self.execute(actions);
        Ok(())
    }

    fn execute(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Apply {
                    instance,
                    release,
                    token,
                    apply,
                } => {
                    if let Some(&ix) = self.index.get(&instance) {
                        let d = self.rng.range(1, 20);
                        self.at(
                            d,
                            Ev::ToAgent {
                                ix,
                                cmd: Cmd {
                                    release,
                                    token,
                                    apply,
                                },
                            },
                        );
                    }
                }
                Action::StartTimer { id, after } => {
                    let epoch = self.epoch;
                    self.at(
                        after.0,
                        Ev::ToEngine {
                            epoch,
                            event: Event::TimerFired(id),
                        },
                    );
                }
                Action::RunCheck { run, check, .. } => {
                    let fails = self.rng.chance(self.sc.faults.check_fail_permille);
                    // One in five failing runs hangs past its timeout.
                    let hang = fails && self.rng.chance(200);
                    let d = if hang {
                        check.timeout.0 + self.rng.range(1, 5_000)
                    } else {
                        self.rng.range(10, check.timeout.0.max(11) - 1)
                    };
                    let event = if fails {
                        Event::CheckFailed {
                            run,
                            detail: "exit status 1".to_owned(),
                        }
                    } else {
                        Event::CheckPassed { run }
                    };
                    let epoch = self.epoch;
                    self.at(d, Ev::ToEngine { epoch, event });
                }
                Action::RunAnalysis { run, analysis, .. } => {
                    // Analyses fail as often as checks; one in five failing
                    // runs is inconclusive instead, one in ten never answers.
                    let fails = self.rng.chance(self.sc.faults.check_fail_permille);
                    let verdict = if !fails {
                        Verdict::Passed
                    } else if self.rng.chance(200) {
                        Verdict::Inconclusive("prometheus unreachable".to_owned())
                    } else {
                        Verdict::Failed("1 of 1 measurement(s) failed".to_owned())
                    };
                    let deadline = analysis.deadline().0;
                    let d = if fails && self.rng.chance(100) {
                        deadline + self.rng.range(1, 5_000)
                    } else {
                        self.rng.range(10, deadline.max(11) - 1)
                    };
                    let epoch = self.epoch;
                    self.at(
                        d,
                        Ev::ToEngine {
                            epoch,
                            event: Event::AnalysisDone { run, verdict },
                        },
                    );
                }
                Action::Emit(_) | Action::Finish(_) | Action::StepDown { .. } => {}
            }
        }
    }

    /// A report leaves the agent: held while it is cut off.
    fn report(&mut self, ix: usize, event: Event) {
        self.agents[ix].last_report = Some(event.clone());
        if self.agents[ix].cut > 0 {
            self.agents[ix].outbox.push(event);
        } else {
            self.network(event);
        }
    }

    /// Latency, delay (so reordering) and duplication.
    fn network(&mut self, event: Event) {
        let f = &self.sc.faults;
        let (delay_p, dup_p) = (f.delay_permille, f.dup_permille);
        let mut d = self.rng.range(1, 30);
        if self.rng.chance(delay_p) {
            d += self.rng.range(1_000, 20_000);
        }
        if self.rng.chance(dup_p) {
            let d2 = self.rng.range(1, 20_000);
            self.at(
                d2,
                Ev::ToEngine {
                    epoch: 0,
                    event: event.clone(),
                },
            );
        }
        self.at(d, Ev::ToEngine { epoch: 0, event });
    }

    fn set_switch_down(&mut self, ix: usize, down: bool) -> Result<(), RunFailure> {
        let a = &mut self.agents[ix];
        if a.switch_down == down {
            return Ok(());
        }
        a.switch_down = down;
        let c = self.sc.plan.instances[ix].cluster;
        if down {
            self.down[c] += 1;
        } else {
            self.down[c] -= 1;
        }
        let cp = &self.sc.plan.clusters[c];
        self.checkers
            .floor
            .check(cp.name.as_str(), cp.size, cp.floor, self.down[c])
            .map_err(|v| self.fail(v))
    }

    fn agent_receive(&mut self, ix: usize, cmd: Cmd) -> Result<(), RunFailure> {
        let instance = self.sc.plan.instances[ix].id.clone();
        if self.agents[ix].cut > 0 {
            self.agents[ix].inbox.push(cmd);
            return Ok(());
        }
        self.note(|| {
            format!(
                "agent {instance} gets {} {} {}",
                cmd.apply.0,
                cmd.token,
                cmd.release.short()
            )
        });
        let a = &mut self.agents[ix];
        if cmd.token < a.max_token {
            let token = cmd.token;
            self.network(Event::AgentRefused { instance, token });
            return Ok(());
        }
        let key = (cmd.token, cmd.apply);
        match a.last {
            Some(last) if key < last => return Ok(()), // late, superseded
            Some(last) if key == last => {
                if let Some(e) = a.last_report.clone() {
                    self.network(e);
                }
                return Ok(());
            }
            _ => {}
        }
        a.max_token = cmd.token;
        a.last = Some(key);
        if let Some((_, r)) = &a.pending {
            if *r == cmd.release {
                a.pending = Some((cmd.apply, cmd.release));
                return Ok(());
            }
        }
        if a.running == cmd.release && a.serving {
            // Already there: cancel any switch in progress and say so.
            a.pending = None;
            a.switch_no += 1;
            let release = cmd.release;
            self.report(
                ix,
                Event::InstanceReady {
                    instance,
                    apply: cmd.apply,
                    release,
                },
            );
            return Ok(());
        }
        a.switch_no += 1;
        let switch_no = a.switch_no;
        a.pending = Some((cmd.apply, cmd.release));
        let stop_first = !self.sc.plan.overlap.starts_before_stop();
        let was_serving = a.serving;
        if stop_first {
            a.serving = false;
        }
        self.report(
            ix,
            Event::InstanceApplying {
                instance,
                apply: cmd.apply,
            },
        );
        if stop_first && was_serving {
            self.set_switch_down(ix, true)?;
        }
        let hd = self.sc.plan.gates.healthy_deadline.0;
        let d = if self.rng.chance(self.sc.faults.slow_start_permille) {
            self.rng.range(hd / 2, hd * 2)
        } else {
            self.rng.range(100, 3_000)
        };
        self.at(d, Ev::StartDone { ix, switch_no });
        Ok(())
    }

    fn start_done(&mut self, ix: usize, switch_no: u64) -> Result<(), RunFailure> {
        let sc: &'a Scenario = self.sc;
        let plan = &sc.plan;
        let f = &sc.faults;
        let inst = &plan.instances[ix];
        let a = &mut self.agents[ix];
        if a.switch_no != switch_no {
            return Ok(());
        }
        let Some((apply, release)) = a.pending.take() else {
            return Ok(());
        };
        let broken = (release == plan.target && f.broken_target.contains(&inst.id))
            || (release != plan.target && f.broken_previous.contains(&inst.id));
        let instance = inst.id.clone();
        if broken {
            if !plan.overlap.starts_before_stop() {
                // The old process is gone and the new one will not come up.
                a.running = release;
                a.serving = false;
            }
            self.note(|| format!("agent {instance}: {} fails to start", release.short()));
            self.report(
                ix,
                Event::InstanceFailed {
                    instance,
                    apply,
                    release,
                    detail: "exited with status 1 before ready".to_owned(),
                },
            );
            return Ok(());
        }
        a.running = release;
        a.serving = true;
        let release_is_target = release == plan.target;
        let flaps = release_is_target && f.flapping.contains(&inst.id);
        self.set_switch_down(ix, false)?;
        self.report(
            ix,
            Event::InstanceReady {
                instance,
                apply,
                release,
            },
        );
        if flaps {
            let d = self.rng.range(500, 30_000);
            self.at(d, Ev::Flap { ix, switch_no });
        }
        if release_is_target && f.crash_after_ready.contains(&inst.id) {
            let d = self.rng.range(500, 40_000);
            self.at(d, Ev::Crash { ix, switch_no });
        }
        Ok(())
    }

    /// The target exited after it was ready and was restarted at once: the
    /// coordinator's watch reports it unhealthy for the apply it was ready for.
    fn crash(&mut self, ix: usize, switch_no: u64) {
        let target = Installed::Release(self.sc.plan.target);
        let a = &self.agents[ix];
        if a.switch_no != switch_no || !a.serving || a.running != target {
            return;
        }
        let apply = a.last.map(|l| l.1).unwrap_or(ApplyId(0));
        self.note(|| format!("agent {ix} exits after ready and restarts"));
        let instance = self.sc.plan.instances[ix].id.clone();
        self.report(
            ix,
            Event::InstanceUnhealthy {
                instance,
                apply,
                release: target,
                detail: "exited with code 70 and was restarted".to_owned(),
            },
        );
    }
}
