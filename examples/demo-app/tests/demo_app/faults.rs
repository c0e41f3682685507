//! Injected faults: slow readiness, turning unhealthy, crashing.

use std::time::{Duration, Instant};

use crate::helper::{AppBuilder, DEADLINE, wait_for};

#[test]
fn ready_after_answers_503_then_200() {
    let app = AppBuilder::new()
        .arg("--ready-after-ms")
        .arg("3000")
        .spawn();
    let first = app.first_healthz();
    assert_eq!(first.status, 503, "{first:?}");
    assert!(first.body.starts_with("not ready"), "{first:?}");
    // A warming instance still does the work.
    assert_eq!(app.post("/publish", "early").unwrap().status, 200);
    app.wait_healthy();
    assert!(
        app.spawned.elapsed() >= Duration::from_millis(3000),
        "ready before ready_after_ms"
    );
}

#[test]
fn ready_after_from_config() {
    let app = AppBuilder::new()
        .config("[faults]\nready_after_ms = 3000\n")
        .spawn();
    assert_eq!(app.first_healthz().status, 503);
    app.wait_healthy();
}

#[test]
fn unhealthy_after_answers_200_then_503() {
    let app = AppBuilder::new()
        .arg("--unhealthy-after-ms")
        .arg("3000")
        .spawn();
    let first = app.first_healthz();
    assert_eq!(first.status, 200, "{first:?}");
    wait_for("/healthz 503", DEADLINE, || {
        app.get("/healthz").is_ok_and(|r| r.status == 503)
    });
    let h = app.get("/healthz").unwrap();
    assert!(h.body.starts_with("unhealthy"), "{h:?}");
    let p = app.post("/publish", "x").unwrap();
    assert_eq!(p.status, 503, "an unhealthy instance refuses work: {p:?}");
}

#[test]
fn flags_override_config_faults() {
    // The config would make it unhealthy at once; the flag pushes that away.
    let app = AppBuilder::new()
        .config("[faults]\nunhealthy_after_ms = 0\n")
        .arg("--unhealthy-after-ms")
        .arg("600000")
        .spawn();
    assert_eq!(app.first_healthz().status, 200);
}

#[test]
fn crash_after_exits_70_by_itself() {
    let mut app = AppBuilder::new().arg("--crash-after-ms").arg("500").spawn();
    let started = Instant::now();
    let status = app.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(70), "stderr: {}", app.stderr());
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(
        app.stderr().contains("crash_after fault"),
        "{}",
        app.stderr()
    );
}

#[test]
fn crash_exit_code_sets_the_code_of_the_crash() {
    let mut app = AppBuilder::new()
        .config("[faults]\ncrash_after_ms = 300\ncrash_exit_code = 0\n")
        .spawn();
    let status = app.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "stderr: {}", app.stderr());
    let mut flagged = AppBuilder::new()
        .arg("--crash-after-ms")
        .arg("300")
        .arg("--crash-exit-code")
        .arg("3")
        .spawn();
    assert_eq!(flagged.wait_exit(DEADLINE).code(), Some(3));
}

/// #16: a release that starts and becomes ready but answers a share of its
/// requests with 500 (what an analysis gate must catch where readiness
/// cannot). `/metrics` counts every answer by route and code.
#[test]
fn error_percent_answers_that_share_with_500_and_metrics_count_it() {
    let app = AppBuilder::new()
        .config("[faults]\nerror_percent = 20\n")
        .spawn();
    app.wait_healthy();
    let codes: Vec<u16> = (0..10)
        .map(|i| app.post("/publish", &format!("m{i}")).unwrap().status)
        .collect();
    assert_eq!(codes.iter().filter(|c| **c == 500).count(), 2, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 8, "{codes:?}");
    let metrics = app.get("/metrics").unwrap();
    assert_eq!(metrics.status, 200);
    for line in [
        r#"demo_http_requests_total{route="/publish",code="200"} 8"#,
        r#"demo_http_requests_total{route="/publish",code="500"} 2"#,
        r#"demo_http_request_duration_seconds_count{route="/publish"} 10"#,
    ] {
        assert!(metrics.body.contains(line), "{line} in {}", metrics.body);
    }
}
