//! Properties, run briefly inside the test suite (64 cases each).

use std::path::Path;

use proptest::prelude::*;
use release::Manifest;

use crate::helper::{RawEntry, Sandbox, craft_file, with_valid_release};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn ident() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,10}"
}

fn duration() -> impl Strategy<Value = String> {
    (1u64..5000, prop_oneof!["ms", "s", "m"]).prop_map(|(n, u)| format!("{n}{u}"))
}

fn manifest_text() -> impl Strategy<Value = String> {
    (
        ident(),
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
        proptest::collection::vec("[a-zA-Z0-9=_./-]{0,12}", 0..4),
        1u32..8,
        prop_oneof!["always", "on-failure", "never"],
        prop_oneof!["SIGTERM", "SIGINT", "SIGQUIT", "HUP"],
        duration(),
        0usize..3,
        0usize..4,
        (duration(), duration()),
    )
        .prop_map(
            |(service, version, args, instances, restart, signal, stop, listens, probe, (interval, timeout))| {
                let args: String = args.iter().map(|a| format!(", {a:?}")).collect();
                let mut t = format!(
                    "[release]\nservice = \"{service}\"\nversion = \"{version}\"\n\n[run]\ncommand = [\"bin/{service}\"{args}]\ninstances = {instances}\nrestart = \"{restart}\"\nstop_signal = \"{signal}\"\nstop_timeout = \"{stop}\"\n"
                );
                for i in 0..listens {
                    t.push_str(&format!(
                        "\n[[listen]]\nname = \"l{i}\"\naddress = \"127.0.0.1:{}\"\n",
                        8000 + i
                    ));
                }
                let probe = match probe {
                    0 => "http = \"http://127.0.0.1:8000/ready\"".to_owned(),
                    1 => "tcp = \"[::1]:8000\"".to_owned(),
                    2 => "exec = [\"bin/check\", \"--quick\"]".to_owned(),
                    _ => "notify = true".to_owned(),
                };
                t.push_str(&format!(
                    "\n[readiness]\n{probe}\ninterval = \"{interval}\"\ntimeout = \"{timeout}\"\nhealthy_deadline = \"100h\"\n"
                ));
                t
            },
        )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn manifest_parse_never_panics_on_arbitrary_text(s in "\\PC{0,400}") {
        let _ = Manifest::parse(&s);
    }

    #[test]
    fn manifest_parse_never_panics_on_near_valid_text(
        text in manifest_text(),
        cut in 0usize..2000,
        junk in "[\\[\\]=\"a-z0-9 \n.]{0,20}",
    ) {
        let mut t = text.clone();
        let at = t.char_indices().map(|(i, _)| i).nth(cut % t.len().max(1)).unwrap_or(0);
        t.insert_str(at, &junk);
        let _ = Manifest::parse(&t);
    }

    #[test]
    fn valid_generated_manifests_round_trip(text in manifest_text()) {
        let m = Manifest::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let again = Manifest::parse(&m.to_toml())
            .map_err(|e| TestCaseError::fail(format!("{e}\n{}", m.to_toml())))?;
        prop_assert_eq!(again, m);
    }

    #[test]
    fn unpack_never_escapes_the_root(entries in proptest::collection::vec(entry(), 0..8)) {
        let sb = Sandbox::plain();
        let path = craft_file(&sb, "prop", &with_valid_release(entries));
        match sb.store.put(&path) {
            Ok(d) => {
                let root = sb.store.root().join(d.hex());
                assert_links_inside(&root, &root);
                sb.assert_outside_untouched();
            }
            Err(_) => sb.assert_nothing_left(),
        }
    }
}

fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just("".to_owned()),
        Just("outside".to_owned()),
    ]
}

fn rel_path() -> impl Strategy<Value = String> {
    (any::<bool>(), proptest::collection::vec(component(), 1..4))
        .prop_map(|(abs, parts)| format!("{}{}", if abs { "/" } else { "" }, parts.join("/")))
}

fn entry() -> impl Strategy<Value = RawEntry> {
    use tar::EntryType as T;
    (
        rel_path(),
        prop_oneof![
            Just(T::Regular),
            Just(T::Directory),
            Just(T::Symlink),
            Just(T::Link),
            Just(T::Fifo),
            Just(T::Char),
        ],
        rel_path(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(name, kind, link, data)| RawEntry {
            name: name.into_bytes(),
            kind,
            data: if kind == T::Regular { data } else { Vec::new() },
            link: link.into_bytes(),
            mode: 0o644,
        })
}

/// Every symlink under `dir` resolves (on disk) to a path inside `root`.
fn assert_links_inside(root: &Path, dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.file_type().is_symlink() {
            if let Ok(real) = std::fs::canonicalize(&p) {
                let root = std::fs::canonicalize(root).unwrap();
                assert!(
                    real.starts_with(&root),
                    "{} -> {}",
                    p.display(),
                    real.display()
                );
            }
        } else if meta.is_dir() {
            assert_links_inside(root, &p);
        }
    }
}

/// Issue #14 deliver 9: bytes from anywhere (a truncated download, a hostile
/// push) are refused with an error, and a refused bundle leaves nothing in
/// the store or beside it.
mod hostile_bytes {
    use std::io::Write;

