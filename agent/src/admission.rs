//! Which command may act on a service now: the supersede rule, as a pure
//! function of the fencing high-water mark, the command in flight and the
//! one arriving.
//!
//! ```text
//!   arriving \ in flight      nothing   coordinator's (token f)         agentctl's / agent start
//!   token t < high-water      Stale     Stale                           Stale
//!   token t ≥ high-water      Take      t > f, same target: RollForward Busy
//!                                       t > f, other: Supersede
//!                                       else Busy
//!   no token (agentctl)       Take      Busy                            Busy
//! ```
//!
//! A higher token means the coordinator that sent the command in flight
//! has lost its lock: that command is cancelled (its new instances
//! stopped, the old ones kept serving, recorded as superseded) and the
//! newer one converges the service to its own target. It never waits for
//! the older one to finish, and the older one never finishes after it.
//! When both switch to the same release (a new leader resuming the same
//! deployment), the switch in flight is rolled forward instead: it goes on
//! and ends as the newer command's (recorded with its deployment and
//! token), rather than being stopped and started again.
//! An equal token is the same holder: its commands stay one at a time
//! (Busy, the coordinator retries). An operator's agentctl command is
//! never cancelled by a coordinator, nor the agent's own start.
//!
//! Before any of that, a coordinator's token must be one etcd vouches for
//! (`vouch`, #14 deliver 4): the token of the service's deployment lock
//! as the agent read it just now, after the command was otherwise found
//! valid (release stored and of this service). A token that is not the
//! lock's is refused whatever its size, so a forged future token cannot
//! raise the mark; nothing durable changes before `vouch` says yes.
//!
//! ```text
//!   lock in etcd \ token t    t < high-water   t = lock     t ≠ lock
//!   held (token l)            Stale            Vouched      NotTheLock
//!   free                      Stale            —            NotTheLock
//!   unreadable (etcd down)    Stale            Unverified   Unverified
//!   unchecked (no [etcd])     Stale            Vouched (the mark is the only fence)
//! ```
//!
//! Within one token (one deployment, one leader) the coordinator numbers
//! its commands (`command_seq`, the engine's apply id). A command that
//! arrives after a later-numbered command of its token was taken is
//! `overtaken` and refused: the forward Apply of a host the deployment
//! has already rolled back (it was delayed in the network, or still
//! fetching its release on the agent) must not install the release the
//! rollback left. Commands numbered 0 (agentctl, older coordinators) are
//! not ordered.
//!
//! `reset_mark` is the break-glass for a mark that is already too high
//! (`agentctl fence reset`): down to what etcd justifies, or to 0 when
//! forced.
//!
//! Must never: read a clock, take a lock, touch a process, read etcd, or
//! admit a token below the high-water mark.

/// A command, as the rule sees it: the one that holds a service, or the
/// one arriving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim<'a> {
    /// The coordinator's fencing token; `None`: agentctl or the agent's
    /// own start (never superseded).
    pub token: Option<u64>,
    /// The release it switches to, when that is known before it runs (an
    /// Apply); `None` for a restart, a rollback, an install.
    pub target: Option<&'a str>,
}

/// What to do with an arriving command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Nothing holds the service: the command takes it.
    Take,
    /// Cancel the command in flight (token `superseded`), then take the
    /// service once it has brought the service back.
    Supersede { superseded: u64 },
    /// The command in flight (token `superseded`) already switches to
    /// this command's target: it goes on as this command's.
    RollForward { superseded: u64 },
    /// Another command holds the service and is not superseded: refuse
    /// (the sender may retry).
    Busy,
    /// The token is older than one already accepted: refuse.
    Stale { high_water: u64 },
}

/// The supersede rule (see the module doc). `high_water` is the service's
/// durable fencing high-water mark.
pub fn admit(high_water: u64, in_flight: Option<Claim<'_>>, arriving: Claim<'_>) -> Admission {
    if let Some(t) = arriving.token {
        if t < high_water {
            return Admission::Stale { high_water };
        }
    }
    let Some(in_flight) = in_flight else {
        return Admission::Take;
    };
    match (in_flight.token, arriving.token) {
        (Some(f), Some(t)) if t > f => {
            let same = in_flight.target.is_some() && in_flight.target == arriving.target;
            if same {
                Admission::RollForward { superseded: f }
            } else {
                Admission::Supersede { superseded: f }
            }
        }
        _ => Admission::Busy,
    }
}

/// The coordinator command a service took last: its token and number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    pub token: u64,
    pub seq: u64,
}

