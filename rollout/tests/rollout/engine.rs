//! Engine steps, openraft style: set up a state, step, compare the actions.

use rollout::{
    Action, Check, Command, DurationMs, Engine, Event, FencingToken, InstanceId, Notice, Outcome,
    Reason, TimerId,
};

use crate::helper::*;

fn ready(i: &(InstanceId, rollout::Installed, rollout::ApplyId)) -> Event {
    Event::InstanceReady {
        instance: i.0.clone(),
        apply: i.2,
        release: i.1,
    }
}

fn failed(i: &(InstanceId, rollout::Installed, rollout::ApplyId)) -> Event {
    Event::InstanceFailed {
        instance: i.0.clone(),
        apply: i.2,
        release: i.1,
        detail: "exit 1".into(),
    }
}

#[test]
fn canary_goes_first_and_alone() {
    let mut h = H::new(&fleet(&[("big", 3), ("small", 1)]), &strategy());
    let out = h.step(Event::Start);
    // Smallest blast radius first: the 1-instance cluster holds the canary.
    assert_eq!(
        applied_to(&out),
        vec![("small-0".to_owned(), rollout::Installed::Release(target()))]
    );
    assert!(timer_after(&out, PROGRESS).is_some());
    assert!(timer_after(&out, HEALTHY).is_some());
    let out = h.ready_all(&out);
    assert!(
        applies(&out).is_empty(),
        "nothing else before the canary is stable: {out:?}"
    );
    let stable = timer_after(&out, STABLE).unwrap();
    h.advance(STABLE);
    let out = h.step(Event::TimerFired(stable));
    assert_eq!(
        applied_to(&out),
        vec![("big-0".to_owned(), rollout::Installed::Release(target()))]
    );
}

#[test]
fn rehearsal_goes_target_previous_target_before_the_rest() {
    let s = rollout::Strategy {
        rehearse_rollback: true,
        ..strategy()
    };
    let mut h = H::new(&fleet(&[("a", 1), ("b", 2)]), &s);
    let out = h.step(Event::Start);
    assert_eq!(
        applied_to(&out),
        vec![("a-0".to_owned(), rollout::Installed::Release(target()))]
    );
    let out = h.pass_batch(&out);
    assert_eq!(applied_to(&out), vec![("a-0".to_owned(), previous())]);
    let out = h.pass_batch(&out);
    assert_eq!(
        applied_to(&out),
        vec![("a-0".to_owned(), rollout::Installed::Release(target()))]
    );
    let out = h.pass_batch(&out);
    assert_eq!(
        applied_to(&out),
        vec![("b-0".to_owned(), rollout::Installed::Release(target()))]
    );
}

#[test]
fn batch_waits_for_min_healthy_time_and_checks() {
    let s = rollout::Strategy {
        checks: vec![Check {
            name: "smoke".into(),
            params: Default::default(),
            timeout: DurationMs::secs(5),
        }],
        ..strategy()
    };
    let mut h = H::new(&fleet(&[("a", 1), ("b", 2)]), &s);
    let started = h.step(Event::Start);
    let healthy = timer_after(&started, HEALTHY).unwrap();
    let out = h.ready_all(&started);
    let stable = timer_after(&out, STABLE).unwrap();
    assert!(applies(&out).is_empty());
    // The healthy deadline no longer matters, and unknown timers are stale.
    assert!(h.step(Event::TimerFired(healthy)).is_empty());
    assert!(h.step(Event::TimerFired(TimerId(999))).is_empty());
    h.advance(STABLE);
    let out = h.step(Event::TimerFired(stable));
    let run = out
        .iter()
        .find_map(|a| match a {
            Action::RunCheck { run, check, .. } if check.name == "smoke" => Some(*run),
            _ => None,
        })
        .expect("check runs after the stable period");
    assert!(applies(&out).is_empty(), "no apply before the check passes");
    let out = h.step(Event::CheckPassed { run });
    assert_eq!(
        applied_to(&out),
        vec![("b-0".to_owned(), rollout::Installed::Release(target()))]
    );
}

