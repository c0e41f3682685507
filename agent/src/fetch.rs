//! `ReleaseFetcher`: gets a release bundle the local store lacks from the
//! coordinators (`FetchRelease`) and puts it into the store.
//!
//! ```text
//! fetch(digest): lock(digest) -> already stored? done
//!   remove other releases' .partial files (unless their fetch runs)
//!   first chunk announces the size: not enough free space -> fail, unwritten
//!   append chunks to data_dir/incoming/<hex>.partial, each chunk's offset
//!   = bytes written so far; stream broke -> resume from the file's length
//!   on the next coordinator (capped backoff when no progress), until
//!   fetch_timeout -> fsync -> Store::put_expecting (digest + signature)
//!   -> remove the .partial
//! ```
//!
//! A partial file holding bytes outlives a failed fetch (timeout,
//! coordinators down) so the next attempt of that release resumes it (one
//! that got no byte, e.g. for want of space, is removed); it is removed once stored,
//! whenever the store refuses its content (wrong digest, bad signature),
//! and when a fetch of another release starts (a failed release must not
//! keep the disk full for the next one).
//!
//! Must never: put anything into the store but the requested digest, or
//! let two fetches of one digest write the same partial file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as SyncMutex, Weak};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use proto::v1::FetchReleaseRequest;
use proto::v1::coordinator_service_client::CoordinatorServiceClient;
use release::{ReleaseDigest, Store, StoreError};
use tokio::time::Instant;

use crate::config::CoordinatorSettings;
use crate::dial::{self, Backoff};

