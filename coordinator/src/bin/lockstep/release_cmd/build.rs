//! `lockstep release build DIR [-o FILE] [--sign KEYFILE]`: writes the
//! bundle, prints the digest last.
//!
//! Must never: write a partial bundle where FILE is (the `release` crate
//! builds it aside and renames).

use std::path::{Path, PathBuf};

use anyhow::Context;
use release::manifest::{MANIFEST_FILE, Manifest};
use release::{SecretKey, bundle};

use crate::Output;

pub fn run(
    dir: &Path,
    output: Option<PathBuf>,
    sign: Option<PathBuf>,
    format: Output,
) -> anyhow::Result<()> {
    let key = sign
        .map(|p| {
            SecretKey::load(&p).with_context(|| format!("cannot use signing key {}", p.display()))
        })
        .transpose()?;
    let output = match output {
        Some(o) => o,
        None => {
            let m = Manifest::load(&dir.join(MANIFEST_FILE))
                .with_context(|| format!("cannot build {}", dir.display()))?;
            PathBuf::from(format!(
                "{}-{}.{}",
                m.service(),
                m.version(),
                bundle::BUNDLE_EXTENSION
            ))
        }
    };
    let out = bundle::build_file(dir, &output, key.as_ref())
        .with_context(|| format!("cannot build {}", dir.display()))?;
    if format == Output::Json {
        let doc = serde_json::json!({
            "service": out.manifest.service().to_string(),
            "version": out.manifest.version().to_string(),
            "file": output.display().to_string(),
            "entries": out.entries,
            "content_bytes": out.content_bytes,
            "bundle_bytes": out.bundle_bytes,
            "signed_by": out.signed_by.as_ref().map(ToString::to_string),
            "digest": out.digest.to_string(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "built {} {}: {} entries, {} bytes of content, {} bytes bundle",
        out.manifest.service(),
        out.manifest.version(),
        out.entries,
        out.content_bytes,
        out.bundle_bytes
    );
    match out.signed_by {
        Some(k) => println!("wrote {} (signed by {k})", output.display()),
        None => println!("wrote {} (unsigned)", output.display()),
    }
    println!("{}", out.digest);
    Ok(())
}
