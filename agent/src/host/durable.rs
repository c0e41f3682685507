//! The host's durable side: the state file (fencing marks, switch
//! history), and the release store (lookup, fetch, garbage collection).

//! Must never: let a command act before its fencing mark is durable.

use cli::chain;
use release::{ReleaseDigest, StoredRelease};

use super::{Host, HostError};
use crate::state::{AgentState, ReleaseRecord, SwitchOutcome, Trigger};
use crate::wire;

impl Host {
    /// Refuses a token older than the service's high-water mark, else
    /// raises the mark (durable before the command acts).
    pub(super) async fn raise_mark(&self, service: &str, token: u64) -> Result<(), HostError> {
        let mut state = self.state.lock().await;
        let before = state.service_mut(service).fencing_high_water;
        state.service_mut(service).admit(service, token)?;
        if state.service_mut(service).fencing_high_water != before {
            // The mark must survive a crash before the command acts.
            self.save(&state).await?;
        }
        Ok(())
    }

    /// The service's durable fencing high-water mark.
    pub(super) async fn high_water(&self, service: &str) -> u64 {
        let state = self.state.lock().await;
        state
            .services
            .get(service)
            .map_or(0, |s| s.fencing_high_water)
    }

    pub(super) async fn persist(
        &self,
        service: &str,
        record: ReleaseRecord,
        trigger: Trigger,
        outcome: SwitchOutcome,
    ) -> Result<(), HostError> {
        let mut state = self.state.lock().await;
        state
            .service_mut(service)
            .record_switch(record, trigger, outcome);
        self.save(&state).await
    }

    pub(super) async fn save(&self, state: &AgentState) -> Result<(), HostError> {
        let snapshot = state.clone();
        let path = self.config.state_file();
        tokio::task::spawn_blocking(move || snapshot.save(&path)).await??;
        Ok(())
    }

    /// Drops unpacked releases no service needs any more.
    pub(super) async fn collect_garbage(&self) {
        let pinned: Vec<ReleaseDigest> = {
            let state = self.state.lock().await;
            state
                .services
                .values()
                .flat_map(|s| s.pinned())
                .filter_map(|d| d.parse().ok())
                .collect()
        };
        let store = self.store.clone();
        let keep = self.config.keep_releases;
        match tokio::task::spawn_blocking(move || store.gc(keep, &pinned)).await {
            Ok(Ok(removed)) if !removed.is_empty() => {
                tracing::info!(removed = removed.len(), "removed unused releases");
            }
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "release garbage collection failed"),
            Err(err) => tracing::warn!(error = %err, "release garbage collection panicked"),
        }
    }

    pub(super) async fn stored(&self, digest: &str) -> Result<StoredRelease, HostError> {
        self.lookup(digest)
            .await?
            .ok_or_else(|| HostError::ReleaseUnavailable {
                digest: digest.to_owned(),
                reason: "not in the local release store (install or push it first)".to_owned(),
            })
    }

    /// Like `stored`, fetching the release from the coordinators first when
    /// it is not on this host and coordinators are configured.
    pub(super) async fn stored_or_fetched(&self, digest: &str) -> Result<StoredRelease, HostError> {
        let Some(fetcher) = &self.fetcher else {
            return self.stored(digest).await;
        };
        if let Some(release) = self.lookup(digest).await? {
            return Ok(release);
        }
        let parsed = parse_digest(digest)?;
        let mut fetched = fetcher.fetch(&parsed).await;
        if let Err(crate::fetch::FetchError::NoSpace { .. }) = &fetched {
            // Space is short: drop the releases no service needs, once.
            tracing::warn!(
                digest,
                "not enough free space for a release; collecting unused releases and trying again"
            );
            self.collect_garbage().await;
            fetched = fetcher.fetch(&parsed).await;
        }
        fetched.map_err(|err| HostError::ReleaseUnavailable {
            digest: digest.to_owned(),
            reason: chain(&err),
        })?;
        self.stored(digest).await
    }

    /// The release, `None` when the store does not have it.
    pub(super) async fn lookup(&self, digest: &str) -> Result<Option<StoredRelease>, HostError> {
        let parsed = parse_digest(digest)?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.get(&parsed))
            .await?
            .map_err(|e| HostError::ReleaseUnavailable {
                digest: digest.to_owned(),
                reason: chain(&e),
            })
    }
}

pub(super) fn record_of(release: &StoredRelease) -> ReleaseRecord {
    ReleaseRecord {
        digest: release.digest.to_string(),
        version: release.manifest.version().to_string(),
        since_unix_ms: wire::now_unix_ms(),
    }
}

pub(super) fn parse_digest(digest: &str) -> Result<ReleaseDigest, HostError> {
    digest
        .parse()
        .map_err(|e: release::DigestError| HostError::ReleaseUnavailable {
            digest: digest.to_owned(),
            reason: e.to_string(),
        })
}

/// An Apply names both the service and the release: they must agree.
pub(super) fn of_service(release: &StoredRelease, service: &str) -> Result<(), HostError> {
    if release.manifest.service().as_str() == service {
        return Ok(());
    }
    Err(HostError::ReleaseUnavailable {
        digest: release.digest.to_string(),
        reason: format!(
            "it is a release of `{}`, not of `{service}`",
            release.manifest.service()
        ),
    })
}
