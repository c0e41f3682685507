//! The connection to the coordinators, and what a failure means for the
//! exit code.
//!
//! Owns the URL list (`--coordinator`, `LOCKSTEP_COORDINATOR`), failover in
//! order, the leader redirect (a follower answers `FailedPrecondition` with
//! the leader's URL in the `lockstep-leader` metadata; the call is retried
//! once there), the `Actor` sent with every mutating call, and the mapping
//! from RPC errors to exit codes. Every verb calls the coordinator through
//! [`Coordinators::call`].
//!
//! Must never: retry a call more than once after a redirect (a mutating call
//! must not run twice because leadership moves), or print anything.

use std::error::Error as StdError;
use std::future::Future;
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

/// A dead address must not stall the failover to the next one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Keep-alives let `watch` notice a vanished coordinator instead of waiting
/// forever on a half-open connection.
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
    /// The coordinator refused the call; its message says what to do next.
    #[error("{0}")]
    Refused(String),
    /// Another deployment holds the service's lock; the message names it.
    #[error("{0}")]
    Locked(String),
    #[error("{0}")]
    Local(String),
    /// A watched deployment ended other than succeeded.
    #[error("{message}")]
    Outcome { code: u8, message: String },
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
            Self::NotAllowed(_) => EXIT_NOT_ALLOWED,
            Self::Locked(_) => EXIT_LOCKED,
            Self::Refused(_) | Self::Local(_) => EXIT_FAILED,
            Self::Outcome { code, .. } => *code,
        }
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
        let detail = status_detail(status);
        match status.code() {
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
                Self::NotAllowed(detail)
            }
            tonic::Code::FailedPrecondition if is_not_leader(status) => Self::NoLeader {
                url: url.to_owned(),
                detail,
            },
            // Transport breaks surface as these codes: the call may be tried again.
            tonic::Code::Unavailable
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
        let cause = error_chain(source);
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

/// An error and its sources, joined: tonic's top-level transport error says
/// only "transport error".
fn error_chain(err: &dyn StdError) -> String {
    let mut parts = vec![err.to_string()];
    let mut next = err.source();
    while let Some(e) = next {
        let text = e.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
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
/// message still says so.
fn is_not_leader(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::FailedPrecondition
        && status.message().trim_start().starts_with("not the leader")
}

/// Splits and normalises `--coordinator` values: commas separate URLs
/// (clap splits them too; an env value may hold several), a bare
/// `host:port` means `http://host:port`.
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
        if url.starts_with("https://") {
            return Err(format!(
                "--coordinator {raw}: this lockstep speaks plain http to coordinators; use http://"
            ));
        }
        if !url.starts_with("http://") {
            return Err(format!(
                "--coordinator {raw}: not an http URL; use http://HOST:PORT"
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

async fn connect(url: &str) -> Result<Client, String> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| error_chain(&e))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let channel = endpoint.connect().await.map_err(|e| error_chain(&e))?;
    Ok(CoordinatorServiceClient::new(channel))
}

/// The coordinators to try, and the one that last answered.
#[derive(Debug)]
pub struct Coordinators {
    urls: Vec<String>,
    current: Option<(String, Client)>,
}

impl Coordinators {
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls,
            current: None,
        }
    }

    /// Drops the remembered connection so the next call starts again from
    /// the first URL (after a broken stream the leader may have moved).
    pub fn forget(&mut self) {
        self.current = None;
    }

    async fn client(&mut self) -> Result<(String, Client), Failure> {
        if let Some(current) = &self.current {
            return Ok(current.clone());
        }
        let mut tried = Vec::new();
        for url in &self.urls {
            match connect(url).await {
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
    /// re-read from its start).
    pub async fn call<T, F, Fut>(&mut self, mut call: F) -> Result<T, Failure>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let (url, client) = self.client().await?;
        let status = match call(client).await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) => status,
        };
        let Some(leader) = leader_redirect(&status) else {
            return Err(Failure::from_status(&url, &status));
        };
        let client = connect(&leader)
            .await
            .map_err(|detail| Failure::Unreachable {
                urls: leader.clone(),
                tried: format!(
                    "{url} named {leader} as the leader, which did not answer: {detail}"
                ),
            })?;
        self.current = Some((leader.clone(), client.clone()));
        match call(client).await {
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
        assert!(
            parse_urls(&strings(&["https://a:1"]))
                .unwrap_err()
                .contains("http://")
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
        let s = tonic::Status::failed_precondition("not the leader; no leader is known");
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

    #[test]
    fn actor_has_a_user() {
        assert!(!actor().user.is_empty());
    }
}
