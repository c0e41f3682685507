//! Deterministic build: same tree, same bytes, anywhere.

use std::fs;
use std::time::{Duration, SystemTime};

use release::bundle::{self, BuildError};
use release::{ManifestError, SecretKey};

use crate::helper::release_tree;

#[test]
fn same_tree_gives_same_bytes_twice() {
    let dir = tempfile::tempdir().unwrap();
    release_tree(&dir.path().join("app"), "1.0.0");
    let a = dir.path().join("a.lsr");
    let b = dir.path().join("b.lsr");
    let da = bundle::build_file(&dir.path().join("app"), &a, None).unwrap();
    let db = bundle::build_file(&dir.path().join("app"), &b, None).unwrap();
    assert_eq!(da.digest, db.digest);
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
}

#[test]
fn mtimes_creation_order_and_permissions_do_not_leak_into_the_digest() {
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    release_tree(one.path(), "1.0.0");
    // Same content, created in another order, other mtimes, other non-exec modes.
    fs::create_dir_all(two.path().join("config/nested")).unwrap();
    fs::write(two.path().join("config/nested/data.bin"), vec![7u8; 10_000]).unwrap();
    fs::write(two.path().join("config/app.toml"), "version = \"1.0.0\"\n").unwrap();
    fs::create_dir_all(two.path().join("bin")).unwrap();
    std::os::unix::fs::symlink("../config/app.toml", two.path().join("bin/app.toml")).unwrap();
    fs::copy(one.path().join("bin/app"), two.path().join("bin/app")).unwrap();
    fs::copy(
        one.path().join("release.toml"),
        two.path().join("release.toml"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        two.path().join("config/app.toml"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    fs::File::options()
        .write(true)
        .open(two.path().join("config/app.toml"))
        .unwrap()
        .set_modified(old)
        .unwrap();

    let a = bundle::build(one.path(), Vec::new(), None).unwrap();
    let b = bundle::build(two.path(), Vec::new(), None).unwrap();
    assert_eq!(a.digest, b.digest);
}

#[test]
fn signing_does_not_change_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    release_tree(dir.path(), "1.0.0");
    let key = SecretKey::from_seed([1; 32]);
    let mut signed = Vec::new();
    let mut plain = Vec::new();
    let s = bundle::build(dir.path(), &mut signed, Some(&key)).unwrap();
    let p = bundle::build(dir.path(), &mut plain, None).unwrap();
    assert_eq!(s.digest, p.digest);
    assert_eq!(&signed[..plain.len()], plain.as_slice());
    assert_eq!(
        signed.len(),
        plain.len() + release::signing::SIGNATURE_FRAME_LEN
    );
    // Plain zstd still decodes a signed bundle (the frame is skippable).
    let decoded = zstd::decode_all(signed.as_slice()).unwrap();
    assert_eq!(decoded, zstd::decode_all(plain.as_slice()).unwrap());
}

#[test]
fn build_refuses_a_tree_without_a_valid_manifest() {
    let dir = tempfile::tempdir().unwrap();
    release_tree(dir.path(), "1.0.0");
    fs::write(dir.path().join("release.toml"), "[release]\nservice = 1\n").unwrap();
    let err = bundle::build(dir.path(), Vec::new(), None).unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::Manifest(ManifestError::Syntax { line: 2, .. })
        ),
        "{err:?}"
    );
    fs::remove_file(dir.path().join("release.toml")).unwrap();
    let err = bundle::build(dir.path(), Vec::new(), None).unwrap_err();
    assert!(matches!(err, BuildError::MissingManifest { .. }), "{err:?}");
}

#[test]
fn build_refuses_links_leaving_the_tree_and_missing_programs() {
    let dir = tempfile::tempdir().unwrap();
    release_tree(dir.path(), "1.0.0");
    std::os::unix::fs::symlink("../../etc/passwd", dir.path().join("config/evil")).unwrap();
    let err = bundle::build(dir.path(), Vec::new(), None).unwrap_err();
    assert!(matches!(err, BuildError::LinkEscapes { .. }), "{err:?}");
    fs::remove_file(dir.path().join("config/evil")).unwrap();

    fs::remove_file(dir.path().join("bin/app")).unwrap();
    let err = bundle::build(dir.path(), Vec::new(), None).unwrap_err();
    assert!(matches!(err, BuildError::ProgramMissing { .. }), "{err:?}");
}

#[test]
fn build_file_leaves_no_partial_output_on_error() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("app")).unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    let err = bundle::build_file(&dir.path().join("app"), &out.join("x.lsr"), None).unwrap_err();
    assert!(matches!(err, BuildError::MissingManifest { .. }));
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0);
}
