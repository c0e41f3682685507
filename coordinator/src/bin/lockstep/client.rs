//! The connection to the coordinators, and what a failure means for the
//! exit code.
//!
//! Owns the URL list (`--coordinator`, `LOCKSTEP_COORDINATOR`), failover in
//! order, the leader redirect (a follower answers `FailedPrecondition` with
//! the leader's URL in the `lockstep-leader` metadata; the call is retried
//! once there), the `Actor` sent with every mutating call, and the mapping
//! from RPC errors to exit codes. Every verb calls the coordinator through
//! [`Coordinators::call`]. An `https://` coordinator (given, or named by a
//! redirect) is dialled over mTLS with the operator's `--ca`, `--cert` and
//! `--tls-key`, read on first use.
//!
//! Every call has a deadline (`--timeout`): connecting, and the answer. A
//! coordinator that does not answer in time — hung, or waiting on a hung
//! etcd — is `Unavailable` (exit 69) and is tried last from then on.
//! Streams (`watch`) are bounded while they open; `watch` bounds their
//! silence itself.
//!
//! Must never: retry a call more than once after a redirect (a mutating call
//! must not run twice because leadership moves), or print anything.

use std::error::Error as StdError;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use proto::v1::Actor;
use proto::v1::coordinator_service_client::CoordinatorServiceClient;
use tonic::transport::{Channel, Endpoint};

pub type Client = CoordinatorServiceClient<Channel>;

/// Where `lockstep-coordinator` listens by default.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7400";
/// The gRPC metadata key a follower puts the leader's URL in.
pub const LEADER_METADATA: &str = "lockstep-leader";

/// A deployment was refused, failed, or a plan has problems.
pub const EXIT_FAILED: u8 = 1;
/// EX_UNAVAILABLE from sysexits.h: no coordinator (or leader) answers.
pub const EXIT_UNREACHABLE: u8 = 69;
/// EX_TEMPFAIL from sysexits.h: another deployment holds the service's lock.
pub const EXIT_LOCKED: u8 = 75;
/// EX_NOPERM from sysexits.h.
pub const EXIT_NOT_ALLOWED: u8 = 77;

/// `--timeout` unless given: a healthy coordinator answers in milliseconds,
/// and one that waits on etcd gives up after 3 s and says so.
pub const DEFAULT_TIMEOUT: &str = "5s";
/// A push may take as long as its bytes take at this rate, on top of the
/// timeout: a big bundle on a slow link is not a hung coordinator.
const PUSH_MIN_BYTES_PER_SEC: u64 = 1 << 20;
/// Keep-alives let `watch` notice a vanished coordinator instead of waiting
/// forever on a half-open connection.
/// The largest answer taken: ListAgents is the whole fleet in one message
/// (at most 10,000 agents; 4.9 MB measured at 10,000 simulated hosts),
/// over tonic's default 4 MiB. Paging it is the lasting fix (#15).
const MAX_ANSWER_BYTES: usize = 64 << 20;
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(
        "no coordinator reachable at {urls}: is lockstep-coordinator running? (tried {tried}); pass --coordinator URL or set LOCKSTEP_COORDINATOR"
    )]
    Unreachable { urls: String, tried: String },
    #[error(
        "{url} is not the leader and knows of no leader ({detail}); an election is probably under way: retry in a few seconds, and check that the coordinators reach etcd"
    )]
    NoLeader { url: String, detail: String },
    #[error("{url} is unavailable: {detail}; retry, or check the coordinator's logs")]
    Unavailable { url: String, detail: String },
    /// `watch` lost its stream and could not get it back.
    #[error("{0}")]
    Lost(String),
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The TLS handshake failed: a certificate was refused.
    #[error(
        "{url} refused the TLS connection ({detail}): it accepts only client certificates chained to its tls.ca; check --cert and --tls-key (LOCKSTEP_CERT, LOCKSTEP_TLS_KEY), and --ca for its own certificate"
    )]
    Tls { url: String, detail: String },
    /// The coordinator refused the call; its message says what to do next.
    #[error("{0}")]
    Refused(String),
    /// Another deployment holds the service's lock; the message names it.
    #[error("{0}")]
    Locked(String),
    #[error("{0}")]
    Local(String),
    /// A watched deployment ended other than succeeded. `shown`: its line
    /// is already on stdout, so it is not repeated on stderr.
    #[error("{message}")]
    Outcome {
        code: u8,
        message: String,
        shown: bool,
    },
}

