//! `lockstep watch ID`: follows a deployment's events to its end. The exit
//! code is the outcome: 0 succeeded, 3 rolled back, 4 aborted, 5 failed.
//!
//! Text on a terminal: one progress bar per cluster (instances on target /
//! total, from `GetDeployment`) with event lines printed above them; text
//! elsewhere: event lines only; JSON: one event object per line.
//!
//! A broken stream is resumed from the next sequence number, through the
//! failover and leader redirect, for up to 60 s; then exit 69.
//!
//! Must never: print an event twice, or report an outcome it did not see
//! from the coordinator.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use proto::v1::{
    Deployment, DeploymentEvent, DeploymentEventKind, GetDeploymentRequest, WatchDeploymentRequest,
};

use crate::client::{self, Coordinators, Failure};
use crate::{Output, json, print_json_line, render};

/// How long `watch` keeps trying to get the stream back.
const RECONNECT_FOR: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Bars refresh at most this often: a replay of thousands of events must
/// not become thousands of `GetDeployment` calls.
const REFRESH_EVERY: Duration = Duration::from_millis(250);
/// A stream with no event for this long is asked whether it is alive: a
/// batch under observation is quiet for `min_healthy_time`, so silence
/// alone is not a failure.
const STREAM_IDLE: Duration = Duration::from_secs(15);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The deployment id (`lockstep deploy` prints it).
    pub id: String,
}

