//! One virtual host's service as a state machine: which coordinator
//! commands it takes — by the real agent's own rules (`agent::admission`:
//! the high-water mark, `command_seq` overtaking, the deployment lock's
//! vouch, supersede / roll-forward / busy) — what a switch does to its
//! instances, and the `ServiceStatus` the coordinator reads.
//!
//! ```text
//! command -> precheck (mark, overtaken) -> [host reads the lock in etcd]
//!         -> take: vouch, admit -> Switch{ticket} | Joined | Done | Refusal
//! Switch{ticket} -> [host waits start + ready delays] -> ready(ticket)
//!                                                    | fail(ticket, why)
//! a ticket that was superseded meanwhile changes nothing
//! ```
//!
//! Must never: read a clock, sleep, or do IO (the host passes the time
//! and the lock reading in); admit a token below the mark.

use agent::admission::{self, Admission, Claim, LockReading, Taken, Vouch};
use ids::ReleaseDigest;
use proto::v1 as pb;

/// Releases remembered as `previous`: enough for a rollback's default.
const PREVIOUS_KEPT: usize = 5;

/// What a coordinator asks of the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    Apply {
        target: ReleaseDigest,
        deployment: String,
    },
    /// AgentService.Rollback: back to the release before the current one.
    Rollback {
        deployment: String,
    },
    Uninstall {
        deployment: String,
    },
    Restart,
    /// Only raises the mark (the release is not fetched: no app runs here).
    Stage,
}

/// A command's fencing token and its number within the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub token: u64,
    pub seq: u64,
}

/// Why a command was refused; each maps to the real agent's refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "fencing token {offered} is older than {high_water}, one already accepted for `{service}`"
    )]
    Stale {
        service: String,
        offered: u64,
        high_water: u64,
    },
    #[error(
        "command {seq} of fencing token {token} was overtaken by command {taken} of the same token"
    )]
    Overtaken { token: u64, seq: u64, taken: u64 },
    #[error("fencing token {offered} is not the deployment lock's ({held})")]
    NotTheLock { offered: u64, held: String },
    #[error("cannot check fencing token {offered} against etcd now; nothing changed, try again")]
    Unverified { offered: u64 },
    #[error("another switch of `{service}` is in progress (fencing token {in_flight})")]
    Busy { service: String, in_flight: u64 },
    #[error("`{service}` has no release to roll back to")]
    NoPrevious { service: String },
}

impl Refusal {
    /// The wire reason, as the real agent answers it.
    pub fn reason(&self) -> pb::RefusalReason {
        match self {
            Self::Stale { .. } | Self::Overtaken { .. } | Self::NotTheLock { .. } => {
                pb::RefusalReason::StaleFencingToken
            }
            Self::Unverified { .. } => pb::RefusalReason::FencingUnverified,
            Self::Busy { .. } => pb::RefusalReason::Busy,
            Self::NoPrevious { .. } => pb::RefusalReason::NoPreviousRelease,
        }
    }
}

/// A taken command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// A switch began: the host waits its delays, then calls `ready` or
    /// `fail` with this ticket.
    Switch { ticket: u64, target: ReleaseDigest },
    /// The switch in flight already goes to this target: it ends as this
    /// command's (roll-forward).
    Joined,
    /// Done at once (uninstall, stage, restart, an apply of what runs).
    Done,
}

#[derive(Debug, Clone)]
struct Switch {
    ticket: u64,
    target: ReleaseDigest,
    target_text: String,
    token: u64,
    deployment: String,
}

/// One service on one virtual host.
#[derive(Debug, Clone)]
pub struct ServiceModel {
    agent: String,
    service: String,
    slots: u32,
    current: Option<ReleaseDigest>,
    previous: Vec<ReleaseDigest>,
    high_water: u64,
    last_taken: Option<Taken>,
    in_flight: Option<Switch>,
    instances: Vec<pb::InstanceStatus>,
    last_switch: Option<pb::SwitchRecord>,
    next_ticket: u64,
}

impl ServiceModel {
    /// A service with nothing installed, `slots` instances per release.
    pub fn new(agent: &str, service: &str, slots: u32) -> Self {
        Self {
            agent: agent.to_owned(),
            service: service.to_owned(),
            slots,
            current: None,
            previous: Vec::new(),
            high_water: 0,
            last_taken: None,
            in_flight: None,
            instances: Vec::new(),
            last_switch: None,
            next_ticket: 1,
        }
    }

