//! The driver: one supervised instance, its processes, timers and probes.
//!
//! Owns running [`InstancePolicy`] against real processes on a tokio task:
//! spawning through the exec shim, reaping every child (`Child::wait`),
//! signalling process groups, the one timer the policy asks for, the probe
//! schedule (every `interval`, each bounded by `timeout`), log rotation, the
//! durable [`ProcessRecord`] of the running process, and publishing
//! [`InstanceStatus`] on a watch channel.
//!
//! An instance can also **adopt** a process a previous agent started
//! ([`Instance::adopt`]): its first "spawn" takes that process instead, whose
//! end is seen through a pidfd (it is not our child: init reaps it, and its
//! exit status is unknown). Everything after that — probes, stop, restart on
//! exit with a fresh child — is the same as for a spawned process.
//! [`Instance::detach`] ends supervision and leaves the process running and
//! its record in place, for the next agent to adopt.
//!
//! ```text
//!  child.wait() ─┐                      ┌─ Spawn ──────▶ spawn::spawn ─▶ Started / Exited(SpawnFailed)
//!  pidfd ready ──┤ (adopted)            │   (adopted: the recorded process ─▶ Started)
//!  stop / drop ──┤                      ├─ SignalGroup ▶ killpg(pgid)
//!  timer ────────┼─▶ policy.step() ─────┼─ ArmTimer ───▶ sleep_until
//!  probe task ───┘   (now, jitter)      └─ Report ─────▶ watch<InstanceStatus>
//! ```
//!
//! Dropping the [`Instance`] handle stops it gracefully in the background
//! (the task ends once the process group is gone); [`Instance::stop`] does
//! the same and waits for it.
//!
//! Must never: make a decision the policy should make, leave a child
//! unreaped, signal a pid it has already reaped (only its process group, which
//! keeps the number allocated while members live), or sleep before a restart
//! the policy wants now.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use release::manifest::{ProbeTiming, RunSpec};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::SupervisorError;
use super::logs::{LogConfig, LogFile, ROTATE_CHECK};
use super::policy::{
    Action, Event, ExitReason, InstancePolicy, InstanceState, PolicyConfig, Report, RunRules,
};
use super::readiness::ReadinessCheck;
use super::record::{self, ProcessRecord};
use super::shim::ShimRequest;
use super::sockets::ListenSockets;
use super::spawn::{self, DEFAULT_SHIM};
use crate::telemetry::ServiceMetrics;

/// How long `stop` waits for SIGKILLed members of the group (reparented to
/// init) to be gone, so that "stopped" means no process of it is left. A
/// SIGKILLed process dies within milliseconds; this bounds a slow init.
const GROUP_GONE_TIMEOUT: Duration = Duration::from_secs(2);
/// Poll period while waiting for the group to be gone.
const GROUP_POLL: Duration = Duration::from_millis(5);

/// Everything needed to run one instance of one release.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub service: String,
    /// Instance number within the service on this host (0-based).
    pub slot: u32,
    pub release_digest: String,
    pub release_version: String,
    /// The unpacked release: argv[0] and `working_dir` are relative to it.
    pub root: PathBuf,
    pub run: RunSpec,
    pub timing: ProbeTiming,
    pub sockets: ListenSockets,
    /// Variables the agent adds (e.g. NOTIFY_SOCKET); they win over the manifest's.
    pub extra_env: BTreeMap<String, String>,
    pub log_dir: PathBuf,
    pub log: LogConfig,
    pub policy: PolicyConfig,
    /// The exec shim binary: [`DEFAULT_SHIM`] (the agent itself) in production.
    pub shim: PathBuf,
    /// Where the running process's [`ProcessRecord`] is kept (`None`: not
    /// recorded, so never adoptable).
    pub record_dir: Option<PathBuf>,
    /// Where restarts and probe attempts are counted (`None`: nowhere).
    pub metrics: Option<ServiceMetrics>,
}

