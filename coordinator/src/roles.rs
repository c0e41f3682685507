//! Who may call what on the coordinator: `AccessPolicy::authorize` maps a
//! caller (a certificate's identity, or a plain-text peer address) and a
//! gRPC method to a grant or a `Refusal`. Pure: no IO, no clock.
//!
//! ```text
//! role      may call
//! operator  every viewer call, and PushRelease, Deploy, Pause, Resume,
//!           Approve, Abort, Rollback, Restart, BreakLock
//! viewer    GetDeployment, WatchDeployment, History, Plan, ListAgents,
//!           ListLocks, ListReleases, ShowRelease, DiffReleases,
//!           RollbackTarget
//! agent     Report (only as the agent its certificate names), FetchRelease
//! ```
//!
//! With `[tls]` a caller holds the roles of every `[[roles]]` entry one of
//! its certificate's names matches. Without `[tls]` there is no identity:
//! agent and viewer calls are answered (agents are bound to their etcd
//! registration instead, see `service.rs`), operator calls only from
//! loopback unless `insecure_operators = true`.
//!
//! Must never: grant a call on a claim the caller makes about itself (the
//! `Actor` in a request is recorded, never trusted).

use std::fmt;
use std::net::SocketAddr;

use tls::{NamePattern, PeerIdentity};

/// What a certificate identity may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Operator,
    Viewer,
    Agent,
}

impl Role {
    /// The role a config names (`operator`, `viewer`, `agent`).
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "operator" => Some(Role::Operator),
            "viewer" => Some(Role::Viewer),
            "agent" => Some(Role::Agent),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Agent => "agent",
        }
    }

    /// Whether this role may call `method`.
    pub fn grants(self, method: Method) -> bool {
        matches!(
            (self, method.needs()),
            (Role::Operator, Role::Operator | Role::Viewer)
                | (Role::Viewer, Role::Viewer)
                | (Role::Agent, Role::Agent)
        )
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `CoordinatorService` method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Report,
    FetchRelease,
    PushRelease,
    ListReleases,
    ShowRelease,
    DiffReleases,
    Plan,
    Deploy,
    GetDeployment,
    WatchDeployment,
    Pause,
    Resume,
    Approve,
    Abort,
    Rollback,
    RollbackTarget,
    Restart,
    ListAgents,
    ListLocks,
    BreakLock,
    History,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Report => "Report",
            Method::FetchRelease => "FetchRelease",
            Method::PushRelease => "PushRelease",
            Method::ListReleases => "ListReleases",
            Method::ShowRelease => "ShowRelease",
            Method::DiffReleases => "DiffReleases",
            Method::Plan => "Plan",
            Method::Deploy => "Deploy",
            Method::GetDeployment => "GetDeployment",
            Method::WatchDeployment => "WatchDeployment",
            Method::Pause => "Pause",
            Method::Resume => "Resume",
            Method::Approve => "Approve",
            Method::Abort => "Abort",
            Method::Rollback => "Rollback",
            Method::RollbackTarget => "RollbackTarget",
            Method::Restart => "Restart",
            Method::ListAgents => "ListAgents",
            Method::ListLocks => "ListLocks",
            Method::BreakLock => "BreakLock",
            Method::History => "History",
        }
    }

    /// The least role that may call it.
    pub fn needs(self) -> Role {
        match self {
            Method::Report | Method::FetchRelease => Role::Agent,
            Method::PushRelease
            | Method::Deploy
            | Method::Pause
            | Method::Resume
            | Method::Approve
            | Method::Abort
            | Method::Rollback
            | Method::Restart
            | Method::BreakLock => Role::Operator,
            Method::ListReleases
            | Method::ShowRelease
            | Method::DiffReleases
            | Method::Plan
            | Method::GetDeployment
            | Method::WatchDeployment
            | Method::RollbackTarget
            | Method::ListAgents
            | Method::ListLocks
            | Method::History => Role::Viewer,
        }
    }
}

/// One `[[roles]]` entry: these names hold this role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRule {
    pub identities: Vec<NamePattern>,
    pub role: Role,
}

/// `[[roles]]` and `insecure_operators` of coordinator.toml.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessPolicy {
    pub rules: Vec<RoleRule>,
    /// Without `[tls]`: answer operator calls from any address, not only
    /// from loopback.
    pub insecure_operators: bool,
}

/// Who is calling, as the transport saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Over mTLS, with the names of its certificate.
    Certified(PeerIdentity),
    /// Over TLS, but no certificate could be read.
    Uncertified { reason: String },
    /// Plain text, from this peer address (`None`: unknown).
    PlainText { from: Option<SocketAddr> },
}

impl Caller {
    /// How logs and audit records name the caller.
    pub fn describe(&self) -> String {
        match self {
            Caller::Certified(identity) => identity.to_string(),
            Caller::Uncertified { .. } => "a caller without a readable certificate".to_owned(),
            Caller::PlainText { from: Some(from) } => format!("plain-text caller {from}"),
            Caller::PlainText { from: None } => "plain-text caller (address unknown)".to_owned(),
        }
    }
}

