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
            println!("command:   {}", m.run().command.argv().join(" "));
            println!("files:");
            for e in &info.entries {
                match &e.link_target {
                    Some(t) => println!(
                        "  {:>12} {} {:<8} {} -> {t}",
                        e.size, e.mode, e.kind, e.path
                    ),
                    None => println!("  {:>12} {} {:<8} {}", e.size, e.mode, e.kind, e.path),
                }
            }
        }
    }
    Ok(())
}