pub async fn run(c: &mut Coordinators, id: &str, output: Output) -> Result<(), Failure> {
    let mut view = View::new(output);
    if matches!(view, View::Bars { .. }) {
        let d = get(c, id).await?;
        view.progress(&d);
    }
    let mut last_seq: Option<u64> = None;
    let mut last_state: i32 = 0;
    let mut broken_since: Option<Instant> = None;
    let mut backoff = FIRST_BACKOFF;
    let mut last_refresh: Option<Instant> = None;
    // Only a stream that once worked is worth waiting for: a wrong URL or
    // an unknown id fails at once.
    let mut opened_once = false;
    loop {
        let request = WatchDeploymentRequest {
            deployment_id: id.to_owned(),
            from_seq: next_seq(last_seq),
        };
        let opened = c
            .call(|mut client| {
                let request = request.clone();
                async move { client.watch_deployment(request).await }
            })
            .await;
        let why = match opened {
            Err(failure) if !failure.is_transient() || !opened_once => {
                return Err(view.abandon(failure));
            }
            Err(failure) => failure.to_string(),
            Ok(mut stream) => {
                opened_once = true;
                loop {
                    let Ok(message) = tokio::time::timeout(STREAM_IDLE, stream.message()).await
                    else {
                        match get(c, id).await {
                            Ok(d) if render::exit_code_for(d.state).is_some() => {
                                return finish(c, &mut view, id, d.state).await;
                            }
                            Ok(_) => continue,
                            Err(failure) => break failure.to_string(),
                        }
                    };
                    match message {
                        Ok(Some(event)) => {
                            broken_since = None;
                            backoff = FIRST_BACKOFF;
                            if last_seq.is_some_and(|s| event.seq <= s) {
                                continue;
                            }
                            last_seq = Some(event.seq);
                            last_state = event.state;
                            view.event(&event)?;
                            let finished = event.kind == DeploymentEventKind::Finished as i32;
                            if finished && render::exit_code_for(event.state).is_some() {
                                return finish(c, &mut view, id, event.state).await;
                            }
                            if view.wants_refresh(&mut last_refresh) {
                                // A failed refresh only leaves the bars stale.
                                if let Ok(d) = get(c, id).await {
                                    view.progress(&d);
                                }
                            }
                        }
                        Ok(None) => {
                            // The server ends the stream when the deployment
                            // ends; anything else is a break.
                            if render::exit_code_for(last_state).is_some() {
                                return finish(c, &mut view, id, last_state).await;
                            }
                            match get(c, id).await {
                                Ok(d) if render::exit_code_for(d.state).is_some() => {
                                    return finish(c, &mut view, id, d.state).await;
                                }
                                _ => break "the event stream ended early".to_owned(),
                            }
                        }
                        Err(status) => {
                            let failure = Failure::from_status("the coordinator", &status);
                            if !failure.is_transient() {
                                return Err(view.abandon(failure));
                            }
                            break client::status_detail(&status);
                        }
                    }
                }
            }
        };
        let since = match broken_since {
            Some(since) => since,
            None => {
                view.note(&format!(
                    "the event stream broke ({why}); reconnecting for up to {}s",
                    RECONNECT_FOR.as_secs()
                ));
                *broken_since.insert(Instant::now())
            }
        };
        if since.elapsed() >= RECONNECT_FOR {
            return Err(view.abandon(Failure::Lost(format!(
                "lost the events of deployment {id} for {}s (last error: {why}); the deployment goes on without you: run `lockstep watch {id}` again once a coordinator answers",
                RECONNECT_FOR.as_secs()
            ))));
        }
        // The leader may have moved: start again from the first URL.
        c.forget();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// `from_seq` to ask for: everything when nothing was seen yet.
pub fn next_seq(last_seen: Option<u64>) -> u64 {
    last_seen.map_or(0, |s| s.saturating_add(1))
}

async fn get(c: &mut Coordinators, id: &str) -> Result<Deployment, Failure> {
    let request = GetDeploymentRequest {
        deployment_id: id.to_owned(),
    };
    c.call(|mut client| {
        let request = request.clone();
        async move { client.get_deployment(request).await }
    })
    .await
}

/// The end: final progress, the outcome line, the exit code. The record
/// is read through the failover (the coordinator that streamed the end may
/// be the one stopping); if no coordinator gives it, `seen_state` — the
/// terminal state the coordinator streamed, read from etcd — decides, and
/// a note says the details could not be read.
async fn finish(
    c: &mut Coordinators,
    view: &mut View,
    id: &str,
    seen_state: i32,
) -> Result<(), Failure> {
    let (line, code) = match get_with_failover(c, id).await {
        Ok(d) => {
            view.progress(&d);
            (
                render::finished_line(&d),
                render::exit_code_or_failed(d.state),
            )
        }
        Err(failure) => {
            view.note(&format!(
                "deployment {id} ended, but no coordinator gave its final record ({failure}); see `lockstep status {id}`"
            ));
            (
                render::finished_state_line(id, seen_state),
                render::exit_code_or_failed(seen_state),
            )
        }
    };
    let shown = view.done(&line);
    match code {
        0 => Ok(()),
        code => Err(Failure::Outcome {
            code,
            message: line,
            shown,
        }),
    }
}

/// `GetDeployment`, moving on to the next coordinator while the failure is
/// transient, for up to [`RECONNECT_FOR`].
async fn get_with_failover(c: &mut Coordinators, id: &str) -> Result<Deployment, Failure> {
    let started = Instant::now();
    let mut backoff = FIRST_BACKOFF;
    loop {
        match get(c, id).await {
            Ok(d) => return Ok(d),
            Err(failure) if failure.is_transient() && started.elapsed() < RECONNECT_FOR => {
                c.forget();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(failure) => return Err(failure),
        }
    }
}

#[derive(Debug)]
enum View {
    Json,
    Plain,
    Bars {
        multi: MultiProgress,
        bars: BTreeMap<String, ProgressBar>,
    },
}

impl View {
    fn new(output: Output) -> Self {
        match output {
            Output::Json => Self::Json,
            Output::Text if std::io::stdout().is_terminal() => Self::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
                bars: BTreeMap::new(),
            },
            Output::Text => Self::Plain,
        }
    }

    fn event(&mut self, e: &DeploymentEvent) -> Result<(), Failure> {
        match self {
            Self::Json => print_json_line(&json::event(e))?,
            Self::Plain => println!("{}", render::event_line(e)),
            Self::Bars { multi, .. } => {
                let line = render::event_line(e);
                if multi.println(&line).is_err() {
                    println!("{line}");
                }
            }
        }
        Ok(())
    }

    fn wants_refresh(&self, last: &mut Option<Instant>) -> bool {
        if !matches!(self, Self::Bars { .. }) {
            return false;
        }
        if last.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    fn progress(&mut self, d: &Deployment) {
        let Self::Bars { multi, bars } = self else {
            return;
        };
        for cp in &d.clusters {
            let bar = bars.entry(cp.cluster.clone()).or_insert_with(|| {
                let style = ProgressStyle::with_template(
                    "{prefix:<12} [{bar:30}] {pos}/{len} on target {msg}",
                )
                .map_or_else(
                    |_| ProgressStyle::default_bar(),
                    |s| s.progress_chars("=> "),
                );
                multi.add(
                    ProgressBar::new(u64::from(cp.instances))
                        .with_style(style)
                        .with_prefix(cp.cluster.clone()),
                )
            });
            bar.set_length(u64::from(cp.instances));
            bar.set_position(u64::from(cp.on_target));
            if cp.failed > 0 {
                bar.set_message(format!("({} failed)", cp.failed));
            } else {
                bar.set_message("");
            }
        }
    }

    /// Something about the watch itself, not the deployment: stderr.
    fn note(&self, text: &str) {
        match self {
            Self::Json | Self::Plain => eprintln!("lockstep: {text}"),
            Self::Bars { multi, .. } => multi.suspend(|| eprintln!("lockstep: {text}")),
        }
    }

    /// Prints the outcome line; whether it did (JSON leaves it to stderr).
    fn done(&mut self, line: &str) -> bool {
        match self {
            Self::Json => false,
            Self::Plain => {
                println!("{line}");
                true
            }
            Self::Bars { bars, .. } => {
                for bar in bars.values() {
                    bar.finish();
                }
                // Finished bars are no longer redrawn: the outcome goes
                // below them, as the last line.
                println!("{line}");
                true
            }
        }
    }

    /// Leaves the bars on screen so the error reads below them.
    fn abandon(&mut self, failure: Failure) -> Failure {
        if let Self::Bars { bars, .. } = self {
            for bar in bars.values() {
                bar.abandon();
            }
        }
        failure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_after_the_last_seen_event() {
        assert_eq!(next_seq(None), 0);
        assert_eq!(next_seq(Some(0)), 1);
        assert_eq!(next_seq(Some(41)), 42);
        assert_eq!(next_seq(Some(u64::MAX)), u64::MAX);
    }
}
