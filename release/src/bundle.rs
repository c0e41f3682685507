//! The bundle format: deterministic build, reading, inspection.
//!
//! ```text
//! DIR --walk, sort by path bytes--> [dir|file|symlink entries]
//!     --tar (GNU headers: mtime 0, uid/gid 0, no names, mode 0644/0755)-->
//!     --zstd level 3, checksummed, 2 workers--> bytes --sha256--> digest
//!     [+ signature frame, see `signing`]
//! ```
//!
//! The same directory gives the same bytes on any machine running the same
//! build of this crate: only path, type, size, the executable bit and link
//! targets reach the archive. zstd's multi-threaded mode produces identical
//! output whatever the worker count (>= 1), so the machine's core count does
//! not leak into the digest.
//!
//! Must never: pack a link that leaves the source tree, pack a tree without a
//! valid `release.toml`, or write anything into the source tree.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::digest::{HashingWriter, ReleaseDigest};
use crate::manifest::{MANIFEST_FILE, MAX_MANIFEST_BYTES, Manifest, ManifestError};
use crate::paths::{RelativePath, ResolveError, resolve_within};
use crate::signing::{
    EmbeddedSignature, PublicKey, SIGNATURE_FRAME_LEN, SecretKey, SigningError,
    parse_signature_frame,
};

/// zstd level 3: zstd's own default and what `tar --zstd` uses. Higher
/// levels shrink code bundles by a few percent at several times the CPU
/// cost; deploys are dominated by build and unpack time, not transfer.
pub const ZSTD_LEVEL: i32 = 3;
/// Compression workers. Output is identical for any count >= 1; two keeps
/// the file walk and compression overlapped without taking every core of a
/// build machine.
pub const ZSTD_WORKERS: u32 = 2;
/// File extension of a bundle ("lockstep release").
pub const BUNDLE_EXTENSION: &str = "lsr";
const COPY_BUF: usize = 256 * 1024;

/// Why a directory cannot be built into a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write bundle {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{dir} has no {MANIFEST_FILE} at its root; add one (see the release docs)")]
    MissingManifest { dir: PathBuf },
    #[error("{path} is a symlink; {MANIFEST_FILE} must be a regular file")]
    ManifestNotFile { path: PathBuf },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("symlink {path} -> {target} points outside the release root ({reason})")]
    LinkEscapes {
        path: String,
        target: String,
        reason: ResolveError,
    },
    #[error("{path} is a {kind}; a release may only hold files, directories and symlinks")]
    UnsupportedFile { path: String, kind: &'static str },
    #[error("{path} changed size while it was being packed; build again")]
    FileChanged { path: String },
    #[error("{key} names `{path}`, which is not a file in the release")]
    ProgramMissing { key: &'static str, path: String },
    #[error("{key} names `{path}`, which is not executable (chmod +x it)")]
    ProgramNotExecutable { key: &'static str, path: String },
    #[error("run.working_dir `{path}` is not a directory in the release")]
    WorkingDirMissing { path: String },
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    pub digest: ReleaseDigest,
    pub manifest: Manifest,
    /// Entries packed (files, directories, symlinks).
    pub entries: usize,
    /// Sum of file sizes packed.
    pub content_bytes: u64,
    /// Size of the bundle written, signature frame included.
    pub bundle_bytes: u64,
    pub signed_by: Option<PublicKey>,
}

enum Kind {
    Dir,
    File { size: u64, exec: bool },
    Symlink { target: PathBuf },
}

struct SourceEntry {
    rel: Vec<u8>,
    abs: PathBuf,
    kind: Kind,
}

/// Builds `src` into a bundle written to `out`.
pub fn build(
    src: &Path,
    out: impl Write,
    key: Option<&SecretKey>,
) -> Result<BuildOutput, BuildError> {
    let manifest = check_manifest(src)?;
    let entries = walk(src)?;
    check_programs(src, &manifest)?;
    write_bundle(entries, manifest, out, key)
}

/// Builds `src` into the file `out`: written beside it under a temporary
/// name and renamed into place, so a failed build never leaves a partial
/// bundle under the final name.
pub fn build_file(
    src: &Path,
    out: &Path,
    key: Option<&SecretKey>,
) -> Result<BuildOutput, BuildError> {
    let werr = |source| BuildError::Write {
        path: out.to_owned(),
        source,
    };
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".lsr-build-")
        .tempfile_in(&dir)
        .map_err(werr)?;
    let result = build(src, BufWriter::with_capacity(COPY_BUF, tmp.as_file()), key)?;
    // No fsync: a bundle file is a build artifact, not the store. A crash
    // right after the rename can at worst leave a truncated file, which
    // fails its digest and signature checks and is rebuilt; the store, where
    // durability matters, syncs before it publishes.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644)).map_err(werr)?;
    tmp.persist(out).map_err(|e| werr(e.error))?;
    Ok(result)
}

fn check_manifest(src: &Path) -> Result<Manifest, BuildError> {
    let path = src.join(MANIFEST_FILE);
    match path.symlink_metadata() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BuildError::MissingManifest {
            dir: src.to_owned(),
        }),
        Err(source) => Err(BuildError::Read { path, source }),
        Ok(m) if !m.is_file() => Err(BuildError::ManifestNotFile { path }),
        Ok(_) => Ok(Manifest::load(&path)?),
    }
}

