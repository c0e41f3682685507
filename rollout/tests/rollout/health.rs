//! Health that sees crashes (issue #12 item 3, #18 item 7): every switched
//! instance stays watched until the deployment ends, and `bake_time` keeps
//! watching them after the last batch. State + event -> actions.

use rollout::{
    Action, ApplyId, Command, DurationMs, Event, FencingToken, InstanceId, Notice, Outcome, Status,
    Strategy, Watched,
};

use crate::helper::*;

type Applied = (InstanceId, rollout::Installed, ApplyId);

fn unhealthy(i: &Applied) -> Event {
    Event::InstanceUnhealthy {
        instance: i.0.clone(),
        apply: i.2,
        release: i.1,
        detail: "exited with code 70 and was restarted".into(),
    }
}

fn rollback_started(out: &[Action]) -> bool {
    out.iter()
        .any(|a| matches!(a, Action::Emit(Notice::RollbackStarted { .. })))
}

/// The watched instances, after checking that asking for each instance
/// alone (`Engine::watching`, the driver's incremental look) agrees.
fn watched_ids(h: &H) -> Vec<String> {
    let watched = h.engine.watched();
    for instance in &h.engine.plan().instances {
        let listed = watched.iter().find(|w| w.instance == instance.id);
        assert_eq!(
            h.engine.watching(&instance.id).as_ref(),
            listed,
            "{}",
            instance.id.as_str()
        );
    }
    watched
        .iter()
        .map(|w: &Watched| w.instance.as_str().to_owned())
        .collect()
}

/// Runs a one-cluster-plus-canary fleet (`a-0` canary, then `b-0`, `b-1`)
/// through every batch; returns the actions of the last batch's stable
/// timer and the applies of each batch.
fn through_last_batch(h: &mut H) -> (Vec<Action>, Vec<Applied>) {
    let mut all = Vec::new();
    let mut out = h.step(Event::Start);
    for _ in 0..3 {
        all.extend(applies(&out));
        out = h.pass_batch(&out);
    }
    (out, all)
}

/// Reproduces #12 item 3: a release that exits after READY=1 while its
/// batch is in `min_healthy_time` must fail the batch, not pass the gate.
#[test]
fn an_instance_that_restarts_during_min_healthy_time_fails_its_batch() {
    let mut h = H::new(&fleet(&[("a", 1), ("b", 2)]), &strategy());
    let started = h.step(Event::Start);
    let canary = applies(&started)[0].clone();
    h.ready_all(&started);
    assert_eq!(watched_ids(&h), vec!["a-0"]);
    h.advance(DurationMs::secs(4));
    let out = h.step(unhealthy(&canary));
    assert!(rollback_started(&out), "{out:?}");
    assert_eq!(applied_to(&out), vec![("a-0".to_owned(), previous())]);
    assert!(
        watched_ids(&h).is_empty(),
        "nothing is watched once rolling back"
    );
}

/// Reproduces #18 item 7: a canary that starts crashing while a later wave
/// is applied fails the deployment and every touched host is reverted.
#[test]
fn a_switched_host_crashing_while_a_later_wave_runs_rolls_everything_back() {
    let mut h = H::new(&fleet(&[("a", 1), ("b", 2)]), &strategy());
    let started = h.step(Event::Start);
    let canary = applies(&started)[0].clone();
    let wave2 = h.pass_batch(&started);
    assert_eq!(
        applied_to(&wave2),
        vec![("b-0".to_owned(), rollout::Installed::Release(target()))]
    );
    // b-0 is applying, not yet ready: only the canary is watched.
    assert_eq!(watched_ids(&h), vec!["a-0"]);
    let out = h.step(unhealthy(&canary));
    assert!(rollback_started(&out), "{out:?}");
    // Most recently touched first, within the budget of one: b-0 holds its
    // unit (its apply is in flight), so a-0 follows at once.
    assert_eq!(
        applied_to(&out),
        vec![
            ("b-0".to_owned(), previous()),
            ("a-0".to_owned(), previous())
        ]
    );
}

#[test]
fn every_instance_confirmed_ready_is_watched_until_the_end() {
    let mut h = H::new(&fleet(&[("a", 1), ("b", 2)]), &strategy());
    let started = h.step(Event::Start);
    assert!(watched_ids(&h).is_empty(), "nothing confirmed yet");
    let wave2 = h.pass_batch(&started);
    h.ready_all(&wave2);
    assert_eq!(watched_ids(&h), vec!["a-0", "b-0"]);
    let w = &h.engine.watched()[1];
    assert_eq!(
        (w.release, w.apply),
        (rollout::Installed::Release(target()), applies(&wave2)[0].2)
    );
}

