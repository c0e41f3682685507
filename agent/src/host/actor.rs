//! A service's actor: the one task that owns the service's runtime (its
//! instances, sockets, the switch in progress) and takes every command for
//! it — the coordinator's Apply, Rollback, Restart and Uninstall,
//! agentctl's install, rollback and restart, the agent's own start and
//! adoption — as messages, decides with `admission::admit` whether each
//! runs, supersedes the one in flight or is refused, and runs them one at
//! a time.
//!
//! ```text
//!   inbox ─► Order { token, seq, command, taken }
//!              overtaken(last taken, token + seq) → refused (superseded)
//!              admit(high-water, newest claimant, token + target)
//!                Take        → runs now                          taken: Ok(Done)
//!                Supersede   → the one in flight is cancelled (its
//!                              Cancel fires), this one runs when it
//!                              has ended; a queued one it replaces
//!                              ends superseded without running     taken: Ok(Done)
//!                RollForward → the one in flight (same target) goes
//!                              on as this one's: it is handed this
//!                              command (Joined) and this one's Done;
//!                              if it already recorded its end, this
//!                              one is queued as for Supersede      taken: Ok(Done)
//!                Busy/Stale  → refused                           taken: Err
//!   command ends → the runtime comes back; Done resolves with its
//!                  outcome; the queued one runs
//!   Retire(how, reply) → once nothing runs or waits, the runtime's
//!                  instances are detached or stopped (agent shutdown);
//!                  every later order is refused
//! ```
//!
//! "Accepted" (taken) means this task has the command: it runs unless a
//! newer one supersedes it, and its outcome arrives on `Done`. The runtime
//! is lent to the command it runs, by move, and handed back with the
//! outcome: nothing else ever holds it (readers see the view it publishes).
//! The command runs as a task of its own, which the actor polls beside its
//! inbox: deciding on an order awaits the durable state (the fencing mark),
//! which the command may hold across an fsync, so a command polled inside
//! the actor's own task could deadlock it. The work itself is the
//! `Executor`'s: the host's switch, restart, adoption; a fake in the tests.
//!
//! Must never: run two commands of a service at once, start a superseded
//! command, let a command act before its token's mark is durable, or share
//! the runtime.

use std::pin::Pin;
use std::sync::{Arc, Mutex as SyncMutex, PoisonError};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::{HostError, Superseded};
use crate::admission::{self, Admission, Claim, Taken};
use crate::state::StaleToken;

/// Orders waiting for the actor beyond which senders wait.
pub(super) const INBOX: usize = 64;

/// What a command ends with: a message for the caller, or why it failed.
pub(super) type Outcome = Result<String, HostError>;

/// A command carried out, as a task of its own: the runtime it was lent
/// comes back with its outcome.
pub(super) type Run<R> = Pin<Box<dyn Future<Output = (R, Outcome)> + Send>>;

/// What becomes of a service's instances at agent shutdown.
#[derive(Debug, Clone, Copy)]
pub(super) enum Retire {
    /// Left running for the next agent to adopt.
    Detach,
    Stop,
}

/// What the actor drives: the service's durable mark and the work.
pub(super) trait Executor: Send + Sync + 'static {
    type Command: Send + 'static;
    /// What the commands change: owned by the actor, lent to one command.
    type Runtime: Send + 'static;

    fn service(&self) -> &str;

    /// The release `command` switches to, when known before it runs.
    fn target(command: &Self::Command) -> Option<String>;

    /// The service's durable fencing high-water mark.
    fn high_water(&self) -> impl Future<Output = u64> + Send;

    /// Raises the mark to `token`, durably: before the command acts.
    fn raise_mark(&self, token: u64) -> impl Future<Output = Result<(), HostError>> + Send;

    /// Carries out `command` on `runtime`; `cancel` fires when a newer one
    /// supersedes it, `joined` holds the newer one it was rolled forward to.
    fn execute(
        &self,
        command: Self::Command,
        runtime: Self::Runtime,
        cancel: Cancel,
        joined: Joined<Self::Command>,
    ) -> Run<Self::Runtime>;

    /// Agent shutdown: detaches or stops what `runtime` runs.
    fn retire(&self, runtime: Self::Runtime, how: Retire) -> impl Future<Output = ()> + Send;
}

/// A message to a service's actor.
pub(super) enum Message<C> {
    Order(Order<C>),
    /// Once no command runs or waits, the runtime is retired (`Retire`),
    /// then answered; later orders are refused.
    Retire(Retire, oneshot::Sender<()>),
}

