//! Immutable releases: one content-addressed bundle of code + config + run
//! spec.
//!
//! Owns the `release.toml` manifest schema, the deterministic bundle format
//! (tar + zstd), the `sha256:` digest, ed25519 signatures, safe unpacking and
//! the local content-addressed store.
//!
//! Must never: do async work or network IO (callers wrap it in
//! `spawn_blocking`), or leave a half-unpacked release where the store can
//! see it.