impl Failure {
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code())
    }

    pub fn code(&self) -> u8 {
        match self {
            Self::Unreachable { .. }
            | Self::NoLeader { .. }
            | Self::Unavailable { .. }
            | Self::Lost(_) => EXIT_UNREACHABLE,
            Self::NotAllowed(_) | Self::Tls { .. } => EXIT_NOT_ALLOWED,
            Self::Locked(_) => EXIT_LOCKED,
            Self::Refused(_) | Self::Local(_) => EXIT_FAILED,
            Self::Outcome { code, .. } => *code,
        }
    }

    /// Whether the failure's text is already on stdout (the last line of
    /// `watch`): printing it again on stderr would only repeat it.
    pub fn already_shown(&self) -> bool {
        matches!(self, Self::Outcome { shown: true, .. })
    }

    /// Whether waiting and calling again may help (used by `watch` to ride
    /// out a coordinator restart or a leader change).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. } | Self::NoLeader { .. } | Self::Unavailable { .. }
        )
    }

    /// Maps an RPC error from the coordinator at `url`.
    pub fn from_status(url: &str, status: &tonic::Status) -> Self {
        if let Some(detail) = status.source().and_then(tls::tls_failure) {
            return Self::Tls {
                url: url.to_owned(),
                detail,
            };
        }
        let mut detail = status_detail(status);
        // Under TLS 1.3 a server refuses a client certificate after the
        // client's side of the handshake is done, so the refusal often
        // arrives as a bare closed connection rather than the alert.
        if url.starts_with("https://") && status.source().is_some() {
            detail.push_str(" (");
            detail.push_str(TLS_REFUSAL_HINT);
            detail.push(')');
        }
        match status.code() {
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
                Self::NotAllowed(detail)
            }
            tonic::Code::FailedPrecondition if is_not_leader(status) => Self::NoLeader {
                url: url.to_owned(),
                detail,
            },
            // Transport breaks surface as these codes, and a coordinator at
            // its push limit says ResourceExhausted: the call may be tried
            // again, here or at another coordinator.
            tonic::Code::Unavailable
            | tonic::Code::ResourceExhausted
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded => Self::Unavailable {
                url: url.to_owned(),
                detail,
            },
            _ => Self::Refused(detail),
        }
    }
}

/// The status message plus its transport cause, when tonic has one.
pub fn status_detail(status: &tonic::Status) -> String {
    let mut out = status.message().to_owned();
    if out.is_empty() {
        out = format!("{:?}", status.code());
    }
    if let Some(source) = status.source() {
        let cause = cli::chain(source);
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

/// The leader's URL when `status` is a follower's redirect.
pub fn leader_redirect(status: &tonic::Status) -> Option<String> {
    if status.code() != tonic::Code::FailedPrecondition {
        return None;
    }
    status
        .metadata()
        .get(LEADER_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// A follower's answer when it knows no leader carries no metadata; its
/// message still says so ("this coordinator is not the leader; no leader
/// is elected right now").
fn is_not_leader(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::FailedPrecondition
        && status.message().contains("is not the leader")
}

/// Splits and normalises `--coordinator` values: commas separate URLs
/// (clap splits them too; an env value may hold several), a bare
/// `host:port` means `http://host:port`; `https://` needs `--ca`, `--cert`
/// and `--tls-key` (checked when it is dialled).
pub fn parse_urls(values: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for raw in values.iter().flat_map(|v| v.split(',')) {
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let url = if raw.contains("://") {
            raw.to_owned()
        } else {
            format!("http://{raw}")
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "--coordinator {raw}: not an http URL; use http://HOST:PORT or https://HOST:PORT"
            ));
        }
        url.parse::<tonic::transport::Uri>()
            .map_err(|e| format!("--coordinator {raw}: {e}; use http://HOST:PORT"))?;
        if !out.contains(&url) {
            out.push(url);
        }
    }
    if out.is_empty() {
        out.push(DEFAULT_COORDINATOR.to_owned());
    }
    Ok(out)
}

/// What the operator tells a TLS coordinator about themselves: `--ca`,
/// `--cert`, `--tls-key` (or `LOCKSTEP_CA`, `LOCKSTEP_CERT`, `LOCKSTEP_TLS_KEY`).
#[derive(Debug, Clone, Default)]
pub struct TlsFlags {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Appended to a transport failure on an `https://` coordinator.
const TLS_REFUSAL_HINT: &str = "if the coordinator is up, it may have refused this TLS client certificate: it accepts only certificates chained to its tls.ca; check --cert and --tls-key";

/// Appended to a failure to reach an `https://` coordinator.
const TLS_HINT: &str = "TLS: the coordinator must trust the CA that signed --cert, and its own certificate must chain to --ca and name the host in the URL";

/// `--timeout`: `500ms`, `5s`, `1m`; never zero (a call that may not
/// wait at all cannot succeed).
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    match release::manifest::parse_duration(text)? {
        d if d.is_zero() => Err("the timeout must be more than 0".to_owned()),
        d => Ok(d),
    }
}

/// The deadline of pushing `bytes`: the timeout plus the bytes at
/// [`PUSH_MIN_BYTES_PER_SEC`].
pub fn push_deadline(timeout: Duration, bytes: u64) -> Duration {
    timeout + Duration::from_secs(bytes / PUSH_MIN_BYTES_PER_SEC)
}

async fn connect(
    url: &str,
    tls: Option<&tls::TlsMaterial>,
    timeout: Duration,
) -> Result<Client, String> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| cli::chain(&e))?
        .connect_timeout(timeout)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.client_config())
            .map_err(|e| cli::chain(&e))?;
    }
    // connect_timeout bounds TCP; the TLS handshake is bounded here.
    let connected = tokio::time::timeout(timeout, endpoint.connect())
        .await
        .map_err(|_| format!("no connection within {timeout:?} (--timeout)"))?;
    let channel = connected.map_err(|e| {
        let mut detail = cli::chain(&e);
        if tls.is_some() {
            detail.push_str(" (");
            detail.push_str(TLS_HINT);
            detail.push(')');
        }
        detail
    })?;
    Ok(CoordinatorServiceClient::new(channel).max_decoding_message_size(MAX_ANSWER_BYTES))
}

