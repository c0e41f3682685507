//! History retention (#15 deliver 2, in part): finished deployments past
//! `[history] retention` lose their record and events, and keep a summary
//! in history. Real etcd, coordinator, agent and demo app.

use std::time::Duration;

use lockstep_tests::operator::{
    agents_known, deploy, deployment_id, history_entry, keys_under, push, strategy, text,
};
use lockstep_tests::{CoordinatorFixture, DemoRelease, EtcdCluster, FleetFixture, wait_for};

const DEADLINE: Duration = Duration::from_secs(120);

/// #15 Seen 2, "old records and events are never pruned": on main every
/// deployment's record (the engine with every instance) and events stayed
/// in etcd for ever. With `retention = "1ms"` and `keep = 1`, once a second
/// deployment finishes the first one's record and events are gone, while
/// `lockstep history` still shows it with its outcome and reason, and the
/// newest stays whole.
#[tokio::test]
async fn finished_deployments_past_retention_keep_only_their_summary() {
    let etcd = EtcdCluster::single().await.unwrap();
    let coordinator = CoordinatorFixture::start_with_tables(
        &etcd.endpoints(),
        3,
        None,
        "[history]\nretention = \"1ms\"\nkeep = 1\n",
    )
    .await
    .unwrap();
    let urls = vec![coordinator.url()];
    let _fleet = FleetFixture::start(&[("hist-a", "eu")], &etcd.endpoints(), &urls)
        .await
        .unwrap();
    agents_known(&urls, 1).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let plan = strategy(work.path(), "fast", "500ms").unwrap();
    let mut ids = Vec::new();
    for (version, reason) in [("1.0.0", "JIRA-1"), ("2.0.0", "JIRA-2")] {
        let bundle = DemoRelease::new(version, 1).build(work.path()).unwrap();
        let digest = push(&urls, &bundle).await.unwrap();
        let out = deploy(&urls, &digest, &plan, &["--wait", "--reason", reason])
            .await
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        ids.push(deployment_id(&out).unwrap());
    }
    let mut client = etcd.client().await.unwrap();
    let first = ids[0].clone();
    wait_for(
        "the first deployment's record to be pruned",
        DEADLINE,
        || {
            let mut client = client.clone();
            let key = leases::keys::deployment(&first);
            async move {
                let left = client
                    .get(key.as_str(), None)
                    .await
                    .map_err(|e| e.to_string())?;
                if left.kvs().is_empty() {
                    Ok(())
                } else {
                    Err("still there".to_owned())
                }
            }
        },
    )
    .await
    .unwrap();
    let events = keys_under(&etcd, &leases::keys::deployment_events(&first))
        .await
        .unwrap();
    assert_eq!(events, 0, "the first deployment's events are left");
    let journal = keys_under(&etcd, &leases::keys::deployment_dir(&first))
        .await
        .unwrap();
    assert_eq!(
        journal, 0,
        "the first deployment's snapshot and steps are left"
    );
    let newest = client
        .get(leases::keys::deployment(&ids[1]), None)
        .await
        .unwrap();
    assert_eq!(newest.kvs().len(), 1, "the newest deployment was pruned");

    let summary = history_entry(&urls, &first).await.unwrap();
    assert_eq!(summary["state"], "succeeded", "{summary}");
    assert_eq!(summary["reason"], "JIRA-1", "{summary}");
    assert_eq!(summary["target"]["version"], "1.0.0", "{summary}");
}
