//! The soak (#18 deliver 7's `--soak` mode): on one lab, rollout after
//! rollout (2.0.0 and 3.0.0 in turn), each with a fault picked at random
//! from the scenarios' faults, for `LOCKSTEP_SOAK_SECS` (default an hour);
//! then a summary per fault. Every round must succeed, with no failed
//! client request and nothing left behind before the next one.
//!
//! Ignored in the suite; run it with
//! `LOCKSTEP_SOAK_SECS=3600 cargo test -p lockstep-tests --test faults --
//! --ignored soak --nocapture` (`LOCKSTEP_SOAK_SEED` replays a sequence).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{ANY_PORT, DEADLINE, Fleet, PAUSE, in_lab, strategy};
use lockstep_tests::operator::{
    agents_known, every_host_serves, finished, leader_url, push, record, start_deploy,
};
use lockstep_tests::{DemoRelease, wait_for};

const LENGTH_ENV: &str = "LOCKSTEP_SOAK_SECS";
const SEED_ENV: &str = "LOCKSTEP_SOAK_SEED";
const DEFAULT_LENGTH: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    AgentKilled,
    EtcdLeaderUnplugged,
    EtcdMemberPaused,
    EtcdFollowerKilled,
    LeaderFrozen,
    LeaderPartitioned,
}

const FAULTS: [Fault; 6] = [
    Fault::AgentKilled,
    Fault::EtcdLeaderUnplugged,
    Fault::EtcdMemberPaused,
    Fault::EtcdFollowerKilled,
    Fault::LeaderFrozen,
    Fault::LeaderPartitioned,
];

/// What a fault left to undo once the deployment ended.
enum Undo {
    Nothing,
    Plug(usize),
    Restart(usize),
    Resume(usize),
    Heal(usize),
}

/// xorshift64: enough to pick faults, and replayable from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % u64::try_from(n).unwrap()).unwrap()
    }
}

