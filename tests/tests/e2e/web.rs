//! The web view (#17) in a real headless Chromium, against real etcd, a
//! coordinator, agents and demo apps: the fleet grid, the live timeline
//! over Server-Sent Events with its gates' countdowns, a bad release's
//! rollback with its reason, and the history's release manifest and diff
//! (the same as `lockstep release show|diff`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use lockstep_tests::operator::{
    agents_known, finished, push, start_deploy, strategy, strategy_with, text,
};
use lockstep_tests::{
    Browser, CoordinatorFixture, DemoRelease, EtcdCluster, FleetFixture, free_loopback_port,
    wait_for,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(120);
const TTL_SECS: u64 = 3;
const HOSTS: [(&str, &str); 3] = [("east-1", "east"), ("east-2", "east"), ("west-1", "west")];

/// Every host's cell in the grid names `version`.
async fn grid_shows(browser: &Browser, version: &str) -> Result<(), String> {
    for (host, _) in HOSTS {
        let cell = browser
            .text(&format!("li.host[data-host=\"{host}\"]"))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no cell for {host}"))?;
        if !cell.contains(&format!("demo {version}")) || !cell.contains("ready 1/1") {
            return Err(format!("{host}'s cell reads {cell:?}"));
        }
    }
    Ok(())
}

/// The timeline's header: the deployment it follows and its state.
async fn timeline_state(browser: &Browser) -> Result<(String, String), String> {
    let summary = browser
        .text("#deployment-summary")
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let state = browser
        .attribute("#deployment-state", "data-state")
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    Ok((summary, state))
}

/// Waits until the timeline follows `id` and shows `state`.
async fn timeline_reaches(browser: &Browser, id: &str, state: &str) -> String {
    wait_for(
        &format!("the timeline to show {id} {state}"),
        DEADLINE,
        || async {
            let (summary, shown) = timeline_state(browser).await?;
            if summary.contains(id) && shown == state {
                Ok(summary)
            } else {
                Err(format!("state {shown:?}, summary {summary:?}"))
            }
        },
    )
    .await
    .unwrap()
}

/// Waits until the timeline has a line containing `text`; the timeline's
/// text.
async fn timeline_has(browser: &Browser, text: &str) -> String {
    wait_for(
        &format!("the timeline to show {text:?}"),
        DEADLINE,
        || async {
            let timeline = browser
                .text("#timeline")
                .await
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            if timeline.contains(text) {
                Ok(timeline)
            } else {
                Err(format!("the timeline reads {timeline:?}"))
            }
        },
    )
    .await
    .unwrap()
}

/// What the page says the deployment waits for.
async fn waits_text(browser: &Browser) -> Result<String, String> {
    Ok(browser
        .text("#waits")
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or_default())
}

/// Scrolls the gates into the screenshot's view.
async fn show_waits(browser: &Browser) {
    browser
        .execute("document.getElementById('waits').scrollIntoView({block: 'center'}); return null;")
        .await
        .unwrap();
}

/// Approves each cluster from the page while the deployment waits for
/// it (the page says so, with no countdown: an operator must act), until
/// it bakes; returns what the page says of the bake. Writes the
/// screenshot of the first approval gate.
async fn approve_until_baking(browser: &Browser, shots: &Path) -> String {
    let mut approvals = 0;
    loop {
        let shown = wait_for(
            "the page to show an approval gate or the bake",
            DEADLINE,
            || async {
                let waits = waits_text(browser).await?;
                if waits.contains("Waiting for approval") || waits.contains("Baking") {
                    Ok(waits)
                } else {
                    Err(format!("the waits read {waits:?}"))
                }
            },
        )
        .await
        .unwrap();
        if shown.contains("Baking") {
            assert!(approvals >= 1, "no approval was asked for: {shown}");
            return shown;
        }
        assert!(shown.contains("until an operator acts"), "{shown}");
        if approvals == 0 {
            show_waits(browser).await;
            browser
                .screenshot(&shots.join("approval-gate.png"))
                .await
                .unwrap();
        }
        approvals += 1;
        assert!(approvals <= 3, "asked for approval {approvals} times");
        browser
            .type_into("#action-reason", "the canary is healthy")
            .await
            .unwrap();
        browser
            .click("#actions button[value=approve]")
            .await
            .unwrap();
        wait_for("the approval to be taken", DEADLINE, || async {
            let waits = waits_text(browser).await?;
            if waits.contains("Waiting for approval") {
                Err(format!("the waits read {waits:?}"))
            } else {
                Ok(())
            }
        })
        .await
        .unwrap();
    }
}

/// Issue #17 deliver 4: the page shows every host with its release,
/// follows a deployment to `succeeded` without a reload, and shows a bad
/// release `rolled back` with its reason. Writes the screenshots the
/// operator guide shows to target/web-view/.
#[tokio::test]
async fn the_web_view_shows_the_fleet_and_follows_deployments_live() {
    let Some(browser) = Browser::start_or_skip("the web view's browser test")
        .await
        .unwrap()
    else {
        return;
    };
    let etcd = EtcdCluster::single().await.unwrap();
    let web = free_loopback_port().unwrap();
    let coordinator = CoordinatorFixture::start_with_tables(
        &etcd.endpoints(),
        TTL_SECS,
        None,
        &format!("[web]\nlisten = \"127.0.0.1:{web}\"\n"),
    )
    .await
    .unwrap();
    let urls = vec![coordinator.url()];
    let _fleet = FleetFixture::start(&HOSTS, &etcd.endpoints(), &urls)
        .await
        .unwrap();
    agents_known(&urls, HOSTS.len()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let fast = strategy(work.path(), "fast", "200ms").unwrap();
    let v1 = DemoRelease::new("1.0.0", 1).build(work.path()).unwrap();
    let first = start_deploy(&urls, &push(&urls, &v1).await.unwrap(), &fast)
        .await
        .unwrap();
    assert_eq!(finished(&etcd, &first).await.unwrap()["state"], "succeeded");

    let shots = Browser::screenshot_dir().unwrap();
    browser
        .goto(&format!("http://127.0.0.1:{web}/"))
        .await
        .unwrap();
    // Set once: still there at the end means the page never reloaded.
    browser
        .execute("window.lockstepNoReload = 'kept'; return null;")
        .await
        .unwrap();
    wait_for("the grid to show every host on 1.0.0", DEADLINE, || {
        grid_shows(&browser, "1.0.0")
    })
    .await
    .unwrap();
    timeline_reaches(&browser, &first, "succeeded").await;
    timeline_has(&browser, "finished (succeeded)").await;

    // A disruption budget slot held for west-1 shows on its card, and in
    // the locks table with its holder and TTL.
    let client = crate::failover_client(&etcd).await;
    let session = leases::Session::grant(client, leases::Ttl::from_secs(10).unwrap())
        .await
        .unwrap();
    let slot = leases::DisruptionBudget::new("west")
        .acquire(&session, "west-1/demo", "a planned restart", DEADLINE)
        .await
        .unwrap();
    let slot_shown = |shown: bool| {
        let browser = &browser;
        async move {
            let card = browser
                .text("li.host[data-host=\"west-1\"]")
                .await
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            let locks = browser
                .text("#locks-rows")
                .await
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            let on_card = card.contains("holds a disruption budget slot");
            let in_table = locks.contains("/clusters/west/budget/west-1/demo")
                && locks.contains("a planned restart");
            if on_card == shown && in_table == shown {
                Ok(())
            } else {
                Err(format!("card {card:?}, locks {locks:?}"))
            }
        }
    };
    wait_for("west-1's slot to show", DEADLINE, || slot_shown(true))
        .await
        .unwrap();
    browser.screenshot(&shots.join("fleet.png")).await.unwrap();
    slot.release().await.unwrap();
    wait_for("west-1's slot to go", DEADLINE, || slot_shown(false))
        .await
        .unwrap();

    // A bake long enough to be seen in progress (3 × min_healthy_time),
    // and an approval before each cluster after the first.
    let slow = strategy_with(work.path(), "slow", "3s", "pause_between_clusters = true\n").unwrap();
    let v2 = DemoRelease::new("2.0.0", 1).build(work.path()).unwrap();
    let second = start_deploy(&urls, &push(&urls, &v2).await.unwrap(), &slow)
        .await
        .unwrap();
    wait_for(
        "the timeline to show the deployment under way",
        DEADLINE,
        || async {
            let (summary, state) = timeline_state(&browser).await?;
            let events = browser
                .execute("return document.querySelectorAll('#timeline li').length;")
                .await
                .map_err(|e| e.to_string())?;
            let ready = browser
                .text("#timeline li.kind-instance_ready")
                .await
                .map_err(|e| e.to_string())?;
            if summary.contains(&second) && state == "running" && ready.is_some() {
                Ok(())
            } else {
                Err(format!(
                    "state {state:?}, {events} event(s), summary {summary:?}"
                ))
            }
        },
    )
    .await
    .unwrap();
    browser
        .screenshot(&shots.join("deployment-in-progress.png"))
        .await
        .unwrap();

    // Operator actions, offered to a loopback caller of a plain-text
    // coordinator (the CLI's policy), each recorded with its reason.
    let reason = "canary latency looks high";
    browser.type_into("#action-reason", reason).await.unwrap();
    browser.click("#actions button[value=pause]").await.unwrap();
    timeline_reaches(&browser, &second, "paused").await;
    let paused = timeline_has(&browser, "paused by plain-text caller 127.0.0.1:").await;
    assert!(
        paused.contains(&format!("(web view): {reason}")),
        "{paused}"
    );
    browser
        .type_into("#action-reason", "latency is fine")
        .await
        .unwrap();
    browser
        .click("#actions button[value=resume]")
        .await
        .unwrap();
    timeline_has(&browser, "(web view): latency is fine").await;

    // Issue #17 item 2: the gates with their countdowns. Each approval is
    // asked for and given on the page; the bake counts down, ticking in
    // the browser from the deadline the coordinator sent.
    let bake = approve_until_baking(&browser, &shots).await;
    assert!(bake.contains("bake_time 9s"), "{bake}");
    let first_tick = browser
        .text("#waits .countdown[data-until]")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(first_tick.ends_with("left"), "{bake}");
    show_waits(&browser).await;
    browser
        .screenshot(&shots.join("bake-countdown.png"))
        .await
        .unwrap();
    wait_for("the bake's countdown to tick", DEADLINE, || async {
        let now = browser
            .text("#waits .countdown[data-until]")
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        if now != first_tick {
            Ok(())
        } else {
            Err(format!("still {now:?}"))
        }
    })
    .await
    .unwrap();
    let timeline = timeline_has(&browser, "waiting for `lockstep approve").await;
    assert!(timeline.contains("approved"), "{timeline}");

    timeline_reaches(&browser, &second, "succeeded").await;
    // The header follows the record; the events come over their stream.
    timeline_has(&browser, "finished (succeeded)").await;
    wait_for("the grid to show every host on 2.0.0", DEADLINE, || {
        grid_shows(&browser, "2.0.0")
    })
    .await
    .unwrap();

    // The incident's release: a config key the app refuses.
    let v3 = DemoRelease::new("3.0.0", 1)
        .with_unknown_config_key()
        .build(work.path())
        .unwrap();
    let third = start_deploy(&urls, &push(&urls, &v3).await.unwrap(), &fast)
        .await
        .unwrap();
    timeline_reaches(&browser, &third, "rolled_back").await;
    let record = finished(&etcd, &third).await.unwrap();
    let outcome = record["outcome"].as_str().unwrap();
    let reason = outcome
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("rolled_back: ");
    assert!(reason.contains("did not become ready"), "{outcome}");
    // The badge follows the events; the outcome comes with the record,
    // on the refresh the finished event asks for.
    wait_for("the header to give the reason", DEADLINE, || async {
        let (summary, _) = timeline_state(&browser).await?;
        if summary.contains("rolled back") && summary.contains(reason) {
            Ok(())
        } else {
            Err(format!("the reason {reason:?} is not in {summary:?}"))
        }
    })
    .await
    .unwrap();
    let timeline = timeline_has(&browser, "finished (rolled back)").await;
    assert!(timeline.contains("rollback started"), "{timeline}");
    grid_shows(&browser, "2.0.0").await.unwrap();
    browser
        .screenshot(&shots.join("rolled-back.png"))
        .await
        .unwrap();

    release_diff_in_history_and_cli(&browser, &urls, &third, &shots).await;

    let kept = browser
        .execute("return window.lockstepNoReload;")
        .await
        .unwrap();
    assert_eq!(kept, "kept", "the page reloaded");
    browser.close().await.unwrap();
}

/// Issue #17 item 5 (keyboard-usable actions), and the click that failed
/// in CI as a stale element (stop 23): the page redrew the history's
/// buttons on every poll, so a keyboard user's focus on one went back to
/// the page's top every 2 s. The button keeps its focus through two polls.
async fn keyboard_focus_survives_polls(browser: &Browser, button: &str) {
    let focused = r#"const e = document.querySelector(arguments[0]);
        if (!e) return "no such button";
        e.focus();
        return document.activeElement === e ? "focused" : "not focusable";"#;
    let answer = browser
        .execute_with(focused, vec![button.into()])
        .await
        .unwrap();
    assert_eq!(answer, "focused", "{button}");
    let mut seen = browser.text("#status").await.unwrap();
    for poll in ["first", "second"] {
        seen = wait_for(
            &format!("the {poll} poll after focusing"),
            DEADLINE,
            || async {
                let now = browser.text("#status").await.map_err(|e| e.to_string())?;
                if now != seen {
                    Ok(now)
                } else {
                    Err(format!("status still {seen:?}"))
                }
            },
        )
        .await
        .unwrap();
    }
    let still = browser
        .execute("const a = document.activeElement; return a ? (a.getAttribute('aria-label') || a.tagName) : null;")
        .await
        .unwrap();
    let label = still.as_str().unwrap_or_default();
    assert!(
        label.starts_with("manifest of"),
        "the focus moved to {still} after two polls"
    );
}

/// Issue #17 item 1: the history links each deployment to its release's
/// manifest and to the diff from the release deployed before it; the
/// diff is the one `lockstep release diff` prints.
async fn release_diff_in_history_and_cli(
    browser: &Browser,
    urls: &[String],
    third: &str,
    shots: &Path,
) {
    let row = format!("#history-tables tr[data-deployment=\"{third}\"]");
    wait_for("the history to list the bad release", DEADLINE, || async {
        browser
            .text(&row)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no row for {third}"))
    })
    .await
    .unwrap();
    keyboard_focus_survives_polls(
        browser,
        &format!("{row} button[aria-label^=\"manifest of\"]"),
    )
    .await;
    browser
        .click(&format!("{row} button[aria-label^=\"manifest of\"]"))
        .await
        .unwrap();
    let manifest = wait_for("the manifest to show", DEADLINE, || async {
        let shown = browser
            .text("#release-manifest")
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        if shown.contains("version = \"3.0.0\"") {
            Ok(shown)
        } else {
            Err(format!("the manifest reads {shown:?}"))
        }
    })
    .await
    .unwrap();
    assert!(manifest.contains("[readiness]"), "{manifest}");
    browser
        .click(&format!("{row} button[aria-label^=\"diff from\"]"))
        .await
        .unwrap();
    let added = "+metrics_endpoint = \"http://metrics.internal:9090\"";
    let shown = wait_for("the diff to show the config change", DEADLINE, || async {
        let shown = browser
            .text("#release-diff")
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        if shown.contains(added) {
            Ok(shown)
        } else {
            Err(format!("the diff reads {shown:?}"))
        }
    })
    .await
    .unwrap();
    for line in [
        "--- a/config.toml",
        "+++ b/config.toml",
        "-version = \"2.0.0\"",
        "+version = \"3.0.0\"",
    ] {
        assert!(shown.contains(line), "{line:?} is not in {shown}");
    }
    // Marked by class (colour) as well as by its `+`.
    let marked = browser
        .execute(
            "return [...document.querySelectorAll('#release-diff .diff-add')].map(s => s.textContent);",
        )
        .await
        .unwrap();
    assert!(
        marked
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str() == Some(added)),
        "{marked}"
    );
    browser
        .screenshot(&shots.join("release-diff.png"))
        .await
        .unwrap();

    let cli = lockstep_tests::lockstep(
        urls,
        &["release", "diff", "2.0.0", "3.0.0", "--service", "demo"],
    )
    .await
    .unwrap();
    let printed = String::from_utf8_lossy(&cli.stdout).into_owned();
    assert!(cli.status.success(), "{}", text(&cli));
    let config = printed
        .split_once("configuration:\n")
        .map(|(_, c)| c)
        .unwrap_or_default();
    // Line by line as the page holds them (the rendered text folds a
    // context line that is a lone space).
    let lines = browser
        .execute("return [...document.querySelectorAll('#release-diff span')].map(s => s.textContent).join('\\n');")
        .await
        .unwrap();
    assert_eq!(
        config.trim_end(),
        lines.as_str().unwrap_or_default(),
        "the CLI and the page show one diff"
    );
    assert!(printed.contains("~ changed  config.toml"), "{printed}");
    let unknown = lockstep_tests::lockstep(
        urls,
        &["release", "diff", "2.0.0", "9.9.9", "--service", "demo"],
    )
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&unknown.stderr).into_owned();
    assert!(!unknown.status.success(), "{}", text(&unknown));
    assert!(
        said.contains("no release of demo is named `9.9.9`"),
        "{said}"
    );
    let short = lockstep_tests::lockstep(urls, &["release", "show", "abc"])
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&short.stderr).into_owned();
    assert!(!short.status.success(), "{}", text(&short));
    assert!(
        said.contains("`abc` is too short to name a release"),
        "{said}"
    );
    // Without --service: looked up among every service's releases.
    let show = lockstep_tests::lockstep(urls, &["release", "show", "3.0.0"])
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&show.stdout).into_owned();
    assert!(show.status.success(), "{}", text(&show));
    assert!(printed.contains("version:  3.0.0"), "{printed}");
    assert!(printed.contains(" config.toml sha256:"), "{printed}");
    assert!(
        printed.contains("manifest (release.toml):\n  [release]\n  service = \"demo\"\n"),
        "{printed}"
    );
    // Any two releases, picked by version in the compare form.
    browser.type_into("#compare-from", "1.0.0").await.unwrap();
    browser.type_into("#compare-to", "2.0.0").await.unwrap();
    browser.click("#compare button[type=submit]").await.unwrap();
    wait_for("the picked diff to show", DEADLINE, || async {
        let title = browser
            .text("#release-title")
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let diff = browser
            .text("#release-diff")
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        if title.contains("1.0.0 → 2.0.0") && diff.contains("+version = \"2.0.0\"") {
            Ok(())
        } else {
            Err(format!("{title:?}: {diff:?}"))
        }
    })
    .await
    .unwrap();
}

