//! Safe unpacking of a bundle's entries into an empty directory.
//!
//! ```text
//! tar.zst --(decoder thread)--> chunks --> tar entries --check each--> write
//!            capped at limits                path: relative, no `..`, no NUL
//!                                             type: file, dir, symlink, hard link
//!                                             size: entry and total limits
//!                                             parents: real dirs, never links
//! after the last entry: every symlink resolved on disk stays inside the root,
//!                       release.toml is a regular file and a valid manifest
//! ```
//!
//! Every refusal is its own [`UnpackError`] variant naming the entry. The
//! caller (the store, `verify`) owns the directory and removes it on error.
//!
//! Must never: write outside the directory it is given, follow a link while
//! creating an entry, create a device, fifo or setuid file, or allocate
//! without bound on a hostile archive.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use crate::manifest::{MANIFEST_FILE, MAX_MANIFEST_BYTES, Manifest, ManifestError};
use crate::paths::{PathError, RelativePath, ResolveError, resolve_within};

/// One entry may hold at most 4 GiB: larger than any binary or config a
/// service ships, small enough to stop a decompression bomb early.
pub const DEFAULT_MAX_ENTRY_BYTES: u64 = 4 << 30;
/// A whole release may unpack to at most 16 GiB.
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 16 << 30;
/// At most 1 million entries: far above real trees (node_modules included),
/// bounded so a flood of empty entries cannot exhaust inodes.
pub const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;
/// A bundle may unpack to at most this many times its own size: real
/// releases (binaries, configs, assets) compress 2-10x; a bomb of zeros
/// compresses thousands of times.
pub const DEFAULT_MAX_EXPANSION_RATIO: u64 = 100;
/// Whatever its ratio, a bundle may always unpack to this much, so a tiny
/// release with a few compressible files is never refused.
pub const EXPANSION_FLOOR_BYTES: u64 = 64 << 20;
/// Bytes of tar framing allowed per entry on top of content (header, a GNU
/// long-name record, padding).
const FRAMING_PER_ENTRY: u64 = 4 * 1024;
const CHUNK: usize = 1024 * 1024;
const CHUNKS_IN_FLIGHT: usize = 4;

/// Size limits applied while unpacking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    pub max_entry_bytes: u64,
    pub max_total_bytes: u64,
    pub max_entries: u64,
    /// Content may be at most this many times the bundle's compressed
    /// size (or `EXPANSION_FLOOR_BYTES`, whichever is more).
    pub max_expansion_ratio: u64,
}

impl UnpackLimits {
    /// How much content a bundle of `bundle_bytes` may unpack to before
    /// `max_total_bytes` applies: its size times the ratio, at least the
    /// floor.
    pub fn expansion_allowance(&self, bundle_bytes: u64) -> u64 {
        bundle_bytes
            .saturating_mul(self.max_expansion_ratio)
            .max(EXPANSION_FLOOR_BYTES)
    }
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_expansion_ratio: DEFAULT_MAX_EXPANSION_RATIO,
        }
    }
}

