//! Every unpack refusal, each with a crafted tar: its own error, and
//! nothing left behind in the store or outside it.

use std::error::Error as _;

use release::signing::SigningError;
use release::store::StoreError;
use release::unpack::UnpackError;
use release::{ReleaseDigest, SecretKey, TrustedKeys, UnpackLimits};
use tar::EntryType;

use crate::helper::{
    MANIFEST, RawEntry, Sandbox, craft_bytes, craft_file, craft_zeros_file, with_valid_release,
};

/// Puts a crafted bundle and returns the unpack error.
fn refused(sb: &Sandbox, evil: Vec<RawEntry>) -> UnpackError {
    let path = craft_file(sb, "evil", &with_valid_release(evil));
    match sb.store.put(&path) {
        Err(StoreError::Unpack { source, .. }) => {
            sb.assert_nothing_left();
            source
        }
        other => panic!("expected an unpack error, got {other:?}"),
    }
}

#[test]
fn rejects_absolute_paths() {
    let sb = Sandbox::plain();
    let evil = format!("{}/outside/abs", sb.dir.path().display());
    let err = refused(&sb, vec![RawEntry::file(&evil, b"x")]);
    assert!(matches!(err, UnpackError::AbsolutePath { .. }), "{err:?}");
}

#[test]
fn rejects_parent_dir_components() {
    let sb = Sandbox::plain();
    let err = refused(&sb, vec![RawEntry::file("../../outside/x", b"x")]);
    assert!(matches!(err, UnpackError::ParentDir { .. }), "{err:?}");
    let err = refused(&sb, vec![RawEntry::file("a/../../x", b"x")]);
    assert!(matches!(err, UnpackError::ParentDir { .. }), "{err:?}");
}

#[test]
fn rejects_symlinks_pointing_outside() {
    let sb = Sandbox::plain();
    for target in ["/etc/passwd", "../outside", "bin/../../outside"] {
        let err = refused(&sb, vec![RawEntry::symlink("link", target)]);
        assert!(
            matches!(err, UnpackError::LinkEscapes { .. }),
            "{target}: {err:?}"
        );
    }
}

#[test]
fn rejects_symlink_escaping_through_another_symlink() {
    // `here` -> `.` is fine; `esc` -> `here/..` is the root on paper but the
    // root's parent on disk.
    let sb = Sandbox::plain();
    let err = refused(
        &sb,
        vec![
            RawEntry::symlink("here", "."),
            RawEntry::symlink("esc", "here/../outside"),
        ],
    );
    assert!(matches!(err, UnpackError::LinkEscapes { .. }), "{err:?}");
}

#[test]
fn rejects_writing_through_a_symlink() {
    let sb = Sandbox::plain();
    let err = refused(
        &sb,
        vec![
            RawEntry::dir("sub"),
            RawEntry::symlink("d", "sub"),
            RawEntry::file("d/x", b"x"),
        ],
    );
    assert!(
        matches!(err, UnpackError::ThroughNonDirectory { .. }),
        "{err:?}"
    );
}

#[test]
fn rejects_hard_links_outside_or_to_nothing() {
    let sb = Sandbox::plain();
    let err = refused(&sb, vec![RawEntry::hardlink("h", "/etc/passwd")]);
    assert!(matches!(err, UnpackError::LinkEscapes { .. }), "{err:?}");
    let err = refused(&sb, vec![RawEntry::hardlink("h", "../outside/x")]);
    assert!(matches!(err, UnpackError::LinkEscapes { .. }), "{err:?}");
    let err = refused(&sb, vec![RawEntry::hardlink("h", "not-yet")]);
    assert!(matches!(err, UnpackError::HardLinkTarget { .. }), "{err:?}");
    // A hard link to a symlink could reach outside: only regular files.
    let err = refused(
        &sb,
        vec![
            RawEntry::symlink("s", "release.toml"),
            RawEntry::hardlink("h", "s"),
        ],
    );
    assert!(matches!(err, UnpackError::HardLinkTarget { .. }), "{err:?}");
}

