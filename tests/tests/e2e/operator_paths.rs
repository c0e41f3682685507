//! The operator's paths through the coordinator (#12 items 2, 7, 8, 9 and
//! the coordinator side of 10), with real etcd, coordinators, agents and
//! demo apps: stopping a leader, deadlines on every call, what history
//! keeps, and what `rollback` goes back to.

use std::time::Duration;

use lockstep_tests::operator::{
    active_deployment, agents_known, deploy, deployment_id, every_host_serves, finished,
    fleet_reporting, history_entry, leader_and_standby, lockstep_json, on_target, push, record,
    served, start_deploy, strategy, text, until_leading,
};
use lockstep_tests::{
    CoordinatorFixture, DemoRelease, EtcdCluster, FleetFixture, lockstep, wait_for,
};
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(120);
const TTL_SECS: u64 = 3;
const LAYOUT: &[(&str, &str)] = &[("s-1", "s"), ("s-2", "s"), ("t-1", "t")];

/// Reproduces #12 item 7: the leading coordinator never exited on SIGTERM
/// while agents held Report streams (it kept the port open and stopped
/// answering), and a `deploy --wait` running at that moment printed
/// `finished (succeeded)`, then exited 69. Now the leader exits within the
/// 5 s the issue asks for, and `deploy --wait` follows the deployment to
/// the standby and ends with its real outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_mid_deploy_exits_promptly_and_deploy_wait_follows_the_standby() {
    let etcd = EtcdCluster::single().await.unwrap();
    let (mut first, second) = leader_and_standby(&etcd, TTL_SECS).await.unwrap();
    let urls = vec![first.url(), second.url()];
    let fleet = FleetFixture::start(LAYOUT, &etcd.endpoints(), &urls)
        .await
        .unwrap();
    // Every agent holds a Report stream to each coordinator.
    agents_known(&[first.url()], LAYOUT.len()).await.unwrap();
    agents_known(&[second.url()], LAYOUT.len()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let v1 = DemoRelease::new("1.0.0", 1).build(work.path()).unwrap();
    let v2 = DemoRelease::new("2.0.0", 1).build(work.path()).unwrap();
    let fast = strategy(work.path(), "fast", "200ms").unwrap();
    let d1 = push(&urls, &v1).await.unwrap();
    let id = start_deploy(&urls, &d1, &fast).await.unwrap();
    assert_eq!(finished(&etcd, &id).await.unwrap()["state"], "succeeded");

    // Each batch stays under observation for a while: the leader is
    // stopped mid-rollout, with the operator's `deploy --wait` attached.
    let d2 = push(&urls, &v2).await.unwrap();
    let slow = strategy(work.path(), "slow", "3s").unwrap();
    let waiting = tokio::spawn({
        let urls = urls.clone();
        async move { deploy(&urls, &d2, &slow, &["--wait"]).await }
    });
    let id = wait_for("the deployment to be under way", DEADLINE, || async {
        let id = active_deployment(&etcd)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no active deployment yet")?;
        let r = record(&etcd, &id).await.map_err(|e| e.to_string())?;
        if r["state"] == "running" && on_target(&r) >= 1 {
            Ok(id)
        } else {
            Err(format!("{r}"))
        }
    })
    .await
    .unwrap();
    let stopped_at = Instant::now();
    first.begin_stop().unwrap();

    let output = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("deploy --wait ended")
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        stdout.contains(&format!("deployment {id} succeeded")),
        "{}",
        text(&output)
    );
    // The issue asks for 5 s; 5 more for a loaded 2-core machine to
    // schedule the exit (the coordinator's own budget is under 5 s).
    let bound = Duration::from_secs(10);
    let left = bound.saturating_sub(stopped_at.elapsed());
    let exit = first.wait_exit(left).await;
    assert!(
        exit.is_ok(),
        "the leader did not exit within {bound:?} of SIGTERM: {exit:?}\n{}",
        first.log_text()
    );
    assert_eq!(finished(&etcd, &id).await.unwrap()["state"], "succeeded");
    every_host_serves(&fleet, "2.0.0").await.unwrap();
}

