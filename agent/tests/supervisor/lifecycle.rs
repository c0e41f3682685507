//! Restart, backoff, crash loop, restart policy, graceful and forced stop,
//! liveness restarts, and that no process of a stopped group survives.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agent::supervisor::{AlwaysReady, Instance, InstanceState, ReadinessCheck};
use release::manifest::RestartPolicy;

use crate::helper::*;

#[tokio::test]
async fn a_killed_process_is_replaced_at_once_with_a_new_pid() {
    let f = Fixture::new();
    let inst = Instance::start(f.spec(&["bin/sleep", "1000"]), Box::new(AlwaysReady)).unwrap();
    let mut rx = inst.subscribe();
    let first = wait_status(&mut rx, DEADLINE, "ready", |s| s.ready && s.pid.is_some()).await;
    let old = first.pid.unwrap();
    wait_for(DEADLINE, "exec", || {
        cmdline(old) == vec!["bin/sleep", "1000"]
    })
    .await;
    // Let the run count as stable, so the restart is immediate.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    kill9(old);
    let next = wait_status(&mut rx, DEADLINE, "a new pid", |s| {
        s.pid.is_some_and(|p| p != old) && s.ready
    })
    .await;
    let new = next.pid.unwrap();
    wait_for(DEADLINE, "the replacement exec'd", || {
        cmdline(new) == vec!["bin/sleep", "1000"]
    })
    .await;
    assert_eq!(next.restarts, 1);
    assert_eq!(next.last_exit.as_deref(), Some("killed by SIGKILL"));
    assert!(!alive(old));
    inst.stop().await.unwrap();
}

#[tokio::test]
async fn the_demo_app_crashing_is_restarted() {
    let f = Fixture::new();
    let spec = f.spec(&[
        "bin/demo-app",
        "--listen",
        "127.0.0.1:0",
        "--crash-after-ms",
        "200",
    ]);
    let inst = Instance::start(spec, Box::new(AlwaysReady)).unwrap();
    let mut rx = inst.subscribe();
    let s = wait_status(&mut rx, DEADLINE, "two restarts", |s| s.restarts >= 2).await;
    assert_eq!(s.last_exit.as_deref(), Some("exited with code 70"));
    inst.stop().await.unwrap();
}

#[tokio::test]
async fn a_crash_loop_is_reported_and_backoff_continues() {
    let f = Fixture::new();
    let inst = Instance::start(f.spec(&["bin/sh", "-c", "exit 1"]), Box::new(AlwaysReady)).unwrap();
    let mut rx = inst.subscribe();
    let looping = wait_status(&mut rx, DEADLINE, "crash_looping", |s| {
        s.state == InstanceState::CrashLooping
    })
    .await;
    assert!(looping.restarts >= 5, "{looping:?}");
    // Backoff continues: it is restarted again, still crash-looping.
    let later = wait_status(&mut rx, DEADLINE, "another restart", |s| {
        s.restarts > looping.restarts
    })
    .await;
    assert_eq!(later.state, InstanceState::CrashLooping);
    assert_eq!(later.last_exit.as_deref(), Some("exited with code 1"));
    let tail = inst.log_tail(20).join("\n");
    assert!(tail.contains("exited with code 1"), "{tail}");
    inst.stop().await.unwrap();
}

#[tokio::test]
async fn fail_at_start_crash_loops_too() {
    let f = Fixture::new();
    let spec = f.spec(&["bin/demo-app", "--listen", "127.0.0.1:0", "--fail-at-start"]);
    let inst = Instance::start(spec, Box::new(AlwaysReady)).unwrap();
    let mut rx = inst.subscribe();
    wait_status(&mut rx, DEADLINE, "crash_looping", |s| {
        s.state == InstanceState::CrashLooping
    })
    .await;
    inst.stop().await.unwrap();
}

