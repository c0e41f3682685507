//! What changed from one release to another, decided once for every face
//! that shows it: `lockstep release diff` (through `DiffReleases`) and the
//! web view's diff panel print what [`diff`] returns. Pure: the bundles
//! are read by `release_read.rs`; this only compares.
//!
//! ```text
//! BundleContents (from) ─┐
//!                        ├─ by path ─► added / removed / changed files (size, digest)
//! BundleContents (to) ───┘          └► text files that differ ─► one unified diff, cut at MAX_DIFF_BYTES
//! ```
//!
//! Must never: return more than `MAX_DIFF_BYTES` of diff text or
//! `MAX_FILE_CHANGES` file changes without saying it cut them, or compare
//! a file as text that either side could not keep as text.

use std::collections::BTreeMap;
use std::time::Instant;

use release::contents::{BundleContents, FileContent, MAX_TEXT_FILE_BYTES};
use serde::Serialize;

/// The unified diff's length cap: a config change an operator reads is a
/// few KiB; past this the page and the terminal would only scroll.
pub const MAX_DIFF_BYTES: usize = 128 * 1024;
/// File changes listed; the count of the rest is still exact.
pub const MAX_FILE_CHANGES: usize = 1000;
/// Unchanged lines shown around each change, as `diff -u` does.
pub const CONTEXT_LINES: usize = 3;
/// The last line of a cut diff; the page and the CLI show it as is.
pub const TRUNCATED_MARK: &str = "… truncated: the diff is longer than 128 KiB; compare the bundles with `lockstep release inspect`";

/// Which release: what every face prints in its header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseName {
    pub service: String,
    pub version: String,
    pub digest: String,
}

impl ReleaseName {
    pub fn of(contents: &BundleContents) -> Self {
        Self {
            service: contents.manifest.service().to_string(),
            version: contents.manifest.version().to_string(),
            digest: contents.digest.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Removed,
    Changed,
}

/// One path whose entry differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileChange {
    pub path: String,
    pub change: Change,
    pub before: Option<FileContent>,
    pub after: Option<FileContent>,
}

/// Everything that changed from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseDiff {
    pub from: ReleaseName,
    pub to: ReleaseName,
    pub files: Vec<FileChange>,
    pub unchanged_files: usize,
    /// More changes than `MAX_FILE_CHANGES`, or a bundle with more entries
    /// than were listed.
    pub files_truncated: bool,
    /// The text files that differ, as one unified diff (`--- a/PATH`,
    /// `+++ b/PATH`, hunks); empty when none differs.
    pub config_diff: String,
    pub config_truncated: bool,
}

/// Compares two bundles. `deadline` bounds the line diff (an adversarial
/// pair of files falls back to a coarser, still correct, diff then).
pub fn diff(from: &BundleContents, to: &BundleContents, deadline: Instant) -> ReleaseDiff {
    let mut paths: BTreeMap<&str, (Option<&FileContent>, Option<&FileContent>)> = BTreeMap::new();
    for f in &from.files {
        paths.entry(&f.path).or_default().0 = Some(f);
    }
    for f in &to.files {
        paths.entry(&f.path).or_default().1 = Some(f);
    }
    let mut out = ReleaseDiff {
        from: ReleaseName::of(from),
        to: ReleaseName::of(to),
        files: Vec::new(),
        unchanged_files: 0,
        files_truncated: from.files_truncated || to.files_truncated,
        config_diff: String::new(),
        config_truncated: false,
    };
    let mut text = DiffText::default();
    for (path, (before, after)) in paths {
        let change = match (before, after) {
            (None, Some(_)) => Change::Added,
            (Some(_), None) => Change::Removed,
            (Some(b), Some(a)) if same_entry(b, a) => {
                out.unchanged_files += 1;
                continue;
            }
            (Some(_), Some(_)) => Change::Changed,
            (None, None) => continue,
        };
        text.file(path, before, after, deadline);
        if out.files.len() == MAX_FILE_CHANGES {
            out.files_truncated = true;
            continue;
        }
        out.files.push(FileChange {
            path: path.to_owned(),
            change,
            before: before.cloned(),
            after: after.cloned(),
        });
    }
    out.config_truncated = text.truncated;
    out.config_diff = text.out;
    out
}