/// A call let through, and the name it rests on: the certificate name
/// holding the role, or the plain-text peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub who: String,
}

/// Why a call is refused; answered as PERMISSION_DENIED.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "`{identity}` may not call {method}: that needs the {needed} role, and {}; map one of its names to {needed} with a [[roles]] entry in coordinator.toml",
        held_roles(held)
    )]
    MissingRole {
        identity: String,
        method: &'static str,
        needed: Role,
        held: Vec<Role>,
    },
    #[error(
        "{method} is an operator call and this coordinator runs without [tls]: it takes operator calls only from loopback, and this one came from {from}; configure [tls] and [[roles]], or set insecure_operators = true in coordinator.toml to trust every plain-text caller"
    )]
    NotLoopback { method: &'static str, from: String },
    #[error(
        "{method} needs the {needed} role, from a client certificate this coordinator can read: {reason}"
    )]
    Uncertified {
        method: &'static str,
        needed: Role,
        reason: String,
    },
}

fn held_roles(held: &[Role]) -> String {
    if held.is_empty() {
        return "none of its certificate's names matches a [[roles]] entry".to_owned();
    }
    let names: Vec<&str> = held.iter().map(|r| r.as_str()).collect();
    format!("it holds only {}", names.join(", "))
}

impl Refusal {
    /// The role the refused call needed.
    pub fn needed(&self) -> Role {
        match self {
            Refusal::MissingRole { needed, .. } => *needed,
            Refusal::NotLoopback { .. } => Role::Operator,
            Refusal::Uncertified { needed, .. } => *needed,
        }
    }
}

impl AccessPolicy {
    /// Lets `method` through for `caller`, or says why not.
    pub fn authorize(&self, caller: &Caller, method: Method) -> Result<Granted, Refusal> {
        match caller {
            Caller::Certified(identity) => self.authorize_certified(identity, method),
            Caller::Uncertified { reason } => Err(Refusal::Uncertified {
                method: method.name(),
                needed: method.needs(),
                reason: reason.clone(),
            }),
            Caller::PlainText { from } => {
                let loopback = from.is_some_and(|a| a.ip().to_canonical().is_loopback());
                if method.needs() == Role::Operator && !loopback && !self.insecure_operators {
                    return Err(Refusal::NotLoopback {
                        method: method.name(),
                        from: from
                            .map_or_else(|| "an unknown address".to_owned(), |a| a.to_string()),
                    });
                }
                Ok(Granted {
                    who: caller.describe(),
                })
            }
        }
    }

    fn authorize_certified(
        &self,
        identity: &PeerIdentity,
        method: Method,
    ) -> Result<Granted, Refusal> {
        let mut held = Vec::new();
        for name in identity.names() {
            for rule in &self.rules {
                if !rule.identities.iter().any(|p| p.matches(name)) {
                    continue;
                }
                if rule.role.grants(method) {
                    return Ok(Granted { who: name.clone() });
                }
                if !held.contains(&rule.role) {
                    held.push(rule.role);
                }
            }
        }
        held.sort();
        Err(Refusal::MissingRole {
            identity: identity.to_string(),
            method: method.name(),
            needed: method.needs(),
            held,
        })
    }

