//! Analysis gates in the engine (#16 deliver 2): when runs start, what
//! their verdicts do, and the `[[strategy.analysis]]` table.

use rollout::analysis::{Condition, OnInconclusive, Phase};
use rollout::{
    Action, Analysis, AnalysisRunId, AnalysisScope, Command, DurationMs, Event, FencingToken,
    Outcome, Reason, Status, Strategy, Verdict,
};

use crate::helper::*;

const QUERY: &str = r#"sum(rate(errors{host=~"$hosts"}[10s]))"#;

fn error_rate(phases: &[Phase], on_inconclusive: OnInconclusive) -> Analysis {
    Analysis {
        name: "error-rate".into(),
        query: QUERY.into(),
        success: Condition::parse("result < 0.05").unwrap(),
        baseline: None,
        interval: DurationMs::secs(1),
        count: 3,
        failure_limit: 0,
        inconclusive_limit: 0,
        phases: phases.to_vec(),
        on_inconclusive,
    }
}

fn with(analyses: Vec<Analysis>) -> Strategy {
    Strategy {
        analyses,
        ..strategy()
    }
}

fn runs(actions: &[Action]) -> Vec<(AnalysisRunId, AnalysisScope)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::RunAnalysis { run, scope, .. } => Some((*run, scope.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn the_canary_waits_for_its_analysis_over_its_own_hosts() {
    let s = with(vec![error_rate(&[Phase::Canary], OnInconclusive::Halt)]);
    let mut h = H::new(&fleet(&[("a", 1), ("b", 2)]), &s);
    let started = h.step(Event::Start);
    let out = h.pass_batch(&started);
    let started_runs = runs(&out);
    let [(run, scope)] = started_runs.as_slice() else {
        panic!("one analysis run after the stable period: {out:?}");
    };
    assert_eq!(scope.phase, Phase::Canary);
    assert_eq!(scope.instances, vec![id("a-0")]);
    assert_eq!(scope.release, target());
    assert!(applies(&out).is_empty(), "no apply before it passes");
    let out = h.step(Event::AnalysisDone {
        run: *run,
        verdict: Verdict::Passed,
    });
    assert_eq!(
        applied_to(&out),
        vec![("b-0".to_owned(), rollout::Installed::Release(target()))]
    );
    let out = h.pass_batch(&out);
    assert!(runs(&out).is_empty(), "canary-only analysis: {out:?}");
}

#[test]
fn a_failed_analysis_rolls_the_canary_back_with_the_query_and_values() {
    let s = with(vec![error_rate(&[Phase::Canary], OnInconclusive::Halt)]);
    let mut h = H::new(&fleet(&[("a", 1), ("b", 2)]), &s);
    let started = h.step(Event::Start);
    let out = h.pass_batch(&started);
    let (run, _) = runs(&out)[0].clone();
    let detail =
        "1 of 1 measurement(s) failed (failure_limit 0): 0.2 does not satisfy result < 0.05";
    let out = h.step(Event::AnalysisDone {
        run,
        verdict: Verdict::Failed(detail.into()),
    });
    assert_eq!(applied_to(&out), vec![("a-0".to_owned(), previous())]);
    let out = h.ready_all(&out);
    let Some(Outcome::RolledBack { reason }) = finished(&out) else {
        panic!("not rolled back: {out:?}");
    };
    let text = reason.to_string();
    assert!(
        text.contains("analysis error-rate failed (canary)"),
        "{text}"
    );
    assert!(
        text.contains("0.2 does not satisfy result < 0.05"),
        "{text}"
    );
    assert!(text.contains(QUERY), "{text}");
}

#[test]
fn an_inconclusive_analysis_halts_for_the_operator_even_with_auto_rollback() {
    let s = with(vec![error_rate(&[Phase::Canary], OnInconclusive::Halt)]);
    assert!(s.auto_rollback);
    let mut h = H::new(&fleet(&[("a", 1), ("b", 2)]), &s);
    let started = h.step(Event::Start);
    let out = h.pass_batch(&started);
    let (run, _) = runs(&out)[0].clone();
    let out = h.step(Event::AnalysisDone {
        run,
        verdict: Verdict::Inconclusive("connection refused".into()),
    });
    assert!(
        applies(&out).is_empty(),
        "neither passed nor rolled back: {out:?}"
    );
    assert!(finished(&out).is_none());
    let Status::Halted(Reason::AnalysisInconclusive { detail, .. }) = h.engine.status() else {
        panic!("not halted: {:?}", h.engine.status());
    };
    assert_eq!(detail, "connection refused");
    // The operator decides: here, roll back.
    let out = h.step(Event::Operator(Command::Rollback));
    assert_eq!(applied_to(&out), vec![("a-0".to_owned(), previous())]);
}

#[test]
fn an_inconclusive_analysis_rolls_back_when_configured_to() {
    let s = with(vec![error_rate(&[Phase::Canary], OnInconclusive::Rollback)]);
    let mut h = H::new(&fleet(&[("a", 1), ("b", 1)]), &s);
    let started = h.step(Event::Start);
    let out = h.pass_batch(&started);
    let (run, _) = runs(&out)[0].clone();
    let out = h.step(Event::AnalysisDone {
        run,
        verdict: Verdict::Inconclusive("no data".into()),
    });
    assert_eq!(applied_to(&out), vec![("a-0".to_owned(), previous())]);
}

#[test]
fn a_run_without_a_verdict_by_its_deadline_is_inconclusive() {
    let a = error_rate(&[Phase::Canary], OnInconclusive::Halt);
    let deadline = a.deadline();
    let mut h = H::new(&fleet(&[("a", 1), ("b", 1)]), &with(vec![a]));
    let started = h.step(Event::Start);
    let out = h.pass_batch(&started);
    let timer = timer_after(&out, deadline).expect("a deadline for the run");
    h.advance(deadline);
    let out = h.step(Event::TimerFired(timer));
    assert!(applies(&out).is_empty(), "{out:?}");
    assert!(
        matches!(h.engine.status(), Status::Halted(Reason::AnalysisInconclusive { detail, .. }) if detail.contains("no verdict within")),
        "{:?}",
        h.engine.status()
    );
}

#[test]
fn the_bake_lasts_until_its_analyses_pass_and_a_failure_there_rolls_back() {
    let s = with(vec![error_rate(&[Phase::Bake], OnInconclusive::Halt)]);
    let mut h = H::new(&fleet(&[("a", 1)]), &s);
    let started = h.step(Event::Start);
    let out = h.pass_batch(&started);
    let bake = timer_after(&out, BAKE).expect("bake timer");
    let started_runs = runs(&out);
    let [(run, scope)] = started_runs.as_slice() else {
        panic!("one bake run: {out:?}");
    };
    assert_eq!(scope.phase, Phase::Bake);
    assert_eq!(scope.instances, vec![id("a-0")]);
    h.advance(BAKE);
    let out = h.step(Event::TimerFired(bake));
    assert!(
        finished(&out).is_none(),
        "succeeded before its analysis passed"
    );
    let out = h.step(Event::AnalysisDone {
        run: *run,
        verdict: Verdict::Passed,
    });
    assert_eq!(finished(&out), Some(&Outcome::Succeeded));

    let mut h = H::new(&fleet(&[("a", 1)]), &s);
    let started = h.step(Event::Start);
    let out = h.pass_batch(&started);
    let (run, _) = runs(&out)[0].clone();
    let out = h.step(Event::AnalysisDone {
        run,
        verdict: Verdict::Failed("0.3 does not satisfy result < 0.05".into()),
    });
    assert_eq!(applied_to(&out), vec![("a-0".to_owned(), previous())]);
}

#[test]
fn the_baseline_form_measures_the_untouched_hosts_on_the_previous_release() {
    let mut a = error_rate(&[Phase::Canary], OnInconclusive::Halt);
    a.baseline = Some(rollout::analysis::Baseline { margin: 0.01 });
    let mut h = H::new(&fleet(&[("a", 1), ("b", 2)]), &with(vec![a]));
    let started = h.step(Event::Start);
    let out = h.pass_batch(&started);
    let (_, scope) = runs(&out)[0].clone();
    assert_eq!(
        scope.baseline,
        Some((vec![id("b-0"), id("b-1")], digest(0xb2)))
    );
}

#[test]
fn a_recovered_engine_runs_its_pending_analysis_again() {
    let s = with(vec![error_rate(&[Phase::Canary], OnInconclusive::Halt)]);
    let mut h = H::new(&fleet(&[("a", 1), ("b", 1)]), &s);
    let started = h.step(Event::Start);
    let out = h.pass_batch(&started);
    let (run, scope) = runs(&out)[0].clone();
    let json = serde_json::to_string(&h.engine).unwrap();
    h.engine = serde_json::from_str(&json).unwrap();
    let out = h.step(Event::Recovered {
        token: FencingToken(2),
    });
    assert_eq!(runs(&out), vec![(run, scope)]);
}

#[test]
fn the_strategy_table_parses_and_reports_every_problem() {
    let s = Strategy::from_toml(
        r#"
[strategy]
bake_time = "10s"
[[strategy.analysis]]
name = "error-rate"
query = 'sum(rate(demo_http_requests_total{code="500",host=~"$hosts"}[5s])) / sum(rate(demo_http_requests_total{host=~"$hosts"}[5s]))'
success = "result < 0.05"
interval = "1s"
count = 4
failure_limit = 1
phases = ["canary", "bake"]
on_inconclusive = "rollback"
"#,
    )
    .unwrap();
    let a = &s.analyses[0];
    assert_eq!(
        a.to_string(),
        "error-rate: result < 0.05, 4 x 1s, failure_limit 1, inconclusive_limit 0 [canary, bake], inconclusive: roll back"
    );
    assert_eq!(a.on_inconclusive, OnInconclusive::Rollback);

    let errs = Strategy::from_toml(
        r#"
[strategy]
[[strategy.analysis]]
name = "Bad Name"
query = "sum(x) by ($hosts)"
success = "result == 1"
interval = "10ms"
count = 0
baseline_margin = 0.1
phases = ["bake"]
"#,
    )
    .unwrap_err()
    .to_string();
    for want in [
        "name must be",
        "outside a double-quoted string",
        "success = \"result == 1\"",
        "interval = 10ms",
        "count = 0",
        "phases must be [\"canary\"] only",
    ] {
        assert!(errs.contains(want), "{want:?} missing from: {errs}");
    }
}

#[test]
fn the_plan_shows_each_analysis_with_its_query() {
    let s = with(vec![error_rate(
        &[Phase::Canary, Phase::Bake],
        OnInconclusive::Halt,
    )]);
    let text = make_plan(
        &fleet(&[("a", 1), ("b", 2)]),
        &s,
        rollout::Overlap::SocketHandover,
    )
    .render();
    assert!(
        text.contains("  error-rate: result < 0.05, 3 x 1s, failure_limit 0, inconclusive_limit 0 [canary, bake], inconclusive: halt\n"),
        "{text}"
    );
    assert!(text.contains(&format!("    query: {QUERY}\n")), "{text}");
}
