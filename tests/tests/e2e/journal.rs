//! The deployment journal at scale (#15 deliver 2) on real etcd with its
//! default limits (1.5 MiB a request, 128 operations a transaction): a
//! 10,000-instance deployment whose wave start issues 10,000 applies in
//! one step is written step by step, read back whole and resumed exactly;
//! event readers page through it; a format-1 record still loads.

use coordinator::journal::{Journal, PRUNE_BATCH, Retention};
use coordinator::record::{
    DeploymentKind, DeploymentRecord, DeploymentState, EventKind, Happening, RECORD_FORMAT,
};
use coordinator::step_log::{StepEntry, driver_notes, snapshot_due};
use etcd_client::{Compare, CompareOp};
use lockstep_tests::operator::keys_under;
use lockstep_tests::{CoordinatorFixture, EtcdCluster, wait_for};
use rollout::sim::{Scenario, run_scenario_recorded};
use rollout::{DeploymentId, Engine, Event, FencingToken};

const ID: &str = "web-1796500000000";
/// Generous: a coordinator's election and resume on a loaded machine.
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

fn record_for(sc: &Scenario) -> DeploymentRecord {
    let plan = &sc.plan;
    DeploymentRecord {
        format: RECORD_FORMAT,
        id: ID.to_owned(),
        service: "web".to_owned(),
        target_digest: plan.target.to_string(),
        target_version: "2.0.0".to_owned(),
        actor_user: "operator.lockstep".to_owned(),
        actor_host: "laptop".to_owned(),
        reason: "JIRA-15".to_owned(),
        kind: DeploymentKind::Deploy,
        created_unix_ms: 1_796_500_000_000,
        finished_unix_ms: 0,
        state: DeploymentState::Running,
        outcome: String::new(),
        token: 7,
        next_seq: 1,
        clusters_of: plan
            .instances
            .iter()
            .map(|i| (i.id.to_string(), plan.clusters[i.cluster].name.to_string()))
            .collect(),
        progress: Default::default(),
        operator_said: String::new(),
        engine: Engine::new(DeploymentId(ID.to_owned()), plan.clone(), FencingToken(7)),
        log: Default::default(),
    }
}

/// A fence as the leader's: a key of ours, by create revision.
async fn fence(client: &mut etcd_client::Client, key: &str) -> Compare {
    let put = client.put(key, "held", None).await.unwrap();
    let revision = put.header().unwrap().revision();
    Compare::create_revision(key, CompareOp::Equal, revision)
}

/// A step's fences (leadership and lock) and its further pages' (the
/// leadership only), as a leading driver's.
async fn leader_and_lock(client: &mut etcd_client::Client) -> (Vec<Compare>, Vec<Compare>) {
    let fences = vec![
        fence(client, "/test/leader").await,
        fence(client, "/test/lock").await,
    ];
    let pages = vec![fences[0].clone()];
    (fences, pages)
}

fn json(record: &DeploymentRecord) -> Vec<u8> {
    serde_json::to_vec(record).unwrap()
}

