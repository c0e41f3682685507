//! Agent start: every service back on its current release, adopting the
//! processes a previous agent left running where they are of it.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::time::Duration;

use release::StoredRelease;

use super::command::Command;
use super::{Host, HostError, Running, ServiceRuntime, stop_all};
use crate::supervisor::ListenSockets;
use crate::supervisor::record::{self, ProcessRecord, Verdict};

/// How long an unrecorded app process (see `stop_strays`) gets after
/// SIGTERM: its manifest, and so its own stop_timeout, is unknown.
pub(super) const STRAY_STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl Host {
    /// Runs every service's current release (agent start): adopting the
    /// processes a previous agent left running where they are of that
    /// release, stopping those that are not, starting the rest. A service
    /// whose release cannot start is reported and left stopped; the others
    /// start.
    pub async fn reconcile(&self) -> Vec<(String, HostError)> {
        let found = self.recorded_processes().await;
        self.stop_strays(found.iter().map(|f| f.record.pid).collect())
            .await;
        let mut recorded: BTreeMap<String, Vec<Recorded>> = BTreeMap::new();
        for found in found {
            recorded
                .entry(found.record.service.clone())
                .or_default()
                .push(found);
        }
        let current: Vec<(String, String)> = {
            let state = self.state.lock().await;
            state
                .services
                .iter()
                .filter_map(|(name, s)| {
                    s.current.as_ref().map(|c| (name.clone(), c.digest.clone()))
                })
                .collect()
        };
        let mut failures = Vec::new();
        for (service, digest) in current {
            let found = recorded.remove(&service).unwrap_or_default();
            let result = async {
                let release = match self.stored(&digest).await {
                    Ok(release) => release,
                    Err(err) => {
                        stop_unwanted(&self.config.process_dir(), found).await;
                        return Err(err);
                    }
                };
                let slots = release.manifest.run().instances;
                let (adopt, unwanted): (Vec<_>, Vec<_>) = found.into_iter().partition(|f| {
                    record::verdict(&f.record, true, Some(&digest), slots) == Verdict::Adopt
                });
                stop_unwanted(&self.config.process_dir(), unwanted).await;
                if !adopt.is_empty() {
                    let adopting = Command::Adopt {
                        release: release.clone(),
                        found: adopt,
                    };
                    match self.carry_out(&service, (None, 0), adopting).await {
                        Ok(message) => return Ok(message),
                        Err(err) => tracing::warn!(
                            service,
                            error = %err,
                            "adoption failed; the adopted processes were stopped, starting the release fresh"
                        ),
                    }
                }
                self.carry_out(&service, (None, 0), Command::Start(release)).await
            }
            .await;
            match result {
                Ok(_) => {
                    tracing::info!(service, digest, "service reconciled to its current release")
                }
                Err(err) => {
                    tracing::error!(service, digest, error = %err, "cannot start the current release");
                    failures.push((service, err));
                }
            }
        }
        // Services with no current release keep nothing running.
        for (_, found) in recorded {
            stop_unwanted(&self.config.process_dir(), found).await;
        }
        failures
    }

    /// Stops app processes a previous agent started but never recorded (it
    /// died in between): nothing could adopt them, and they would hold the
    /// service's port.
    pub(super) async fn stop_strays(&self, known: Vec<u32>) {
        let runtime_dir = self.config.runtime_dir();
        let strays =
            tokio::task::spawn_blocking(move || record::find_strays(&runtime_dir, &known)).await;
        let strays = match strays {
            Ok(strays) => strays,
            Err(err) => {
                tracing::error!(error = %err, "looking for unrecorded app processes failed");
                return;
            }
        };
        let mut stops = tokio::task::JoinSet::new();
        for (pid, pidfd) in strays {
            tracing::warn!(pid, "stopping an app process that no record names");
            stops.spawn(record::stop_process(
                pid,
                pidfd,
                nix::sys::signal::Signal::SIGTERM,
                STRAY_STOP_TIMEOUT,
            ));
        }
        while let Some(result) = stops.join_next().await {
            if let Err(err) = result {
                tracing::error!(error = %err, "a stray process stop task failed");
            }
        }
    }

    /// The live processes a previous agent recorded (records of processes
    /// that are gone are removed).
    pub(super) async fn recorded_processes(&self) -> Vec<Recorded> {
        let dir = self.config.process_dir();
        let loaded = tokio::task::spawn_blocking(move || {
            let boot_id = record::boot_id();
            let mut alive = Vec::new();
            for (path, parsed) in record::load_all(&dir)? {
                let found = match parsed {
                    Ok(r) => record::open_if_alive(&r, &boot_id)
                        .map(|pidfd| Recorded { record: r, pidfd }),
                    Err(err) => {
                        tracing::warn!(error = %err, "ignoring an unreadable process record");
                        None
                    }
                };
                match found {
                    Some(found) => alive.push(found),
                    None => {
                        if let Err(err) = record::remove(&path) {
                            tracing::warn!(error = %err, "cannot remove a stale process record");
                        }
                    }
                }
            }
            Ok::<_, record::RecordError>(alive)
        })
        .await;
        match loaded {
            Ok(Ok(alive)) => {
                if !alive.is_empty() {
                    tracing::info!(
                        processes = alive.len(),
                        "found instance processes left running by a previous agent"
                    );
                }
                alive
            }
            Ok(Err(err)) => {
                tracing::error!(error = %err, "cannot read process records; nothing is adopted");
                Vec::new()
            }
            Err(err) => {
                tracing::error!(error = %err, "process record reader failed; nothing is adopted");
                Vec::new()
            }
        }
    }

    /// The release's listening sockets, duplicated out of `first`, the
    /// first process to adopt.
    fn adopted_sockets(
        &self,
        service: &str,
        release: &StoredRelease,
        first: Option<&Recorded>,
    ) -> Result<ListenSockets, HostError> {
        let listen = self.listen(service, release);
        let adopt_err = |reason: String| HostError::Adopt {
            service: service.to_owned(),
            reason,
        };
        let names: Vec<String> = listen.iter().map(|l| l.name.clone()).collect();
        match first {
            Some(first) if first.record.sockets == names => {
                record::take_sockets(&first.record, &first.pidfd)
                    .map_err(|e| {
                        // EPERM: a seccomp filter refuses pidfd_getfd (a
                        // container's default one, e.g. systemd-nspawn's)
                        // or the agent lacks CAP_SYS_PTRACE over the app.
                        let hint =
                            if e.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) {
                                "; the agent needs the pidfd_getfd system call and CAP_SYS_PTRACE \
                             (in a container, allow them: see the operator guide)"
                            } else {
                                ""
                            };
                        adopt_err(format!(
                            "cannot duplicate the sockets of pid {}: {e}{hint}",
                            first.record.pid
                        ))
                    })
                    .and_then(|fds| {
                        ListenSockets::recover(&listen, fds).map_err(|e| adopt_err(e.to_string()))
                    })
            }
            Some(first) => Err(adopt_err(format!(
                "pid {} was handed sockets {:?}, the release listens on {names:?}",
                first.record.pid, first.record.sockets
            ))),
            None => Err(adopt_err("no process to adopt".to_owned())),
        }
    }

    /// Takes over `found` (live processes of `release`): sockets from the
    /// first, an adopted instance per recorded slot, fresh ones for the
    /// others, all ready within the healthy deadline. On failure every
    /// process is stopped (none is left unsupervised).
    pub(super) async fn adopt(
        &self,
        service: &str,
        rt: &mut ServiceRuntime,
        release: &StoredRelease,
        mut found: Vec<Recorded>,
    ) -> Result<String, HostError> {
        let sockets = self.adopted_sockets(service, release, found.first());
        let sockets = match sockets {
            Ok(sockets) => sockets,
            Err(err) => {
                stop_unwanted(&self.config.process_dir(), found).await;
                return Err(err);
            }
        };
        let count = release.manifest.run().instances;
        let mut instances = Vec::new();
        for slot in 0..count {
            let adopted = found
                .iter()
                .position(|f| f.record.slot == slot)
                .map(|i| found.swap_remove(i));
            let started = match adopted {
                Some(f) => {
                    tracing::info!(
                        service,
                        slot,
                        pid = f.record.pid,
                        "adopting instance process"
                    );
                    self.adopt_instance(release, &sockets, f)
                }
                None => self.start_instance(release, &sockets, slot),
            };
            match started {
                Ok(instance) => instances.push(instance),
                Err(err) => {
                    stop_all(instances).await;
                    stop_unwanted(&self.config.process_dir(), found).await;
                    return Err(err);
                }
            }
        }
        // Two records for one slot cannot both be adopted.
        stop_unwanted(&self.config.process_dir(), found).await;
        rt.view.starting(&instances);
        let instances = match self.wait_ready(service, release, instances).await {
            Ok(instances) => instances,
            Err(err) => {
                rt.publish();
                return Err(err);
            }
        };
        rt.running = Some(Running {
            release: release.clone(),
            sockets,
            instances,
        });
        rt.last_error.clear();
        rt.publish();
        Ok(format!(
            "{service} keeps running {} ({}): adopted",
            release.manifest.version(),
            release.digest
        ))
    }
}

/// A live process a previous agent recorded.
#[derive(Debug)]
pub(super) struct Recorded {
    pub(super) record: ProcessRecord,
    pub(super) pidfd: OwnedFd,
}

/// Stops recorded processes nobody adopts, in parallel, and drops their records.
pub(super) async fn stop_unwanted(dir: &std::path::Path, found: Vec<Recorded>) {
    let mut stops = tokio::task::JoinSet::new();
    for f in found {
        let path = f.record.path_in(dir);
        stops.spawn(async move {
            record::stop_unwanted(&f.record, f.pidfd).await;
            match tokio::task::spawn_blocking(move || record::remove(&path)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(error = %err, "cannot remove a process record"),
                Err(err) => tracing::warn!(error = %err, "process record removal failed"),
            }
        });
    }
    while let Some(result) = stops.join_next().await {
        if let Err(err) = result {
            tracing::error!(error = %err, "a left-over process stop task failed");
        }
    }
}
