//! The release depot: pushed bundles kept by digest on this coordinator's
//! disk, and indexed in etcd under `/lockstep/v1/releases/<service>/<digest>`
//! so every coordinator can plan with them.
//!
//! A push is streamed to a temporary file, fully verified (digest,
//! signature policy, a complete safe unpack into scratch) and only then
//! renamed into place and indexed: a half-pushed or tampered bundle is never
//! served. The index entry lists the coordinators holding the bundle
//! (`holders`); `mirror` copies it to every other coordinator the same way.
//!
//! Must never: serve or index a bundle that failed verification, or hold a
//! whole bundle in memory.

use std::io::Write;
use std::path::{Path, PathBuf};

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use release::{ReleaseDigest, TrustedKeys, UnpackLimits};
use serde::{Deserialize, Serialize};

use leases::{Etcd, keys};

/// What the index records about a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseEntry {
    pub service: String,
    pub digest: String,
    pub version: String,
    pub size: u64,
    pub pushed_unix_ms: i64,
    pub signed: bool,
    pub overlap: rollout::Overlap,
    /// Advertise URLs of the coordinators that store the bundle.
    #[serde(default)]
    pub holders: Vec<String>,
}

/// Concurrent index writers (coordinators joining `holders`) retry this
/// often before giving up until the next push or mirror round.
const INDEX_ATTEMPTS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum DepotError {
    #[error("release depot {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the pushed bundle is refused")]
    Refused(#[source] release::StoreError),
    #[error("release index in etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("release index entry {key} is not valid: {source}")]
    BadEntry {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("verification task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("release index entry {key} kept changing under {INDEX_ATTEMPTS} attempts to update it")]
    Contended { key: String },
}

/// Bundles by digest on local disk plus their etcd index.
#[derive(Clone)]
pub struct ReleaseDepot {
    dir: PathBuf,
    trusted: TrustedKeys,
    client: Etcd,
    /// This coordinator's advertise URL, as recorded in `holders`.
    me: String,
}

/// A push in progress: bytes go to a temporary file in the depot directory.
#[derive(Debug)]
pub struct Incoming {
    file: tempfile::NamedTempFile,
    written: u64,
}

impl Incoming {
    /// Appends one chunk. Blocking (small writes to a local file).
    pub fn write(&mut self, data: &[u8]) -> Result<(), DepotError> {
        let path = self.file.path().to_owned();
        self.file
            .write_all(data)
            .map_err(|source| DepotError::Io { path, source })?;
        self.written += data.len() as u64;
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }
}

impl ReleaseDepot {
    /// Opens (creating if needed) the depot directory of the coordinator
    /// advertised as `me`.
    pub fn open(
        dir: &Path,
        trusted: TrustedKeys,
        client: Etcd,
        me: &str,
    ) -> Result<Self, DepotError> {
        std::fs::create_dir_all(dir).map_err(|source| DepotError::Io {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            trusted,
            client,
            me: me.to_owned(),
        })
    }

    /// This coordinator, as `holders` names it.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Whether the bundle is stored here.
    pub fn holds(&self, digest: &ReleaseDigest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Where the bundle with `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &ReleaseDigest) -> PathBuf {
        self.dir.join(format!("{}.lsr", digest.hex()))
    }

    /// Starts receiving a push.
    pub fn incoming(&self) -> Result<Incoming, DepotError> {
        let file = tempfile::Builder::new()
            .prefix(".incoming-")
            .tempfile_in(&self.dir)
            .map_err(|source| DepotError::Io {
                path: self.dir.clone(),
                source,
            })?;
        Ok(Incoming { file, written: 0 })
    }

    /// Verifies a received bundle, moves it into place and indexes it.
    /// Returns the entry and whether it was already present.
    pub async fn commit(
        &self,
        incoming: Incoming,
        expected: Option<ReleaseDigest>,
    ) -> Result<(ReleaseEntry, bool), DepotError> {
        let depot = self.clone();
        let (entry, already) = tokio::task::spawn_blocking(move || {
            depot.verify_and_place(incoming, expected.as_ref())
        })
        .await??;
        Ok((self.index(entry).await?, already))
    }

    /// Records `entry` with this coordinator among its holders; an entry
    /// already there keeps its first push time and its other holders.
    async fn index(&self, entry: ReleaseEntry) -> Result<ReleaseEntry, DepotError> {
        let key = keys::release(&entry.service, &entry.digest);
        let client = self.client.clone();
        for _ in 0..INDEX_ATTEMPTS {
            let response = client.get(key.as_str(), None).await?;
            let (mut merged, unchanged) = match response.kvs().first() {
                Some(kv) => (
                    serde_json::from_slice::<ReleaseEntry>(kv.value()).map_err(|source| {
                        DepotError::BadEntry {
                            key: key.clone(),
                            source,
                        }
                    })?,
                    Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision()),
                ),
                None => (
                    entry.clone(),
                    Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                ),
            };
            if !merged.holders.contains(&self.me) {
                merged.holders.push(self.me.clone());
            }
            let value = serde_json::to_vec(&merged).map_err(|source| DepotError::BadEntry {
                key: key.clone(),
                source,
            })?;
            let txn =
                Txn::new()
                    .when([unchanged])
                    .and_then([TxnOp::put(key.as_str(), value, None)]);
            if client.txn(txn).await?.succeeded() {
                return Ok(merged);
            }
        }
        Err(DepotError::Contended { key })
    }

    fn verify_and_place(
        &self,
        incoming: Incoming,
        expected: Option<&ReleaseDigest>,
    ) -> Result<(ReleaseEntry, bool), DepotError> {
        let temp_path = incoming.file.path().to_owned();
        incoming
            .file
            .as_file()
            .sync_all()
            .map_err(|source| DepotError::Io {
                path: temp_path.clone(),
                source,
            })?;
        let verified = release::verify_bundle(
            &temp_path,
            expected,
            &self.trusted,
            &UnpackLimits::default(),
        )
        .map_err(DepotError::Refused)?;
        let manifest = &verified.manifest;
        let entry = ReleaseEntry {
            service: manifest.service().to_string(),
            digest: verified.digest.to_string(),
            version: manifest.version().to_string(),
            size: incoming.written,
            pushed_unix_ms: crate::now_unix_ms(),
            signed: verified.signed_by.is_some(),
            holders: Vec::new(),
            overlap: match manifest.overlap() {
                release::manifest::Overlap::SocketHandover => rollout::Overlap::SocketHandover,
                release::manifest::Overlap::Reuseport => rollout::Overlap::Reuseport,
                release::manifest::Overlap::None => rollout::Overlap::None,
            },
        };
        let target = self.blob_path(&verified.digest);
        let already = target.exists();
        if !already {
            incoming.file.persist(&target).map_err(|e| DepotError::Io {
                path: target.clone(),
                source: e.error,
            })?;
            std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| DepotError::Io {
                    path: self.dir.clone(),
                    source,
                })?;
        }
        Ok((entry, already))
    }

    /// The index entry of `service`'s release `digest`.
    pub async fn entry(
        &self,
        service: &str,
        digest: &str,
    ) -> Result<Option<ReleaseEntry>, DepotError> {
        let key = keys::release(service, digest);
        let response = self.client.clone().get(key.as_str(), None).await?;
        response
            .kvs()
            .first()
            .map(|kv| {
                serde_json::from_slice(kv.value())
                    .map_err(|source| DepotError::BadEntry { key, source })
            })
            .transpose()
    }

    /// Every indexed release (of `service`, or all), newest push first.
    pub async fn list(&self, service: &str) -> Result<Vec<ReleaseEntry>, DepotError> {
        let prefix = if service.is_empty() {
            keys::RELEASES.to_owned()
        } else {
            keys::releases_of(service)
        };
        let response = self
            .client
            .clone()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        let mut entries = response
            .kvs()
            .iter()
            .map(|kv| {
                serde_json::from_slice::<ReleaseEntry>(kv.value()).map_err(|source| {
                    DepotError::BadEntry {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        source,
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|e| std::cmp::Reverse(e.pushed_unix_ms));
        Ok(entries)
    }
}

impl std::fmt::Debug for ReleaseDepot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseDepot").finish_non_exhaustive()
    }
}