#[tokio::test]
async fn restart_never_leaves_a_failed_process_down() {
    let f = Fixture::new();
    let mut spec = f.spec(&["bin/sh", "-c", "exit 3"]);
    spec.run.restart = RestartPolicy::Never;
    let inst = Instance::start(spec, Box::new(AlwaysReady)).unwrap();
    let mut rx = inst.subscribe();
    let s = wait_status(&mut rx, DEADLINE, "failed", |s| {
        s.state == InstanceState::Failed
    })
    .await;
    assert_eq!(s.restarts, 0);
    assert_eq!(s.pid, None);
    assert_eq!(s.last_exit.as_deref(), Some("exited with code 3"));
    let report = inst.stop().await.unwrap();
    assert_eq!(report.exit.as_deref(), Some("exited with code 3"));
}

#[tokio::test]
async fn on_failure_leaves_a_clean_exit_stopped() {
    let f = Fixture::new();
    let mut spec = f.spec(&["bin/sh", "-c", "exit 0"]);
    spec.run.restart = RestartPolicy::OnFailure;
    let inst = Instance::start(spec, Box::new(AlwaysReady)).unwrap();
    let mut rx = inst.subscribe();
    let s = wait_status(&mut rx, DEADLINE, "stopped", |s| {
        s.state == InstanceState::Stopped
    })
    .await;
    assert_eq!(s.restarts, 0);
    inst.stop().await.unwrap();
}

#[tokio::test]
async fn graceful_stop_honours_the_stop_signal() {
    let f = Fixture::new();
    let spec = f.spec(&["bin/demo-app", "--listen", "127.0.0.1:0"]);
    let inst = Instance::start(spec, Box::new(AlwaysReady)).unwrap();
    let mut rx = inst.subscribe();
    let s = wait_status(&mut rx, DEADLINE, "running", |s| s.pid.is_some()).await;
    let pid = s.pid.unwrap();
    // Give it time to install its SIGTERM handler.
    wait_for(DEADLINE, "demo-app startup line", || {
        inst.log_tail(50)
            .iter()
            .any(|l| l.contains("demo-app started"))
    })
    .await;
    let report = inst.stop().await.unwrap();
    assert_eq!(
        report.exit.as_deref(),
        Some("exited with code 0"),
        "{report:?}"
    );
    assert!(!report.killed);
    assert!(report.took < Duration::from_secs(5), "{report:?}");
    assert!(!alive(pid));
}

#[tokio::test]
async fn an_app_ignoring_sigterm_is_killed_after_the_stop_timeout() {
    let f = Fixture::new();
    let mut spec = f.spec(&["bin/sh", "-c", "trap '' TERM; echo trapped; sleep 1000"]);
    spec.run.stop_timeout = Duration::from_millis(500);
    let inst = Instance::start(spec, Box::new(AlwaysReady)).unwrap();
    let mut rx = inst.subscribe();
    let pid = wait_status(&mut rx, DEADLINE, "running", |s| s.pid.is_some())
        .await
        .pid
        .unwrap();
    wait_for(DEADLINE, "the trap", || {
        inst.log_tail(5).iter().any(|l| l == "trapped")
    })
    .await;
    let members = group_members(pid);
    let report = inst.stop().await.unwrap();
    assert!(report.killed, "{report:?}");
    assert_eq!(report.exit.as_deref(), Some("killed by SIGKILL"));
    assert!(report.took >= Duration::from_millis(500), "{report:?}");
    assert!(report.took < Duration::from_secs(5), "{report:?}");
    for p in members {
        assert!(!alive(p), "pid {p} survived");
    }
}

