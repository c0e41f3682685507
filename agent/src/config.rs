//! `agent.toml`: the agent's own configuration, parsed strictly into an
//! `AgentConfig` that cannot be invalid.
//!
//! ```toml
//! id = "web-1"                       # default: the hostname
//! cluster = "eu-1"                   # required
//! data_dir = "/var/lib/lockstep"     # state, release store, logs
//!
//! [control]                          # agentctl's Unix socket
//! socket = "/run/lockstep/agent.sock"
//! group = "lockstep"                 # members may use agentctl; root always may
//!
//! [grpc]
//! listen = "127.0.0.1:7600"          # AgentService, for the coordinator
//!
//! [coordinator]                      # optional until the fleet issues
//! url = "http://coordinator:7700"
//!
//! [etcd]                             # optional: without it, no budget
//! endpoints = ["http://127.0.0.1:2379"]
//! lease_ttl = "10s"                  # the agent's session; its locks die with it
//! budget_wait = "2m"                 # a planned disruption waits this long for a slot
//!
//! [releases]
//! trusted_keys = ["/etc/lockstep/release.pub"]   # empty: signatures not required
//! keep = 5
//! max_entry_bytes = 4294967296     # defaults: release::unpack::UnpackLimits
//! max_total_bytes = 17179869184
//! max_entries = 1000000
//! ```
//!
//! Must never: accept a key it does not know, or report only the first of
//! several problems.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use release::unpack::UnpackLimits;
use serde::Deserialize;

/// Where agentctl finds the agent unless told otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/lockstep/agent.sock";
/// Loopback only by default: exposing AgentService is an explicit choice.
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:7600";
/// Releases kept on disk per service besides the current one: enough to
/// roll back several steps without refetching.
pub const DEFAULT_KEEP_RELEASES: usize = 5;
/// The agent's etcd session: a dead agent's slots free within this (plus
/// one keep-alive interval), short enough not to stall its cluster long.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// How long a planned disruption waits for a slot in the cluster's budget
/// (or for etcd to come back) before it fails and says so.
pub const DEFAULT_BUDGET_WAIT: Duration = Duration::from_secs(120);

/// A valid agent configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub id: AgentId,
    pub cluster: ClusterName,
    pub data_dir: PathBuf,
    pub control_socket: PathBuf,
    pub control_group: Option<String>,
    pub grpc_listen: SocketAddr,
    pub coordinator_url: Option<String>,
    /// The fleet's etcd; `None`: this host runs without a disruption budget.
    pub etcd: Option<EtcdSettings>,
    pub trusted_keys: Vec<PathBuf>,
    pub keep_releases: usize,
    pub limits: UnpackLimits,
}

/// How the agent uses etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub lease_ttl: Duration,
    pub budget_wait: Duration,
}

/// An agent's identity in the fleet: 1-63 of `a-z 0-9 . _ -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId(String);

/// A cluster's name: same alphabet as an agent id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterName(String);

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