/// A command with its fencing token (`None`: agentctl, agent start) and
/// where to answer whether it was taken.
pub(super) struct Order<C> {
    pub token: Option<u64>,
    /// The coordinator's number for the command within its token (0: not
    /// numbered); see `admission::overtaken`.
    pub seq: u64,
    pub command: C,
    pub taken: oneshot::Sender<Result<Done, HostError>>,
}

/// The outcome of a taken command, once it has run.
#[derive(Debug)]
pub(super) struct Done(oneshot::Receiver<Outcome>);

impl Done {
    pub(super) async fn outcome(self) -> Outcome {
        self.0.await.unwrap_or_else(|_| {
            Err(HostError::ActorGone {
                what: "the command's outcome".to_owned(),
            })
        })
    }
}

/// Fires when a command with a higher fencing token supersedes the holder.
#[derive(Debug, Clone)]
pub(super) struct Cancel(watch::Receiver<Option<u64>>);

impl Cancel {
    /// The superseding token, once there is one; pending until then.
    pub(super) async fn superseded(&mut self) -> u64 {
        if let Ok(fired) = self.0.wait_for(Option::is_some).await {
            if let Some(token) = *fired {
                return token;
            }
        }
        // The command ended without being superseded: never.
        std::future::pending().await
    }
}

/// The newer command a command in flight was rolled forward to: it ends
/// as that one's (records its trigger). Closed by the command once it
/// records its end; after that nothing joins it.
#[derive(Debug)]
pub(super) struct Joined<C>(Arc<SyncMutex<JoinSlot<C>>>);

#[derive(Debug)]
enum JoinSlot<C> {
    Open(Option<C>),
    Closed,
}

impl<C> Joined<C> {
    fn new() -> Self {
        Self(Arc::new(SyncMutex::new(JoinSlot::Open(None))))
    }

    /// The newest command joined so far; nothing joins after this.
    pub(super) fn close(&self) -> Option<C> {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match std::mem::replace(&mut *slot, JoinSlot::Closed) {
            JoinSlot::Open(joined) => joined,
            JoinSlot::Closed => None,
        }
    }

    /// Hands `command` to the command in flight; back when it is closed.
    fn join(&self, command: C) -> Result<(), C> {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut *slot {
            JoinSlot::Open(joined) => {
                *joined = Some(command);
                Ok(())
            }
            JoinSlot::Closed => Err(command),
        }
    }
}

impl<C> Clone for Joined<C> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

struct Running<C, R> {
    token: Option<u64>,
    target: Option<String>,
    cancel: watch::Sender<Option<u64>>,
    joined: Joined<C>,
    task: JoinHandle<(R, Outcome)>,
    done: oneshot::Sender<Outcome>,
}

struct Queued<C> {
    token: Option<u64>,
    target: Option<String>,
    command: C,
    done: oneshot::Sender<Outcome>,
}

/// The actor's loop, owning `runtime`; ends when every sender of `inbox`
/// is gone, after the command in flight.
pub(super) async fn run<E: Executor>(
    executor: E,
    runtime: E::Runtime,
    mut inbox: mpsc::Receiver<Message<E::Command>>,
) {
    // `None` while lent to the command in flight, and once retired (or
    // lost with a command that panicked).
    let mut runtime = Some(runtime);
    let mut running: Option<Running<E::Command, E::Runtime>> = None;
    let mut queued: Option<Queued<E::Command>> = None;
    let mut retiring: Vec<(Retire, oneshot::Sender<()>)> = Vec::new();
    // The coordinator command taken last, to refuse one it overtook.
    let mut last_taken: Option<Taken> = None;
    loop {
        if running.is_none() {
            match (queued.take(), runtime.take()) {
                (Some(next), Some(lent)) => running = Some(start(&executor, lent, next)),
                (Some(next), None) => {
                    let _ = next.done.send(Err(gone(&executor)));
                }
                (None, held) => {
                    runtime = held;
                    for (how, reply) in retiring.drain(..) {
                        if let Some(retired) = runtime.take() {
                            executor.retire(retired, how).await;
                        }
                        // A caller that stopped waiting needs no answer.
                        let _ = reply.send(());
                    }
                }
            }
        }
        tokio::select! {
            (back, outcome) = finished(&mut running) => {
                runtime = back;
                if let Some(ended) = running.take() {
                    // The caller may have stopped waiting: fine.
                    let _ = ended.done.send(outcome);
                }
            }
            message = inbox.recv() => match message {
                None => break,
                Some(Message::Retire(how, reply)) => retiring.push((how, reply)),
                Some(Message::Order(order)) if runtime.is_none() && running.is_none() => {
                    let _ = order.taken.send(Err(gone(&executor)));
                }
                Some(Message::Order(order)) => {
                    admit(&executor, running.as_mut(), &mut queued, &mut last_taken, order).await;
                }
            }
        }
    }
    if let Some(ended) = running.take() {
        let (_, outcome) = join(ended.task).await;
        let _ = ended.done.send(outcome);
    }
}

