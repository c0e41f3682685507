//! Lock latency and takeover, side by side with `etcdctl lock` against the
//! same etcd in the same run.
//!
//! `cargo bench -p leases --bench locks` prints:
//! - uncontended acquire + release (median, p99): ours vs `etcdctl lock K -- true`;
//! - dead-holder takeover after kill -9 at TTL 5 s and 10 s: ours vs
//!   `etcdctl lock --ttl`;
//! - release-to-waiter time when a holder shuts down gracefully.
//!
//! The binary doubles as the holder process that gets killed
//! (`locks --hold ENDPOINT KEY TTL`), so takeover is measured against a real
//! dead process, not a dropped future.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use leases::{Etcd, EtcdTiming, FencedMutex, Session, Ttl};
use lockstep_tests::EtcdCluster;
use tokio::time::Instant;

const UNCONTENDED_ROUNDS: usize = 300;
const ETCDCTL_ROUNDS: usize = 50;
const TAKEOVER_ROUNDS: usize = 3;
const GRACEFUL_ROUNDS: usize = 20;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Some(i) = args.iter().position(|a| a == "--hold") {
        let [endpoint, key, ttl] = &args[i + 1..] else {
            bail!("usage: locks --hold ENDPOINT KEY TTL_SECS");
        };
        return runtime.block_on(hold(endpoint, key, ttl.parse()?));
    }
    runtime.block_on(run())
}

/// Holder mode: take the lock, say so, and hold it until killed.
async fn hold(endpoint: &str, key: &str, ttl: u64) -> Result<()> {
    let client = Etcd::connect(&[endpoint.to_owned()], EtcdTiming::default()).await?;
    let session = Session::grant(client, Ttl::from_secs(ttl)?).await?;
    let _guard = FencedMutex::named(key)
        .try_lock(&session, "bench holder")
        .await?;
    println!("held");
    std::future::pending::<()>().await;
    Ok(())
}