    /// The checks that need no etcd read: a command failing them is
    /// refused before the lock is read (as the agent does).
    pub fn precheck(&self, fence: Fence) -> Result<(), Refusal> {
        if fence.token < self.high_water {
            return Err(Refusal::Stale {
                service: self.service.clone(),
                offered: fence.token,
                high_water: self.high_water,
            });
        }
        if admission::overtaken(self.last_taken, Some(fence.token), fence.seq) {
            return Err(Refusal::Overtaken {
                token: fence.token,
                seq: fence.seq,
                taken: self.last_taken.map_or(0, |t| t.seq),
            });
        }
        Ok(())
    }

    /// Takes `order` or refuses it; `lock` is the deployment lock as etcd
    /// showed it after the precheck.
    pub fn take(
        &mut self,
        order: Order,
        fence: Fence,
        lock: LockReading,
        now_ms: i64,
    ) -> Result<Accepted, Refusal> {
        self.precheck(fence)?;
        match admission::vouch(self.high_water, fence.token, lock) {
            Vouch::Vouched => {}
            Vouch::Stale { high_water } => {
                return Err(Refusal::Stale {
                    service: self.service.clone(),
                    offered: fence.token,
                    high_water,
                });
            }
            Vouch::NotTheLock { held } => {
                return Err(Refusal::NotTheLock {
                    offered: fence.token,
                    held: held.map_or("nobody holds it".to_owned(), |h| format!("token {h}")),
                });
            }
            Vouch::Unverified => {
                return Err(Refusal::Unverified {
                    offered: fence.token,
                });
            }
        }
        let order = match order {
            Order::Rollback { deployment } => match self.previous.first() {
                Some(target) => Order::Apply {
                    target: *target,
                    deployment,
                },
                None => {
                    return Err(Refusal::NoPrevious {
                        service: self.service.clone(),
                    });
                }
            },
            Order::Stage => {
                self.high_water = self.high_water.max(fence.token);
                return Ok(Accepted::Done);
            }
            other => other,
        };
        let target_text = match &order {
            Order::Apply { target, .. } => Some(target.to_string()),
            _ => None,
        };
        let in_flight = self.in_flight.as_ref().map(|s| Claim {
            token: Some(s.token),
            target: Some(s.target_text.as_str()),
        });
        let arriving = Claim {
            token: Some(fence.token),
            target: target_text.as_deref(),
        };
        match admission::admit(self.high_water, in_flight, arriving) {
            Admission::Take => {}
            Admission::Busy => {
                return Err(Refusal::Busy {
                    service: self.service.clone(),
                    in_flight: self.in_flight.as_ref().map_or(0, |s| s.token),
                });
            }
            Admission::Stale { high_water } => {
                return Err(Refusal::Stale {
                    service: self.service.clone(),
                    offered: fence.token,
                    high_water,
                });
            }
            Admission::Supersede { superseded } => {
                let detail = format!("superseded by a command with fencing token {}", fence.token);
                self.end_in_flight(false, detail, now_ms);
                tracing::debug!(
                    agent = self.agent,
                    superseded,
                    token = fence.token,
                    "switch superseded"
                );
            }
            Admission::RollForward { .. } => {
                self.mark_taken(fence);
                if let (Some(s), Order::Apply { deployment, .. }) = (&mut self.in_flight, order) {
                    s.token = fence.token;
                    s.deployment = deployment;
                }
                return Ok(Accepted::Joined);
            }
        }
        self.mark_taken(fence);
        Ok(self.run(order, fence.token, now_ms))
    }

    fn mark_taken(&mut self, fence: Fence) {
        self.high_water = self.high_water.max(fence.token);
        let seq = match self.last_taken {
            Some(last) if last.token == fence.token => last.seq.max(fence.seq),
            _ => fence.seq,
        };
        self.last_taken = Some(Taken {
            token: fence.token,
            seq,
        });
    }