impl InstanceSpec {
    /// A spec with default log limits, policy and shim.
    pub fn new(
        service: impl Into<String>,
        slot: u32,
        release: (String, String),
        root: PathBuf,
        run: RunSpec,
        timing: ProbeTiming,
        log_dir: PathBuf,
    ) -> Self {
        let (release_digest, release_version) = release;
        Self {
            service: service.into(),
            slot,
            release_digest,
            release_version,
            root,
            run,
            timing,
            sockets: ListenSockets::empty(),
            extra_env: BTreeMap::new(),
            log_dir,
            log: LogConfig::default(),
            policy: PolicyConfig::default(),
            shim: PathBuf::from(DEFAULT_SHIM),
            record_dir: None,
            metrics: None,
        }
    }

    /// `LOG_DIR/SERVICE-SLOT-DIGEST12.log`: the old and the new release of
    /// one slot run side by side during a switch, so the digest is part of it.
    pub fn log_path(&self) -> PathBuf {
        let short = record::short_digest(&self.release_digest);
        self.log_dir
            .join(format!("{}-{}-{}.log", self.service, self.slot, short))
    }

    /// The environment the app gets before the shim adds PATH and LISTEN_*.
    pub fn app_env(&self) -> BTreeMap<String, String> {
        let mut agent = BTreeMap::from([
            ("LOCKSTEP_SERVICE".to_owned(), self.service.clone()),
            ("LOCKSTEP_INSTANCE".to_owned(), self.slot.to_string()),
            (
                "LOCKSTEP_RELEASE_VERSION".to_owned(),
                self.release_version.clone(),
            ),
            (
                "LOCKSTEP_RELEASE_DIGEST".to_owned(),
                self.release_digest.clone(),
            ),
        ]);
        agent.extend(self.extra_env.iter().map(|(k, v)| (k.clone(), v.clone())));
        spawn::app_env(&self.run.env, &agent)
    }

    fn shim_request(&self) -> ShimRequest {
        ShimRequest::new(
            self.run.command.program.under(&self.root),
            self.run.command.argv(),
            self.app_env(),
            self.run.working_dir.under(&self.root),
            self.run.user.clone(),
            self.run.group.clone(),
            self.sockets.names(),
        )
    }
}

/// What an instance is doing, as published on [`Instance::subscribe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStatus {
    pub state: InstanceState,
    /// The probe passed (and the instance has not failed it since).
    pub ready: bool,
    /// Main pid of the running process (its process group id too).
    pub pid: Option<u32>,
    pub restarts: u32,
    pub started_at: Option<SystemTime>,
    /// e.g. `exited with code 1`, `killed by SIGKILL`.
    pub last_exit: Option<String>,
    /// One line: the probe failure, the backoff delay, why it stopped.
    pub detail: String,
}

impl InstanceStatus {
    fn initial() -> Self {
        Self {
            state: InstanceState::Starting,
            ready: false,
            pid: None,
            restarts: 0,
            started_at: None,
            last_exit: None,
            detail: String::new(),
        }
    }
}

/// How a stop went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReport {
    /// How the last process ended (None: none was running).
    pub exit: Option<String>,
    /// The stop timeout passed and the group was SIGKILLed.
    pub killed: bool,
    /// From the stop request to the group being gone.
    pub took: Duration,
}

#[derive(Debug)]
enum Command {
    Stop(oneshot::Sender<StopReport>),
    Detach(oneshot::Sender<()>),
    LivenessFailed(String),
}

/// A process a previous agent started, to be supervised as if spawned.
#[derive(Debug)]
pub struct AdoptedProcess {
    pub pid: u32,
    /// Opened before its start time was checked against the record, so it
    /// names the recorded process even if the pid is reused later.
    pub pidfd: OwnedFd,
    /// The previous agent had seen it ready.
    pub ready: bool,
}

/// The process being supervised: our child, or adopted.
#[derive(Debug)]
enum Process {
    Child(tokio::process::Child),
    Adopted(AsyncFd<OwnedFd>),
}

