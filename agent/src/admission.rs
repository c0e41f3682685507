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
//! Must never: read a clock, take a lock, touch a process, or admit a
//! token below the high-water mark.

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

#[cfg(test)]
mod tests {
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
}