async fn run() -> Result<()> {
    let etcd = EtcdCluster::single().await?;
    let endpoint = etcd.endpoint(0)?;
    println!("etcd at {endpoint}");

    // Uncontended acquire + release.
    let session = Session::grant(
        Etcd::connect(&etcd.endpoints(), EtcdTiming::default()).await?,
        Ttl::from_secs(10)?,
    )
    .await?;
    let lock = FencedMutex::named("bench/uncontended");
    let mut ours = Vec::with_capacity(UNCONTENDED_ROUNDS);
    for _ in 0..UNCONTENDED_ROUNDS {
        let started = Instant::now();
        lock.try_lock(&session, "bench").await?.release().await?;
        ours.push(started.elapsed());
    }
    let mut etcdctl = Vec::with_capacity(ETCDCTL_ROUNDS);
    for _ in 0..ETCDCTL_ROUNDS {
        let started = Instant::now();
        let status = etcdctl_command(&endpoint)
            .args(["lock", "bench/etcdctl", "--", "true"])
            .status()?;
        etcdctl.push(started.elapsed());
        if !status.success() {
            bail!("etcdctl lock failed: {status}");
        }
    }
    report("acquire + release, ours", &mut ours);
    report("acquire + release, etcdctl lock -- true", &mut etcdctl);

    // Dead-holder takeover.
    for ttl in [5u64, 10] {
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for round in 0..TAKEOVER_ROUNDS {
            ours.push(takeover_ours(&etcd, &endpoint, ttl, round).await?);
            theirs.push(takeover_etcdctl(&endpoint, ttl, round)?);
        }
        report(&format!("kill -9 takeover at ttl {ttl}s, ours"), &mut ours);
        report(
            &format!("kill -9 takeover at ttl {ttl}s, etcdctl lock --ttl {ttl}"),
            &mut theirs,
        );
    }

    // Graceful shutdown: the holder revokes its session.
    let mut graceful = Vec::with_capacity(GRACEFUL_ROUNDS);
    let waiter = Session::grant(
        Etcd::connect(&etcd.endpoints(), EtcdTiming::default()).await?,
        Ttl::from_secs(10)?,
    )
    .await?;
    let lock = FencedMutex::named("bench/graceful");
    for _ in 0..GRACEFUL_ROUNDS {
        let holder = Session::grant(
            Etcd::connect(&etcd.endpoints(), EtcdTiming::default()).await?,
            Ttl::from_secs(10)?,
        )
        .await?;
        let guard = lock.try_lock(&holder, "graceful holder").await?;
        let waiting = lock.lock(&waiter, "waiter", Duration::from_secs(30));
        tokio::pin!(waiting);
        // Let the waiter reach its watch before the holder leaves.
        tokio::select! {
            _ = &mut waiting => bail!("waiter acquired a held lock"),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        drop(guard);
        let started = Instant::now();
        holder.close().await?;
        let acquired = waiting.await?;
        graceful.push(started.elapsed());
        acquired.release().await?;
    }
    report(
        "graceful holder shutdown to waiter acquired, ours",
        &mut graceful,
    );
    Ok(())
}

async fn takeover_ours(
    etcd: &EtcdCluster,
    endpoint: &str,
    ttl: u64,
    round: usize,
) -> Result<Duration> {
    let key = format!("bench/takeover-{ttl}-{round}");
    let mut holder = Command::new(std::env::current_exe()?)
        .args(["--hold", endpoint, &key, &ttl.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    wait_for_line(&mut holder, "held")?;
    let session = Session::grant(
        Etcd::connect(&etcd.endpoints(), EtcdTiming::default()).await?,
        Ttl::from_secs(ttl)?,
    )
    .await?;
    let lock = FencedMutex::named(&key);
    let waiting = lock.lock(&session, "heir", Duration::from_secs(60));
    tokio::pin!(waiting);
    tokio::select! {
        _ = &mut waiting => bail!("heir acquired a held lock"),
        () = tokio::time::sleep(Duration::from_millis(200)) => {}
    }
    holder.kill()?;
    let killed = Instant::now();
    holder.wait()?;
    waiting.await?.release().await?;
    Ok(killed.elapsed())
}

fn takeover_etcdctl(endpoint: &str, ttl: u64, round: usize) -> Result<Duration> {
    let key = format!("bench/etcdctl-takeover-{ttl}-{round}");
    let ttl_flag = format!("--ttl={ttl}");
    let mut holder = etcdctl_command(endpoint)
        .args([
            "lock",
            &ttl_flag,
            &key,
            "--",
            "sh",
            "-c",
            "echo held; exec sleep 600",
        ])
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()?;
    wait_for_line(&mut holder, "held")?;
    let mut heir = etcdctl_command(endpoint)
        .args(["lock", &ttl_flag, &key, "--", "echo", "acquired"])
        .stdout(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(200));
    let group = nix::unistd::Pid::from_raw(i32::try_from(holder.id())?);
    // The whole group: etcdctl and the sleep it runs.
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL)?;
    let killed = std::time::Instant::now();
    holder.wait()?;
    wait_for_line(&mut heir, "acquired")?;
    let took = killed.elapsed();
    heir.wait()?;
    Ok(took)
}

fn etcdctl_command(endpoint: &str) -> Command {
    let mut command = Command::new("etcdctl");
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"));
    command
}

fn wait_for_line(child: &mut Child, expected: &str) -> Result<()> {
    let stdout = child.stdout.take().context("child has no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    match lines.next() {
        Some(Ok(line)) if line.trim() == expected => Ok(()),
        other => bail!("expected {expected:?} from the child, got {other:?}"),
    }
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let pick = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[index.min(samples.len() - 1)]
    };
    println!(
        "{what}: median {:.2} ms, p99 {:.2} ms, min {:.2} ms, max {:.2} ms (n={})",
        pick(0.5).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        samples[0].as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
        samples.len()
    );
}
