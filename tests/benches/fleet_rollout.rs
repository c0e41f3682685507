//! Rollout wall time of a fleet in 3 clusters (30 agents unless told)
//! against the theoretical minimum of the same plan: the sum over batches
//! of start + readiness delay + the old release's stop + `min_healthy_time`,
//! plus the final `bake_time`. A host counts as switched once its old
//! instances are gone (they drain on the shared socket until then), so
//! their stop is on the plan's path. "Start" and "stop" are measured in the
//! same run on the demo app by hand (no agent): spawn to READY=1 with no
//! readiness delay, and SIGTERM to exit; the medians. Ratios without them
//! are printed too.
//!
//! Two rollouts are timed: **cold**, to a release no host has (each host
//! fetches and unpacks it during the rollout, ahead of its batch when
//! staging keeps up), and **warm**, back to the release every host still
//! stores. On one machine every host's fetch shares its cores and disk, so
//! the difference is this machine's staging throughput more than the
//! product's.
//!
//! Where the time went: each rollout's batch timeline (from the journal's
//! events: a batch's applies to its first and last readiness, and on to
//! the next batch) and every event; then, from each agent's log, the
//! phases of its warm switch (budget slot asked -> new process started ->
//! ready -> old process ended), their medians, 90th percentiles and worst.
//!
//! `cargo build --release --workspace --bins && cargo bench -p lockstep-tests --bench fleet_rollout [-- AGENTS READY_MS MIN_HEALTHY_MS BAKE_MS]`
//! (the bench runs the binaries of its own profile; `--profile dev` with a
//! debug build works too and is slower)
//! Real etcd, one real coordinator, real agents and demo apps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use lockstep_tests::operator::{agents_known, push, record, start_deploy};
use lockstep_tests::timeline::{BatchTimeline, deployment_events};
use lockstep_tests::{CoordinatorFixture, DemoRelease, EtcdCluster, FleetFixture, wait_for};

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .filter(|a| !a.starts_with("--"))
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// Deploys and waits for the end; the wall time is the coordinator's own
/// (created to finished, one clock), so polling neither adds to it nor
/// needs to be frequent (at 300 agents a 10 ms poll of the record was
/// itself a load on etcd).
async fn deploy_and_wait(
    etcd: &EtcdCluster,
    urls: &[String],
    digest: &str,
    strategy: &Path,
) -> (Duration, serde_json::Value) {
    let id = start_deploy(urls, digest, strategy).await.unwrap();
    let finished = wait_for("the rollout to end", Duration::from_secs(1200), || async {
        // A read that times out on a loaded machine is asked again.
        let r = record(etcd, &id).await.map_err(|e| e.to_string())?;
        match r["state"].as_str() {
            Some("running" | "paused" | "awaiting_approval" | "rolling_back") | None => {
                Err(format!("{}", r["state"]))
            }
            Some(_) => Ok(r),
        }
    })
    .await
    .unwrap();
    let ms = |field: &str| finished[field].as_i64().unwrap();
    let wall = Duration::from_millis(
        u64::try_from(ms("finished_unix_ms") - ms("created_unix_ms")).unwrap(),
    );
    (wall, finished)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let agents = arg(1, 30) as usize;
    let ready_ms = arg(2, 300);
    let min_healthy_ms = arg(3, 1000);
    // The strategy's default bake is 3 × min_healthy_time.
    let bake_ms = arg(4, 3 * min_healthy_ms);
    let etcd = EtcdCluster::single().await.unwrap();
    let coordinator = CoordinatorFixture::start(&etcd.endpoints(), 10)
        .await
        .unwrap();
    let urls = vec![coordinator.url()];
    let ids: Vec<(String, String)> = (0..agents)
        .map(|i| (format!("host-{i:02}"), format!("cluster-{}", i % 3)))
        .collect();
    let layout: Vec<(&str, &str)> = ids.iter().map(|(a, c)| (a.as_str(), c.as_str())).collect();
    let fleet = FleetFixture::start(&layout, &etcd.endpoints(), &urls)
        .await
        .unwrap();
    // The agents' own budget must not be tighter than the plan's batches.
    let mut client = etcd.client().await.unwrap();
    for c in 0..3 {
        client
            .put(
                format!("/lockstep/v1/clusters/cluster-{c}/policy"),
                format!("{{\"max_disruptions\":{agents}}}"),
                None,
            )
            .await
            .unwrap();
    }
    agents_known(&urls, agents).await.unwrap();

    let work = tempfile::tempdir().unwrap();
    let config = format!("[faults]\nready_after_ms = {ready_ms}\n");
    let v1 = DemoRelease::new("1.0.0", 1)
        .with_config(&config)
        .build(work.path())
        .unwrap();
    let v2 = DemoRelease::new("2.0.0", 1)
        .with_config(&config)
        .build(work.path())
        .unwrap();
    let strategy = work.path().join("strategy.toml");
    std::fs::write(
        &strategy,
        format!(
            "[strategy]\ncanary = 1\nrehearse_rollback = false\nmax_unavailable = \"50%\"\nmin_healthy = \"50%\"\nmin_healthy_time = \"{min_healthy_ms}ms\"\nbake_time = \"{bake_ms}ms\"\nhealthy_deadline = \"60s\"\n"
        ),
    )
    .unwrap();
    let mut digests = Vec::new();
    for bundle in [&v1, &v2] {
        digests.push(push(&urls, bundle).await.unwrap());
    }
    let (_, first) = deploy_and_wait(&etcd, &urls, &digests[0], &strategy).await;
    assert_eq!(first["state"], "succeeded", "{first}");
    let (cold, cold_record) = deploy_and_wait(&etcd, &urls, &digests[1], &strategy).await;
    assert_eq!(cold_record["state"], "succeeded", "{cold_record}");
    let (warm, warm_record) = deploy_and_wait(&etcd, &urls, &digests[0], &strategy).await;
    assert_eq!(warm_record["state"], "succeeded", "{warm_record}");
    let batches = u32::try_from(cold_record["batches"].as_u64().unwrap()).unwrap();
    let app = tokio::task::spawn_blocking(move || app_start_and_stop(work.path()))
        .await
        .unwrap();
    let gates = Duration::from_millis(ready_ms + min_healthy_ms);
    let bake = Duration::from_millis(bake_ms);
    let minimum = (app.start + gates + app.stop) * batches + bake;
    let without_app = gates * batches + bake;
    println!(
        "fleet_rollout: {agents} agents in 3 clusters, {batches} batches, app start {} ms and stop {} ms (medians of {APP_SAMPLES}), readiness delay {ready_ms} ms, min_healthy_time {min_healthy_ms} ms, bake_time {bake_ms} ms",
        app.start.as_millis(),
        app.stop.as_millis()
    );
    println!(
        "fleet_rollout: theoretical minimum {:.2} s ({:.2} s without the app's start and stop)",
        minimum.as_secs_f64(),
        without_app.as_secs_f64()
    );
    for (name, wall) in [
        ("cold (staging inside the rollout)", cold),
        ("warm (every host stores the release)", warm),
    ] {
        println!(
            "fleet_rollout: {name}: wall {:.2} s, ratio {:.3} (without the app's start and stop: {:.3})",
            wall.as_secs_f64(),
            wall.as_secs_f64() / minimum.as_secs_f64(),
            wall.as_secs_f64() / without_app.as_secs_f64()
        );
    }
    // A host is ready once its new instance is and its old one is gone.
    let to_ready = app.start + Duration::from_millis(ready_ms) + app.stop;
    let to_next = Duration::from_millis(min_healthy_ms);
    println!("cold rollout:");
    timeline(&etcd, &cold_record, to_ready, to_next).await;
    println!("warm rollout:");
    timeline(&etcd, &warm_record, to_ready, to_next).await;
    host_profile(&fleet, agents);
    drop(fleet);
}