/// Why a bundle was refused while unpacking.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("bundle is not a valid tar.zst stream")]
    Corrupt(#[source] io::Error),
    #[error("entry `{path}` has an absolute path")]
    AbsolutePath { path: String },
    #[error("entry `{path}` contains `..`")]
    ParentDir { path: String },
    #[error("entry `{path}` has a bad path")]
    BadPath {
        path: String,
        #[source]
        source: PathError,
    },
    #[error("{kind} `{path}` -> `{target}` points outside the release root ({reason})")]
    LinkEscapes {
        path: String,
        kind: &'static str,
        target: String,
        reason: ResolveError,
    },
    #[error("hard link `{path}` -> `{target}`: the target is not a file unpacked earlier")]
    HardLinkTarget { path: String, target: String },
    #[error("entry `{path}` is a {kind}; releases may not contain devices or fifos")]
    DeviceOrFifo { path: String, kind: &'static str },
    #[error("entry `{path}` has unsupported tar type {kind}")]
    UnsupportedEntry { path: String, kind: u8 },
    #[error("entry `{path}` is {size} bytes, over the {limit}-byte entry limit")]
    EntryTooLarge { path: String, size: u64, limit: u64 },
    #[error("bundle unpacks to more than the {limit}-byte total limit (at entry `{path}`)")]
    TotalTooLarge { path: String, limit: u64 },
    #[error(
        "entry `{path}` takes the content past {limit} bytes, {ratio}x the bundle's {bundle_bytes} bytes (limits.max_expansion_ratio): refused as a decompression bomb"
    )]
    ExpandsTooFar {
        path: String,
        limit: u64,
        bundle_bytes: u64,
        ratio: u64,
    },
    #[error("{MANIFEST_FILE} is {size} bytes, over the {limit}-byte limit for a manifest")]
    ManifestTooLarge { size: u64, limit: u64 },
    #[error("bundle has more than {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("bundle decompresses to more than {limit} bytes")]
    DecompressedTooLarge { limit: u64 },
    #[error("entry `{path}` goes through `{via}`, which is not a directory")]
    ThroughNonDirectory { path: String, via: String },
    #[error("entry `{path}` appears twice")]
    Duplicate { path: String },
    #[error("bundle has no {MANIFEST_FILE} at its root")]
    MissingManifest,
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// What an unpack produced.
#[derive(Debug, Clone)]
pub struct Unpacked {
    pub manifest: Manifest,
    pub entries: u64,
    pub content_bytes: u64,
}

/// Unpacks a tar.zst stream of `bundle_bytes` into `dest`, which must
/// exist and be empty. Files are created 0644/0755 (writable: the store
/// removes write bits when it publishes). On error `dest` may hold partial
/// output: the caller removes it.
pub fn unpack_into(
    stream: impl Read + Send + 'static,
    dest: &Path,
    limits: &UnpackLimits,
    bundle_bytes: u64,
) -> Result<Unpacked, UnpackError> {
    let content = limits
        .max_total_bytes
        .min(limits.expansion_allowance(bundle_bytes));
    let cap = content.saturating_add(
        limits
            .max_entries
            .saturating_add(2)
            .saturating_mul(FRAMING_PER_ENTRY),
    );
    let exceeded = Arc::new(AtomicBool::new(false));
    let reader = spawn_decoder(stream, cap, exceeded.clone());
    let result = unpack_entries(reader, dest, limits, bundle_bytes);
    if exceeded.load(Ordering::SeqCst) {
        return Err(UnpackError::DecompressedTooLarge { limit: cap });
    }
    result
}

/// Decompresses on a helper thread (zstd there, tar parsing and file writes
/// here), the same split as `tar` piping from a `zstd -d` process.
fn spawn_decoder(
    stream: impl Read + Send + 'static,
    cap: u64,
    exceeded: Arc<AtomicBool>,
) -> ChannelReader {
    let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(CHUNKS_IN_FLIGHT);
    std::thread::spawn(move || {
        let mut decoder = match zstd::stream::read::Decoder::new(stream) {
            Ok(d) => d,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let mut total = 0u64;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let mut filled = 0;
            while filled < CHUNK {
                match decoder.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
            total += filled as u64;
            if total > cap {
                exceeded.store(true, Ordering::SeqCst);
                let _ = tx.send(Err(io::Error::other("decompressed size over the limit")));
                return;
            }
            if filled == 0 {
                return;
            }
            buf.truncate(filled);
            if tx.send(Ok(buf)).is_err() {
                return; // the reader gave up
            }
        }
    });
    ChannelReader {
        rx,
        chunk: Vec::new(),
        pos: 0,
    }
}

struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0), // decoder finished
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Checks an entry name: each refusal gets its own error.
fn entry_path(raw: &[u8]) -> Result<RelativePath, UnpackError> {
    if raw.first() == Some(&b'/') {
        return Err(UnpackError::AbsolutePath { path: lossy(raw) });
    }
    if raw.split(|b| *b == b'/').any(|c| c == b"..") {
        return Err(UnpackError::ParentDir { path: lossy(raw) });
    }
    RelativePath::from_bytes(raw).map_err(|source| UnpackError::BadPath {
        path: lossy(raw),
        source,
    })
}