/// The coordinators to try, and the one that last answered.
#[derive(Debug)]
pub struct Coordinators {
    urls: Vec<String>,
    current: Option<(String, Client)>,
    tls_flags: TlsFlags,
    /// Read from `tls_flags` when an `https://` URL is first dialled.
    tls: Option<tls::TlsMaterial>,
    /// `--timeout`: for connecting, and for each answer.
    timeout: Duration,
}

impl Coordinators {
    pub fn new(urls: Vec<String>, timeout: Duration) -> Self {
        Self {
            urls,
            current: None,
            tls_flags: TlsFlags::default(),
            tls: None,
            timeout,
        }
    }

    /// `--timeout`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Dials `https://` coordinators with the operator's certificate.
    #[must_use]
    pub fn with_tls(mut self, flags: TlsFlags) -> Self {
        self.tls_flags = flags;
        self
    }

    /// The TLS material for dialling `url`: `None` for `http://`; for
    /// `https://` the operator's, or a local failure saying what is missing.
    async fn tls_for(&mut self, url: &str) -> Result<Option<tls::TlsMaterial>, Failure> {
        if !url.starts_with("https://") {
            return Ok(None);
        }
        if let Some(material) = &self.tls {
            return Ok(Some(material.clone()));
        }
        let TlsFlags { ca, cert, key } = self.tls_flags.clone();
        let (Some(ca), Some(cert), Some(key)) = (ca.clone(), cert.clone(), key.clone()) else {
            let missing: Vec<&str> = [("--ca", &ca), ("--cert", &cert), ("--tls-key", &key)]
                .into_iter()
                .filter(|(_, v)| v.is_none())
                .map(|(flag, _)| flag)
                .collect();
            return Err(Failure::Local(format!(
                "{url} is a TLS coordinator: it requires a client certificate, but {} {} not given; pass --ca CA.pem --cert CERT.pem --tls-key KEY.pem (or set LOCKSTEP_CA, LOCKSTEP_CERT and LOCKSTEP_TLS_KEY)",
                missing.join(", "),
                if missing.len() == 1 { "is" } else { "are" },
            )));
        };
        let paths = tls::TlsPaths { ca, cert, key };
        let material = tokio::task::spawn_blocking(move || tls::TlsMaterial::load(&paths))
            .await
            .map_err(|e| Failure::Local(format!("reading the TLS files failed: {e}")))?
            .map_err(|e| Failure::Local(format!("--ca/--cert/--tls-key: {e}")))?;
        self.tls = Some(material.clone());
        Ok(Some(material))
    }

    /// Drops the remembered connection, and tries its URL last from now on:
    /// after a broken stream or a call that got no answer the leader may
    /// have moved, and a hung coordinator must not be asked first again.
    pub fn forget(&mut self) {
        if let Some((url, _)) = self.current.take() {
            if let Some(at) = self.urls.iter().position(|u| *u == url) {
                let url = self.urls.remove(at);
                self.urls.push(url);
            }
        }
    }

