//! The per-instance supervision policy: a pure state machine.
//!
//! Owns every decision about one instance: when to spawn, when to restart and
//! after which backoff, when an instance is crash-looping, ready, unhealthy,
//! and how a stop escalates from the stop signal to SIGKILL.
//!
//! ```text
//!            Start                Started{pid}
//!   Idle ───────────▶ Spawning ────────────────▶ Running{ready?}
//!                        ▲  │ SpawnFailed           │ │ ProbePassed/ProbeFailed
//!          TimerFired    │  ▼                       │ │ LivenessFailed ─▶ Restarting (signal, then SIGKILL)
//!   Backoff ─────────────┘ ◀── Exited (restart) ────┘ │
//!        (delay 0: spawn at once)                     │ Exited (policy: no restart)
//!                                                     ▼
//!   StopRequested (any phase) ─▶ Stopping ─Exited─▶ Stopped        Failed / Stopped
//! ```
//!
//! Time and randomness are inputs: every [`InstancePolicy::step`] gets `now`
//! and a jitter draw in `[0, 1)`; the policy keeps its own deadlines and asks
//! for a single timer ([`Action::ArmTimer`]) at the earliest one.
//!
//! Must never: read a clock, draw randomness, touch a process or a file, or
//! sleep. The driver (`instance.rs`) does the effects and feeds results back.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use release::manifest::RestartPolicy;

/// Second restart after a quick crash: short enough that a transient failure
/// costs a blink, long enough that a process dying at start is not respawned
/// in a hot loop.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Upper bound on the restart delay: a crash-looping app is retried at least
/// twice a minute, so it comes back soon after whatever it waits for (a
/// database, a config fix) does.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run at least this long counts as stable: its crash is restarted at once
/// and the backoff starts over. One second is runit's `runsv` rule; dying
/// faster than that is a start-up failure and earns backoff.
pub const STABLE_PERIOD: Duration = Duration::from_secs(1);
/// Restarts within [`CRASH_LOOP_WINDOW`] that make an instance crash-looping:
/// systemd's default start burst (5 in 10 s) over a window wide enough to
/// catch apps that crash every few seconds.
pub const CRASH_LOOP_RESTARTS: u32 = 5;
/// The crash-loop window; an instance that then stays up a whole window is
/// no longer crash-looping.
pub const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(60);
/// At most this fraction is taken off a backoff delay at random, so that many
/// instances crashing together do not restart in lock step.
pub const JITTER_FRACTION: f64 = 0.2;
/// Consecutive failed probes after which a ready instance is restarted: one
/// slow answer is noise, three in a row (three intervals) is a hung app.
pub const LIVENESS_FAILURE_THRESHOLD: u32 = 3;

/// Tunables of the policy; [`Default`] gives the named constants above.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyConfig {
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub stable_period: Duration,
    pub crash_loop_restarts: u32,
    pub crash_loop_window: Duration,
    pub jitter_fraction: f64,
    pub liveness_failure_threshold: u32,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            backoff_base: BACKOFF_BASE,
            backoff_max: BACKOFF_MAX,
            stable_period: STABLE_PERIOD,
            crash_loop_restarts: CRASH_LOOP_RESTARTS,
            crash_loop_window: CRASH_LOOP_WINDOW,
            jitter_fraction: JITTER_FRACTION,
            liveness_failure_threshold: LIVENESS_FAILURE_THRESHOLD,
        }
    }
}

/// What the manifest says about restarting and stopping (from `[run]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunRules {
    pub restart: RestartPolicy,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    /// A started instance not ready by then is reported unhealthy.
    pub healthy_deadline: Duration,
}

/// The instance states; the names match `lockstep.v1.InstanceState`
/// (`Backoff` is the one addition: no process, a restart is scheduled; it
/// maps to `INSTANCE_STATE_STARTING` with pid 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceState {
    Starting,
    Ready,
    /// Running, but its readiness or liveness probe fails.
    Unhealthy,
    /// Waiting out a restart delay.
    Backoff,
    /// Restarted too often within the crash-loop window; backoff continues.
    CrashLooping,
    /// Will not be restarted (restart policy says so).
    Failed,
    Stopping,
    Stopped,
}