#[test]
fn losing_readiness_during_the_stable_period_restarts_it() {
    let mut h = H::new(&fleet(&[("a", 1), ("b", 1)]), &strategy());
    let started = h.step(Event::Start);
    let canary = applies(&started)[0].clone();
    let out = h.step(ready(&canary));
    let stable = timer_after(&out, STABLE).unwrap();
    let out = h.step(Event::InstanceUnreachable {
        instance: canary.0.clone(),
    });
    assert!(
        timer_after(&out, HEALTHY).is_some(),
        "waits for it again: {out:?}"
    );
    assert!(
        h.step(Event::TimerFired(stable)).is_empty(),
        "old stable timer is stale"
    );
    let out = h.step(ready(&canary));
    assert!(
        timer_after(&out, STABLE).is_some(),
        "stable period starts over"
    );
}

#[test]
fn failure_rolls_back_in_reverse_order_to_each_instances_own_previous() {
    let mut f = fleet(&[("a", 1), ("b", 3)]);
    let other = digest(0xc3);
    f.clusters[1].instances[1].release = rollout::Installed::Release(other);
    let mut h = H::new(&f, &strategy());
    let mut out = h.step(Event::Start);
    for _ in 0..3 {
        out = h.pass_batch(&out);
    }
    let b2 = applies(&out)[0].clone();
    assert_eq!(b2.0.as_str(), "b-2");
    let out = h.step(failed(&b2));
    assert!(out.iter().any(|a| matches!(
        a,
        Action::Emit(Notice::RollbackStarted { instances: 4, .. })
    )));
    assert_eq!(applied_to(&out), vec![("b-2".to_owned(), previous())]);
    // Budgets are per cluster: b's reverts go one at a time, a's may overlap.
    let mut order = applies(&out);
    let mut next = 0;
    loop {
        let out = h.step(ready(&order[next]));
        next += 1;
        if let Some(o) = finished(&out) {
            assert!(matches!(
                o,
                Outcome::RolledBack {
                    reason: Reason::InstanceFailed { .. }
                }
            ));
            break;
        }
        assert!(!applies(&out).iter().any(|(_, r, _)| r == &target()));
        order.extend(applies(&out));
    }
    let got: Vec<(String, rollout::Installed)> = order
        .iter()
        .map(|(i, r, _)| (i.as_str().to_owned(), *r))
        .collect();
    assert_eq!(
        got,
        vec![
            ("b-2".to_owned(), previous()),
            ("b-1".to_owned(), rollout::Installed::Release(other)),
            ("b-0".to_owned(), previous()),
            ("a-0".to_owned(), previous()),
        ]
    );
}

#[test]
fn a_failed_rollback_ends_failed_and_names_the_instances() {
    let mut h = H::new(&fleet(&[("a", 1), ("b", 1)]), &strategy());
    let started = h.step(Event::Start);
    let canary = applies(&started)[0].clone();
    let out = h.step(failed(&canary));
    let revert = applies(&out)[0].clone();
    assert_eq!(revert.1, previous());
    let out = h.step(failed(&revert));
    match finished(&out) {
        Some(Outcome::Failed { instances, reason }) => {
            assert_eq!(instances, &vec![id("a-0")]);
            assert!(matches!(reason, Reason::InstanceFailed { .. }));
        }
        other => panic!("expected failed, got {other:?}"),
    }
    assert!(
        h.step(Event::Start).is_empty(),
        "a finished engine is silent"
    );
}

#[test]
fn a_revert_that_never_reports_fails_at_its_deadline() {
    let mut h = H::new(&fleet(&[("a", 1), ("b", 1)]), &strategy());
    let started = h.step(Event::Start);
    let out = h.step(failed(&applies(&started)[0]));
    let deadline = timer_after(&out, HEALTHY).unwrap();
    h.advance(HEALTHY);
    let out = h.step(Event::TimerFired(deadline));
    assert!(
        matches!(finished(&out), Some(Outcome::Failed { instances, .. }) if instances == &vec![id("a-0")])
    );
}

