//! The web view (#17) in a real headless Chromium, against real etcd, a
//! coordinator, agents and demo apps: the fleet grid, the live timeline
//! over Server-Sent Events, and a bad release's rollback with its reason.

use std::time::Duration;

use lockstep_tests::operator::{agents_known, finished, push, start_deploy, strategy};
use lockstep_tests::{
    Browser, CoordinatorFixture, DemoRelease, EtcdCluster, FleetFixture, free_loopback_port,
    wait_for,
};

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
    browser.screenshot(&shots.join("fleet.png")).await.unwrap();

    // A bake long enough to be seen in progress.
    let slow = strategy(work.path(), "slow", "3s").unwrap();
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
    timeline_reaches(&browser, &second, "succeeded").await;
    let timeline = browser.text("#timeline").await.unwrap().unwrap_or_default();
    assert!(timeline.contains("finished"), "{timeline}");
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
    let summary = timeline_reaches(&browser, &third, "rolled_back").await;
    let record = finished(&etcd, &third).await.unwrap();
    let outcome = record["outcome"].as_str().unwrap();
    let reason = outcome
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("rolled_back: ");
    assert!(reason.contains("did not become ready"), "{outcome}");
    assert!(summary.contains("rolled back"), "{summary}");
    assert!(
        summary.contains(reason),
        "the reason {reason:?} is not in {summary:?}"
    );
    let timeline = browser.text("#timeline").await.unwrap().unwrap_or_default();
    assert!(timeline.contains("rollback started"), "{timeline}");
    grid_shows(&browser, "2.0.0").await.unwrap();
    browser
        .screenshot(&shots.join("rolled-back.png"))
        .await
        .unwrap();

    let kept = browser
        .execute("return window.lockstepNoReload;")
        .await
        .unwrap();
    assert_eq!(kept, "kept", "the page reloaded");
    browser.close().await.unwrap();
}