impl InstanceState {
    /// Lowercase name as in the proto enum without its prefix (`crash_looping`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Unhealthy => "unhealthy",
            Self::Backoff => "backoff",
            Self::CrashLooping => "crash_looping",
            Self::Failed => "failed",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
        }
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    Code(i32),
    Signal(i32),
    /// It never ran: the spawn itself failed (the reason is the error text).
    SpawnFailed(String),
    /// It ended, but its status is unknown: an adopted process is not the
    /// agent's child, so only its end is seen (a pidfd), never its status.
    Unobserved,
}

impl ExitReason {
    /// Exit code 0: the only end that `on-failure` does not restart.
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Code(0))
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(c) => write!(f, "exited with code {c}"),
            Self::Signal(s) => match Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {}", sig.as_str()),
                Err(_) => write!(f, "killed by signal {s}"),
            },
            Self::SpawnFailed(e) => write!(f, "could not be spawned: {e}"),
            Self::Unobserved => write!(f, "ended (status unknown: adopted, not the agent's child)"),
        }
    }
}

/// An input to the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Begin supervising: spawn the first process.
    Start,
    /// The process asked for by [`Action::Spawn`] is running.
    Started { pid: u32 },
    /// The current process ended (or could not be spawned) and was reaped.
    Exited(ExitReason),
    /// The timer armed by the last [`Action::ArmTimer`] fired.
    TimerFired,
    /// Stop for good: stop signal, stop timeout, SIGKILL; no restart.
    StopRequested,
    /// One readiness/liveness probe attempt passed.
    ProbePassed,
    /// One probe attempt failed, with the reason.
    ProbeFailed(String),
    /// Something outside the probes (a watchdog) declared the process dead:
    /// restart it now.
    LivenessFailed(String),
}

/// An effect the driver must carry out, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Spawn a new process, then feed back `Started` (or `Exited(SpawnFailed)`).
    Spawn,
    /// Send a signal to the process group of the current (or just-exited) process.
    SignalGroup(Signal),
    /// Fire `TimerFired` after this long, replacing any armed timer.
    ArmTimer(Duration),
    /// Disarm the timer.
    CancelTimer,
    /// The reported state changed (or its detail did).
    Report(Report),
}

/// What the policy publishes; the driver adds pid and times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub state: InstanceState,
    /// Up, probe passed, and not crash-looping.
    pub ready: bool,
    pub restarts: u32,
    pub last_exit: Option<ExitReason>,
    /// One line: the probe failure, the backoff delay, why it stopped.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    Spawning,
    Running {
        since: Instant,
        ready: bool,
        failures: u32,
        healthy_by: Option<Instant>,
    },
    Backoff {
        until: Instant,
    },
    /// Signalled for a liveness restart; restarts when it exits.
    Restarting {
        kill_at: Option<Instant>,
        since: Instant,
    },
    Stopping {
        kill_at: Option<Instant>,
    },
    /// Terminal: `Stopped` or `Failed` (no process).
    Done,
}

/// The supervision state machine of one instance.
#[derive(Debug, Clone)]
pub struct InstancePolicy {
    config: PolicyConfig,
    rules: RunRules,
    phase: Phase,
    state: InstanceState,
    detail: String,
    /// Restarts so far (spawns after the first).
    restarts: u32,
    /// Consecutive quick crashes: the exponent of the next backoff.
    attempt: u32,
    /// Times of recent restarts, within the crash-loop window.
    recent: VecDeque<Instant>,
    crash_looping: bool,
    /// While crash-looping and running: when it counts as recovered.
    clear_loop_at: Option<Instant>,
    last_exit: Option<ExitReason>,
    stop_requested: bool,
    /// SIGKILL was needed to stop (for the stop report).
    killed: bool,
    last_report: Option<Report>,
    armed: Option<Instant>,
}

impl InstancePolicy {
    pub fn new(config: PolicyConfig, rules: RunRules) -> Self {
        Self {
            config,
            rules,
            phase: Phase::Idle,
            state: InstanceState::Starting,
            detail: String::new(),
            restarts: 0,
            attempt: 0,
            recent: VecDeque::new(),
            crash_looping: false,
            clear_loop_at: None,
            last_exit: None,
            stop_requested: false,
            killed: false,
            last_report: None,
            armed: None,
        }
    }

