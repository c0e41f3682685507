//! The `[[listen]]` sockets: bound by the agent, kept across versions.
//!
//! Owns binding every `[[listen]]` address (SO_REUSEADDR; SO_REUSEPORT too
//! with `[overlap] mode = "reuseport"`) and holding the listening sockets so
//! that the old and the new version of a service are handed the *same*
//! sockets during a start-before-stop switch: no connection is refused while
//! one version replaces the other.
//!
//! ```text
//! [[listen]] http 0.0.0.0:8080 ──bind+listen──▶ ListenSockets (Arc, cheap clone)
//!                                                 ├──▶ instance of release A (fd 3, LISTEN_FDNAMES=http)
//!                                                 └──▶ instance of release B (same socket)
//! ```
//!
//! Must never: accept on the sockets itself, close them while an instance may
//! still be handed them, or retry a failed bind silently on another address.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt, sockopt,
};
use release::manifest::{Listen, Overlap};

/// Pending connections per socket: the kernel's usual cap (`somaxconn`), so
/// a burst during a switch waits in the queue rather than being refused.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Why the listening sockets could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot bind [[listen]] `{name}` on {address}: address already in use")]
    InUse {
        name: String,
        address: SocketAddr,
        #[source]
        source: nix::Error,
    },
    #[error("cannot bind [[listen]] `{name}` on {address}")]
    Bind {
        name: String,
        address: SocketAddr,
        #[source]
        source: nix::Error,
    },
    #[error("cannot set up the socket for [[listen]] `{name}` on {address}")]
    Setup {
        name: String,
        address: SocketAddr,
        #[source]
        source: nix::Error,
    },
    #[error("cannot read the bound address of [[listen]] `{name}`")]
    LocalAddr {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("recovered fd for [[listen]] `{name}` is not it: {reason}")]
    NotTheSocket { name: String, reason: String },
}

/// One bound, listening socket and its `[[listen]]` name.
#[derive(Debug)]
pub struct ListenSocket {
    name: String,
    /// The address asked for (port 0 stays 0 here).
    requested: SocketAddr,
    /// The address actually bound.
    local: SocketAddr,
    listener: TcpListener,
}

impl ListenSocket {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn requested_address(&self) -> SocketAddr {
        self.requested
    }
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
    pub fn as_raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}

/// The listening sockets of one service; clones share the same sockets.
#[derive(Debug, Clone, Default)]
pub struct ListenSockets {
    inner: Arc<Vec<ListenSocket>>,
}

impl ListenSockets {
    /// No sockets (an app without `[[listen]]`).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Binds and listens on every `[[listen]]` address, in manifest order
    /// (the order of fds 3.. handed to the app). The first failure is
    /// returned and the sockets bound so far are closed.
    pub fn bind(listen: &[Listen], overlap: Overlap) -> Result<Self, SocketError> {
        let mut out = Vec::with_capacity(listen.len());
        for l in listen {
            out.push(bind_one(l, overlap)?);
        }
        tracing::info!(
            sockets = %out.iter().map(|s| format!("{}={}", s.name, s.local)).collect::<Vec<_>>().join(","),
            overlap = overlap.as_str(),
            "listening sockets bound"
        );
        Ok(Self {
            inner: Arc::new(out),
        })
    }

