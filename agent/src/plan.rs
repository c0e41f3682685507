//! The planner shared by a release switch and a restart: a pure function
//! from a command and what runs to the steps the host takes, and from what
//! is left after a failed step to the steps that bring the service back.
//!
//! ```text
//!                       overlap socket-handover | reuseport    overlap none
//!   Switch (all slots)  StartNew(all) Commit StopOld(all)      StopOld(all) StartNew(all) Commit
//!   Restart (per slot)  StartNew(i) StopOld(i) … Commit        StopOld(i) StartNew(i) … Commit
//!   failure at any step: recover(occupancy) → StopNew(left-overs of a switch),
//!                        StartOld(every slot that has nothing running)
//! ```
//!
//! Switch and restart therefore have one failure behaviour: the old
//! release's instances keep serving, and a slot whose old instance was
//! stopped first (overlap none) gets it back.
//!
//! Must never: read a clock, touch a process, or plan a step after
//! `Commit` other than stopping old instances (they drain after the new
//! release is durable).

use std::collections::BTreeSet;

use release::manifest::Overlap;

/// What the host is asked to do to one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Replace every running instance by the target release's, atomically
    /// (never half old, half new).
    Switch,
    /// Replace every instance by a fresh one of the same release, slot by
    /// slot.
    Restart,
}

/// What the planner needs to know about the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Instances of the running release (0: nothing runs).
    pub running: u32,
    /// Instances the target release has (a restart: the running ones).
    pub target: u32,
    /// How old and new may overlap (the target release's mode).
    pub overlap: Overlap,
}

/// One step of a plan; slots are the instance numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Start the target's instances in these slots and wait until all are
    /// ready; on failure every one of them is stopped.
    StartNew(Vec<u32>),
    /// Stop the old instances in these slots and wait until they exited.
    StopOld(Vec<u32>),
    /// The new instances are what runs: durable, reported.
    Commit,
    /// Recovery: stop the target's instances still running in these slots.
    StopNew(Vec<u32>),
    /// Recovery: start the old release again in these slots and keep
    /// supervising them, ready in time or not (a slot never stays empty).
    StartOld(Vec<u32>),
}

/// The steps of `command` on a service as `view` describes it.
pub fn plan(command: Command, view: View) -> Vec<Step> {
    let stop_first = view.overlap == Overlap::None;
    match command {
        Command::Switch => {
            let all_new: Vec<u32> = (0..view.target).collect();
            if view.running == 0 {
                return vec![Step::StartNew(all_new), Step::Commit];
            }
            let all_old: Vec<u32> = (0..view.running).collect();
            if stop_first {
                vec![
                    Step::StopOld(all_old),
                    Step::StartNew(all_new),
                    Step::Commit,
                ]
            } else {
                vec![
                    Step::StartNew(all_new),
                    Step::Commit,
                    Step::StopOld(all_old),
                ]
            }
        }
        Command::Restart => {
            let mut steps = Vec::new();
            for slot in 0..view.running {
                if stop_first {
                    steps.push(Step::StopOld(vec![slot]));
                    steps.push(Step::StartNew(vec![slot]));
                } else {
                    steps.push(Step::StartNew(vec![slot]));
                    steps.push(Step::StopOld(vec![slot]));
                }
            }
            steps.push(Step::Commit);
            steps
        }
    }
}

/// Which slots have an instance running when a step failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// The old release's (for a restart: not yet restarted) instances.
    pub old: BTreeSet<u32>,
    /// The target's instances already started (and ready).
    pub new: BTreeSet<u32>,
}

