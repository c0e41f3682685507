//! Real etcd clusters for tests: Debian's `etcd-server` on free loopback
//! ports, data in a temporary directory.
//!
//! ```text
//! EtcdCluster::three() ── spawn n0,n1,n2 ── wait: every member answers
//!        │                                   `status` and sees a leader
//!        ├─ kill(i)     SIGKILL + reap        (crash)
//!        ├─ pause(i)    SIGSTOP               (a hung member)
//!        ├─ resume(i)   SIGCONT
//!        ├─ restart(i)  same name, same data  (recovery)
//!        └─ drop        SIGKILL + reap every member, remove the data
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::{HarnessError, Place, TestPki, TlsFiles, free_loopback_port};

/// The etcd binary; `LOCKSTEP_TEST_ETCD` overrides it for machines where
/// etcd is not on the PATH.
const ETCD_BIN_ENV: &str = "LOCKSTEP_TEST_ETCD";
const ETCD_BIN_DEFAULT: &str = "etcd";
/// A cold etcd on a loaded 2-core machine can take several seconds to elect a
/// leader; this is the whole budget for a member to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A port found free can be taken by a parallel test before etcd binds it;
/// that start is retried on fresh ports this many times in all.
const START_ATTEMPTS: usize = 3;
/// Per-request budget of the harness's own probes.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a starting member is probed.
const HEALTH_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How much of a member's log a start failure shows.
const LOG_TAIL_LINES: usize = 20;

/// What the harness last did to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Running,
    /// Stopped with SIGSTOP: alive but not answering.
    Paused,
    /// Killed with SIGKILL and reaped; `restart` brings it back.
    Killed,
}

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    state: MemberState,
    /// Where it runs and listens (loopback unless placed).
    place: Place,
    /// `false` while a test has cut the member off the network (see
    /// [`EtcdCluster::set_reachable`]): the harness's own clients skip it.
    reachable: bool,
    /// `https` when the cluster is secured.
    scheme: &'static str,
}

impl Member {
    fn client_url(&self) -> String {
        format!("{}://{}:{}", self.scheme, self.place.ip(), self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://{}:{}", self.place.ip(), self.peer_port)
    }

    /// Running and on the network: the harness's clients may use it.
    fn answers(&self) -> bool {
        self.state == MemberState::Running && self.reachable
    }
}

/// A real etcd cluster of one or three members. Every member is killed and
/// reaped, and its data removed, when the cluster is dropped.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    /// TLS on client URLs and, once `enable_auth` ran, authentication.
    security: Option<EtcdSecurity>,
    // Dropped after `Drop::drop` has killed the members, so data dirs are
    // never removed under a live etcd.
    dir: TempDir,
}

/// A secured cluster's material: the members' server certificate, and the
/// harness's own client certificate, whose CN `root` makes it etcd's root
/// user once authentication is on.
#[derive(Debug, Clone)]
pub struct EtcdSecurity {
    pub server: TlsFiles,
    pub root: TlsFiles,
}

impl EtcdSecurity {
    fn options(&self) -> Result<ConnectOptions, HarnessError> {
        let read = |path: &Path| std::fs::read(path).map_err(HarnessError::TempDir);
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(&self.root.ca)?))
            .identity(Identity::from_pem(
                read(&self.root.cert)?,
                read(&self.root.key)?,
            ));
        Ok(ConnectOptions::new().with_tls(tls))
    }
}

impl EtcdCluster {
    /// A one-member cluster.
    pub async fn single() -> Result<Self, HarnessError> {
        Self::start(1).await
    }

    /// A three-member cluster: one member may die and the rest keep serving.
    pub async fn three() -> Result<Self, HarnessError> {
        Self::start(3).await
    }

    /// A cluster of one member per place: member i runs at `places[i]`
    /// (e.g. a lab node), its client and peer URLs on that place's address.
    pub async fn placed(places: &[Place]) -> Result<Self, HarnessError> {
        Self::start_at(places.to_vec()).await
    }

    /// A one-member cluster serving TLS only, requiring client
    /// certificates from `pki`'s CA (`--client-cert-auth`). Authentication
    /// is off until [`Self::roles`] runs `enable`.
    pub async fn single_secured(pki: &TestPki) -> Result<Self, HarnessError> {
        let security = EtcdSecurity {
            server: pki.issue("etcd.lockstep")?,
            root: pki.issue("root")?,
        };
        Self::start_secured(vec![Place::loopback()], Some(security)).await
    }

    async fn start(size: usize) -> Result<Self, HarnessError> {
        Self::start_at(vec![Place::loopback(); size]).await
    }