fn unpack_entries(
    reader: impl Read,
    dest: &Path,
    limits: &UnpackLimits,
    bundle_bytes: u64,
) -> Result<Unpacked, UnpackError> {
    let allowance = limits.expansion_allowance(bundle_bytes);
    let mut archive = tar::Archive::new(reader);
    let mut count = 0u64;
    let mut total = 0u64;
    let mut symlinks: Vec<(RelativePath, PathBuf)> = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    for entry in archive.entries().map_err(UnpackError::Corrupt)? {
        let mut entry = entry.map_err(UnpackError::Corrupt)?;
        count += 1;
        if count > limits.max_entries {
            return Err(UnpackError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let raw = entry.path_bytes().into_owned();
        let rel = entry_path(&raw)?;
        let et = entry.header().entry_type();
        let shown = rel.to_string();
        match et {
            tar::EntryType::Char => {
                return Err(UnpackError::DeviceOrFifo {
                    path: shown,
                    kind: "character device",
                });
            }
            tar::EntryType::Block => {
                return Err(UnpackError::DeviceOrFifo {
                    path: shown,
                    kind: "block device",
                });
            }
            tar::EntryType::Fifo => {
                return Err(UnpackError::DeviceOrFifo {
                    path: shown,
                    kind: "fifo",
                });
            }
            tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::Directory
            | tar::EntryType::Symlink
            | tar::EntryType::Link => {}
            other => {
                return Err(UnpackError::UnsupportedEntry {
                    path: shown,
                    kind: other.as_byte(),
                });
            }
        }
        if rel.is_root() {
            if et == tar::EntryType::Directory {
                continue; // "./": the root itself
            }
            return Err(UnpackError::BadPath {
                path: lossy(&raw),
                source: PathError::Empty,
            });
        }
        let size = entry.size();
        if et.is_file() {
            if size > limits.max_entry_bytes {
                return Err(UnpackError::EntryTooLarge {
                    path: shown,
                    size,
                    limit: limits.max_entry_bytes,
                });
            }
            total = total.saturating_add(size);
            if total > limits.max_total_bytes {
                return Err(UnpackError::TotalTooLarge {
                    path: shown,
                    limit: limits.max_total_bytes,
                });
            }
            if total > allowance {
                return Err(UnpackError::ExpandsTooFar {
                    path: shown,
                    limit: allowance,
                    bundle_bytes,
                    ratio: limits.max_expansion_ratio,
                });
            }
            if rel.as_path() == Path::new(MANIFEST_FILE) && size > MAX_MANIFEST_BYTES {
                return Err(UnpackError::ManifestTooLarge {
                    size,
                    limit: MAX_MANIFEST_BYTES,
                });
            }
        }
        make_parents(dest, &rel)?;
        let target = rel.under(dest);
        let werr = |source| UnpackError::Write {
            path: target.clone(),
            source,
        };
        // Creation is exclusive: an existing path means the bundle names
        // it twice.
        let create_err = |e: io::Error| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                UnpackError::Duplicate {
                    path: rel.to_string(),
                }
            } else {
                werr(e)
            }
        };
        match et {
            tar::EntryType::Directory => match target.symlink_metadata() {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(UnpackError::Duplicate { path: shown }),
                Err(_) => fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&target)
                    .map_err(werr)?,
            },
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .map(|b| b.into_owned())
                    .unwrap_or_default();
                let link_path = PathBuf::from(std::ffi::OsStr::from_bytes(&link));
                if link.is_empty() || link.contains(&0) {
                    return Err(UnpackError::BadPath {
                        path: shown,
                        source: PathError::Empty,
                    });
                }
                check_lexically_inside(&rel, &link_path, "symlink")?;
                std::os::unix::fs::symlink(&link_path, &target).map_err(create_err)?;
                symlinks.push((rel, link_path));
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name_bytes()
                    .map(|b| b.into_owned())
                    .unwrap_or_default();
                let escapes = |reason| UnpackError::LinkEscapes {
                    path: shown.clone(),
                    kind: "hard link",
                    target: lossy(&link),
                    reason,
                };
                if link.first() == Some(&b'/') {
                    return Err(escapes(ResolveError::Absolute));
                }
                let source_rel = match RelativePath::non_empty_from_bytes(&link) {
                    Ok(p) => p,
                    Err(PathError::ParentDir(_)) => return Err(escapes(ResolveError::Escapes)),
                    Err(_) => {
                        return Err(UnpackError::HardLinkTarget {
                            path: shown,
                            target: lossy(&link),
                        });
                    }
                };
                // Only to a regular file already unpacked, reached through real directories.
                let ok = parents_are_dirs(dest, &source_rel)
                    && source_rel
                        .under(dest)
                        .symlink_metadata()
                        .is_ok_and(|m| m.is_file());
                if !ok {
                    return Err(UnpackError::HardLinkTarget {
                        path: shown,
                        target: lossy(&link),
                    });
                }
                fs::hard_link(source_rel.under(dest), &target).map_err(create_err)?;
            }
            _ => {
                let exec = entry.header().mode().unwrap_or(0) & 0o111 != 0;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true) // O_EXCL: never follows or reuses anything
                    .mode(if exec { 0o755 } else { 0o644 })
                    .open(&target)
                    .map_err(create_err)?;
                copy_entry(&mut entry, &mut file, &mut buf).map_err(|e| match e {
                    CopyError::Read(e) => UnpackError::Corrupt(e),
                    CopyError::Write(e) => werr(e),
                })?;
            }
        }
    }
    // Links were checked lexically as they came; now that the tree is final,
    // resolve each on disk (a link through another link can still climb out).
    for (rel, link) in &symlinks {
        resolve_within(dest, &rel.parent_components(), link).map_err(|reason| {
            UnpackError::LinkEscapes {
                path: rel.to_string(),
                kind: "symlink",
                target: link.display().to_string(),
                reason,
            }
        })?;
    }
    let manifest_path = dest.join(MANIFEST_FILE);
    match manifest_path.symlink_metadata() {
        Ok(m) if m.is_file() => {}
        _ => return Err(UnpackError::MissingManifest),
    }
    let manifest = Manifest::load(&manifest_path)?;
    Ok(Unpacked {
        manifest,
        entries: count,
        content_bytes: total,
    })
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

