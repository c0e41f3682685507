//! The web view at fleet size (#17: "usable at 1,000 hosts, first paint
//! under 1 s, no per-host request storm"), in a real headless Chromium
//! against a real coordinator whose fleet is 1,000 virtual hosts of
//! `lockstep-nodesim` (the 3-host test in `web.rs` checks what a cell
//! says; this one, that the page holds a large fleet).
//!
//! It asserts what must hold (every host in the grid, under its cluster;
//! each poll a fixed set of requests, none naming a host) and prints the
//! figures (time to the complete grid, first contentful paint, the fleet
//! answer's size); the figures are not asserted, so a loaded machine
//! cannot fail it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lockstep_tests::operator::agents_known;
use lockstep_tests::{
    Browser, CoordinatorFixture, EtcdCluster, NodesimFixture, NodesimOptions, free_loopback_port,
    wait_for,
};

const HOSTS: usize = 1000;
const CLUSTERS: usize = 10;
const DEADLINE: Duration = Duration::from_secs(300);
/// The page polls its JSON this often (`POLL_MS` in app.js).
const POLL: Duration = Duration::from_secs(2);

/// How many host cells the grid has, and how many distinct simulated
/// hosts they name.
async fn grid(browser: &Browser) -> Result<(u64, u64), String> {
    let counted = browser
        .execute(
            "const cells = [...document.querySelectorAll('li.host')];
             const named = new Set(cells.map((c) => c.dataset.host).filter((h) => h && h.startsWith('sim-')));
             return [cells.length, named.size];",
        )
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
        extra: vec!["--no-budget".to_owned()],
        ..NodesimOptions::default()
    };
    let sim = NodesimFixture::start(&etcd.endpoints(), &urls, &options)
        .await
        .unwrap();
    if let Err(err) = agents_known(&urls, HOSTS).await {
        panic!("{err}\nnodesim log:\n{}", sim.log_text());
    }
    let opened = Instant::now();
    browser
        .goto(&format!("http://127.0.0.1:{web}/"))
        .await
        .unwrap();
    // Polled over WebDriver every 50 ms: an upper bound of the page's own.
    wait_for("the grid to show every host", DEADLINE, || async {
        match grid(&browser).await? {
            (cells, named) if cells == HOSTS as u64 && named == HOSTS as u64 => Ok(()),
            seen => Err(format!("(cells, distinct hosts) = {seen:?}")),
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
        let fixed = [
            "/assets/app.js",
            "/assets/style.css",
            "/favicon.ico",
            "/api/fleet",
            "/api/deployments",
        ]
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
