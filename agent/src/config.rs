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
//! advertise = "web-1.internal:7600"  # what coordinators dial; default: listen,
//!                                    # or <hostname>:<port> for a wildcard listen
//!
//! services = ["demo-app"]            # services this host is assigned to run
//!
//! [coordinator]                      # optional: without it, agentctl only
//! urls = ["http://coord-1:7400", "http://coord-2:7400"]   # every coordinator
//! fetch_timeout = "60s"              # a release fetch gives up after this
//!
//! [etcd]                             # optional: without it, no budget
//! endpoints = ["http://127.0.0.1:2379"]
//! lease_ttl = "10s"                  # the agent's session; its locks die with it
//! budget_wait = "2m"                 # a planned disruption waits this long for a slot
//! ca = "/etc/lockstep/etcd/ca.pem"   # optional: TLS to etcd (https:// endpoints), with cert and key
//! cert = "/etc/lockstep/etcd/agent.pem"
//! key = "/etc/lockstep/etcd/agent.key"
//! user = "lockstep-agent-web-1"      # optional: etcd authentication, with password_file (mode 600)
//! password_file = "/etc/lockstep/etcd/agent.password"
//!
//! [metrics]                        # optional: without it, no metrics endpoint
//! listen = "127.0.0.1:9401"          # /metrics (Prometheus), /healthz, /readyz
//!
//! [listen_overrides.demo-app]      # bind these instead of the manifest's [[listen]]
//! http = "127.0.0.1:18081"
//!
//! [releases]
//! trusted_keys = ["/etc/lockstep/release.pub"]   # empty: signatures not required
//! keep = 5
//! max_entry_bytes = 4294967296     # defaults: release::unpack::UnpackLimits
//! max_total_bytes = 17179869184
//! max_entries = 1000000
//! max_expansion_ratio = 100        # content <= 100x the bundle (at least 64 MiB)
//!
//! [tls]                            # optional: mTLS on AgentService, reports and fetches
//! ca = "/etc/lockstep/tls/ca.pem"  # signs coordinators' (and operators') certificates
//! cert = "/etc/lockstep/tls/agent.pem"   # this agent's certificate (SANs: the name
//! key = "/etc/lockstep/tls/agent.key"    # or IP coordinators dial it by) and key
//! trusted_coordinators = ["coordinator.lockstep"]   # DNS SANs allowed to command it
//! viewers = ["ops-*"]              # besides those, who may read Status/WatchStatus (`*` globs)
//! ```
//!
//! Without `[tls]` AgentService is plain text and obeys anyone who reaches
//! its port; the agent says so in its log at start.
//!
//! Must never: accept a key it does not know, or report only the first of
//! several problems.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use ids::{AgentId, ClusterName};
use release::ServiceName;
use release::unpack::UnpackLimits;
use serde::Deserialize;
use toml::Spanned;

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
/// How long fetching one release from the coordinators may take, retries
/// included: an Apply waits for it, so it must stay well inside the
/// coordinator's Apply deadline.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// A valid agent configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub id: AgentId,
    pub cluster: ClusterName,
    pub data_dir: PathBuf,
    pub control_socket: PathBuf,
    pub control_group: Option<String>,
    pub grpc_listen: SocketAddr,
    /// `host:port` coordinators dial (reported in the registration).
    pub grpc_advertise: String,
    /// The fleet's coordinators; `None`: no reports, no release fetches.
    pub coordinator: Option<CoordinatorSettings>,
    /// Services this host is assigned to run (reported in its registration).
    pub services: Vec<ServiceName>,
    /// The fleet's etcd; `None`: this host runs without a disruption budget.
    pub etcd: Option<EtcdSettings>,
    /// Per service, `[[listen]]` name -> the address this host binds
    /// instead of the manifest's (several hosts on one machine, or a host
    /// whose port differs).
    pub listen_overrides: BTreeMap<String, BTreeMap<String, SocketAddr>>,
    pub trusted_keys: Vec<PathBuf>,
    pub keep_releases: usize,
    pub limits: UnpackLimits,
    /// Mutual TLS on every gRPC hop; `None`: plain text (a local demo).
    pub tls: Option<AgentTls>,
    /// What a SIGTERM of the agent does to the apps (`apps_on_agent_stop`).
    pub apps_on_agent_stop: AppsOnAgentStop,
    /// Where `/metrics`, `/healthz` and `/readyz` are served
    /// (`[metrics] listen`); `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
}