/// How long a CLI call may take against a hung etcd or coordinator: its
/// default `--timeout` is 5 s (connect, then request); the rest is margin
/// for a loaded 2-core machine. Without deadlines the calls never return.
const HUNG_BOUND: Duration = Duration::from_secs(30);

/// Runs `lockstep ARGS` against `urls` and fails unless it exits 69 within
/// [`HUNG_BOUND`], saying `why` on stderr.
async fn exits_unavailable(urls: &[String], args: &[&str], what: &str, why: &str) {
    let output = tokio::time::timeout(HUNG_BOUND, lockstep(urls, args))
        .await
        .unwrap_or_else(|_| panic!("`lockstep {}` hung with {what}", args.join(" ")))
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(69),
        "`lockstep {}` with {what}: {}",
        args.join(" "),
        text(&output)
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(why),
        "`lockstep {}` with {what} does not say {why:?}: {}",
        args.join(" "),
        text(&output)
    );
}

/// Reproduces #12 item 8: with etcd hung (SIGSTOP), `lockstep status` and
/// `lockstep deploy` never returned, though the guide promises exit 69; a
/// hung coordinator hung them the same way. Every operator call now has a
/// deadline, and the coordinator answers UNAVAILABLE when etcd does not.
#[tokio::test]
async fn a_hung_etcd_or_coordinator_gets_exit_69_instead_of_a_hang() {
    let mut etcd = EtcdCluster::single().await.unwrap();
    let coordinator = CoordinatorFixture::start(&etcd.endpoints(), TTL_SECS)
        .await
        .unwrap();
    let urls = vec![coordinator.url()];
    until_leading(&etcd, &coordinator.url()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let v1 = DemoRelease::new("1.0.0", 1).build(work.path()).unwrap();
    let digest = push(&urls, &v1).await.unwrap();
    let fast = strategy(work.path(), "fast", "200ms").unwrap();
    let fast = fast.display().to_string();
    let deploy_args = [
        "deploy",
        "--service",
        "demo",
        "--release",
        digest.as_str(),
        "--strategy",
        fast.as_str(),
    ];

    etcd.pause(0).unwrap();
    // The coordinator itself answers, naming etcd.
    let etcd_hung = "etcd did not answer";
    exits_unavailable(&urls, &["status"], "etcd stopped", etcd_hung).await;
    exits_unavailable(&urls, &deploy_args, "etcd stopped", etcd_hung).await;
    etcd.resume(0).unwrap();

    coordinator.pause().unwrap();
    let no_answer = "no answer within";
    exits_unavailable(&urls, &["status"], "the coordinator stopped", no_answer).await;
    exits_unavailable(&urls, &deploy_args, "the coordinator stopped", no_answer).await;
    coordinator.resume().unwrap();
}

/// etcd, one coordinator that leads, and a fleet reporting to it.
async fn stage(layout: &[(&str, &str)]) -> (EtcdCluster, CoordinatorFixture, FleetFixture) {
    fleet_reporting(layout, TTL_SECS).await.unwrap()
}

/// Reproduces #12 item 9: after `deploy --reason JIRA-123`, `history`
/// showed `"reason":"succeeded"`: the outcome overwrote the operator's
/// reason. Both are kept now, as separate fields, in `history` and
/// `status ID`.
#[tokio::test]
async fn the_operators_reason_is_kept_to_the_end_beside_the_outcome() {
    let (_etcd, coordinator, fleet) = stage(&[("r-1", "r")]).await;
    let urls = vec![coordinator.url()];
    let work = tempfile::tempdir().unwrap();
    let v1 = DemoRelease::new("1.0.0", 1).build(work.path()).unwrap();
    let digest = push(&urls, &v1).await.unwrap();
    let fast = strategy(work.path(), "fast", "200ms").unwrap();
    let output = deploy(&urls, &digest, &fast, &["--reason", "JIRA-123", "--wait"])
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let id = deployment_id(&output).unwrap();

    let entry = history_entry(&urls, &id).await.unwrap();
    assert_eq!(entry["reason"], "JIRA-123", "{entry}");
    assert_eq!(entry["state"], "succeeded", "{entry}");
    assert_eq!(entry["outcome"], "succeeded", "{entry}");
    let shown = lockstep_json(&urls, &["status", &id]).await.unwrap();
    assert_eq!(shown["reason"], "JIRA-123", "{shown}");
    assert_eq!(shown["outcome"], "succeeded", "{shown}");
    let history = lockstep(&urls, &["history", "demo"]).await.unwrap();
    assert!(
        String::from_utf8_lossy(&history.stdout).contains("JIRA-123"),
        "{}",
        text(&history)
    );
    drop(fleet);
}

/// Reproduces #12 item 2: `lockstep rollback SERVICE` took "the release
/// before the current one" (the most common previous release on the
/// hosts), not the last good one, and with `rehearse_rollback` on by
/// default re-applied the release it was leaving to the canary as a
/// "rehearsal". Here an abort leaves the fleet half on 3.0.0: the rollback
/// says it goes to 2.0.0, the last release that succeeded, and goes there
/// without a rehearsal. `--to VERSION` and digest prefixes name releases.
#[tokio::test]
async fn rollback_goes_to_the_last_release_that_succeeded_without_a_rehearsal() {
    let (etcd, coordinator, fleet) = stage(&[("b-1", "b"), ("b-2", "b"), ("b-3", "b")]).await;
    let urls = vec![coordinator.url()];
    let work = tempfile::tempdir().unwrap();
    let fast = strategy(work.path(), "fast", "200ms").unwrap();
    let mut digests = Vec::new();
    for version in ["1.0.0", "2.0.0", "3.0.0"] {
        let bundle = DemoRelease::new(version, 1).build(work.path()).unwrap();
        digests.push(push(&urls, &bundle).await.unwrap());
    }
    for digest in &digests[..2] {
        let id = start_deploy(&urls, digest, &fast).await.unwrap();
        assert_eq!(finished(&etcd, &id).await.unwrap()["state"], "succeeded");
    }
    // 3.0.0 reaches its canary; the operator aborts it there.
    let slow = strategy(work.path(), "slow", "60s").unwrap();
    let id3 = start_deploy(&urls, &digests[2], &slow).await.unwrap();
    wait_for("the canary to be on 3.0.0", DEADLINE, || async {
        let r = record(&etcd, &id3).await.map_err(|e| e.to_string())?;
        if on_target(&r) >= 1 {
            Ok(())
        } else {
            Err(format!("{r}"))
        }
    })
    .await
    .unwrap();
    lockstep_json(&urls, &["abort", &id3, "--reason", "bad canary"])
        .await
        .unwrap();
    assert_eq!(finished(&etcd, &id3).await.unwrap()["state"], "aborted");

    let fast_arg = fast.display().to_string();
    let rollback = [
        "rollback",
        "demo",
        "--wait",
        "--strategy",
        fast_arg.as_str(),
    ];
    let output = lockstep(&urls, &rollback).await.unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("rolling back demo to 2.0.0 ({})", digests[1])),
        "the target is named before it acts: {}",
        text(&output)
    );
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("rehearsing"),
        "a rollback does not rehearse: {}",
        text(&output)
    );
    every_host_serves(&fleet, "2.0.0").await.unwrap();

    // --to chooses, by version; a deploy takes a unique digest prefix.
    let to_v1 = [
        "rollback",
        "demo",
        "--to",
        "1.0.0",
        "--wait",
        "--strategy",
        fast_arg.as_str(),
    ];
    let output = lockstep(&urls, &to_v1).await.unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    every_host_serves(&fleet, "1.0.0").await.unwrap();
    let prefix = &digests[1]["sha256:".len().."sha256:".len() + 12];
    let output = deploy(&urls, prefix, &fast, &["--wait"]).await.unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    every_host_serves(&fleet, "2.0.0").await.unwrap();
}

