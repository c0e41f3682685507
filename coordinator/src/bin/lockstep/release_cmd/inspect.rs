//! `lockstep release inspect FILE [--output json]`: reads, never writes.

use std::path::Path;

use anyhow::Context;
use release::bundle::{self, SignatureStatus};

use crate::Output;

pub fn run(file: &Path, format: Output) -> anyhow::Result<()> {
    let info =
        bundle::inspect(file).with_context(|| format!("cannot inspect {}", file.display()))?;
    match format {
        Output::Json => {
            let doc = serde_json::json!({
                "digest": info.digest,
                "bundle_bytes": info.bundle_bytes,
                "content_bytes": info.content_bytes,
                "signature": info.signature,
                "manifest": info.manifest.document(),
                "entries": info.entries,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Text => {
            let m = &info.manifest;
            println!("service:   {}", m.service());
            println!("version:   {}", m.version());
            println!("digest:    {}", info.digest);
            let sig = match &info.signature {
                SignatureStatus::Unsigned => "unsigned".to_owned(),
                SignatureStatus::Valid { key } => format!("valid, by {key}"),
                SignatureStatus::Invalid { key, reason } => {
                    format!("INVALID, claims {key}: {reason}")
                }
            };
            println!("signature: {sig}");
            println!(
                "size:      {} bytes bundle, {} bytes content, {} entries",
                info.bundle_bytes,
                info.content_bytes,
                info.entries.len()
            );
            println!(
                "command:   {}",
                printable(&m.run().command.argv().join(" "))
            );
            println!("files:");
            for e in &info.entries {
                let path = printable(&e.path);
                match &e.link_target {
                    Some(t) => println!(
                        "  {:>12} {} {:<8} {path} -> {}",
                        e.size,
                        e.mode,
                        e.kind,
                        printable(t)
                    ),
                    None => println!("  {:>12} {} {:<8} {path}", e.size, e.mode, e.kind),
                }
            }
        }
    }
    Ok(())
}

/// A name from the bundle as it may reach a terminal: control characters
/// (an escape sequence could rewrite the operator's screen) are escaped.
fn printable(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