#[tokio::test]
async fn no_process_of_the_group_survives_stop() {
    let f = Fixture::new();
    let spec = f.spec(&["bin/sh", "-c", "bin/sleep 1000 & exec bin/sleep 1001"]);
    let inst = Instance::start(spec, Box::new(AlwaysReady)).unwrap();
    let mut rx = inst.subscribe();
    let pid = wait_status(&mut rx, DEADLINE, "running", |s| s.pid.is_some())
        .await
        .pid
        .unwrap();
    wait_for(DEADLINE, "main + grandchild in the group", || {
        group_members(pid).len() == 2
    })
    .await;
    let members = group_members(pid);
    assert!(members.contains(&pid));
    // Its own session: sid == pid.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    assert_eq!(
        after.split(' ').nth(3),
        Some(pid.to_string().as_str()),
        "session id"
    );
    inst.stop().await.unwrap();
    for p in &members {
        assert!(!alive(*p), "pid {p} of the group survived stop");
    }
    assert!(group_members(pid).is_empty());
}

#[tokio::test]
async fn a_crash_takes_the_rest_of_its_group_with_it() {
    let f = Fixture::new();
    let spec = f.spec(&["bin/sh", "-c", "bin/sleep 1000 & exec bin/sleep 1001"]);
    let inst = Instance::start(spec, Box::new(AlwaysReady)).unwrap();
    let mut rx = inst.subscribe();
    let pid = wait_status(&mut rx, DEADLINE, "running", |s| s.pid.is_some())
        .await
        .pid
        .unwrap();
    wait_for(DEADLINE, "main + grandchild", || {
        group_members(pid).len() == 2
    })
    .await;
    let members = group_members(pid);
    kill9(pid);
    wait_status(&mut rx, DEADLINE, "restarted", |s| {
        s.restarts == 1 && s.pid.is_some()
    })
    .await;
    wait_for(DEADLINE, "old group gone", || {
        members.iter().all(|p| !alive(*p))
    })
    .await;
    inst.stop().await.unwrap();
}

#[tokio::test]
async fn dropping_the_handle_stops_the_instance() {
    let f = Fixture::new();
    let inst = Instance::start(f.spec(&["bin/sleep", "1000"]), Box::new(AlwaysReady)).unwrap();
    let mut rx = inst.subscribe();
    let pid = wait_status(&mut rx, DEADLINE, "running", |s| s.pid.is_some())
        .await
        .pid
        .unwrap();
    drop(inst);
    wait_status(&mut rx, DEADLINE, "stopped", |s| {
        s.state == InstanceState::Stopped
    })
    .await;
    wait_for(DEADLINE, "process gone", || !alive(pid)).await;
    // The task ends: the channel closes once the driver is gone.
    tokio::time::timeout(DEADLINE, async { while rx.changed().await.is_ok() {} })
        .await
        .expect("instance task still running after its handle was dropped");
}

/// Passes until told to fail.
struct Switch(Arc<AtomicBool>);

impl ReadinessCheck for Switch {
    fn check(
        &mut self,
        _pid: u32,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        let ok = self.0.load(Ordering::SeqCst);
        Box::pin(async move {
            if ok {
                Ok(())
            } else {
                Err("switched off".to_owned())
            }
        })
    }
}

#[tokio::test]
async fn a_ready_instance_failing_liveness_is_restarted() {
    let f = Fixture::new();
    let healthy = Arc::new(AtomicBool::new(true));
    let inst = Instance::start(
        f.spec(&["bin/sleep", "1000"]),
        Box::new(Switch(healthy.clone())),
    )
    .unwrap();
    let mut rx = inst.subscribe();
    let first = wait_status(&mut rx, DEADLINE, "ready", |s| {
        s.state == InstanceState::Ready
    })
    .await;
    healthy.store(false, Ordering::SeqCst);
    wait_status(&mut rx, DEADLINE, "unhealthy", |s| {
        s.state == InstanceState::Unhealthy
    })
    .await;
    wait_status(&mut rx, DEADLINE, "restart", |s| s.restarts == 1).await;
    healthy.store(true, Ordering::SeqCst);
    let s = wait_status(&mut rx, DEADLINE, "ready again", |s| {
        s.state == InstanceState::Ready
    })
    .await;
    assert_ne!(s.pid, first.pid);
    inst.stop().await.unwrap();
}
