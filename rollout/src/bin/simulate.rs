//! `simulate`: run many seeded scenarios, or replay one with its trace.
//!
//! ```text
//! simulate --seeds N [--start S]   run seeds S..S+N (default S = 0)
//! simulate --seed S                replay one seed and print its trace
//! ```

use std::process::ExitCode;
use std::time::Instant;

use rollout::sim::{self, Scenario};

const USAGE: &str = "usage: simulate --seeds N [--start S] | --seed S";

fn parse(args: &[String]) -> Result<(Option<u64>, u64, u64), String> {
    let mut seed = None;
    let mut seeds = 1000;
    let mut start = 0;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let v = it.next().ok_or(format!("{name} needs a number; {USAGE}"))?;
            v.parse()
                .map_err(|_| format!("{name} {v:?} is not a number; {USAGE}"))
        };
        match flag.as_str() {
            "--seed" => seed = Some(value("--seed")?),
            "--seeds" => seeds = value("--seeds")?,
            "--start" => start = value("--start")?,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        }
    }
    Ok((seed, seeds, start))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (seed, seeds, start) = match parse(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(seed) = seed {
        let sc = Scenario::generate(seed);
        println!(
            "seed {seed}: {} instance(s), overlap {}",
            sc.plan.instances.len(),
            sc.plan.overlap
        );
        print!("{}", sc.plan.render());
        println!(
            "faults: {:?}",
            sim::FaultClass::ALL
                .iter()
                .filter(|c| sc.faults.has(**c))
                .collect::<Vec<_>>()
        );
        return match sim::run_scenario(&sc, true) {
            Ok(r) => {
                println!(
                    "outcome: {} ({} engine steps, {} ms virtual, {} restart(s))",
                    r.outcome, r.engine_steps, r.virtual_ms, r.restarts
                );
                ExitCode::SUCCESS
            }
            Err(_) => {
                eprint!("{}", sim::shrink(sc));
                ExitCode::FAILURE
            }
        };
    }
    let t = Instant::now();
    let summary = sim::run_many(start, seeds, 5);
    for f in &summary.failures {
        eprint!("{f}");
    }
    println!("{summary} in {:.2?}", t.elapsed());
    if summary.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