/// The seqs the timeline shows, in order.
async fn timeline_seqs(browser: &Browser) -> Result<Vec<u64>, String> {
    let seqs = browser
        .execute("return [...document.querySelectorAll('#timeline li')].map(li => Number(li.dataset.seq));")
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_value(seqs).map_err(|e| e.to_string())
}

/// Issue #17 deliver 2 (the timeline survives a coordinator failover):
/// the coordinator serving the page is killed mid-deployment and started
/// again; the standby finishes the rollout, and the page, never reloaded,
/// reconnects with `Last-Event-ID` and shows every event once, in order,
/// to `succeeded`.
#[tokio::test]
async fn the_timeline_resumes_after_the_coordinator_serving_it_restarts() {
    let Some(browser) = Browser::start_or_skip("the web view's failover test")
        .await
        .unwrap()
    else {
        return;
    };
    let etcd = EtcdCluster::single().await.unwrap();
    let web = free_loopback_port().unwrap();
    let web_table = format!("[web]\nlisten = \"127.0.0.1:{web}\"\n");
    let mut serving =
        CoordinatorFixture::start_with_tables(&etcd.endpoints(), TTL_SECS, None, &web_table)
            .await
            .unwrap();
    lockstep_tests::operator::until_leading(&etcd, &serving.url())
        .await
        .unwrap();
    let standby = CoordinatorFixture::start(&etcd.endpoints(), TTL_SECS)
        .await
        .unwrap();
    let urls = vec![serving.url(), standby.url()];
    let _fleet = FleetFixture::start(&HOSTS, &etcd.endpoints(), &urls)
        .await
        .unwrap();
    agents_known(&urls, HOSTS.len()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let v1 = DemoRelease::new("1.0.0", 1).build(work.path()).unwrap();
    let digest = push(&urls, &v1).await.unwrap();
    let slow = strategy(work.path(), "slow", "2s").unwrap();
    let id = start_deploy(&urls, &digest, &slow).await.unwrap();

    browser
        .goto(&format!("http://127.0.0.1:{web}/"))
        .await
        .unwrap();
    browser
        .execute("window.lockstepNoReload = 'kept'; return null;")
        .await
        .unwrap();
    wait_for(
        "the timeline to show the canary ready",
        DEADLINE,
        || async {
            let (summary, state) = timeline_state(&browser).await?;
            let ready = browser
                .text("#timeline li.kind-instance_ready")
                .await
                .map_err(|e| e.to_string())?;
            if summary.contains(&id) && state == "running" && ready.is_some() {
                Ok(())
            } else {
                Err(format!("state {state:?}, summary {summary:?}"))
            }
        },
    )
    .await
    .unwrap();
    let before = timeline_seqs(&browser).await.unwrap();

    serving.restart().await.unwrap();
    timeline_reaches(&browser, &id, "succeeded").await;
    timeline_has(&browser, "finished (succeeded)").await;
    let record = finished(&etcd, &id).await.unwrap();
    assert_eq!(record["state"], "succeeded", "{record}");
    let seqs = timeline_seqs(&browser).await.unwrap();
    let last = record["next_seq"].as_u64().unwrap() - 1;
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "had {before:?} before the restart"
    );
    let timeline = browser.text("#timeline").await.unwrap().unwrap_or_default();
    assert!(
        timeline.contains("resumed"),
        "the standby's resumption is on the timeline: {timeline}"
    );
    let kept = browser
        .execute("return window.lockstepNoReload;")
        .await
        .unwrap();
    assert_eq!(kept, "kept", "the page reloaded");
    browser.close().await.unwrap();
}

