//! Free loopback ports for fixtures.

use std::net::TcpListener;

use crate::HarnessError;

/// A port that was free a moment ago. Another process may take it before the
/// fixture binds it; fixtures retry their start on a fresh port when that
/// happens.
pub fn free_loopback_port() -> Result<u16, HarnessError> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(HarnessError::Port)?;
    let port = listener.local_addr().map_err(HarnessError::Port)?.port();
    Ok(port)
}
