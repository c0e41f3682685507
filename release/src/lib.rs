//! Immutable releases: one content-addressed bundle of code + config + run
//! spec.
//!
//! Owns the `release.toml` manifest schema, the deterministic bundle format
//! (tar + zstd), the `sha256:` digest, ed25519 signatures, safe unpacking and
//! the local content-addressed store.
//!
//! ```text
//! DIR (release.toml + code + config)
//!   --bundle::build_file--> app.lsr   digest = sha256(tar.zst stream)
//!   --Store::put-->         STORE/<hex>/  (verified, unpacked, read-only)
//! ```
//!
//! **Where the signature lives.** A signed bundle is the unsigned bundle
//! followed by one 112-byte zstd *skippable frame* (magic `0x184D2A5E`,
//! tag `LSTPSIG1`, the signer's ed25519 public key, the signature). The
//! digest covers only the bytes before that frame and the signature covers
//! the digest, so a release's identity is the same signed or unsigned, one
//! file carries everything, and `zstd -d` / `tar --zstd -xf` still read it.
//! See [`signing`] for the exact layout.
//!
//! Must never: do async work or network IO (callers wrap it in
//! `spawn_blocking`), or leave a half-unpacked release where the store can
//! see it.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod contents;
pub mod digest;
pub mod manifest;
pub mod paths;
pub mod signing;
pub mod store;
pub mod unpack;

pub use bundle::{
    BuildError, BuildOutput, BundleError, BundleFile, BundleInfo, build, build_file, inspect,
};
pub use digest::{DigestError, ReleaseDigest};
pub use manifest::{
    Command, Listen, Manifest, ManifestError, Overlap, ProbeTiming, Readiness, ReadinessSpec,
    RestartPolicy, RunSpec, ServiceName, Version,
};
pub use paths::RelativePath;
pub use signing::{PublicKey, SecretKey, SigningError, TrustedKeys};
pub use store::{Store, StoreError, StoredRelease, Verified, verify_bundle};
pub use unpack::{UnpackError, UnpackLimits};
