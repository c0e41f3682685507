//! Operator actions from the web view: pause, resume, approve and abort,
//! each with a reason, for a caller the CLI's policy lets operate.
//!
//! ```text
//! POST /api/deployments/ID/VERB  {"reason": "...", "cluster": "..."}
//!   X-Lockstep-Action: VERB      (a cross-site form cannot send it; a
//!                                 cross-origin script needs a CORS
//!                                 preflight this server never grants)
//!   -> permit(tls, policy, peer, action)  (pure)
//!   -> Coordinator::command (on the leader), said = "<who> (web view): <reason>"
//! ```
//!
//! Must never: act under `[tls]` (the web view checks no client
//! certificate, so it cannot tell an operator from anyone on the host),
//! act for a caller `roles::AccessPolicy` refuses the same method, act on
//! a request without the action header, or act for a page whose `Host` is
//! a DNS name or whose `Origin` is another (a rebound name would make
//! another site's script same-origin).

use std::net::SocketAddr;

use serde::Deserialize;

use crate::roles::{AccessPolicy, Caller, Granted, Method, Refusal};

/// The header a page's action request carries, naming the verb.
pub const ACTION_HEADER: &str = "x-lockstep-action";
/// A reason longer than this is refused: it goes into the journal.
pub const MAX_REASON_BYTES: usize = 1024;
/// An action request's body, at most.
pub const MAX_BODY_BYTES: usize = 4096;

/// What the page may ask the deployment to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Approve,
    Abort,
}

impl Action {
    pub fn parse(verb: &str) -> Option<Self> {
        match verb {
            "pause" => Some(Self::Pause),
            "resume" => Some(Self::Resume),
            "approve" => Some(Self::Approve),
            "abort" => Some(Self::Abort),
            _ => None,
        }
    }

    pub fn verb(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Approve => "approve",
            Self::Abort => "abort",
        }
    }

    /// The CLI's method for the same action: the same role decides.
    pub fn method(self) -> Method {
        match self {
            Self::Pause => Method::Pause,
            Self::Resume => Method::Resume,
            Self::Approve => Method::Approve,
            Self::Abort => Method::Abort,
        }
    }

    pub fn command(self) -> rollout::Command {
        match self {
            Self::Pause => rollout::Command::Pause,
            Self::Resume => rollout::Command::Resume,
            Self::Approve => rollout::Command::Approve,
            Self::Abort => rollout::Command::Abort,
        }
    }
}

/// The body of an action request.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    pub reason: String,
    /// Approve only: the cluster approved (empty: the next one waiting).
    #[serde(default)]
    pub cluster: String,
}

/// Why an action was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActionRefused {
    #[error(
        "this coordinator runs with [tls] and the web view checks no client certificate: act with the `lockstep` CLI"
    )]
    Tls,
    #[error("{0}")]
    Role(#[source] Refusal),
    #[error(
        "an action needs the header `X-Lockstep-Action: {0}` (the page sends it; another site's page cannot)"
    )]
    Header(&'static str),
    #[error("the body must be JSON {{\"reason\": \"...\"}} of at most {MAX_BODY_BYTES} bytes: {0}")]
    Body(String),
    #[error(
        "actions are taken only from a page opened by IP address or localhost, and from that page itself (Host {host:?}, Origin {origin:?})"
    )]
    Site { host: String, origin: String },
    #[error("a reason is required: it is recorded with the action, as the CLI's --reason")]
    NoReason,
    #[error("the reason is longer than {MAX_REASON_BYTES} bytes")]
    LongReason,
}

/// Whether the page's caller, at `peer`, may take `action`: never under
/// TLS; otherwise exactly when the CLI's policy would let the same peer
/// call the same method (loopback, or `insecure_operators`).
pub fn permit(
    tls: bool,
    policy: &AccessPolicy,
    peer: SocketAddr,
    action: Action,
) -> Result<Granted, ActionRefused> {
    if tls {
        return Err(ActionRefused::Tls);
    }
    policy
        .authorize(&Caller::PlainText { from: Some(peer) }, action.method())
        .map_err(ActionRefused::Role)
}

/// Whether a request's `Host` and `Origin` are this page's: `Host` an IP
/// literal or `localhost` (with a port or not), and `Origin`, when the
/// browser sends one, `http://` + that `Host`.
pub fn same_site(host: Option<&str>, origin: Option<&str>) -> Result<(), ActionRefused> {
    let refused = || ActionRefused::Site {
        host: host.unwrap_or_default().chars().take(80).collect(),
        origin: origin.unwrap_or_default().chars().take(80).collect(),
    };
    let host = host.ok_or_else(refused)?;
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map(|(ip, _)| ip).ok_or_else(refused)?,
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let literal = name == "localhost" || name.parse::<std::net::IpAddr>().is_ok();
    let origin_ok = origin.is_none_or(|o| o == format!("http://{host}"));
    if literal && origin_ok {
        Ok(())
    } else {
        Err(refused())
    }
}