    use proptest::prelude::*;
    use release::{StoreError, UnpackError, UnpackLimits};

    use super::config;
    use crate::helper::{MANIFEST, RawEntry, Sandbox, craft_bytes, with_valid_release};

    fn put_bytes(sb: &Sandbox, bytes: &[u8]) -> Result<release::ReleaseDigest, StoreError> {
        let path = sb.path("hostile.lsr");
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(bytes))
            .unwrap();
        let _ = release::bundle::inspect(&path);
        sb.store.put(&path)
    }

    /// A file of `sizes` bytes each, named f0, f1, ...
    fn files(sizes: &[usize]) -> Vec<RawEntry> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, n)| RawEntry::file(&format!("f{i}"), &vec![b'x'; *n]))
            .collect()
    }

    fn is_limit(e: &UnpackError) -> bool {
        matches!(
            e,
            UnpackError::EntryTooLarge { .. }
                | UnpackError::TotalTooLarge { .. }
                | UnpackError::TooManyEntries { .. }
                | UnpackError::DecompressedTooLarge { .. }
                | UnpackError::ManifestTooLarge { .. }
        )
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn random_bytes_are_refused_and_leave_nothing(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let sb = Sandbox::plain();
            prop_assert!(put_bytes(&sb, &bytes).is_err());
            sb.assert_nothing_left();
        }

        /// Valid zstd framing around garbage: the tar reader, not the
        /// decompressor, must refuse it.
        #[test]
        fn a_compressed_random_stream_is_refused_and_leaves_nothing(
            bytes in proptest::collection::vec(any::<u8>(), 0..8192),
        ) {
            let sb = Sandbox::plain();
            let zst = zstd::encode_all(bytes.as_slice(), 1).unwrap();
            prop_assert!(put_bytes(&sb, &zst).is_err());
            sb.assert_nothing_left();
        }

        /// A valid bundle with one byte changed or its tail cut off: either
        /// refused cleanly or stored under the digest of what was received.
        #[test]
        fn a_damaged_bundle_is_refused_or_stored_as_received(
            sizes in proptest::collection::vec(0usize..3000, 0..4),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            truncate in any::<bool>(),
        ) {
            let sb = Sandbox::plain();
            let mut bytes = craft_bytes(&with_valid_release(files(&sizes)));
            let i = at.index(bytes.len());
            if truncate { bytes.truncate(i) } else { bytes[i] ^= flip }
            match put_bytes(&sb, &bytes) {
                Ok(d) => prop_assert_eq!(d, release::ReleaseDigest::of_bytes(&bytes)),
                Err(_) => sb.assert_nothing_left(),
            }
        }

        /// A signed bundle with any one byte changed (payload, frame, key or
        /// signature) fails verification against its key, and a store
        /// trusting that key refuses it and keeps nothing.
        #[test]
        fn a_signed_bundle_with_any_byte_changed_is_refused(
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let key = release::SecretKey::from_seed([7; 32]);
            let trusted = release::TrustedKeys::new(vec![key.public()]);
            let mut bytes = craft_bytes(&with_valid_release(Vec::new()));
            let digest = release::ReleaseDigest::of_bytes(&bytes);
            bytes.extend_from_slice(&key.signature_frame(&digest));
            let i = at.index(bytes.len());
            bytes[i] ^= flip;
            let sb = Sandbox::new(UnpackLimits::default(), trusted.clone());
            let path = sb.path("signed.lsr");
            std::fs::write(&path, &bytes).unwrap();
            prop_assert!(release::verify_bundle(&path, None, &trusted, &UnpackLimits::default()).is_err());
            prop_assert!(put_bytes(&sb, &bytes).is_err());
            sb.assert_nothing_left();
        }

        /// Random tar streams of files against random small limits: stored
        /// exactly when every limit holds, otherwise refused with an error
        /// naming a limit, and nothing left behind.
        #[test]
        fn unpack_enforces_every_size_limit(
            sizes in proptest::collection::vec(0usize..400, 0..6),
            max_entry_bytes in 1u64..500,
            max_total_bytes in 1u64..2000,
            max_entries in 1u64..9,
        ) {
            let limits = UnpackLimits {
                max_entry_bytes,
                max_total_bytes,
                max_entries,
                ..UnpackLimits::default()
            };
            let sb = Sandbox::new(limits, release::TrustedKeys::none());
            let entries = with_valid_release(files(&sizes));
            let lens: Vec<u64> = entries.iter().map(|e| e.data.len() as u64).collect();
            let fits = lens.iter().all(|n| *n <= max_entry_bytes)
                && lens.iter().sum::<u64>() <= max_total_bytes
                && entries.len() as u64 <= max_entries;
            let bytes = craft_bytes(&entries);
            match put_bytes(&sb, &bytes) {
                Ok(_) => prop_assert!(fits, "stored although a limit is exceeded: {lens:?} {limits:?}"),
                Err(StoreError::Unpack { source, .. }) if is_limit(&source) => {
                    prop_assert!(!fits, "refused within the limits: {source} ({lens:?} {limits:?})");
                    sb.assert_nothing_left();
                }
                Err(e) => prop_assert!(false, "not a limit error: {e:?} (manifest {} bytes)", MANIFEST.len()),
            }
        }
    }
}