    async fn client(&mut self) -> Result<(String, Client), Failure> {
        if let Some(current) = &self.current {
            return Ok(current.clone());
        }
        let mut tried = Vec::new();
        for url in self.urls.clone() {
            let tls = self.tls_for(&url).await?;
            match connect(&url, tls.as_ref(), self.timeout).await {
                Ok(client) => {
                    self.current = Some((url.clone(), client.clone()));
                    return Ok((url.clone(), client));
                }
                Err(detail) => tried.push(format!("{url}: {detail}")),
            }
        }
        Err(Failure::Unreachable {
            urls: self.urls.join(", "),
            tried: tried.join("; "),
        })
    }

    /// Runs one RPC: on the first coordinator that accepts a connection,
    /// then, if it is a follower naming the leader, once more on the leader.
    /// `call` builds a fresh request each time (a streamed upload is
    /// re-read from its start). Each attempt gets `--timeout`.
    pub async fn call<T, F, Fut>(&mut self, call: F) -> Result<T, Failure>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_within(self.timeout, call).await
    }

    /// [`Self::call`] with a deadline of its own for each attempt (a push
    /// takes as long as its bytes do).
    pub async fn call_within<T, F, Fut>(
        &mut self,
        deadline: Duration,
        mut call: F,
    ) -> Result<T, Failure>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let (url, client) = self.client().await?;
        let status = match self.answer(&url, deadline, call(client)).await? {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) => status,
        };
        let Some(leader) = leader_redirect(&status) else {
            return Err(Failure::from_status(&url, &status));
        };
        let tls = self.tls_for(&leader).await?;
        let client = connect(&leader, tls.as_ref(), self.timeout)
            .await
            .map_err(|detail| Failure::Unreachable {
                urls: leader.clone(),
                tried: format!(
                    "{url} named {leader} as the leader, which did not answer: {detail}"
                ),
            })?;
        self.current = Some((leader.clone(), client.clone()));
        match self.answer(&leader, deadline, call(client)).await? {
            Ok(response) => Ok(response.into_inner()),
            Err(status) if leader_redirect(&status).is_some() || is_not_leader(&status) => {
                self.forget();
                Err(Failure::NoLeader {
                    url: leader,
                    detail: format!(
                        "{url} named it the leader, but it says: {}",
                        status.message()
                    ),
                })
            }
            Err(status) => Err(Failure::from_status(&leader, &status)),
        }
    }

    /// `call`'s answer, or `Unavailable` (and `url` tried last from now on)
    /// when there is none within `deadline`.
    async fn answer<T>(
        &mut self,
        url: &str,
        deadline: Duration,
        call: impl Future<Output = Result<T, tonic::Status>>,
    ) -> Result<Result<T, tonic::Status>, Failure> {
        match tokio::time::timeout(deadline, call).await {
            Ok(answer) => Ok(answer),
            Err(_) => {
                self.forget();
                Err(Failure::Unavailable {
                    url: url.to_owned(),
                    detail: format!(
                        "no answer within {deadline:?} (--timeout); the coordinator, or the etcd it waits on, may be hung"
                    ),
                })
            }
        }
    }
}

