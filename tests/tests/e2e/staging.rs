//! Staging ahead of the batches (#15; `coordinator/src/staging.rs`), with
//! real etcd, a coordinator, agents and demo apps.

use std::time::Duration;

use lockstep_tests::operator::{deploy, fleet_reporting, push, start_deploy, strategy, text};
use lockstep_tests::{DemoRelease, wait_for};

const DEADLINE: Duration = Duration::from_secs(120);
const LAYOUT: &[(&str, &str)] = &[("st-1", "st"), ("st-2", "st"), ("st-3", "st")];

/// Coverage for this stop's pacing of staging (it only sped things up, so
/// no run failed before it): once the canary's apply is accepted, the
/// hosts of the later batches are asked to store the target, and each
/// holds it on disk while it still runs the old release, so its own Apply
/// is a switch, not a download. The canary's `min_healthy_time` (30 s)
/// holds the later batches back while this is checked.
#[tokio::test]
async fn hosts_of_later_batches_store_the_target_before_their_apply() {
    let (_etcd, coordinator, fleet) = fleet_reporting(LAYOUT, 3).await.unwrap();
    let urls = vec![coordinator.url()];
    let work = tempfile::tempdir().unwrap();
    let fast = strategy(work.path(), "fast", "200ms").unwrap();
    let v1 = DemoRelease::new("1.0.0", 1).build(work.path()).unwrap();
    let d1 = push(&urls, &v1).await.unwrap();
    let output = deploy(&urls, &d1, &fast, &["--wait"]).await.unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));

    let v2 = DemoRelease::new("2.0.0", 1).build(work.path()).unwrap();
    let d2 = push(&urls, &v2).await.unwrap();
    let hex = d2.trim_start_matches("sha256:").to_owned();
    let slow = strategy(work.path(), "slow", "30s").unwrap();
    start_deploy(&urls, &d2, &slow).await.unwrap();

    wait_for(
        "the hosts after the canary to store 2.0.0 while running 1.0.0",
        DEADLINE,
        || async {
            let mut ahead = Vec::new();
            for (id, _) in LAYOUT {
                let host = fleet.host(id).ok_or_else(|| format!("no host {id}"))?;
                let stored = host.agent.data_dir().join("releases").join(&hex).is_dir();
                let running = host
                    .agent
                    .current_version("demo")
                    .await
                    .map_err(|e| e.to_string())?;
                if stored && running == "1.0.0" {
                    ahead.push(*id);
                }
            }
            // Every host but the canary.
            if ahead.len() == LAYOUT.len() - 1 {
                Ok(())
            } else {
                Err(format!("staged ahead so far: {ahead:?}"))
            }
        },
    )
    .await
    .unwrap();
}
