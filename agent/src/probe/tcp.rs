//! The `tcp` readiness probe: a TCP connect to the manifest's address succeeds.
//!
//! Owns one connect attempt; the connection is closed at once, nothing is
//! sent. Must never: retry or wait on its own (the caller bounds and repeats
//! attempts).

use std::fmt;
use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::ProbeFailure;

/// Connects to `addr`; a completed connect means ready.
#[derive(Debug, Clone)]
pub struct TcpProbe {
    addr: SocketAddr,
}

impl TcpProbe {
    pub fn new(addr: SocketAddr) -> TcpProbe {
        TcpProbe { addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// One connect attempt (unbounded: the caller applies the timeout).
    pub async fn check(&self) -> Result<(), ProbeFailure> {
        match TcpStream::connect(self.addr).await {
            Ok(stream) => {
                drop(stream);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                Err(ProbeFailure::TcpRefused { addr: self.addr })
            }
            Err(e) => Err(ProbeFailure::Tcp {
                addr: self.addr,
                detail: e.to_string(),
            }),
        }
    }
}

impl fmt::Display for TcpProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tcp connect {}", self.addr)
    }
}
