//! The local content-addressed store: `STORE/<hex digest>/` holds one
//! unpacked, read-only release.
//!
//! ```text
//! put(bundle): hash + signature check (nothing written yet)
//!   -> unpack into STORE/.tmp-XXXX (removed on any error)
//!   -> syncfs, stamp added-time (dir mtime), remove write bits
//!   -> rename to STORE/<hex>   (already there: a concurrent put won; ours is dropped)
//!   -> fsync STORE
//! gc(keep, pinned): rename STORE/<hex> -> STORE/.trash-XXXX, then delete
//! ```
//!
//! Names starting with `.` are the store's scratch space and never listed.
//! `put` is safe to run concurrently from several threads or processes.
//!
//! Must never: make a half-unpacked or half-deleted release visible under
//! its digest, remove a pinned release, or write into a published release.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::bundle::{BundleError, BundleFile};
use crate::digest::ReleaseDigest;
use crate::manifest::{MANIFEST_FILE, Manifest, ManifestError};
use crate::signing::{PublicKey, SigningError, TrustedKeys};
use crate::unpack::{UnpackError, UnpackLimits, unpack_into};

const TMP_PREFIX: &str = ".tmp-";
const TRASH_PREFIX: &str = ".trash-";
/// A `.tmp-` directory older than this belongs to a put that crashed (a
/// live put of a 16 GiB release finishes well within it); gc removes it.
pub const STALE_TMP_AGE: Duration = Duration::from_secs(3600);

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: io error")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("digest mismatch: expected {expected}, bundle is {actual}")]
    DigestMismatch {
        expected: ReleaseDigest,
        actual: ReleaseDigest,
    },
    #[error("signature check failed")]
    Signature(#[from] SigningError),
    #[error("cannot unpack bundle {digest}")]
    Unpack {
        digest: ReleaseDigest,
        #[source]
        source: UnpackError,
    },
    #[error("stored release {digest} has a bad manifest")]
    Manifest {
        digest: ReleaseDigest,
        #[source]
        source: ManifestError,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A release in the store.
#[derive(Debug, Clone)]
pub struct StoredRelease {
    pub digest: ReleaseDigest,
    /// The release root (`STORE/<hex>`), read-only.
    pub path: PathBuf,
    pub manifest: Manifest,
    /// When it was added (the directory's mtime, stamped by `put`).
    pub added: SystemTime,
}

/// A bundle that passed every check of [`verify_bundle`].
#[derive(Debug, Clone)]
pub struct Verified {
    pub digest: ReleaseDigest,
    pub manifest: Manifest,
    pub signed_by: Option<PublicKey>,
    pub entries: u64,
    pub content_bytes: u64,
}

/// A local content-addressed release store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    limits: UnpackLimits,
    trusted: TrustedKeys,
}

/// Checks digest and signature policy before anything is unpacked.
fn precheck(
    bundle: &Path,
    expected: Option<&ReleaseDigest>,
    trusted: &TrustedKeys,
) -> Result<BundleFile, StoreError> {
    let file = BundleFile::open(bundle)?;
    if let Some(expected) = expected {
        if *expected != file.digest {
            return Err(StoreError::DigestMismatch {
                expected: *expected,
                actual: file.digest,
            });
        }
    }
    trusted.check(&file.digest, file.signature.as_ref())?;
    Ok(file)
}

/// Fully verifies a bundle file: digest (if `expected`), signature policy,
/// and a complete unpack with every safety check into a scratch directory
/// that is removed afterwards.
pub fn verify_bundle(
    bundle: &Path,
    expected: Option<&ReleaseDigest>,
    trusted: &TrustedKeys,
    limits: &UnpackLimits,
) -> Result<Verified, StoreError> {
    let file = precheck(bundle, expected, trusted)?;
    let scratch = tempfile::Builder::new()
        .prefix("lockstep-verify-")
        .tempdir()
        .map_err(io_err(&std::env::temp_dir()))?;
    let unpacked =
        unpack_into(file.stream()?, scratch.path(), limits, file.stream_len).map_err(|source| {
            StoreError::Unpack {
                digest: file.digest,
                source,
            }
        })?;
    Ok(Verified {
        digest: file.digest,
        manifest: unpacked.manifest,
        signed_by: file.signature.map(|s| s.key),
        entries: unpacked.entries,
        content_bytes: unpacked.content_bytes,
    })
}

impl Store {
    /// Opens (creating if needed) a store at `dir`.
    pub fn open(
        dir: impl Into<PathBuf>,
        limits: UnpackLimits,
        trusted: TrustedKeys,
    ) -> Result<Self, StoreError> {
        let root = dir.into();
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        Ok(Self {
            root,
            limits,
            trusted,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a release lives (whether or not it is present).
    pub fn release_path(&self, digest: &ReleaseDigest) -> PathBuf {
        self.root.join(digest.hex())
    }

    pub fn contains(&self, digest: &ReleaseDigest) -> bool {
        self.release_path(digest).is_dir()
    }

    /// Verifies and unpacks a bundle file; returns its digest.
    pub fn put(&self, bundle: &Path) -> Result<ReleaseDigest, StoreError> {
        self.put_checked(bundle, None)
    }

    /// Like [`Store::put`], refusing a bundle whose digest is not `expected`.
    pub fn put_expecting(
        &self,
        bundle: &Path,
        expected: &ReleaseDigest,
    ) -> Result<ReleaseDigest, StoreError> {
        self.put_checked(bundle, Some(expected))
    }

    /// Spools a bundle from a reader (e.g. a download) into the store's
    /// scratch space, then puts it.
    pub fn put_reader(
        &self,
        mut reader: impl Read,
        expected: Option<&ReleaseDigest>,
    ) -> Result<ReleaseDigest, StoreError> {
        let mut spool = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(&self.root)
            .map_err(io_err(&self.root))?;
        io::copy(&mut reader, spool.as_file_mut()).map_err(io_err(spool.path()))?;
        self.put_checked(spool.path(), expected)
    }

    fn put_checked(
        &self,
        bundle: &Path,
        expected: Option<&ReleaseDigest>,
    ) -> Result<ReleaseDigest, StoreError> {
        let file = precheck(bundle, expected, &self.trusted)?;
        let digest = file.digest;
        let dest = self.release_path(&digest);
        if dest.is_dir() {
            return Ok(digest);
        }
        let tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempdir_in(&self.root)
            .map_err(io_err(&self.root))?;
        // Dropping `tmp` on an error below removes the partial tree (still writable).
        unpack_into(file.stream()?, tmp.path(), &self.limits, file.stream_len)
            .map_err(|source| StoreError::Unpack { digest, source })?;
        let tmp_path = tmp.keep();
        match self.publish(&tmp_path, &dest) {
            Ok(()) => Ok(digest),
            Err(e) => {
                // The publish error is the one to report; a temp dir left
                // behind is removed by a later gc once it is an hour old.
                if let Err(cleanup) = remove_tree(&tmp_path) {
                    tracing::warn!(path = %tmp_path.display(), error = %cleanup, "cannot remove a temporary release directory");
                }
                Err(e)
            }
        }
    }

    fn publish(&self, tmp: &Path, dest: &Path) -> Result<(), StoreError> {
        let dir = File::open(tmp).map_err(io_err(tmp))?;
        dir.set_modified(SystemTime::now()).map_err(io_err(tmp))?;
        make_read_only(tmp)?;
        // One syncfs instead of an fsync per file: file data, the chmods and
        // the directory entries all reach the disk before the rename does.
        nix::unistd::syncfs(&dir).map_err(|e| StoreError::Io {
            path: tmp.to_owned(),
            source: e.into(),
        })?;
        match fs::rename(tmp, dest) {
            Ok(()) => {}
            // A concurrent put of the same digest got there first: same bytes, keep theirs.
            Err(e) if dest.is_dir() => {
                tracing::debug!(error = %e, "release already present, dropping duplicate");
                remove_tree(tmp)?;
                return Ok(());
            }
            Err(e) => return Err(io_err(dest)(e)),
        }
        File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.root))
    }

    /// The release with this digest, if present.
    pub fn get(&self, digest: &ReleaseDigest) -> Result<Option<StoredRelease>, StoreError> {
        let path = self.release_path(digest);
        let meta = match path.symlink_metadata() {
            Ok(m) if m.is_dir() => m,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let manifest =
            Manifest::load(&path.join(MANIFEST_FILE)).map_err(|source| StoreError::Manifest {
                digest: *digest,
                source,
            })?;
        Ok(Some(StoredRelease {
            digest: *digest,
            added: meta.modified().map_err(io_err(&path))?,
            path,
            manifest,
        }))
    }

    /// Every release, most recently added first.
    pub fn list(&self) -> Result<Vec<StoredRelease>, StoreError> {
        let mut out = Vec::new();
        for item in fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let item = item.map_err(io_err(&self.root))?;
            let name = item.file_name();
            let Some(digest) = name.to_str().and_then(|n| ReleaseDigest::from_hex(n).ok()) else {
                continue; // scratch (.tmp-, .trash-) or foreign files
            };
            if let Some(r) = self.get(&digest)? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| b.added.cmp(&a.added).then(a.digest.cmp(&b.digest)));
        Ok(out)
    }

    /// Removes every release except the `keep` most recently added and the
    /// `pinned` ones (never removed, whatever `keep` is). Also clears
    /// leftovers of crashed puts. Returns the digests removed.
    pub fn gc(
        &self,
        keep: usize,
        pinned: &[ReleaseDigest],
    ) -> Result<Vec<ReleaseDigest>, StoreError> {
        let mut removed = Vec::new();
        for r in self.list()?.into_iter().skip(keep) {
            if pinned.contains(&r.digest) {
                continue;
            }
            self.remove(&r.digest)?;
            removed.push(r.digest);
        }
        self.clear_scratch()?;
        Ok(removed)
    }

    /// Removes one release: renamed out of sight first, then deleted.
    pub fn remove(&self, digest: &ReleaseDigest) -> Result<bool, StoreError> {
        let path = self.release_path(digest);
        if !path.is_dir() {
            return Ok(false);
        }
        let trash = tempfile::Builder::new()
            .prefix(TRASH_PREFIX)
            .tempdir_in(&self.root)
            .map_err(io_err(&self.root))?
            .keep();
        let target = trash.join(digest.hex());
        fs::rename(&path, &target).map_err(io_err(&path))?;
        remove_tree(&trash)?;
        Ok(true)
    }

    fn clear_scratch(&self) -> Result<(), StoreError> {
        let now = SystemTime::now();
        for item in fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let item = item.map_err(io_err(&self.root))?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            let path = item.path();
            let stale = name.starts_with(TRASH_PREFIX)
                || (name.starts_with(TMP_PREFIX)
                    && item
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| now.duration_since(t).ok())
                        .is_some_and(|age| age > STALE_TMP_AGE));
            if stale {
                if path.is_dir() {
                    remove_tree(&path)?;
                } else {
                    fs::remove_file(&path).map_err(io_err(&path))?;
                }
            }
        }
        Ok(())
    }
}

/// Removes write permission from every file and directory under `root`
/// (symlinks have no permissions of their own and are left alone).
fn make_read_only(root: &Path) -> Result<(), StoreError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for item in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let item = item.map_err(io_err(&dir))?;
            let path = item.path();
            let meta = path.symlink_metadata().map_err(io_err(&path))?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let mode = meta.permissions().mode() & 0o555;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(io_err(&path))?;
            }
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).map_err(io_err(&dir))?;
    }
    Ok(())
}

/// Deletes a tree made read-only by `make_read_only`: directories get their
/// write bit back first (unlinking needs it), links are never followed.
fn remove_tree(root: &Path) -> Result<(), StoreError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(io_err(&dir))?;
        for item in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let item = item.map_err(io_err(&dir))?;
            if item.file_type().map_err(io_err(&dir))?.is_dir() {
                stack.push(item.path());
            }
        }
    }
    fs::remove_dir_all(root).map_err(io_err(root))
}
