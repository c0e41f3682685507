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
