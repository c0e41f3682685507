//! `Etcd` against real members: a dead or hung member costs a request at
//! most one attempt, a session's keep-alive moves off a hung member, and a
//! request no member answers fails within its deadline.

use std::time::{Duration, Instant};

use leases::{Etcd, EtcdTiming, Session, Ttl};
use lockstep_tests::EtcdCluster;

/// Reproduces #18 Seen 1 at the client: with the first member dead, reads
/// failed about half the time through etcd-client's balanced channel.
#[tokio::test]
async fn with_the_first_member_dead_every_request_is_answered_by_another() {
    let mut etcd = EtcdCluster::three().await.unwrap();
    // Attempts so long that one timing out could not pass for a slow
    // machine: the bound below tells "moved on" from "waited".
    let client = slow_attempts(&etcd, Duration::from_secs(30)).await;
    client.put("/test/failover", "v", None).await.unwrap();
    etcd.kill(0).unwrap();
    for _ in 0..20 {
        let started = Instant::now();
        let response = client.get("/test/failover", None).await.unwrap();
        assert_eq!(response.kvs().first().map(|kv| kv.value()), Some(&b"v"[..]));
        // A refused connection moves on at once; no attempt timed out.
        assert!(started.elapsed() < Duration::from_secs(15));
    }
}

/// A client whose every attempt may take `attempt`.
async fn slow_attempts(etcd: &EtcdCluster, attempt: Duration) -> Etcd {
    let timing = EtcdTiming {
        attempt_timeout: attempt,
        request_deadline: attempt * 4,
        ..EtcdTiming::default()
    };
    Etcd::connect(&etcd.endpoints(), timing).await.unwrap()
}

/// A hung member (SIGSTOP) costs one attempt, after which it is out of
/// rotation and requests go elsewhere at once.
#[tokio::test]
async fn a_hung_member_costs_one_attempt_then_leaves_rotation() {
    let mut etcd = EtcdCluster::three().await.unwrap();
    let attempt = Duration::from_secs(10);
    let client = slow_attempts(&etcd, attempt).await;
    client.put("/test/hung", "v", None).await.unwrap();
    etcd.pause(0).unwrap();
    let started = Instant::now();
    client.get("/test/hung", None).await.unwrap();
    assert!(started.elapsed() < attempt * 2, "more than one attempt");
    // Had any of these gone to the hung member, it alone would take
    // `attempt`.
    let started = Instant::now();
    for _ in 0..5 {
        client.get("/test/hung", None).await.unwrap();
    }
    assert!(
        started.elapsed() < attempt,
        "the hung member is still tried"
    );
    etcd.resume(0).unwrap();
}

/// The session's keep-alive stream lives on the first member; that member
/// hangs for longer than the session's loss margin: the unanswered
/// keep-alive moves the stream to another member and the session lives.
#[tokio::test]
async fn a_session_outlives_a_hung_member_its_keep_alive_was_on() {
    let mut etcd = EtcdCluster::three().await.unwrap();
    let session = Session::grant(crate::client(&etcd).await, Ttl::from_secs(6).unwrap())
        .await
        .unwrap();
    etcd.pause(0).unwrap();
    let lost = tokio::time::timeout(Duration::from_secs(12), session.lost()).await;
    etcd.resume(0).unwrap();
    assert!(
        lost.is_err(),
        "session lost while one member hung: {lost:?}"
    );
}

/// With every member gone, a request fails within its deadline (plus one
/// backoff), as DEADLINE_EXCEEDED naming the members.
#[tokio::test]
async fn a_request_no_member_answers_fails_within_its_deadline() {
    let mut etcd = EtcdCluster::single().await.unwrap();
    let timing = EtcdTiming {
        request_deadline: Duration::from_secs(1),
        ..EtcdTiming::default()
    };
    let client = Etcd::connect(&etcd.endpoints(), timing).await.unwrap();
    etcd.kill(0).unwrap();
    // Without its deadline the request would retry for ever: a bound far
    // above the 1 s deadline tells the two apart on a loaded machine too.
    let err = tokio::time::timeout(Duration::from_secs(15), client.get("/test/none", None))
        .await
        .expect("the request ended within its deadline")
        .unwrap_err();
    match &err {
        etcd_client::Error::GRpcStatus(status) => {
            assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{err}");
            assert!(
                status.message().contains(&etcd.endpoint(0).unwrap()),
                "{err}"
            );
        }
        other => panic!("not a status: {other}"),
    }
}