/// What happens to the apps when the agent stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppsOnAgentStop {
    /// They keep serving; the next agent adopts them (the default).
    #[default]
    Keep,
    /// The agent stops every instance gracefully before it exits.
    Stop,
}

/// The agent's mTLS settings: its material, read and checked at load, and
/// who may command it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTls {
    pub material: tls::TlsMaterial,
    /// Identities (DNS SANs, or CN) of the coordinators whose Apply,
    /// Restart and Rollback this agent obeys; never empty.
    pub trusted_coordinators: Vec<String>,
    /// Names or patterns that may read Status and WatchStatus besides the
    /// trusted coordinators (`tls.viewers`; default none).
    pub viewers: Vec<tls::NamePattern>,
}

/// How the agent reaches the coordinators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorSettings {
    /// Every coordinator of the fleet, each an `http://` or `https://` URL;
    /// at least one, no duplicates.
    pub urls: Vec<String>,
    pub fetch_timeout: Duration,
}

/// How the agent uses etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub lease_ttl: Duration,
    pub budget_wait: Duration,
    /// TLS and user to present to etcd (`ca`/`cert`/`key`, `user`/`password_file`).
    pub access: leases::EtcdAccess,
}

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
    /// Valid, but the agent could not start with it on this host.
    #[error("agent config {path} cannot be used on this host:\n{}", .problems.join("\n"))]
    NotUsableHere {
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
    services: Vec<Spanned<String>>,
    #[serde(default)]
    control: RawControl,
    #[serde(default)]
    grpc: RawGrpc,
    coordinator: Option<RawCoordinator>,
    etcd: Option<RawEtcd>,
    #[serde(default)]
    listen_overrides: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    releases: RawReleases,
    tls: Option<RawTls>,
    apps_on_agent_stop: Option<String>,
    metrics: Option<RawMetrics>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    trusted_coordinators: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    viewers: Vec<String>,
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
    advertise: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCoordinator {
    /// The one-coordinator form of the first agent.toml, still read so
    /// that file keeps loading; `urls` replaces it.
    url: Option<Spanned<String>>,
    urls: Option<Spanned<Vec<Spanned<String>>>>,
    fetch_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcd {
    endpoints: Vec<String>,
    lease_ttl: Option<String>,
    budget_wait: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    user: Option<String>,
    password_file: Option<PathBuf>,
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
    max_expansion_ratio: Option<u64>,
}

impl AgentConfig {
    /// Reads and validates `path`, then checks it against this host as the
    /// agent's start would (`preflight`): the daemon and `check-config`
    /// both load through here. Blocking: call from `spawn_blocking` in
    /// async code.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::parse(&text, path)?;
        let problems = crate::preflight::host_problems(&config);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::NotUsableHere {
                path: path.to_owned(),
                problems,
            })
        }
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
            Some(id) => AgentId::parse(&id).map_err(|e| e.to_string()),
            None => hostname()
                .and_then(|h| AgentId::parse(&h.to_ascii_lowercase()).map_err(|e| e.to_string())),
        };
        check("id", id.as_ref().map(drop).map_err(Clone::clone));
        let cluster = raw
            .cluster
            .ok_or_else(|| "required: the cluster this host belongs to".to_owned())
            .and_then(|c| ClusterName::parse(&c).map_err(|e| e.to_string()));
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
        let grpc_advertise = match (&raw.grpc.advertise, &grpc_listen) {
            (Some(advertise), _) => host_port(advertise).map(|()| advertise.clone()),
            // A wildcard cannot be dialled: the host's name is what other
            // hosts know it by.
            (None, Ok(listen)) if listen.ip().is_unspecified() => hostname()
                .map(|h| format!("{h}:{}", listen.port()))
                .map_err(|e| {
                    format!("grpc.listen is a wildcard and the hostname is unknown ({e}); set advertise to this host's name or IP and port")
                }),
            (None, Ok(listen)) => Ok(listen.to_string()),
            (None, Err(_)) => Ok(String::new()),
        };
        check(
            "grpc.advertise",
            grpc_advertise.as_ref().map(drop).map_err(Clone::clone),
        );
        let services = raw
            .services
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                let key = format!("services[{i}]");
                let parsed = ServiceName::parse(name.get_ref())
                    .map_err(|e| at_line(text, name.span(), &e.to_string()));
                check(&key, parsed.as_ref().map(drop).map_err(Clone::clone));
                parsed.ok()
            })
            .collect::<Vec<_>>();
        check("services", unique(&raw.services, text));
        let coordinator = raw.coordinator.map(|c| {
            let urls: Vec<Spanned<String>> = match (c.url, c.urls) {
                (Some(single), None) => vec![single],
                (None, Some(urls)) => {
                    if urls.get_ref().is_empty() {
                        check(
                            "coordinator.urls",
                            Err(at_line(
                                text,
                                urls.span(),
                                "must name at least one coordinator (or drop [coordinator])",
                            )),
                        );
                    }
                    urls.into_inner()
                }
                (Some(single), Some(urls)) => {
                    check(
                        "coordinator.url",
                        Err(at_line(
                            text,
                            single.span(),
                            "set `urls` only: `url` is the old one-coordinator form of it",
                        )),
                    );
                    urls.into_inner()
                }
                (None, None) => {
                    check(
                        "coordinator.urls",
                        Err("required: every coordinator of the fleet, e.g. urls = [\"http://coordinator:7400\"] (or drop [coordinator])".to_owned()),
                    );
                    Vec::new()
                }
            };
            for (i, u) in urls.iter().enumerate() {
                check(
                    &format!("coordinator.urls[{i}]"),
                    url(u.get_ref()).map_err(|e| at_line(text, u.span(), &e)),
                );
            }
            check("coordinator.urls", unique(&urls, text));
            let fetch_timeout = duration(c.fetch_timeout.as_deref(), DEFAULT_FETCH_TIMEOUT)
                .and_then(|t| {
                    if t.is_zero() {
                        Err("must be greater than 0".to_owned())
                    } else {
                        Ok(t)
                    }
                });
            check(
                "coordinator.fetch_timeout",
                fetch_timeout.as_ref().map(drop).map_err(Clone::clone),
            );
            CoordinatorSettings {
                urls: urls.into_iter().map(Spanned::into_inner).collect(),
                fetch_timeout: fetch_timeout.unwrap_or(DEFAULT_FETCH_TIMEOUT),
            }
        });
        let etcd = raw.etcd.map(|e| {
            if e.endpoints.is_empty() {
                check(
                    "etcd.endpoints",
                    Err("must name at least one endpoint (or drop [etcd])".to_owned()),
                );
            }
            let tls = e.ca.is_some() || e.cert.is_some() || e.key.is_some();
            for (i, endpoint) in e.endpoints.iter().enumerate() {
                // What `leases::Etcd::connect_with` accepts, so the daemon
                // cannot refuse what check-config calls valid.
                check(
                    &format!("etcd.endpoints[{i}]"),
                    leases::check_endpoint(endpoint, tls).map_err(|e| e.to_string()),
                );
            }
            let access = leases::EtcdAccess::from_config(
                leases::EtcdAccessKeys {
                    ca: e.ca,
                    cert: e.cert,
                    key: e.key,
                    user: e.user,
                    password_file: e.password_file,
                },
                |key, message| check(key, Err(message)),
            );
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
                access: access.unwrap_or_default(),
            }
        });
        for (i, key) in raw.releases.trusted_keys.iter().enumerate() {
            check(
                &format!("releases.trusted_keys[{i}]"),
                absolute(key).map(drop),
            );
        }
        let tls = raw.tls.and_then(|t| {
            let paths = tls::TlsPaths::from_config(
                tls::TlsFileKeys {
                    ca: t.ca,
                    cert: t.cert,
                    key: t.key,
                },
                "this agent",
                "the coordinators'",
                |key, message| check(key, Err(message)),
            );
            let trusted = match t.trusted_coordinators {
                Some(list) if !list.get_ref().is_empty() => {
                    check("tls.trusted_coordinators", unique(list.get_ref(), text));
                    Some(list.into_inner())
                }
                Some(list) => {
                    check(
                        "tls.trusted_coordinators",
                        Err(at_line(text, list.span(), TRUSTED_COORDINATORS_REQUIRED)),
                    );
                    None
                }
                None => {
                    check(
                        "tls.trusted_coordinators",
                        Err(format!("required: {TRUSTED_COORDINATORS_REQUIRED}")),
                    );
                    None
                }
            };
            let mut viewers = Vec::new();
            for (i, text) in t.viewers.iter().enumerate() {
                match tls::NamePattern::parse(text) {
                    Ok(pattern) => viewers.push(pattern),
                    Err(e) => check(&format!("tls.viewers[{i}]"), Err(e.to_string())),
                }
            }
            let (paths, trusted) = (paths?, trusted?);
            let material = tls::TlsMaterial::load(&paths)
                .map_err(|e| check("tls", Err(e.to_string())))
                .ok()?;
            Some(AgentTls {
                material,
                trusted_coordinators: trusted
                    .into_iter()
                    .map(|n| n.into_inner().to_ascii_lowercase())
                    .collect(),
                viewers,
            })
        });
        if let (Some(_), Some(coordinator)) = (&tls, &coordinator) {
            for (i, u) in coordinator.urls.iter().enumerate() {
                if !u.starts_with("https://") {
                    check(
                        &format!("coordinator.urls[{i}]"),
                        Err(format!(
                            "`{u}` is plain http, but [tls] is set: use https:// (or drop [tls] for a plain-text demo)"
                        )),
                    );
                }
            }
        }
        let mut listen_overrides = BTreeMap::new();
        for (service, names) in &raw.listen_overrides {
            let mut parsed = BTreeMap::new();
            for (name, address) in names {
                match address.parse::<SocketAddr>() {
                    Ok(addr) => {
                        parsed.insert(name.clone(), addr);
                    }
                    Err(e) => check(
                        &format!("listen_overrides.{service}.{name}"),
                        Err(format!("{address:?} is not an IP:port address ({e})")),
                    ),
                }
            }
            listen_overrides.insert(service.clone(), parsed);
        }
        let apps_on_agent_stop = match raw.apps_on_agent_stop.as_deref() {
            None | Some("keep") => AppsOnAgentStop::Keep,
            Some("stop") => AppsOnAgentStop::Stop,
            Some(other) => {
                check(
                    "apps_on_agent_stop",
                    Err(format!("{other:?} is not \"keep\" or \"stop\"")),
                );
                AppsOnAgentStop::Keep
            }
        };
        let metrics_listen = raw.metrics.and_then(|m| {
            metrics_listen(m.listen.as_deref(), grpc_listen.as_ref().ok())
                .map_err(|e| check("metrics.listen", Err(e)))
                .ok()
        });
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
            max_expansion_ratio: raw
                .releases
                .max_expansion_ratio
                .unwrap_or(defaults.max_expansion_ratio),
        };
        for (key, value) in [
            ("releases.max_entry_bytes", limits.max_entry_bytes),
            ("releases.max_total_bytes", limits.max_total_bytes),
            ("releases.max_entries", limits.max_entries),
            ("releases.max_expansion_ratio", limits.max_expansion_ratio),
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

        match (
            id,
            cluster,
            data_dir,
            control_socket,
            grpc_listen,
            grpc_advertise,
        ) {
            (
                Ok(id),
                Ok(cluster),
                Ok(data_dir),
                Ok(control_socket),
                Ok(grpc_listen),
                Ok(grpc_advertise),
            ) if problems.is_empty() => Ok(Self {
                id,
                cluster,
                data_dir,
                control_socket,
                control_group: raw.control.group,
                grpc_listen,
                grpc_advertise,
                coordinator,
                services,
                etcd,
                listen_overrides,
                trusted_keys: raw.releases.trusted_keys,
                keep_releases,
                limits,
                tls,
                apps_on_agent_stop,
                metrics_listen,
            }),
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

    /// Records of running app processes, for adoption by the next agent.
    pub fn process_dir(&self) -> PathBuf {
        self.data_dir.join("processes")
    }

    /// Release bundles being fetched from a coordinator (`<hex>.partial`).
    pub fn incoming_dir(&self) -> PathBuf {
        self.data_dir.join("incoming")
    }

    /// Break-glass actions taken while etcd was unreachable, for later upload.
    pub fn local_audit_file(&self) -> PathBuf {
        self.data_dir.join("audit.jsonl")
    }
}

/// toml's own message names the key and shows the line; add the line
/// number in front so it reads like every other problem.
/// `[metrics] listen`: required in the table, an IP:port of its own.
fn metrics_listen(listen: Option<&str>, grpc: Option<&SocketAddr>) -> Result<SocketAddr, String> {
    let listen = listen.ok_or_else(|| {
        "required: the IP:port to serve /metrics on, e.g. listen = \"127.0.0.1:9401\" (or drop [metrics])".to_owned()
    })?;
    let addr = listen
        .parse::<SocketAddr>()
        .map_err(|e| format!("{listen:?} is not an IP:port address ({e})"))?;
    let overlaps = |g: &SocketAddr| {
        g.port() == addr.port()
            && (g.ip() == addr.ip() || g.ip().is_unspecified() || addr.ip().is_unspecified())
    };
    if addr.port() != 0 && grpc.is_some_and(overlaps) {
        return Err(format!(
            "{addr} has the port of grpc.listen; give metrics a port of its own"
        ));
    }
    Ok(addr)
}

fn syntax_message(text: &str, err: &toml::de::Error) -> String {
    let message = err.message();
    match err.span() {
        Some(span) => at_line(text, span, message),
        None => message.to_owned(),
    }
}

const TRUSTED_COORDINATORS_REQUIRED: &str = "must name at least one coordinator identity (a DNS name in a coordinator certificate's subjectAltName, e.g. [\"coordinator.lockstep\"]); without one AgentService would refuse every command";

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
    let not_url = || format!("`{s}` is not an http:// or https:// URL with a host");
    if !(s.starts_with("http://") || s.starts_with("https://")) {
        return Err(not_url());
    }
    let uri: tonic::codegen::http::Uri = s.parse().map_err(|_| not_url())?;
    match uri.host() {
        Some(host) if !host.is_empty() => Ok(()),
        _ => Err(not_url()),
    }
}