/// The request's header and body, checked: the header names the verb and
/// the body carries a reason within bounds.
pub fn checked_body(
    action: Action,
    header: Option<&[u8]>,
    body: &[u8],
) -> Result<ActionBody, ActionRefused> {
    if header != Some(action.verb().as_bytes()) {
        return Err(ActionRefused::Header(action.verb()));
    }
    if body.len() > MAX_BODY_BYTES {
        return Err(ActionRefused::Body(format!("{} bytes", body.len())));
    }
    let body: ActionBody =
        serde_json::from_slice(body).map_err(|e| ActionRefused::Body(e.to_string()))?;
    if body.reason.trim().is_empty() {
        return Err(ActionRefused::NoReason);
    }
    if body.reason.len() > MAX_REASON_BYTES {
        return Err(ActionRefused::LongReason);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(insecure_operators: bool) -> AccessPolicy {
        AccessPolicy {
            insecure_operators,
            ..AccessPolicy::default()
        }
    }

    #[test]
    fn only_a_caller_the_cli_policy_lets_operate_may_act_and_never_under_tls() {
        let local: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let remote: SocketAddr = "10.0.0.9:50000".parse().unwrap();
        for action in [
            Action::Pause,
            Action::Resume,
            Action::Approve,
            Action::Abort,
        ] {
            assert!(permit(false, &policy(false), local, action).is_ok());
            assert!(matches!(
                permit(false, &policy(false), remote, action),
                Err(ActionRefused::Role(Refusal::NotLoopback { .. }))
            ));
            assert!(permit(false, &policy(true), remote, action).is_ok());
            assert_eq!(
                permit(true, &policy(true), local, action),
                Err(ActionRefused::Tls)
            );
        }
        let granted = permit(false, &policy(false), local, Action::Pause).unwrap();
        assert_eq!(granted.who, "plain-text caller 127.0.0.1:50000");
    }

    #[test]
    fn an_action_needs_its_header_and_a_bounded_reason() {
        let body = br#"{"reason": "canary looks slow"}"#;
        assert_eq!(
            checked_body(Action::Pause, Some(b"pause"), body)
                .unwrap()
                .reason,
            "canary looks slow"
        );
        assert_eq!(
            checked_body(Action::Pause, None, body),
            Err(ActionRefused::Header("pause"))
        );
        assert_eq!(
            checked_body(Action::Abort, Some(b"pause"), body),
            Err(ActionRefused::Header("abort"))
        );
        assert_eq!(
            checked_body(Action::Pause, Some(b"pause"), br#"{"reason": "  "}"#),
            Err(ActionRefused::NoReason)
        );
        let long = format!("{{\"reason\": \"{}\"}}", "x".repeat(MAX_REASON_BYTES + 1));
        assert_eq!(
            checked_body(Action::Pause, Some(b"pause"), long.as_bytes()),
            Err(ActionRefused::LongReason)
        );
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        assert!(matches!(
            checked_body(Action::Pause, Some(b"pause"), &huge),
            Err(ActionRefused::Body(_))
        ));
        assert!(matches!(
            checked_body(Action::Pause, Some(b"pause"), br#"{"reason": "x", "force": true}"#),
            Err(ActionRefused::Body(m)) if m.contains("unknown field `force`")
        ));
        assert_eq!(Action::parse("approve"), Some(Action::Approve));
    }

    #[test]
    fn an_action_comes_from_a_page_opened_by_address_and_from_that_page() {
        for (host, origin) in [
            ("127.0.0.1:9410", Some("http://127.0.0.1:9410")),
            ("localhost:9410", Some("http://localhost:9410")),
            ("[::1]:9410", None),
            ("10.0.0.5:9410", None),
        ] {
            assert_eq!(same_site(Some(host), origin), Ok(()), "{host} {origin:?}");
        }
        for (host, origin) in [
            (Some("evil.example:9410"), Some("http://evil.example:9410")),
            (Some("127.0.0.1:9410"), Some("http://evil.example")),
            (Some("127.0.0.1:9410"), Some("null")),
            (None, None),
            (Some("[::1"), None),
        ] {
            assert!(
                matches!(same_site(host, origin), Err(ActionRefused::Site { .. })),
                "{host:?} {origin:?}"
            );
        }
        assert_eq!(Action::parse("rollback"), None);
    }
}
