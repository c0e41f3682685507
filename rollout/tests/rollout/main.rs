//! The crate's one integration-test binary: engine steps (openraft style:
//! set up, step, compare actions), health watching and bake, plan validation and properties, strategy
//! parsing, and the 10,000-seed simulation.

// Fixtures are test code too: a panic there is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod analysis;
mod engine;
mod health;
mod helper;
mod plan;
mod sim;
mod strategy;
mod waits;