    /// Carries out a taken order (nothing in flight now).
    fn run(&mut self, order: Order, token: u64, now_ms: i64) -> Accepted {
        match order {
            Order::Apply { target, deployment } => {
                if self.runs_ready(&target) {
                    self.last_switch = Some(record(&deployment, token, &target, true, "", now_ms));
                    return Accepted::Done;
                }
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                for slot in 0..self.slots {
                    let instance =
                        self.instance(slot, &target, pb::InstanceState::Starting, now_ms);
                    self.instances.push(instance);
                }
                self.in_flight = Some(Switch {
                    ticket,
                    target,
                    target_text: target.to_string(),
                    token,
                    deployment,
                });
                Accepted::Switch { ticket, target }
            }
            Order::Uninstall { deployment } => {
                if let Some(old) = self.current.take() {
                    self.remember(old);
                }
                self.instances.clear();
                self.last_switch = Some(pb::SwitchRecord {
                    deployment_id: deployment,
                    fencing_token: token,
                    to_digest: String::new(),
                    succeeded: true,
                    detail: String::new(),
                    at_unix_ms: now_ms,
                });
                Accepted::Done
            }
            Order::Restart => {
                for instance in &mut self.instances {
                    instance.restarts += 1;
                    instance.started_unix_ms = now_ms;
                }
                Accepted::Done
            }
            // Turned into an Apply, or handled, before admission.
            Order::Rollback { .. } | Order::Stage => Accepted::Done,
        }
    }

    fn runs_ready(&self, target: &ReleaseDigest) -> bool {
        self.current.as_ref() == Some(target)
            && !self.instances.is_empty()
            && self.instances.iter().all(|i| i.ready)
    }

    /// The switch `ticket` became ready: the target is current and its
    /// instances are the only ones. False when it was superseded.
    pub fn ready(&mut self, ticket: u64, now_ms: i64) -> bool {
        let Some(switch) = self.take_switch(ticket) else {
            return false;
        };
        if let Some(old) = self.current.replace(switch.target) {
            if old != switch.target {
                self.remember(old);
            }
        }
        self.instances = (0..self.slots)
            .map(|slot| {
                let mut i = self.instance(slot, &switch.target, pb::InstanceState::Ready, now_ms);
                i.ready = true;
                i
            })
            .collect();
        self.last_switch = Some(record(
            &switch.deployment,
            switch.token,
            &switch.target,
            true,
            "",
            now_ms,
        ));
        true
    }

    /// The switch `ticket` failed: its instances are gone, the old ones
    /// kept serving. False when it was superseded.
    pub fn fail(&mut self, ticket: u64, detail: &str, now_ms: i64) -> bool {
        if self.in_flight.as_ref().is_none_or(|s| s.ticket != ticket) {
            return false;
        }
        self.end_in_flight(false, detail.to_owned(), now_ms);
        true
    }

    fn take_switch(&mut self, ticket: u64) -> Option<Switch> {
        if self.in_flight.as_ref().is_some_and(|s| s.ticket == ticket) {
            self.in_flight.take()
        } else {
            None
        }
    }

    fn end_in_flight(&mut self, succeeded: bool, detail: String, now_ms: i64) {
        let Some(switch) = self.in_flight.take() else {
            return;
        };
        let current = self.current;
        self.instances.retain(|i| {
            i.state() != pb::InstanceState::Starting
                || release_of(i).is_some_and(|r| Some(r) == current.map(|c| c.to_string()))
        });
        self.last_switch = Some(record(
            &switch.deployment,
            switch.token,
            &switch.target,
            succeeded,
            &detail,
            now_ms,
        ));
    }

    /// The instances of `release` crash after being ready (the app died):
    /// false when the service no longer runs it.
    pub fn crash(&mut self, release: &ReleaseDigest, now_ms: i64) -> bool {
        if self.current.as_ref() != Some(release) || self.in_flight.is_some() {
            return false;
        }
        for instance in &mut self.instances {
            instance.state = pb::InstanceState::CrashLooping.into();
            instance.ready = false;
            instance.restarts += 1;
            instance.started_unix_ms = now_ms;
            instance.detail = "nodesim: crashed after ready".to_owned();
        }
        true
    }

    fn remember(&mut self, release: ReleaseDigest) {
        self.previous.retain(|p| *p != release);
        self.previous.insert(0, release);
        self.previous.truncate(PREVIOUS_KEPT);
    }

    fn instance(
        &self,
        slot: u32,
        release: &ReleaseDigest,
        state: pb::InstanceState,
        now_ms: i64,
    ) -> pb::InstanceStatus {
        pb::InstanceStatus {
            instance: Some(pb::InstanceRef {
                agent_id: self.agent.clone(),
                service: self.service.clone(),
                slot,
            }),
            release: Some(self.reference(release)),
            state: state.into(),
            ready: false,
            pid: 0,
            restarts: 0,
            started_unix_ms: now_ms,
            detail: String::new(),
        }
    }