/// First pause after an attempt that brought no new bytes…
const RETRY_PAUSE_MIN: Duration = Duration::from_millis(100);
/// …doubling up to this: short next to fetch_timeout, so a coordinator
/// that comes back is used soon.
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(2);
/// The largest chunk message accepted; the coordinator picks the chunk
/// size, and tonic's 4 MiB default would refuse a generous one.
const MAX_CHUNK_MESSAGE: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no coordinator has release {digest}: push it with `lockstep release push`")]
    NotFound { digest: ReleaseDigest },
    #[error(
        "cannot fetch release {digest} within coordinator.fetch_timeout ({timeout:?}): got {received} of {total} bytes ({attempts}); check that this host reaches a coordinator, or raise fetch_timeout"
    )]
    TimedOut {
        digest: ReleaseDigest,
        timeout: Duration,
        received: u64,
        /// The size the coordinators announced, or "an unknown number of".
        total: String,
        /// The last error of each coordinator tried.
        attempts: String,
    },
    #[error(
        "asked the coordinators for release {expected} but received {actual}; the bytes were discarded. Check the coordinators' release store (lockstep release list)"
    )]
    DigestMismatch {
        expected: ReleaseDigest,
        actual: ReleaseDigest,
    },
    #[error("release {digest} was fetched but the release store refused it: {reason}")]
    Rejected {
        digest: ReleaseDigest,
        /// The store error with its causes (its own message is terse).
        reason: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("cannot write {path}: {source}; check free space and permissions under data_dir")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "release {digest} needs {needed} more bytes in {dir} but only {available} are free; free space under data_dir (the release store keeps `releases.keep` old releases)"
    )]
    NoSpace {
        digest: ReleaseDigest,
        dir: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("cannot tell the free space in {dir}: {source}")]
    FreeSpace {
        dir: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("the agent's blocking worker failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

/// Fetches releases from the coordinators into the local store; one per
/// agent, shared by every Apply.
#[derive(Debug)]
pub struct ReleaseFetcher {
    urls: Vec<String>,
    fetch_timeout: Duration,
    incoming: PathBuf,
    store: Store,
    /// One lock per digest being fetched, so concurrent Applies of one
    /// release wait for a single download instead of sharing its file.
    /// Entries die with their last holder and are swept on the next fetch.
    in_flight: SyncMutex<HashMap<ReleaseDigest, Weak<tokio::sync::Mutex<()>>>>,
    /// The agent's `[tls]` material, for `https://` coordinators.
    tls: Option<tls::TlsMaterial>,
    /// Every byte received is added to it (`lockstep_agent_fetch_bytes_total`).
    received: Counter,
}

/// How one attempt against one coordinator ended, short of success.
enum AttemptError {
    /// The coordinator does not have the release.
    NotFound,
    /// Worth trying again, here or elsewhere: the reason, for the log.
    Retry(String),
    /// Writing locally failed: no coordinator can fix that.
    Local(FetchError),
}

/// The `.partial` file of one fetch and how much of it is written.
struct Partial {
    path: PathBuf,
    file: Arc<File>,
    /// The digest's fetch lock, shared with blocking work on the file.
    held: Arc<tokio::sync::OwnedMutexGuard<()>>,
    written: u64,
    /// The agent's count of fetched bytes.
    received: Counter,
    /// `total_size` as the coordinators announced it.
    total: Option<u64>,
}

impl ReleaseFetcher {
    /// `incoming` holds partial downloads (`AgentConfig::incoming_dir`);
    /// it is created on the first fetch.
    pub fn new(settings: &CoordinatorSettings, incoming: PathBuf, store: Store) -> Self {
        Self {
            urls: settings.urls.clone(),
            fetch_timeout: settings.fetch_timeout,
            incoming,
            store,
            in_flight: SyncMutex::new(HashMap::new()),
            tls: None,
            received: Counter::default(),
        }
    }

    /// Adds every byte received to `received`.
    #[must_use]
    pub fn counting_into(mut self, received: Counter) -> Self {
        self.received = received;
        self
    }

    /// Dials `https://` coordinators with `tls` (the agent's `[tls]`).
    #[must_use]
    pub fn with_tls(mut self, tls: Option<tls::TlsMaterial>) -> Self {
        self.tls = tls;
        self
    }

    /// Makes `digest` present in the store, fetching it from the
    /// coordinators unless it already is. Waits up to `fetch_timeout`.
    pub async fn fetch(&self, digest: &ReleaseDigest) -> Result<(), FetchError> {
        // Owned, so blocking writes can hold it too: a fetch cancelled
        // mid-chunk (its Apply's caller gave up) still owns the file until
        // that write lands, and the next fetch reads the final length.
        let held = Arc::new(self.lock_for(digest).lock_owned().await);
        let store = self.store.clone();
        let wanted = *digest;
        if tokio::task::spawn_blocking(move || store.contains(&wanted)).await? {
            // Fetched by the Apply we waited for, or stored by a fetch that
            // was cancelled before it could tidy up.
            remove_partial(partial_path(&self.incoming, digest)).await;
            return Ok(());
        }
        self.remove_other_partials(digest).await;
        let started = Instant::now();
        let mut partial =
            Partial::open(&self.incoming, digest, held, self.received.clone()).await?;
        if let Err(err) = self
            .download(digest, &mut partial, started + self.fetch_timeout)
            .await
        {
            if partial.written == 0 {
                // Nothing to resume (no space, release unknown, no
                // coordinator answered): a fetch that wrote no byte leaves
                // no file either.
                remove_partial(partial.path.clone()).await;
            }
            return Err(err);
        }
        partial.sync().await?;
        let received = partial.written;
        self.store_partial(digest, partial).await?;
        tracing::info!(
            digest = %digest,
            bytes = received,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "release fetched and stored"
        );
        Ok(())
    }

    /// Removes the `.partial` files of releases other than `digest` whose
    /// fetch is not running (their fetch lock is free, and held here while
    /// the file goes).
    async fn remove_other_partials(&self, digest: &ReleaseDigest) {
        let dir = self.incoming.clone();
        let listed = tokio::task::spawn_blocking(move || partials_in(&dir)).await;
        let found = match listed {
            Ok(found) => found,
            Err(err) => {
                tracing::warn!(error = %err, "listing partial release files failed");
                return;
            }
        };
        for (other, path) in found {
            if other == *digest {
                continue;
            }
            let Ok(held) = self.lock_for(&other).try_lock_owned() else {
                continue;
            };
            tracing::info!(digest = %other, path = %path.display(), "removing the partial download of a release no fetch wants now");
            remove_partial(path).await;
            drop(held);
        }
    }

    fn lock_for(&self, digest: &ReleaseDigest) -> Arc<tokio::sync::Mutex<()>> {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        in_flight.retain(|_, lock| lock.strong_count() > 0);
        if let Some(lock) = in_flight.get(digest).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        in_flight.insert(*digest, Arc::downgrade(&lock));
        lock
    }

    /// Tries the coordinators in turn, each resuming where the file ends,
    /// until the file is complete, every coordinator says it has no such
    /// release, or the deadline passes.
    async fn download(
        &self,
        digest: &ReleaseDigest,
        partial: &mut Partial,
        deadline: Instant,
    ) -> Result<(), FetchError> {
        let mut backoff = Backoff::new(RETRY_PAUSE_MIN, RETRY_PAUSE_MAX);
        let mut last_error: BTreeMap<&str, String> = BTreeMap::new();
        let mut without_it: BTreeSet<&str> = BTreeSet::new();
        for url in self.urls.iter().cycle() {
            let before = partial.written;
            let attempt =
                tokio::time::timeout_at(deadline, attempt(url, self.tls.as_ref(), digest, partial))
                    .await;
            let Ok(attempt) = attempt else {
                last_error.insert(url, "timed out".to_owned());
                return Err(self.timed_out(digest, partial, &last_error));
            };
            match attempt {
                Ok(()) => return Ok(()),
                Err(AttemptError::Local(err)) => return Err(err),
                Err(AttemptError::NotFound) => {
                    without_it.insert(url);
                    last_error.insert(url, "does not have it".to_owned());
                    if without_it.len() == self.urls.len() {
                        return Err(FetchError::NotFound { digest: *digest });
                    }
                }
                Err(AttemptError::Retry(reason)) => {
                    tracing::warn!(
                        digest = %digest,
                        coordinator = url.as_str(),
                        received = partial.written,
                        error = reason.as_str(),
                        "release fetch interrupted; trying again"
                    );
                    without_it.remove(url.as_str());
                    last_error.insert(url, reason);
                }
            }
            if partial.written > before {
                // Progress: resume at once on the next coordinator.
                backoff.reset();
                continue;
            }
            let pause = backoff.next_pause();
            if Instant::now() + pause >= deadline {
                return Err(self.timed_out(digest, partial, &last_error));
            }
            tokio::time::sleep(pause).await;
        }
        // `cycle` over an empty list: config validation requires one URL.
        Err(FetchError::NotFound { digest: *digest })
    }

    fn timed_out(
        &self,
        digest: &ReleaseDigest,
        partial: &Partial,
        last_error: &BTreeMap<&str, String>,
    ) -> FetchError {
        FetchError::TimedOut {
            digest: *digest,
            timeout: self.fetch_timeout,
            received: partial.written,
            total: partial
                .total
                .map_or_else(|| "an unknown number of".to_owned(), |t| t.to_string()),
            attempts: last_error
                .iter()
                .map(|(url, error)| format!("{url}: {error}"))
                .collect::<Vec<_>>()
                .join("; "),
        }
    }

    /// Verifies and unpacks the complete file into the store; removes it
    /// unless storing failed for a reason a retry could fix (local IO).
    async fn store_partial(
        &self,
        digest: &ReleaseDigest,
        partial: Partial,
    ) -> Result<(), FetchError> {
        let Partial {
            path, file, held, ..
        } = partial;
        drop(file);
        let held_by_put = held.clone();
        let store = self.store.clone();
        let (bundle, expected) = (path.clone(), *digest);
        let put = tokio::task::spawn_blocking(move || {
            let _held = held_by_put;
            store.put_expecting(&bundle, &expected)
        })
        .await?;
        // Local IO may go better next time, with the bytes already here;
        // any other refusal is about the bytes themselves.
        let keep = matches!(put, Err(StoreError::Io { .. }));
        let result = match put {
            Ok(stored) if stored == *digest => Ok(()),
            Ok(actual) | Err(StoreError::DigestMismatch { actual, .. }) => {
                Err(FetchError::DigestMismatch {
                    expected: *digest,
                    actual,
                })
            }
            Err(source) => Err(FetchError::Rejected {
                digest: *digest,
                reason: cli::chain(&source),
                source: Box::new(source),
            }),
        };
        if !keep {
            remove_partial(path).await;
        }
        drop(held);
        result
    }
}

/// One `FetchRelease` call: appends what the coordinator sends until the
/// announced size is reached or the stream ends.
async fn attempt(
    url: &str,
    tls: Option<&tls::TlsMaterial>,
    digest: &ReleaseDigest,
    partial: &mut Partial,
) -> Result<(), AttemptError> {
    let channel = dial::connect(url, tls).await.map_err(AttemptError::Retry)?;
    let mut client =
        CoordinatorServiceClient::new(channel).max_decoding_message_size(MAX_CHUNK_MESSAGE);
    tracing::info!(digest = %digest, coordinator = url, offset = partial.written, "fetching release");
    let request = FetchReleaseRequest {
        digest: digest.to_string(),
        offset: partial.written,
    };
    let mut chunks = match client.fetch_release(request).await {
        Ok(response) => response.into_inner(),
        Err(status) if nothing_left(&status, partial) => return Ok(()),
        Err(status) => return Err(refused(status)),
    };
    loop {
        let message = match chunks.message().await {
            Ok(message) => message,
            Err(status) if nothing_left(&status, partial) => return Ok(()),
            Err(status) => return Err(refused(status)),
        };
        let Some(chunk) = message else {
            return match partial.total {
                Some(total) if partial.written == total => Ok(()),
                Some(total) => Err(AttemptError::Retry(format!(
                    "the stream ended after {} of {total} bytes",
                    partial.written
                ))),
                // Resumed a file that was already whole: nothing left to send.
                None if partial.written > 0 => Ok(()),
                None => Err(AttemptError::Retry(
                    "the stream ended without sending any bytes".to_owned(),
                )),
            };
        };
        if chunk.offset != partial.written {
            return Err(AttemptError::Retry(format!(
                "sent a chunk at offset {} where {} bytes are written",
                chunk.offset, partial.written
            )));
        }
        if chunk.total_size != 0 {
            if partial.total.is_some_and(|t| t != chunk.total_size) {
                return Err(AttemptError::Retry(format!(
                    "announced {} bytes where earlier chunks announced {}",
                    chunk.total_size,
                    partial.total.unwrap_or_default()
                )));
            }
            if partial.total.is_none() {
                // Before the first byte of this fetch lands: a release that
                // cannot fit must not fill the disk on its way to failing.
                partial
                    .check_space(digest, chunk.total_size)
                    .await
                    .map_err(AttemptError::Local)?;
            }
            partial.total = Some(chunk.total_size);
        }
        let len = u64::try_from(chunk.data.len()).unwrap_or(u64::MAX);
        if let Some(total) = partial.total {
            if partial.written.saturating_add(len) > total {
                return Err(AttemptError::Retry(format!(
                    "sent more than the {total} bytes it announced"
                )));
            }
        }
        partial
            .append(chunk.data)
            .await
            .map_err(AttemptError::Local)?;
        if partial.total == Some(partial.written) {
            return Ok(());
        }
    }
}

/// A file left whole by an earlier fetch is resumed at its end, which a
/// coordinator may call out of range. The store's digest check decides
/// whether it really was whole.
fn nothing_left(status: &tonic::Status, partial: &Partial) -> bool {
    status.code() == tonic::Code::OutOfRange && partial.written > 0 && partial.total.is_none()
}

fn refused(status: tonic::Status) -> AttemptError {
    match status.code() {
        tonic::Code::NotFound => AttemptError::NotFound,
        code => AttemptError::Retry(format!("{code:?}: {}", status.message())),
    }
}

impl Partial {
    /// Opens (creating) `incoming/<hex>.partial`; what a previous fetch
    /// left there is kept and resumed.
    async fn open(
        incoming: &Path,
        digest: &ReleaseDigest,
        held: Arc<tokio::sync::OwnedMutexGuard<()>>,
        received: Counter,
    ) -> Result<Self, FetchError> {
        let dir = incoming.to_owned();
        let path = partial_path(incoming, digest);
        let at = path.clone();
        let (file, written) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|source| FetchError::Io {
                path: dir.clone(),
                source,
            })?;
            let io = |source| FetchError::Io {
                path: at.clone(),
                source,
            };
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&at)
                .map_err(io)?;
            let written = file.metadata().map_err(io)?.len();
            Ok::<_, FetchError>((file, written))
        })
        .await??;
        if written > 0 {
            tracing::info!(digest = %digest, offset = written, "resuming a partial release fetch");
        }
        Ok(Self {
            path,
            held,
            file: Arc::new(file),
            written,
            received,
            total: None,
        })
    }

    /// Fails unless the file system holding the file has room for the
    /// `total` bytes the release has, less those already written.
    async fn check_space(&self, digest: &ReleaseDigest, total: u64) -> Result<(), FetchError> {
        let needed = total.saturating_sub(self.written);
        let dir = self
            .path
            .parent()
            .map_or_else(|| self.path.clone(), Path::to_path_buf);
        let at = dir.clone();
        let available = tokio::task::spawn_blocking(move || {
            nix::sys::statvfs::statvfs(&at)
                .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
        })
        .await?
        .map_err(|source| FetchError::FreeSpace {
            dir: dir.clone(),
            source,
        })?;
        if fits(needed, available) {
            Ok(())
        } else {
            Err(FetchError::NoSpace {
                digest: *digest,
                dir,
                needed,
                available,
            })
        }
    }

    async fn append(&mut self, data: Vec<u8>) -> Result<(), FetchError> {
        let file = self.file.clone();
        let path = self.path.clone();
        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        let held = self.held.clone();
        tokio::task::spawn_blocking(move || {
            let _held = held;
            (&*file)
                .write_all(&data)
                .map_err(|source| FetchError::Io { path, source })
        })
        .await??;
        self.written += len;
        self.received.inc_by(len);
        Ok(())
    }

    /// Before the store reads it: after a crash past this point the file's
    /// length can be trusted by the fetch that resumes it (an unsynced file
    /// may end in zeros after a power loss; that fails the digest check and
    /// is fetched again).
    async fn sync(&self) -> Result<(), FetchError> {
        let file = self.file.clone();
        let path = self.path.clone();
        let held = self.held.clone();
        tokio::task::spawn_blocking(move || {
            let _held = held;
            file.sync_all()
                .map_err(|source| FetchError::Io { path, source })
        })
        .await?
    }
}

