//! `HostedInstance`: one supervised instance as the host runs it — the
//! supervisor's `Instance`, its NOTIFY_SOCKET, its readiness probe, and the
//! task that publishes its state changes to `WatchStatus`. Started fresh,
//! or adopted from a previous agent (the same notify path is bound again;
//! a READY=1 that agent heard is carried over from the process record).
//!
//! `InstanceView` is what readers (status, logs, gauges) hold instead: it
//! follows the instance's state and reads its log without the instance.
//!
//! Must never: outlive its handle (the forwarding task is owned), or let a
//! notify message from another process count as this instance's.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use release::StoredRelease;
use tokio::sync::{broadcast, watch};

use crate::probe::{NotifySocket, NotifyState, Probe, ProbeError};
use crate::supervisor::{
    AdoptedProcess, Instance, InstanceSpec, InstanceStatus, ListenSockets, LogFile, ReadinessCheck,
    SupervisorError,
};
use crate::task::OwnedTask;
use crate::telemetry::AgentMetrics;
use crate::wire;

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("cannot set up the notify socket {path}: {source}")]
    Notify {
        path: PathBuf,
        #[source]
        source: ProbeError,
    },
    #[error("cannot build the readiness probe: {0}")]
    Probe(#[source] ProbeError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
}

/// The manifest's probe, as the supervisor calls it.
struct ProbeCheck(Probe);

impl ReadinessCheck for ProbeCheck {
    fn check(&mut self, pid: u32) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move { self.0.check(pid).await.map_err(|f| f.to_string()) })
    }

    fn changed(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.0.changed())
    }
}

/// A running instance on this host.
#[derive(Debug)]
pub struct HostedInstance {
    instance: Instance,
    notify: Arc<NotifySocket>,
    slot: u32,
    service: String,
    release: proto::v1::ReleaseRef,
    _forward: OwnedTask,
}

/// Where an instance lives on this host: the same for every instance.
#[derive(Debug, Clone, Copy)]
pub struct InstanceSite<'a> {
    pub log_dir: &'a Path,
    pub runtime_dir: &'a Path,
    /// The exec shim (the agent binary).
    pub shim: &'a Path,
    /// Where running processes are recorded for adoption.
    pub records: &'a Path,
    pub events: &'a broadcast::Sender<proto::v1::StatusEvent>,
    /// Where the instance's restarts and probe attempts are counted.
    pub metrics: &'a AgentMetrics,
}

impl HostedInstance {
    /// Starts an instance of `release` in `slot`, sharing `sockets`, judged
    /// ready by `probe` (the manifest's, aimed at this host's addresses).
    pub fn start(
        release: &StoredRelease,
        probe: &release::manifest::Readiness,
        slot: u32,
        sockets: ListenSockets,
        site: InstanceSite<'_>,
    ) -> Result<Self, InstanceError> {
        Self::launch(release, probe, slot, sockets, site, None)
    }

    /// Like `start`, supervising `process` (started by a previous agent
    /// for this release and slot) instead of spawning a new one.
    pub fn adopt(
        release: &StoredRelease,
        probe: &release::manifest::Readiness,
        slot: u32,
        sockets: ListenSockets,
        site: InstanceSite<'_>,
        process: AdoptedProcess,
    ) -> Result<Self, InstanceError> {
        Self::launch(release, probe, slot, sockets, site, Some(process))
    }

    fn launch(
        release: &StoredRelease,
        probe: &release::manifest::Readiness,
        slot: u32,
        sockets: ListenSockets,
        site: InstanceSite<'_>,
        adopted: Option<AdoptedProcess>,
    ) -> Result<Self, InstanceError> {
        let InstanceSite {
            log_dir,
            runtime_dir,
            shim,
            records,
            events,
            metrics,
        } = site;
        let events = events.clone();
        let manifest = &release.manifest;
        let service = manifest.service().to_string();
        let digest = release.digest.to_string();
        let short: String = release.digest.hex().chars().take(12).collect();
        let notify_path = runtime_dir.join(format!("{service}-{slot}-{short}.notify"));
        let notify = NotifySocket::bind(&notify_path).map_err(|source| InstanceError::Notify {
            path: notify_path.clone(),
            source,
        })?;
        let notify = Arc::new(notify);
        // The adopted process's notify state: the previous agent heard its
        // READY=1; this socket never will.
        let adopted_pid = adopted.as_ref().map(|a| a.pid);
        if let Some(a) = &adopted {
            notify.adopt_main_pid(a.pid, a.ready);
        }
        let probe = Probe::new(probe, &release.path, Some(notify.subscribe()))
            .map_err(InstanceError::Probe)?
            .with_timeout(manifest.readiness().timing.timeout);

        let mut spec = InstanceSpec::new(
            service.clone(),
            slot,
            (digest.clone(), manifest.version().to_string()),
            release.path.clone(),
            manifest.run().clone(),
            manifest.readiness().timing,
            log_dir.to_owned(),
        );
        spec.sockets = sockets;
        spec.shim = shim.to_owned();
        spec.record_dir = Some(records.to_owned());
        spec.metrics = Some(metrics.service(&service));
        spec.extra_env = BTreeMap::from([(
            "NOTIFY_SOCKET".to_owned(),
            notify_path.display().to_string(),
        )]);
        let check = Box::new(ProbeCheck(probe));
        let instance = match adopted {
            Some(process) => Instance::adopt(spec, check, process)?,
            None => Instance::start(spec, check)?,
        };
        let release_ref = proto::v1::ReleaseRef {
            service: service.clone(),
            digest,
            version: manifest.version().to_string(),
        };
        let forward = OwnedTask::spawn(forward_changes(
            instance.subscribe(),
            adopted_pid,
            notify.clone(),
            events,
            wire::InstanceLabel {
                service: service.clone(),
                slot,
                release: release_ref.clone(),
            },
        ));
        Ok(Self {
            instance,
            notify,
            slot,
            service,
            release: release_ref,
            _forward: forward,
        })
    }

