//! Which failed etcd requests are tried again, on which member, and when a
//! request is given up. Pure: no clock, no IO.
//!
//! Every request [`super::Etcd`] offers is safe to repeat after an unknown
//! outcome, so the only question is whether the failure came from the
//! member (or the way to it) or from etcd's answer to the request itself:
//!
//! | request | why repeating it is safe |
//! |---|---|
//! | get, status, lease time-to-live | reads |
//! | txn | every Lockstep transaction is guarded by compares: a repeat of one that landed fails its compare (or writes the same bytes again) |
//! | put, delete | the same value again / already deleted |
//! | lease revoke | a repeat of one that landed answers "not found", which callers treat as done |
//! | lease grant | a repeat of one that landed leaves an unused lease that expires after its TTL |
//! | keep-alive, watch (opening the stream) | a new stream; a watch resumes from the caller's revision |
//!
//! Must never: retry a refusal of the request itself (a bad argument, a
//! permission, a compacted revision): every member would give the same
//! answer.

use std::time::Duration;

use tonic::Code;

/// What a failed attempt says about the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The member did not answer, or cannot serve (no leader, unavailable,
    /// connection lost): try another member.
    TryAnotherMember,
    /// etcd answered and refused the request: every member would say the
    /// same, so the caller gets this answer now.
    Final,
}

/// Whether `err` may be answered differently next time (by this member
/// later, or another): what the coordinator's journal retries.
pub fn may_succeed_later(err: &etcd_client::Error) -> bool {
    classify(err) == Verdict::TryAnotherMember
}

/// Classifies an error of one attempt. etcd says "no leader", "leader
/// changed", "request timed out" and "too many requests" as UNAVAILABLE or
/// RESOURCE_EXHAUSTED; a refused or broken connection comes as a transport
/// or IO error, or as UNAVAILABLE, UNKNOWN or INTERNAL from tonic and h2; a
/// closed request channel of a stream as a watch or keep-alive error. A
/// message over gRPC's size limit (also RESOURCE_EXHAUSTED) is the
/// request's own fault: final.
pub(crate) fn classify(err: &etcd_client::Error) -> Verdict {
    use etcd_client::Error;
    match err {
        Error::GRpcStatus(status) => match status.code() {
            // gRPC's size limit: every member refuses the same bytes.
            Code::ResourceExhausted if status.message().contains("larger than max") => {
                Verdict::Final
            }
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal => Verdict::TryAnotherMember,
            _ => Verdict::Final,
        },
        Error::TransportError(_)
        | Error::IoError(_)
        | Error::WatchError(_)
        | Error::LeaseKeepAliveError(_) => Verdict::TryAnotherMember,
        _ => Verdict::Final,
    }
}

/// Whether another attempt may start: only while the request's deadline
/// is more than `pause` away (the pause the attempt would wait first).
pub(crate) fn may_start(elapsed: Duration, pause: Duration, deadline: Duration) -> bool {
    elapsed.saturating_add(pause) < deadline
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, message: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, message))
    }

    #[test]
    fn member_trouble_is_tried_on_another_member() {
        for err in [
            status(Code::Unavailable, "etcdserver: no leader"),
            status(Code::Unavailable, "etcdserver: leader changed"),
            status(Code::Unavailable, "etcdserver: request timed out"),
            status(Code::Unavailable, "tcp connect error"),
            status(Code::ResourceExhausted, "etcdserver: too many requests"),
            status(Code::DeadlineExceeded, "timeout expired"),
            status(Code::Unknown, "h2 protocol error"),
            status(Code::Internal, "connection reset"),
            status(Code::Cancelled, "stream closed"),
            etcd_client::Error::IoError(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            )),
            etcd_client::Error::WatchError("request channel closed".to_owned()),
            etcd_client::Error::LeaseKeepAliveError("channel closed".to_owned()),
        ] {
            assert_eq!(classify(&err), Verdict::TryAnotherMember, "{err}");
        }
    }

    #[test]
    fn refusals_of_the_request_itself_are_final() {
        for err in [
            status(Code::NotFound, "etcdserver: requested lease not found"),
            status(Code::InvalidArgument, "etcdserver: key is not provided"),
            status(
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            status(Code::FailedPrecondition, "etcdserver: lease ID not found"),
            status(Code::PermissionDenied, "etcdserver: permission denied"),
            status(Code::Unauthenticated, "etcdserver: invalid auth token"),
            etcd_client::Error::InvalidArgs("empty endpoints".to_owned()),
            etcd_client::Error::EndpointError("bad url".to_owned()),
            // Issue #15 deliver 4 (nodesim bench, 10,000 hosts): a 2.4 MB
            // journal transaction refused for its size took the only
            // member out of rotation, and every other call (`lockstep
            // status`) failed until a probe brought it back.
            status(
                Code::ResourceExhausted,
                "grpc: received message larger than max (2490747 vs. 2097152)",
            ),
        ] {
            assert_eq!(classify(&err), Verdict::Final, "{err}");
        }
    }

    #[test]
    fn no_attempt_starts_once_its_pause_would_reach_the_deadline() {
        let deadline = Duration::from_secs(5);
        assert!(may_start(Duration::ZERO, Duration::ZERO, deadline));
        assert!(may_start(
            Duration::from_secs(4),
            Duration::from_millis(500),
            deadline
        ));
        assert!(!may_start(
            Duration::from_secs(4),
            Duration::from_secs(1),
            deadline
        ));
        assert!(!may_start(deadline, Duration::ZERO, deadline));
    }
}
