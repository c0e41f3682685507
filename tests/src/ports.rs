//! Free loopback ports for fixtures, outside the kernel's ephemeral range.
//!
//! A port found by binding port 0 comes from the ephemeral range, which
//! every outgoing connection (gRPC, etcd, probes) also draws its local port
//! from: between the pick and the fixture's bind, one of them can take it,
//! and an app fails with "address already in use" (#15 Seen 1). Ports here
//! come from below that range, and each is reserved for the life of the
//! test process by a lock on a file named after it, so concurrent test
//! processes never hand out the same one.
//!
//! Must never: hand out a port another live test process reserved, or one
//! that cannot be bound right now.

use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::HarnessError;

/// The lowest port handed out: above the well-known and most registered
/// service ports.
const FIRST_PORT: u16 = 10_000;
/// Where the ephemeral range starts when /proc does not say (Linux's
/// default).
const DEFAULT_EPHEMERAL_START: u16 = 32_768;

/// Reservations held until the process exits (the lock goes with the file).
static RESERVED: Mutex<Vec<Flock<File>>> = Mutex::new(Vec::new());

/// A loopback port that no outgoing connection and no other test process
/// will take: reserved for this process and free when handed out.
pub fn free_loopback_port() -> Result<u16, HarnessError> {
    let end = ephemeral_start();
    let span = u64::from(end.saturating_sub(FIRST_PORT)).max(1);
    let start = RandomState::new().hash_one(std::process::id()) % span;
    let dir = std::env::temp_dir().join("lockstep-test-ports");
    std::fs::create_dir_all(&dir).map_err(HarnessError::Port)?;
    for offset in 0..span {
        let port = FIRST_PORT + u16::try_from((start + offset) % span).unwrap_or(0);
        let Some(reservation) = reserve(dir.join(port.to_string()))? else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue; // in use by something that is not a test process
        }
        RESERVED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(reservation);
        return Ok(port);
    }
    Err(HarnessError::Port(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("every loopback port from {FIRST_PORT} to {end} is reserved or in use"),
    )))
}

/// The port's lock file, locked by this process; `None` when another
/// process (or an earlier pick of this one) holds it.
fn reserve(path: PathBuf) -> Result<Option<Flock<File>>, HarnessError> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(HarnessError::Port)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(HarnessError::Port(errno.into())),
    }
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .filter(|&p| p > FIRST_PORT)
        .unwrap_or(DEFAULT_EPHEMERAL_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_never_handed_out_twice() {
        let end = ephemeral_start();
        let ports: Vec<u16> = (0..50).map(|_| free_loopback_port().unwrap()).collect();
        assert!(ports.iter().all(|&p| (FIRST_PORT..end).contains(&p)));
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
    }
}
