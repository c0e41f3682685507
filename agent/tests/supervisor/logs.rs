//! The instance log: the app's output arrives, rotates by size, tails.

use std::time::Duration;

use agent::supervisor::{AlwaysReady, Instance, LogConfig};
use release::manifest::RestartPolicy;

use crate::helper::*;

#[tokio::test]
async fn stderr_and_stdout_reach_the_log_which_rotates_and_tails() {
    let f = Fixture::new();
    let script = "i=0; while [ $i -lt 500 ]; do echo \"err line $i\" >&2; i=$((i+1)); done; echo out-done; exec bin/sleep 1000";
    let mut spec = f.spec(&["bin/sh", "-c", script]);
    spec.log = LogConfig {
        max_bytes: 2048,
        keep: 2,
    };
    let path = spec.log_path();
    let inst = Instance::start(spec, Box::new(AlwaysReady)).unwrap();
    wait_for(DEADLINE, "the last line", || {
        inst.log_tail(1) == vec!["out-done".to_owned()]
    })
    .await;
    assert_eq!(inst.log_path(), path.as_path());
    let rotated = |n: u32| {
        let mut p = path.clone().into_os_string();
        p.push(format!(".{n}"));
        std::path::PathBuf::from(p)
    };
    // The app writes the file itself; the supervisor rotates it (copy +
    // truncate) at its next size check.
    wait_for(DEADLINE, "the rotation", || {
        rotated(1).exists() && std::fs::metadata(&path).is_ok_and(|m| m.len() <= 2048)
    })
    .await;
    let tail = inst.log_tail(3);
    assert_eq!(tail, vec!["err line 498", "err line 499", "out-done"]);
    assert!(!rotated(3).exists(), "only `keep` rotated files are kept");
    // The tail spans the rotation boundary.
    let many = inst.log_tail(60);
    assert_eq!(many.len(), 60);
    assert_eq!(many.last().map(String::as_str), Some("out-done"));
    inst.stop().await.unwrap();
}

#[tokio::test]
async fn a_shim_failure_is_one_clear_line_in_the_log() {
    let f = Fixture::new();
    // A file that exists but cannot be executed.
    std::fs::write(f.root().join("bin/notexec"), "not a program").unwrap();
    let mut spec = f.spec(&["bin/notexec"]);
    spec.run.restart = RestartPolicy::Never;
    let inst = Instance::start(spec, Box::new(AlwaysReady)).unwrap();
    let mut rx = inst.subscribe();
    let s = wait_status(&mut rx, DEADLINE, "failed", |s| {
        s.state == agent::supervisor::InstanceState::Failed
    })
    .await;
    assert_eq!(s.last_exit.as_deref(), Some("exited with code 127"));
    wait_for(Duration::from_secs(5), "shim line", || {
        inst.log_tail(10)
            .iter()
            .any(|l| l.starts_with("lockstep-exec-shim: cannot exec"))
    })
    .await;
    inst.stop().await.unwrap();
}

#[tokio::test]
async fn the_shim_warns_only_about_fds_the_agent_really_leaks() {
    let f = Fixture::new();
    let spec = f.spec(&["bin/sh", "-c", "echo started; exec bin/sleep 1000"]);
    let inst = Instance::start(spec, Box::new(AlwaysReady)).unwrap();
    wait_for(DEADLINE, "the app's first line", || {
        inst.log_tail(10).iter().any(|l| l == "started")
    })
    .await;
    // What this test process passes to every child without close-on-exec
    // (e.g. the test runner's jobserver pipes) may be named; nothing else,
    // in particular not the shim's own scan of /proc/self/fd.
    let leaked: Vec<i32> = inherited_fds()
        .iter()
        .filter_map(|fd| fd.parse().ok())
        .collect();
    for line in inst.log_tail(10) {
        let Some(list) = line.strip_prefix("lockstep-exec-shim: warning: fds [") else {
            continue;
        };
        let named = list.split(']').next().unwrap_or_default();
        for fd in named
            .split(", ")
            .filter_map(|s| s.trim().parse::<i32>().ok())
        {
            assert!(
                leaked.contains(&fd),
                "the shim named fd {fd}, which this process does not leak ({leaked:?}): {line}"
            );
        }
    }
    inst.stop().await.unwrap();
}