#[test]
fn accepts_hard_link_to_an_earlier_file() {
    let sb = Sandbox::plain();
    let path = craft_file(
        &sb,
        "ok",
        &with_valid_release(vec![RawEntry::hardlink("bin/same", "bin/app")]),
    );
    let d = sb.store.put(&path).unwrap();
    let r = sb.store.get(&d).unwrap().unwrap();
    assert_eq!(
        std::fs::read(r.path.join("bin/same")).unwrap(),
        b"#!/bin/sh\n"
    );
}

#[test]
fn rejects_devices_and_fifos() {
    let sb = Sandbox::plain();
    for kind in [EntryType::Char, EntryType::Block, EntryType::Fifo] {
        let err = refused(&sb, vec![RawEntry::special("dev", kind)]);
        assert!(
            matches!(err, UnpackError::DeviceOrFifo { .. }),
            "{kind:?}: {err:?}"
        );
    }
}

#[test]
fn rejects_entry_and_total_over_limits() {
    let limits = UnpackLimits {
        max_entry_bytes: 1000,
        max_total_bytes: 2500,
        max_entries: 10,
        ..UnpackLimits::default()
    };
    let sb = Sandbox::new(limits, TrustedKeys::none());
    let err = refused(&sb, vec![RawEntry::file("big", &[0; 1001])]);
    assert!(
        matches!(err, UnpackError::EntryTooLarge { size: 1001, .. }),
        "{err:?}"
    );
    let many: Vec<_> = (0..3)
        .map(|i| RawEntry::file(&format!("f{i}"), &[1; 1000]))
        .collect();
    let err = refused(&sb, many);
    assert!(matches!(err, UnpackError::TotalTooLarge { .. }), "{err:?}");
    let lots: Vec<_> = (0..10).map(|i| RawEntry::dir(&format!("d{i}"))).collect();
    let err = refused(&sb, lots);
    assert!(
        matches!(err, UnpackError::TooManyEntries { limit: 10 }),
        "{err:?}"
    );
}

#[test]
fn rejects_duplicates_missing_or_bad_manifest() {
    let sb = Sandbox::plain();
    let err = refused(&sb, vec![RawEntry::file("bin/app", b"again")]);
    assert!(matches!(err, UnpackError::Duplicate { .. }), "{err:?}");

    let path = craft_file(&sb, "nomanifest", &[RawEntry::file("bin/app", b"x")]);
    let err = sb.store.put(&path).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Unpack {
                source: UnpackError::MissingManifest,
                ..
            }
        ),
        "{err:?}"
    );
    let path = craft_file(
        &sb,
        "badmanifest",
        &[RawEntry::file("release.toml", b"[release]\n")],
    );
    let err = sb.store.put(&path).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Unpack {
                source: UnpackError::Manifest(_),
                ..
            }
        ),
        "{err:?}"
    );
    sb.assert_nothing_left();
}

#[test]
fn rejects_digest_mismatch_before_writing() {
    let sb = Sandbox::plain();
    let path = craft_file(&sb, "ok", &with_valid_release(vec![]));
    let wrong = ReleaseDigest::of_bytes(b"something else");
    let err = sb.store.put_expecting(&path, &wrong).unwrap_err();
    assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err:?}");
    sb.assert_nothing_left();
}

#[test]
fn rejects_corrupt_streams() {
    let sb = Sandbox::plain();
    let path = sb.path("garbage.lsr");
    std::fs::write(&path, b"this is not zstd at all").unwrap();
    let err = sb.store.put(&path).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Unpack {
                source: UnpackError::Corrupt(_),
                ..
            }
        ),
        "{err:?}"
    );
    // A flipped byte in the middle: zstd's checksum or the tar parser notices.
    let mut bytes = craft_bytes(&with_valid_release(vec![RawEntry::file("x", &[9; 5000])]));
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    assert!(sb.store.put(&path).is_err());
    sb.assert_nothing_left();
}