/// Whether `needed` bytes fit in `available`.
fn fits(needed: u64, available: u64) -> bool {
    needed <= available
}

/// The `<hex>.partial` files in `dir` with the digest each is of.
fn partials_in(dir: &Path) -> Vec<(ReleaseDigest, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let hex = name.to_str()?.strip_suffix(".partial")?;
            let digest = ReleaseDigest::from_hex(hex).ok()?;
            Some((digest, entry.path()))
        })
        .collect()
}

fn partial_path(incoming: &Path, digest: &ReleaseDigest) -> PathBuf {
    incoming.join(format!("{}.partial", digest.hex()))
}

async fn remove_partial(path: PathBuf) {
    let at = path.clone();
    match tokio::task::spawn_blocking(move || std::fs::remove_file(&at)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::NotFound => {}
        Ok(Err(err)) => {
            // The next fetch of this digest resumes it, and fails its digest
            // check if it is wrong: harmless, but worth a look.
            tracing::warn!(path = %path.display(), error = %err, "cannot remove a partial release file");
        }
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "partial file removal panicked")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_fits_only_in_as_many_free_bytes() {
        assert!(fits(0, 0));
        assert!(fits(10, 10));
        assert!(!fits(11, 10));
        assert!(!fits(1 << 60, u64::MAX >> 8));
    }

    #[test]
    fn only_files_named_after_a_digest_are_partials() {
        let dir = tempfile::tempdir().unwrap();
        let digest = ReleaseDigest::of_bytes(b"x");
        for name in [
            format!("{}.partial", digest.hex()),
            "notes.partial".to_owned(),
            format!("{}.bundle", digest.hex()),
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let found = partials_in(dir.path());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, digest);
    }
}