fn copy_entry(src: &mut impl Read, dst: &mut File, buf: &mut [u8]) -> Result<(), CopyError> {
    loop {
        let n = match src.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        dst.write_all(&buf[..n]).map_err(CopyError::Write)?;
    }
}

/// Refuses absolute targets and targets that climb above the root on paper.
fn check_lexically_inside(
    rel: &RelativePath,
    link: &Path,
    kind: &'static str,
) -> Result<(), UnpackError> {
    let escapes = |reason| UnpackError::LinkEscapes {
        path: rel.to_string(),
        kind,
        target: link.display().to_string(),
        reason,
    };
    let mut depth = rel.parent_components().len();
    for c in link.components() {
        match c {
            std::path::Component::RootDir | std::path::Component::Prefix(_) => {
                return Err(escapes(ResolveError::Absolute));
            }
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| escapes(ResolveError::Escapes))?;
            }
            std::path::Component::Normal(_) => depth += 1,
        }
    }
    Ok(())
}

/// Creates the missing parents of `rel`; each existing one must be a real
/// directory (never a symlink), so nothing is ever written through a link.
fn make_parents(dest: &Path, rel: &RelativePath) -> Result<(), UnpackError> {
    let parents = rel.parent_components();
    let mut here = dest.to_path_buf();
    let mut shown = PathBuf::new();
    for c in parents {
        here.push(&c);
        shown.push(&c);
        match here.symlink_metadata() {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(UnpackError::ThroughNonDirectory {
                    path: rel.to_string(),
                    via: shown.display().to_string(),
                });
            }
            Err(_) => fs::DirBuilder::new()
                .mode(0o755)
                .create(&here)
                .map_err(|source| UnpackError::Write {
                    path: here.clone(),
                    source,
                })?,
        }
    }
    Ok(())
}

fn parents_are_dirs(dest: &Path, rel: &RelativePath) -> bool {
    let mut here = dest.to_path_buf();
    rel.parent_components().iter().all(|c| {
        here.push(c);
        here.symlink_metadata().is_ok_and(|m| m.is_dir())
    })
}