#[test]
fn progress_deadline_bounds_the_deployment() {
    let mut h = H::new(&fleet(&[("a", 1), ("b", 1)]), &strategy());
    let started = h.step(Event::Start);
    let progress = timer_after(&started, PROGRESS).unwrap();
    h.advance(PROGRESS);
    let out = h.step(Event::TimerFired(progress));
    assert_eq!(applied_to(&out), vec![("a-0".to_owned(), previous())]);
    let out = h.step(ready(&applies(&out)[0]));
    assert!(matches!(
        finished(&out),
        Some(Outcome::RolledBack {
            reason: Reason::ProgressDeadline { .. }
        })
    ));
}

#[test]
fn unreachable_instance_blocks_its_batch_until_the_deadline() {
    let mut h = H::new(&fleet(&[("a", 1), ("b", 1)]), &strategy());
    let started = h.step(Event::Start);
    let healthy = timer_after(&started, HEALTHY).unwrap();
    let out = h.step(Event::InstanceUnreachable {
        instance: id("a-0"),
    });
    assert!(applies(&out).is_empty(), "no silent skipping");
    h.advance(HEALTHY);
    let out = h.step(Event::TimerFired(healthy));
    let reason = out.iter().find_map(|a| match a {
        Action::Emit(Notice::RollbackStarted { reason, .. }) => Some(reason.clone()),
        _ => None,
    });
    assert_eq!(
        reason,
        Some(Reason::HealthyDeadline {
            deadline: HEALTHY,
            instances: vec![id("a-0")],
            unreachable: vec![id("a-0")],
        })
    );
}

#[test]
fn pause_holds_the_next_batch_until_resume() {
    let mut h = H::new(&fleet(&[("a", 1), ("b", 1)]), &strategy());
    let started = h.step(Event::Start);
    let out = h.step(Event::Operator(Command::Pause));
    assert_eq!(out, vec![Action::Emit(Notice::Operator(Command::Pause))]);
    let out = h.pass_batch(&started);
    assert!(applies(&out).is_empty(), "paused: {out:?}");
    let out = h.step(Event::Operator(Command::Resume));
    assert_eq!(
        applied_to(&out),
        vec![("b-0".to_owned(), rollout::Installed::Release(target()))]
    );
}

#[test]
fn pause_between_clusters_waits_for_approval() {
    let s = rollout::Strategy {
        pause_between_clusters: true,
        ..strategy()
    };
    let mut h = H::new(&fleet(&[("a", 1), ("b", 1)]), &s);
    let started = h.step(Event::Start);
    let out = h.pass_batch(&started);
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Emit(Notice::AwaitingApproval { wave: 1, .. })))
    );
    assert!(applies(&out).is_empty());
    let out = h.step(Event::Operator(Command::Resume));
    assert!(matches!(
        out.as_slice(),
        [Action::Emit(Notice::Ignored { .. })]
    ));
    let out = h.step(Event::Operator(Command::Approve));
    assert_eq!(
        applied_to(&out),
        vec![("b-0".to_owned(), rollout::Installed::Release(target()))]
    );
}

#[test]
fn abort_stops_where_it_is() {
    let mut h = H::new(&fleet(&[("a", 1), ("b", 1)]), &strategy());
    h.step(Event::Start);
    let out = h.step(Event::Operator(Command::Abort));
    assert_eq!(
        finished(&out),
        Some(&Outcome::Aborted {
            reason: Reason::Operator,
            on_target: vec![],
            unsettled: vec![id("a-0")],
        })
    );
    assert!(applies(&out).is_empty());
    assert!(h.step(Event::Operator(Command::Resume)).is_empty());
}