fn check_programs(src: &Path, m: &Manifest) -> Result<(), BuildError> {
    let mut programs = vec![("run.command", &m.run().command.program)];
    if let crate::manifest::Readiness::Exec { argv } = &m.readiness().probe {
        programs.push(("readiness.exec", &argv.program));
    }
    for (key, program) in programs {
        let path = program.to_string();
        match program.under(src).metadata() {
            Ok(meta) if meta.is_file() => {
                if meta.permissions().mode() & 0o111 == 0 {
                    return Err(BuildError::ProgramNotExecutable { key, path });
                }
            }
            _ => return Err(BuildError::ProgramMissing { key, path }),
        }
    }
    let wd = &m.run().working_dir;
    if !wd.under(src).is_dir() {
        return Err(BuildError::WorkingDirMissing {
            path: wd.to_string(),
        });
    }
    Ok(())
}

/// Lists the tree under `src`, sorted by relative path bytes.
fn walk(src: &Path) -> Result<Vec<SourceEntry>, BuildError> {
    let mut out = Vec::new();
    let mut stack = vec![(src.to_path_buf(), Vec::<u8>::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let rd = fs::read_dir(&dir).map_err(|source| BuildError::Read {
            path: dir.clone(),
            source,
        })?;
        for item in rd {
            let item = item.map_err(|source| BuildError::Read {
                path: dir.clone(),
                source,
            })?;
            let abs = item.path();
            let mut rel = prefix.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(item.file_name().as_bytes());
            let meta = abs.symlink_metadata().map_err(|source| BuildError::Read {
                path: abs.clone(),
                source,
            })?;
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                stack.push((abs.clone(), rel.clone()));
                Kind::Dir
            } else if ft.is_file() {
                Kind::File {
                    size: meta.len(),
                    exec: meta.permissions().mode() & 0o111 != 0,
                }
            } else if ft.is_symlink() {
                let target = fs::read_link(&abs).map_err(|source| BuildError::Read {
                    path: abs.clone(),
                    source,
                })?;
                let parent = RelativePath::from_bytes(&rel)
                    .map(|p| p.parent_components())
                    .unwrap_or_default();
                resolve_within(src, &parent, &target).map_err(|reason| {
                    BuildError::LinkEscapes {
                        path: String::from_utf8_lossy(&rel).into_owned(),
                        target: target.display().to_string(),
                        reason,
                    }
                })?;
                Kind::Symlink { target }
            } else {
                use std::os::unix::fs::FileTypeExt;
                let kind = if ft.is_fifo() {
                    "fifo"
                } else if ft.is_socket() {
                    "socket"
                } else {
                    "device"
                };
                return Err(BuildError::UnsupportedFile {
                    path: String::from_utf8_lossy(&rel).into_owned(),
                    kind,
                });
            };
            out.push(SourceEntry { rel, abs, kind });
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

fn normalised_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    // new_gnu() leaves user/group names zeroed (empty); keep them so.
    h
}

fn write_bundle(
    entries: Vec<SourceEntry>,
    manifest: Manifest,
    out: impl Write,
    key: Option<&SecretKey>,
) -> Result<BuildOutput, BuildError> {
    let werr = |source| BuildError::Write {
        path: PathBuf::from("<bundle>"),
        source,
    };
    let hashing = HashingWriter::new(out);
    let mut enc = zstd::stream::write::Encoder::new(hashing, ZSTD_LEVEL).map_err(werr)?;
    enc.include_checksum(true).map_err(werr)?;
    enc.multithread(ZSTD_WORKERS).map_err(werr)?;
    let mut tar = tar::Builder::new(enc);
    let mut content_bytes = 0u64;
    let count = entries.len();
    for e in entries {
        let rel = Path::new(std::ffi::OsStr::from_bytes(&e.rel));
        match e.kind {
            Kind::Dir => {
                let mut h = normalised_header(tar::EntryType::Directory, 0o755, 0);
                tar.append_data(&mut h, rel, io::empty()).map_err(werr)?;
            }
            Kind::Symlink { target } => {
                let mut h = normalised_header(tar::EntryType::Symlink, 0o777, 0);
                tar.append_link(&mut h, rel, &target).map_err(werr)?;
            }
            Kind::File { size, exec } => {
                let mode = if exec { 0o755 } else { 0o644 };
                let mut h = normalised_header(tar::EntryType::Regular, mode, size);
                let file = File::open(&e.abs).map_err(|source| BuildError::Read {
                    path: e.abs.clone(),
                    source,
                })?;
                let mut exact = ExactReader {
                    inner: file,
                    remaining: size,
                    short: false,
                };
                let r = tar.append_data(&mut h, rel, &mut exact);
                if exact.short {
                    return Err(BuildError::FileChanged {
                        path: String::from_utf8_lossy(&e.rel).into_owned(),
                    });
                }
                r.map_err(werr)?;
                content_bytes += size;
            }
        }
    }
    let enc = tar.into_inner().map_err(werr)?;
    let hashing = enc.finish().map_err(werr)?;
    let (digest, mut bundle_bytes, mut out) = hashing.finish();
    let signed_by = match key {
        Some(k) => {
            out.write_all(&k.signature_frame(&digest)).map_err(werr)?;
            bundle_bytes += SIGNATURE_FRAME_LEN as u64;
            Some(k.public())
        }
        None => None,
    };
    out.flush().map_err(werr)?;
    Ok(BuildOutput {
        digest,
        manifest,
        entries: count,
        content_bytes,
        bundle_bytes,
        signed_by,
    })
}

/// Reads exactly `remaining` bytes; a file that shrank or grew is flagged.
struct ExactReader<R> {
    inner: R,
    remaining: u64,
    short: bool,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            // Grown since we listed it: the extra bytes would corrupt the archive.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? != 0 {
                self.short = true;
                return Err(io::Error::other("file grew while packing"));
            }
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            self.short = true;
            return Err(io::Error::other("file shrank while packing"));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

// ---------------------------------------------------------------- reading

/// Why a bundle file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read bundle {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("bundle {path} is not a valid tar.zst stream")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("bundle {path} has no {MANIFEST_FILE} at its root")]
    MissingManifest { path: PathBuf },
    #[error("bundle {path}: {source}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: ManifestError,
    },
    #[error("bundle {path} has a malformed signature frame")]
    BadSignatureFrame {
        path: PathBuf,
        #[source]
        source: SigningError,
    },
}