fn same_entry(a: &FileContent, b: &FileContent) -> bool {
    a.kind == b.kind
        && a.size == b.size
        && a.mode == b.mode
        && a.digest == b.digest
        && a.link_target == b.link_target
}

/// A side's text: empty when the file is absent, none when it was not
/// kept as text.
fn text_of(file: Option<&FileContent>) -> Option<&str> {
    match file {
        None => Some(""),
        Some(f) => f.text.as_deref(),
    }
}

/// The unified diff being written, cut at `MAX_DIFF_BYTES`.
#[derive(Debug, Default)]
struct DiffText {
    out: String,
    truncated: bool,
}

impl DiffText {
    /// Adds the text diff of one changed path, or a line saying why its
    /// content is not compared as text.
    fn file(
        &mut self,
        path: &str,
        before: Option<&FileContent>,
        after: Option<&FileContent>,
        deadline: Instant,
    ) {
        let is_file = |f: Option<&FileContent>| f.is_none_or(|f| f.kind == "file");
        if !is_file(before) || !is_file(after) {
            return;
        }
        if before.zip(after).is_some_and(|(b, a)| b.digest == a.digest) {
            // Only the mode changed: the file list says so.
            return;
        }
        let (Some(old), Some(new)) = (text_of(before), text_of(after)) else {
            self.push(&format!(
                "Files a/{path} and b/{path} differ (not text, or over {} KiB: compared by digest)\n",
                MAX_TEXT_FILE_BYTES / 1024
            ));
            return;
        };
        let left = if before.is_some() {
            format!("a/{path}")
        } else {
            "/dev/null".to_owned()
        };
        let right = if after.is_some() {
            format!("b/{path}")
        } else {
            "/dev/null".to_owned()
        };
        let lines = similar::TextDiff::configure()
            .deadline(deadline)
            .diff_lines(old, new);
        let unified = lines
            .unified_diff()
            .context_radius(CONTEXT_LINES)
            .header(&left, &right)
            .to_string();
        self.push(&unified);
    }