/// #15 deliver 2: on main a step of this deployment put its whole record
/// (about 2.4 MB, past etcd's 1.5 MiB) and, at the wave start, 10,000
/// event keys (past 128 operations) in one transaction, which etcd
/// refuses. Here every write lands; the journal read back (snapshot, then
/// the steps after it replayed) is exactly the live record, after steps
/// and after a snapshot switch; a resume's `Recovered` step is written
/// on; and the events read back are every one, once, in order, from any
/// sequence number.
#[tokio::test]
async fn a_10000_instance_deployment_is_journalled_within_etcds_limits_and_resumes_exactly() {
    let etcd = EtcdCluster::single().await.unwrap();
    let mut raw = etcd.client().await.unwrap();
    let (fences, pages) = leader_and_lock(&mut raw).await;
    let journal = Journal::new(crate::failover_client(&etcd).await);
    let sc = Scenario::single_batch(10_000, 7);
    let report = run_scenario_recorded(&sc).unwrap();
    let mut live = record_for(&sc);
    journal.create(&fences, &mut live).await.unwrap();
    // Through the canary and the step that starts all 10,000, and on.
    let mut largest_step = 0;
    let mut snapshots = 1;
    for (now, event) in report.inputs.iter().take(40) {
        let at = i64::try_from(now.0).unwrap() + live.created_unix_ms;
        let entry = StepEntry::new(at, Some(event.clone()), driver_notes(event), None);
        let advanced = live.advance(&entry);
        largest_step = largest_step.max(advanced.events.len());
        journal
            .append(
                &fences,
                &pages,
                &mut live,
                (&entry, &advanced.events),
                advanced.finish,
                None,
            )
            .await
            .unwrap();
        if snapshot_due(&live.log) {
            journal.snapshot(&fences, &mut live).await.unwrap();
            snapshots += 1;
        }
    }
    assert!(
        largest_step >= 10_000,
        "one step applies to every instance: {largest_step}"
    );
    let loaded = journal.load(ID).await.unwrap().unwrap();
    assert_eq!(json(&loaded.record), json(&live));
    assert_eq!(loaded.record.log, live.log);
    let header = journal.header(ID).await.unwrap().unwrap();
    assert_eq!(header, live.header());
    assert_eq!(header.clusters[0].instances, 10_000);

    // A snapshot now: the older one and the steps it covered are gone,
    // and the record read back is still the live one.
    journal.snapshot(&fences, &mut live).await.unwrap();
    snapshots += 1;
    let dir = leases::keys::deployment_dir(ID);
    let steps_left = raw
        .get(
            format!("{dir}steps/"),
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .unwrap()
        .count();
    assert_eq!(steps_left, 0);
    let older = raw
        .get(
            leases::keys::deployment_snapshot(ID, live.log.generation - 1),
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .unwrap()
        .count();
    assert_eq!(older, 0, "the snapshot before the last is deleted");
    let mut resumed = journal.load(ID).await.unwrap().unwrap().record;
    assert_eq!(json(&resumed), json(&live));

    // A new leader resumes: its Recovered step lands on the same journal.
    let entry = StepEntry::new(
        live.created_unix_ms + 3_600_000,
        Some(Event::Recovered {
            token: FencingToken(9),
        }),
        Vec::new(),
        None,
    );
    let advanced = resumed.advance(&entry);
    journal
        .append(
            &fences,
            &pages,
            &mut resumed,
            (&entry, &advanced.events),
            false,
            None,
        )
        .await
        .unwrap();
    let again = journal.load(ID).await.unwrap().unwrap().record;
    assert_eq!(json(&again), json(&resumed));
    assert_eq!(again.token, 9);

    let (events, _) = journal.events(ID, 1).await.unwrap();
    assert_eq!(events.len() as u64, again.next_seq - 1);
    assert!(events.iter().zip(1..).all(|(e, seq)| e.seq == seq));
    // From the middle of a page: that event and every later one.
    let (tail, _) = journal.events(ID, 5_000).await.unwrap();
    assert_eq!(tail.first().map(|e| e.seq), Some(5_000));
    assert_eq!(tail.len() as u64, again.next_seq - 5_000);
    println!("{snapshots} snapshot(s), {} events", events.len());
}

/// A record as format 1 stored it (one key, the whole record) still
/// loads whole and as a header, and a resume's first snapshot moves it to
/// format 2 in place, read back the same.
#[tokio::test]
async fn a_format_1_record_in_etcd_loads_and_moves_to_format_2() {
    let etcd = EtcdCluster::single().await.unwrap();
    let mut raw = etcd.client().await.unwrap();
    let text = include_str!("../../../coordinator/tests/fixtures/deployment-record-v1.json");
    let id = "demo-1796504321602";
    raw.put(leases::keys::deployment(id), text, None)
        .await
        .unwrap();
    raw.put(leases::keys::active("demo"), id, None)
        .await
        .unwrap();
    let fences = vec![fence(&mut raw, "/test/leader").await];
    let journal = Journal::new(crate::failover_client(&etcd).await);
    let header = journal.header(id).await.unwrap().unwrap();
    assert_eq!(header.state, DeploymentState::Succeeded);
    assert_eq!(header.clusters[0].on_target, 1);
    let mut record = journal.load(id).await.unwrap().unwrap().record;
    assert_eq!(record.format, 1);
    journal.snapshot(&fences, &mut record).await.unwrap();
    let stored = raw.get(leases::keys::deployment(id), None).await.unwrap();
    let value: serde_json::Value = serde_json::from_slice(stored.kvs()[0].value()).unwrap();
    assert_eq!(value["format"], 2, "{value}");
    let again = journal.load(id).await.unwrap().unwrap().record;
    assert_eq!(json(&again), json(&record));
    assert_eq!(again.reason, "JIRA-2");
}

/// #15 (the finishing step's further pages, noticed in stops 23 and 24):
/// a leader that stops between a finishing step's commit and its further
/// pages (here its leadership is gone by the time it writes them) left
/// the deployment finished without its last events, the reasons it
/// failed among them, and no leader ever wrote them: the commit had
/// cleared the active marker, so nobody resumed it. Now the marker goes
/// with the last page; a real coordinator taking over finds the
/// deployment still active, writes the missing pages and clears it.
#[tokio::test]
async fn a_finished_deployments_last_events_are_written_by_the_next_leader() {
    let etcd = EtcdCluster::single().await.unwrap();
    let mut raw = etcd.client().await.unwrap();
    let (fences, pages) = leader_and_lock(&mut raw).await;
    // The leadership gone between the commit and its pages.
    let gone = vec![Compare::create_revision(
        "/test/leader-gone",
        CompareOp::Equal,
        1,
    )];
    let journal = Journal::new(crate::failover_client(&etcd).await);
    let sc = Scenario::single_batch(3, 7);
    let report = run_scenario_recorded(&sc).unwrap();
    let mut live = record_for(&sc);
    journal.create(&fences, &mut live).await.unwrap();
    let mut last = Vec::new();
    for (now, event) in &report.inputs {
        let at = i64::try_from(now.0).unwrap() + live.created_unix_ms;
        let mut probe = live.clone();
        let plain = StepEntry::new(at, Some(event.clone()), driver_notes(event), None);
        let finishing = probe.advance(&plain).finish;
        let mut notes = driver_notes(event);
        if finishing {
            // Failure reasons with their log tails: several pages.
            notes.extend((0..40).map(|i| {
                Happening::new(
                    EventKind::InstanceFailed,
                    &format!("host-{i}"),
                    "last log line ".repeat(280),
                )
            }));
        }
        let entry = StepEntry::new(at, Some(event.clone()), notes, None);
        let advanced = live.advance(&entry);
        let written = journal
            .append(
                &fences,
                if finishing { &gone } else { &pages },
                &mut live,
                (&entry, &advanced.events),
                advanced.finish,
                None,
            )
            .await;
        if finishing {
            assert!(written.is_err(), "the pages were written: {written:?}");
            last = advanced.events;
            break;
        }
        written.unwrap();
    }
    assert!(live.state.is_terminal(), "{:?}", live.state);
    let (before, _) = journal.events(ID, 1).await.unwrap();
    assert!(
        (before.len() as u64) < live.next_seq - 1,
        "pages are missing"
    );

    let _coordinator = CoordinatorFixture::start(&etcd.endpoints(), 3)
        .await
        .unwrap();
    let events = wait_for("the next leader to complete the journal", DEADLINE, || {
        let journal = &journal;
        async move {
            let active = journal.active_of("web").await.map_err(|e| e.to_string())?;
            let (events, _) = journal.events(ID, 1).await.map_err(|e| e.to_string())?;
            match active {
                None => Ok(events),
                Some(id) => Err(format!("{id} still active; {} events", events.len())),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(events.len() as u64, live.next_seq - 1);
    assert!(events.iter().zip(1..).all(|(e, seq)| e.seq == seq));
    assert_eq!(events[events.len() - last.len()..], last[..]);
}

/// #15, found reading the pruner for this stop's note: a history key keeps
/// its place once pruned (the summary stays), and a pass took the oldest
/// [`PRUNE_BATCH`] keys past retention, pruned or not. Once that many had
/// been pruned, every pass wrote the same summaries again and never
/// reached a deployment finished after them: its record and events stayed
/// for ever. Here the first pass prunes the oldest PRUNE_BATCH; on main the
/// second pruned nothing and wrote them all again.
#[tokio::test]
async fn pruning_goes_past_deployments_it_pruned_before() {
    let etcd = EtcdCluster::single().await.unwrap();
    let mut raw = etcd.client().await.unwrap();
    let leader = fence(&mut raw, "/test/leader").await;
    let journal = Journal::new(crate::failover_client(&etcd).await);
    let sc = Scenario::single_batch(3, 7);
    // Finished deployments, whole: header, an event page, history entry
    // (as a finishing step writes it).
    let mut history = Vec::new();
    for n in 0..=PRUNE_BATCH {
        let at = 1_000_000 + i64::try_from(n).unwrap();
        let id = format!("web-{at}");
        let mut record = record_for(&sc);
        record.id = id.clone();
        record.state = DeploymentState::Succeeded;
        record.finished_unix_ms = at;
        let key = leases::keys::history("web", at, &id);
        let summary = serde_json::to_vec(&record.summary()).unwrap();
        let header = serde_json::to_vec(&record.header()).unwrap();
        raw.put(leases::keys::deployment(&id), header, None)
            .await
            .unwrap();
        raw.put(leases::keys::deployment_event(&id, 1), "[]", None)
            .await
            .unwrap();
        raw.put(key.as_str(), summary, None).await.unwrap();
        history.push((id, key));
    }
    let retention = Retention {
        after: std::time::Duration::from_secs(1),
        keep: 0,
    };
    let first = journal.prune(&leader, 3_000_000, &retention).await.unwrap();
    assert_eq!(first, PRUNE_BATCH);
    let (last_id, _) = &history[PRUNE_BATCH];
    let before = raw.get(history[0].1.as_str(), None).await.unwrap();

    let second = journal.prune(&leader, 3_000_000, &retention).await.unwrap();

    assert_eq!(second, 1, "the deployment finished last was not pruned");
    let left = raw
        .get(leases::keys::deployment(last_id), None)
        .await
        .unwrap();
    assert!(left.kvs().is_empty(), "its record is left");
    let events = keys_under(&etcd, &leases::keys::deployment_events(last_id))
        .await
        .unwrap();
    assert_eq!(events, 0, "its events are left");
    let after = raw.get(history[0].1.as_str(), None).await.unwrap();
    assert_eq!(
        after.kvs()[0].mod_revision(),
        before.kvs()[0].mod_revision(),
        "a pruned deployment's summary was written again"
    );
}

/// #15 (noticed in stop 24, "a pruner pass with a very short retention can
/// race a live finishing step's pages"): a finished deployment whose
/// finishing step's further pages are not all written is still its
/// service's active deployment (the marker goes with the last page). A
/// pass pruned it anyway, and the pages written after (by this leader or
/// the next) were orphans of a pruned record. It is pruned once the
/// marker is cleared.
#[tokio::test]
async fn a_finished_deployment_still_active_is_not_pruned() {
    let etcd = EtcdCluster::single().await.unwrap();
    let mut raw = etcd.client().await.unwrap();
    let leader = fence(&mut raw, "/test/leader").await;
    let journal = Journal::new(crate::failover_client(&etcd).await);
    let mut record = record_for(&Scenario::single_batch(3, 7));
    record.state = DeploymentState::Failed;
    record.finished_unix_ms = 1_000_000;
    raw.put(
        leases::keys::deployment(ID),
        serde_json::to_vec(&record.header()).unwrap(),
        None,
    )
    .await
    .unwrap();
    raw.put(leases::keys::deployment_event(ID, 1), "[]", None)
        .await
        .unwrap();
    raw.put(
        leases::keys::history("web", 1_000_000, ID),
        serde_json::to_vec(&record.summary()).unwrap(),
        None,
    )
    .await
    .unwrap();
    raw.put(leases::keys::active("web"), ID, None)
        .await
        .unwrap();
    let retention = Retention {
        after: std::time::Duration::from_secs(1),
        keep: 0,
    };

    let pruned = journal.prune(&leader, 3_000_000, &retention).await.unwrap();

    assert_eq!(pruned, 0, "an active deployment was pruned");
    let header = raw.get(leases::keys::deployment(ID), None).await.unwrap();
    assert_eq!(header.kvs().len(), 1, "its record is gone");
    let events = keys_under(&etcd, &leases::keys::deployment_events(ID))
        .await
        .unwrap();
    assert_eq!(events, 1, "its events are gone");

    raw.delete(leases::keys::active("web"), None).await.unwrap();
    let pruned = journal.prune(&leader, 3_000_000, &retention).await.unwrap();
    assert_eq!(pruned, 1, "no longer active, it was not pruned");
}