#[test]
fn signature_policy_with_trusted_keys() {
    let good = SecretKey::from_seed([3; 32]);
    let other = SecretKey::from_seed([4; 32]);
    let sb = Sandbox::new(
        UnpackLimits::default(),
        TrustedKeys::new(vec![good.public()]),
    );
    let bytes = craft_bytes(&with_valid_release(vec![]));
    let digest = ReleaseDigest::of_bytes(&bytes);

    let unsigned = sb.path("unsigned.lsr");
    std::fs::write(&unsigned, &bytes).unwrap();
    let err = sb.store.put(&unsigned).unwrap_err();
    assert!(
        matches!(err, StoreError::Signature(SigningError::Unsigned { .. })),
        "{err:?}"
    );

    let by_other = sb.path("other.lsr");
    std::fs::write(
        &by_other,
        [bytes.as_slice(), &other.signature_frame(&digest)].concat(),
    )
    .unwrap();
    let err = sb.store.put(&by_other).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Signature(SigningError::UntrustedKey { .. })
        ),
        "{err:?}"
    );

    let forged = sb.path("forged.lsr");
    let wrong = ReleaseDigest::of_bytes(b"another release");
    std::fs::write(
        &forged,
        [bytes.as_slice(), &good.signature_frame(&wrong)].concat(),
    )
    .unwrap();
    let err = sb.store.put(&forged).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Signature(SigningError::BadSignature { .. })
        ),
        "{err:?}"
    );
    sb.assert_nothing_left();

    let signed = sb.path("signed.lsr");
    std::fs::write(
        &signed,
        [bytes.as_slice(), &good.signature_frame(&digest)].concat(),
    )
    .unwrap();
    assert_eq!(sb.store.put(&signed).unwrap(), digest);
}

/// Reproduces #14 Seen 5: "a 328 KB bundle makes the coordinator write
/// 10.2 GB to its temp dir before refusing it". A bundle may unpack to at
/// most `max_expansion_ratio` times its own size (with a floor for small
/// releases): a few KB that claim 300 MiB are refused at the entry's
/// header, before anything of it is written.
#[test]
fn a_small_bundle_that_expands_far_past_its_size_is_refused_before_writing() {
    let sb = Sandbox::plain();
    let path = craft_zeros_file(&sb, "bomb", 300 << 20);
    let bundle_bytes = std::fs::metadata(&path).unwrap().len();
    assert!(bundle_bytes < 64 << 10, "the bomb is small: {bundle_bytes}");
    match sb.store.put(&path) {
        Err(StoreError::Unpack {
            source: UnpackError::ExpandsTooFar { path, limit, .. },
            ..
        }) => {
            assert_eq!(path, "bomb");
            assert_eq!(limit, release::unpack::EXPANSION_FLOOR_BYTES);
        }
        other => panic!("expected ExpandsTooFar, got {other:?}"),
    }
    sb.assert_nothing_left();

    // The same release with a modest file is fine: the floor is generous.
    let modest = craft_zeros_file(&sb, "modest", 1 << 20);
    sb.store.put(&modest).unwrap();
}

/// Reproduces #14 Seen 5: "a 16 KB bundle with a 512 MiB release.toml
/// makes verify, the agent and the coordinator read it whole". A manifest
/// over `MAX_MANIFEST_BYTES` is refused from its header, never read.
#[test]
fn a_manifest_over_its_size_limit_is_refused_without_reading_it() {
    let sb = Sandbox::plain();
    let mut huge = MANIFEST.as_bytes().to_vec();
    huge.extend(std::iter::repeat_n(b'#', 2 << 20));
    let path = craft_file(
        &sb,
        "hugemanifest",
        &[
            RawEntry::file("release.toml", &huge),
            RawEntry::file("bin/app", b"x"),
        ],
    );
    let err = sb.store.put(&path).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Unpack {
                source: UnpackError::ManifestTooLarge { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.source()
            .is_some_and(|s| s.to_string().contains("1048576")),
        "the error names the limit: {err:?}"
    );
    sb.assert_nothing_left();
}
