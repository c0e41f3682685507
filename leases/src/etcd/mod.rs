//! `Etcd`: the client every etcd request of Lockstep goes through, failing
//! over between the cluster's members.
//!
//! etcd-client puts all endpoints behind one balanced channel that keeps
//! sending requests to a dead member and leaves failover to the
//! application (etcdv3/etcd-client#12). So this holds one client per member
//! and decides itself, like etcd's Go client, where each request goes:
//!
//! ```text
//! request ──► round: preferred member, other healthy ones, then failed ones
//!               │ each attempt bounded by `attempt_timeout`
//!               ├─ answered (or refused by etcd itself) ──► caller
//!               ├─ member trouble ──► member leaves rotation, next member
//!               └─ round over ──► backoff ──► next round, until the
//!                  request's deadline: then DEADLINE_EXCEEDED to the caller
//! prober task: a failed member's `status` is asked with backoff; once it
//!               answers and knows a leader it is back in rotation
//! ```
//!
//! Decisions live in [`health`] (which member next, when to probe) and
//! [`retry`] (which failures another member may answer); this module only
//! carries them out. Errors stay `etcd_client::Error`, so callers keep
//! reading etcd's own answers; a request no member answered in time is a
//! DEADLINE_EXCEEDED status whose source is the last member's error.
//!
//! Must never: retry a request etcd refused (every member would refuse it),
//! send a request that is not safe to repeat (see [`retry`]), or wait past
//! a request's deadline.

mod access;
mod endpoint;
mod health;
mod metrics;
mod retry;

use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use backon::BackoffBuilder;
use etcd_client::{
    Client, ConnectOptions, DeleteOptions, DeleteResponse, GetOptions, GetResponse,
    LeaseGrantOptions, LeaseGrantResponse, LeaseKeepAliveStream, LeaseKeeper, LeaseRevokeResponse,
    LeaseTimeToLiveOptions, LeaseTimeToLiveResponse, PutOptions, PutResponse, Txn, TxnResponse,
    WatchOptions, WatchStream,
};
use tokio::time::Instant;

use crate::task::OwnedTask;
pub use access::{EtcdAccess, EtcdAccessKeys, EtcdUser};
pub use endpoint::{EndpointError, check_endpoint};
use health::{Change, EndpointHealth};
pub use metrics::{EtcdMetrics, RequestOutcome};
use retry::Verdict;
pub use retry::may_succeed_later;

/// Bound on opening a TCP connection to a member.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on one attempt on one member: a hung member (SIGSTOP, a full
/// disk) must not hold a request longer than this before another member
/// is asked.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on a whole request, all members and rounds: longer than an etcd
/// leader election, shorter than a coordinator's lease.
pub const DEFAULT_REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// HTTP/2 pings on each member's connection: a hung member's streams
/// (watches, keep-alives) break within interval + timeout instead of
/// staying silent forever.
const PING: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(2));
/// Backoff between rounds of one request: first, and most.
const ROUND_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));
/// How often the prober looks for members whose probe is due.
const PROBE_TICK: Duration = Duration::from_millis(250);

/// The bounds on connecting and on each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtcdTiming {
    pub connect_timeout: Duration,
    pub attempt_timeout: Duration,
    pub request_deadline: Duration,
}

impl Default for EtcdTiming {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            request_deadline: DEFAULT_REQUEST_DEADLINE,
        }
    }
}

/// One member of an [`Etcd`] client, for [`Etcd::demote`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberId(usize);

/// A client of an etcd cluster that fails over between its members.
/// Cloning is cheap and shares the members' health.
#[derive(Clone)]
pub struct Etcd {
    inner: Arc<Inner>,
    /// This handle's bound on a whole request.
    deadline: Duration,
}

struct Inner {
    members: Vec<Member>,
    health: Mutex<EndpointHealth>,
    /// Authenticated on each member before it takes a request.
    user: Option<EtcdUser>,
    timing: EtcdTiming,
    /// Where requests are counted, once a daemon asks (`count_into`).
    metrics: OnceLock<EtcdMetrics>,
    _prober: OwnedTask,
}