    pub fn slot(&self) -> u32 {
        self.slot
    }

    pub fn subscribe(&self) -> watch::Receiver<InstanceStatus> {
        self.instance.subscribe()
    }

    pub fn log_tail(&self, n: usize) -> Vec<String> {
        self.instance.log_tail(n)
    }

    pub fn log_path(&self) -> &Path {
        self.instance.log_path()
    }

    /// What readers see of this instance, as it changes.
    pub fn view(&self) -> InstanceView {
        InstanceView {
            label: wire::InstanceLabel {
                service: self.service.clone(),
                slot: self.slot,
                release: self.release.clone(),
            },
            status: self.instance.subscribe(),
            notify: self.notify.subscribe(),
            log: self.instance.log_file(),
        }
    }

    /// Stops the instance for good; failures are logged (the supervisor has
    /// already SIGKILLed and reaped whatever it could).
    pub async fn stop(self) {
        let Self {
            instance,
            service,
            slot,
            ..
        } = self;
        match instance.stop().await {
            Ok(report) => {
                tracing::info!(service, slot, exit = ?report.exit, killed = report.killed, took_ms = report.took.as_millis(), "instance stopped")
            }
            Err(err) => tracing::error!(service, slot, error = %err, "instance stop failed"),
        }
    }

    /// Leaves the process running for the next agent (its record stays).
    pub async fn detach(self) {
        let Self {
            instance,
            service,
            slot,
            ..
        } = self;
        match instance.detach().await {
            Ok(()) => tracing::info!(service, slot, "instance left running for the next agent"),
            Err(err) => tracing::error!(service, slot, error = %err, "instance detach failed"),
        }
    }
}

/// An instance as status, logs and the gauges read it, without holding
/// it: the supervisor's and the notify socket's latest word, and its log.
/// Once the instance is gone it shows its last state.
#[derive(Debug, Clone)]
pub struct InstanceView {
    label: wire::InstanceLabel,
    status: watch::Receiver<InstanceStatus>,
    notify: watch::Receiver<NotifyState>,
    log: LogFile,
}

impl InstanceView {
    pub fn slot(&self) -> u32 {
        self.label.slot
    }

    /// The digest of the release it runs.
    pub fn digest(&self) -> &str {
        &self.label.release.digest
    }

    /// The supervisor's state of the instance now.
    pub fn state(&self) -> crate::supervisor::InstanceState {
        self.status.borrow().state
    }

    pub fn wire_status(&self) -> proto::v1::InstanceStatus {
        let status = self.status.borrow().clone();
        let notify = self.notify.borrow().status.clone();
        wire::instance_status(&self.label, &status, notify.as_deref())
    }

    /// The last `n` lines of its log (empty if it cannot be read).
    pub fn log_tail(&self, n: usize) -> Vec<String> {
        match self.log.tail(n) {
            Ok(lines) => lines,
            Err(err) => {
                tracing::warn!(service = self.label.service, slot = self.label.slot, error = %err, "cannot read an instance's log tail");
                Vec::new()
            }
        }
    }

    pub fn log_path(&self) -> &Path {
        self.log.path()
    }
}

/// Publishes every state change and keeps the notify socket's idea of the
/// main pid current across restarts.
async fn forward_changes(
    mut status: watch::Receiver<InstanceStatus>,
    adopted_pid: Option<u32>,
    notify: Arc<NotifySocket>,
    events: broadcast::Sender<proto::v1::StatusEvent>,
    label: wire::InstanceLabel,
) {
    // An adopted process is already named (with its carried-over READY=1).
    let mut main_pid = adopted_pid;
    loop {
        let current = status.borrow_and_update().clone();
        // A new process: its notify state starts over (only once per pid,
        // or the READY=1 it already sent would be forgotten).
        if current.pid.is_some() && current.pid != main_pid {
            main_pid = current.pid;
            if let Some(pid) = main_pid {
                notify.set_main_pid(pid);
            }
        }
        let event = proto::v1::StatusEvent {
            at_unix_ms: wire::now_unix_ms(),
            instance: Some(wire::instance_status(
                &label,
                &current,
                notify.state().status.as_deref(),
            )),
            service: None,
        };
        // No receivers is fine: nobody is watching.
        let _ = events.send(event);
        if status.changed().await.is_err() {
            return;
        }
    }
}
