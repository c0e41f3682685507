//! Reading releases for `ShowRelease`, `DiffReleases` and the web view's
//! release panel: names resolved against the release index the way every
//! `lockstep` release name is (`release_choice::resolve`), bundles read
//! from this coordinator's depot off the async threads, compared by
//! `release_diff::diff`.
//!
//! Must never: read a bundle the depot does not hold, run more than
//! `MAX_CONCURRENT_READS` reads at once (refused, not queued), or answer
//! later than `READ_DEADLINE`.

use std::time::{Duration, Instant};

use release::ReleaseDigest;
use release::contents::BundleContents;
use tokio::sync::Semaphore;

use crate::depot::{DepotError, ReleaseDepot, ReleaseEntry};
use crate::release_choice::{self, NameError, NamedRelease};
use crate::release_diff::{self, ReleaseDiff};

/// Bundle reads one coordinator runs at once: each decompresses and hashes
/// a whole bundle, and the coordinator's real work must keep its cores.
pub const MAX_CONCURRENT_READS: usize = 2;
/// A whole answer, index read included: under the CLI's default
/// `--timeout` (5 s), so the operator reads why rather than a bare timeout.
pub const READ_DEADLINE: Duration = Duration::from_secs(4);
/// Longest release name taken (a full digest is 71 bytes).
pub const MAX_NAME_BYTES: usize = 128;

static READS: Semaphore = Semaphore::const_new(MAX_CONCURRENT_READS);

/// Why a release could not be shown or compared; each names what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("release name `{shown}…` is {len} bytes; at most {MAX_NAME_BYTES}")]
    NameTooLong { shown: String, len: usize },
    #[error("release name is empty: give a version or a digest (prefix)")]
    EmptyName,
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(
        "release {release} is indexed but not stored on this coordinator yet (held by {}); try again in a few seconds or ask one of them",
        .holders.join(", ")
    )]
    NotHere {
        release: NamedRelease,
        holders: Vec<String>,
    },
    #[error("cannot read the bundle of release {release}")]
    Bundle {
        release: NamedRelease,
        #[source]
        source: Box<release::BundleError>,
    },
    #[error("reading the release index")]
    Index(#[source] DepotError),
    #[error("release index entry has a bad digest {digest:?}")]
    BadDigest {
        digest: String,
        #[source]
        source: release::DigestError,
    },
    #[error("reading releases took longer than {READ_DEADLINE:?}; try again")]
    Deadline,
    #[error(
        "this coordinator is already reading {MAX_CONCURRENT_READS} releases; try again in a moment"
    )]
    Busy,
    #[error("the release reading task stopped")]
    Join(#[source] tokio::task::JoinError),
}

impl ReadError {
    /// Whether the caller named something wrong (rather than the
    /// coordinator failing to answer).
    pub fn is_bad_name(&self) -> bool {
        matches!(
            self,
            Self::NameTooLong { .. }
                | Self::EmptyName
                | Self::Name(NameError::Ambiguous { .. } | NameError::TooShort { .. })
        )
    }

    pub fn is_unknown(&self) -> bool {
        matches!(self, Self::Name(NameError::Unknown { .. }))
    }
}

/// The index entry and contents of the release `name` of `service`
/// (empty: any service).
pub async fn show(
    depot: &ReleaseDepot,
    service: &str,
    name: &str,
) -> Result<(ReleaseEntry, BundleContents), ReadError> {
    let deadline = Instant::now() + READ_DEADLINE;
    within(deadline, async {
        let entries = depot.list(service).await.map_err(ReadError::Index)?;
        let entry = resolve(&entries, service, name)?;
        let contents = read(depot, &entry, deadline).await?;
        Ok((entry, contents))
    })
    .await
}

/// What changed from release `from` to release `to` of `service`.
pub async fn diff(
    depot: &ReleaseDepot,
    service: &str,
    from: &str,
    to: &str,
) -> Result<ReleaseDiff, ReadError> {
    let deadline = Instant::now() + READ_DEADLINE;
    within(deadline, async {
        let entries = depot.list(service).await.map_err(ReadError::Index)?;
        let from = resolve(&entries, service, from)?;
        let to = resolve(&entries, service, to)?;
        let before = read(depot, &from, deadline).await?;
        let after = read(depot, &to, deadline).await?;
        // Half the time left for the line diff: the answer must still be
        // encoded and sent.
        let diff_by = Instant::now() + deadline.saturating_duration_since(Instant::now()) / 2;
        tokio::task::spawn_blocking(move || release_diff::diff(&before, &after, diff_by))
            .await
            .map_err(ReadError::Join)
    })
    .await
}