    /// The reported state.
    pub fn state(&self) -> InstanceState {
        self.state
    }

    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    pub fn last_exit(&self) -> Option<&ExitReason> {
        self.last_exit.as_ref()
    }

    /// A stop was requested and no process is left: the driver may end.
    pub fn finished(&self) -> bool {
        self.stop_requested && self.phase == Phase::Done
    }

    /// Whether stopping took SIGKILL.
    pub fn killed(&self) -> bool {
        self.killed
    }

    /// The delay before restart number `attempt` of a quick-crash sequence
    /// (0 = the first crash after a stable run: no delay), with `jitter` in
    /// `[0, 1)` taking up to `jitter_fraction` off. Never above the cap.
    pub fn backoff_delay(config: &PolicyConfig, attempt: u32, jitter: f64) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        let exp = (attempt - 1).min(31);
        let nominal = config
            .backoff_base
            .checked_mul(1u32 << exp)
            .unwrap_or(config.backoff_max)
            .min(config.backoff_max);
        let fraction = config.jitter_fraction.clamp(0.0, 1.0);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        nominal
            .mul_f64(1.0 - fraction * jitter)
            .min(config.backoff_max)
    }

    /// Feeds one event at time `now` with a jitter draw in `[0, 1)`; returns
    /// the effects to carry out in order.
    pub fn step(&mut self, now: Instant, jitter: f64, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Start => {
                if self.phase == Phase::Idle && !self.stop_requested {
                    self.phase = Phase::Spawning;
                    self.set_state(InstanceState::Starting, String::new());
                    out.push(Action::Spawn);
                }
            }
            Event::Started { pid: _ } => self.on_started(now),
            Event::Exited(reason) => self.on_exited(now, jitter, reason, &mut out),
            Event::TimerFired => self.on_timer(now, &mut out),
            Event::StopRequested => self.on_stop(now, &mut out),
            Event::ProbePassed => self.on_probe(None),
            Event::ProbeFailed(reason) => self.on_probe(Some(reason)),
            Event::LivenessFailed(reason) => {
                if let Phase::Running { since, .. } = self.phase {
                    self.begin_restart(now, since, reason);
                    out.push(Action::SignalGroup(self.rules.stop_signal));
                }
            }
        }
        // A probe verdict may have asked for a restart.
        if let Phase::Running {
            since,
            ready: true,
            failures,
            ..
        } = self.phase
            && failures >= self.config.liveness_failure_threshold
        {
            let reason = format!("liveness: {failures} probes failed in a row; restarting");
            self.begin_restart(now, since, reason);
            out.push(Action::SignalGroup(self.rules.stop_signal));
        }
        self.sync_timer(now, &mut out);
        self.sync_report(&mut out);
        out
    }

    fn on_started(&mut self, now: Instant) {
        if self.phase != Phase::Spawning {
            return;
        }
        self.phase = Phase::Running {
            since: now,
            ready: false,
            failures: 0,
            healthy_by: Some(now + self.rules.healthy_deadline),
        };
        if self.crash_looping {
            self.clear_loop_at = Some(now + self.config.crash_loop_window);
        }
        let state = self.running_state(InstanceState::Starting);
        self.set_state(state, String::new());
    }

    fn on_exited(&mut self, now: Instant, jitter: f64, reason: ExitReason, out: &mut Vec<Action>) {
        // The whole group goes with its main process: no stragglers holding
        // sockets or log pipes across a restart.
        let had_process = !matches!(reason, ExitReason::SpawnFailed(_));
        let since = match &self.phase {
            Phase::Running { since, .. } | Phase::Restarting { since, .. } => Some(*since),
            Phase::Spawning | Phase::Stopping { .. } => None,
            // No process to exit: a stray event.
            Phase::Idle | Phase::Backoff { .. } | Phase::Done => return,
        };
        if had_process {
            out.push(Action::SignalGroup(Signal::SIGKILL));
        }
        self.clear_loop_at = None;
        let liveness_restart = matches!(self.phase, Phase::Restarting { .. });
        self.last_exit = Some(reason.clone());
        if self.stop_requested {
            self.phase = Phase::Done;
            self.set_state(InstanceState::Stopped, format!("stopped: {reason}"));
            return;
        }
        if since.is_some_and(|s| now.saturating_duration_since(s) >= self.config.stable_period) {
            self.attempt = 0;
        }
        let restart = liveness_restart
            || match self.rules.restart {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !reason.is_success(),
                RestartPolicy::Never => false,
            };
        if !restart {
            self.phase = Phase::Done;
            let (state, detail) = if reason.is_success() {
                (InstanceState::Stopped, format!("{reason}; not restarted"))
            } else {
                (
                    InstanceState::Failed,
                    format!("{reason}; restart policy {}", self.rules.restart.as_str()),
                )
            };
            self.set_state(state, detail);
            return;
        }
        let delay = Self::backoff_delay(&self.config, self.attempt, jitter);
        self.attempt = self.attempt.saturating_add(1);
        self.restarts = self.restarts.saturating_add(1);
        self.recent.push_back(now);
        while let Some(&t) = self.recent.front() {
            if now.saturating_duration_since(t) >= self.config.crash_loop_window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() as u64 >= u64::from(self.config.crash_loop_restarts) {
            self.crash_looping = true;
        }
        if delay.is_zero() {
            self.phase = Phase::Spawning;
            let state = self.running_state(InstanceState::Starting);
            self.set_state(state, format!("{reason}; restarted at once"));
            out.push(Action::Spawn);
        } else {
            self.phase = Phase::Backoff { until: now + delay };
            let state = self.running_state(InstanceState::Backoff);
            self.set_state(state, format!("{reason}; restarting in {delay:?}"));
        }
    }

    fn on_timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.armed = None;
        match self.phase.clone() {
            Phase::Backoff { until } if now >= until => {
                self.phase = Phase::Spawning;
                let state = self.running_state(InstanceState::Starting);
                self.set_state(state, String::new());
                out.push(Action::Spawn);
            }
            Phase::Running {
                since,
                ready,
                failures,
                healthy_by: Some(by),
            } if now >= by => {
                self.phase = Phase::Running {
                    since,
                    ready,
                    failures,
                    healthy_by: None,
                };
                if !ready {
                    let d = self.rules.healthy_deadline;
                    let detail = if self.detail.is_empty() {
                        format!("not ready within {d:?}")
                    } else {
                        format!("not ready within {d:?}: {}", self.detail)
                    };
                    let state = self.running_state(InstanceState::Unhealthy);
                    self.set_state(state, detail);
                }
            }
            Phase::Restarting {
                kill_at: Some(at),
                since,
            } if now >= at => {
                self.phase = Phase::Restarting {
                    kill_at: None,
                    since,
                };
                out.push(Action::SignalGroup(Signal::SIGKILL));
            }
            Phase::Stopping { kill_at: Some(at) } if now >= at => {
                self.phase = Phase::Stopping { kill_at: None };
                self.killed = true;
                out.push(Action::SignalGroup(Signal::SIGKILL));
            }
            _ => {}
        }
        if self.clear_loop_at.is_some_and(|at| now >= at) {
            self.clear_loop_at = None;
            self.crash_looping = false;
            self.recent.clear();
            if let Phase::Running { ready, .. } = self.phase {
                let base = if ready {
                    InstanceState::Ready
                } else {
                    InstanceState::Starting
                };
                let detail = self.detail.clone();
                self.set_state(base, detail);
            }
        }
    }

    fn on_stop(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.stop_requested = true;
        match self.phase {
            Phase::Running { .. } | Phase::Spawning | Phase::Restarting { .. } => {
                // Spawning: the signal reaches the group as soon as it exists
                // (the driver spawns synchronously, so it already does).
                self.phase = Phase::Stopping {
                    kill_at: Some(now + self.rules.stop_timeout),
                };
                self.clear_loop_at = None;
                self.set_state(
                    InstanceState::Stopping,
                    format!("stop requested: {}", self.rules.stop_signal.as_str()),
                );
                out.push(Action::SignalGroup(self.rules.stop_signal));
            }
            Phase::Idle | Phase::Backoff { .. } => {
                self.phase = Phase::Done;
                self.set_state(InstanceState::Stopped, "stop requested".to_owned());
            }
            Phase::Done => {
                if self.state != InstanceState::Stopped {
                    let detail = self.detail.clone();
                    self.set_state(InstanceState::Stopped, detail);
                }
            }
            Phase::Stopping { .. } => {}
        }
    }

    fn on_probe(&mut self, failure: Option<String>) {
        let Phase::Running {
            since,
            ready,
            failures,
            healthy_by,
        } = self.phase
        else {
            return;
        };
        match failure {
            None => {
                self.phase = Phase::Running {
                    since,
                    ready: true,
                    failures: 0,
                    healthy_by: None,
                };
                let state = self.running_state(InstanceState::Ready);
                self.set_state(state, String::new());
            }
            Some(reason) if ready => {
                self.phase = Phase::Running {
                    since,
                    ready,
                    failures: failures.saturating_add(1),
                    healthy_by,
                };
                let state = self.running_state(InstanceState::Unhealthy);
                self.set_state(state, reason);
            }
            Some(reason) => {
                // Not ready yet: expected while it warms up; after the
                // healthy deadline it is reported unhealthy.
                let state = if healthy_by.is_none() {
                    InstanceState::Unhealthy
                } else {
                    self.state
                };
                self.set_state(state, reason);
            }
        }
    }

    fn begin_restart(&mut self, now: Instant, since: Instant, reason: String) {
        self.phase = Phase::Restarting {
            kill_at: Some(now + self.rules.stop_timeout),
            since,
        };
        let state = self.running_state(InstanceState::Unhealthy);
        self.set_state(state, reason);
    }

    /// `CrashLooping` overrides the running states while it lasts.
    fn running_state(&self, base: InstanceState) -> InstanceState {
        if self.crash_looping {
            InstanceState::CrashLooping
        } else {
            base
        }
    }

    /// Ready as reported: up, its probe passed, and not crash-looping — an
    /// instance that keeps dying is not counted on, even between crashes.
    fn ready(&self) -> bool {
        matches!(self.phase, Phase::Running { ready: true, .. }) && !self.crash_looping
    }

    fn set_state(&mut self, state: InstanceState, detail: String) {
        self.state = state;
        self.detail = detail;
    }

    fn next_deadline(&self) -> Option<Instant> {
        let phase = match &self.phase {
            Phase::Backoff { until } => Some(*until),
            Phase::Running { healthy_by, .. } => *healthy_by,
            Phase::Restarting { kill_at, .. } | Phase::Stopping { kill_at } => *kill_at,
            Phase::Idle | Phase::Spawning | Phase::Done => None,
        };
        match (phase, self.clear_loop_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn sync_timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        let next = self.next_deadline();
        if next == self.armed {
            return;
        }
        self.armed = next;
        match next {
            Some(at) => out.push(Action::ArmTimer(at.saturating_duration_since(now))),
            None => out.push(Action::CancelTimer),
        }
    }

    fn sync_report(&mut self, out: &mut Vec<Action>) {
        let report = Report {
            state: self.state,
            ready: self.ready(),
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
            detail: self.detail.clone(),
        };
        if self.last_report.as_ref() != Some(&report) {
            self.last_report = Some(report.clone());
            out.push(Action::Report(report));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rules(restart: RestartPolicy) -> RunRules {
        RunRules {
            restart,
            stop_signal: Signal::SIGTERM,
            stop_timeout: Duration::from_secs(5),
            healthy_deadline: Duration::from_secs(60),
        }
    }

    fn policy(restart: RestartPolicy) -> (InstancePolicy, Instant) {
        (
            InstancePolicy::new(PolicyConfig::default(), rules(restart)),
            Instant::now(),
        )
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn states(actions: &[Action]) -> Vec<InstanceState> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Report(r) => Some(r.state),
                _ => None,
            })
            .collect()
    }

    fn has(actions: &[Action], want: &Action) -> bool {
        actions.contains(want)
    }

    fn timer(actions: &[Action]) -> Option<Duration> {
        actions.iter().find_map(|a| match a {
            Action::ArmTimer(d) => Some(*d),
            _ => None,
        })
    }

    /// Start and report the process running at `t`.
    fn run(p: &mut InstancePolicy, t: Instant) {
        let a = p.step(t, 0.0, Event::Start);
        assert!(has(&a, &Action::Spawn));
        p.step(t, 0.0, Event::Started { pid: 100 });
    }

    #[test]
    fn start_spawns_and_reports_starting() {
        let (mut p, t) = policy(RestartPolicy::Always);
        let a = p.step(t, 0.0, Event::Start);
        assert_eq!(a[0], Action::Spawn);
        assert_eq!(states(&a), vec![InstanceState::Starting]);
        let a = p.step(t, 0.0, Event::Started { pid: 7 });
        assert_eq!(
            timer(&a),
            Some(Duration::from_secs(60)),
            "healthy deadline armed"
        );
    }

    #[test]
    fn first_crash_after_a_stable_run_restarts_at_once() {
        let (mut p, t) = policy(RestartPolicy::Always);
        run(&mut p, t);
        let t1 = t + Duration::from_secs(5);
        let a = p.step(t1, 0.9, Event::Exited(ExitReason::Signal(9)));
        assert_eq!(
            a[0],
            Action::SignalGroup(Signal::SIGKILL),
            "leftovers killed first"
        );
        assert!(has(&a, &Action::Spawn), "{a:?}");
        assert_eq!(p.restarts(), 1);
        assert_eq!(p.state(), InstanceState::Starting);
    }

    #[test]
    fn quick_crashes_back_off_exponentially_up_to_the_cap() {
        let (mut p, mut t) = policy(RestartPolicy::Always);
        run(&mut p, t);
        let mut delays = Vec::new();
        for _ in 0..12 {
            t += ms(10);
            let a = p.step(t, 0.0, Event::Exited(ExitReason::Code(1)));
            if has(&a, &Action::Spawn) {
                delays.push(Duration::ZERO);
            } else {
                let d = timer(&a).unwrap();
                delays.push(d);
                t += d;
                let a = p.step(t, 0.0, Event::TimerFired);
                assert!(has(&a, &Action::Spawn));
            }
            p.step(t, 0.0, Event::Started { pid: 1 });
        }
        assert_eq!(&delays[..5], &[ms(0), ms(100), ms(200), ms(400), ms(800)]);
        assert_eq!(*delays.last().unwrap(), BACKOFF_MAX);
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        let (mut p, mut t) = policy(RestartPolicy::Always);
        run(&mut p, t);
        for _ in 0..3 {
            t += ms(10);
            let a = p.step(t, 0.0, Event::Exited(ExitReason::Code(1)));
            if let Some(d) = timer(&a) {
                t += d;
                p.step(t, 0.0, Event::TimerFired);
            }
            p.step(t, 0.0, Event::Started { pid: 1 });
        }
        t += STABLE_PERIOD;
        let a = p.step(t, 0.0, Event::Exited(ExitReason::Code(1)));
        assert!(
            has(&a, &Action::Spawn),
            "stable run: immediate restart {a:?}"
        );
    }

    #[test]
    fn crash_loop_is_reported_and_backoff_continues_then_clears() {
        let (mut p, mut t) = policy(RestartPolicy::Always);
        run(&mut p, t);
        let mut seen = Vec::new();
        for _ in 0..6 {
            t += ms(10);
            let a = p.step(t, 0.0, Event::Exited(ExitReason::Code(1)));
            seen.extend(states(&a));
            if let Some(d) = timer(&a) {
                t += d;
                let a = p.step(t, 0.0, Event::TimerFired);
                assert!(
                    has(&a, &Action::Spawn),
                    "backoff continues while crash-looping"
                );
            }
            p.step(t, 0.0, Event::Started { pid: 1 });
        }
        assert!(seen.contains(&InstanceState::CrashLooping), "{seen:?}");
        assert_eq!(p.state(), InstanceState::CrashLooping);
        // Its probe passes while looping: still crash-looping, and not
        // ready (#12 item 3: `crash_looping ready=true` was counted READY).
        let a = p.step(t, 0.0, Event::ProbePassed);
        assert!(
            !a.iter().any(|a| matches!(a, Action::Report(r) if r.ready)),
            "{a:?}"
        );
        assert_eq!(p.state(), InstanceState::CrashLooping);
        // Up for a whole window: recovered, and ready again.
        t += CRASH_LOOP_WINDOW;
        let a = p.step(t, 0.0, Event::TimerFired);
        assert_eq!(states(&a), vec![InstanceState::Ready]);
        assert!(
            a.iter().any(|a| matches!(a, Action::Report(r) if r.ready)),
            "{a:?}"
        );
    }

    #[test]
    fn never_does_not_restart() {
        let (mut p, t) = policy(RestartPolicy::Never);
        run(&mut p, t);
        let a = p.step(t + ms(5), 0.0, Event::Exited(ExitReason::Code(3)));
        assert!(!has(&a, &Action::Spawn));
        assert_eq!(p.state(), InstanceState::Failed);
        let (mut p, t) = policy(RestartPolicy::Never);
        run(&mut p, t);
        p.step(t + ms(5), 0.0, Event::Exited(ExitReason::Code(0)));
        assert_eq!(p.state(), InstanceState::Stopped);
    }

    #[test]
    fn on_failure_restarts_failures_only() {
        let (mut p, t) = policy(RestartPolicy::OnFailure);
        run(&mut p, t);
        let a = p.step(t + ms(5), 0.0, Event::Exited(ExitReason::Signal(9)));
        assert!(has(&a, &Action::Spawn));
        p.step(t + ms(6), 0.0, Event::Started { pid: 2 });
        let a = p.step(t + ms(7), 0.0, Event::Exited(ExitReason::Code(0)));
        assert!(!has(&a, &Action::Spawn));
        assert_eq!(p.state(), InstanceState::Stopped);
    }

    #[test]
    fn stop_escalates_to_sigkill_after_the_timeout() {
        let (mut p, t) = policy(RestartPolicy::Always);
        run(&mut p, t);
        let a = p.step(t + ms(1), 0.0, Event::StopRequested);
        assert!(has(&a, &Action::SignalGroup(Signal::SIGTERM)));
        assert_eq!(timer(&a), Some(Duration::from_secs(5)));
        assert_eq!(p.state(), InstanceState::Stopping);
        let a = p.step(t + ms(1) + Duration::from_secs(5), 0.0, Event::TimerFired);
        assert!(has(&a, &Action::SignalGroup(Signal::SIGKILL)));
        assert!(!p.finished());
        let a = p.step(
            t + Duration::from_secs(6),
            0.0,
            Event::Exited(ExitReason::Signal(9)),
        );
        assert!(
            !has(&a, &Action::Spawn),
            "a stopped instance is never restarted"
        );
        assert!(p.finished());
        assert!(p.killed());
        assert_eq!(p.state(), InstanceState::Stopped);
    }

    #[test]
    fn stop_during_backoff_is_immediate() {
        let (mut p, t) = policy(RestartPolicy::Always);
        run(&mut p, t);
        p.step(t + ms(1), 0.0, Event::Exited(ExitReason::Code(1)));
        p.step(t + ms(1), 0.0, Event::Started { pid: 3 });
        let a = p.step(t + ms(2), 0.0, Event::Exited(ExitReason::Code(1)));
        assert!(timer(&a).is_some(), "in backoff");
        let a = p.step(t + ms(3), 0.0, Event::StopRequested);
        assert!(has(&a, &Action::CancelTimer));
        assert!(p.finished());
        assert_eq!(p.state(), InstanceState::Stopped);
    }

    #[test]
    fn readiness_then_liveness_failures_restart() {
        let (mut p, t) = policy(RestartPolicy::Always);
        run(&mut p, t);
        let a = p.step(t + ms(1), 0.0, Event::ProbeFailed("refused".into()));
        assert!(states(&a).is_empty() || states(&a) == vec![InstanceState::Starting]);
        let a = p.step(t + ms(2), 0.0, Event::ProbePassed);
        assert_eq!(states(&a), vec![InstanceState::Ready]);
        let a = p.step(t + ms(3), 0.0, Event::ProbeFailed("503".into()));
        assert_eq!(states(&a), vec![InstanceState::Unhealthy]);
        let a = p.step(t + ms(4), 0.0, Event::ProbePassed);
        assert_eq!(
            states(&a),
            vec![InstanceState::Ready],
            "one failure is noise"
        );
        for i in 0..LIVENESS_FAILURE_THRESHOLD - 1 {
            let a = p.step(
                t + ms(5 + u64::from(i)),
                0.0,
                Event::ProbeFailed("503".into()),
            );
            assert!(!has(&a, &Action::SignalGroup(Signal::SIGTERM)));
        }
        let a = p.step(t + ms(20), 0.0, Event::ProbeFailed("503".into()));
        assert!(has(&a, &Action::SignalGroup(Signal::SIGTERM)), "{a:?}");
        // It exits on the signal: restarted even though the exit code is 0.
        let a = p.step(
            t + Duration::from_secs(2),
            0.0,
            Event::Exited(ExitReason::Code(0)),
        );
        assert!(has(&a, &Action::Spawn), "{a:?}");
    }

    #[test]
    fn not_ready_by_the_healthy_deadline_is_unhealthy() {
        let (mut p, t) = policy(RestartPolicy::Always);
        run(&mut p, t);
        p.step(t + ms(1), 0.0, Event::ProbeFailed("refused".into()));
        let a = p.step(t + Duration::from_secs(60), 0.0, Event::TimerFired);
        assert_eq!(states(&a), vec![InstanceState::Unhealthy]);
        let a = p.step(t + Duration::from_secs(61), 0.0, Event::ProbePassed);
        assert_eq!(states(&a), vec![InstanceState::Ready]);
    }

    #[test]
    fn spawn_failure_backs_off_like_a_crash() {
        let (mut p, t) = policy(RestartPolicy::Always);
        p.step(t, 0.0, Event::Start);
        let a = p.step(
            t,
            0.0,
            Event::Exited(ExitReason::SpawnFailed("no such file".into())),
        );
        assert!(
            !has(&a, &Action::SignalGroup(Signal::SIGKILL)),
            "no group to kill"
        );
        assert!(has(&a, &Action::Spawn), "first attempt is immediate");
        let a = p.step(
            t,
            0.0,
            Event::Exited(ExitReason::SpawnFailed("no such file".into())),
        );
        assert_eq!(timer(&a), Some(BACKOFF_BASE));
    }

    proptest! {
        #[test]
        fn delays_stay_within_zero_and_the_cap(attempt in 0u32..10_000, jitter in proptest::num::f64::ANY,
                                               base_ms in 0u64..100_000, max_ms in 0u64..1_000_000,
                                               fraction in proptest::num::f64::ANY) {
            let config = PolicyConfig {
                backoff_base: ms(base_ms),
                backoff_max: ms(max_ms),
                jitter_fraction: if fraction.is_finite() { fraction } else { 0.5 },
                ..PolicyConfig::default()
            };
            let d = InstancePolicy::backoff_delay(&config, attempt, jitter);
            prop_assert!(d <= config.backoff_max);
            if attempt == 0 { prop_assert_eq!(d, Duration::ZERO); }
        }

        #[test]
        fn timers_never_exceed_the_cap_in_any_crash_sequence(gaps in proptest::collection::vec(0u64..5_000, 1..40),
                                                             jitters in proptest::collection::vec(0.0f64..1.0, 40)) {
            let (mut p, mut t) = policy(RestartPolicy::Always);
            run(&mut p, t);
            for (i, gap) in gaps.iter().enumerate() {
                t += ms(*gap);
                let a = p.step(t, jitters[i], Event::Exited(ExitReason::Code(1)));
                if let Some(d) = timer(&a) {
                    prop_assert!(d <= BACKOFF_MAX);
                    t += d;
                    p.step(t, 0.0, Event::TimerFired);
                }
                p.step(t, 0.0, Event::Started { pid: 1 });
            }
            prop_assert_eq!(p.restarts() as usize, gaps.len());
        }
    }
}
