//! `lockstep release diff FROM TO [--service S]`: what changed from one
//! release to another: version, digest, files added, removed and changed
//! (sizes, digests), and the configuration as a unified diff. The
//! coordinator compares (`DiffReleases`, `release_diff.rs`), the same
//! comparison the web view shows; this only prints it.
//!
//! Must never: change anything, or print text from a bundle unescaped.

use proto::v1::{DiffReleasesRequest, FileChangeKind, ReleaseDiff, ReleaseFile, ReleaseRef};

use crate::client::{Coordinators, Failure};
use crate::{Output, print_json};

pub async fn run(
    c: &mut Coordinators,
    service: Option<String>,
    from: String,
    to: String,
    output: Output,
) -> Result<(), Failure> {
    let request = DiffReleasesRequest {
        service: service.unwrap_or_default(),
        from,
        to,
    };
    let diff = c
        .call(|mut client| {
            let request = request.clone();
            async move { client.diff_releases(request).await }
        })
        .await?;
    match output {
        Output::Json => print_json(&serde_json::json!({
            "from": release_json(diff.from.as_ref()),
            "to": release_json(diff.to.as_ref()),
            "files": diff.files.iter().map(|f| serde_json::json!({
                "path": f.path,
                "change": change_name(f.change),
                "before": f.before.as_ref().map(file_json),
                "after": f.after.as_ref().map(file_json),
            })).collect::<Vec<_>>(),
            "unchanged_files": diff.unchanged_files,
            "files_truncated": diff.files_truncated,
            "config_diff": diff.config_diff,
            "config_truncated": diff.config_truncated,
        })),
        Output::Text => {
            print!("{}", text(&diff));
            Ok(())
        }
    }
}

fn change_name(change: i32) -> &'static str {
    match FileChangeKind::try_from(change) {
        Ok(FileChangeKind::Added) => "added",
        Ok(FileChangeKind::Removed) => "removed",
        Ok(FileChangeKind::Changed) => "changed",
        _ => "unknown",
    }
}

pub(super) fn release_json(r: Option<&ReleaseRef>) -> serde_json::Value {
    r.map_or(
        serde_json::Value::Null,
        |r| serde_json::json!({ "service": r.service, "version": r.version, "digest": r.digest }),
    )
}

pub(super) fn file_json(f: &ReleaseFile) -> serde_json::Value {
    serde_json::json!({
        "path": f.path, "kind": f.kind, "size": f.size, "mode": f.mode,
        "digest": f.digest, "link_target": f.link_target,
    })
}

fn name(r: Option<&ReleaseRef>) -> String {
    r.map_or_else(
        || "?".to_owned(),
        |r| format!("{} {} ({})", r.service, printable(&r.version), r.digest),
    )
}

fn text(diff: &ReleaseDiff) -> String {
    let mut out = format!(
        "from: {}\nto:   {}\n",
        name(diff.from.as_ref()),
        name(diff.to.as_ref())
    );
    let count = |kind: FileChangeKind| {
        diff.files
            .iter()
            .filter(|f| f.change == i32::from(kind))
            .count()
    };
    out.push_str(&format!(
        "files: {} added, {} removed, {} changed, {} unchanged{}\n",
        count(FileChangeKind::Added),
        count(FileChangeKind::Removed),
        count(FileChangeKind::Changed),
        diff.unchanged_files,
        if diff.files_truncated {
            " (list cut: more changes than the coordinator lists)"
        } else {
            ""
        }
    ));
    for f in &diff.files {
        let side = |s: Option<&ReleaseFile>| {
            s.map_or_else(
                || "-".to_owned(),
                |s| format!("{} {} bytes {}", s.mode, s.size, or_kind(s)),
            )
        };
        let (mark, what) = match FileChangeKind::try_from(f.change) {
            Ok(FileChangeKind::Added) => ('+', side(f.after.as_ref())),
            Ok(FileChangeKind::Removed) => ('-', side(f.before.as_ref())),
            _ => (
                '~',
                format!("{} -> {}", side(f.before.as_ref()), side(f.after.as_ref())),
            ),
        };
        out.push_str(&format!(
            "  {mark} {:<8} {}  {what}\n",
            change_name(f.change),
            printable(&f.path)
        ));
    }
    if diff.config_diff.is_empty() {
        out.push_str("configuration: no text file differs\n");
    } else {
        out.push_str("configuration:\n");
        for line in diff.config_diff.lines() {
            out.push_str(&printable(line));
            out.push('\n');
        }
    }
    out
}

/// A file's digest, or its kind when it has none (a directory, a link).
fn or_kind(f: &ReleaseFile) -> String {
    if f.digest.is_empty() {
        f.kind.clone()
    } else {
        f.digest.clone()
    }
}

/// Text from a bundle as it may reach a terminal: control characters (an
/// escape sequence could rewrite the operator's screen) are escaped.
pub(super) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
