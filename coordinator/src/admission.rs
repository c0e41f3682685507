//! `Admission`: the gate every `CoordinatorService` call passes first.
//! Reads who is calling from the transport (the certificate's identity, or
//! the plain-text peer address), asks `roles::AccessPolicy` (pure), and on
//! a refusal logs it, records it in the etcd audit log and answers
//! PERMISSION_DENIED naming the identity and the role needed. A granted
//! operator call's actor is the verified name, with what the client
//! claimed recorded beside it.
//!
//! ```text
//! request -> Caller (peer certs | remote addr) -> authorize(caller, method)
//!   Ok(Granted)    -> handler; actor = "granted name (claims: user@host)"
//!   Err(Refusal)   -> warn log + audit record (at most one per second) -> PERMISSION_DENIED
//! ```
//!
//! Must never: let a handler run before its method was authorized, or take
//! the request's `Actor` for who called.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use leases::{AuditLog, AuditRecord, Holder};
use proto::v1 as pb;
use tonic::{Request, Status};

use crate::roles::{AccessPolicy, Caller, Granted, Method};

/// Refusals past this rate are logged but not each written to etcd: a
/// caller hammering the coordinator must not fill the audit log.
const AUDIT_SPACING: Duration = Duration::from_secs(1);

/// The coordinator's gate.
pub struct Admission {
    policy: AccessPolicy,
    tls: bool,
    client: leases::Etcd,
    last_audit: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("policy", &self.policy)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Admission {
    pub fn new(policy: AccessPolicy, tls: bool, client: leases::Etcd) -> Self {
        Self {
            policy,
            tls,
            client,
            last_audit: Mutex::new(None),
        }
    }

    pub fn policy(&self) -> &AccessPolicy {
        &self.policy
    }

    /// Who sent `request`, as the transport saw it.
    pub fn caller<T>(&self, request: &Request<T>) -> Caller {
        if !self.tls {
            return Caller::PlainText {
                from: request.remote_addr(),
            };
        }
        match tls::PeerIdentity::of_request(request) {
            Some(Ok(identity)) => Caller::Certified(identity),
            Some(Err(reason)) => Caller::Uncertified { reason },
            None => Caller::Uncertified {
                reason: "the caller presented no client certificate".to_owned(),
            },
        }
    }

    /// Lets `method` through, or refuses it (logged, audited).
    pub fn admit<T>(&self, request: &Request<T>, method: Method) -> Result<Granted, Status> {
        let caller = self.caller(request);
        self.policy.authorize(&caller, method).map_err(|refusal| {
            let from = request
                .remote_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            tracing::warn!(
                caller = caller.describe(),
                from,
                method = method.name(),
                needed = %refusal.needed(),
                refusal = %refusal,
                "refused a call"
            );
            self.audit(&caller, from, method, refusal.to_string());
            Status::permission_denied(refusal.to_string())
        })
    }

    /// Logs and audits a refusal decided after admission (a Report stream
    /// registering an agent it may not speak for); the answer to send.
    pub fn refuse(
        &self,
        caller: &Caller,
        from: Option<std::net::SocketAddr>,
        method: Method,
        refusal: &dyn std::fmt::Display,
    ) -> Status {
        let from = from.map(|a| a.to_string()).unwrap_or_default();
        tracing::warn!(
            caller = caller.describe(),
            from,
            method = method.name(),
            refusal = %refusal,
            "refused a call"
        );
        self.audit(caller, from, method, refusal.to_string());
        Status::permission_denied(refusal.to_string())
    }

    fn audit(&self, caller: &Caller, from: String, method: Method, reason: String) {
        {
            let mut last = self
                .last_audit
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|at| at.elapsed() < AUDIT_SPACING) {
                return;
            }
            *last = Some(Instant::now());
        }
        let record = AuditRecord::new(
            Holder {
                host: from,
                pid: 0,
                user: caller.describe(),
            },
            "refused-call",
            method.name(),
            &reason,
        );
        let client = self.client.clone();
        tokio::spawn(async move {
            if let Err(err) = AuditLog::append(&client, &record).await {
                tracing::warn!(error = %err, target = record.target, "cannot record a refused call in the audit log");
            }
        });
    }
}

/// The actor a granted operator call is recorded as: the verified name,
/// and what the client claimed beside it.
pub fn verified_actor(granted: &Granted, claimed: Option<&pb::Actor>) -> pb::Actor {
    let claim = claimed
        .map(|a| match (a.user.as_str(), a.host.as_str()) {
            ("", "") => String::new(),
            (user, "") => user.to_owned(),
            ("", host) => format!("@{host}"),
            (user, host) => format!("{user}@{host}"),
        })
        .unwrap_or_default();
    let user = if claim.is_empty() {
        granted.who.clone()
    } else {
        format!("{} (claims: {claim})", granted.who)
    };
    pb::Actor {
        user,
        host: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_actor_is_the_verified_name_with_the_claim_beside_it() {
        let granted = Granted {
            who: "operator.lockstep".to_owned(),
        };
        let claimed = pb::Actor {
            user: "attacker".to_owned(),
            host: "x".to_owned(),
        };
        assert_eq!(
            verified_actor(&granted, Some(&claimed)).user,
            "operator.lockstep (claims: attacker@x)"
        );
        assert_eq!(verified_actor(&granted, None).user, "operator.lockstep");
        assert_eq!(verified_actor(&granted, None).host, "");
    }
}
