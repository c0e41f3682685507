//! `lockstep release ...`: the verbs on release bundles, one file each.
//!
//! Must never: reimplement bundle logic; everything goes through the
//! `release` crate.

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};

mod build;
mod inspect;
mod keygen;
mod verify;

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Build DIR (with release.toml at its root) into a bundle; prints the digest last.
    Build {
        /// The release directory.
        dir: PathBuf,
        /// Output file [default: SERVICE-VERSION.lsr in the current directory].
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Sign with this secret key file (from `lockstep release keygen`).
        #[arg(long, value_name = "KEYFILE")]
        sign: Option<PathBuf>,
    },
    /// Write a new ed25519 key pair: KEY (secret, mode 0600) and KEY.pub.
    Keygen {
        /// Path of the secret key file; the public key goes to KEY.pub.
        #[arg(short, long, value_name = "KEY", default_value = "release.key")]
        output: PathBuf,
    },
    /// Show a bundle's manifest, digest, files, sizes and signature status.
    Inspect {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Check a bundle completely (digest, signature, safe unpack); non-zero exit on any problem.
    Verify {
        file: PathBuf,
        /// Require a valid signature by this public key (repeat to trust several).
        #[arg(long, value_name = "PUBKEY")]
        key: Vec<PathBuf>,
        /// Require this digest (sha256:<hex>).
        #[arg(long)]
        digest: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

pub fn run(cmd: ReleaseCommand) -> anyhow::Result<()> {
    match cmd {
        ReleaseCommand::Build { dir, output, sign } => build::run(&dir, output, sign),
        ReleaseCommand::Keygen { output } => keygen::run(&output),
        ReleaseCommand::Inspect { file, output } => inspect::run(&file, output),
        ReleaseCommand::Verify { file, key, digest } => verify::run(&file, &key, digest),
    }
}