/// The service's runtime is gone: retired at shutdown, or lost.
fn gone<E: Executor>(executor: &E) -> HostError {
    HostError::ActorGone {
        what: format!("the runtime of `{}`", executor.service()),
    }
}

/// The runtime and the outcome of the command in flight; pending when
/// there is none.
async fn finished<C, R>(running: &mut Option<Running<C, R>>) -> (Option<R>, Outcome) {
    match running {
        Some(r) => join(&mut r.task).await,
        None => std::future::pending().await,
    }
}

/// A command's task joined: a panic loses the runtime it was lent.
async fn join<R>(
    task: impl Future<Output = Result<(R, Outcome), tokio::task::JoinError>>,
) -> (Option<R>, Outcome) {
    match task.await {
        Ok((runtime, outcome)) => (Some(runtime), outcome),
        Err(err) => {
            tracing::error!(error = %err, "a command's task failed; its service's runtime is lost");
            (None, Err(HostError::Worker(err)))
        }
    }
}

fn start<E: Executor>(
    executor: &E,
    runtime: E::Runtime,
    next: Queued<E::Command>,
) -> Running<E::Command, E::Runtime> {
    let (cancel, cancelled) = watch::channel(None);
    let joined = Joined::new();
    let task =
        tokio::spawn(executor.execute(next.command, runtime, Cancel(cancelled), joined.clone()));
    Running {
        token: next.token,
        target: next.target,
        cancel,
        joined,
        task,
        done: next.done,
    }
}

/// An admitted command: how it goes in.
#[derive(Debug, Clone, Copy)]
enum Admitted {
    Take,
    Supersede { by_token: u64, superseded: u64 },
    RollForward { by_token: u64, superseded: u64 },
}

/// Decides on `order` (see the module doc) and answers whether it is taken.
async fn admit<E: Executor>(
    executor: &E,
    running: Option<&mut Running<E::Command, E::Runtime>>,
    queued: &mut Option<Queued<E::Command>>,
    last_taken: &mut Option<Taken>,
    order: Order<E::Command>,
) {
    let Order {
        token,
        seq,
        command,
        taken,
    } = order;
    if admission::overtaken(*last_taken, token, seq) {
        let by = last_taken.map_or(0, |l| l.token);
        let _ = taken.send(Err(superseded_error(
            executor,
            by,
            "the command",
            "a later command of the same deployment was taken first",
        )));
        return;
    }
    let target = E::target(&command);
    let decided = decide(
        executor,
        running.as_deref(),
        queued.as_ref(),
        token,
        target.as_deref(),
    )
    .await;
    let admitted = match decided {
        Ok(admitted) => admitted,
        Err(refused) => {
            let _ = taken.send(Err(refused));
            return;
        }
    };
    if let Some(token) = token {
        *last_taken = Some(Taken { token, seq });
    }
    let (done, outcome) = oneshot::channel();
    // A caller that stopped waiting still has its command carried out.
    let _ = taken.send(Ok(Done(outcome)));
    let next = Queued {
        token,
        target,
        command,
        done,
    };
    let (by_token, superseded, next) = match (admitted, running) {
        (Admitted::Take, _) => {
            *queued = Some(next);
            return;
        }
        (
            Admitted::RollForward {
                by_token,
                superseded,
            },
            Some(r),
        ) if queued.is_none() => match roll_forward(executor, r, next, by_token) {
            Ok(()) => return,
            // It recorded its end already: cancel what is left, run after.
            Err(next) => {
                cancel_once(r, by_token);
                (by_token, superseded, next)
            }
        },
        (
            Admitted::Supersede {
                by_token,
                superseded,
            }
            | Admitted::RollForward {
                by_token,
                superseded,
            },
            r,
        ) => {
            if let Some(r) = r {
                cancel_once(r, by_token);
            }
            (by_token, superseded, next)
        }
    };
    tracing::info!(
        service = executor.service(),
        token = by_token,
        superseded,
        "a newer command supersedes the one in flight"
    );
    if let Some(replaced) = queued.replace(next) {
        let err = superseded_error(executor, by_token, "the command", "it had not started");
        let _ = replaced.done.send(Err(err));
    }
}

