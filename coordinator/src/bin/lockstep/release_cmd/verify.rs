//! `lockstep release verify FILE [--key PUBKEY]... [--digest D]`: a full
//! check (digest, signature, every unpack safety rule) into a scratch
//! directory that is removed afterwards.
//!
//! Must never: leave the scratch directory behind or accept a bundle the
//! agent would refuse.

use std::path::{Path, PathBuf};

use anyhow::Context;
use release::{ReleaseDigest, TrustedKeys, UnpackLimits, verify_bundle};

use crate::Output;

pub fn run(
    file: &Path,
    keys: &[PathBuf],
    digest: Option<String>,
    format: Output,
) -> anyhow::Result<()> {
    let trusted = TrustedKeys::load(keys).context("cannot load --key")?;
    let expected = digest
        .map(|d| d.parse::<ReleaseDigest>())
        .transpose()
        .context("bad --digest")?;
    let v = verify_bundle(file, expected.as_ref(), &trusted, &UnpackLimits::default())
        .with_context(|| format!("{} failed verification", file.display()))?;
    if format == Output::Json {
        let doc = serde_json::json!({
            "ok": true,
            "service": v.manifest.service().to_string(),
            "version": v.manifest.version().to_string(),
            "signed_by": v.signed_by.as_ref().map(ToString::to_string),
            "entries": v.entries,
            "content_bytes": v.content_bytes,
            "digest": v.digest.to_string(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let sig = match v.signed_by {
        Some(k) => format!("signed by {k}"),
        None => "unsigned".to_owned(),
    };
    println!(
        "ok: {} {} ({sig}, {} entries, {} bytes)",
        v.manifest.service(),
        v.manifest.version(),
        v.entries,
        v.content_bytes
    );
    println!("{}", v.digest);
    Ok(())
}
