//! A command with a higher fencing token supersedes the one in flight
//! (#12 deliver 1), at one agent: real agent, real demo-app releases, the
//! coordinator's `AgentService` called directly.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use lockstep_tests::http::{json_field, request};
use lockstep_tests::{AgentFixture, DemoRelease, free_loopback_port, wait_for};
use proto::v1 as pb;
use proto::v1::agent_service_client::AgentServiceClient;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);
/// How long release B takes to become ready: well inside its
/// `healthy_deadline` (20 s), so an agent that waited for the older switch
/// would see B become current.
const B_READY_AFTER_MS: u64 = 12_000;

type Client = AgentServiceClient<tonic::transport::Channel>;

async fn served_version(port: u16) -> Result<String, String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let (status, body) = request(addr, "GET", "/version", "").await?;
    if status != 200 {
        return Err(format!("/version answered {status}"));
    }
    json_field(&body, "version").ok_or_else(|| format!("no version in {body}"))
}

/// The process `pid` has ended (a zombie counts: it no longer serves).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_ascii_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// Pids of the instance processes the agent recorded for `digest`
/// (`data/processes/SERVICE-SLOT-DIGEST12-PID.json`, written at spawn).
fn recorded_pids(agent: &AgentFixture, digest: &str) -> Vec<u32> {
    let short: String = digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect();
    let dir = agent.dir().join("data/processes");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.contains(&format!("-{short}-")))
        .filter_map(|name| {
            name.trim_end_matches(".json")
                .rsplit('-')
                .next()
                .and_then(|pid| pid.parse().ok())
        })
        .collect()
}

fn apply(digest: &str, token: u64, deployment: &str) -> pb::ApplyRequest {
    pb::ApplyRequest {
        service: "demo".into(),
        release_digest: digest.to_owned(),
        fencing_token: token,
        deployment_id: deployment.to_owned(),
        command_seq: 0,
    }
}

async fn service_status(client: &Client) -> Result<pb::ServiceStatus, String> {
    let mut client = client.clone();
    let reply = client
        .status(pb::StatusRequest {
            service: "demo".into(),
        })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    reply
        .services
        .into_iter()
        .next()
        .ok_or_else(|| "no service in the status".to_owned())
}

/// Puts release B on the host without running it: its install fails while
/// `gate` exists (the bundle stays stored), A keeps serving. Returns B's digest.
async fn stored_not_running(agent: &AgentFixture, b: &Path, gate: &Path) -> String {
    std::fs::write(gate, "").unwrap();
    assert!(agent.install(b).await.is_err(), "B must not start yet");
    std::fs::remove_file(gate).unwrap();
    let releases = agent.agentctl_json(&["releases", "demo"]).await.unwrap();
    let last = releases["history"].as_array().unwrap().last().unwrap();
    assert_eq!(last["succeeded"], false, "{releases}");
    last["to"].as_str().unwrap().to_owned()
}

/// A (1.0.0, serving) installed and B (2.0.0, ready `b_ready_after_ms`
/// after it starts) stored: `(a_digest, b_digest)`.
async fn a_serving_b_stored(
    agent: &AgentFixture,
    port: u16,
    b_ready_after_ms: u64,
) -> (String, String) {
    let a = DemoRelease::new("1.0.0", port).build(agent.dir()).unwrap();
    agent.install(&a).await.unwrap();
    let releases = agent.agentctl_json(&["releases", "demo"]).await.unwrap();
    let a_digest = releases["current"]["digest"].as_str().unwrap().to_owned();
    let gate = agent.dir().join("b-cannot-start");
    let b = DemoRelease::new("2.0.0", port)
        .with_config(&format!(
            "[faults]\nready_after_ms = {b_ready_after_ms}\nfail_at_start_while_exists = {:?}\n",
            gate.display().to_string()
        ))
        .build(agent.dir())
        .unwrap();
    let b_digest = stored_not_running(agent, &b, &gate).await;
    (a_digest, b_digest)
}

async fn verdict(client: &Client, request: pb::ApplyRequest) -> pb::CommandVerdict {
    client
        .clone()
        .apply(request)
        .await
        .unwrap()
        .into_inner()
        .verdict
        .unwrap()
}

/// Waits until the agent started an instance of `digest`: its pids.
async fn started(agent: &AgentFixture, digest: &str) -> Vec<u32> {
    wait_for("the release's instance to start", DEADLINE, || async {
        let pids = recorded_pids(agent, digest);
        if pids.is_empty() {
            Err(format!("no process of {digest} yet"))
        } else {
            Ok(pids)
        }
    })
    .await
    .unwrap()
}