#[test]
fn without_auto_rollback_a_failure_halts_until_the_operator_rolls_back() {
    let s = rollout::Strategy {
        auto_rollback: false,
        ..strategy()
    };
    let mut h = H::new(&fleet(&[("a", 1), ("b", 1)]), &s);
    let started = h.step(Event::Start);
    let out = h.step(failed(&applies(&started)[0]));
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Emit(Notice::Halted { .. })))
    );
    assert!(applies(&out).is_empty());
    // The report shows the halt as paused; resume says why it cannot
    // help instead of "not paused" (the analysis gate's halt, #16).
    let out = h.step(Event::Operator(Command::Resume));
    assert!(
        out.iter().any(|a| matches!(
            a,
            Action::Emit(Notice::Ignored { why, .. }) if why.starts_with("halted on a gate")
        )),
        "{out:?}"
    );
    let out = h.step(Event::Operator(Command::Rollback));
    assert_eq!(applied_to(&out), vec![("a-0".to_owned(), previous())]);
}

#[test]
fn stale_token_refusals_are_ignored_and_a_current_one_steps_down() {
    let mut h = H::new(&fleet(&[("a", 1), ("b", 1)]), &strategy());
    h.step(Event::Start);
    let stale = h.step(Event::AgentRefused {
        instance: id("a-0"),
        token: FencingToken(0),
    });
    assert!(stale.is_empty());
    let out = h.step(Event::AgentRefused {
        instance: id("a-0"),
        token: FencingToken(1),
    });
    assert_eq!(
        out,
        vec![Action::StepDown {
            token: FencingToken(1)
        }]
    );
    assert!(h.engine.is_done());
    assert!(h.step(Event::Operator(Command::Rollback)).is_empty());
}

#[test]
fn late_and_duplicate_reports_are_ignored() {
    let s = rollout::Strategy {
        rehearse_rollback: true,
        ..strategy()
    };
    let mut h = H::new(&fleet(&[("a", 1), ("b", 1)]), &s);
    let first = applies(&h.step(Event::Start))[0].clone();
    let out = h.pass_batch(&[Action::Apply {
        instance: first.0.clone(),
        release: first.1,
        token: FencingToken(1),
        apply: first.2,
    }]);
    let back = applies(&out)[0].clone();
    // A late duplicate of the first pass's ready must not count for the rehearsal.
    assert!(h.step(ready(&first)).is_empty());
    let out = h.step(ready(&back));
    assert!(timer_after(&out, STABLE).is_some());
    assert!(h.step(ready(&back)).is_empty(), "duplicate is a no-op");
}

#[test]
fn restored_engine_reissues_in_flight_work_idempotently() {
    let mut h = H::new(&fleet(&[("a", 1), ("b", 1)]), &strategy());
    let started = h.step(Event::Start);
    let canary = applies(&started)[0].clone();
    h.advance(DurationMs::secs(20));

    let json = serde_json::to_string(&h.engine).unwrap();
    let restored: Engine = serde_json::from_str(&json).unwrap();
    assert_eq!(
        serde_json::to_string(&restored).unwrap(),
        json,
        "round-trips exactly"
    );
    h.engine = restored;

    let out = h.step(Event::Recovered {
        token: FencingToken(2),
    });
    assert!(out.contains(&Action::Apply {
        instance: canary.0.clone(),
        release: rollout::Installed::Release(target()),
        token: FencingToken(2),
        apply: canary.2,
    }));
    assert!(timer_after(&out, DurationMs(PROGRESS.0 - 20_000)).is_some());
    assert!(timer_after(&out, DurationMs(HEALTHY.0 - 20_000)).is_some());
    // The agent answers the re-issued apply with the same id; it counts once.
    let out = h.step(ready(&canary));
    assert!(timer_after(&out, STABLE).is_some());
    assert!(h.step(ready(&canary)).is_empty());
    assert_eq!(h.engine.token(), FencingToken(2));
}