/// Who is asking: `$USER` (or the name of the uid) on this host's name.
pub fn actor() -> Actor {
    let uid = nix::unistd::getuid();
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .or_else(|| {
            nix::unistd::User::from_uid(uid)
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| format!("uid:{uid}"));
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    Actor { user, host }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn urls_split_normalise_and_dedupe() {
        let urls = parse_urls(&strings(&[
            "http://a:7400, b:7400",
            "http://a:7400",
            " ",
            "c:1,",
        ]))
        .unwrap();
        assert_eq!(urls, ["http://a:7400", "http://b:7400", "http://c:1"]);
    }

    #[test]
    fn urls_default_when_empty() {
        assert_eq!(parse_urls(&[]).unwrap(), [DEFAULT_COORDINATOR]);
        assert_eq!(parse_urls(&strings(&[","])).unwrap(), [DEFAULT_COORDINATOR]);
    }

    #[test]
    fn urls_refuse_other_schemes() {
        assert_eq!(
            parse_urls(&strings(&["https://a:1"])).unwrap(),
            ["https://a:1"]
        );
        assert!(parse_urls(&strings(&["ftp://a:1"])).is_err());
        assert!(parse_urls(&strings(&["http://a b"])).is_err());
    }

    #[test]
    fn redirect_reads_the_leader_metadata() {
        let mut s = tonic::Status::failed_precondition(
            "not the leader; the leader is at http://10.0.0.2:7400",
        );
        s.metadata_mut()
            .insert(LEADER_METADATA, "http://10.0.0.2:7400".parse().unwrap());
        assert_eq!(leader_redirect(&s).as_deref(), Some("http://10.0.0.2:7400"));
    }

    #[test]
    fn no_redirect_without_metadata_or_for_other_codes() {
        // The coordinator's own words, not a paraphrase: a paraphrase here
        // once hid that the CLI matched a message the server never sent.
        let said = coordinator::leader::NotServed::NotLeader { leader: None }.to_string();
        let s = tonic::Status::failed_precondition(said);
        assert_eq!(leader_redirect(&s), None);
        assert!(matches!(
            Failure::from_status("http://a", &s),
            Failure::NoLeader { .. }
        ));
        let mut other = tonic::Status::not_found("no deployment d-1");
        other
            .metadata_mut()
            .insert(LEADER_METADATA, "http://b".parse().unwrap());
        assert_eq!(leader_redirect(&other), None);
        let mut empty = tonic::Status::failed_precondition("not the leader");
        empty
            .metadata_mut()
            .insert(LEADER_METADATA, "".parse().unwrap());
        assert_eq!(leader_redirect(&empty), None);
    }

    #[test]
    fn status_codes_map_to_exit_codes() {
        let code = |s: tonic::Status| Failure::from_status("http://a", &s).code();
        assert_eq!(code(tonic::Status::unavailable("down")), EXIT_UNREACHABLE);
        assert_eq!(
            code(tonic::Status::permission_denied("no")),
            EXIT_NOT_ALLOWED
        );
        assert_eq!(code(tonic::Status::not_found("no such")), EXIT_FAILED);
        assert_eq!(
            code(tonic::Status::failed_precondition("not awaiting approval")),
            EXIT_FAILED
        );
        assert_eq!(
            Failure::Locked(String::new()).exit_code(),
            ExitCode::from(EXIT_LOCKED)
        );
    }

    #[test]
    fn unreachable_message_names_urls_and_next_step() {
        let f = Failure::Unreachable {
            urls: "http://a:1, http://b:2".to_owned(),
            tried: "http://a:1: refused; http://b:2: refused".to_owned(),
        };
        let text = f.to_string();
        assert!(text.starts_with("no coordinator reachable at http://a:1, http://b:2: is lockstep-coordinator running? (tried"));
        assert_eq!(f.code(), 69);
    }

    /// Reproduces what the fault soak saw (#18): while no coordinator led,
    /// `lockstep deploy` exited 1 ("refused"), so a script could not tell
    /// a transient state from a fatal refusal. It is unavailable: 69.
    #[test]
    fn a_follower_that_knows_no_leader_is_unavailable_not_a_refusal() {
        let said = coordinator::leader::NotServed::NotLeader { leader: None }.to_string();
        let status = tonic::Status::failed_precondition(said);
        let f = Failure::from_status("http://a:1", &status);
        assert!(f.is_transient(), "{f}");
        assert_eq!(f.code(), EXIT_UNREACHABLE);
    }

    #[test]
    fn timeouts_parse_and_zero_is_refused() {
        assert_eq!(parse_timeout("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_timeout("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("five").is_err());
    }

    #[test]
    fn a_push_may_take_as_long_as_its_bytes() {
        let t = Duration::from_secs(5);
        assert_eq!(push_deadline(t, 0), t);
        assert_eq!(push_deadline(t, 100 << 20), Duration::from_secs(105));
    }

    #[tokio::test]
    async fn a_forgotten_coordinator_is_tried_last() {
        let mut c = Coordinators::new(
            strings(&["http://a:1", "http://b:2", "http://c:3"]),
            Duration::from_secs(1),
        );
        c.forget();
        assert_eq!(c.urls, ["http://a:1", "http://b:2", "http://c:3"]);
        let channel = Endpoint::from_static("http://a:1").connect_lazy();
        c.current = Some(("http://a:1".to_owned(), Client::new(channel)));
        c.forget();
        assert_eq!(c.urls, ["http://b:2", "http://c:3", "http://a:1"]);
        assert!(c.current.is_none());
    }

    #[test]
    fn actor_has_a_user() {
        assert!(!actor().user.is_empty());
    }
}