/// Handle to one supervised instance.
#[derive(Debug)]
pub struct Instance {
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<InstanceStatus>,
    log: LogFile,
    task: JoinHandle<()>,
}

impl Instance {
    /// Starts supervising: the first process is spawned at once on the
    /// instance's task. Needs a tokio runtime. Fails only on setup (no
    /// runtime, program missing, log file not writable); a process that
    /// fails to start is the policy's business (restart, crash loop).
    pub fn start(
        spec: InstanceSpec,
        readiness: Box<dyn ReadinessCheck>,
    ) -> Result<Instance, SupervisorError> {
        Self::launch(spec, readiness, None)
    }

    /// Starts supervising `process`, which a previous agent started for
    /// this very spec (the caller checked the record); it is restarted
    /// with a fresh child when it ends, like any instance.
    pub fn adopt(
        spec: InstanceSpec,
        readiness: Box<dyn ReadinessCheck>,
        process: AdoptedProcess,
    ) -> Result<Instance, SupervisorError> {
        Self::launch(spec, readiness, Some(process))
    }

    fn launch(
        spec: InstanceSpec,
        readiness: Box<dyn ReadinessCheck>,
        adopted: Option<AdoptedProcess>,
    ) -> Result<Instance, SupervisorError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| SupervisorError::NoRuntime)?;
        let program = spec.run.command.program.under(&spec.root);
        check_file(&program)?;
        check_file(&spec.shim)?;
        let log = LogFile::open(&spec.log_path(), spec.log).map_err(SupervisorError::Log)?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(InstanceStatus::initial());
        let (probe_pid_tx, probe_pid_rx) = watch::channel(None);
        let (probe_tx, probe_rx) = mpsc::channel(4);
        let probe_task = runtime.spawn(probe_loop(
            readiness,
            probe_pid_rx,
            probe_tx,
            spec.timing,
            spec.metrics.clone(),
        ));
        let span = tracing::info_span!(
            "instance",
            service = %spec.service,
            slot = spec.slot,
            release = %spec.release_version,
        );
        let rules = RunRules {
            restart: spec.run.restart,
            stop_signal: spec.run.stop_signal,
            stop_timeout: spec.run.stop_timeout,
            healthy_deadline: spec.timing.healthy_deadline,
        };
        let (record_tx, record_rx) = watch::channel(None);
        let recorder = spec
            .record_dir
            .clone()
            .map(|dir| runtime.spawn(keep_record(dir, record_rx)));
        let driver = Driver {
            request: spec.shim_request(),
            policy: InstancePolicy::new(spec.policy, rules),
            spec,
            log: log.clone(),
            status: status_tx,
            process: None,
            adopted,
            group: None,
            timer: None,
            generation: 0,
            probe_pid: probe_pid_tx,
            record: record_tx,
            boot_id: record::boot_id(),
            stop_reply: None,
            detach_reply: None,
            stop_started: None,
        };
        let task = runtime.spawn(
            async move {
                driver.run(command_rx, probe_rx, recorder).await;
                probe_task.abort();
            }
            .instrument(span),
        );
        Ok(Instance {
            commands,
            status,
            log,
            task,
        })
    }

    /// The current status.
    pub fn status(&self) -> InstanceStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change (to wait for Ready or failure).
    pub fn subscribe(&self) -> watch::Receiver<InstanceStatus> {
        self.status.clone()
    }

    /// Main pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.status.borrow().pid
    }

    /// The last `n` lines of the instance log (app output and `[lockstep]`
    /// notes), oldest first; empty if the log cannot be read.
    pub fn log_tail(&self, n: usize) -> Vec<String> {
        match self.log.tail(n) {
            Ok(lines) => lines,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read instance log tail");
                Vec::new()
            }
        }
    }

    /// The log file, for a reader that outlives this handle.
    pub fn log_file(&self) -> LogFile {
        self.log.clone()
    }

    /// The live log file.
    pub fn log_path(&self) -> &Path {
        self.log.path()
    }

    /// Restart the running process now (a watchdog or external liveness
    /// check declared it dead): stop signal, stop timeout, SIGKILL, respawn.
    pub fn liveness_failed(&self, reason: impl Into<String>) {
        // A send error means the task has ended: nothing to restart.
        let _ = self.commands.send(Command::LivenessFailed(reason.into()));
    }

    /// Stops for good: the stop signal to the process group, `stop_timeout`,
    /// then SIGKILL to the group; returns once every process is reaped.
    pub async fn stop(self) -> Result<StopReport, SupervisorError> {
        let (tx, rx) = oneshot::channel();
        let sent = self.commands.send(Command::Stop(tx)).is_ok();
        let report = if sent { rx.await.ok() } else { None };
        self.task.await.map_err(SupervisorError::Task)?;
        report.ok_or(SupervisorError::Gone)
    }

    /// Ends supervision without touching the process: it keeps running and
    /// its record stays, so the next agent adopts it. Returns once the
    /// record is durable.
    pub async fn detach(self) -> Result<(), SupervisorError> {
        let (tx, rx) = oneshot::channel();
        let sent = self.commands.send(Command::Detach(tx)).is_ok();
        let done = if sent { rx.await.ok() } else { None };
        self.task.await.map_err(SupervisorError::Task)?;
        done.ok_or(SupervisorError::Gone)
    }
}

