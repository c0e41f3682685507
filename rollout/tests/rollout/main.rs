//! The crate's one integration-test binary: engine steps (openraft style:
//! set up, step, compare actions), plan validation and properties, strategy
//! parsing, and the 10,000-seed simulation.

// Fixtures are test code too: a panic there is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engine;
mod helper;
mod plan;
mod sim;
mod strategy;