/// The supersede rule on the newest claimant; an admitted token's mark
/// is durable when this returns.
async fn decide<E: Executor>(
    executor: &E,
    running: Option<&Running<E::Command, E::Runtime>>,
    queued: Option<&Queued<E::Command>>,
    token: Option<u64>,
    target: Option<&str>,
) -> Result<Admitted, HostError> {
    // The newest claimant: a queued command already superseded the one
    // that runs.
    let claimant = match (queued, running) {
        (Some(q), _) => Some((q.token, q.target.as_deref())),
        (None, Some(r)) => Some((r.token, r.target.as_deref())),
        (None, None) => None,
    };
    let high_water = match token {
        Some(_) => executor.high_water().await,
        None => 0,
    };
    let admission = admission::admit(
        high_water,
        claimant.map(|(token, target)| Claim { token, target }),
        Claim { token, target },
    );
    let service = || executor.service().to_owned();
    let admitted = match (admission, token) {
        (Admission::Take, _) => Admitted::Take,
        (Admission::Supersede { superseded }, Some(by_token)) => Admitted::Supersede {
            by_token,
            superseded,
        },
        (Admission::RollForward { superseded }, Some(by_token)) => Admitted::RollForward {
            by_token,
            superseded,
        },
        (Admission::Stale { high_water }, _) => {
            return Err(HostError::StaleToken(StaleToken {
                service: service(),
                offered: token.unwrap_or_default(),
                high_water,
            }));
        }
        _ => return Err(HostError::Busy { service: service() }),
    };
    if let Some(t) = token {
        executor.raise_mark(t).await?;
    }
    Ok(admitted)
}

/// Hands `next` to the switch in flight, which ends as its (its Done
/// resolves with the switch's outcome); `next` back when the switch has
/// recorded its end already.
fn roll_forward<E: Executor>(
    executor: &E,
    running: &mut Running<E::Command, E::Runtime>,
    next: Queued<E::Command>,
    by_token: u64,
) -> Result<(), Queued<E::Command>> {
    let Queued {
        token,
        target,
        command,
        done,
    } = next;
    if let Err(command) = running.joined.join(command) {
        return Err(Queued {
            token,
            target,
            command,
            done,
        });
    }
    tracing::info!(
        service = executor.service(),
        token = by_token,
        "a newer command for the release being switched to takes the switch in flight over"
    );
    running.token = token;
    let older = std::mem::replace(&mut running.done, done);
    let err = superseded_error(
        executor,
        by_token,
        "the switch",
        "it goes on as the newer command's",
    );
    let _ = older.send(Err(err));
    Ok(())
}

/// Cancelled once: by the first command that superseded it.
fn cancel_once<C, R>(running: &Running<C, R>, by_token: u64) {
    running.cancel.send_if_modified(|fired| {
        let first = fired.is_none();
        if first {
            *fired = Some(by_token);
        }
        first
    });
}

