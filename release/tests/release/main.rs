//! Integration tests of the `release` crate: deterministic build, every
//! unpack refusal with a crafted tar, store round trip and GC, properties.

// Test code: a panic is the failure report (as clippy.toml allows inside #[test]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod build;
mod helper;
mod props;
mod store;
mod unpack;
