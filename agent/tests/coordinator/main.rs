//! The agent against an in-process `CoordinatorService`: release fetches
//! (whole, resumed, corrupt, missing) and the report stream (registration,
//! snapshots, reconnects).

// Helpers are test code too: a panic there is the failure report (as
// clippy.toml allows inside #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helper;

mod fetch;
mod uplink;
