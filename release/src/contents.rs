//! What a bundle holds, file by file: each entry with its size, mode and
//! `sha256:` digest, and the text of its small UTF-8 files (the manifest
//! and the configuration a release carries). `lockstep release show` and
//! `release diff` are built on it.
//!
//! ```text
//! app.lsr --zstd--> tar entries --sha256 each file--> [FileContent]
//!                               --small UTF-8 files--> text (bounded)
//! ```
//!
//! Must never: write anything, hold more than `MAX_TEXT_TOTAL_BYTES` of
//! text or list more than `MAX_LISTED_FILES` entries, or trust a path in
//! the archive (names are only reported, never opened).

use std::io::{self, Read};
use std::path::Path;

use serde::Serialize;

use crate::bundle::{BundleError, BundleFile, entry_kind_name};
use crate::digest::{HashingWriter, ReleaseDigest};
use crate::manifest::{MANIFEST_FILE, MAX_MANIFEST_BYTES, Manifest};

/// A file this size or smaller, valid UTF-8, is kept as text: configs
/// are a few KiB; anything bigger is data, compared by digest alone.
pub const MAX_TEXT_FILE_BYTES: u64 = 64 * 1024;
/// Text kept across one bundle: bounds what one `release diff` holds in
/// memory whatever the bundle, at sixteen full-size text files.
pub const MAX_TEXT_TOTAL_BYTES: u64 = 16 * MAX_TEXT_FILE_BYTES;
/// Entries listed per bundle; past it the listing says it is cut. Far
/// above any real release (`UnpackLimits` allows more, but a listing of
/// that many is not something an operator reads).
pub const MAX_LISTED_FILES: usize = 10_000;

/// One entry of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileContent {
    pub path: String,
    pub kind: &'static str,
    pub size: u64,
    /// Octal, as `ls` shows it (`0644`).
    pub mode: String,
    /// `sha256:<hex>` of a regular file's bytes; empty for other kinds.
    pub digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    /// The file's text when it is small, UTF-8 and within the bundle's
    /// text budget.
    #[serde(skip)]
    pub text: Option<String>,
}

/// A bundle's manifest and entries.
#[derive(Debug, Clone)]
pub struct BundleContents {
    pub digest: ReleaseDigest,
    pub manifest: Manifest,
    pub files: Vec<FileContent>,
    /// More than `MAX_LISTED_FILES` entries: the rest are not listed.
    pub files_truncated: bool,
}

/// Reads every entry of the bundle at `path`, hashing each file.
pub fn contents(path: &Path) -> Result<BundleContents, BundleError> {
    let bundle = BundleFile::open(path)?;
    let corrupt = |source| bundle.corrupt(source);
    let mut archive = bundle.archive()?;
    let mut files = Vec::new();
    let mut files_truncated = false;
    let mut text_budget = MAX_TEXT_TOTAL_BYTES;
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        if files.len() == MAX_LISTED_FILES {
            files_truncated = true;
            break;
        }
        let et = entry.header().entry_type();
        let size = entry.size();
        let mut file = FileContent {
            path: String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
            kind: entry_kind_name(et),
            size,
            mode: format!("{:04o}", entry.header().mode().unwrap_or(0)),
            digest: String::new(),
            link_target: entry
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned()),
            text: None,
        };
        if et.is_file() {
            let keep = size <= MAX_TEXT_FILE_BYTES && size <= text_budget
                || file.path == MANIFEST_FILE && size <= MAX_MANIFEST_BYTES;
            let (digest, bytes) = hash_entry(&mut entry, keep).map_err(corrupt)?;
            file.digest = digest.to_string();
            file.text = bytes.and_then(|b| String::from_utf8(b).ok());
            if let Some(text) = &file.text {
                text_budget = text_budget.saturating_sub(text.len() as u64);
            }
        }
        files.push(file);
    }
    let text = files
        .iter()
        .find(|f| f.path == MANIFEST_FILE)
        .and_then(|f| f.text.as_deref())
        .ok_or_else(|| BundleError::MissingManifest {
            path: path.to_owned(),
        })?;
    let manifest = Manifest::parse(text).map_err(|source| BundleError::Manifest {
        path: path.to_owned(),
        source,
    })?;
    Ok(BundleContents {
        digest: bundle.digest,
        manifest,
        files,
        files_truncated,
    })
}

/// The entry's digest, and its bytes when `keep`.
fn hash_entry(entry: &mut impl Read, keep: bool) -> io::Result<(ReleaseDigest, Option<Vec<u8>>)> {
    let mut writer = HashingWriter::new(Vec::new());
    if keep {
        io::copy(entry, &mut writer)?;
        let (digest, _, bytes) = writer.finish();
        Ok((digest, Some(bytes)))
    } else {
        let mut sink = HashingWriter::new(io::sink());
        io::copy(entry, &mut sink)?;
        let (digest, _, _) = sink.finish();
        Ok((digest, None))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MANIFEST: &str = r#"[release]
service = "web"
version = "1.0.0"

[run]
command = ["bin/app"]

[readiness]
exec = ["bin/app"]
"#;

    fn bundle(dir: &Path, extra: &[(&str, &[u8])]) -> std::path::PathBuf {
        let tree = dir.join("tree");
        std::fs::create_dir_all(tree.join("bin")).unwrap();
        std::fs::write(tree.join(MANIFEST_FILE), MANIFEST).unwrap();
        std::fs::write(tree.join("bin/app"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            tree.join("bin/app"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        for (name, bytes) in extra {
            std::fs::write(tree.join(name), bytes).unwrap();
        }
        let out = dir.join("app.lsr");
        crate::bundle::build_file(&tree, &out, None).unwrap();
        out
    }

    #[test]
    fn every_file_has_its_digest_and_small_text_files_their_text() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![b'x'; usize::try_from(MAX_TEXT_FILE_BYTES).unwrap() + 1];
        let path = bundle(
            dir.path(),
            &[
                ("config.toml", b"port = 8080\n"),
                ("blob.bin", &[0xff, 0xfe, 0x00]),
                ("big.txt", &big),
            ],
        );
        let read = contents(&path).unwrap();
        assert_eq!(read.manifest.version().as_str(), "1.0.0");
        assert!(!read.files_truncated);
        let file = |name: &str| read.files.iter().find(|f| f.path == name).unwrap();
        let config = file("config.toml");
        assert_eq!(config.text.as_deref(), Some("port = 8080\n"));
        assert_eq!(
            config.digest,
            ReleaseDigest::of_bytes(b"port = 8080\n").to_string()
        );
        assert_eq!(config.size, 12);
        assert_eq!(file("blob.bin").text, None, "not UTF-8");
        assert_eq!(file("big.txt").text, None, "over MAX_TEXT_FILE_BYTES");
        assert_eq!(
            file("big.txt").digest,
            ReleaseDigest::of_bytes(&big).to_string()
        );
        assert_eq!(file("bin").kind, "dir");
        assert!(file("bin").digest.is_empty());
        assert_eq!(file(MANIFEST_FILE).text.as_deref(), Some(MANIFEST));
    }
}