/// Reproduces #12 item 10, the coordinator and CLI side: `lockstep status`
/// had no STATE column (a paused deployment, or one awaiting approval,
/// looked like any other); `deploy --wait` printed a failure's reason, with
/// the app's log lines, five times; a malformed budget policy in etcd made
/// `lockstep plan` say the coordinator was unavailable.
#[tokio::test]
async fn status_shows_state_a_failure_is_told_once_and_a_bad_policy_is_named() {
    let (etcd, coordinator, fleet) = stage(&[("q-1", "q"), ("q-2", "q")]).await;
    let urls = vec![coordinator.url()];
    let work = tempfile::tempdir().unwrap();
    let fast = strategy(work.path(), "fast", "200ms").unwrap();
    let v1 = DemoRelease::new("1.0.0", 1).build(work.path()).unwrap();
    let bad = DemoRelease::new("2.0.0", 1)
        .with_unknown_config_key()
        .build(work.path())
        .unwrap();
    let v3 = DemoRelease::new("3.0.0", 1).build(work.path()).unwrap();
    let d1 = push(&urls, &v1).await.unwrap();
    let d2 = push(&urls, &bad).await.unwrap();
    let d3 = push(&urls, &v3).await.unwrap();
    let output = deploy(&urls, &d1, &fast, &["--wait"]).await.unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));

    // The app's refusal names the key on a log line; the operator reads
    // the reason's log tail once, not once per place the reason travels.
    // The tail holds that line once per start of the app (the agent may
    // have restarted it before the switch saw it fail), with the agent's
    // own lines between: counting runs of lines that name the key counted
    // each start (seen once in CI, stop 25's full run), so what is counted
    // is the tail itself, and every line naming the key is in it.
    let output = deploy(&urls, &d2, &fast, &["--wait"]).await.unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = all.lines().collect();
    let tails: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("last log lines of the new release:"))
        .collect();
    assert_eq!(
        tails.len(),
        1,
        "the failure's log tail is told once:\n{all}"
    );
    // The tail runs to the next event line ("08:52:58Z #5 …").
    let event = |line: &str| line.get(8..12).is_some_and(|s| s.starts_with("Z #"));
    let start = tails[0];
    let end = (start + 1..lines.len())
        .find(|&i| event(lines[i]))
        .unwrap_or(lines.len());
    let naming: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("metrics_endpoint"))
        .collect();
    assert!(!naming.is_empty(), "no line names the key:\n{all}");
    assert!(
        naming.iter().all(|i| (start..end).contains(i)),
        "a line naming the key is told outside the log tail:\n{all}"
    );

    // A paused deployment says so in `status`.
    let slow = strategy(work.path(), "slow", "60s").unwrap();
    let id = start_deploy(&urls, &d3, &slow).await.unwrap();
    lockstep_json(&urls, &["pause", &id, "--reason", "looking"])
        .await
        .unwrap();
    let shown = lockstep(&urls, &["status"]).await.unwrap();
    let stdout = String::from_utf8_lossy(&shown.stdout);
    assert!(stdout.contains("STATE"), "{}", text(&shown));
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(&id) && l.contains("paused")),
        "{}",
        text(&shown)
    );
    let json = lockstep_json(&urls, &["status"]).await.unwrap();
    assert_eq!(json["deployments"][0]["id"], id, "{json}");
    assert_eq!(json["deployments"][0]["state"], "paused", "{json}");
    lockstep_json(&urls, &["abort", &id, "--reason", "done looking"])
        .await
        .unwrap();
    finished(&etcd, &id).await.unwrap();

    // A malformed policy is named, with its key and the problem.
    let key = "/lockstep/v1/clusters/q/policy";
    let mut client = etcd.client().await.unwrap();
    client
        .put(key, "{\"max_disruptions\": \"two\"}", None)
        .await
        .unwrap();
    let output = lockstep(
        &urls,
        &["plan", "--service", "demo", "--release", d3.as_str()],
    )
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        stderr.contains(key)
            && stderr.contains("max_disruptions")
            && !stderr.contains("unavailable"),
        "{}",
        text(&output)
    );
    drop(fleet);
}