    fn reference(&self, release: &ReleaseDigest) -> pb::ReleaseRef {
        pb::ReleaseRef {
            service: self.service.clone(),
            digest: release.to_string(),
            version: String::new(),
        }
    }

    pub fn current(&self) -> Option<ReleaseDigest> {
        self.current
    }

    pub fn high_water(&self) -> u64 {
        self.high_water
    }

    /// The service as `AgentService.Status` answers it.
    pub fn status(&self) -> pb::ServiceStatus {
        pb::ServiceStatus {
            service: self.service.clone(),
            current: self.current.as_ref().map(|r| self.reference(r)),
            previous: self.previous.iter().map(|r| self.reference(r)).collect(),
            instances: self.instances.clone(),
            switch_state: if self.in_flight.is_some() {
                pb::SwitchState::Switching
            } else {
                pb::SwitchState::Idle
            }
            .into(),
            fencing_high_water: self.high_water,
            last_error: self
                .last_switch
                .as_ref()
                .filter(|s| !s.succeeded)
                .map(|s| s.detail.clone())
                .unwrap_or_default(),
            last_switch: self.last_switch.clone(),
        }
    }
}

fn release_of(instance: &pb::InstanceStatus) -> Option<String> {
    instance.release.as_ref().map(|r| r.digest.clone())
}

