//! The web view at fleet size (#17: "usable at 1,000 hosts, first paint
//! under 1 s, no per-host request storm"), in a real headless Chromium
//! against a real coordinator whose fleet is 1,000 virtual hosts of
//! `lockstep-nodesim`, each on a release installed by a real deployment.
//!
//! It asserts what must hold (every host in the grid with its release;
//! each poll a fixed set of requests, none naming a host) and prints the
//! figures (time to the complete grid, first contentful paint, the fleet
//! answer's size); the figures are not asserted, so a loaded machine
//! cannot fail it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lockstep_tests::operator::{agents_known, finished, push, start_deploy, strategy_with};
use lockstep_tests::{
    Browser, CoordinatorFixture, DemoRelease, EtcdCluster, NodesimFixture, NodesimOptions,
    free_loopback_port, wait_for,
};

const HOSTS: usize = 1000;
const CLUSTERS: usize = 10;
const DEADLINE: Duration = Duration::from_secs(300);
/// The page polls its JSON this often (`POLL_MS` in app.js).
const POLL: Duration = Duration::from_secs(2);

/// How many host cells the grid has, and how many name `version`.
async fn grid(browser: &Browser, version: &str) -> Result<(u64, u64), String> {
    let counted = browser
        .execute(&format!(
            "const cells = [...document.querySelectorAll('li.host')];
             return [cells.length, cells.filter((c) => c.textContent.includes('demo {version}')).length];"
        ))
        .await
        .map_err(|e| e.to_string())?;
    let n = |i: usize| counted[i].as_u64().unwrap_or(0);
    Ok((n(0), n(1)))
}

/// Every resource the page has requested so far, by path (query cut).
async fn requests(browser: &Browser) -> BTreeMap<String, u64> {
    let paths = browser
        .execute(
            "return performance.getEntriesByType('resource')
               .map((e) => new URL(e.name).pathname);",
        )
        .await
        .unwrap();
    let mut by_path = BTreeMap::new();
    for path in paths.as_array().cloned().unwrap_or_default() {
        *by_path
            .entry(path.as_str().unwrap_or_default().to_owned())
            .or_insert(0) += 1;
    }
    by_path
}

#[tokio::test]
async fn a_thousand_host_fleet_is_one_grid_without_a_request_per_host() {
    let Some(browser) = Browser::start_or_skip("the web view at 1,000 hosts")
        .await
        .unwrap()
    else {
        return;
    };
    let etcd = EtcdCluster::single().await.unwrap();
    let web = free_loopback_port().unwrap();
    let coordinator = CoordinatorFixture::start_with_tables(
        &etcd.endpoints(),
        3,
        None,
        &format!("[web]\nlisten = \"127.0.0.1:{web}\"\n"),
    )
    .await
    .unwrap();
    let urls = vec![coordinator.url()];
    let options = NodesimOptions {
        hosts: HOSTS,
        clusters: CLUSTERS,
        // The hosts take no budget slots: the deployment below is only
        // here to give every host a release.
        extra: vec!["--no-budget".to_owned()],
        ..NodesimOptions::default()
    };
    let sim = NodesimFixture::start(&etcd.endpoints(), &urls, &options)
        .await
        .unwrap();
    if let Err(err) = agents_known(&urls, HOSTS).await {
        panic!("{err}\nnodesim log:\n{}", sim.log_text());
    }
    let work = tempfile::tempdir().unwrap();
    let wide = strategy_with(
        work.path(),
        "wide",
        "200ms",
        "canary = 1\nrehearse_rollback = false\nmax_unavailable = \"50%\"\nmin_healthy = \"50%\"\nbake_time = \"0s\"\n",
    )
    .unwrap();
    let v1 = DemoRelease::new("1.0.0", 1).build(work.path()).unwrap();
    let id = start_deploy(&urls, &push(&urls, &v1).await.unwrap(), &wide)
        .await
        .unwrap();
    assert_eq!(finished(&etcd, &id).await.unwrap()["state"], "succeeded");

    let opened = Instant::now();
    browser
        .goto(&format!("http://127.0.0.1:{web}/"))
        .await
        .unwrap();
    // Polled over WebDriver every 50 ms: an upper bound of the page's own.
    wait_for("the grid to show every host on 1.0.0", DEADLINE, || async {
        match grid(&browser, "1.0.0").await? {
            (cells, on) if cells == HOSTS as u64 && on == HOSTS as u64 => Ok(()),
            seen => Err(format!("(cells, on 1.0.0) = {seen:?}")),
        }
    })
    .await
    .unwrap();
    let complete = opened.elapsed();
    let paint = browser
        .execute(
            "const p = performance.getEntriesByType('paint')
               .find((e) => e.name === 'first-contentful-paint');
             const f = performance.getEntriesByType('resource')
               .find((e) => e.name.endsWith('/api/fleet'));
             return [p ? p.startTime : -1, f ? f.responseEnd : -1, f ? f.encodedBodySize : -1];",
        )
        .await
        .unwrap();

    // Let the page poll a few more times, then count what it asked for.
    let before = requests(&browser).await;
    let polls_before = before.get("/api/fleet").copied().unwrap_or(0);
    wait_for("three more polls", DEADLINE, || async {
        let polled = requests(&browser)
            .await
            .get("/api/fleet")
            .copied()
            .unwrap_or(0);
        if polled >= polls_before + 3 {
            Ok(())
        } else {
            Err(format!(
                "{polled} fleet polls, waiting for {}",
                polls_before + 3
            ))
        }
    })
    .await
    .unwrap();
    let after = requests(&browser).await;
    let polls = after.get("/api/fleet").copied().unwrap_or(0);
    // Each path is one of the page's own, never one per host; each JSON
    // path is asked at most once per poll (plus the first load, plus one
    // refresh after a timeline event).
    for (path, count) in &after {
        let fixed = ["/app.js", "/style.css", "/api/fleet", "/api/deployments"]
            .contains(&path.as_str())
            || path.starts_with("/api/history")
            || path.starts_with("/api/locks")
            || path.starts_with("/api/deployments/");
        assert!(
            fixed,
            "the page asked for {path} ({count} times): {after:?}"
        );
        assert!(
            *count <= polls + 2,
            "{path} asked {count} times in {polls} polls: {after:?}"
        );
    }
    let total: u64 = after.values().sum();
    println!(
        "web at {HOSTS} hosts in {CLUSTERS} clusters: grid complete {} ms after navigation began (WebDriver-polled upper bound); first contentful paint {:.0} ms; first /api/fleet answer ended at {:.0} ms ({} bytes); {total} requests in {polls} polls of {POLL:?}",
        complete.as_millis(),
        paint[0].as_f64().unwrap_or(-1.0),
        paint[1].as_f64().unwrap_or(-1.0),
        paint[2].as_i64().unwrap_or(-1),
    );
    browser
        .screenshot(&Browser::screenshot_dir().unwrap().join("fleet-1000.png"))
        .await
        .unwrap();
    browser.close().await.unwrap();
}