macro_rules! name_type {
    ($name:ident, $what:literal) => {
        impl $name {
            pub fn parse(s: &str) -> Result<Self, String> {
                if valid_name(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(format!(
                        "`{s}` is not a valid {} (1-63 of a-z, 0-9, `.`, `_`, `-`, starting with a letter or digit)",
                        $what
                    ))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(AgentId, "agent id");
name_type!(ClusterName, "cluster name");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read agent config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("agent config {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("agent config {path} is invalid:\n{}", .problems.join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    id: Option<String>,
    cluster: Option<String>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    control: RawControl,
    #[serde(default)]
    grpc: RawGrpc,
    coordinator: Option<RawCoordinator>,
    etcd: Option<RawEtcd>,
    #[serde(default)]
    releases: RawReleases,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    socket: Option<PathBuf>,
    group: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrpc {
    listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCoordinator {
    url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcd {
    endpoints: Vec<String>,
    lease_ttl: Option<String>,
    budget_wait: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReleases {
    #[serde(default)]
    trusted_keys: Vec<PathBuf>,
    keep: Option<usize>,
    max_entry_bytes: Option<u64>,
    max_total_bytes: Option<u64>,
    max_entries: Option<u64>,
}

impl AgentConfig {
    /// Reads and validates `path`. Blocking: call from `spawn_blocking` in
    /// async code.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Validates `text`; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|err| ConfigError::Syntax {
            path: path.to_owned(),
            message: syntax_message(text, &err),
        })?;
        let mut problems = Vec::new();
        let mut check = |key: &str, result: Result<(), String>| {
            if let Err(message) = result {
                problems.push(format!("  {key}: {message}"));
            }
        };

        let id = match raw.id {
            Some(id) => AgentId::parse(&id),
            None => hostname().and_then(|h| AgentId::parse(&h.to_ascii_lowercase())),
        };
        check("id", id.as_ref().map(drop).map_err(Clone::clone));
        let cluster = raw
            .cluster
            .ok_or_else(|| "required: the cluster this host belongs to".to_owned())
            .and_then(|c| ClusterName::parse(&c));
        check("cluster", cluster.as_ref().map(drop).map_err(Clone::clone));
        let data_dir = raw
            .data_dir
            .ok_or_else(|| "required: where the agent keeps state, releases and logs".to_owned())
            .and_then(|d| absolute(&d));
        check(
            "data_dir",
            data_dir.as_ref().map(drop).map_err(Clone::clone),
        );
        let control_socket = absolute(
            &raw.control
                .socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET)),
        );
        check(
            "control.socket",
            control_socket.as_ref().map(drop).map_err(Clone::clone),
        );
        if let Some(group) = &raw.control.group {
            check(
                "control.group",
                if group.is_empty() {
                    Err("must not be empty (omit it to allow root only)".to_owned())
                } else {
                    Ok(())
                },
            );
        }
        let grpc_listen = raw
            .grpc
            .listen
            .as_deref()
            .unwrap_or(DEFAULT_GRPC_LISTEN)
            .parse::<SocketAddr>()
            .map_err(|e| format!("not an IP:port address ({e})"));
        check(
            "grpc.listen",
            grpc_listen.as_ref().map(drop).map_err(Clone::clone),
        );
        if let Some(coordinator) = &raw.coordinator {
            check("coordinator.url", url(&coordinator.url));
        }
        let etcd = raw.etcd.map(|e| {
            if e.endpoints.is_empty() {
                check(
                    "etcd.endpoints",
                    Err("must name at least one endpoint (or drop [etcd])".to_owned()),
                );
            }
            for (i, endpoint) in e.endpoints.iter().enumerate() {
                check(&format!("etcd.endpoints[{i}]"), url(endpoint));
            }
            let lease_ttl = duration(e.lease_ttl.as_deref(), DEFAULT_LEASE_TTL).and_then(|ttl| {
                leases::Ttl::from_secs(ttl.as_secs())
                    .map_err(|err| err.to_string())
                    .and_then(|_| {
                        if ttl.subsec_nanos() == 0 {
                            Ok(ttl)
                        } else {
                            Err("must be whole seconds".to_owned())
                        }
                    })
            });
            check(
                "etcd.lease_ttl",
                lease_ttl.as_ref().map(drop).map_err(Clone::clone),
            );
            let budget_wait = duration(e.budget_wait.as_deref(), DEFAULT_BUDGET_WAIT);
            check(
                "etcd.budget_wait",
                budget_wait.as_ref().map(drop).map_err(Clone::clone),
            );
            EtcdSettings {
                endpoints: e.endpoints,
                lease_ttl: lease_ttl.unwrap_or(DEFAULT_LEASE_TTL),
                budget_wait: budget_wait.unwrap_or(DEFAULT_BUDGET_WAIT),
            }
        });
        for (i, key) in raw.releases.trusted_keys.iter().enumerate() {
            check(
                &format!("releases.trusted_keys[{i}]"),
                absolute(key).map(drop),
            );
        }
        let keep_releases = raw.releases.keep.unwrap_or(DEFAULT_KEEP_RELEASES);
        check(
            "releases.keep",
            if keep_releases == 0 {
                Err(
                    "must be at least 1: the previous release is what rollback switches to"
                        .to_owned(),
                )
            } else {
                Ok(())
            },
        );
        let defaults = UnpackLimits::default();
        let limits = UnpackLimits {
            max_entry_bytes: raw
                .releases
                .max_entry_bytes
                .unwrap_or(defaults.max_entry_bytes),
            max_total_bytes: raw
                .releases
                .max_total_bytes
                .unwrap_or(defaults.max_total_bytes),
            max_entries: raw.releases.max_entries.unwrap_or(defaults.max_entries),
        };
        for (key, value) in [
            ("releases.max_entry_bytes", limits.max_entry_bytes),
            ("releases.max_total_bytes", limits.max_total_bytes),
            ("releases.max_entries", limits.max_entries),
        ] {
            check(
                key,
                if value == 0 {
                    Err("must be greater than 0".to_owned())
                } else {
                    Ok(())
                },
            );
        }

        match (id, cluster, data_dir, control_socket, grpc_listen) {
            (Ok(id), Ok(cluster), Ok(data_dir), Ok(control_socket), Ok(grpc_listen))
                if problems.is_empty() =>
            {
                Ok(Self {
                    id,
                    cluster,
                    data_dir,
                    control_socket,
                    control_group: raw.control.group,
                    grpc_listen,
                    coordinator_url: raw.coordinator.map(|c| c.url),
                    etcd,
                    trusted_keys: raw.releases.trusted_keys,
                    keep_releases,
                    limits,
                })
            }
            _ => Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            }),
        }
    }

    /// Durable state: current and previous releases, tokens, history.
    pub fn state_file(&self) -> PathBuf {
        self.data_dir.join("state.json")
    }

    pub fn release_store(&self) -> PathBuf {
        self.data_dir.join("releases")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    /// Per-instance NOTIFY_SOCKETs.
    pub fn runtime_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }

    /// Break-glass actions taken while etcd was unreachable, for later upload.
    pub fn local_audit_file(&self) -> PathBuf {
        self.data_dir.join("audit.jsonl")
    }
}

/// toml's own message names the key and shows the line; add the line
/// number in front so it reads like every other problem.
fn syntax_message(text: &str, err: &toml::de::Error) -> String {
    let message = err.message();
    match err.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        None => message.to_owned(),
    }
}

fn duration(text: Option<&str>, default: Duration) -> Result<Duration, String> {
    text.map_or(Ok(default), release::manifest::parse_duration)
}

fn absolute(path: &Path) -> Result<PathBuf, String> {
    if path.is_absolute() {
        Ok(path.to_owned())
    } else {
        Err(format!("`{}` must be an absolute path", path.display()))
    }
}

fn url(s: &str) -> Result<(), String> {
    if s.starts_with("http://") || s.starts_with("https://") {
        Ok(())
    } else {
        Err(format!("`{s}` is not an http:// or https:// URL"))
    }
}

fn hostname() -> Result<String, String> {
    nix::unistd::gethostname()
        .map_err(|e| format!("not set, and the hostname cannot be read ({e})"))
        .map(|h| h.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(text, Path::new("/etc/lockstep/agent.toml"))
    }

    #[test]
    fn a_minimal_config_takes_the_defaults() {
        let config =
            parse("id = \"web-1\"\ncluster = \"eu-1\"\ndata_dir = \"/var/lib/lockstep\"\n")
                .unwrap();
        assert_eq!(config.id.as_str(), "web-1");
        assert_eq!(config.control_socket, Path::new(DEFAULT_CONTROL_SOCKET));
        assert_eq!(config.grpc_listen.to_string(), DEFAULT_GRPC_LISTEN);
        assert_eq!(config.keep_releases, DEFAULT_KEEP_RELEASES);
        assert_eq!(config.limits, UnpackLimits::default());
        assert!(config.etcd.is_none());
    }

    #[test]
    fn the_fixture_of_every_key_still_loads() {
        let text = include_str!("../tests/fixtures/agent-v1.toml");
        let config = parse(text).unwrap();
        assert_eq!(config.cluster.as_str(), "eu-1");
        assert_eq!(config.control_group.as_deref(), Some("lockstep"));
        let etcd = config.etcd.unwrap();
        assert_eq!(etcd.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(etcd.lease_ttl, DEFAULT_LEASE_TTL);
        assert_eq!(etcd.budget_wait, DEFAULT_BUDGET_WAIT);
        assert_eq!(
            config.coordinator_url.as_deref(),
            Some("http://127.0.0.1:7700")
        );
        assert_eq!(
            config.trusted_keys,
            [PathBuf::from("/etc/lockstep/release.pub")]
        );
        assert_eq!(config.keep_releases, 3);
        assert_eq!(config.limits.max_entries, 5000);
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let err = parse(
            "cluster = \"eu-1\"\ndata_dir = \"/d\"\n[grpc]\nlisten = \"127.0.0.1:1\"\nport = 7\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 5"), "{err}");
        assert!(err.contains("port"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = parse(
            "id = \"Bad Id\"\ndata_dir = \"relative\"\n[grpc]\nlisten = \"nowhere\"\n[releases]\nkeep = 0\n",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "id:",
            "cluster:",
            "data_dir:",
            "grpc.listen:",
            "releases.keep:",
        ] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
    }
}
