//! `lockstep release ...`: the verbs on release bundles, one file each.
//! `build`, `keygen`, `inspect` and `verify` work offline; `push`, `list`,
//! `show` and `diff` talk to the coordinator.
//!
//! Must never: reimplement bundle logic; everything goes through the
//! `release` crate.

use std::path::PathBuf;

use clap::Subcommand;

use crate::Output;
use crate::client::{Coordinators, Failure};

mod build;
mod diff;
mod inspect;
mod keygen;
mod list;
mod push;
mod show;
mod verify;

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Build DIR (with release.toml at its root) into a bundle; prints the digest last.
    Build {
        /// The release directory.
        dir: PathBuf,
        /// Output file [default: SERVICE-VERSION.lsr in the current directory].
        // `--output` is the global text|json switch, hence `--out`.
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: Option<PathBuf>,
        /// Sign with this secret key file (from `lockstep release keygen`).
        #[arg(long, value_name = "KEYFILE")]
        sign: Option<PathBuf>,
    },
    /// Write a new ed25519 key pair: KEY (secret, mode 0600) and KEY.pub.
    Keygen {
        /// Path of the secret key file; the public key goes to KEY.pub.
        #[arg(
            short = 'o',
            long = "out",
            value_name = "KEY",
            default_value = "release.key"
        )]
        out: PathBuf,
    },
    /// Show a bundle's manifest, digest, files, sizes and signature status.
    Inspect { file: PathBuf },
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
    /// Upload a bundle to the coordinator's depot; prints the digest last.
    Push {
        /// A bundle built by `lockstep release build`.
        file: PathBuf,
    },
    /// The releases in the coordinator's depot.
    List {
        /// Only this service's releases.
        #[arg(long)]
        service: Option<String>,
    },
    /// One release in the coordinator's depot: manifest, files with sizes and digests.
    Show {
        /// A version, a full digest or a unique digest prefix (4+ hex digits).
        name: String,
        /// The service whose releases NAME is looked up among [default: every service].
        #[arg(long)]
        service: Option<String>,
    },
    /// What changed from release FROM to release TO: files and the configuration (unified diff).
    Diff {
        /// A version, a full digest or a unique digest prefix (4+ hex digits).
        from: String,
        /// Named the same way.
        to: String,
        /// The service whose releases the names are looked up among [default: every service].
        #[arg(long)]
        service: Option<String>,
    },
}

pub async fn run(c: &mut Coordinators, cmd: ReleaseCommand, output: Output) -> Result<(), Failure> {
    let offline = |r: anyhow::Result<()>| r.map_err(|e| Failure::Local(cli::chain(e.as_ref())));
    match cmd {
        ReleaseCommand::Build { dir, out, sign } => offline(build::run(&dir, out, sign, output)),
        ReleaseCommand::Keygen { out } => offline(keygen::run(&out, output)),
        ReleaseCommand::Inspect { file } => offline(inspect::run(&file, output)),
        ReleaseCommand::Verify { file, key, digest } => {
            offline(verify::run(&file, &key, digest, output))
        }
        ReleaseCommand::Push { file } => push::run(c, &file, output).await,
        ReleaseCommand::List { service } => list::run(c, service, output).await,
        ReleaseCommand::Show { name, service } => show::run(c, service, name, output).await,
        ReleaseCommand::Diff { from, to, service } => diff::run(c, service, from, to, output).await,
    }
}
