//! Which command may act on a service now: the supersede rule, as a pure
//! function of the fencing high-water mark, the command in flight and the
//! one arriving.
//!
//! ```text
//!   arriving \ in flight      nothing   coordinator's (token f)         agentctl's / agent start
//!   token t < high-water      Stale     Stale                           Stale
//!   token t ≥ high-water      Take      t > f: Supersede, else Busy     Busy
//!   no token (agentctl)       Take      Busy                            Busy
//! ```
//!
//! A higher token means the coordinator that sent the command in flight
//! has lost its lock: that command is cancelled (its new instances
//! stopped, the old ones kept serving, recorded as superseded) and the
//! newer one converges the service to its own target. It never waits for
//! the older one to finish, and the older one never finishes after it.
//! An equal token is the same holder: its commands stay one at a time
//! (Busy, the coordinator retries). An operator's agentctl command is
//! never cancelled by a coordinator, nor the agent's own start.
//!
//! Must never: read a clock, take a lock, touch a process, or admit a
//! token below the high-water mark.

/// The command that holds a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    /// The coordinator's fencing token; `None`: agentctl or the agent's
    /// own start (never superseded).
    pub token: Option<u64>,
}

/// What to do with an arriving command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Nothing holds the service: the command takes it.
    Take,
    /// Cancel the command in flight (token `superseded`), then take the
    /// service once it has brought the service back.
    Supersede { superseded: u64 },
    /// Another command holds the service and is not superseded: refuse
    /// (the sender may retry).
    Busy,
    /// The token is older than one already accepted: refuse.
    Stale { high_water: u64 },
}

/// The supersede rule (see the module doc). `high_water` is the service's
/// durable fencing high-water mark, `token` the arriving command's.
pub fn admit(high_water: u64, in_flight: Option<InFlight>, token: Option<u64>) -> Admission {
    if let Some(t) = token {
        if t < high_water {
            return Admission::Stale { high_water };
        }
    }
    let Some(in_flight) = in_flight else {
        return Admission::Take;
    };
    match (in_flight.token, token) {
        (Some(f), Some(t)) if t > f => Admission::Supersede { superseded: f },
        _ => Admission::Busy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COORDINATOR_5: Option<InFlight> = Some(InFlight { token: Some(5) });
    const AGENTCTL: Option<InFlight> = Some(InFlight { token: None });

    #[test]
    fn a_free_service_is_taken_by_any_command_not_stale() {
        assert_eq!(admit(0, None, None), Admission::Take);
        assert_eq!(admit(5, None, Some(5)), Admission::Take);
        assert_eq!(admit(5, None, Some(9)), Admission::Take);
    }

    #[test]
    fn an_older_token_is_refused_whatever_is_in_flight() {
        for in_flight in [None, COORDINATOR_5, AGENTCTL] {
            assert_eq!(
                admit(6, in_flight, Some(5)),
                Admission::Stale { high_water: 6 },
                "{in_flight:?}"
            );
        }
    }

    #[test]
    fn a_higher_token_supersedes_the_coordinator_command_in_flight() {
        assert_eq!(
            admit(5, COORDINATOR_5, Some(6)),
            Admission::Supersede { superseded: 5 }
        );
        // A Stage already raised the mark to the newer token: still newer
        // than the command in flight.
        assert_eq!(
            admit(6, COORDINATOR_5, Some(6)),
            Admission::Supersede { superseded: 5 }
        );
    }

    #[test]
    fn the_same_token_waits_its_turn() {
        assert_eq!(admit(5, COORDINATOR_5, Some(5)), Admission::Busy);
    }

    #[test]
    fn agentctl_commands_are_never_superseded_nor_supersede() {
        assert_eq!(admit(5, AGENTCTL, Some(9)), Admission::Busy);
        assert_eq!(admit(5, COORDINATOR_5, None), Admission::Busy);
        assert_eq!(admit(0, AGENTCTL, None), Admission::Busy);
    }
}
