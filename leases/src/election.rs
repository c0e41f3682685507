//! `Election`: one leading coordinator, chosen through etcd.
//!
//! Leadership is a [`FencedMutex`] on `/lockstep/v1/leader` whose value is
//! the leader's address, so followers can forward operator calls to it. The
//! leader's token fences every write it makes on behalf of leadership.
//!
//! Must never: let a leader keep acting after its session is lost or its key
//! is gone — `Leadership::lost` fires for both — nor take a broken watch
//! (one etcd member dying) for a lost leadership.

use std::time::Duration;

use crate::etcd::Etcd;
use etcd_client::{EventType, WatchFilterType, WatchOptions};
use tokio::sync::{oneshot, watch};

use crate::keys;
use crate::mutex::{FencedMutex, FencingToken, LockError, LockInfo, MutexGuard};
use crate::session::Session;
use crate::task::OwnedTask;

/// A campaign re-checks its session this often while it waits.
const CAMPAIGN_ROUND: Duration = Duration::from_secs(60);
/// Pause before reading the leader key again after no member answered.
const REWATCH_PAUSE: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("campaign for {key} failed: {source}")]
    Lock {
        key: String,
        #[source]
        source: LockError,
    },
}

/// The election among coordinators.
#[derive(Debug, Clone)]
pub struct Election {
    mutex: FencedMutex,
}

impl Default for Election {
    fn default() -> Self {
        Self::new()
    }
}

/// Being the leader. Dropping it stops watching; `resign` hands over at
/// once.
#[derive(Debug)]
pub struct Leadership {
    guard: MutexGuard,
    lost: watch::Receiver<bool>,
    _watcher: OwnedTask,
}

impl Election {
    pub fn new() -> Self {
        Self {
            mutex: FencedMutex::at(keys::LEADER),
        }
    }

    /// Waits until this session leads; `address` is what followers forward
    /// to.
    pub async fn campaign(
        &self,
        session: &Session,
        address: &str,
    ) -> Result<Leadership, ElectionError> {
        let guard = loop {
            match self.mutex.lock(session, address, CAMPAIGN_ROUND).await {
                Ok(guard) => break guard,
                Err(LockError::TimedOut { .. }) => {}
                Err(source) => {
                    return Err(ElectionError::Lock {
                        key: self.mutex.key().to_owned(),
                        source,
                    });
                }
            }
        };
        let (tx, lost) = watch::channel(false);
        let (watching, watch_ready) = oneshot::channel();
        let watcher = OwnedTask::spawn(watch_leadership(
            session.client().clone(),
            self.mutex.key().to_owned(),
            guard.token(),
            session.loss_signal(),
            Watchers {
                lost: tx,
                watching: Some(watching),
            },
        ));
        // The loss signal is only as good as the watch behind it: lead
        // once the watch is in place (or leadership is already lost).
        let mut already_lost = lost.clone();
        tokio::select! {
            _ = watch_ready => {}
            _ = already_lost.wait_for(|lost| *lost) => {}
        }
        tracing::info!(address, token = %guard.token(), "won the coordinator election");
        Ok(Leadership {
            guard,
            lost,
            _watcher: watcher,
        })
    }

    /// The current leader: its address is `purpose`.
    pub async fn leader(&self, client: &Etcd) -> Result<Option<LockInfo>, ElectionError> {
        let held = self
            .mutex
            .inspect(client)
            .await
            .map_err(|source| ElectionError::Lock {
                key: self.mutex.key().to_owned(),
                source,
            })?;
        // A leader key without a lease was not written by an election:
        // no leader (the next campaign deletes it).
        Ok(held.filter(|info| {
            if info.lease == 0 {
                tracing::warn!(key = info.key, "leader key has no lease: ignored");
            }
            info.lease != 0
        }))
    }
}

impl Leadership {
    pub fn token(&self) -> FencingToken {
        self.guard.token()
    }

    /// The compare that fences a write to leadership-guarded state.
    pub fn fence(&self) -> etcd_client::Compare {
        self.guard.fence()
    }

    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves once leadership is lost.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        // A dropped sender means the watcher ended: treat as lost.
        let _ = lost.wait_for(|lost| *lost).await;
    }

    /// Steps down now, so a follower takes over without waiting for a TTL.
    pub async fn resign(self) -> Result<(), LockError> {
        self.guard.release().await
    }
}

/// Reports leadership lost when the leader key is deleted or the session
/// is lost — and only then. A watch that breaks (its member died, hung or
/// lost its leader) is no loss: the key is read again through the client,
/// which fails over, and watched again from the revision of that read on a
/// member that answers.
async fn watch_leadership(
    client: Etcd,
    key: String,
    token: FencingToken,
    mut session_lost: watch::Receiver<Option<crate::session::LossReason>>,
    mut signals: Watchers,
) {
    let token = i64::try_from(token.0).unwrap_or(i64::MAX);
    let key_gone = async {
        let mut from = token + 1;
        loop {
            match watch_deletes(&client, &key, from, &mut signals.watching).await {
                Watched::Deleted => return,
                Watched::Broken(reason) => {
                    tracing::info!(
                        key,
                        reason,
                        "leader key watch broke; checking the key and watching again"
                    );
                }
            }
            // Until etcd answers; a real outage ends in the session's loss.
            loop {
                match client.get(key.as_str(), None).await {
                    Ok(response) => {
                        let ours = response
                            .kvs()
                            .first()
                            .is_some_and(|kv| kv.create_revision() == token);
                        if !ours {
                            return;
                        }
                        from = response.header().map_or(from, |h| h.revision() + 1);
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(key, error = %err, "cannot read the leader key; trying again");
                        tokio::time::sleep(REWATCH_PAUSE).await;
                    }
                }
            }
        }
    };
    tokio::select! {
        () = key_gone => tracing::warn!(key, "leader key deleted or taken over; leadership lost"),
        _ = session_lost.wait_for(Option::is_some) => tracing::warn!(key, "session lost; leadership lost"),
    }
    signals.lost.send_replace(true);
}

/// What the leader key's watcher tells the leadership.
struct Watchers {
    lost: watch::Sender<bool>,
    /// Fired once, when the first watch is in place.
    watching: Option<oneshot::Sender<()>>,
}

/// How one watch of the leader key ended.
enum Watched {
    Deleted,
    /// The stream could not open, failed, ended or was cancelled.
    Broken(&'static str),
}

/// Watches `key` for a delete from revision `from` on; fires `watching`
/// once etcd has created the watch.
async fn watch_deletes(
    client: &Etcd,
    key: &str,
    from: i64,
    watching: &mut Option<oneshot::Sender<()>>,
) -> Watched {
    let options = WatchOptions::new()
        .with_start_revision(from)
        .with_filters([WatchFilterType::NoPut]);
    let mut stream = match client.watch(key, Some(options)).await {
        Ok(stream) => stream,
        Err(err) => {
            tracing::warn!(key, error = %err, "cannot watch the leader key");
            return Watched::Broken("cannot open the watch");
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(response)) if response.canceled() => return Watched::Broken("cancelled"),
            Ok(Some(response)) if response.created() => {
                if let Some(watching) = watching.take() {
                    let _ = watching.send(());
                }
            }
            Ok(Some(response))
                if response
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete) =>
            {
                return Watched::Deleted;
            }
            Ok(Some(_)) => {}
            Ok(None) => return Watched::Broken("the stream ended"),
            Err(err) => {
                tracing::info!(key, error = %err, "leader key watch failed");
                return Watched::Broken("the stream failed");
            }
        }
    }
}
