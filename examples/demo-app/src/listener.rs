//! The listening socket: taken over from LISTEN_FDS, or bound here.
//!
//! Owns: the socket-activation protocol (LISTEN_FDS, LISTEN_PID,
//! LISTEN_FDNAMES) and the fallback bind.
//!
//! ```text
//! LISTEN_FDS unset or 0 ─────────────────────▶ bind the address
//! LISTEN_PID set and not our pid ────────────▶ bind the address (the sockets are not for us)
//! LISTEN_FDS = n (LISTEN_PID ours or unset) ─▶ the fd named `http` in LISTEN_FDNAMES,
//!                                              else the first one (fd 3)
//! ```
//!
//! LISTEN_PID unset is accepted (as the `listenfd` crate does): a supervisor
//! written without unsafe code cannot put its child's pid into the child's
//! environment before exec.
//!
//! Must never: run once the tokio runtime has started threads (taking the
//! sockets removes LISTEN_FDS/LISTEN_PID from the environment), or fall back
//! to binding when a passed socket is unusable (that would hide a broken
//! hand-over).

use std::net::{SocketAddr, TcpListener};

/// The LISTEN_FDNAMES entry preferred when several sockets are passed.
pub const HTTP_FD_NAME: &str = "http";

/// The socket-activation variables as found in the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivationEnv {
    pub listen_fds: Option<String>,
    pub listen_pid: Option<String>,
    pub listen_fdnames: Option<String>,
}

impl ActivationEnv {
    pub fn from_process_env() -> Self {
        let var = |name| std::env::var(name).ok();
        Self {
            listen_fds: var("LISTEN_FDS"),
            listen_pid: var("LISTEN_PID"),
            listen_fdnames: var("LISTEN_FDNAMES"),
        }
    }
}

/// What the activation variables tell us to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Take the passed socket at this index (0 = fd 3).
    Inherit { index: usize, name: Option<String> },
    /// Bind ourselves; the reason is logged.
    Bind { reason: String },
}

/// How the socket was obtained, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Inherited { index: usize, name: Option<String> },
    Bound,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("LISTEN_FDS={value:?} is not a number of sockets")]
    BadFdCount { value: String },
    #[error("LISTEN_FDNAMES names socket `{name}` at index {index} but LISTEN_FDS={count}")]
    NameOutOfRange {
        name: String,
        index: usize,
        count: usize,
    },
    #[error("LISTEN_FDS socket at index {index} (fd {fd}) is not a TCP socket")]
    NotTcp {
        index: usize,
        fd: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("LISTEN_FDS socket at index {index} (fd {fd}) is not available")]
    Missing { index: usize, fd: usize },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot prepare the listening socket")]
    Prepare {
        #[source]
        source: std::io::Error,
    },
}

/// Decides from the activation variables alone; no side effects.
pub fn choose(env: &ActivationEnv, our_pid: u32) -> Result<Choice, ListenerError> {
    let Some(fds) = env.listen_fds.as_deref() else {
        return Ok(Choice::Bind {
            reason: "LISTEN_FDS is not set".into(),
        });
    };
    let count: usize = fds.trim().parse().map_err(|_| ListenerError::BadFdCount {
        value: fds.to_owned(),
    })?;
    if let Some(pid) = env.listen_pid.as_deref().filter(|p| !p.is_empty()) {
        if pid.trim().parse::<u32>().ok() != Some(our_pid) {
            return Ok(Choice::Bind {
                reason: format!("LISTEN_PID={pid} is not our pid {our_pid}"),
            });
        }
    }
    if count == 0 {
        return Ok(Choice::Bind {
            reason: "LISTEN_FDS=0".into(),
        });
    }
    let names: Vec<&str> = env
        .listen_fdnames
        .as_deref()
        .map(|n| n.split(':').collect())
        .unwrap_or_default();
    if let Some(index) = names.iter().position(|n| *n == HTTP_FD_NAME) {
        if index >= count {
            return Err(ListenerError::NameOutOfRange {
                name: HTTP_FD_NAME.into(),
                index,
                count,
            });
        }
        return Ok(Choice::Inherit {
            index,
            name: Some(HTTP_FD_NAME.into()),
        });
    }
    Ok(Choice::Inherit {
        index: 0,
        name: names
            .first()
            .map(|n| (*n).to_owned())
            .filter(|n| !n.is_empty()),
    })
}