fn check_file(path: &Path) -> Result<(), SupervisorError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(SupervisorError::NotAFile {
            path: path.to_owned(),
        }),
        Err(source) => Err(SupervisorError::Missing {
            path: path.to_owned(),
            source,
        }),
    }
}

type ProbeResult = (u64, Result<(), String>);

/// Probes the current process every `interval` (the first attempt right
/// after it starts), and at once when the check says its answer may have
/// changed; each attempt bounded by `timeout`.
async fn probe_loop(
    mut check: Box<dyn ReadinessCheck>,
    mut pid: watch::Receiver<Option<(u64, u32)>>,
    results: mpsc::Sender<ProbeResult>,
    timing: ProbeTiming,
    metrics: Option<ServiceMetrics>,
) {
    loop {
        let current = *pid.borrow_and_update();
        let Some((generation, p)) = current else {
            if pid.changed().await.is_err() {
                return;
            }
            continue;
        };
        let started = Instant::now();
        let result = match tokio::time::timeout(timing.timeout, check.check(p)).await {
            Ok(r) => r,
            Err(_) => Err(format!("probe timed out after {:?}", timing.timeout)),
        };
        if let Some(metrics) = &metrics {
            metrics.probed(started.elapsed(), result.is_ok());
        }
        if results.send((generation, result)).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(timing.interval) => {}
            () = check.changed() => {}
            changed = pid.changed() => if changed.is_err() { return },
        }
    }
}

