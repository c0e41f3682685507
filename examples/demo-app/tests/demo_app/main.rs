//! Integration tests: the real `demo-app` binary, started in temp dirs on
//! loopback ports. See `helper` for the fixtures.

// A panic is a test's failure report. clippy.toml's allow-*-in-tests only
// covers `#[test]` fns and `#[cfg(test)]` modules, not the helper functions
// of an integration-test crate, so allow it for this whole test crate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod endpoints;
mod faults;
mod helper;
mod lifecycle;
mod startup;