/// A GET with extra header lines; status and body (de-chunked), read
/// until the server closes.
async fn get(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return (status, body.to_owned());
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    (status, out)
}

/// A POST of `body` (JSON) with extra header lines; status and body.
async fn post(addr: SocketAddr, path: &str, headers: &str, body: &str) -> (u16, String) {
    let headers = format!(
        "{headers}Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\r\n{body}");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        body.to_owned(),
    )
}

/// The `id:` lines of an SSE body.
fn event_ids(body: &str) -> Vec<u64> {
    body.lines()
        .filter_map(|l| l.strip_prefix("id: ").or_else(|| l.strip_prefix("id:")))
        .map(|n| n.trim().parse().unwrap())
        .collect()
}

/// Issue #17 deliver 2, its bounds: the event stream resumes after
/// `Last-Event-ID`; a bad query is refused saying which parameter and
/// why; past `MAX_EVENT_STREAMS` live timelines a page is told to close
/// one, and a timeline whose browser went away frees its place.
#[tokio::test]
async fn the_web_api_resumes_after_the_last_event_and_bounds_what_it_is_asked() {
    let etcd = EtcdCluster::single().await.unwrap();
    let web = SocketAddr::from(([127, 0, 0, 1], free_loopback_port().unwrap()));
    let coordinator = CoordinatorFixture::start_with_tables(
        &etcd.endpoints(),
        TTL_SECS,
        None,
        &format!("[web]\nlisten = \"{web}\"\n"),
    )
    .await
    .unwrap();
    let urls = vec![coordinator.url()];
    let _fleet = FleetFixture::start(&HOSTS[..1], &etcd.endpoints(), &urls)
        .await
        .unwrap();
    agents_known(&urls, 1).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let v1 = DemoRelease::new("1.0.0", 1).build(work.path()).unwrap();
    let fast = strategy(work.path(), "fast", "200ms").unwrap();
    let id = start_deploy(&urls, &push(&urls, &v1).await.unwrap(), &fast)
        .await
        .unwrap();
    let record = finished(&etcd, &id).await.unwrap();
    let last = record["next_seq"].as_u64().unwrap() - 1;
    let events = format!("/api/deployments/{id}/events");

    let (status, body) = get(web, &events, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(event_ids(&body), (1..=last).collect::<Vec<_>>(), "{body}");
    let (status, body) = get(web, &events, "Last-Event-ID: 3\r\n").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(event_ids(&body), (4..=last).collect::<Vec<_>>(), "{body}");
    assert!(body.contains("\"finished\":true"), "{body}");

    for (path, headers, expected_status, expected) in [
        (
            format!("{events}?from=ten"),
            "",
            400,
            "bad query: from must be a whole number",
        ),
        (
            events.clone(),
            "Last-Event-ID: -1\r\n",
            400,
            "bad query: Last-Event-ID must be a whole number",
        ),
        (
            "/api/history?limit=500".to_owned(),
            "",
            400,
            "limit must be a whole number from 1 to 50",
        ),
        (
            "/api/history?service=no%20such".to_owned(),
            "",
            400,
            "bad query:",
        ),
        (
            "/api/history?colour=red".to_owned(),
            "",
            400,
            "unknown field `colour`",
        ),
        (
            "/api/deployments/demo-0/events".to_owned(),
            "",
            404,
            "no deployment demo-0",
        ),
        (
            format!("/api/fleet?{}", "x".repeat(2000)),
            "",
            414,
            "longer than 1024 bytes",
        ),
    ] {
        let (status, body) = get(web, &path, headers).await;
        assert_eq!(status, expected_status, "{path}: {body}");
        assert!(
            body.contains(expected),
            "{path}: {expected:?} not in {body:?}"
        );
    }
    // An action without the page's header (another site's form), from
    // another origin, or without a reason is refused before anything is
    // done.
    for (verb, headers, expected_status, expected) in [
        (
            "pause",
            "",
            403,
            "needs the header `X-Lockstep-Action: pause`",
        ),
        (
            "pause",
            "X-Lockstep-Action: abort\r\n",
            403,
            "X-Lockstep-Action: pause",
        ),
        (
            "pause",
            "X-Lockstep-Action: pause\r\n",
            400,
            "a reason is required",
        ),
        (
            "pause",
            "X-Lockstep-Action: pause\r\nOrigin: http://evil.example\r\n",
            403,
            "only from a page opened by IP address or localhost",
        ),
        (
            "rollback",
            "X-Lockstep-Action: rollback\r\n",
            404,
            "no action \"rollback\"",
        ),
    ] {
        let (status, body) = post(
            web,
            &format!("/api/deployments/{id}/{verb}"),
            headers,
            "{\"reason\": \" \"}",
        )
        .await;
        assert_eq!(status, expected_status, "{verb} {headers:?}: {body}");
        assert!(
            body.contains(expected),
            "{verb}: {expected:?} not in {body:?}"
        );
    }
    let (status, body) = post(
        web,
        &format!("/api/deployments/{id}/abort"),
        "X-Lockstep-Action: abort\r\n",
        "{\"reason\": \"too late\"}",
    )
    .await;
    assert_eq!(
        status, 409,
        "a finished deployment cannot be aborted: {body}"
    );
    let (status, body) = get(web, "/api/deployments", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"can_operate\":true"),
        "a loopback caller may operate: {body}"
    );

    let (status, body) = get(web, "/api/history?service=demo&limit=1", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&id), "{body}");

    // Streams that stay open: after the last event, waiting for the next.
    let after_last =
        format!("GET {events} HTTP/1.1\r\nHost: {web}\r\nLast-Event-ID: {last}\r\n\r\n");
    let mut open = Vec::new();
    for _ in 0..64 {
        let mut stream = TcpStream::connect(web).await.unwrap();
        stream.write_all(after_last.as_bytes()).await.unwrap();
        let mut head = [0_u8; 12];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200", "stream {}", open.len());
        open.push(stream);
    }
    let (status, body) = get(web, &events, "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("already serves 64 live timelines"), "{body}");
    drop(open);
    wait_for("a closed timeline to free its place", DEADLINE, || async {
        match get(web, &events, "").await {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{status}: {body}")),
        }
    })
    .await
    .unwrap();
}