/// A bundle file opened and hashed: its digest and its (unchecked) signature.
#[derive(Debug, Clone)]
pub struct BundleFile {
    pub path: PathBuf,
    pub digest: ReleaseDigest,
    pub signature: Option<EmbeddedSignature>,
    /// Length of the tar.zst stream (the digested bytes).
    pub stream_len: u64,
    /// Length of the file (stream + signature frame).
    pub file_len: u64,
}

impl BundleFile {
    /// Hashes the file and splits off a trailing signature frame.
    pub fn open(path: &Path) -> Result<Self, BundleError> {
        let rerr = |source| BundleError::Read {
            path: path.to_owned(),
            source,
        };
        let mut f = File::open(path).map_err(rerr)?;
        let file_len = f.metadata().map_err(rerr)?.len();
        let mut signature = None;
        let mut stream_len = file_len;
        if file_len >= SIGNATURE_FRAME_LEN as u64 {
            let mut tail = [0u8; SIGNATURE_FRAME_LEN];
            f.seek(SeekFrom::Start(file_len - SIGNATURE_FRAME_LEN as u64))
                .map_err(rerr)?;
            f.read_exact(&mut tail).map_err(rerr)?;
            if let Some(parsed) = parse_signature_frame(&tail) {
                signature = Some(parsed.map_err(|source| BundleError::BadSignatureFrame {
                    path: path.to_owned(),
                    source,
                })?);
                stream_len -= SIGNATURE_FRAME_LEN as u64;
            }
            f.seek(SeekFrom::Start(0)).map_err(rerr)?;
        }
        let digest = ReleaseDigest::of_reader(f.take(stream_len)).map_err(rerr)?;
        Ok(Self {
            path: path.to_owned(),
            digest,
            signature,
            stream_len,
            file_len,
        })
    }

