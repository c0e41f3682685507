//! Fixtures: release trees on disk and hand-crafted (malicious) bundles.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use release::{Store, TrustedKeys, UnpackLimits};

pub const MANIFEST: &str = r#"[release]
service = "demo"
version = "1.0.0"

[run]
command = ["bin/app", "--config", "config/app.toml"]

[[listen]]
name = "http"
address = "127.0.0.1:8080"

[readiness]
http = "http://127.0.0.1:8080/healthz"
"#;

/// A valid release tree: manifest, an executable, config, a symlink inside.
pub fn release_tree(dir: &Path, version: &str) {
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join("config/nested")).unwrap();
    fs::write(dir.join("release.toml"), MANIFEST.replace("1.0.0", version)).unwrap();
    fs::write(dir.join("bin/app"), b"#!/bin/sh\nexec sleep 1000\n").unwrap();
    fs::set_permissions(dir.join("bin/app"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(
        dir.join("config/app.toml"),
        format!("version = \"{version}\"\n"),
    )
    .unwrap();
    fs::write(dir.join("config/nested/data.bin"), vec![7u8; 10_000]).unwrap();
    std::os::unix::fs::symlink("../config/app.toml", dir.join("bin/app.toml")).unwrap();
}

/// A store in its own sandbox directory; `outside` is a sibling that no
/// bundle may ever write into.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub store: Store,
}

impl Sandbox {
    pub fn new(limits: UnpackLimits, trusted: TrustedKeys) -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("outside")).unwrap();
        let store = Store::open(dir.path().join("store"), limits, trusted).unwrap();
        Self { dir, store }
    }

    pub fn plain() -> Self {
        Self::new(UnpackLimits::default(), TrustedKeys::none())
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Nothing in the store (no release, no temp dir) and nothing outside it.
    pub fn assert_nothing_left(&self) {
        let store: Vec<_> = fs::read_dir(self.store.root())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(store.is_empty(), "store not empty: {store:?}");
        self.assert_outside_untouched();
    }

    pub fn assert_outside_untouched(&self) {
        let outside: Vec<_> = fs::read_dir(self.path("outside"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(outside.is_empty(), "escaped into outside: {outside:?}");
        let top: Vec<_> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "outside" && n != "store" && !n.ends_with(".lsr"))
            .collect();
        assert!(top.is_empty(), "escaped into sandbox: {top:?}");
    }
}

/// One raw tar entry; names and link targets are written byte for byte.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub name: Vec<u8>,
    pub kind: tar::EntryType,
    pub data: Vec<u8>,
    pub link: Vec<u8>,
    pub mode: u32,
}

impl RawEntry {
    pub fn file(name: &str, data: &[u8]) -> Self {
        Self {
            name: name.as_bytes().to_vec(),
            kind: tar::EntryType::Regular,
            data: data.to_vec(),
            link: Vec::new(),
            mode: 0o644,
        }
    }
    pub fn dir(name: &str) -> Self {
        Self {
            kind: tar::EntryType::Directory,
            mode: 0o755,
            ..Self::file(name, b"")
        }
    }
    pub fn symlink(name: &str, target: &str) -> Self {
        Self {
            kind: tar::EntryType::Symlink,
            link: target.as_bytes().to_vec(),
            ..Self::file(name, b"")
        }
    }
    pub fn hardlink(name: &str, target: &str) -> Self {
        Self {
            kind: tar::EntryType::Link,
            link: target.as_bytes().to_vec(),
            ..Self::file(name, b"")
        }
    }
    pub fn special(name: &str, kind: tar::EntryType) -> Self {
        Self {
            kind,
            ..Self::file(name, b"")
        }
    }
}

/// A tar.zst stream of `entries` exactly as given (header API, raw names).
pub fn craft_bytes(entries: &[RawEntry]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        {
            let old = h.as_old_mut();
            let n = e.name.len().min(100);
            old.name[..n].copy_from_slice(&e.name[..n]);
            let l = e.link.len().min(100);
            old.linkname[..l].copy_from_slice(&e.link[..l]);
        }
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_size(e.data.len() as u64);
        h.set_mtime(0);
        h.set_cksum();
        tar.append(&h, e.data.as_slice()).unwrap();
    }
    let raw = tar.into_inner().unwrap();
    zstd::encode_all(raw.as_slice(), 3).unwrap()
}

/// A valid manifest and program, then `evil`: so a refusal is the evil entry's.
pub fn with_valid_release(evil: Vec<RawEntry>) -> Vec<RawEntry> {
    let mut entries = vec![
        RawEntry::file("release.toml", MANIFEST.as_bytes()),
        RawEntry {
            mode: 0o755,
            ..RawEntry::file("bin/app", b"#!/bin/sh\n")
        },
    ];
    entries.extend(evil);
    entries
}

/// Writes a crafted bundle into the sandbox and returns its path.
pub fn craft_file(sb: &Sandbox, name: &str, entries: &[RawEntry]) -> PathBuf {
    let path = sb.path(&format!("{name}.lsr"));
    let mut f = fs::File::create(&path).unwrap();
    f.write_all(&craft_bytes(entries)).unwrap();
    path
}

/// A bundle of the valid manifest and program plus one file `name` of
/// `size` zero bytes, streamed (never held in memory): a few KB on disk
/// that expand to `size`.
pub fn craft_zeros_file(sb: &Sandbox, name: &str, size: u64) -> PathBuf {
    let path = sb.path(&format!("{name}.lsr"));
    let out = fs::File::create(&path).unwrap();
    let encoder = zstd::stream::write::Encoder::new(out, 3).unwrap();
    let mut tar = tar::Builder::new(encoder);
    for e in with_valid_release(Vec::new()) {
        let mut h = tar::Header::new_gnu();
        h.set_path(String::from_utf8(e.name).unwrap()).unwrap();
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_size(e.data.len() as u64);
        h.set_cksum();
        tar.append(&h, e.data.as_slice()).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_cksum();
    tar.append(&h, std::io::repeat(0).take(size)).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    path
}