/// `host:port` (a name, an IPv4 address or a bracketed IPv6 one), as a
/// coordinator dials it: no scheme, a port, not a wildcard address.
fn host_port(s: &str) -> Result<(), String> {
    let bad = |why: &str| format!("`{s}` is not host:port ({why}), e.g. \"10.0.0.21:7600\"");
    if s.contains("://") {
        return Err(bad(
            "no scheme: the agent's TLS setting decides http or https",
        ));
    }
    let uri: tonic::codegen::http::Uri = format!("http://{s}/")
        .parse()
        .map_err(|_| bad("not a valid address"))?;
    let host = uri.host().unwrap_or_default();
    if host.is_empty() || uri.port_u16().is_none() || uri.path() != "/" {
        return Err(bad("a host and a port, nothing else"));
    }
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    if ip
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        return Err(bad("a wildcard address cannot be dialled"));
    }
    Ok(())
}

/// Prefixes a problem with the line its value is on, as syntax errors are.
fn at_line(text: &str, span: std::ops::Range<usize>, message: &str) -> String {
    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
    format!("line {line}: {message}")
}

/// A list entry given twice would mean two of the same thing (two report
/// streams to one coordinator, say): name the first repeat.
fn unique(items: &[Spanned<String>], text: &str) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    match items.iter().find(|item| !seen.insert(item.get_ref())) {
        Some(repeat) => Err(at_line(
            text,
            repeat.span(),
            &format!("`{}` is listed twice; list each once", repeat.get_ref()),
        )),
        None => Ok(()),
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
        assert!(config.coordinator.is_none());
        assert!(config.services.is_empty());
        assert_eq!(config.apps_on_agent_stop, AppsOnAgentStop::Keep);
    }

    #[test]
    fn apps_on_agent_stop_is_keep_or_stop() {
        let base = "id = \"web-1\"\ncluster = \"eu-1\"\ndata_dir = \"/var/lib/lockstep\"\n";
        let stop = parse(&format!("{base}apps_on_agent_stop = \"stop\"\n")).unwrap();
        assert_eq!(stop.apps_on_agent_stop, AppsOnAgentStop::Stop);
        let err = parse(&format!("{base}apps_on_agent_stop = \"kill\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("apps_on_agent_stop") && err.contains("\"kill\""),
            "{err}"
        );
    }

    #[test]
    fn the_fixture_with_coordinators_loads() {
        let text = include_str!("../tests/fixtures/agent-v2.toml");
        let config = parse(text).unwrap();
        let services: Vec<&str> = config.services.iter().map(ServiceName::as_str).collect();
        assert_eq!(services, ["demo-app", "billing"]);
        assert_eq!(config.grpc_advertise, "web-1.internal:7600");
        let coordinator = config.coordinator.unwrap();
        assert_eq!(
            coordinator.urls,
            [
                "http://127.0.0.1:7400",
                "https://coordinator-2.example:7400"
            ]
        );
        assert_eq!(coordinator.fetch_timeout, Duration::from_secs(90));
    }

    const BASE: &str = "cluster = \"eu-1\"\ndata_dir = \"/d\"\n";

    #[test]
    fn coordinator_urls_take_the_default_fetch_timeout() {
        let config = parse(&format!(
            "{BASE}[coordinator]\nurls = [\"http://10.0.0.1:7400\", \"http://10.0.0.2:7400\"]\n"
        ))
        .unwrap();
        let coordinator = config.coordinator.unwrap();
        assert_eq!(coordinator.urls.len(), 2);
        assert_eq!(coordinator.fetch_timeout, DEFAULT_FETCH_TIMEOUT);
    }

    #[test]
    fn a_bad_coordinator_url_is_named_with_its_key_and_line() {
        let err = parse(&format!(
            "{BASE}[coordinator]\nurls = [\n  \"http://ok:7400\",\n  \"coordinator:7400\",\n]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("coordinator.urls[1]: line 6:"), "{err}");
        assert!(err.contains("`coordinator:7400`"), "{err}");
        assert!(!err.contains("urls[0]"), "{err}");
        for bad in ["http://", "ftp://x:1", "http://a b"] {
            let err = parse(&format!("{BASE}[coordinator]\nurls = [\"{bad}\"]\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("coordinator.urls[0]: line 4:"), "{bad}: {err}");
        }
    }

    #[test]
    fn coordinator_lists_must_be_non_empty_and_unique() {
        for (table, key) in [
            ("urls = []", "coordinator.urls: line 4:"),
            ("fetch_timeout = \"5s\"", "coordinator.urls: required"),
            (
                "urls = [\"http://a:1\", \"http://a:1\"]",
                "coordinator.urls: line 4: `http://a:1` is listed twice",
            ),
            (
                "url = \"http://a:1\"\nurls = [\"http://b:1\"]",
                "coordinator.url: line 4: set `urls` only",
            ),
            (
                "urls = [\"http://a:1\"]\nfetch_timeout = \"soon\"",
                "coordinator.fetch_timeout:",
            ),
            (
                "urls = [\"http://a:1\"]\nfetch_timeout = \"0s\"",
                "coordinator.fetch_timeout: must be greater than 0",
            ),
        ] {
            let err = parse(&format!("{BASE}[coordinator]\n{table}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{table}: expected {key} in: {err}");
        }
    }

    #[test]
    fn an_unknown_coordinator_key_is_named_with_its_line() {
        let err = parse(&format!(
            "{BASE}[coordinator]\nurls = [\"http://a:1\"]\ntimeout = \"5s\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 5"), "{err}");
        assert!(err.contains("timeout"), "{err}");
    }

    #[test]
    fn services_are_validated_as_service_names() {
        let config = parse(&format!("services = [\"demo-app\", \"api2\"]\n{BASE}")).unwrap();
        assert_eq!(config.services.len(), 2);
        let err = parse(&format!(
            "services = [\"demo-app\", \"Demo_App\", \"demo-app\"]\n{BASE}"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("services[1]: line 1:"), "{err}");
        assert!(
            err.contains("`Demo_App` is not a valid service name"),
            "{err}"
        );
        assert!(
            err.contains("services: line 1: `demo-app` is listed twice"),
            "{err}"
        );
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
        // The old one-coordinator key still loads, as a list of one.
        let coordinator = config.coordinator.unwrap();
        assert_eq!(coordinator.urls, ["http://127.0.0.1:7700"]);
        assert_eq!(coordinator.fetch_timeout, DEFAULT_FETCH_TIMEOUT);
        assert!(config.services.is_empty());
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
    fn metrics_are_off_unless_listen_is_set() {
        assert_eq!(parse(BASE).unwrap().metrics_listen, None);
        let on = parse(&format!("{BASE}[metrics]\nlisten = \"127.0.0.1:9401\"\n")).unwrap();
        assert_eq!(on.metrics_listen, Some("127.0.0.1:9401".parse().unwrap()));
    }

    #[test]
    fn a_bad_metrics_table_is_named_by_its_key() {
        for (table, wanted) in [
            ("[metrics]\n", "required"),
            ("[metrics]\nlisten = \"localhost\"\n", "not an IP:port"),
            ("[metrics]\nlisten = \"127.0.0.1:7600\"\n", "grpc.listen"),
        ] {
            let err = parse(&format!("{BASE}{table}")).unwrap_err().to_string();
            assert!(
                err.contains("metrics.listen") && err.contains(wanted),
                "{table}: {err}"
            );
        }
        let err = parse(&format!("{BASE}[metrics]\nlisen = \"127.0.0.1:1\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    /// A CA and an agent certificate signed by it, as PEM files in `dir`.
    fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf = rcgen::CertificateParams::new(vec!["web-1.lockstep".to_owned()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let paths = (
            dir.join("ca.pem"),
            dir.join("agent.pem"),
            dir.join("agent.key"),
        );
        std::fs::write(&paths.0, ca_cert.pem()).unwrap();
        std::fs::write(&paths.1, cert.pem()).unwrap();
        std::fs::write(&paths.2, key.serialize_pem()).unwrap();
        paths
    }

    fn tls_table(files: &(PathBuf, PathBuf, PathBuf), trusted: &str) -> String {
        format!(
            "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n{trusted}\n",
            files.0.display(),
            files.1.display(),
            files.2.display()
        )
    }

    #[test]
    fn tls_loads_its_material_and_trusted_coordinators() {
        let dir = tempfile::tempdir().unwrap();
        let files = tls_files(dir.path());
        let config = parse(&format!(
            "{BASE}[coordinator]\nurls = [\"https://127.0.0.1:7400\"]\n{}",
            tls_table(&files, "trusted_coordinators = [\"Coordinator.Lockstep\"]")
        ))
        .unwrap();
        let tls = config.tls.unwrap();
        assert_eq!(tls.trusted_coordinators, ["coordinator.lockstep"]);
        assert_eq!(tls.material.identity().names(), ["web-1.lockstep"]);
        assert!(tls.viewers.is_empty());
    }

    #[test]
    fn tls_viewers_are_name_patterns() {
        let dir = tempfile::tempdir().unwrap();
        let files = tls_files(dir.path());
        let config = parse(&format!(
            "{BASE}[coordinator]\nurls = [\"https://127.0.0.1:7400\"]\n{}",
            tls_table(
                &files,
                "trusted_coordinators = [\"c.lockstep\"]\nviewers = [\"ops-*\"]"
            )
        ))
        .unwrap();
        assert!(config.tls.unwrap().viewers[0].matches("ops-7"));
        let err = parse(&format!(
            "{BASE}{}",
            tls_table(
                &files,
                "trusted_coordinators = [\"c.lockstep\"]\nviewers = [\"ops team\"]"
            )
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("tls.viewers[0]: name pattern \"ops team\""),
            "{err}"
        );
    }

    #[test]
    fn a_missing_tls_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = tls_files(dir.path());
        files.1 = dir.path().join("missing.pem");
        let err = parse(&format!(
            "{BASE}{}",
            tls_table(&files, "trusted_coordinators = [\"c.lockstep\"]")
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("tls.cert: cannot read "), "{err}");
        assert!(err.contains("missing.pem: No such file"), "{err}");
        let err = parse(&format!(
            "{BASE}[tls]\nca = \"ca.pem\"\ntrusted_coordinators = [\"c\"]\n"
        ))
        .unwrap_err()
        .to_string();
        for key in [
            "tls.ca: `ca.pem` must be an absolute path",
            "tls.cert: required",
            "tls.key: required",
        ] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
    }

    #[test]
    fn tls_without_trusted_coordinators_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = tls_files(dir.path());
        for (trusted, expected) in [
            (
                "trusted_coordinators = []",
                "tls.trusted_coordinators: line 7: must name at least one",
            ),
            (
                "",
                "tls.trusted_coordinators: required: must name at least one",
            ),
        ] {
            let err = parse(&format!("{BASE}{}", tls_table(&files, trusted)))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected),
                "{trusted}: expected {expected} in: {err}"
            );
        }
    }

    #[test]
    fn tls_wants_https_coordinators() {
        let dir = tempfile::tempdir().unwrap();
        let files = tls_files(dir.path());
        let err = parse(&format!(
            "{BASE}[coordinator]\nurls = [\"http://127.0.0.1:7400\"]\n{}",
            tls_table(&files, "trusted_coordinators = [\"c\"]")
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("coordinator.urls[0]: `http://127.0.0.1:7400` is plain http"),
            "{err}"
        );
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

    #[test]
    fn coordinators_dial_the_advertised_address() {
        let base = "cluster = \"eu-1\"\ndata_dir = \"/d\"\n";
        let config = parse(&format!("{base}[grpc]\nlisten = \"127.0.0.1:7600\"\n")).unwrap();
        assert_eq!(config.grpc_advertise, "127.0.0.1:7600");
        let config = parse(&format!(
            "{base}[grpc]\nlisten = \"0.0.0.0:7600\"\nadvertise = \"web-1.internal:7600\"\n[coordinator]\nurls = [\"http://c:7400\"]\n"
        ))
        .unwrap();
        assert_eq!(config.grpc_advertise, "web-1.internal:7600");
        let config = parse(&format!("{base}[grpc]\nlisten = \"0.0.0.0:7600\"\n")).unwrap();
        assert_eq!(
            config.grpc_advertise,
            format!("{}:7600", hostname().unwrap())
        );
        for bad in ["http://web-1:7600", "web-1", "0.0.0.0:7600", "web-1:7600/x"] {
            let err = parse(&format!("{base}[grpc]\nadvertise = \"{bad}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("grpc.advertise: "), "{bad}: {err}");
        }
    }
}
