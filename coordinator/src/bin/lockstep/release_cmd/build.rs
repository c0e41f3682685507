//! `lockstep release build DIR [-o FILE] [--sign KEYFILE]`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use release::manifest::{MANIFEST_FILE, Manifest};
use release::{SecretKey, bundle};

pub fn run(dir: &Path, output: Option<PathBuf>, sign: Option<PathBuf>) -> anyhow::Result<()> {
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
