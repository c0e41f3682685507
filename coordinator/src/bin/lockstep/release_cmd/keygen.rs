//! `lockstep release keygen [-o KEY]`: writes KEY (secret, 0600) and KEY.pub.
//! Both are one line of text: `lockstep-ed25519-secret-v1 <64 hex>` and
//! `lockstep-ed25519-public-v1 <64 hex>`.
//!
//! Must never: print the secret key.

use std::path::Path;

use anyhow::Context;
use release::SecretKey;

use crate::Output;

pub fn run(output: &Path, format: Output) -> anyhow::Result<()> {
    let key = SecretKey::generate().context("cannot generate a key")?;
    let pub_path = key.write_pair(output)?;
    if format == Output::Json {
        let doc = serde_json::json!({
            "secret_key_file": output.display().to_string(),
            "public_key_file": pub_path.display().to_string(),
            "public_key": key.public().to_string(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("secret key: {} (keep it private)", output.display());
    println!(
        "public key: {} (give it to agents as a trusted key)",
        pub_path.display()
    );
    println!("{}", key.public());
    Ok(())
}
