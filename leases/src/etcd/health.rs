//! `EndpointHealth`: which etcd member a request goes to, and when a member
//! that failed is tried again. Pure: time is an argument, nothing here
//! talks to etcd.
//!
//! ```text
//!             a request to it fails             its probe is due
//!   Healthy ─────────────────────────► Failed ───────────────────► Probing
//!     ▲  ▲                              │  ▲                          │
//!     │  └── a (last-resort) request ───┘  └──── the probe fails ─────┤
//!     │      to it succeeds                      (next one later)     │
//!     └────────────────────── the probe succeeds ─────────────────────┘
//! ```
//!
//! One member is *preferred*: every request goes to it first (so a lease's
//! keep-alives and a session's writes stay on one connection) until a
//! request to it fails; then the next healthy member in ring order is
//! preferred — the round-robin of etcd's Go client. A round of a request
//! tries every healthy member, then every failed one as a last resort, so a
//! request fails to its caller only when no member answers at all.
//!
//! Must never: read a clock, sleep, or leave a member out of a round (a
//! failed member may be the only one left that answers).

use std::time::{Duration, Instant};

/// Backoff between probes of a failed member: first, and most. Quick
/// enough to have a restarted member back within seconds, slow enough not
/// to load one that is struggling.
const PROBE_BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));

/// One member's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Healthy,
    /// Out of rotation since `since`; probed again at `probe_at`.
    Failed {
        since: Instant,
        failures: u32,
        probe_at: Instant,
    },
    /// Out of rotation; a probe is running.
    Probing {
        since: Instant,
        failures: u32,
    },
}

/// What an outcome changed, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    None,
    /// The member was healthy and now is not.
    LeftRotation,
    /// The member is healthy again after `down_for`.
    Rejoined {
        down_for: Duration,
    },
}

/// The health of every member of one client, by index in its endpoint
/// list.
#[derive(Debug, Clone)]
pub(crate) struct EndpointHealth {
    members: Vec<State>,
    preferred: usize,
}

