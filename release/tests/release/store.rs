//! Store: round trip, read-only result, idempotent and concurrent puts, GC.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use release::bundle;
use release::{ReleaseDigest, Store, TrustedKeys, UnpackLimits, verify_bundle};

use crate::helper::{Sandbox, release_tree};

fn built(sb: &Sandbox, version: &str) -> (std::path::PathBuf, ReleaseDigest) {
    let src = sb.path(&format!("src-{version}"));
    release_tree(&src, version);
    let out = sb.path(&format!("app-{version}.lsr"));
    let b = bundle::build_file(&src, &out, None).unwrap();
    fs::remove_dir_all(&src).unwrap();
    (out, b.digest)
}

#[test]
fn round_trip_gives_back_the_tree_read_only() {
    let sb = Sandbox::plain();
    let (bundle, digest) = built(&sb, "1.0.0");
    assert_eq!(sb.store.put(&bundle).unwrap(), digest);
    let r = sb.store.get(&digest).unwrap().unwrap();
    assert_eq!(r.path, sb.store.root().join(digest.hex()));
    assert_eq!(r.manifest.version().as_str(), "1.0.0");
    assert_eq!(
        fs::read(r.path.join("config/nested/data.bin")).unwrap(),
        vec![7u8; 10_000]
    );
    assert_eq!(
        fs::read_link(r.path.join("bin/app.toml")).unwrap(),
        std::path::Path::new("../config/app.toml")
    );
    let mode = |p: &str| {
        fs::symlink_metadata(r.path.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("bin/app"), 0o555);
    assert_eq!(mode("config/app.toml"), 0o444);
    assert_eq!(mode("config"), 0o555);
    assert_eq!(mode(""), 0o555);
    // Putting it again is a no-op with the same answer.
    assert_eq!(sb.store.put(&bundle).unwrap(), digest);
    assert_eq!(sb.store.list().unwrap().len(), 1);
    // verify_bundle agrees and leaves nothing behind.
    let v = verify_bundle(
        &bundle,
        Some(&digest),
        &TrustedKeys::none(),
        &UnpackLimits::default(),
    )
    .unwrap();
    assert_eq!(v.digest, digest);
}

#[test]
fn put_reader_spools_and_checks_the_digest() {
    let sb = Sandbox::plain();
    let (bundle, digest) = built(&sb, "1.0.0");
    let bytes = fs::read(&bundle).unwrap();
    assert_eq!(
        sb.store
            .put_reader(bytes.as_slice(), Some(&digest))
            .unwrap(),
        digest
    );
    let names: Vec<_> = fs::read_dir(sb.store.root())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from(digest.hex())]);
}

#[test]
fn concurrent_puts_of_the_same_release_are_safe() {
    let sb = Sandbox::plain();
    let (bundle, digest) = built(&sb, "1.0.0");
    let store = Arc::new(sb.store.clone());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = Arc::clone(&store);
            let bundle = bundle.clone();
            std::thread::spawn(move || store.put(&bundle).unwrap())
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), digest);
    }
    let names: Vec<_> = fs::read_dir(store.root())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from(digest.hex())],
        "no temp dirs left"
    );
}

#[test]
fn gc_keeps_the_newest_and_never_removes_pinned() {
    let sb = Sandbox::plain();
    let mut digests = Vec::new();
    for v in ["1.0.0", "1.1.0", "1.2.0", "1.3.0"] {
        let (bundle, d) = built(&sb, v);
        sb.store.put(&bundle).unwrap();
        digests.push(d);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let listed: Vec<_> = sb
        .store
        .list()
        .unwrap()
        .into_iter()
        .map(|r| r.digest)
        .collect();
    let newest_first: Vec<_> = digests.iter().rev().copied().collect();
    assert_eq!(listed, newest_first);

    // keep 1 (1.3.0) + pinned oldest (1.0.0): 1.1.0 and 1.2.0 go.
    let removed = sb.store.gc(1, &[digests[0]]).unwrap();
    assert_eq!(removed.len(), 2);
    assert!(removed.contains(&digests[1]) && removed.contains(&digests[2]));
    assert!(sb.store.contains(&digests[0]) && sb.store.contains(&digests[3]));

    // keep 0: only the pinned one survives.
    let removed = sb.store.gc(0, &[digests[0]]).unwrap();
    assert_eq!(removed, vec![digests[3]]);
    assert!(sb.store.contains(&digests[0]));
    assert_eq!(sb.store.list().unwrap().len(), 1);
    // No trash left behind.
    assert_eq!(fs::read_dir(sb.store.root()).unwrap().count(), 1);
}

#[test]
fn reopening_a_store_sees_its_releases() {
    let sb = Sandbox::plain();
    let (bundle, digest) = built(&sb, "2.0.0");
    sb.store.put(&bundle).unwrap();
    let again = Store::open(
        sb.store.root(),
        UnpackLimits::default(),
        TrustedKeys::none(),
    )
    .unwrap();
    assert_eq!(
        again
            .get(&digest)
            .unwrap()
            .unwrap()
            .manifest
            .version()
            .as_str(),
        "2.0.0"
    );
    assert!(
        again
            .get(&ReleaseDigest::of_bytes(b"absent"))
            .unwrap()
            .is_none()
    );
}