/// Where the time went: each batch's (against `to_ready` from its
/// applies to a readiness and `to_next` to the next batch), then each
/// event's offset from the deployment's start.
async fn timeline(
    etcd: &EtcdCluster,
    record: &serde_json::Value,
    to_ready: Duration,
    to_next: Duration,
) {
    let id = record["id"].as_str().unwrap_or_default();
    let events = deployment_events(etcd, id).await.unwrap();
    let to_ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    println!(
        "  {}",
        BatchTimeline::of(&events).describe(to_ms(to_ready), to_ms(to_next))
    );
    let start = events.first().map_or(0, |e| e.at_unix_ms);
    for e in events {
        println!(
            "  +{:>6} ms {:<18} {:<10} {}",
            e.at_unix_ms - start,
            e.kind,
            e.instance,
            e.message
        );
    }
}

/// Each host's last switch (the warm rollout's), from its agent's log:
/// asking for a budget slot -> the new instance's process started ->
/// ready -> the old one's process ended. The medians, 90th percentiles
/// and worst over the hosts: where a batch's spread comes from.
fn host_profile(fleet: &FleetFixture, agents: usize) {
    // Seconds since midnight of a log line's RFC 3339 timestamp.
    let at = |line: &str| -> Option<f64> {
        let clock = line.get(11..26)?;
        let mut parts = clock.split(':');
        let h: f64 = parts.next()?.parse().ok()?;
        let m: f64 = parts.next()?.parse().ok()?;
        let s: f64 = parts.next()?.parse().ok()?;
        Some(h * 3600.0 + m * 60.0 + s)
    };
    let mut phases: [Vec<f64>; 3] = Default::default();
    for i in 0..agents {
        let Some(host) = fleet.host(&format!("host-{i:02}")) else {
            continue;
        };
        let log = host.agent.log_text();
        let lines: Vec<&str> = log.lines().collect();
        let Some(asked) = lines
            .iter()
            .rposition(|l| l.contains("waiting for a slot in the disruption budget"))
        else {
            continue;
        };
        let marks = [
            "instance process started",
            "state=\"ready\"",
            "instance process ended",
        ];
        let mut times = vec![at(lines[asked])];
        let mut from = asked;
        for mark in marks {
            match lines[from..].iter().position(|l| l.contains(mark)) {
                Some(k) => {
                    from += k;
                    times.push(at(lines[from]));
                }
                None => times.push(None),
            }
        }
        let Some(times) = times.into_iter().collect::<Option<Vec<f64>>>() else {
            continue;
        };
        for (phase, pair) in phases.iter_mut().zip(times.windows(2)) {
            phase.push((pair[1] - pair[0]) * 1000.0);
        }
    }
    let names = [
        "budget slot asked -> new process started",
        "started -> ready",
        "ready -> old process ended",
    ];
    println!("fleet_rollout: each host's warm switch, from its agent's log:");
    for (name, mut ms) in names.into_iter().zip(phases) {
        if ms.is_empty() {
            println!("  {name}: n/a (no such lines in the agents' logs)");
            continue;
        }
        ms.sort_by(f64::total_cmp);
        let pick = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        println!(
            "  {name}: median {:.0} ms, p90 {:.0}, worst {:.0} ({} hosts)",
            pick(0.5),
            pick(0.9),
            pick(1.0),
            ms.len()
        );
    }
}

