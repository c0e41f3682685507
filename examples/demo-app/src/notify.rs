//! sd_notify: tells the supervisor (systemd or the Lockstep agent) our state.
//!
//! Owns: the NOTIFY_SOCKET address (an absolute path, or `@name` for the
//! Linux abstract namespace) and the datagrams sent to it: `READY=1`,
//! `STOPPING=1`, `STATUS=...`.
//!
//! Must never: fail the app. A supervisor that is gone or a socket that
//! refuses a datagram is logged by the caller and otherwise ignored.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET={value:?} is neither an absolute path nor an @abstract name")]
    BadAddress { value: String },
    #[error("NOTIFY_SOCKET={value:?} is not a usable socket address")]
    Address {
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot create a datagram socket for NOTIFY_SOCKET")]
    Socket {
        #[source]
        source: io::Error,
    },
}

/// Sends notifications; does nothing when NOTIFY_SOCKET was not set.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

/// Parses a NOTIFY_SOCKET value.
pub fn parse_address(value: &str) -> Result<SocketAddr, NotifyError> {
    let addr = if let Some(name) = value.strip_prefix('@') {
        SocketAddr::from_abstract_name(name.as_bytes())
    } else if value.starts_with('/') {
        SocketAddr::from_pathname(value)
    } else {
        return Err(NotifyError::BadAddress {
            value: value.to_owned(),
        });
    };
    addr.map_err(|source| NotifyError::Address {
        value: value.to_owned(),
        source,
    })
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self { target: None }
    }

    /// From the value of NOTIFY_SOCKET; `None` or empty disables it.
    pub fn new(value: Option<&str>) -> Result<Self, NotifyError> {
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return Ok(Self::disabled());
        };
        let addr = parse_address(value)?;
        let socket = UnixDatagram::unbound().map_err(|source| NotifyError::Socket { source })?;
        Ok(Self {
            target: Some((socket, addr)),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one datagram of newline-separated `KEY=value` assignments.
    pub fn send(&self, state: &str) -> io::Result<()> {
        match &self.target {
            None => Ok(()),
            Some((socket, addr)) => socket.send_to_addr(state.as_bytes(), addr).map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        let a = parse_address("/run/x.sock").unwrap();
        assert_eq!(a.as_pathname(), Some(std::path::Path::new("/run/x.sock")));
        let a = parse_address("@lockstep/notify").unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"lockstep/notify"[..]));
        assert!(matches!(
            parse_address("relative.sock"),
            Err(NotifyError::BadAddress { .. })
        ));
    }

    #[test]
    fn unset_is_disabled_and_send_is_a_no_op() {
        let n = Notifier::new(None).unwrap();
        assert!(!n.is_enabled());
        n.send("READY=1").unwrap();
        assert!(!Notifier::new(Some("")).unwrap().is_enabled());
    }

    #[test]
    fn datagrams_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.to_str()).unwrap();
        n.send("READY=1\nSTATUS=ok").unwrap();
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=ok");
    }
}