struct Member {
    endpoint: String,
    client: Client,
    /// False while a member that did not answer at connect has not yet
    /// authenticated this client's user (`EtcdAccess::user`): it takes no
    /// request until it has.
    authenticated: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints().collect::<Vec<_>>())
            .field("health", &*self.inner.lock())
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Inner {
    /// Authenticates `user` on `m` if it has not yet; member trouble if
    /// it cannot.
    async fn authenticate(&self, m: &Member) -> Result<(), etcd_client::Error> {
        use std::sync::atomic::Ordering;
        let Some(user) = &self.user else {
            return Ok(());
        };
        if m.authenticated.load(Ordering::Acquire) {
            return Ok(());
        }
        // A clone shares the client's credentials and token.
        m.client.clone().update_user(Some(user.pair())).await?;
        m.authenticated.store(true, Ordering::Release);
        tracing::info!(
            endpoint = m.endpoint,
            user = user.name(),
            "authenticated to etcd member"
        );
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EndpointHealth> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Etcd {
    /// One client per endpoint, each bounded by `timing`, with no
    /// credentials (plain http). Connects lazily: a member that is down now
    /// is not an error here.
    pub async fn connect(
        endpoints: &[String],
        timing: EtcdTiming,
    ) -> Result<Self, etcd_client::Error> {
        Self::connect_with(endpoints, timing, &EtcdAccess::default()).await
    }

    /// Like [`Self::connect`], presenting `access` (TLS, a user). With a
    /// user, each member that answers authenticates it now (a refused
    /// password is an error: every member would refuse it); one that does
    /// not answer authenticates it once it does.
    pub async fn connect_with(
        endpoints: &[String],
        timing: EtcdTiming,
        access: &EtcdAccess,
    ) -> Result<Self, etcd_client::Error> {
        if endpoints.is_empty() {
            return Err(etcd_client::Error::InvalidArgs(
                "no etcd endpoints".to_owned(),
            ));
        }
        for endpoint in endpoints {
            check_endpoint(endpoint, access.has_tls())
                .map_err(|e| etcd_client::Error::InvalidArgs(e.to_string()))?;
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(timing.connect_timeout)
            .with_timeout(timing.attempt_timeout)
            .with_keep_alive(PING.0, PING.1)
            .with_keep_alive_while_idle(true)
            // A member cut off from the others answers "no leader" at once
            // instead of hanging, so the request moves on.
            .with_require_leader(true);
        let mut members = Vec::with_capacity(endpoints.len());
        let mut unauthenticated = Vec::new();
        for (i, endpoint) in endpoints.iter().enumerate() {
            let (client, authenticated) = connect_member(endpoint, &options, access).await?;
            if !authenticated {
                unauthenticated.push(i);
            }
            members.push(Member {
                endpoint: endpoint.clone(),
                client,
                authenticated: std::sync::atomic::AtomicBool::new(authenticated),
            });
        }
        let mut health = EndpointHealth::new(members.len());
        let now = std::time::Instant::now();
        for i in unauthenticated {
            health.failed(i, now);
        }
        let user = access.user().cloned();
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| Inner {
            health: Mutex::new(health),
            members,
            user,
            timing,
            metrics: OnceLock::new(),
            _prober: OwnedTask::spawn(probe(weak.clone())),
        });
        Ok(Self {
            deadline: timing.request_deadline,
            inner,
        })
    }

    /// The same client with another bound on each whole request (a
    /// keep-alive must reopen before its session is lost, an operator call
    /// must answer before the operator gives up).
    pub fn with_deadline(&self, deadline: Duration) -> Self {
        Self {
            inner: self.inner.clone(),
            deadline,
        }
    }

    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Counts every request of this client and its clones into `metrics`
    /// from now on. The first call wins: one client, one set of families.
    pub fn count_into(&self, metrics: EtcdMetrics) {
        let _ = self.inner.metrics.set(metrics);
    }

    /// The members' endpoints, in the order given.
    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        self.inner.members.iter().map(|m| m.endpoint.as_str())
    }

    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<GetResponse, etcd_client::Error> {
        let key = key.into();
        self.call("get", |mut c, _| {
            let (key, options) = (key.clone(), options.clone());
            async move { c.get(key, options).await }
        })
        .await
    }

    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: Option<PutOptions>,
    ) -> Result<PutResponse, etcd_client::Error> {
        let (key, value) = (key.into(), value.into());
        self.call("put", |mut c, _| {
            let (key, value, options) = (key.clone(), value.clone(), options.clone());
            async move { c.put(key, value, options).await }
        })
        .await
    }

    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<DeleteOptions>,
    ) -> Result<DeleteResponse, etcd_client::Error> {
        let key = key.into();
        self.call("delete", |mut c, _| {
            let (key, options) = (key.clone(), options.clone());
            async move { c.delete(key, options).await }
        })
        .await
    }

    /// A transaction. Only for transactions guarded by compares (every one
    /// Lockstep makes), which a repeat cannot apply twice.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, etcd_client::Error> {
        self.call("txn", |mut c, _| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// Opens a watch on a member that answers. The stream ends or fails
    /// with its member: the caller watches again from the revision after
    /// the last one it saw, and this picks another member.
    pub async fn watch(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<WatchOptions>,
    ) -> Result<WatchStream, etcd_client::Error> {
        let key = key.into();
        self.call("watch", |mut c, _| {
            let (key, options) = (key.clone(), options.clone());
            async move { c.watch(key, options).await }
        })
        .await
    }

    pub async fn lease_grant(
        &self,
        ttl: i64,
        options: Option<LeaseGrantOptions>,
    ) -> Result<LeaseGrantResponse, etcd_client::Error> {
        self.call("lease grant", |mut c, _| {
            let options = options.clone();
            async move { c.lease_grant(ttl, options).await }
        })
        .await
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, etcd_client::Error> {
        self.call("lease revoke", |mut c, _| async move {
            c.lease_revoke(id).await
        })
        .await
    }

    /// Opens a keep-alive stream for lease `id` on a member that answers;
    /// the member it lives on is returned for [`Self::demote`].
    pub async fn lease_keep_alive(
        &self,
        id: i64,
    ) -> Result<(LeaseKeeper, LeaseKeepAliveStream, MemberId), etcd_client::Error> {
        self.call("lease keep-alive", |mut c, member| async move {
            c.lease_keep_alive(id)
                .await
                .map(|(keeper, stream)| (keeper, stream, member))
        })
        .await
    }

    /// Takes `member` out of rotation: a stream on it stopped answering
    /// (a hung member answers nothing, not even an error), so the next
    /// request, and the stream's reopening, go elsewhere.
    pub fn demote(&self, member: MemberId, why: &str) {
        let change = self
            .inner
            .lock()
            .failed(member.0, std::time::Instant::now());
        let endpoint = self
            .inner
            .members
            .get(member.0)
            .map_or("?", |m| m.endpoint.as_str());
        if change == Change::LeftRotation {
            tracing::warn!(
                endpoint,
                why,
                "etcd member out of rotation until it answers a probe"
            );
        }
    }

    pub async fn lease_time_to_live(
        &self,
        id: i64,
        options: Option<LeaseTimeToLiveOptions>,
    ) -> Result<LeaseTimeToLiveResponse, etcd_client::Error> {
        self.call("lease time-to-live", |mut c, _| {
            let options = options.clone();
            async move { c.lease_time_to_live(id, options).await }
        })
        .await
    }

    /// Carries out one request: rounds over the members (see the module
    /// doc) until one answers or the deadline passes.
    async fn call<T, F, Fut>(
        &self,
        op: &'static str,
        mut attempt: F,
    ) -> Result<T, etcd_client::Error>
    where
        F: FnMut(Client, MemberId) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = Instant::now();
        let mut pauses = round_backoff();
        let mut pause = Duration::ZERO;
        let mut attempts = 0u32;
        let mut last = None;
        while retry::may_start(started.elapsed(), pause, self.deadline) {
            tokio::time::sleep(pause).await;
            let round = self.inner.lock().round();
            for member in round {
                let left = self.deadline.saturating_sub(started.elapsed());
                if left.is_zero() {
                    break;
                }
                attempts += 1;
                match self.attempt_on(member, left, &mut attempt).await {
                    Ok(answer) => {
                        let outcome = match &answer {
                            Ok(_) => RequestOutcome::Answered,
                            Err(_) => RequestOutcome::Refused,
                        };
                        self.counted(op, started.elapsed(), outcome);
                        return answer;
                    }
                    Err(err) => {
                        self.member_failed(member, op, &err);
                        last = Some(err);
                    }
                }
            }
            pause = pauses.next().unwrap_or(ROUND_BACKOFF.1);
        }
        self.counted(op, started.elapsed(), RequestOutcome::Unanswered);
        Err(self.unanswered(op, started.elapsed(), attempts, last))
    }

    fn counted(&self, op: &'static str, took: Duration, outcome: RequestOutcome) {
        if let Some(metrics) = self.inner.metrics.get() {
            metrics.request_ended(op, took, outcome);
        }
    }

    /// One attempt on `member`, bounded by the attempt timeout and by what
    /// is `left` of the request's deadline. `Ok` is the caller's answer
    /// (success, or etcd's refusal); `Err` is member trouble.
    async fn attempt_on<T, F, Fut>(
        &self,
        member: usize,
        left: Duration,
        attempt: &mut F,
    ) -> Result<Result<T, etcd_client::Error>, etcd_client::Error>
    where
        F: FnMut(Client, MemberId) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let Some(m) = self.inner.members.get(member) else {
            return Err(etcd_client::Error::InvalidArgs(format!(
                "no member {member}"
            )));
        };
        let bound = self.inner.timing.attempt_timeout.min(left);
        tokio::time::timeout(bound, self.inner.authenticate(m))
            .await
            .map_err(|_| {
                etcd_client::Error::GRpcStatus(tonic::Status::deadline_exceeded(format!(
                    "{} did not authenticate within {bound:?}",
                    m.endpoint
                )))
            })??;
        let answer =
            match tokio::time::timeout(bound, attempt(m.client.clone(), MemberId(member))).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(err)) if retry::classify(&err) == Verdict::Final => Err(err),
                Ok(Err(err)) => return Err(err),
                Err(_) => {
                    return Err(etcd_client::Error::GRpcStatus(
                        tonic::Status::deadline_exceeded(format!(
                            "{} did not answer within {bound:?}",
                            m.endpoint
                        )),
                    ));
                }
            };
        let change = self
            .inner
            .lock()
            .succeeded(member, std::time::Instant::now());
        if let Change::Rejoined { down_for } = change {
            tracing::info!(endpoint = m.endpoint, down_for = ?down_for, "etcd member answers again; back in rotation");
        }
        Ok(answer)
    }

    fn member_failed(&self, member: usize, op: &str, err: &etcd_client::Error) {
        let change = self.inner.lock().failed(member, std::time::Instant::now());
        let endpoint = self
            .inner
            .members
            .get(member)
            .map_or("?", |m| m.endpoint.as_str());
        if let Some(metrics) = self.inner.metrics.get() {
            metrics.member_failed(endpoint);
        }
        if change == Change::LeftRotation {
            tracing::warn!(endpoint, op, error = %err, "etcd member failed; out of rotation until it answers a probe");
        } else {
            tracing::debug!(endpoint, op, error = %err, "etcd member still failing");
        }
    }

    /// The error of a request no member answered: DEADLINE_EXCEEDED, with
    /// the last member's error as its source.
    fn unanswered(
        &self,
        op: &str,
        waited: Duration,
        attempts: u32,
        last: Option<etcd_client::Error>,
    ) -> etcd_client::Error {
        let endpoints = self.endpoints().collect::<Vec<_>>().join(", ");
        let mut message = format!(
            "no etcd member ({endpoints}) answered {op} within {waited:?} ({attempts} attempts)"
        );
        if let Some(last) = &last {
            message.push_str(&format!("; last: {last}"));
        }
        let mut status = tonic::Status::deadline_exceeded(message);
        if let Some(last) = last {
            status.set_source(Arc::new(last));
        }
        tracing::warn!(op, endpoints, attempts, waited = ?waited, "no etcd member answered");
        etcd_client::Error::GRpcStatus(status)
    }
}