    /// Appends whole lines while they fit; the first that does not ends
    /// the text with `TRUNCATED_MARK`.
    fn push(&mut self, text: &str) {
        if self.truncated {
            return;
        }
        for line in text.split_inclusive('\n') {
            if self.out.len() + line.len() > MAX_DIFF_BYTES {
                self.out.push_str(TRUNCATED_MARK);
                self.out.push('\n');
                self.truncated = true;
                return;
            }
            self.out.push_str(line);
        }
        if !self.out.ends_with('\n') {
            self.out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    fn manifest(version: &str) -> String {
        format!(
            "[release]\nservice = \"web\"\nversion = \"{version}\"\n\n[run]\ncommand = [\"bin/app\"]\n\n[readiness]\nexec = [\"bin/app\"]\n"
        )
    }

    fn file(path: &str, bytes: &[u8]) -> FileContent {
        FileContent {
            path: path.to_owned(),
            kind: "file",
            size: bytes.len() as u64,
            mode: "0644".to_owned(),
            digest: release::ReleaseDigest::of_bytes(bytes).to_string(),
            link_target: None,
            text: String::from_utf8(bytes.to_vec()).ok(),
        }
    }

    fn bundle(version: &str, fill: char, files: Vec<FileContent>) -> BundleContents {
        let text = manifest(version);
        let mut all = vec![file("release.toml", text.as_bytes())];
        all.extend(files);
        BundleContents {
            digest: format!("sha256:{}", fill.to_string().repeat(64))
                .parse()
                .unwrap(),
            manifest: release::Manifest::parse(&text).unwrap(),
            files: all,
            files_truncated: false,
        }
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn a_config_change_is_a_changed_file_and_a_unified_diff() {
        let old = bundle(
            "1.0.0",
            'a',
            vec![
                file("config.toml", b"port = 80\ngreeting = \"hello\"\n"),
                file("bin/app", b"#!/bin/sh\n"),
                file("gone.txt", b"bye\n"),
            ],
        );
        let new = bundle(
            "2.0.0",
            'b',
            vec![
                file("config.toml", b"port = 80\ngreeting = \"howdy\"\n"),
                file("bin/app", b"#!/bin/sh\n"),
                file("new.txt", b"hi\n"),
            ],
        );
        let d = diff(&old, &new, soon());
        assert_eq!(d.from.version, "1.0.0");
        assert_eq!(d.to.digest, format!("sha256:{}", "b".repeat(64)));
        let changes: Vec<(&str, Change)> = d
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.change))
            .collect();
        assert_eq!(
            changes,
            [
                ("config.toml", Change::Changed),
                ("gone.txt", Change::Removed),
                ("new.txt", Change::Added),
                ("release.toml", Change::Changed),
            ]
        );
        assert_eq!(d.unchanged_files, 1);
        assert!(d.config_diff.contains(
            "--- a/config.toml\n+++ b/config.toml\n@@ -1,2 +1,2 @@\n port = 80\n-greeting = \"hello\"\n+greeting = \"howdy\"\n"
        ), "{}", d.config_diff);
        assert!(
            d.config_diff.contains("--- a/gone.txt\n+++ /dev/null\n"),
            "{}",
            d.config_diff
        );
        assert!(
            d.config_diff.contains("--- /dev/null\n+++ b/new.txt\n"),
            "{}",
            d.config_diff
        );
        assert!(
            d.config_diff
                .contains("-version = \"1.0.0\"\n+version = \"2.0.0\"\n")
        );
        assert!(!d.config_truncated && !d.files_truncated);
    }

    #[test]
    fn identical_releases_differ_in_nothing() {
        let a = bundle("1.0.0", 'a', vec![file("config.toml", b"x = 1\n")]);
        let d = diff(&a, &a, soon());
        assert!(d.files.is_empty());
        assert_eq!(d.unchanged_files, 2);
        assert_eq!(d.config_diff, "");
    }

    #[test]
    fn a_binary_change_is_named_not_printed() {
        let mut blob = file("data.bin", &[0xff, 0x00]);
        let old = bundle("1.0.0", 'a', vec![blob.clone()]);
        blob.digest = release::ReleaseDigest::of_bytes(&[0xfe]).to_string();
        let new = bundle("1.0.0", 'b', vec![blob]);
        let d = diff(&old, &new, soon());
        assert_eq!(d.files.len(), 1);
        assert!(
            d.config_diff
                .contains("Files a/data.bin and b/data.bin differ (not text"),
            "{}",
            d.config_diff
        );
    }

    #[test]
    fn a_long_diff_is_cut_at_the_cap_with_a_mark() {
        let big = |c: char| {
            let line = format!("{}\n", c.to_string().repeat(99));
            line.repeat(600)
        };
        let mut files_a = Vec::new();
        let mut files_b = Vec::new();
        for i in 0..4 {
            files_a.push(file(&format!("c{i}.toml"), big('a').as_bytes()));
            files_b.push(file(&format!("c{i}.toml"), big('b').as_bytes()));
        }
        let d = diff(
            &bundle("1.0.0", 'a', files_a),
            &bundle("1.0.0", 'b', files_b),
            soon(),
        );
        assert!(d.config_truncated);
        assert!(d.config_diff.len() <= MAX_DIFF_BYTES + TRUNCATED_MARK.len() + 1);
        assert!(d.config_diff.ends_with(&format!("{TRUNCATED_MARK}\n")));
        assert_eq!(d.files.len(), 4, "the file list is complete");
    }

    #[test]
    fn past_the_file_cap_changes_are_counted_as_cut() {
        let files = |fill: &[u8]| {
            (0..MAX_FILE_CHANGES + 5)
                .map(|i| file(&format!("f{i:05}"), fill))
                .collect::<Vec<_>>()
        };
        let d = diff(
            &bundle("1.0.0", 'a', files(&[0xff])),
            &bundle("1.0.0", 'b', files(&[0xfe])),
            soon(),
        );
        assert_eq!(d.files.len(), MAX_FILE_CHANGES);
        assert!(d.files_truncated);
    }
}