fn record(
    deployment: &str,
    token: u64,
    target: &ReleaseDigest,
    succeeded: bool,
    detail: &str,
    now_ms: i64,
) -> pb::SwitchRecord {
    pb::SwitchRecord {
        deployment_id: deployment.to_owned(),
        fencing_token: token,
        to_digest: target.to_string(),
        succeeded,
        detail: detail.to_owned(),
        at_unix_ms: now_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> ReleaseDigest {
        ReleaseDigest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap()
    }

    fn apply(n: u8, deployment: &str) -> Order {
        Order::Apply {
            target: digest(n),
            deployment: deployment.to_owned(),
        }
    }

    fn fence(token: u64, seq: u64) -> Fence {
        Fence { token, seq }
    }

    fn model() -> ServiceModel {
        ServiceModel::new("host-1", "demo", 2)
    }

    fn switch_ticket(accepted: Accepted) -> u64 {
        match accepted {
            Accepted::Switch { ticket, .. } => ticket,
            other => panic!("expected a switch, got {other:?}"),
        }
    }

    #[test]
    fn an_apply_switches_and_ends_ready_on_the_target() {
        let mut m = model();
        let t = switch_ticket(
            m.take(apply(1, "d1"), fence(7, 1), LockReading::Held(7), 10)
                .unwrap(),
        );
        assert_eq!(m.status().switch_state(), pb::SwitchState::Switching);
        assert!(m.ready(t, 20));
        let s = m.status();
        assert_eq!(s.switch_state(), pb::SwitchState::Idle);
        assert_eq!(s.current.unwrap().digest, digest(1).to_string());
        assert_eq!(s.instances.len(), 2);
        assert!(s.instances.iter().all(|i| i.ready));
        let last = s.last_switch.unwrap();
        assert!(last.succeeded);
        assert_eq!((last.deployment_id.as_str(), last.fencing_token), ("d1", 7));
    }

    #[test]
    fn a_failed_switch_keeps_the_old_release_and_records_why() {
        let mut m = model();
        let t = switch_ticket(
            m.take(apply(1, "d1"), fence(7, 1), LockReading::Held(7), 0)
                .unwrap(),
        );
        m.ready(t, 1);
        let t = switch_ticket(
            m.take(apply(2, "d2"), fence(9, 1), LockReading::Held(9), 2)
                .unwrap(),
        );
        assert!(m.fail(t, "boom", 3));
        let s = m.status();
        assert_eq!(s.current.unwrap().digest, digest(1).to_string());
        assert!(s.instances.iter().all(|i| i.ready));
        assert_eq!(s.instances.len(), 2);
        let last = s.last_switch.unwrap();
        assert!(!last.succeeded);
        assert_eq!(last.to_digest, digest(2).to_string());
        assert_eq!(s.last_error, "boom");
    }

    #[test]
    fn tokens_below_the_mark_and_not_the_locks_are_refused() {
        let mut m = model();
        m.take(Order::Stage, fence(9, 0), LockReading::Held(9), 0)
            .unwrap();
        assert!(matches!(
            m.take(apply(1, "d"), fence(8, 1), LockReading::Held(8), 0),
            Err(Refusal::Stale { .. })
        ));
        assert!(matches!(
            m.take(apply(1, "d"), fence(10, 1), LockReading::Held(11), 0),
            Err(Refusal::NotTheLock { .. })
        ));
        assert!(matches!(
            m.take(apply(1, "d"), fence(10, 1), LockReading::Unreadable, 0),
            Err(Refusal::Unverified { .. })
        ));
        assert_eq!(m.high_water(), 9);
    }

    #[test]
    fn an_overtaken_command_of_the_same_token_is_refused() {
        let mut m = model();
        let t = switch_ticket(
            m.take(apply(1, "d"), fence(5, 1), LockReading::Held(5), 0)
                .unwrap(),
        );
        m.fail(t, "bad", 1);
        m.take(
            Order::Uninstall {
                deployment: "d".into(),
            },
            fence(5, 3),
            LockReading::Held(5),
            2,
        )
        .unwrap();
        // The forward apply (numbered 2) arrives late: it must not install.
        assert!(matches!(
            m.take(apply(1, "d"), fence(5, 2), LockReading::Held(5), 3),
            Err(Refusal::Overtaken { .. })
        ));
        assert_eq!(m.current(), None);
    }

    #[test]
    fn a_higher_token_supersedes_and_the_old_ticket_changes_nothing() {
        let mut m = model();
        let old = switch_ticket(
            m.take(apply(1, "d1"), fence(5, 1), LockReading::Held(5), 0)
                .unwrap(),
        );
        let new = switch_ticket(
            m.take(apply(2, "d2"), fence(6, 1), LockReading::Held(6), 1)
                .unwrap(),
        );
        assert!(!m.ready(old, 2));
        assert!(m.ready(new, 3));
        assert_eq!(m.current(), Some(digest(2)));
        assert_eq!(m.status().instances.len(), 2);
    }

    #[test]
    fn the_same_target_rolls_forward_and_ends_as_the_newer_command() {
        let mut m = model();
        let t = switch_ticket(
            m.take(apply(1, "d1"), fence(5, 1), LockReading::Held(5), 0)
                .unwrap(),
        );
        assert_eq!(
            m.take(apply(1, "d1"), fence(6, 1), LockReading::Held(6), 1)
                .unwrap(),
            Accepted::Joined
        );
        assert!(m.ready(t, 2));
        assert_eq!(m.status().last_switch.unwrap().fencing_token, 6);
    }

    #[test]
    fn an_equal_token_while_switching_is_busy() {
        let mut m = model();
        m.take(apply(1, "d"), fence(5, 1), LockReading::Held(5), 0)
            .unwrap();
        assert!(matches!(
            m.take(
                Order::Uninstall {
                    deployment: "d".into()
                },
                fence(5, 2),
                LockReading::Held(5),
                1
            ),
            Err(Refusal::Busy { .. })
        ));
    }

    #[test]
    fn a_crash_after_ready_leaves_instances_crash_looping() {
        let mut m = model();
        let t = switch_ticket(
            m.take(apply(1, "d"), fence(5, 1), LockReading::Held(5), 0)
                .unwrap(),
        );
        m.ready(t, 1);
        assert!(m.crash(&digest(1), 2));
        assert!(
            m.status()
                .instances
                .iter()
                .all(|i| !i.ready && i.state() == pb::InstanceState::CrashLooping)
        );
        assert!(!m.crash(&digest(2), 3));
    }

    #[test]
    fn rollback_goes_to_the_previous_release() {
        let mut m = model();
        assert!(matches!(
            m.take(
                Order::Rollback {
                    deployment: "d".into()
                },
                fence(1, 0),
                LockReading::Held(1),
                0
            ),
            Err(Refusal::NoPrevious { .. })
        ));
        let t = switch_ticket(
            m.take(apply(1, "d"), fence(2, 1), LockReading::Held(2), 0)
                .unwrap(),
        );
        m.ready(t, 1);
        let t = switch_ticket(
            m.take(apply(2, "d"), fence(3, 1), LockReading::Held(3), 2)
                .unwrap(),
        );
        m.ready(t, 3);
        let t = switch_ticket(
            m.take(
                Order::Rollback {
                    deployment: "r".into(),
                },
                fence(4, 0),
                LockReading::Held(4),
                4,
            )
            .unwrap(),
        );
        m.ready(t, 5);
        assert_eq!(m.current(), Some(digest(1)));
    }
}