/// Waits until the host's last recorded switch carries `token`.
async fn recorded(client: &Client, token: u64) -> pb::ServiceStatus {
    wait_for("the host to record the newer token", DEADLINE, || async {
        let status = service_status(client).await?;
        match &status.last_switch {
            Some(last) if last.fencing_token == token => Ok(status),
            other => Err(format!("last switch is {other:?}")),
        }
    })
    .await
    .unwrap()
}

/// Reproduces #12 Seen 1: after `lockstep abort`, `lockstep rollback web`
/// ended `finished (rolled_back)` while host eu1-b then finished the
/// earlier forward apply (older token) 16 ms later and ran the bad release.
/// At the agent: a slow forward Apply (token 5, release B, ready after
/// 12 s) is in flight when an Apply with token 6 to A, the release that
/// serves, arrives. The newer command must be taken at once (not refused
/// busy, not queued behind B), the switch to B cancelled (B's instances
/// stopped, A's process serving throughout), and the host's durable state
/// must say A with token 6 only once B's instances are gone; B never
/// becomes current. An Apply with the older token afterwards is refused
/// (STALE) and changes nothing.
#[tokio::test]
async fn a_higher_token_supersedes_the_switch_in_flight() {
    let agent = AgentFixture::start("host-31", "eu-1").await.unwrap();
    let port = free_loopback_port().unwrap();
    let (a_digest, b_digest) = a_serving_b_stored(&agent, port, B_READY_AFTER_MS).await;
    let client = AgentServiceClient::connect(format!("http://{}", agent.grpc_addr()))
        .await
        .unwrap();
    let before = service_status(&client).await.unwrap();
    let a_pid = before.instances[0].pid;

    // The forward apply (older token) is in flight: B's instance started.
    let forward = verdict(&client, apply(&b_digest, 5, "forward-t5")).await;
    assert_eq!(
        forward.outcome(),
        pb::CommandOutcome::Accepted,
        "{forward:?}"
    );
    let b_pids = started(&agent, &b_digest).await;

    // The rollback (newer token) to A, the release that serves.
    let back = verdict(&client, apply(&a_digest, 6, "rollback-t6")).await;
    assert_eq!(
        back.outcome(),
        pb::CommandOutcome::Accepted,
        "the newer token must be taken while B is in flight: {back:?}"
    );
    let done = recorded(&client, 6).await;
    // Reported done only once the switch to B is over.
    for pid in &b_pids {
        assert!(
            process_gone(*pid),
            "token 6 recorded while B's pid {pid} still runs"
        );
    }
    let last = done.last_switch.clone().unwrap();
    assert!(last.succeeded, "{last:?}");
    assert_eq!(last.to_digest, a_digest, "{last:?}");
    assert_eq!(last.deployment_id, "rollback-t6");
    assert_eq!(done.fencing_high_water, 6);
    assert_eq!(done.current.as_ref().unwrap().digest, a_digest);
    let pids: Vec<u32> = done.instances.iter().map(|i| i.pid).collect();
    assert_eq!(pids, [a_pid], "A's process kept serving: {done:?}");
    assert_eq!(served_version(port).await.unwrap(), "1.0.0");

    let releases = agent.agentctl_json(&["releases", "demo"]).await.unwrap();
    assert_eq!(
        releases["current"]["digest"],
        a_digest.as_str(),
        "{releases}"
    );
    let history = releases["history"].as_array().unwrap();
    assert!(
        !history
            .iter()
            .any(|h| h["to"] == b_digest.as_str() && h["succeeded"] == true),
        "B became current: {releases}"
    );
    let forward = history
        .iter()
        .find(|h| {
            h["trigger"]
                .as_str()
                .unwrap()
                .starts_with("apply forward-t5 ")
        })
        .unwrap_or_else(|| panic!("no record of the superseded apply: {releases}"));
    assert_eq!(forward["succeeded"], false, "{forward}");
    assert!(
        forward["reason"].as_str().unwrap().contains("superseded"),
        "{forward}"
    );

    // The older token again: refused, nothing changes.
    let stale = verdict(&client, apply(&b_digest, 5, "forward-t5-again")).await;
    assert_eq!(stale.outcome(), pb::CommandOutcome::Refused, "{stale:?}");
    assert_eq!(
        stale.refusal(),
        pb::RefusalReason::StaleFencingToken,
        "{stale:?}"
    );
    assert_eq!(stale.fencing_high_water, 6);
    let after: Value = agent.agentctl_json(&["releases", "demo"]).await.unwrap();
    assert_eq!(
        after, releases,
        "a refused command changed the durable state"
    );
    let status = service_status(&client).await.unwrap();
    assert_eq!(status.fencing_high_water, 6);
    assert!(recorded_pids(&agent, &b_digest).is_empty(), "{status:?}");
}