impl EndpointHealth {
    /// Every member healthy; the first one preferred.
    pub(crate) fn new(members: usize) -> Self {
        Self {
            members: vec![State::Healthy; members],
            preferred: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn state(&self, member: usize) -> Option<State> {
        self.members.get(member).copied()
    }

    /// The members one round of a request tries, in order: the preferred
    /// one, the other healthy ones in ring order after it, then those out
    /// of rotation, the one to be probed soonest first.
    pub(crate) fn round(&self) -> Vec<usize> {
        let n = self.members.len();
        let ring = (0..n).map(|offset| (self.preferred + offset) % n);
        let mut healthy: Vec<usize> = ring
            .clone()
            .filter(|&i| self.members[i] == State::Healthy)
            .collect();
        let mut failed: Vec<(Instant, usize)> = ring
            .filter_map(|i| match self.members[i] {
                State::Healthy => None,
                State::Failed { probe_at, .. } => Some((probe_at, i)),
                State::Probing { since, .. } => Some((since, i)),
            })
            .collect();
        failed.sort();
        healthy.extend(failed.into_iter().map(|(_, i)| i));
        healthy
    }

    /// A request to `member` was answered (its answer may still be a
    /// refusal: the member works).
    pub(crate) fn succeeded(&mut self, member: usize, now: Instant) -> Change {
        let Some(state) = self.members.get_mut(member) else {
            return Change::None;
        };
        let change = match *state {
            State::Healthy => Change::None,
            State::Failed { since, .. } | State::Probing { since, .. } => Change::Rejoined {
                down_for: now.saturating_duration_since(since),
            },
        };
        *state = State::Healthy;
        if self.members.get(self.preferred) != Some(&State::Healthy) {
            self.preferred = member;
        }
        change
    }

    /// A request to `member` got no answer, or one that says the member
    /// cannot serve (no leader, unavailable): it leaves rotation, and the
    /// next healthy member is preferred.
    pub(crate) fn failed(&mut self, member: usize, now: Instant) -> Change {
        let Some(state) = self.members.get_mut(member) else {
            return Change::None;
        };
        let (change, since, failures) = match *state {
            State::Healthy => (Change::LeftRotation, now, 0),
            State::Failed {
                since, failures, ..
            }
            | State::Probing { since, failures } => (Change::None, since, failures),
        };
        let failures = failures.saturating_add(1);
        *state = State::Failed {
            since,
            failures,
            probe_at: now + probe_backoff(failures),
        };
        if member == self.preferred {
            self.preferred = self.next_healthy_after(member).unwrap_or(member);
        }
        change
    }

    /// The members whose probe is due; each is now `Probing` until
    /// [`Self::succeeded`] or [`Self::probe_failed`].
    pub(crate) fn due_probes(&mut self, now: Instant) -> Vec<usize> {
        let mut due = Vec::new();
        for (i, state) in self.members.iter_mut().enumerate() {
            if let State::Failed {
                since,
                failures,
                probe_at,
            } = *state
                && probe_at <= now
            {
                *state = State::Probing { since, failures };
                due.push(i);
            }
        }
        due
    }

    /// A probe of `member` failed: the next one waits longer.
    pub(crate) fn probe_failed(&mut self, member: usize, now: Instant) {
        self.failed(member, now);
    }

    fn next_healthy_after(&self, member: usize) -> Option<usize> {
        let n = self.members.len();
        (1..n)
            .map(|offset| (member + offset) % n)
            .find(|&i| self.members[i] == State::Healthy)
    }
}

/// The pause before the next probe after `failures` failures in a row.
fn probe_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    PROBE_BACKOFF
        .0
        .saturating_mul(1 << doublings)
        .min(PROBE_BACKOFF.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn every_member_starts_healthy_and_the_first_is_tried_first() {
        let health = EndpointHealth::new(3);
        assert_eq!(health.round(), vec![0, 1, 2]);
    }

    #[test]
    fn a_failed_member_leaves_rotation_and_the_next_is_preferred() {
        let t = Instant::now();
        let mut health = EndpointHealth::new(3);
        assert_eq!(health.failed(0, t), Change::LeftRotation);
        // Still tried, but last: it may be the only one left.
        assert_eq!(health.round(), vec![1, 2, 0]);
        // A second failure changes nothing to report.
        assert_eq!(health.failed(0, at(t, 10)), Change::None);
    }

    #[test]
    fn the_preferred_member_stays_preferred_while_it_answers() {
        let t = Instant::now();
        let mut health = EndpointHealth::new(3);
        health.failed(0, t);
        health.succeeded(1, t);
        health.succeeded(2, t);
        assert_eq!(health.round(), vec![1, 2, 0]);
    }

    #[test]
    fn a_failing_preferred_member_moves_the_preference_round_the_ring() {
        let t = Instant::now();
        let mut health = EndpointHealth::new(3);
        health.failed(1, t);
        assert_eq!(health.round(), vec![0, 2, 1]);
        health.failed(0, at(t, 1));
        // 1 failed first, so it is probed (and tried) before 0.
        assert_eq!(health.round(), vec![2, 1, 0]);
    }

    #[test]
    fn with_every_member_failed_the_soonest_probed_is_tried_first() {
        let t = Instant::now();
        let mut health = EndpointHealth::new(3);
        health.failed(2, t);
        health.failed(2, at(t, 1));
        health.failed(0, at(t, 2));
        health.failed(1, at(t, 3));
        // 2 failed twice, so its next probe is furthest away.
        assert_eq!(health.round(), vec![0, 1, 2]);
    }

    #[test]
    fn a_failed_member_is_probed_with_backoff_and_rejoins_when_a_probe_succeeds() {
        let t = Instant::now();
        let mut health = EndpointHealth::new(3);
        health.failed(0, t);
        assert!(health.due_probes(at(t, 100)).is_empty());
        assert_eq!(health.due_probes(at(t, 250)), vec![0]);
        // A probe runs: not probed twice at once.
        assert!(health.due_probes(at(t, 300)).is_empty());
        health.probe_failed(0, at(t, 300));
        // Second failure in a row: twice the pause.
        assert!(health.due_probes(at(t, 700)).is_empty());
        assert_eq!(health.due_probes(at(t, 800)), vec![0]);
        assert_eq!(
            health.succeeded(0, at(t, 900)),
            Change::Rejoined {
                down_for: Duration::from_millis(900)
            }
        );
        assert_eq!(health.state(0), Some(State::Healthy));
        // Back in rotation, but the preference stays where it moved.
        assert_eq!(health.round(), vec![1, 2, 0]);
    }

    #[test]
    fn a_last_resort_request_that_succeeds_brings_the_member_back() {
        let t = Instant::now();
        let mut health = EndpointHealth::new(2);
        health.failed(0, t);
        health.failed(1, t);
        assert!(matches!(
            health.succeeded(0, at(t, 50)),
            Change::Rejoined { .. }
        ));
        assert_eq!(health.round(), vec![0, 1]);
    }

    #[test]
    fn probe_backoff_doubles_up_to_its_bound() {
        assert_eq!(probe_backoff(1), Duration::from_millis(250));
        assert_eq!(probe_backoff(2), Duration::from_millis(500));
        assert_eq!(probe_backoff(3), Duration::from_secs(1));
        assert_eq!(probe_backoff(100), Duration::from_secs(5));
    }

    #[test]
    fn an_unknown_member_changes_nothing() {
        let t = Instant::now();
        let mut health = EndpointHealth::new(1);
        assert_eq!(health.failed(7, t), Change::None);
        assert_eq!(health.succeeded(7, t), Change::None);
        assert_eq!(health.round(), vec![0]);
    }
}