fn superseded_error<E: Executor>(executor: &E, by_token: u64, what: &str, kept: &str) -> HostError {
    HostError::Superseded(Box::new(Superseded {
        service: executor.service().to_owned(),
        by_token,
        what: what.to_owned(),
        kept: kept.to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A fake service: commands record when they start and end, and run
    /// until released or cancelled.
    #[derive(Clone, Default)]
    struct Fake {
        mark: Arc<Mutex<u64>>,
        log: Arc<Mutex<Vec<String>>>,
    }

    /// A command that runs until `release` fires or it is superseded
    /// (unless `slow_to_stop`: then only `release` ends it, like a switch
    /// whose recovery takes a while).
    struct Work {
        name: &'static str,
        release: Option<oneshot::Receiver<()>>,
        slow_to_stop: bool,
        /// The release it switches to.
        target: Option<&'static str>,
        /// Records its end (closes `Joined`) as soon as it starts.
        closes_at_start: bool,
    }

    impl Fake {
        fn log(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
    }

    impl Executor for Fake {
        type Command = Work;
        /// The commands that had the runtime, in turn.
        type Runtime = Vec<&'static str>;

        fn service(&self) -> &str {
            "web"
        }

        async fn high_water(&self) -> u64 {
            *self.mark.lock().unwrap()
        }

        async fn raise_mark(&self, token: u64) -> Result<(), HostError> {
            *self.mark.lock().unwrap() = token;
            Ok(())
        }

        fn target(command: &Work) -> Option<String> {
            command.target.map(str::to_owned)
        }

        async fn retire(&self, runtime: Vec<&'static str>, how: Retire) {
            self.log
                .lock()
                .unwrap()
                .push(format!("{how:?} after {}", runtime.join(", ")));
        }

        fn execute(
            &self,
            command: Work,
            mut runtime: Vec<&'static str>,
            mut cancel: Cancel,
            joined: Joined<Work>,
        ) -> Run<Vec<&'static str>> {
            let log = self.log.clone();
            Box::pin(async move {
                runtime.push(command.name);
                log.lock()
                    .unwrap()
                    .push(format!("{} started", command.name));
                let mut ends_as = command.name;
                if command.closes_at_start {
                    joined.close();
                }
                let ended = match command.release {
                    Some(release) if command.slow_to_stop => {
                        let _ = release.await;
                        "done".to_owned()
                    }
                    Some(release) => tokio::select! {
                        _ = release => "done".to_owned(),
                        t = cancel.superseded() => format!("superseded by {t}"),
                    },
                    None => "done".to_owned(),
                };
                if let Some(newer) = joined.close() {
                    ends_as = newer.name;
                }
                log.lock().unwrap().push(format!("{ends_as} {ended}"));
                (runtime, Ok(format!("{ends_as} {ended}")))
            })
        }
    }

    fn actor(fake: &Fake) -> mpsc::Sender<Message<Work>> {
        let (tx, rx) = mpsc::channel(INBOX);
        tokio::spawn(run(fake.clone(), Vec::new(), rx));
        tx
    }

    async fn order(
        actor: &mpsc::Sender<Message<Work>>,
        token: Option<u64>,
        work: Work,
    ) -> Result<Done, HostError> {
        let (taken, answer) = oneshot::channel();
        let order = Order {
            token,
            seq: 0,
            command: work,
            taken,
        };
        actor.send(Message::Order(order)).await.unwrap();
        answer.await.unwrap()
    }

    fn held(name: &'static str) -> (Work, oneshot::Sender<()>) {
        let (release, rx) = oneshot::channel();
        let work = Work {
            name,
            release: Some(rx),
            slow_to_stop: false,
            target: None,
            closes_at_start: false,
        };
        (work, release)
    }

    fn quick(name: &'static str) -> Work {
        Work {
            name,
            release: None,
            slow_to_stop: false,
            target: None,
            closes_at_start: false,
        }
    }

    #[tokio::test]
    async fn a_higher_token_for_the_same_release_rolls_the_switch_forward() {
        let fake = Fake::default();
        let actor = actor(&fake);
        let (mut first, release) = held("forward-5");
        first.target = Some("b");
        let first = order(&actor, Some(5), first).await.unwrap();
        let mut again = quick("forward-6");
        again.target = Some("b");
        let again = order(&actor, Some(6), again).await.unwrap();
        assert!(matches!(
            first.outcome().await,
            Err(HostError::Superseded(s)) if s.by_token == 6
        ));
        release.send(()).unwrap();
        assert_eq!(again.outcome().await.unwrap(), "forward-6 done");
        // One switch, not cancelled, ended as the newer command's.
        assert_eq!(fake.log(), ["forward-5 started", "forward-6 done"]);
        assert_eq!(*fake.mark.lock().unwrap(), 6);
    }

    #[tokio::test]
    async fn a_switch_that_recorded_its_end_is_not_rolled_forward() {
        let fake = Fake::default();
        let actor = actor(&fake);
        let (mut first, release) = held("forward-5");
        first.target = Some("b");
        first.closes_at_start = true;
        first.slow_to_stop = true;
        let first = order(&actor, Some(5), first).await.unwrap();
        wait_logged(&fake, "forward-5 started").await;
        let mut again = quick("forward-6");
        again.target = Some("b");
        let again = order(&actor, Some(6), again).await.unwrap();
        release.send(()).unwrap();
        assert_eq!(first.outcome().await.unwrap(), "forward-5 done");
        assert_eq!(again.outcome().await.unwrap(), "forward-6 done");
        assert_eq!(
            fake.log(),
            [
                "forward-5 started",
                "forward-5 done",
                "forward-6 started",
                "forward-6 done"
            ]
        );
    }

    /// Waits (yielding to the actor's tasks) until `line` is logged.
    async fn wait_logged(fake: &Fake, line: &str) {
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while !fake.log().iter().any(|l| l == line) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_higher_token_cancels_the_command_in_flight_and_runs_after_it() {
        let fake = Fake::default();
        let actor = actor(&fake);
        let (forward, _never) = held("forward");
        let forward = order(&actor, Some(5), forward).await.unwrap();
        let back = order(&actor, Some(6), quick("back")).await.unwrap();
        assert_eq!(forward.outcome().await.unwrap(), "forward superseded by 6");
        assert_eq!(back.outcome().await.unwrap(), "back done");
        assert_eq!(
            fake.log(),
            [
                "forward started",
                "forward superseded by 6",
                "back started",
                "back done"
            ]
        );
        assert_eq!(*fake.mark.lock().unwrap(), 6);
    }

    #[tokio::test]
    async fn an_older_token_is_refused_and_the_mark_stays() {
        let fake = Fake::default();
        let actor = actor(&fake);
        order(&actor, Some(6), quick("newer"))
            .await
            .unwrap()
            .outcome()
            .await
            .unwrap();
        match order(&actor, Some(5), quick("older")).await {
            Err(HostError::StaleToken(stale)) => assert_eq!(stale.high_water, 6),
            other => panic!("expected stale, got {other:?}"),
        }
        assert_eq!(*fake.mark.lock().unwrap(), 6);
        assert_eq!(fake.log(), ["newer started", "newer done"]);
    }

    #[tokio::test]
    async fn the_same_token_or_agentctl_is_busy_while_a_command_runs() {
        let fake = Fake::default();
        let actor = actor(&fake);
        let (first, release) = held("first");
        let first = order(&actor, Some(5), first).await.unwrap();
        assert!(matches!(
            order(&actor, Some(5), quick("same")).await,
            Err(HostError::Busy { .. })
        ));
        assert!(matches!(
            order(&actor, None, quick("agentctl")).await,
            Err(HostError::Busy { .. })
        ));
        release.send(()).unwrap();
        assert_eq!(first.outcome().await.unwrap(), "first done");
        order(&actor, None, quick("agentctl"))
            .await
            .unwrap()
            .outcome()
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_queued_command_superseded_in_turn_never_runs() {
        let fake = Fake::default();
        let actor = actor(&fake);
        let (mut first, release) = held("first");
        first.slow_to_stop = true;
        let first = order(&actor, Some(5), first).await.unwrap();
        let second = order(&actor, Some(6), quick("second")).await.unwrap();
        let third = order(&actor, Some(7), quick("third")).await.unwrap();
        assert!(matches!(
            second.outcome().await,
            Err(HostError::Superseded(s)) if s.by_token == 7
        ));
        release.send(()).unwrap();
        assert_eq!(first.outcome().await.unwrap(), "first done");
        assert_eq!(third.outcome().await.unwrap(), "third done");
        assert!(!fake.log().iter().any(|l| l.starts_with("second")));
    }

    /// Shutdown (#12 deliver 1: detach/stop are messages to the actor):
    /// the runtime is retired only once the command in flight has given it
    /// back, with every command's change on it; later orders are refused.
    #[tokio::test]
    async fn retire_waits_for_the_command_in_flight_then_refuses_orders() {
        let fake = Fake::default();
        let actor = actor(&fake);
        order(&actor, None, quick("first"))
            .await
            .unwrap()
            .outcome()
            .await
            .unwrap();
        let (second, release) = held("second");
        let second = order(&actor, None, second).await.unwrap();
        let (reply, retired) = oneshot::channel();
        actor
            .send(Message::Retire(Retire::Detach, reply))
            .await
            .unwrap();
        release.send(()).unwrap();
        retired.await.unwrap();
        assert_eq!(second.outcome().await.unwrap(), "second done");
        assert!(matches!(
            order(&actor, None, quick("late")).await,
            Err(HostError::ActorGone { .. })
        ));
        assert_eq!(
            fake.log(),
            [
                "first started",
                "first done",
                "second started",
                "second done",
                "Detach after first, second"
            ]
        );
    }
}