/// #12 deliver 1, "rolled forward to the newest desired release": a new
/// leader resuming a deployment re-sends, with its higher token, the Apply
/// of the release the host is already switching to. The switch in flight
/// goes on and ends as the newer command's (recorded with its deployment
/// and token) instead of being cancelled and started again: B's instance
/// is the one the older command started.
#[tokio::test]
async fn a_higher_token_for_the_release_in_flight_takes_the_switch_over() {
    let agent = AgentFixture::start("host-32", "eu-1").await.unwrap();
    let port = free_loopback_port().unwrap();
    let (_, b_digest) = a_serving_b_stored(&agent, port, 8_000).await;
    let client = AgentServiceClient::connect(format!("http://{}", agent.grpc_addr()))
        .await
        .unwrap();

    let first = verdict(&client, apply(&b_digest, 5, "deploy-t5")).await;
    assert_eq!(first.outcome(), pb::CommandOutcome::Accepted, "{first:?}");
    let b_pids = started(&agent, &b_digest).await;

    // The resuming leader's Apply of the same release, newer token.
    let resumed = verdict(&client, apply(&b_digest, 6, "deploy-t6")).await;
    assert_eq!(
        resumed.outcome(),
        pb::CommandOutcome::Accepted,
        "{resumed:?}"
    );
    let done = recorded(&client, 6).await;
    let last = done.last_switch.clone().unwrap();
    assert!(last.succeeded, "{last:?}");
    assert_eq!(last.to_digest, b_digest);
    assert_eq!(last.deployment_id, "deploy-t6");
    assert_eq!(done.current.as_ref().unwrap().digest, b_digest);
    // A's instance may still be listed, draining; B's must be the first ones.
    let pids: Vec<u32> = done
        .instances
        .iter()
        .filter(|i| i.release.as_ref().is_some_and(|r| r.digest == b_digest))
        .map(|i| i.pid)
        .collect();
    assert_eq!(pids, b_pids, "B was started again: {done:?}");
    assert_eq!(served_version(port).await.unwrap(), "2.0.0");
    let releases = agent.agentctl_json(&["releases", "demo"]).await.unwrap();
    let history = releases["history"].as_array().unwrap();
    assert!(
        !history.iter().any(|h| h["trigger"]
            .as_str()
            .unwrap()
            .starts_with("apply deploy-t5 ")),
        "one switch, recorded as the newer command's: {releases}"
    );
}

/// Noticed while building #15's Uninstall (the same race for ordinary
/// rollbacks): within one deployment (one token), the forward Apply of B
/// can reach the agent after the rollback's Apply of A (it was delayed in
/// the network, or still fetching B on the agent). On main it was taken,
/// as its token equals the mark, and the host switched to B after the
/// deployment had ended `rolled_back`. The coordinator numbers its
/// commands (`command_seq`, the engine's apply id): the late forward Apply,
/// numbered before the rollback's, is refused as overtaken and A serves.
#[tokio::test]
async fn a_forward_apply_that_arrives_after_its_rollback_is_refused() {
    let agent = AgentFixture::start("host-33", "eu-1").await.unwrap();
    let port = free_loopback_port().unwrap();
    let (a_digest, b_digest) = a_serving_b_stored(&agent, port, 0).await;
    let client = AgentServiceClient::connect(format!("http://{}", agent.grpc_addr()))
        .await
        .unwrap();

    // The rollback's Apply (number 2) arrives first and is carried out.
    let rollback = verdict(
        &client,
        pb::ApplyRequest {
            command_seq: 2,
            ..apply(&a_digest, 5, "deploy-t5")
        },
    )
    .await;
    assert_eq!(
        rollback.outcome(),
        pb::CommandOutcome::Accepted,
        "{rollback:?}"
    );
    recorded(&client, 5).await;
    // Then the forward Apply it reverted (number 1).
    let late = verdict(
        &client,
        pb::ApplyRequest {
            command_seq: 1,
            ..apply(&b_digest, 5, "deploy-t5")
        },
    )
    .await;
    assert_ne!(late.outcome(), pb::CommandOutcome::Accepted, "{late:?}");
    assert!(late.message.contains("taken first"), "{late:?}");
    let status = service_status(&client).await.unwrap();
    assert_eq!(status.current.unwrap().digest, a_digest);
    assert!(recorded_pids(&agent, &b_digest).is_empty(), "B was started");
    assert_eq!(served_version(port).await.unwrap(), "1.0.0");
    // The same command resent, and a later one, are still taken.
    let again = verdict(
        &client,
        pb::ApplyRequest {
            command_seq: 3,
            ..apply(&b_digest, 5, "deploy-t5")
        },
    )
    .await;
    assert_eq!(again.outcome(), pb::CommandOutcome::Accepted, "{again:?}");
}