/// Whether a command (`token`, `seq`) was overtaken: a command of the same
/// token numbered after it was taken already. Refused as superseded.
pub fn overtaken(last: Option<Taken>, token: Option<u64>, seq: u64) -> bool {
    match (last, token) {
        (Some(last), Some(token)) => seq != 0 && token == last.token && seq < last.seq,
        _ => false,
    }
}

/// What etcd said about a service's deployment lock
/// (`/lockstep/v1/locks/deploy/<service>`) when a command arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockReading {
    /// Held; its fencing token (the key's create revision).
    Held(u64),
    /// Nobody holds it; etcd's revision at the read: every lock taken
    /// later has a higher token.
    Free { revision: u64 },
    /// etcd did not answer in time, or the agent has no session now.
    Unreadable,
    /// The agent has no `[etcd]`: tokens cannot be checked.
    Unchecked,
}

/// Whether etcd vouches for a coordinator's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vouch {
    /// The lock's own token (or no etcd to ask): admission decides next.
    Vouched,
    /// Older than one already accepted.
    Stale { high_water: u64 },
    /// Not the token of the lock etcd holds now (`held`: its token, `None`
    /// when free): a deposed holder's, or forged.
    NotTheLock { held: Option<u64> },
    /// etcd could not be read: refused for now, the sender retries.
    Unverified,
}

/// Checks `token` against the high-water mark and the lock (see the
/// module doc).
pub fn vouch(high_water: u64, token: u64, lock: LockReading) -> Vouch {
    if token < high_water {
        return Vouch::Stale { high_water };
    }
    match lock {
        LockReading::Held(held) if held == token => Vouch::Vouched,
        LockReading::Held(held) => Vouch::NotTheLock { held: Some(held) },
        LockReading::Free { .. } => Vouch::NotTheLock { held: None },
        LockReading::Unreadable => Vouch::Unverified,
        LockReading::Unchecked => Vouch::Vouched,
    }
}

/// What `agentctl fence reset` may do to a service's high-water mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkReset {
    /// Lower the mark to this.
    LowerTo(u64),
    /// The mark is no higher than etcd justifies: nothing to reset.
    Justified,
    /// etcd cannot say what is justified: only `--force` (to 0) may reset.
    NeedsForce,
}