/// The steps that bring a service back after a failed step, before
/// `Commit`: what serves afterwards is the old release in every slot it
/// had (a restart keeps its already restarted slots: same release).
pub fn recover(command: Command, view: View, occupancy: &Occupancy) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut served: BTreeSet<u32> = occupancy.old.clone();
    match command {
        Command::Switch => {
            // Atomic per host: no instance of the failed release stays.
            if !occupancy.new.is_empty() {
                steps.push(Step::StopNew(occupancy.new.iter().copied().collect()));
            }
        }
        Command::Restart => served.extend(occupancy.new.iter().copied()),
    }
    let empty: Vec<u32> = (0..view.running).filter(|s| !served.contains(s)).collect();
    if !empty.is_empty() {
        steps.push(Step::StartOld(empty));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(running: u32, target: u32, overlap: Overlap) -> View {
        View {
            running,
            target,
            overlap,
        }
    }

    fn occupancy(old: &[u32], new: &[u32]) -> Occupancy {
        Occupancy {
            old: old.iter().copied().collect(),
            new: new.iter().copied().collect(),
        }
    }

    #[test]
    fn a_switch_starts_every_new_instance_before_any_old_one_stops() {
        let steps = plan(Command::Switch, view(2, 3, Overlap::SocketHandover));
        assert_eq!(
            steps,
            vec![
                Step::StartNew(vec![0, 1, 2]),
                Step::Commit,
                Step::StopOld(vec![0, 1])
            ]
        );
        assert_eq!(plan(Command::Switch, view(2, 3, Overlap::Reuseport)), steps);
    }

    #[test]
    fn a_switch_with_overlap_none_stops_the_old_release_first() {
        assert_eq!(
            plan(Command::Switch, view(2, 1, Overlap::None)),
            vec![
                Step::StopOld(vec![0, 1]),
                Step::StartNew(vec![0]),
                Step::Commit
            ]
        );
    }

    #[test]
    fn a_first_start_has_nothing_to_stop() {
        for overlap in [Overlap::None, Overlap::SocketHandover] {
            assert_eq!(
                plan(Command::Switch, view(0, 2, overlap)),
                vec![Step::StartNew(vec![0, 1]), Step::Commit]
            );
        }
    }

    #[test]
    fn a_restart_goes_slot_by_slot_in_the_overlap_order() {
        assert_eq!(
            plan(Command::Restart, view(2, 2, Overlap::SocketHandover)),
            vec![
                Step::StartNew(vec![0]),
                Step::StopOld(vec![0]),
                Step::StartNew(vec![1]),
                Step::StopOld(vec![1]),
                Step::Commit
            ]
        );
        assert_eq!(
            plan(Command::Restart, view(2, 2, Overlap::None)),
            vec![
                Step::StopOld(vec![0]),
                Step::StartNew(vec![0]),
                Step::StopOld(vec![1]),
                Step::StartNew(vec![1]),
                Step::Commit
            ]
        );
    }

    /// Reproduces #12 item 6: a restart with overlap none whose new
    /// instance fails must bring the stopped slot back, as a switch does.
    #[test]
    fn a_failed_restart_with_overlap_none_starts_the_stopped_slot_again() {
        let v = view(1, 1, Overlap::None);
        assert_eq!(
            recover(Command::Restart, v, &occupancy(&[], &[])),
            vec![Step::StartOld(vec![0])]
        );
        // Slot 0 restarted fine, slot 1 failed after its old one stopped.
        let v = view(3, 3, Overlap::None);
        assert_eq!(
            recover(Command::Restart, v, &occupancy(&[2], &[0])),
            vec![Step::StartOld(vec![1])]
        );
    }

    #[test]
    fn a_failed_switch_with_overlap_none_starts_the_old_release_again() {
        let v = view(2, 2, Overlap::None);
        assert_eq!(
            recover(Command::Switch, v, &occupancy(&[], &[])),
            vec![Step::StartOld(vec![0, 1])]
        );
    }

    #[test]
    fn a_failed_start_beside_the_old_release_leaves_it_serving() {
        let v = view(2, 2, Overlap::SocketHandover);
        assert_eq!(
            recover(Command::Switch, v, &occupancy(&[0, 1], &[])),
            Vec::new()
        );
        assert_eq!(
            recover(Command::Restart, v, &occupancy(&[1], &[0])),
            Vec::new()
        );
    }

    #[test]
    fn a_failed_switch_never_leaves_an_instance_of_the_new_release() {
        let v = view(1, 2, Overlap::SocketHandover);
        assert_eq!(
            recover(Command::Switch, v, &occupancy(&[0], &[1])),
            vec![Step::StopNew(vec![1])]
        );
    }

    #[test]
    fn a_failed_first_start_has_nothing_to_restore() {
        let v = view(0, 2, Overlap::None);
        assert_eq!(
            recover(Command::Switch, v, &occupancy(&[], &[])),
            Vec::new()
        );
    }

    /// Whatever the command and mode, nothing but stopping old instances
    /// follows `Commit`, every old slot is stopped once, every target slot
    /// started once.
    #[test]
    fn every_plan_stops_each_old_slot_once_and_starts_each_new_slot_once() {
        for command in [Command::Switch, Command::Restart] {
            for overlap in [Overlap::None, Overlap::SocketHandover, Overlap::Reuseport] {
                for running in 0..4 {
                    for target in 1..4 {
                        let target = if command == Command::Restart {
                            running
                        } else {
                            target
                        };
                        let steps = plan(command, view(running, target, overlap));
                        let commit = steps.iter().position(|s| *s == Step::Commit);
                        let Some(commit) = commit else {
                            panic!("no commit in {steps:?}");
                        };
                        assert!(
                            steps[commit + 1..]
                                .iter()
                                .all(|s| matches!(s, Step::StopOld(_))),
                            "{steps:?}"
                        );
                        let mut stopped: Vec<u32> = Vec::new();
                        let mut started: Vec<u32> = Vec::new();
                        for step in &steps {
                            match step {
                                Step::StopOld(s) => stopped.extend(s),
                                Step::StartNew(s) => started.extend(s),
                                _ => {}
                            }
                        }
                        stopped.sort_unstable();
                        started.sort_unstable();
                        assert_eq!(stopped, (0..running).collect::<Vec<_>>(), "{steps:?}");
                        assert_eq!(started, (0..target).collect::<Vec<_>>(), "{steps:?}");
                    }
                }
            }
        }
    }
}