/// Deliver 4 of #12: `lockstep restart SERVICE [--cluster C]`, a rolling
/// restart of the current release through the coordinator (waves, gates,
/// budget, history), so nobody restarts hosts by hand. Only the named
/// cluster's processes are replaced; the deployment is in history.
#[tokio::test]
async fn restart_replaces_a_clusters_processes_as_a_deployment() {
    let layout = [("x-1", "x"), ("x-2", "x"), ("y-1", "y")];
    let (etcd, coordinator, fleet) = stage(&layout).await;
    let urls = vec![coordinator.url()];
    let work = tempfile::tempdir().unwrap();
    let fast = strategy(work.path(), "fast", "200ms").unwrap();
    let v1 = DemoRelease::new("1.0.0", 1).build(work.path()).unwrap();
    let d1 = push(&urls, &v1).await.unwrap();
    let output = deploy(&urls, &d1, &fast, &["--wait"]).await.unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let mut before = Vec::new();
    for host in &fleet.hosts {
        before.push(served(host.addr()).await.unwrap().pid);
    }

    let fast_arg = fast.display().to_string();
    let args = [
        "restart",
        "demo",
        "--cluster",
        "x",
        "--reason",
        "leaking memory",
        "--strategy",
        fast_arg.as_str(),
        "--wait",
    ];
    let output = lockstep(&urls, &args).await.unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let id = deployment_id(&output).unwrap();
    for (host, pid) in fleet.hosts.iter().zip(before) {
        let now = served(host.addr()).await.unwrap();
        assert_eq!(now.version, "1.0.0", "{}", host.id);
        if host.cluster == "x" {
            assert_ne!(now.pid, pid, "{} was restarted", host.id);
        } else {
            assert_eq!(now.pid, pid, "{} is in another cluster", host.id);
        }
    }
    assert_eq!(finished(&etcd, &id).await.unwrap()["state"], "succeeded");
    let entry = history_entry(&urls, &id).await.unwrap();
    assert_eq!(entry["state"], "succeeded", "{entry}");
    assert_eq!(entry["reason"], "restart: leaking memory", "{entry}");
}