/// A client for one member. With a user: authenticated now when the member
/// answers (`true`); when it does not, a client without the user, to be
/// authenticated by `Inner::authenticate` once it answers (`false`). A
/// refused password is an error.
async fn connect_member(
    endpoint: &str,
    options: &ConnectOptions,
    access: &EtcdAccess,
) -> Result<(Client, bool), etcd_client::Error> {
    let lazy = || Client::connect([endpoint], Some(access.apply(options.clone(), false)));
    if access.user().is_none() {
        return Ok((lazy().await?, true));
    }
    match Client::connect([endpoint], Some(access.apply(options.clone(), true))).await {
        Ok(client) => Ok((client, true)),
        Err(err) if retry::classify(&err) == Verdict::Final => Err(err),
        Err(err) => {
            tracing::warn!(endpoint, error = %err, "etcd member did not answer; it authenticates once it does");
            Ok((lazy().await?, false))
        }
    }
}

/// Pauses between rounds of one request, jittered so the clients of one
/// fleet do not retry in step.
fn round_backoff() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(ROUND_BACKOFF.0)
        .with_max_delay(ROUND_BACKOFF.1)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Probes the members out of rotation until the client is dropped: a
/// member is back once it answers `status` and knows a leader.
async fn probe(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(PROBE_TICK).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let due = inner.lock().due_probes(std::time::Instant::now());
        for member in due {
            let Some(m) = inner.members.get(member) else {
                continue;
            };
            let mut client = m.client.clone();
            let answer = tokio::time::timeout(inner.timing.attempt_timeout, async {
                inner.authenticate(m).await?;
                client.status().await
            })
            .await;
            let now = std::time::Instant::now();
            match answer {
                Ok(Ok(status)) if status.leader() != 0 => {
                    if let Change::Rejoined { down_for } = inner.lock().succeeded(member, now) {
                        tracing::info!(endpoint = m.endpoint, down_for = ?down_for, "etcd member answers its probe; back in rotation");
                    }
                }
                Ok(Ok(_)) => {
                    tracing::debug!(
                        endpoint = m.endpoint,
                        "etcd member answers but knows no leader"
                    );
                    inner.lock().probe_failed(member, now);
                }
                Ok(Err(err)) => {
                    tracing::debug!(endpoint = m.endpoint, error = %err, "etcd member probe failed");
                    inner.lock().probe_failed(member, now);
                }
                Err(_) => {
                    tracing::debug!(endpoint = m.endpoint, "etcd member probe timed out");
                    inner.lock().probe_failed(member, now);
                }
            }
        }
    }
}
