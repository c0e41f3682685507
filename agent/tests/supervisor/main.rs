//! Integration tests of `agent::supervisor` with real processes: the demo
//! app, `sleep`, `sh`, supervised through the real exec shim
//! (`lockstep-agent __exec-shim`).

// Helpers are test code too: a panic there is the failure report (as
// clippy.toml allows inside #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helper;

mod lifecycle;
mod logs;
mod sockets;
mod spawning;