    /// A reader over the tar.zst stream (without the signature frame).
    pub fn stream(&self) -> Result<io::Take<File>, BundleError> {
        File::open(&self.path)
            .map(|f| f.take(self.stream_len))
            .map_err(|source| BundleError::Read {
                path: self.path.clone(),
                source,
            })
    }

    /// The tar archive inside, decompressed as it is read.
    pub fn archive(&self) -> Result<tar::Archive<ZstdReader>, BundleError> {
        let decoder =
            zstd::stream::read::Decoder::new(self.stream()?).map_err(|e| self.corrupt(e))?;
        Ok(tar::Archive::new(decoder))
    }

    /// What a read error inside the archive means: the bundle is corrupt.
    pub fn corrupt(&self, source: io::Error) -> BundleError {
        BundleError::Corrupt {
            path: self.path.clone(),
            source,
        }
    }
}

/// The decompressing reader [`BundleFile::archive`] reads the tar from.
pub type ZstdReader = zstd::stream::read::Decoder<'static, io::BufReader<io::Take<File>>>;

/// Signature state as `inspect` sees it (trust is `verify`'s business).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum SignatureStatus {
    Unsigned,
    /// The embedded signature verifies under the embedded key.
    Valid {
        key: String,
    },
    Invalid {
        key: String,
        reason: String,
    },
}

/// One entry as listed by `inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryInfo {
    pub path: String,
    pub kind: &'static str,
    pub size: u64,
    pub mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

/// What `lockstep release inspect` shows.
#[derive(Debug, Clone)]
pub struct BundleInfo {
    pub digest: ReleaseDigest,
    pub manifest: Manifest,
    pub signature: SignatureStatus,
    pub entries: Vec<EntryInfo>,
    pub bundle_bytes: u64,
    pub content_bytes: u64,
}

/// Lists a bundle without writing anything: digest, manifest, entries, signature status.
pub fn inspect(path: &Path) -> Result<BundleInfo, BundleError> {
    let bundle = BundleFile::open(path)?;
    let corrupt = |source| bundle.corrupt(source);
    let mut archive = bundle.archive()?;
    let mut entries = Vec::new();
    let mut manifest_text = None;
    let mut content_bytes = 0;
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw = entry.path_bytes().into_owned();
        let et = entry.header().entry_type();
        let size = entry.size();
        let mode = entry.header().mode().unwrap_or(0);
        let kind = entry_kind_name(et);
        let link_target = entry
            .link_name_bytes()
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let is_manifest = RelativePath::from_bytes(&raw)
            .map(|p| p.as_path() == Path::new(MANIFEST_FILE))
            .unwrap_or(false);
        if is_manifest && et.is_file() && size <= MAX_MANIFEST_BYTES {
            let mut text = String::new();
            entry.read_to_string(&mut text).map_err(corrupt)?;
            manifest_text = Some(text);
        }
        if et.is_file() {
            content_bytes += size;
        }
        entries.push(EntryInfo {
            path: String::from_utf8_lossy(&raw).into_owned(),
            kind,
            size,
            mode: format!("{mode:04o}"),
            link_target,
        });
    }
    let text = manifest_text.ok_or_else(|| BundleError::MissingManifest {
        path: path.to_owned(),
    })?;
    let manifest = Manifest::parse(&text).map_err(|source| BundleError::Manifest {
        path: path.to_owned(),
        source,
    })?;
    let signature = match &bundle.signature {
        None => SignatureStatus::Unsigned,
        Some(sig) => match sig.key.verify(&bundle.digest, &sig.signature) {
            Ok(()) => SignatureStatus::Valid {
                key: sig.key.to_string(),
            },
            Err(e) => SignatureStatus::Invalid {
                key: sig.key.to_string(),
                reason: e.to_string(),
            },
        },
    };
    Ok(BundleInfo {
        digest: bundle.digest,
        manifest,
        signature,
        entries,
        bundle_bytes: bundle.file_len,
        content_bytes,
    })
}

/// A short name for a tar entry type.
pub fn entry_kind_name(et: tar::EntryType) -> &'static str {
    match et {
        tar::EntryType::Regular | tar::EntryType::Continuous => "file",
        tar::EntryType::Directory => "dir",
        tar::EntryType::Symlink => "symlink",
        tar::EntryType::Link => "hardlink",
        tar::EntryType::Char => "char-device",
        tar::EntryType::Block => "block-device",
        tar::EntryType::Fifo => "fifo",
        _ => "other",
    }
}