    /// Whether `identity`'s certificate names the agent `agent_id`: one of
    /// its names holding the agent role is `agent_id` itself, or
    /// `agent_id.<domain>` (`web-1.agents.example` names `web-1`).
    pub fn names_agent(&self, identity: &PeerIdentity, agent_id: &str) -> bool {
        let agent_rules: Vec<&RoleRule> = self
            .rules
            .iter()
            .filter(|r| r.role == Role::Agent)
            .collect();
        identity.names().iter().any(|name| {
            let holds_agent = agent_rules
                .iter()
                .any(|r| r.identities.iter().any(|p| p.matches(name)));
            let first_label = name.split('.').next().unwrap_or_default();
            holds_agent
                && (name.eq_ignore_ascii_case(agent_id)
                    || first_label.eq_ignore_ascii_case(agent_id))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(patterns: &[&str], role: Role) -> RoleRule {
        RoleRule {
            identities: patterns
                .iter()
                .map(|p| NamePattern::parse(p).unwrap())
                .collect(),
            role,
        }
    }

    fn policy() -> AccessPolicy {
        AccessPolicy {
            rules: vec![
                rule(&["ops-*", "alice"], Role::Operator),
                rule(&["dashboard"], Role::Viewer),
                rule(&["*.agents.lockstep"], Role::Agent),
            ],
            insecure_operators: false,
        }
    }

    fn certified(names: &[&str]) -> Caller {
        Caller::Certified(PeerIdentity::from_names(
            names.iter().map(|n| (*n).to_owned()),
        ))
    }

    const ALL: [Method; 21] = [
        Method::Report,
        Method::FetchRelease,
        Method::PushRelease,
        Method::ListReleases,
        Method::ShowRelease,
        Method::DiffReleases,
        Method::Plan,
        Method::Deploy,
        Method::GetDeployment,
        Method::WatchDeployment,
        Method::Pause,
        Method::Resume,
        Method::Approve,
        Method::Abort,
        Method::Rollback,
        Method::RollbackTarget,
        Method::Restart,
        Method::ListAgents,
        Method::ListLocks,
        Method::BreakLock,
        Method::History,
    ];

    fn allowed(caller: &Caller) -> Vec<&'static str> {
        ALL.iter()
            .filter(|m| policy().authorize(caller, **m).is_ok())
            .map(|m| m.name())
            .collect()
    }

    #[test]
    fn operators_change_and_read_but_never_report() {
        let allowed = allowed(&certified(&["ops-7"]));
        assert_eq!(allowed.len(), 19, "{allowed:?}");
        assert!(!allowed.contains(&"Report") && !allowed.contains(&"FetchRelease"));
        assert_eq!(
            policy()
                .authorize(&certified(&["localhost", "alice"]), Method::BreakLock)
                .unwrap()
                .who,
            "alice"
        );
    }

    #[test]
    fn viewers_only_read() {
        assert_eq!(
            allowed(&certified(&["dashboard"])),
            [
                "ListReleases",
                "ShowRelease",
                "DiffReleases",
                "Plan",
                "GetDeployment",
                "WatchDeployment",
                "RollbackTarget",
                "ListAgents",
                "ListLocks",
                "History"
            ]
        );
    }

    #[test]
    fn agents_only_report_and_fetch() {
        assert_eq!(
            allowed(&certified(&["web-1.agents.lockstep"])),
            ["Report", "FetchRelease"]
        );
    }

    #[test]
    fn a_refusal_names_the_identity_and_the_role_needed() {
        let refusal = policy()
            .authorize(&certified(&["web-1.agents.lockstep"]), Method::Deploy)
            .unwrap_err();
        assert_eq!(refusal.needed(), Role::Operator);
        let text = refusal.to_string();
        assert!(
            text.contains("`web-1.agents.lockstep` may not call Deploy"),
            "{text}"
        );
        assert!(
            text.contains("needs the operator role, and it holds only agent"),
            "{text}"
        );
        let stranger = policy()
            .authorize(&certified(&["mallory"]), Method::ListAgents)
            .unwrap_err()
            .to_string();
        assert!(stranger.contains("matches a [[roles]] entry"), "{stranger}");
    }

    #[test]
    fn plain_text_operator_calls_need_loopback_or_insecure_operators() {
        let local = Caller::PlainText {
            from: Some("127.0.0.1:5000".parse().unwrap()),
        };
        let mapped = Caller::PlainText {
            from: Some("[::ffff:127.0.0.1]:5000".parse().unwrap()),
        };
        let remote = Caller::PlainText {
            from: Some("10.0.0.9:5000".parse().unwrap()),
        };
        assert!(policy().authorize(&local, Method::Deploy).is_ok());
        assert!(policy().authorize(&mapped, Method::Deploy).is_ok());
        let refusal = policy().authorize(&remote, Method::Deploy).unwrap_err();
        assert!(refusal.to_string().contains("10.0.0.9:5000"), "{refusal}");
        assert!(
            refusal.to_string().contains("insecure_operators"),
            "{refusal}"
        );
        assert!(policy().authorize(&remote, Method::ListAgents).is_ok());
        assert!(policy().authorize(&remote, Method::Report).is_ok());
        let unknown = Caller::PlainText { from: None };
        assert!(policy().authorize(&unknown, Method::Abort).is_err());
        let insecure = AccessPolicy {
            insecure_operators: true,
            ..policy()
        };
        assert!(insecure.authorize(&remote, Method::Deploy).is_ok());
    }

    #[test]
    fn an_unreadable_certificate_gets_nothing() {
        let caller = Caller::Uncertified {
            reason: "no certificate".to_owned(),
        };
        assert!(ALL.iter().all(|m| policy().authorize(&caller, *m).is_err()));
    }

    #[test]
    fn a_certificate_names_only_its_own_agent() {
        let ag1 =
            PeerIdentity::from_names(["ag1.agents.lockstep".to_owned(), "localhost".to_owned()]);
        assert!(policy().names_agent(&ag1, "ag1"));
        assert!(policy().names_agent(&ag1, "ag1.agents.lockstep"));
        assert!(!policy().names_agent(&ag1, "ag2"));
        // `localhost` holds no agent role: it names no agent.
        assert!(!policy().names_agent(&ag1, "localhost"));
        let operator = PeerIdentity::from_names(["ops-1".to_owned()]);
        assert!(!policy().names_agent(&operator, "ops-1"));
    }
}