/// Reproduces #12 item 10 (first report): the watch bar showed
/// `ap [====] 1/1 on target` during a rehearsal while the host was being
/// switched back to the old release. A host whose apply is in flight is
/// not on target until it is confirmed ready on the target again. The old
/// release takes 3 s to become ready, so the rehearsal's switch back to it
/// is long enough to look at.
#[tokio::test]
async fn a_host_in_a_rehearsal_is_not_shown_on_target() {
    let layout = [("r-1", "r")];
    let etcd = EtcdCluster::single().await.unwrap();
    let coordinator = CoordinatorFixture::start(&etcd.endpoints(), TTL_SECS)
        .await
        .unwrap();
    let urls = vec![coordinator.url()];
    let fleet = FleetFixture::start(&layout, &etcd.endpoints(), &urls)
        .await
        .unwrap();
    agents_known(&urls, layout.len()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let slow_v1 = DemoRelease::new("1.0.0", 1)
        .with_config("[faults]\nready_after_ms = 3000\n")
        .build(work.path())
        .unwrap();
    let v2 = DemoRelease::new("2.0.0", 1).build(work.path()).unwrap();
    let rehearsing = strategy(work.path(), "rehearsing", "200ms").unwrap();
    let d1 = push(&urls, &slow_v1).await.unwrap();
    let id = start_deploy(&urls, &d1, &rehearsing).await.unwrap();
    assert_eq!(finished(&etcd, &id).await.unwrap()["state"], "succeeded");

    let d2 = push(&urls, &v2).await.unwrap();
    let id = start_deploy(&urls, &d2, &rehearsing).await.unwrap();
    let host = &fleet.hosts[0];
    // 2.0.0 serves while the agent switches: the rehearsal's way back.
    wait_for("the rehearsal's switch back to 1.0.0", DEADLINE, || async {
        let status = host
            .agent
            .agentctl_json(&["status", "demo"])
            .await
            .map_err(|e| e.to_string())?;
        let switching = status["services"][0]["switch"] == "switching";
        let serving = served(host.addr()).await?.version;
        if switching && serving == "2.0.0" {
            Ok(())
        } else {
            Err(format!("switching {switching}, serving {serving}"))
        }
    })
    .await
    .unwrap();
    let r = record(&etcd, &id).await.unwrap();
    assert_eq!(
        on_target(&r),
        0,
        "a host switching back is not on target: {r}"
    );
    let r = finished(&etcd, &id).await.unwrap();
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(on_target(&r), 1, "{r}");
}