/// Writes every record the driver publishes into `dir` (coalescing
/// bursts), removing the previous process's once replaced; once the driver
/// is gone, the last value.
async fn keep_record(dir: PathBuf, mut records: watch::Receiver<Option<ProcessRecord>>) {
    let mut written: Option<PathBuf> = None;
    loop {
        let current = records.borrow_and_update().clone();
        let path = current.as_ref().map(|r| r.path_in(&dir));
        let previous = std::mem::replace(&mut written, path.clone());
        let result = tokio::task::spawn_blocking(move || {
            if let (Some(r), Some(p)) = (&current, &path) {
                record::save(p, r)?;
            }
            match previous {
                Some(old) if Some(&old) != path.as_ref() => record::remove(&old),
                _ => Ok(()),
            }
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot keep the process record"),
            Err(e) => tracing::warn!(error = %e, "process record writer failed"),
        }
        // Err: the driver ended and its last value (if new) was written above.
        if records.changed().await.is_err() {
            return;
        }
    }
}

struct Driver {
    spec: InstanceSpec,
    request: ShimRequest,
    policy: InstancePolicy,
    log: LogFile,
    status: watch::Sender<InstanceStatus>,
    process: Option<Process>,
    /// Taken by the first spawn instead of starting a process.
    adopted: Option<AdoptedProcess>,
    /// Process group of the current or just-exited process.
    group: Option<u32>,
    timer: Option<tokio::time::Instant>,
    /// Bumped per spawn so probe results for an old process are ignored.
    generation: u64,
    probe_pid: watch::Sender<Option<(u64, u32)>>,
    /// The running process's durable record (`None`: no process).
    record: watch::Sender<Option<ProcessRecord>>,
    boot_id: String,
    stop_reply: Option<oneshot::Sender<StopReport>>,
    detach_reply: Option<oneshot::Sender<()>>,
    stop_started: Option<Instant>,
}

/// How the current process ended, once it has.
async fn wait_process(process: &mut Option<Process>) -> ExitReason {
    match process {
        Some(Process::Child(c)) => exit_reason(c.wait().await),
        Some(Process::Adopted(pidfd)) => match pidfd.readable().await {
            // A pidfd becomes readable when its process has ended.
            Ok(_) => ExitReason::Unobserved,
            Err(e) => {
                tracing::warn!(error = %e, "cannot wait on the adopted process's pidfd");
                ExitReason::Unobserved
            }
        },
        None => std::future::pending().await,
    }
}

fn exit_reason(status: std::io::Result<std::process::ExitStatus>) -> ExitReason {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => ExitReason::Code(code),
            (None, Some(sig)) => ExitReason::Signal(sig),
            (None, None) => ExitReason::Code(-1),
        },
        Err(e) => {
            tracing::warn!(error = %e, "waiting for the instance process failed");
            ExitReason::Code(-1)
        }
    }
}

