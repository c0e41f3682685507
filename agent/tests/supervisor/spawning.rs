//! What the app is exec'd with: argv without a shell, the exact
//! environment, the working dir, its own session, user drop.

use agent::supervisor::{AlwaysReady, Instance, InstanceState};
use release::manifest::RestartPolicy;
use release::paths::RelativePath;

use crate::helper::*;

#[tokio::test]
async fn argv_is_never_passed_through_a_shell() {
    let f = Fixture::new();
    let mut spec = f.spec(&["bin/echo", "$(touch pwned)", "a;b", "*", "`id`"]);
    spec.run.restart = RestartPolicy::Never;
    let inst = Instance::start(spec, Box::new(AlwaysReady)).unwrap();
    let mut rx = inst.subscribe();
    wait_status(&mut rx, DEADLINE, "exit", |s| {
        s.state == InstanceState::Stopped
    })
    .await;
    wait_for(DEADLINE, "echo output", || {
        inst.log_tail(10)
            .iter()
            .any(|l| l == "$(touch pwned) a;b * `id`")
    })
    .await;
    assert!(!f.root().join("pwned").exists());
    inst.stop().await.unwrap();
}

#[tokio::test]
async fn the_environment_is_exactly_the_manifest_and_the_agent_variables() {
    let f = Fixture::new();
    std::fs::create_dir_all(f.root().join("work")).unwrap();
    let mut spec = f.spec(&["bin/sleep", "1000"]);
    spec.run.env.insert("APP_MODE".into(), "blue".into());
    spec.run.working_dir = RelativePath::from_bytes(b"work").unwrap();
    spec.extra_env
        .insert("NOTIFY_SOCKET".into(), "/run/x.sock".into());
    let inst = Instance::start(spec, Box::new(AlwaysReady)).unwrap();
    let mut rx = inst.subscribe();
    let pid = wait_status(&mut rx, DEADLINE, "running", |s| s.pid.is_some())
        .await
        .pid
        .unwrap();
    wait_for(DEADLINE, "exec", || {
        cmdline(pid) == vec!["bin/sleep", "1000"]
    })
    .await;
    let env = environ(pid);
    let keys: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        vec![
            "APP_MODE",
            "LOCKSTEP_INSTANCE",
            "LOCKSTEP_RELEASE_DIGEST",
            "LOCKSTEP_RELEASE_VERSION",
            "LOCKSTEP_SERVICE",
            "NOTIFY_SOCKET",
            "PATH"
        ],
        "{env:?}"
    );
    assert_eq!(env["LOCKSTEP_SERVICE"], "app");
    assert_eq!(env["LOCKSTEP_RELEASE_VERSION"], "1.0.0");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        f.root().join("work").canonicalize().unwrap()
    );
    // Only stdio is open (plus what this test process itself leaks to every
    // child without close-on-exec): no agent fd, no control socket; stdin is /dev/null.
    let leaked = inherited_fds();
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for fd in &fds {
        assert!(
            ["0", "1", "2"].contains(&fd.as_str()) || leaked.contains(fd),
            "fd {fd} open in the app: {fds:?} (inherited {leaked:?})"
        );
    }
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap(),
        std::path::Path::new("/dev/null")
    );
    inst.stop().await.unwrap();
}

#[tokio::test]
async fn user_and_group_are_dropped() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to change user");
        return;
    }
    let Some(nobody) = nix::unistd::User::from_name("nobody").unwrap() else {
        eprintln!("skipped: no user `nobody`");
        return;
    };
    let f = Fixture::new();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(f.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut spec = f.spec(&["bin/sleep", "1000"]);
    spec.run.user = Some("nobody".into());
    let inst = Instance::start(spec, Box::new(AlwaysReady)).unwrap();
    let mut rx = inst.subscribe();
    let pid = wait_status(&mut rx, DEADLINE, "running", |s| s.pid.is_some())
        .await
        .pid
        .unwrap();
    wait_for(DEADLINE, "exec", || {
        cmdline(pid) == vec!["bin/sleep", "1000"]
    })
    .await;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap()
            .to_owned()
    };
    let uid = nobody.uid.as_raw().to_string();
    let gid = nobody.gid.as_raw().to_string();
    assert!(
        line("Uid:").split_whitespace().skip(1).all(|v| v == uid),
        "{}",
        line("Uid:")
    );
    assert!(
        line("Gid:").split_whitespace().skip(1).all(|v| v == gid),
        "{}",
        line("Gid:")
    );
    assert_eq!(environ(pid)["USER"], "nobody");
    inst.stop().await.unwrap();
}

#[tokio::test]
async fn an_unknown_user_fails_before_exec_with_a_clear_line() {
    let f = Fixture::new();
    let mut spec = f.spec(&["bin/sleep", "1000"]);
    spec.run.user = Some("no-such-user-lockstep".into());
    spec.run.restart = RestartPolicy::Never;
    let inst = Instance::start(spec, Box::new(AlwaysReady)).unwrap();
    let mut rx = inst.subscribe();
    wait_status(&mut rx, DEADLINE, "failed", |s| {
        s.state == InstanceState::Failed
    })
    .await;
    wait_for(DEADLINE, "reason", || {
        inst.log_tail(10)
            .iter()
            .any(|l| l == "lockstep-exec-shim: unknown user `no-such-user-lockstep`")
    })
    .await;
    inst.stop().await.unwrap();
}

#[tokio::test]
async fn a_missing_program_is_a_start_error() {
    let f = Fixture::new();
    let err = Instance::start(f.spec(&["bin/nope"]), Box::new(AlwaysReady)).unwrap_err();
    assert!(err.to_string().contains("bin/nope"), "{err}");
}
