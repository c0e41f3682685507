//! `lockstep release keygen [-o KEY]`: writes KEY (secret, 0600) and KEY.pub.
//! Both are one line of text: `lockstep-ed25519-secret-v1 <64 hex>` and
//! `lockstep-ed25519-public-v1 <64 hex>`.

use std::path::Path;

use anyhow::Context;
use release::SecretKey;

pub fn run(output: &Path) -> anyhow::Result<()> {
    let key = SecretKey::generate().context("cannot generate a key")?;
    let pub_path = key.write_pair(output)?;
    println!("secret key: {} (keep it private)", output.display());
    println!(
        "public key: {} (give it to agents as a trusted key)",
        pub_path.display()
    );
    println!("{}", key.public());
    Ok(())
}