/// The break-glass rule: without `force`, the mark may only come down to
/// what etcd justifies — the held lock's token, or, with the lock free,
/// etcd's revision (every later lock's token is above it); with `force`,
/// to 0 whatever etcd says (the next coordinator token raises it again).
pub fn reset_mark(high_water: u64, lock: LockReading, force: bool) -> MarkReset {
    let justified = match lock {
        _ if force => 0,
        LockReading::Held(held) => held,
        LockReading::Free { revision } => revision,
        LockReading::Unreadable | LockReading::Unchecked => return MarkReset::NeedsForce,
    };
    if high_water > justified {
        MarkReset::LowerTo(justified)
    } else {
        MarkReset::Justified
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_command_numbered_before_one_of_its_token_already_taken_is_overtaken() {
        let last = Some(Taken { token: 7, seq: 5 });
        assert!(
            overtaken(last, Some(7), 3),
            "the forward apply behind its rollback"
        );
        assert!(!overtaken(last, Some(7), 5), "the same command resent");
        assert!(!overtaken(last, Some(7), 6));
        assert!(
            !overtaken(last, Some(8), 1),
            "a newer token is the supersede rule's"
        );
        assert!(!overtaken(last, Some(7), 0), "unnumbered: not ordered");
        assert!(!overtaken(last, None, 1), "agentctl");
        assert!(!overtaken(None, Some(7), 1));
    }

    use super::*;

    const COORDINATOR_5: Option<Claim<'static>> = Some(Claim {
        token: Some(5),
        target: Some("sha256:b"),
    });
    const AGENTCTL: Option<Claim<'static>> = Some(Claim {
        token: None,
        target: None,
    });

    fn token(t: u64) -> Claim<'static> {
        Claim {
            token: Some(t),
            target: Some("sha256:a"),
        }
    }

    const NO_TOKEN: Claim<'static> = Claim {
        token: None,
        target: None,
    };

    #[test]
    fn a_free_service_is_taken_by_any_command_not_stale() {
        assert_eq!(admit(0, None, NO_TOKEN), Admission::Take);
        assert_eq!(admit(5, None, token(5)), Admission::Take);
        assert_eq!(admit(5, None, token(9)), Admission::Take);
    }

    #[test]
    fn an_older_token_is_refused_whatever_is_in_flight() {
        for in_flight in [None, COORDINATOR_5, AGENTCTL] {
            assert_eq!(
                admit(6, in_flight, token(5)),
                Admission::Stale { high_water: 6 },
                "{in_flight:?}"
            );
        }
    }

    #[test]
    fn a_higher_token_supersedes_the_coordinator_command_in_flight() {
        assert_eq!(
            admit(5, COORDINATOR_5, token(6)),
            Admission::Supersede { superseded: 5 }
        );
        // A Stage already raised the mark to the newer token: still newer
        // than the command in flight.
        assert_eq!(
            admit(6, COORDINATOR_5, token(6)),
            Admission::Supersede { superseded: 5 }
        );
    }

    #[test]
    fn a_higher_token_for_the_release_in_flight_rolls_the_switch_forward() {
        let same = Claim {
            token: Some(6),
            target: Some("sha256:b"),
        };
        assert_eq!(
            admit(5, COORDINATOR_5, same),
            Admission::RollForward { superseded: 5 }
        );
        // A restart or rollback in flight has no target known in advance.
        let restart = Some(Claim {
            token: Some(5),
            target: None,
        });
        let also_none = Claim {
            token: Some(6),
            target: None,
        };
        assert_eq!(
            admit(5, restart, also_none),
            Admission::Supersede { superseded: 5 }
        );
    }

    #[test]
    fn the_same_token_waits_its_turn() {
        assert_eq!(admit(5, COORDINATOR_5, token(5)), Admission::Busy);
    }

    #[test]
    fn agentctl_commands_are_never_superseded_nor_supersede() {
        assert_eq!(admit(5, AGENTCTL, token(9)), Admission::Busy);
        assert_eq!(admit(5, COORDINATOR_5, NO_TOKEN), Admission::Busy);
        assert_eq!(admit(0, AGENTCTL, NO_TOKEN), Admission::Busy);
    }

    #[test]
    fn only_the_held_locks_token_is_vouched_for() {
        assert_eq!(vouch(5, 7, LockReading::Held(7)), Vouch::Vouched);
        assert_eq!(vouch(7, 7, LockReading::Held(7)), Vouch::Vouched);
        // #14 Seen 3: a future token is not the lock's, however large.
        assert_eq!(
            vouch(5, u64::MAX, LockReading::Held(7)),
            Vouch::NotTheLock { held: Some(7) }
        );
        // A deposed holder's token: the lock was taken again since.
        assert_eq!(
            vouch(5, 6, LockReading::Held(9)),
            Vouch::NotTheLock { held: Some(9) }
        );
        assert_eq!(
            vouch(5, 6, LockReading::Free { revision: 40 }),
            Vouch::NotTheLock { held: None }
        );
    }

    #[test]
    fn a_stale_token_is_stale_whatever_etcd_says() {
        for lock in [
            LockReading::Held(3),
            LockReading::Free { revision: 40 },
            LockReading::Unreadable,
            LockReading::Unchecked,
        ] {
            assert_eq!(
                vouch(5, 3, lock),
                Vouch::Stale { high_water: 5 },
                "{lock:?}"
            );
        }
    }

    #[test]
    fn an_unreadable_lock_vouches_for_nothing_and_no_etcd_leaves_the_mark_alone() {
        assert_eq!(vouch(5, 7, LockReading::Unreadable), Vouch::Unverified);
        assert_eq!(vouch(5, 7, LockReading::Unchecked), Vouch::Vouched);
    }

    #[test]
    fn a_reset_lowers_the_mark_only_to_what_etcd_justifies() {
        let wedged = u64::MAX;
        assert_eq!(
            reset_mark(wedged, LockReading::Held(12), false),
            MarkReset::LowerTo(12)
        );
        assert_eq!(
            reset_mark(wedged, LockReading::Free { revision: 40 }, false),
            MarkReset::LowerTo(40)
        );
        assert_eq!(
            reset_mark(12, LockReading::Held(12), false),
            MarkReset::Justified
        );
        assert_eq!(
            reset_mark(12, LockReading::Free { revision: 40 }, false),
            MarkReset::Justified
        );
    }

    #[test]
    fn without_etcd_only_force_resets_and_force_goes_to_zero() {
        for lock in [LockReading::Unreadable, LockReading::Unchecked] {
            assert_eq!(
                reset_mark(99, lock, false),
                MarkReset::NeedsForce,
                "{lock:?}"
            );
            assert_eq!(
                reset_mark(99, lock, true),
                MarkReset::LowerTo(0),
                "{lock:?}"
            );
        }
        assert_eq!(
            reset_mark(99, LockReading::Held(12), true),
            MarkReset::LowerTo(0)
        );
        assert_eq!(
            reset_mark(0, LockReading::Unchecked, true),
            MarkReset::Justified
        );
    }
}
