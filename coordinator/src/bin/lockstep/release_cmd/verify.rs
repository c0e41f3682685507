//! `lockstep release verify FILE [--key PUBKEY]... [--digest D]`: a full
//! check (digest, signature, every unpack safety rule) into a scratch
//! directory that is removed afterwards.

use std::path::{Path, PathBuf};

use anyhow::Context;
use release::{ReleaseDigest, TrustedKeys, UnpackLimits, verify_bundle};

pub fn run(file: &Path, keys: &[PathBuf], digest: Option<String>) -> anyhow::Result<()> {
    let trusted = TrustedKeys::load(keys).context("cannot load --key")?;
    let expected = digest
        .map(|d| d.parse::<ReleaseDigest>())
        .transpose()
        .context("bad --digest")?;
    let v = verify_bundle(file, expected.as_ref(), &trusted, &UnpackLimits::default())
        .with_context(|| format!("{} failed verification", file.display()))?;
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