/// One round's result.
struct Round {
    fault: Fault,
    /// `succeeded`, or what went wrong.
    outcome: String,
    took: Duration,
    client_failures: u64,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
#[ignore = "an hour of random faults: LOCKSTEP_SOAK_SECS=3600 cargo test -p lockstep-tests --test faults -- --ignored soak --nocapture"]
fn soak() {
    let length = env_u64(LENGTH_ENV).map_or(DEFAULT_LENGTH, Duration::from_secs);
    let seed = env_u64(SEED_ENV).unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    in_lab("soak", move |nodes, mut fleet| async move {
        eprintln!("soak: {length:?} of random faults, seed {seed} ({SEED_ENV} replays it)");
        let mut rng = Rng(seed);
        let steady = strategy(fleet.work.path(), "steady", "2s");
        let mut releases = Vec::new();
        for version in ["2.0.0", "3.0.0"] {
            let bundle = DemoRelease::new(version, ANY_PORT)
                .build(fleet.work.path())
                .unwrap();
            releases.push((version, push(&fleet.urls, &bundle).await.unwrap()));
        }
        let started = Instant::now();
        let mut rounds: Vec<Round> = Vec::new();
        while started.elapsed() < length {
            let (version, digest) = releases[rounds.len() % releases.len()].clone();
            let fault = FAULTS[rng.below(FAULTS.len())];
            let failures_before = client_failures(&fleet).await;
            // A fault's aftermath can leave the coordinators without a
            // leader for a while (the CLI refuses a deploy then): waited
            // for, and said.
            let leaderless = Instant::now();
            leading(&fleet).await;
            let began = Instant::now();
            // Refused while no coordinator leads: nothing started, so it
            // is tried again.
            let urls = &fleet.urls;
            let id = wait_for("a leader to take the deploy", DEADLINE, || async {
                match start_deploy(urls, &digest, &steady).await {
                    Err(e) if e.to_string().contains("not the leader") => Err(e.to_string()),
                    other => Ok(other),
                }
            })
            .await
            .unwrap()
            .unwrap();
            if leaderless.elapsed() > Duration::from_secs(1) {
                eprintln!(
                    "soak round {}: the deploy was taken {:.1?} after the last round ended",
                    rounds.len() + 1,
                    leaderless.elapsed()
                );
            }
            fleet.under_way(&id).await;
            let undo = inject(fault, &nodes, &mut fleet, &id).await;
            let ended = finished(&fleet.etcd, &id).await;
            let took = began.elapsed();
            undo_fault(undo, &nodes, &mut fleet).await;
            let mut outcome = match ended {
                Ok(r) if r["state"] == "succeeded" => {
                    match every_host_serves(&fleet.fleet, version).await {
                        Ok(()) => "succeeded".to_owned(),
                        Err(e) => format!("succeeded, but {e}"),
                    }
                }
                Ok(r) => format!("ended {}: {}", r["state"], r["outcome"]),
                Err(e) => e.to_string(),
            };
            if let Err(left) = fleet.leftovers().await {
                outcome = format!("{outcome}; left behind: {left}");
            }
            agents_known(&fleet.urls, super::LAYOUT.len())
                .await
                .unwrap();
            let client_failures = client_failures(&fleet).await - failures_before;
            eprintln!(
                "soak round {}: {fault:?} -> {outcome} in {took:.1?}, {client_failures} failed client request(s)",
                rounds.len() + 1
            );
            let stuck = outcome != "succeeded";
            rounds.push(Round {
                fault,
                outcome,
                took,
                client_failures,
            });
            if stuck {
                break;
            }
        }
        summary(&rounds, started.elapsed(), seed);
        let failed: Vec<String> = rounds
            .iter()
            .filter(|r| r.outcome != "succeeded" || r.client_failures > 0)
            .map(|r| {
                format!(
                    "{:?}: {} ({} failed requests)",
                    r.fault, r.outcome, r.client_failures
                )
            })
            .collect();
        assert!(failed.is_empty(), "soak rounds failed: {failed:#?}");
        fleet.nothing_left().await;
    });
}

async fn client_failures(fleet: &Fleet) -> u64 {
    let mut failed = 0;
    for (_, poller) in &fleet.pollers {
        failed += poller.snapshot().await.failed;
    }
    failed
}

/// The index of the coordinator that leads now.
async fn leading(fleet: &Fleet) -> usize {
    wait_for("a coordinator to lead", DEADLINE, || async {
        let url = leader_url(&fleet.etcd).await.ok_or("no leader")?;
        fleet
            .urls
            .iter()
            .position(|u| *u == url)
            .ok_or("an unknown leader")
    })
    .await
    .unwrap()
}

async fn inject(fault: Fault, nodes: &super::Nodes, fleet: &mut Fleet, id: &str) -> Undo {
    let lab = &nodes.lab;
    match fault {
        Fault::AgentKilled => {
            let index = Rng(fleet_seed(id)).below(fleet.fleet.hosts.len());
            let agent = &mut fleet.fleet.hosts[index].agent;
            agent.kill().await.unwrap();
            agent.start_again().await.unwrap();
            Undo::Nothing
        }
        Fault::EtcdLeaderUnplugged => {
            let leader = fleet.etcd.leader().await.unwrap();
            fleet.etcd.set_reachable(leader, false).unwrap();
            lab.unplug(&nodes.etcd[leader]).unwrap();
            Undo::Plug(leader)
        }
        Fault::EtcdMemberPaused => {
            let member = Rng(fleet_seed(id)).below(fleet.etcd.len());
            let before = record(&fleet.etcd, id).await.unwrap();
            let paused_at = Instant::now();
            fleet.etcd.pause(member).unwrap();
            let etcd = &fleet.etcd;
            wait_for("a journal write during a 10 s pause", DEADLINE, || async {
                let now = record(etcd, id).await.map_err(|e| e.to_string())?;
                if now != before && paused_at.elapsed() >= PAUSE {
                    Ok(())
                } else {
                    Err(format!("{:.1?} paused", paused_at.elapsed()))
                }
            })
            .await
            .unwrap();
            fleet.etcd.resume(member).unwrap();
            Undo::Nothing
        }
        Fault::EtcdFollowerKilled => {
            let leader = fleet.etcd.leader().await.unwrap();
            let follower = (leader + 1) % fleet.etcd.len();
            fleet.etcd.kill(follower).unwrap();
            Undo::Restart(follower)
        }
        Fault::LeaderFrozen => {
            let leader = leading(fleet).await;
            fleet.coordinators[leader].pause().unwrap();
            Undo::Resume(leader)
        }
        Fault::LeaderPartitioned => {
            let leader = leading(fleet).await;
            for member in &nodes.etcd {
                lab.partition(&nodes.coordinators[leader], member).unwrap();
            }
            Undo::Heal(leader)
        }
    }
}

async fn undo_fault(undo: Undo, nodes: &super::Nodes, fleet: &mut Fleet) {
    let lab = &nodes.lab;
    match undo {
        Undo::Nothing => {}
        Undo::Plug(member) => {
            lab.plug(&nodes.etcd[member]).unwrap();
            fleet.etcd.set_reachable(member, true).unwrap();
            fleet.etcd.wait_healthy(member).await.unwrap();
        }
        Undo::Restart(member) => fleet.etcd.restart(member).await.unwrap(),
        Undo::Resume(coordinator) => fleet.coordinators[coordinator].resume().unwrap(),
        Undo::Heal(coordinator) => {
            for member in &nodes.etcd {
                lab.heal(member).unwrap();
            }
            lab.heal(&nodes.coordinators[coordinator]).unwrap();
        }
    }
}

/// A seed for picking within a round (which agent, which member).
fn fleet_seed(id: &str) -> u64 {
    id.bytes().fold(0x9e37_79b9_7f4a_7c15, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) | 1
}

fn summary(rounds: &[Round], elapsed: Duration, seed: u64) {
    let mut by_fault: BTreeMap<Fault, Vec<&Round>> = BTreeMap::new();
    for round in rounds {
        by_fault.entry(round.fault).or_default().push(round);
    }
    eprintln!(
        "soak summary: {} round(s) in {elapsed:.0?}, seed {seed}",
        rounds.len()
    );
    eprintln!(
        "{:<22} {:>6} {:>9} {:>9} {:>9} {:>8}",
        "fault", "rounds", "succeeded", "mean", "max", "failures"
    );
    for (fault, rounds) in by_fault {
        let succeeded = rounds.iter().filter(|r| r.outcome == "succeeded").count();
        let total: Duration = rounds.iter().map(|r| r.took).sum();
        let max = rounds.iter().map(|r| r.took).max().unwrap_or_default();
        let failures: u64 = rounds.iter().map(|r| r.client_failures).sum();
        let mean = total / u32::try_from(rounds.len()).unwrap();
        eprintln!(
            "{:<22} {:>6} {:>9} {:>8.1?} {:>8.1?} {:>8}",
            format!("{fault:?}"),
            rounds.len(),
            succeeded,
            mean,
            max,
            failures
        );
    }
}
