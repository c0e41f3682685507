//! `lockstep release show NAME [--service S]`: one release's manifest and
//! files, as the coordinator's depot holds them (`ShowRelease`).
//!
//! Must never: change anything, or print a name from the bundle unescaped.

use proto::v1::{ReleaseContents, ShowReleaseRequest};

use super::diff::{file_json, printable, release_json};
use crate::client::{Coordinators, Failure};
use crate::{Output, print_json};

pub async fn run(
    c: &mut Coordinators,
    service: Option<String>,
    name: String,
    output: Output,
) -> Result<(), Failure> {
    let request = ShowReleaseRequest {
        service: service.unwrap_or_default(),
        name,
    };
    let shown = c
        .call(|mut client| {
            let request = request.clone();
            async move { client.show_release(request).await }
        })
        .await?;
    match output {
        Output::Json => print_json(&serde_json::json!({
            "release": release_json(shown.release.as_ref()),
            "manifest_toml": shown.manifest_toml,
            "files": shown.files.iter().map(file_json).collect::<Vec<_>>(),
            "files_truncated": shown.files_truncated,
        })),
        Output::Text => {
            print!("{}", text(&shown));
            Ok(())
        }
    }
}

fn text(shown: &ReleaseContents) -> String {
    let mut out = String::new();
    if let Some(r) = &shown.release {
        out.push_str(&format!("service:  {}\n", r.service));
        out.push_str(&format!("version:  {}\n", printable(&r.version)));
        out.push_str(&format!("digest:   {}\n", r.digest));
    }
    out.push_str(&format!("files:    {}\n", shown.files.len()));
    for f in &shown.files {
        let link = if f.link_target.is_empty() {
            String::new()
        } else {
            format!(" -> {}", printable(&f.link_target))
        };
        out.push_str(&format!(
            "  {:>12} {} {:<8} {}{link} {}\n",
            f.size,
            f.mode,
            f.kind,
            printable(&f.path),
            f.digest
        ));
    }
    if shown.files_truncated {
        out.push_str("  … more entries than the coordinator lists\n");
    }
    out.push_str("manifest (release.toml):\n");
    for line in shown.manifest_toml.lines() {
        out.push_str(&format!("  {}\n", printable(line)));
    }
    out
}