    /// The sockets of a running app, duplicated out of it (its fds 3..,
    /// in `[[listen]]` order): each must be a listening TCP socket on the
    /// address asked for (any port when it asked for port 0).
    pub fn recover(listen: &[Listen], fds: Vec<OwnedFd>) -> Result<Self, SocketError> {
        if fds.len() != listen.len() {
            return Err(SocketError::NotTheSocket {
                name: listen.first().map(|l| l.name.clone()).unwrap_or_default(),
                reason: format!("{} fds for {} [[listen]] sockets", fds.len(), listen.len()),
            });
        }
        let mut out = Vec::with_capacity(listen.len());
        for (l, fd) in listen.iter().zip(fds) {
            let wrong = |reason: String| SocketError::NotTheSocket {
                name: l.name.clone(),
                reason,
            };
            let listening = nix::sys::socket::getsockopt(&fd, sockopt::AcceptConn)
                .map_err(|e| wrong(format!("not a socket ({e})")))?;
            if !listening {
                return Err(wrong("not listening".to_owned()));
            }
            let listener = TcpListener::from(fd);
            let local = listener
                .local_addr()
                .map_err(|e| wrong(format!("not a TCP socket ({e})")))?;
            let same_ip = l.address.ip() == local.ip();
            let same_port = l.address.port() == 0 || l.address.port() == local.port();
            if !same_ip || !same_port {
                return Err(wrong(format!("bound to {local}, expected {}", l.address)));
            }
            out.push(ListenSocket {
                name: l.name.clone(),
                requested: l.address,
                local,
                listener,
            });
        }
        tracing::info!(
            sockets = %out.iter().map(|s| format!("{}={}", s.name, s.local)).collect::<Vec<_>>().join(","),
            "listening sockets recovered from a running instance"
        );
        Ok(Self {
            inner: Arc::new(out),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &ListenSocket> {
        self.inner.iter()
    }

    /// The socket named `name`.
    pub fn get(&self, name: &str) -> Option<&ListenSocket> {
        self.inner.iter().find(|s| s.name == name)
    }

    /// Names in fd order, as in `LISTEN_FDNAMES`.
    pub fn names(&self) -> Vec<String> {
        self.inner.iter().map(|s| s.name.clone()).collect()
    }

    /// Raw fds in order, for `SCM_RIGHTS` (valid while `self` lives).
    pub(crate) fn raw_fds(&self) -> Vec<RawFd> {
        self.inner.iter().map(ListenSocket::as_raw_fd).collect()
    }

    /// Borrowed fds in order.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.inner.iter().map(|s| s.listener.as_fd()).collect()
    }
}

fn bind_one(l: &Listen, overlap: Overlap) -> Result<ListenSocket, SocketError> {
    let setup = |source| SocketError::Setup {
        name: l.name.clone(),
        address: l.address,
        source,
    };
    let family = match l.address {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd: OwnedFd =
        nix::sys::socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
            .map_err(setup)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(setup)?;
    if overlap == Overlap::Reuseport {
        setsockopt(&fd, sockopt::ReusePort, &true).map_err(setup)?;
    }
    let addr = SockaddrStorage::from(l.address);
    bind(fd.as_raw_fd(), &addr).map_err(|source| {
        if source == nix::errno::Errno::EADDRINUSE {
            SocketError::InUse {
                name: l.name.clone(),
                address: l.address,
                source,
            }
        } else {
            SocketError::Bind {
                name: l.name.clone(),
                address: l.address,
                source,
            }
        }
    })?;
    listen(
        &fd,
        Backlog::new(LISTEN_BACKLOG).unwrap_or(Backlog::MAXCONN),
    )
    .map_err(setup)?;
    let listener = TcpListener::from(fd);
    let local = listener
        .local_addr()
        .map_err(|source| SocketError::LocalAddr {
            name: l.name.clone(),
            source,
        })?;
    Ok(ListenSocket {
        name: l.name.clone(),
        requested: l.address,
        local,
        listener,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(name: &str, addr: &str) -> Listen {
        Listen {
            name: name.to_owned(),
            address: addr.parse().unwrap(),
        }
    }

    #[test]
    fn binds_in_order_and_reports_the_real_port() {
        let s = ListenSockets::bind(
            &[
                listen("http", "127.0.0.1:0"),
                listen("admin", "127.0.0.1:0"),
            ],
            Overlap::SocketHandover,
        )
        .unwrap();
        assert_eq!(s.names(), vec!["http", "admin"]);
        let http = s.get("http").unwrap();
        assert_ne!(http.local_addr().port(), 0);
        assert_eq!(http.requested_address().port(), 0);
        // It listens: a connect succeeds.
        std::net::TcpStream::connect(http.local_addr()).unwrap();
    }

    #[test]
    fn a_port_in_use_names_the_socket_and_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err =
            ListenSockets::bind(&[listen("http", &addr.to_string())], Overlap::None).unwrap_err();
        assert!(matches!(err, SocketError::InUse { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("cannot bind [[listen]] `http` on {addr}: address already in use")
        );
    }

    #[test]
    fn reuseport_lets_two_binds_share_an_address() {
        let a = ListenSockets::bind(&[listen("http", "127.0.0.1:0")], Overlap::Reuseport).unwrap();
        let addr = a.get("http").unwrap().local_addr();
        let b = ListenSockets::bind(&[listen("http", &addr.to_string())], Overlap::Reuseport);
        assert!(b.is_ok(), "{b:?}");
    }
}