/// Waits until no process is left in group `pgid` (bounded).
async fn wait_group_gone(pgid: u32) {
    let group = Pid::from_raw(pgid as i32);
    let deadline = tokio::time::Instant::now() + GROUP_GONE_TIMEOUT;
    while killpg(group, None) != Err(Errno::ESRCH) {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(pgid, "processes of the stopped group are still present");
            return;
        }
        tokio::time::sleep(GROUP_POLL).await;
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut probes: mpsc::Receiver<ProbeResult>,
        recorder: Option<JoinHandle<()>>,
    ) {
        self.handle(Event::Start);
        let mut commands_open = true;
        let mut rotate = tokio::time::interval(ROTATE_CHECK);
        rotate.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.policy.finished() {
            let event = tokio::select! {
                biased;
                reason = wait_process(&mut self.process) => {
                    self.process = None;
                    let _ = self.probe_pid.send(None);
                    self.record.send_replace(None);
                    Event::Exited(reason)
                }
                cmd = commands.recv(), if commands_open => match cmd {
                    Some(Command::Stop(reply)) => {
                        self.stop_reply = Some(reply);
                        Event::StopRequested
                    }
                    Some(Command::Detach(reply)) => {
                        self.detach_reply = Some(reply);
                        break;
                    }
                    Some(Command::LivenessFailed(reason)) => Event::LivenessFailed(reason),
                    None => {
                        // The handle was dropped: stop gracefully, then end.
                        commands_open = false;
                        tracing::info!("instance handle dropped; stopping");
                        Event::StopRequested
                    }
                },
                () = sleep_until(self.timer) => {
                    self.timer = None;
                    Event::TimerFired
                }
                _ = rotate.tick() => {
                    let log = self.log.clone();
                    match tokio::task::spawn_blocking(move || log.rotate_if_over()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "cannot rotate the instance log"),
                        Err(e) => tracing::warn!(error = %e, "log rotation failed"),
                    }
                    continue;
                }
                Some((generation, result)) = probes.recv() => {
                    if generation != self.generation || self.process.is_none() {
                        continue;
                    }
                    match result {
                        Ok(()) => Event::ProbePassed,
                        Err(reason) => Event::ProbeFailed(reason),
                    }
                }
            };
            if matches!(event, Event::StopRequested) && self.stop_started.is_none() {
                self.stop_started = Some(Instant::now());
            }
            self.handle(event);
        }
        if let Some(reply) = self.detach_reply.take() {
            // The process keeps running; its record must be durable before
            // the agent may exit.
            let pid = self.group.unwrap_or_default();
            tracing::info!(pid, "instance detached; the process keeps running");
            self.log
                .note(&format!("agent detached from pid {pid}; it keeps running"));
            drop(self.record);
            if let Some(recorder) = recorder {
                let _ = recorder.await;
            }
            let _ = reply.send(());
            return;
        }
        if let Some(pgid) = self.group {
            wait_group_gone(pgid).await;
        }
        self.record.send_replace(None);
        drop(self.record);
        if let Some(recorder) = recorder {
            let _ = recorder.await;
        }
        let report = StopReport {
            exit: self.policy.last_exit().map(ToString::to_string),
            killed: self.policy.killed(),
            took: self.stop_started.map(|t| t.elapsed()).unwrap_or_default(),
        };
        tracing::info!(exit = ?report.exit, killed = report.killed, took_ms = report.took.as_millis() as u64, "instance stopped");
        if let Some(reply) = self.stop_reply.take() {
            let _ = reply.send(report);
        }
    }

    /// Steps the policy with `event` and carries out its actions, feeding
    /// the outcome of a spawn straight back in.
    fn handle(&mut self, event: Event) {
        let mut pending = vec![event];
        while let Some(event) = pending.pop() {
            if let Event::Exited(reason) = &event
                && !matches!(reason, ExitReason::SpawnFailed(_))
            {
                let pid = self.group.unwrap_or_default();
                tracing::info!(pid, reason = %reason, "instance process ended");
                self.log.note(&format!("pid {pid} {reason}"));
            }
            let restarts = self.policy.restarts();
            let actions = self.policy.step(Instant::now(), fastrand::f64(), event);
            if self.policy.restarts() > restarts
                && let Some(metrics) = &self.spec.metrics
            {
                metrics.restarted();
            }
            for action in actions {
                if let Some(next) = self.execute(action) {
                    pending.push(next);
                }
            }
        }
    }

    fn execute(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::Spawn => Some(self.spawn()),
            Action::SignalGroup(sig) => {
                self.signal_group(sig);
                None
            }
            Action::ArmTimer(d) => {
                self.timer = Some(tokio::time::Instant::now() + d);
                None
            }
            Action::CancelTimer => {
                self.timer = None;
                None
            }
            Action::Report(report) => {
                self.publish(report);
                None
            }
        }
    }

    /// The record of `pid`, just started (or adopted).
    fn record_of(&self, pid: u32, ready: bool) -> Option<ProcessRecord> {
        let start_time = record::observe(pid)?.start_time;
        Some(ProcessRecord {
            service: self.spec.service.clone(),
            slot: self.spec.slot,
            release_digest: self.spec.release_digest.clone(),
            pid,
            start_time,
            boot_id: self.boot_id.clone(),
            ready,
            stop_signal: self.spec.run.stop_signal as i32,
            stop_timeout_ms: u64::try_from(self.spec.run.stop_timeout.as_millis())
                .unwrap_or(u64::MAX),
            sockets: self.spec.sockets.names(),
        })
    }

    fn adopt(&mut self, adopted: AdoptedProcess) -> Event {
        let pid = adopted.pid;
        // `AsyncFd::new` is deprecated because a `T` that merely borrows its
        // fd could close it while registered; an `OwnedFd` cannot (it is
        // closed only when the AsyncFd drops it). Its replacement,
        // `register`, is `unsafe`, which this workspace forbids.
        #[allow(deprecated)]
        let registered = AsyncFd::new(adopted.pidfd);
        match registered {
            Ok(pidfd) => {
                self.generation += 1;
                self.group = Some(pid);
                self.process = Some(Process::Adopted(pidfd));
                self.record.send_replace(self.record_of(pid, adopted.ready));
                let _ = self.probe_pid.send(Some((self.generation, pid)));
                let started_at = record::observe(pid)
                    .and_then(|o| record::started_at(o.start_time))
                    .unwrap_or_else(SystemTime::now);
                self.status.send_modify(|s| {
                    s.pid = Some(pid);
                    s.started_at = Some(started_at);
                });
                tracing::info!(pid, "adopted the running instance process");
                self.log
                    .note(&format!("adopted pid {pid} (started by a previous agent)"));
                Event::Started { pid }
            }
            Err(e) => {
                // Cannot watch it: it must not run unsupervised.
                tracing::warn!(pid, error = %e, "cannot watch the adopted process; killing it");
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                self.group = Some(pid);
                Event::Exited(ExitReason::Unobserved)
            }
        }
    }

    fn spawn(&mut self) -> Event {
        if let Some(adopted) = self.adopted.take() {
            return self.adopt(adopted);
        }
        let output = match self.log.app_output() {
            Ok(output) => output,
            Err(e) => {
                let reason = cli::chain(&e);
                tracing::warn!(error = %reason, "cannot open the instance log for the app");
                self.group = None;
                return Event::Exited(ExitReason::SpawnFailed(reason));
            }
        };
        match spawn::spawn(&self.spec.shim, &self.request, &self.spec.sockets, output) {
            Ok(spawned) => {
                let pid = spawned.pid;
                self.generation += 1;
                self.group = Some(pid);
                self.process = Some(Process::Child(spawned.child));
                // Written before anything else can happen: an agent killed
                // from here on must find this process at its next start.
                self.record.send_replace(self.record_of(pid, false));
                let _ = self.probe_pid.send(Some((self.generation, pid)));
                self.status.send_modify(|s| {
                    s.pid = Some(pid);
                    s.started_at = Some(SystemTime::now());
                });
                tracing::info!(pid, "instance process started");
                self.log.note(&format!(
                    "started pid {pid}: {}",
                    self.spec.run.command.argv().join(" ")
                ));
                Event::Started { pid }
            }
            Err(e) => {
                let reason = cli::chain(&e);
                tracing::warn!(error = %reason, "cannot spawn instance process");
                self.log.note(&format!("cannot spawn: {reason}"));
                self.group = None;
                Event::Exited(ExitReason::SpawnFailed(reason))
            }
        }
    }

    fn signal_group(&mut self, sig: Signal) {
        let Some(pgid) = self.group else { return };
        let pid = Pid::from_raw(pgid as i32);
        match killpg(pid, sig) {
            Ok(()) => tracing::debug!(pgid, signal = sig.as_str(), "signalled process group"),
            Err(Errno::ESRCH) if matches!(self.process, Some(Process::Child(_))) => {
                // Not reaped yet, but no group: the shim has not called
                // setsid yet. Signal the process itself (its pid cannot have
                // been reused: we have not waited for it).
                if let Err(e) = kill(pid, sig) {
                    tracing::debug!(pid = pgid, signal = sig.as_str(), error = %e, "kill failed");
                }
            }
            Err(Errno::ESRCH) => {}
            Err(e) => {
                tracing::warn!(pgid, signal = sig.as_str(), error = %e, "cannot signal process group");
            }
        }
        if sig != Signal::SIGKILL || self.process.is_some() {
            self.log
                .note(&format!("sent {} to process group {pgid}", sig.as_str()));
        }
    }

    fn publish(&mut self, report: Report) {
        tracing::info!(
            state = report.state.as_str(),
            ready = report.ready,
            restarts = report.restarts,
            detail = %report.detail,
            "instance state"
        );
        let running = self.process.is_some();
        if running {
            self.record.send_if_modified(|r| match r {
                Some(r) if r.ready != report.ready => {
                    r.ready = report.ready;
                    true
                }
                _ => false,
            });
        }
        self.status.send_modify(|s| {
            s.state = report.state;
            s.ready = report.ready;
            s.restarts = report.restarts;
            s.last_exit = report.last_exit.as_ref().map(ToString::to_string);
            s.detail = report.detail;
            if !running {
                s.pid = None;
            }
        });
    }
}