/// Carries out `choice`: takes the passed socket or binds `addr`. The result
/// is non-blocking, ready for tokio.
pub fn acquire(choice: &Choice, addr: SocketAddr) -> Result<(TcpListener, Source), ListenerError> {
    let (listener, source) = match choice {
        Choice::Inherit { index, name } => {
            let fd = 3 + index;
            let mut fds = listenfd::ListenFd::from_env();
            let listener = fds
                .take_tcp_listener(*index)
                .map_err(|source| ListenerError::NotTcp {
                    index: *index,
                    fd,
                    source,
                })?
                .ok_or(ListenerError::Missing { index: *index, fd })?;
            let source = Source::Inherited {
                index: *index,
                name: name.clone(),
            };
            (listener, source)
        }
        Choice::Bind { .. } => {
            let listener =
                TcpListener::bind(addr).map_err(|source| ListenerError::Bind { addr, source })?;
            (listener, Source::Bound)
        }
    };
    listener
        .set_nonblocking(true)
        .map_err(|source| ListenerError::Prepare { source })?;
    Ok((listener, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(fds: Option<&str>, pid: Option<&str>, names: Option<&str>) -> ActivationEnv {
        ActivationEnv {
            listen_fds: fds.map(Into::into),
            listen_pid: pid.map(Into::into),
            listen_fdnames: names.map(Into::into),
        }
    }

    #[test]
    fn no_listen_fds_means_bind() {
        assert!(matches!(
            choose(&env(None, None, None), 7),
            Ok(Choice::Bind { .. })
        ));
        assert!(matches!(
            choose(&env(Some("0"), Some("7"), None), 7),
            Ok(Choice::Bind { .. })
        ));
    }

    #[test]
    fn first_socket_when_pid_matches_or_is_absent() {
        let first = Choice::Inherit {
            index: 0,
            name: None,
        };
        assert_eq!(choose(&env(Some("1"), Some("7"), None), 7).unwrap(), first);
        assert_eq!(choose(&env(Some("2"), None, None), 7).unwrap(), first);
        assert_eq!(choose(&env(Some("2"), Some(""), None), 7).unwrap(), first);
    }

    #[test]
    fn sockets_for_another_pid_are_ignored() {
        let c = choose(&env(Some("1"), Some("8"), None), 7).unwrap();
        assert_eq!(
            c,
            Choice::Bind {
                reason: "LISTEN_PID=8 is not our pid 7".into()
            }
        );
    }

    #[test]
    fn socket_named_http_is_preferred() {
        let c = choose(&env(Some("2"), Some("7"), Some("metrics:http")), 7).unwrap();
        assert_eq!(
            c,
            Choice::Inherit {
                index: 1,
                name: Some("http".into())
            }
        );
        let c = choose(&env(Some("1"), Some("7"), Some("web")), 7).unwrap();
        assert_eq!(
            c,
            Choice::Inherit {
                index: 0,
                name: Some("web".into())
            }
        );
    }

    #[test]
    fn bad_variables_are_errors() {
        assert!(matches!(
            choose(&env(Some("x"), None, None), 7),
            Err(ListenerError::BadFdCount { .. })
        ));
        assert!(matches!(
            choose(&env(Some("1"), None, Some("a:http")), 7),
            Err(ListenerError::NameOutOfRange {
                index: 1,
                count: 1,
                ..
            })
        ));
    }
}