async fn within<T>(
    deadline: Instant,
    work: impl Future<Output = Result<T, ReadError>>,
) -> Result<T, ReadError> {
    tokio::time::timeout_at(deadline.into(), work)
        .await
        .unwrap_or(Err(ReadError::Deadline))
}

/// The one entry `name` names among `entries`.
fn resolve(entries: &[ReleaseEntry], service: &str, name: &str) -> Result<ReleaseEntry, ReadError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(ReadError::EmptyName);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(ReadError::NameTooLong {
            shown: name.chars().take(40).collect(),
            len: name.len(),
        });
    }
    let known: Vec<NamedRelease> = entries.iter().map(named).collect();
    let label = if service.is_empty() {
        "any service"
    } else {
        service
    };
    let chosen = release_choice::resolve(label, name, &known)?;
    entries
        .iter()
        .find(|e| e.digest == chosen.digest)
        .cloned()
        .ok_or_else(|| {
            ReadError::Name(NameError::Unknown {
                name: name.to_owned(),
                service: label.to_owned(),
                known,
            })
        })
}

fn named(entry: &ReleaseEntry) -> NamedRelease {
    NamedRelease {
        digest: entry.digest.clone(),
        version: entry.version.clone(),
    }
}

/// Reads a held bundle on a blocking thread, holding one of the read
/// slots until the read ends (even past the deadline, so a slow disk
/// cannot pile reads up).
async fn read(
    depot: &ReleaseDepot,
    entry: &ReleaseEntry,
    deadline: Instant,
) -> Result<BundleContents, ReadError> {
    let digest: ReleaseDigest = entry
        .digest
        .parse()
        .map_err(|source| ReadError::BadDigest {
            digest: entry.digest.clone(),
            source,
        })?;
    if !depot.holds(&digest) {
        return Err(ReadError::NotHere {
            release: named(entry),
            holders: entry.holders.clone(),
        });
    }
    let permit = READS.try_acquire().map_err(|_| ReadError::Busy)?;
    let path = depot.blob_path(&digest);
    let release = named(entry);
    let task = tokio::task::spawn_blocking(move || {
        let _slot = permit;
        release::contents::contents(&path)
    });
    let read = tokio::time::timeout_at(deadline.into(), task)
        .await
        .map_err(|_| ReadError::Deadline)?
        .map_err(ReadError::Join)?;
    read.map_err(|source| ReadError::Bundle {
        release,
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn entry(service: &str, version: &str, fill: char) -> ReleaseEntry {
        ReleaseEntry {
            service: service.to_owned(),
            digest: format!("sha256:{}", fill.to_string().repeat(64)),
            version: version.to_owned(),
            size: 1,
            pushed_unix_ms: 0,
            signed: false,
            overlap: rollout::Overlap::SocketHandover,
            holders: Vec::new(),
        }
    }

    fn index() -> Vec<ReleaseEntry> {
        vec![
            entry("web", "1.0.0", 'a'),
            entry("web", "2.0.0", 'b'),
            entry("api", "1.0.0", 'c'),
        ]
    }

    #[test]
    fn a_name_resolves_to_its_index_entry_within_a_service_or_across_all() {
        let web: Vec<_> = index().into_iter().filter(|e| e.service == "web").collect();
        assert_eq!(
            resolve(&web, "web", "1.0.0").unwrap().digest,
            entry("web", "", 'a').digest
        );
        assert_eq!(resolve(&index(), "", "bbbb").unwrap().version, "2.0.0");
        assert_eq!(resolve(&index(), "", "2.0.0").unwrap().service, "web");
    }

    #[test]
    fn a_bad_unknown_or_ambiguous_name_says_what_was_asked() {
        let err = resolve(&index(), "", "1.0.0").unwrap_err();
        assert!(err.is_bad_name(), "{err}");
        assert!(
            err.to_string()
                .contains("`1.0.0` names 2 releases of any service"),
            "{err}"
        );
        let err = resolve(&index(), "web", "9.9.9").unwrap_err();
        assert!(err.is_unknown(), "{err}");
        assert!(
            err.to_string()
                .contains("no release of web is named `9.9.9`"),
            "{err}"
        );
        assert!(matches!(
            resolve(&index(), "web", "  "),
            Err(ReadError::EmptyName)
        ));
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let err = resolve(&index(), "web", &long).unwrap_err();
        assert!(err.is_bad_name());
        assert!(
            err.to_string().contains("is 129 bytes; at most 128"),
            "{err}"
        );
    }
}