    async fn start_at(places: Vec<Place>) -> Result<Self, HarnessError> {
        Self::start_secured(places, None).await
    }

    async fn start_secured(
        places: Vec<Place>,
        security: Option<EtcdSecurity>,
    ) -> Result<Self, HarnessError> {
        let mut attempt = 1;
        loop {
            let mut cluster = Self::spawn(&places, security.clone())?;
            match cluster.wait_healthy_all().await {
                Ok(()) => return Ok(cluster),
                Err(err) if attempt < START_ATTEMPTS && cluster.lost_a_port_race() => {
                    tracing::warn!(attempt, error = %err, "etcd lost a port race; retrying on fresh ports");
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    fn spawn(places: &[Place], security: Option<EtcdSecurity>) -> Result<Self, HarnessError> {
        let size = places.len();
        let dir = tempfile::Builder::new()
            .prefix("lockstep-etcd-")
            .tempdir()
            .map_err(HarnessError::TempDir)?;
        let mut members = Vec::with_capacity(size);
        for (index, place) in places.iter().enumerate() {
            members.push(Member {
                name: format!("n{index}"),
                client_port: free_loopback_port()?,
                peer_port: free_loopback_port()?,
                data_dir: dir.path().join(format!("n{index}.etcd")),
                log_path: dir.path().join(format!("n{index}.log")),
                child: None,
                state: MemberState::Killed,
                place: place.clone(),
                reachable: true,
                scheme: if security.is_some() { "https" } else { "http" },
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        // Unique per cluster so members of two test clusters can never join
        // each other, even if ports get reused.
        let token = dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "lockstep-test".to_owned());
        let mut cluster = Self {
            members,
            initial_cluster,
            token,
            security,
            dir,
        };
        for index in 0..size {
            cluster.spawn_member(index)?;
        }
        Ok(cluster)
    }

    fn spawn_member(&mut self, index: usize) -> Result<(), HarnessError> {
        let program = std::env::var(ETCD_BIN_ENV).unwrap_or_else(|_| ETCD_BIN_DEFAULT.to_owned());
        let member = self.member_mut(index)?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&member.log_path)
            .map_err(HarnessError::TempDir)?;
        let log_err = log.try_clone().map_err(HarnessError::TempDir)?;
        let (name, client_url, peer_url, data_dir, place) = (
            member.name.clone(),
            member.client_url(),
            member.peer_url(),
            member.data_dir.clone(),
            member.place.clone(),
        );
        let mut command = place.command("setpriv");
        // The kernel kills etcd if the test process dies without dropping
        // the fixture (a SIGKILLed test binary, an abort).
        command.args(["--pdeathsig", "KILL"]).arg(&program);
        command
            .args(["--name", &name])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        if let Some(security) = &self.security {
            command
                .arg("--cert-file")
                .arg(&security.server.cert)
                .arg("--key-file")
                .arg(&security.server.key)
                .arg("--trusted-ca-file")
                .arg(&security.server.ca)
                .arg("--client-cert-auth");
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = command.spawn().map_err(|source| HarnessError::Spawn {
            program: place.describe(&format!("setpriv --pdeathsig KILL {program}")),
            source,
        })?;
        let member = self.member_mut(index)?;
        member.child = Some(child);
        member.state = MemberState::Running;
        Ok(())
    }

    async fn wait_healthy_all(&mut self) -> Result<(), HarnessError> {
        for index in 0..self.members.len() {
            self.wait_healthy(index).await?;
        }
        Ok(())
    }

    /// Waits until `index` answers `status` and knows a leader; fails at once
    /// if the member's process exits.
    pub async fn wait_healthy(&mut self, index: usize) -> Result<(), HarnessError> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let endpoint = self.endpoint(index)?;
        loop {
            let member = self.member_mut(index)?;
            let exited = match member.child.as_mut() {
                Some(child) => child.try_wait().ok().flatten().map(|s| s.to_string()),
                None => Some("never started".to_owned()),
            };
            let last = match exited {
                Some(status) => {
                    member.child = None;
                    member.state = MemberState::Killed;
                    format!("the etcd process exited ({status})")
                }
                None => match probe_leader(&endpoint, self.security.as_ref()).await {
                    Ok(()) => return Ok(()),
                    Err(err) => err.to_string(),
                },
            };
            let member = self.member(index)?;
            let gave_up = member.child.is_none();
            if gave_up || tokio::time::Instant::now() >= deadline {
                return Err(HarnessError::EtcdNotHealthy {
                    member: index,
                    timeout: START_TIMEOUT,
                    last,
                    log: member.log_path.clone(),
                    log_tail: log_tail(&member.log_path),
                });
            }
            tokio::time::sleep(HEALTH_POLL_INTERVAL).await;
        }
    }

    fn lost_a_port_race(&self) -> bool {
        self.members.iter().any(|m| {
            std::fs::read_to_string(&m.log_path)
                .is_ok_and(|log| log.contains("address already in use"))
        })
    }

    /// Client URLs of every member, running or not, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// An agent.toml `[etcd]` table naming every member, for agents started
    /// without a coordinator.
    pub fn agent_table(&self, lease_ttl: &str, budget_wait: &str) -> String {
        let endpoints: Vec<String> = self
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        format!(
            "\n[etcd]\nendpoints = [{}]\nlease_ttl = \"{lease_ttl}\"\nbudget_wait = \"{budget_wait}\"\n",
            endpoints.join(", ")
        )
    }

    /// Runs `scripts/etcd-roles ARGS` against this (secured) cluster as
    /// its root client certificate; its output, or why it failed.
    pub async fn roles(&self, args: &[&str]) -> Result<String, HarnessError> {
        let security = self.security.as_ref().ok_or_else(|| {
            HarnessError::Fixture("etcd-roles needs a secured cluster".to_owned())
        })?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/etcd-roles");
        let output = tokio::process::Command::new(&script)
            .args(args)
            .env("ETCDCTL_ENDPOINTS", self.endpoints().join(","))
            .env("ETCDCTL_CACERT", &security.root.ca)
            .env("ETCDCTL_CERT", &security.root.cert)
            .env("ETCDCTL_KEY", &security.root.key)
            .env("ETCDCTL_DIAL_TIMEOUT", "5s")
            .env("ETCDCTL_COMMAND_TIMEOUT", "10s")
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| HarnessError::Spawn {
                program: script.display().to_string(),
                source,
            })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if !output.status.success() {
            return Err(HarnessError::Fixture(format!(
                "etcd-roles {} failed ({}): {text}",
                args.join(" "),
                output.status
            )));
        }
        Ok(text)
    }

    /// Client URL of one member.
    pub fn endpoint(&self, index: usize) -> Result<String, HarnessError> {
        Ok(self.member(index)?.client_url())
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn state(&self, index: usize) -> Result<MemberState, HarnessError> {
        Ok(self.member(index)?.state)
    }

    /// The OS pid of a member that was started and not killed.
    pub fn pid(&self, index: usize) -> Result<Option<u32>, HarnessError> {
        Ok(self.member(index)?.child.as_ref().map(Child::id))
    }

    /// Where a member writes its log.
    pub fn log_path(&self, index: usize) -> Result<&Path, HarnessError> {
        Ok(&self.member(index)?.log_path)
    }

    /// A client for every running member's endpoint: a test's own reads
    /// must not depend on the failover under test (etcd-client's balanced
    /// channel keeps sending to a dead member).
    pub async fn client(&self) -> Result<Client, HarnessError> {
        let running: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.answers())
            .map(Member::client_url)
            .collect();
        if running.is_empty() {
            return connect(&self.endpoints(), self.security.as_ref()).await;
        }
        connect(&running, self.security.as_ref()).await
    }

    /// A client for one member's endpoint only.
    pub async fn member_client(&self, index: usize) -> Result<Client, HarnessError> {
        connect(&[self.endpoint(index)?], self.security.as_ref()).await
    }

    /// SIGKILL, then reap: the member is gone as if the host crashed.
    pub fn kill(&mut self, index: usize) -> Result<(), HarnessError> {
        let member = self.member_mut(index)?;
        let mut child = member
            .child
            .take()
            .ok_or(HarnessError::MemberNotRunning { member: index })?;
        member.state = MemberState::Killed;
        child
            .kill()
            .and_then(|()| child.wait().map(drop))
            .map_err(|source| HarnessError::Reap {
                member: index,
                source,
            })
    }

    /// SIGSTOP: the member keeps its sockets but answers nothing. Returns
    /// once every thread of it has stopped (kill(2) returns before a
    /// thread running on another core takes the stop, and that thread
    /// could still answer one request).
    pub fn pause(&mut self, index: usize) -> Result<(), HarnessError> {
        self.signal(index, Signal::SIGSTOP)?;
        self.member_mut(index)?.state = MemberState::Paused;
        let pid = self
            .pid(index)?
            .ok_or(HarnessError::MemberNotRunning { member: index })?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !all_threads_stopped(pid) {
            if std::time::Instant::now() >= deadline {
                return Err(HarnessError::Fixture(format!(
                    "etcd member {index} (pid {pid}) did not stop within 10 s of SIGSTOP"
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Tells the harness whether member `index` is on the network: a test
    /// that cuts a member off (a lab's `unplug` or `partition`) says so,
    /// and [`Self::client`] and [`Self::leader`] leave it out until it is
    /// back (a client of a member that drops every packet waits out each
    /// request's deadline).
    pub fn set_reachable(&mut self, index: usize, reachable: bool) -> Result<(), HarnessError> {
        self.member_mut(index)?.reachable = reachable;
        Ok(())
    }

    /// SIGCONT after `pause`.
    pub fn resume(&mut self, index: usize) -> Result<(), HarnessError> {
        self.signal(index, Signal::SIGCONT)?;
        self.member_mut(index)?.state = MemberState::Running;
        Ok(())
    }

    /// Starts a killed member again on its old ports and data, and waits
    /// until it is healthy.
    pub async fn restart(&mut self, index: usize) -> Result<(), HarnessError> {
        if self.member(index)?.child.is_some() {
            self.kill(index)?;
        }
        self.spawn_member(index)?;
        self.wait_healthy(index).await
    }

    /// The index of the member the running members agree leads.
    pub async fn leader(&self) -> Result<usize, HarnessError> {
        let mut ids = Vec::with_capacity(self.members.len());
        let mut leader_id = None;
        for (index, member) in self.members.iter().enumerate() {
            if !member.answers() {
                continue;
            }
            let endpoint = member.client_url();
            let mut client =
                connect(std::slice::from_ref(&endpoint), self.security.as_ref()).await?;
            let status = client
                .status()
                .await
                .map_err(|source| HarnessError::Etcd { endpoint, source })?;
            if let Some(header) = status.header() {
                ids.push((index, header.member_id()));
            }
            if status.leader() != 0 {
                leader_id = Some(status.leader());
            }
        }
        let leader_id = leader_id.ok_or(HarnessError::NoLeader)?;
        ids.into_iter()
            .find(|&(_, id)| id == leader_id)
            .map(|(index, _)| index)
            .ok_or(HarnessError::NoLeader)
    }

    /// The temporary directory holding every member's data and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn signal(&self, index: usize, signal: Signal) -> Result<(), HarnessError> {
        let child = self
            .member(index)?
            .child
            .as_ref()
            .ok_or(HarnessError::MemberNotRunning { member: index })?;
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        kill(Pid::from_raw(pid), signal).map_err(|source| HarnessError::Signal {
            member: index,
            pid,
            source,
        })
    }

    fn member(&self, index: usize) -> Result<&Member, HarnessError> {
        let size = self.members.len();
        self.members.get(index).ok_or(HarnessError::NoSuchMember {
            member: index,
            size,
        })
    }

    fn member_mut(&mut self, index: usize) -> Result<&mut Member, HarnessError> {
        let size = self.members.len();
        self.members
            .get_mut(index)
            .ok_or(HarnessError::NoSuchMember {
                member: index,
                size,
            })
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                // SIGKILL ends a stopped process too; no SIGCONT needed.
                if let Err(err) = child.kill().and_then(|()| child.wait().map(drop)) {
                    tracing::error!(member = %member.name, error = %err, "cannot kill etcd member");
                }
            }
        }
    }
}

async fn probe_leader(endpoint: &str, security: Option<&EtcdSecurity>) -> Result<(), HarnessError> {
    let mut client = connect(&[endpoint.to_owned()], security).await?;
    let status = client.status().await.map_err(|source| HarnessError::Etcd {
        endpoint: endpoint.to_owned(),
        source,
    })?;
    if status.leader() == 0 {
        return Err(HarnessError::NoLeader);
    }
    Ok(())
}

async fn connect(
    endpoints: &[String],
    security: Option<&EtcdSecurity>,
) -> Result<Client, HarnessError> {
    let options = match security {
        Some(security) => security.options()?,
        None => ConnectOptions::new(),
    };
    let options = options
        .with_connect_timeout(PROBE_TIMEOUT)
        .with_timeout(PROBE_TIMEOUT);
    Client::connect(endpoints, Some(options))
        .await
        .map_err(|source| HarnessError::Etcd {
            endpoint: endpoints.join(","),
            source,
        })
}

fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(log) => {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(err) => format!("(cannot read the log: {err})"),
    }
}

/// Whether every thread of `pid` is in the stopped state (`T` in
/// `/proc/PID/task/TID/stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // The state follows the parenthesised command name.
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
                .is_some_and(|state| state == 'T' || state == 't')
        })
    })
}
