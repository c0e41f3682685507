//! What a deployment waits for, with deadlines (#17 item 2: gates with
//! their countdowns): `Engine::waits` names each gate and when its timer
//! ends, so a page can count down without asking every second.

use rollout::{Command, DurationMs, Event, Millis, Wait, WaitKind};

use crate::helper::*;

fn kinds(waits: &[Wait]) -> Vec<WaitKind> {
    waits.iter().map(|w| w.kind).collect()
}

fn until(waits: &[Wait], kind: WaitKind) -> Option<Millis> {
    waits.iter().find(|w| w.kind == kind).and_then(|w| w.until)
}

#[test]
fn a_batch_waits_for_ready_then_its_stable_period_each_with_its_deadline() {
    let mut h = H::new(&fleet(&[("a", 1), ("b", 1)]), &strategy());
    assert!(h.engine.waits().is_empty(), "not started");
    h.advance(DurationMs::secs(1));
    let started = h.step(Event::Start);
    let waits = h.engine.waits();
    assert_eq!(kinds(&waits), [WaitKind::Ready, WaitKind::Progress]);
    assert_eq!(
        until(&waits, WaitKind::Ready),
        Some(Millis(1_000 + HEALTHY.0))
    );
    assert_eq!(
        until(&waits, WaitKind::Progress),
        Some(Millis(1_000 + PROGRESS.0))
    );
    h.advance(DurationMs::secs(2));
    h.ready_all(&started);
    let waits = h.engine.waits();
    assert_eq!(kinds(&waits), [WaitKind::Stable, WaitKind::Progress]);
    assert_eq!(
        until(&waits, WaitKind::Stable),
        Some(Millis(3_000 + STABLE.0))
    );
    assert!(
        waits[0].detail.contains("min_healthy_time 10s"),
        "{}",
        waits[0].detail
    );
}

#[test]
fn an_approval_and_a_pause_wait_for_an_operator_without_a_deadline() {
    let s = rollout::Strategy {
        pause_between_clusters: true,
        ..strategy()
    };
    let mut h = H::new(&fleet(&[("a", 1), ("b", 1)]), &s);
    let started = h.step(Event::Start);
    h.pass_batch(&started);
    let waits = h.engine.waits();
    assert_eq!(waits[0].kind, WaitKind::Approval);
    assert_eq!(waits[0].until, None);
    assert!(
        waits[0].detail.contains("before cluster b"),
        "{}",
        waits[0].detail
    );
    h.step(Event::Operator(Command::Pause));
    assert_eq!(
        kinds(&h.engine.waits())[..2],
        [WaitKind::Paused, WaitKind::Approval]
    );
}

#[test]
fn the_bake_counts_down_and_nothing_is_waited_for_once_finished() {
    let mut h = H::new(&fleet(&[("a", 1), ("b", 1)]), &strategy());
    let mut out = h.step(Event::Start);
    for _ in 0..2 {
        out = h.pass_batch(&out);
    }
    let waits = h.engine.waits();
    assert_eq!(kinds(&waits), [WaitKind::Bake]);
    assert_eq!(waits[0].until, Some(Millis(h.now + BAKE.0)));
    assert!(
        waits[0].detail.contains("bake_time 30s"),
        "{}",
        waits[0].detail
    );
    let bake = timer_after(&out, BAKE).unwrap();
    h.advance(BAKE);
    let out = h.step(Event::TimerFired(bake));
    assert!(finished(&out).is_some());
    assert!(h.engine.waits().is_empty());
}
