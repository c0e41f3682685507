//! `Uplink`: the report stream to a coordinator.

use std::time::Duration;

use agent::host::Host;
use agent::uplink::Uplink;
use proto::v1 as pb;
use proto::v1::agent_report::Body;

use crate::helper::{self, Fake};

const WITHIN: Duration = Duration::from_secs(20);

fn registration(report: &pb::AgentReport) -> &pb::AgentIdentity {
    match &report.body {
        Some(Body::Registration(identity)) => identity,
        other => panic!("expected a registration, got {other:?}"),
    }
}

fn snapshot(report: &pb::AgentReport) -> &pb::StatusResponse {
    match &report.body {
        Some(Body::Status(status)) => status,
        other => panic!("expected a status snapshot, got {other:?}"),
    }
}

#[tokio::test]
async fn registers_then_snapshots_and_reconnects_after_the_stream_drops() {
    let dir = tempfile::tempdir().unwrap();
    // The first stream is dropped after two reports; acks ask for a
    // snapshot every 100 ms.
    let coordinator = helper::serve(Fake::reports(2, 100)).await;
    let config = helper::agent_config(
        &dir.path().join("agent"),
        &[&coordinator.url],
        "\"demo-app\", \"billing\"",
    );
    let host = Host::open(config, "/nonexistent/shim".into())
        .await
        .unwrap();
    let uplink = Uplink::start(host.clone(), std::slice::from_ref(&coordinator.url));

    let fake = coordinator.fake.clone();
    helper::wait_until("a second stream with periodic snapshots", WITHIN, || {
        let streams = fake.streams();
        streams.len() >= 2 && streams[1].len() >= 4
    })
    .await;

    let streams = coordinator.fake.streams();
    for (i, stream) in streams.iter().enumerate() {
        let seqs: Vec<u64> = stream.iter().map(|r| r.seq).collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "stream {i}: seq must count up from 1");
        let identity = registration(&stream[0]);
        assert_eq!(identity.agent_id, "web-1");
        assert_eq!(identity.cluster, "eu-1");
        assert_eq!(identity.services, ["demo-app", "billing"]);
        let first = snapshot(&stream[1]);
        assert_eq!(
            first.agent.as_ref().map(|a| a.agent_id.as_str()),
            Some("web-1")
        );
    }
    assert_eq!(
        streams[0].len(),
        2,
        "the first stream was dropped after two reports"
    );
    // The acks' 100 ms interval paces the snapshots after the first.
    for report in &streams[1][2..4] {
        snapshot(report);
    }

    // Dropping the handle ends the streams, and no new one is opened.
    drop(uplink);
    let fake = coordinator.fake.clone();
    helper::wait_until("every report stream to end", WITHIN, || {
        fake.ended() == fake.streams().len()
    })
    .await;
    assert_eq!(coordinator.fake.streams().len(), streams.len());
}