const APP_SAMPLES: usize = 11;

/// The demo app's own start and stop, as medians.
struct AppTimes {
    start: Duration,
    stop: Duration,
}

/// The demo app by hand (no agent, no shim): spawn to READY=1 on a notify
/// socket held here, with no readiness delay, then SIGTERM to its exit
/// (its drain of connections accepted just before the signal).
fn app_start_and_stop(dir: &Path) -> AppTimes {
    let app = lockstep_tests::workspace_bin("demo-app").unwrap();
    let config = dir.join("start-config.toml");
    std::fs::write(&config, "version = \"start\"\n").unwrap();
    let (mut starts, mut stops): (Vec<Duration>, Vec<Duration>) = (0..APP_SAMPLES)
        .map(|i| {
            let path = dir.join(format!("start-{i}.notify"));
            let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let began = Instant::now();
            let mut child = std::process::Command::new(&app)
                .args(["--config", &config.display().to_string()])
                .args(["--listen", "127.0.0.1:0"])
                .env("NOTIFY_SOCKET", &path)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let mut buf = [0u8; 512];
            loop {
                let n = socket.recv(&mut buf).unwrap();
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
                {
                    break;
                }
            }
            let start = began.elapsed();
            let stopping = Instant::now();
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
            child.wait().unwrap();
            (start, stopping.elapsed())
        })
        .unzip();
    starts.sort();
    stops.sort();
    AppTimes {
        start: starts[APP_SAMPLES / 2],
        stop: stops[APP_SAMPLES / 2],
    }
}