#[test]
fn after_the_last_batch_the_deployment_bakes_then_succeeds() {
    let mut h = H::new(&fleet(&[("a", 1), ("b", 2)]), &strategy());
    let (out, _) = through_last_batch(&mut h);
    assert!(
        finished(&out).is_none(),
        "no success before the bake: {out:?}"
    );
    assert!(out.iter().any(|a| matches!(
        a,
        Action::Emit(Notice::BakeStarted { bake_time, instances: 3 }) if *bake_time == BAKE
    )));
    assert_eq!(h.engine.status(), Status::Baking { bake_time: BAKE });
    assert_eq!(watched_ids(&h), vec!["a-0", "b-0", "b-1"]);
    let bake = timer_after(&out, BAKE).unwrap();
    h.advance(BAKE);
    let out = h.step(Event::TimerFired(bake));
    assert_eq!(finished(&out), Some(&Outcome::Succeeded));
}

#[test]
fn a_crash_during_the_bake_rolls_back_every_touched_instance() {
    let mut h = H::new(&fleet(&[("a", 1), ("b", 2)]), &strategy());
    let (out, all) = through_last_batch(&mut h);
    let bake = timer_after(&out, BAKE).unwrap();
    h.advance(DurationMs::secs(5));
    let mut out = h.step(unhealthy(&all[1]));
    assert!(rollback_started(&out), "{out:?}");
    assert_eq!(applied_to(&out), vec![("b-1".to_owned(), previous())]);
    // The bake timer is gone with the bake.
    let late = h.step(Event::TimerFired(bake));
    assert!(finished(&late).is_none(), "{late:?}");
    // b-1, then b-0 and a-0 (other cluster) at once.
    for _ in 0..2 {
        out = h.ready_all(&out);
    }
    assert!(
        matches!(finished(&out), Some(Outcome::RolledBack { .. })),
        "{out:?}"
    );
}

#[test]
fn bake_time_zero_succeeds_right_after_the_last_batch() {
    let s = Strategy {
        bake_time: DurationMs(0),
        ..strategy()
    };
    let mut h = H::new(&fleet(&[("a", 1), ("b", 2)]), &s);
    let (out, _) = through_last_batch(&mut h);
    assert_eq!(finished(&out), Some(&Outcome::Succeeded));
}

#[test]
fn without_auto_rollback_a_crash_in_the_bake_halts_and_still_ends_by_itself() {
    let s = Strategy {
        auto_rollback: false,
        ..strategy()
    };
    let mut h = H::new(&fleet(&[("a", 1), ("b", 2)]), &s);
    let (_, all) = through_last_batch(&mut h);
    let out = h.step(unhealthy(&all[0]));
    assert!(matches!(h.engine.status(), Status::Halted(_)), "{out:?}");
    // The bake dropped the rollout's progress timer; the halt has its own.
    let deadline = timer_after(&out, PROGRESS).expect("a progress deadline for the halt");
    h.advance(PROGRESS);
    let out = h.step(Event::TimerFired(deadline));
    assert!(
        matches!(finished(&out), Some(Outcome::Aborted { .. })),
        "{out:?}"
    );
}

#[test]
fn the_bake_ignores_pause_and_obeys_abort_and_rollback() {
    let mut h = H::new(&fleet(&[("a", 1), ("b", 2)]), &strategy());
    through_last_batch(&mut h);
    let out = h.step(Event::Operator(Command::Pause));
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Emit(Notice::Ignored { .. })))
    );
    let mut rolled = H::new(&fleet(&[("a", 1), ("b", 2)]), &strategy());
    through_last_batch(&mut rolled);
    let out = rolled.step(Event::Operator(Command::Rollback));
    assert!(rollback_started(&out), "{out:?}");
    let out = h.step(Event::Operator(Command::Abort));
    assert!(
        matches!(finished(&out), Some(Outcome::Aborted { on_target, .. }) if on_target.len() == 3)
    );
}

#[test]
fn a_restored_engine_keeps_baking_and_watching() {
    let mut h = H::new(&fleet(&[("a", 1), ("b", 2)]), &strategy());
    through_last_batch(&mut h);
    h.advance(DurationMs::secs(10));
    let json = serde_json::to_string(&h.engine).unwrap();
    h.engine = serde_json::from_str(&json).unwrap();
    let out = h.step(Event::Recovered {
        token: FencingToken(2),
    });
    assert!(applies(&out).is_empty(), "nothing to re-apply: {out:?}");
    let bake = timer_after(&out, DurationMs::secs(20)).expect("the bake's time left");
    assert_eq!(watched_ids(&h), vec!["a-0", "b-0", "b-1"]);
    h.advance(DurationMs::secs(20));
    assert_eq!(
        finished(&h.step(Event::TimerFired(bake))),
        Some(&Outcome::Succeeded)
    );
}

#[test]
fn a_late_unhealthy_report_of_the_target_fails_even_after_a_new_apply() {
    // The canary crashed on the target, but the report arrives after the
    // rehearsal moved it back: still evidence against the release.
    let s = Strategy {
        rehearse_rollback: true,
        ..strategy()
    };
    let mut h = H::new(&fleet(&[("a", 1), ("b", 2)]), &s);
    let started = h.step(Event::Start);
    let first = applies(&started)[0].clone();
    let back = h.pass_batch(&started);
    assert_eq!(applied_to(&back), vec![("a-0".to_owned(), previous())]);
    let out = h.step(unhealthy(&first));
    assert!(rollback_started(&out), "{out:?}");
}
