//! `Election`: one leading coordinator, chosen through etcd.
//!
//! Leadership is a [`FencedMutex`] on `/lockstep/v1/leader` whose value is
//! the leader's address, so followers can forward operator calls to it. The
//! leader's token fences every write it makes on behalf of leadership.
//!
//! Must never: let a leader keep acting after its session is lost or its key
//! is gone — `Leadership::lost` fires for both.

use std::time::Duration;

use etcd_client::{Client, EventType, WatchFilterType, WatchOptions};
use tokio::sync::watch;

use crate::keys;
use crate::mutex::{FencedMutex, FencingToken, LockError, LockInfo, MutexGuard};
use crate::session::Session;
use crate::task::OwnedTask;

/// A campaign re-checks its session this often while it waits.
const CAMPAIGN_ROUND: Duration = Duration::from_secs(60);

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
        let watcher = OwnedTask::spawn(watch_leadership(
            session.client().clone(),
            self.mutex.key().to_owned(),
            guard.token(),
            session.loss_signal(),
            tx,
        ));
        tracing::info!(address, token = %guard.token(), "won the coordinator election");
        Ok(Leadership {
            guard,
            lost,
            _watcher: watcher,
        })
    }

    /// The current leader: its address is `purpose`.
    pub async fn leader(&self, client: &Client) -> Result<Option<LockInfo>, ElectionError> {
        self.mutex
            .inspect(client)
            .await
            .map_err(|source| ElectionError::Lock {
                key: self.mutex.key().to_owned(),
                source,
            })
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

async fn watch_leadership(
    mut client: Client,
    key: String,
    token: FencingToken,
    mut session_lost: watch::Receiver<Option<crate::session::LossReason>>,
    lost: watch::Sender<bool>,
) {
    let start = i64::try_from(token.0).unwrap_or(i64::MAX);
    let options = WatchOptions::new()
        .with_start_revision(start + 1)
        .with_filters([WatchFilterType::NoPut]);
    let key_gone = async {
        // If the watch cannot even start, leadership cannot be proven: lost.
        let Ok(mut stream) = client.watch(key.as_str(), Some(options)).await else {
            return;
        };
        while let Ok(Some(response)) = stream.message().await {
            if response.canceled()
                || response
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
            {
                return;
            }
        }
    };
    tokio::select! {
        () = key_gone => tracing::warn!(key, "leader key deleted; leadership lost"),
        _ = session_lost.wait_for(Option::is_some) => tracing::warn!(key, "session lost; leadership lost"),
    }
    lost.send_replace(true);
}
