//! `coordinator.toml`, parsed strictly into a `CoordinatorConfig` that
//! cannot be invalid.
//!
//! ```toml
//! listen = "127.0.0.1:7400"                  # CoordinatorService
//! advertise_url = "http://10.0.0.5:7400"     # what followers, agents and the CLI are told; default http://<listen>
//! store_dir = "/var/lib/lockstep-coordinator/releases"
//! status_interval = "2s"                     # how often agents send a full status snapshot (longer above 1,000 agents: at most 500 a second in all)
//! check_timeout = "60s"                      # default timeout of a synthetic check
//!
//! [etcd]
//! endpoints = ["http://127.0.0.1:2379"]
//! lease_ttl = "10s"                          # leadership and deployment locks die with it
//! journal_deadline = "30s"                   # a deployment's journal write is retried this long
//! ca = "/etc/lockstep/etcd/ca.pem"           # optional: TLS to etcd (then https:// endpoints); with cert and key
//! cert = "/etc/lockstep/etcd/coordinator.pem"
//! key = "/etc/lockstep/etcd/coordinator.key"
//! user = "lockstep-coordinator"              # optional: etcd authentication, with password_file (mode 600)
//! password_file = "/etc/lockstep/etcd/coordinator.password"
//!
//! [releases]
//! trusted_keys = ["/etc/lockstep/release.pub"]   # empty: unsigned bundles accepted
//! max_bundle_bytes = 4294967296              # a push larger than this is cut off (4 GiB)
//! max_concurrent_pushes = 4                  # more at once are refused (RESOURCE_EXHAUSTED)
//! push_idle_timeout = "60s"                  # a push that sends nothing this long is abandoned
//!
//! [history]
//! retention = "720h"                         # finished deployments older than this keep only their summary
//! keep = 20                                  # … except each service's newest 20, kept whole
//!
//! [tls]                                      # optional: mTLS on every gRPC hop
//! ca = "/etc/lockstep/tls/ca.pem"            # signs agents', operators' and coordinators' certs
//! cert = "/etc/lockstep/tls/coordinator.pem" # this coordinator: server and client identity
//! key = "/etc/lockstep/tls/coordinator.key"
//!
//! [[checks]]                                 # the commands strategies may run, by name
//! name = "http-smoke"
//! argv = ["/usr/bin/curl", "-fsS", "{url}"]   # no shell; "{param}" is a whole element
//! params = ["url"]                           # a strategy must give each, nothing else
//! timeout = "30s"                            # default check_timeout
//! env = { NO_PROXY = "*" }                   # besides PATH and LOCKSTEP_*
//!
//! [[roles]]                                  # with [tls]: who may do what (required then)
//! identities = ["ops-*", "alice"]            # certificate names (DNS SANs, else CN); `*` globs
//! role = "operator"                          # operator | viewer | agent
//!
//! insecure_operators = false                 # without [tls]: operator calls from any address, not only loopback
//!
//! [metrics]                                  # optional: off unless set
//! listen = "127.0.0.1:9400"                  # GET /metrics (Prometheus), /healthz, /readyz
//!
//! [web]                                      # optional: off unless set; the web view (actions: see web/actions.rs)
//! listen = "127.0.0.1:9410"                  # with [tls]: loopback only (it checks no certificate)
//!
//! [prometheus]                               # optional: what analysis gates query
//! url = "http://127.0.0.1:9090"              # http[s]://host[:port][/prefix]
//! ca_file = "/etc/lockstep/prom-ca.pem"      # https only: trust this CA instead of the system's
//!
//! [[notify]]                                 # webhooks (at most 16), see notify.rs
//! name = "ops-chat"
//! url = "https://hooks.example.com/lockstep"  # http:// or https:// (port defaults to 80/443)
//! ca_file = "/etc/lockstep/hooks-ca.pem"     # https only: trust this CA instead of the system's
//! events = ["rolled_back", "failed", "halted"]  # default: succeeded, rolled_back, failed, aborted, halted
//! secret_file = "/etc/lockstep/notify.secret"   # HMAC-SHA256 key; not readable by others
//! format = "json"                            # json | slack ({"text": "..."})
//! timeout = "5s"                             # one POST
//! retry_for = "10m"                          # retried with backoff this long, then given up
//! ```
//!
//! With `[tls]` the gRPC server requires a client certificate chained to
//! `ca` (agents' reports and fetches, operator calls), agents are dialled
//! over https with `cert`, and `advertise_url` is `https://`. Without it
//! the coordinator speaks plain-text gRPC and says so in its log at start:
//! fine for a demo on one host, not for a fleet; operator calls are then
//! answered only from loopback unless `insecure_operators = true`.
//!
//! Must never: accept a key it does not know, or report only the first of
//! several problems.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cli::chain;
use serde::Deserialize;

use crate::checks::{ArgvElement, CheckCatalog, NamedCheck};
use crate::http_client::Transport;
use crate::notify::{BodyFormat, Secret, Topic, Webhook, WebhookUrl};
use crate::push::PushLimits;
use crate::roles::{AccessPolicy, Role, RoleRule};

/// Default gRPC address: loopback, so exposing it is an explicit choice.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7400";
/// Leadership and deployment locks live on a lease of this TTL: a dead
/// leader is replaced, and its locks freed, within it.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// Agents send a full snapshot this often besides their change events.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(2);
/// A synthetic check that runs longer than this fails.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// A valid coordinator configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorConfig {
    pub listen: SocketAddr,
    /// The URL others use to reach this coordinator (election value).
    pub advertise_url: String,
    pub store_dir: PathBuf,
    pub status_interval: Duration,
    pub check_timeout: Duration,
    pub etcd_endpoints: Vec<String>,
    pub lease_ttl: leases::Ttl,
    /// `[etcd]` ca/cert/key and user/password_file.
    pub etcd_access: leases::EtcdAccess,
    /// How long a failed journal write is retried before the driver stops
    /// and the deployment is resumed from the journal.
    pub journal_deadline: Duration,
    pub trusted_keys: Vec<PathBuf>,
    /// Mutual TLS, read and checked at load; `None`: plain text.
    pub tls: Option<tls::TlsMaterial>,
    /// `[[roles]]` and `insecure_operators`: who may call what.
    pub access: AccessPolicy,
    /// `[[checks]]`: the only commands a strategy can have run.
    pub checks: CheckCatalog,
    /// `[metrics] listen`: where /metrics, /healthz and /readyz are
    /// served; `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// `[web] listen`: where the web view is served (loopback only, and
    /// read-only, when `[tls]` is on); `None`: not served.
    pub web_listen: Option<SocketAddr>,
    /// `[prometheus] url`: the only Prometheus analysis gates query;
    /// `None`: every analysis is inconclusive.
    pub prometheus: Option<crate::analysis::PrometheusEndpoint>,
    /// `[[notify]]`: the webhooks deployment events are sent to.
    pub notify: Vec<Webhook>,
    /// `[releases]` max_bundle_bytes, max_concurrent_pushes, push_idle_timeout.
    pub push: PushLimits,
    /// `[history]`: when finished deployments are pruned to their summary.
    pub history: crate::journal::Retention,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path} has problems:\n{}", problems.join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    advertise_url: Option<String>,
    store_dir: Option<PathBuf>,
    status_interval: Option<String>,
    check_timeout: Option<String>,
    etcd: Option<RawEtcd>,
    #[serde(default)]
    releases: RawReleases,
    tls: Option<RawTls>,
    insecure_operators: Option<bool>,
    #[serde(default)]
    roles: Vec<RawRole>,
    #[serde(default)]
    checks: Vec<RawNamedCheck>,
    metrics: Option<RawMetrics>,
    web: Option<RawWeb>,
    prometheus: Option<RawPrometheus>,
    #[serde(default)]
    notify: Vec<RawNotify>,
    history: Option<RawHistory>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHistory {
    retention: Option<String>,
    keep: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    name: String,
    url: String,
    events: Option<Vec<String>>,
    secret_file: PathBuf,
    ca_file: Option<PathBuf>,
    format: Option<String>,
    timeout: Option<String>,
    retry_for: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrometheus {
    url: String,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNamedCheck {
    name: String,
    argv: Vec<String>,
    #[serde(default)]
    params: Vec<String>,
    timeout: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    identities: Vec<String>,
    role: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcd {
    endpoints: Vec<String>,
    lease_ttl: Option<String>,
    journal_deadline: Option<String>,
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
    max_bundle_bytes: Option<u64>,
    max_concurrent_pushes: Option<usize>,
    push_idle_timeout: Option<String>,
}

impl CoordinatorConfig {
    /// Reads and validates `path`. Blocking.
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
            message: err.to_string().trim_end().to_owned(),
        })?;
        let mut problems = Vec::new();
        let mut check = |key: &str, result: Result<(), String>| {
            if let Err(message) = result {
                problems.push(format!("  {key}: {message}"));
            }
        };
        let listen = raw
            .listen
            .as_deref()
            .unwrap_or(DEFAULT_LISTEN)
            .parse::<SocketAddr>()
            .map_err(|e| format!("not an IP:port address ({e})"));
        check("listen", listen.as_ref().map(drop).map_err(Clone::clone));
        let tls_on = raw.tls.is_some();
        let scheme = if tls_on { "https" } else { "http" };
        let advertise_url = match (&raw.advertise_url, &listen) {
            (Some(url), _) => http_url(url).and_then(|()| {
                if url.starts_with(&format!("{scheme}://")) {
                    Ok(url.trim_end_matches('/').to_owned())
                } else if scheme == "https" {
                    Err(format!("{url:?} is plain http, but [tls] is set: use https://"))
                } else {
                    Err(format!("{url:?} is https, but there is no [tls] table: add one, or use http:// for a plain-text demo"))
                }
            }),
            (None, Ok(addr)) if addr.ip().is_unspecified() => Err(
                "required when listen is a wildcard address: the URL other coordinators, agents and the CLI should use".to_owned(),
            ),
            (None, Ok(addr)) => Ok(format!("{scheme}://{addr}")),
            (None, Err(_)) => Ok(String::new()),
        };
        check(
            "advertise_url",
            advertise_url.as_ref().map(drop).map_err(Clone::clone),
        );
        let store_dir = raw
            .store_dir
            .ok_or_else(|| "required: where pushed release bundles are kept".to_owned())
            .and_then(|d| absolute(&d));
        check(
            "store_dir",
            store_dir.as_ref().map(drop).map_err(Clone::clone),
        );
        let status_interval = duration(raw.status_interval.as_deref(), DEFAULT_STATUS_INTERVAL);
        check(
            "status_interval",
            status_interval.as_ref().map(drop).map_err(Clone::clone),
        );
        let check_timeout = duration(raw.check_timeout.as_deref(), DEFAULT_CHECK_TIMEOUT);
        check(
            "check_timeout",
            check_timeout.as_ref().map(drop).map_err(Clone::clone),
        );
        let mut journal_deadline = Ok(crate::journal::DEFAULT_WRITE_DEADLINE);
        let mut etcd_access = Some(leases::EtcdAccess::default());
        let (etcd_endpoints, lease_ttl) = match raw.etcd {
            None => {
                check(
                    "etcd",
                    Err("required: the coordinator keeps every decision in etcd; add [etcd] endpoints = [\"http://127.0.0.1:2379\"]".to_owned()),
                );
                (Vec::new(), Err(String::new()))
            }
            Some(etcd) => {
                if etcd.endpoints.is_empty() {
                    check(
                        "etcd.endpoints",
                        Err("must name at least one endpoint".to_owned()),
                    );
                }
                let tls = etcd.ca.is_some() || etcd.cert.is_some() || etcd.key.is_some();
                for (i, endpoint) in etcd.endpoints.iter().enumerate() {
                    // What `leases::Etcd::connect_with` accepts, so the
                    // daemon cannot refuse what check-config calls valid.
                    check(
                        &format!("etcd.endpoints[{i}]"),
                        leases::check_endpoint(endpoint, tls).map_err(|e| e.to_string()),
                    );
                }
                etcd_access = leases::EtcdAccess::from_config(
                    leases::EtcdAccessKeys {
                        ca: etcd.ca,
                        cert: etcd.cert,
                        key: etcd.key,
                        user: etcd.user,
                        password_file: etcd.password_file,
                    },
                    |key, message| check(key, Err(message)),
                );
                let ttl = duration(etcd.lease_ttl.as_deref(), DEFAULT_LEASE_TTL).and_then(|ttl| {
                    if ttl.subsec_nanos() != 0 {
                        return Err("must be whole seconds".to_owned());
                    }
                    leases::Ttl::from_secs(ttl.as_secs()).map_err(|e| e.to_string())
                });
                check(
                    "etcd.lease_ttl",
                    ttl.as_ref().map(drop).map_err(Clone::clone),
                );
                journal_deadline = duration(
                    etcd.journal_deadline.as_deref(),
                    crate::journal::DEFAULT_WRITE_DEADLINE,
                );
                check(
                    "etcd.journal_deadline",
                    journal_deadline.as_ref().map(drop).map_err(Clone::clone),
                );
                (etcd.endpoints, ttl)
            }
        };
        for (i, key) in raw.releases.trusted_keys.iter().enumerate() {
            check(
                &format!("releases.trusted_keys[{i}]"),
                absolute(key).map(drop),
            );
        }
        if raw.releases.trusted_keys.iter().all(|k| k.is_absolute()) {
            // The daemon loads them at start: a key that does not load is
            // a problem here too.
            if let Err(err) = release::TrustedKeys::load(&raw.releases.trusted_keys) {
                check("releases.trusted_keys", Err(chain(&err)));
            }
        }
        let push = push_limits(&raw.releases, &mut check);
        let history = retention(raw.history.as_ref(), &mut check);
        let default_timeout = check_timeout.as_ref().map_or(DEFAULT_CHECK_TIMEOUT, |t| *t);
        let checks = named_checks(&raw.checks, default_timeout, &mut check);
        let has_tls = raw.tls.is_some();
        let access = AccessPolicy {
            rules: role_rules(&raw.roles, has_tls, &mut check),
            insecure_operators: raw.insecure_operators.unwrap_or(false),
        };
        let tls = raw.tls.and_then(|t| {
            let paths = tls::TlsPaths::from_config(
                tls::TlsFileKeys {
                    ca: t.ca,
                    cert: t.cert,
                    key: t.key,
                },
                "this coordinator",
                "agents', operators' and coordinators'",
                |key, message| check(key, Err(message)),
            )?;
            tls::TlsMaterial::load(&paths)
                .map_err(|e| check("tls", Err(e.to_string())))
                .ok()
        });
        let metrics_listen = raw
            .metrics
            .and_then(|m| metrics_listen(&m.listen, listen.as_ref().ok(), &mut check));
        let web_listen = raw.web.and_then(|w| {
            let taken = [listen.as_ref().ok().copied(), metrics_listen];
            web_listen(&w.listen, &taken, tls_on, &mut check)
        });
        let prometheus = raw.prometheus.and_then(|p| {
            use crate::analysis::{EndpointError, PrometheusEndpoint};
            PrometheusEndpoint::parse(&p.url, p.ca_file.as_deref())
                .map_err(|e| match e {
                    EndpointError::Url(e) => check("prometheus.url", Err(e)),
                    EndpointError::Trust(e) => check("prometheus.ca_file", Err(chain(&e))),
                })
                .ok()
        });
        let notify = webhooks(&raw.notify, &mut check);
        match (
            listen,
            advertise_url,
            store_dir,
            status_interval,
            check_timeout,
            lease_ttl,
            journal_deadline,
        ) {
            (
                Ok(listen),
                Ok(advertise_url),
                Ok(store_dir),
                Ok(status_interval),
                Ok(check_timeout),
                Ok(lease_ttl),
                Ok(journal_deadline),
            ) if problems.is_empty() => Ok(Self {
                listen,
                advertise_url,
                store_dir,
                status_interval,
                check_timeout,
                etcd_endpoints,
                lease_ttl,
                etcd_access: etcd_access.unwrap_or_default(),
                journal_deadline,
                trusted_keys: raw.releases.trusted_keys,
                tls,
                access,
                checks,
                metrics_listen,
                web_listen,
                prometheus,
                notify,
                push,
                history,
            }),
            _ => Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            }),
        }
    }
}

/// Most finished deployments of one service `[history] keep` may ask to
/// keep whole.
const MAX_KEEP: usize = 10_000;

/// `[history]`, defaulted and checked.
fn retention(
    raw: Option<&RawHistory>,
    check: &mut impl FnMut(&str, Result<(), String>),
) -> crate::journal::Retention {
    let mut retention = crate::journal::Retention::default();
    let Some(raw) = raw else {
        return retention;
    };
    match duration(raw.retention.as_deref(), retention.after) {
        Ok(after) => retention.after = after,
        Err(message) => check("history.retention", Err(message)),
    }
    match raw.keep {
        Some(n) if n <= MAX_KEEP => retention.keep = n,
        Some(n) => check("history.keep", Err(format!("{n}: at most {MAX_KEEP}"))),
        None => {}
    }
    retention
}

/// Most pushes one coordinator receives at once: each holds a file open
/// and ends in a full unpack.
const MAX_CONCURRENT_PUSHES: usize = 64;

/// `[releases]`' push limits, each defaulted and checked.
fn push_limits(raw: &RawReleases, check: &mut impl FnMut(&str, Result<(), String>)) -> PushLimits {
    let mut limits = PushLimits::default();
    match raw.max_bundle_bytes {
        Some(0) => check(
            "releases.max_bundle_bytes",
            Err("must be more than zero".to_owned()),
        ),
        Some(n) => limits.max_bundle_bytes = n,
        None => {}
    }
    match raw.max_concurrent_pushes {
        Some(n) if (1..=MAX_CONCURRENT_PUSHES).contains(&n) => limits.max_concurrent = n,
        Some(n) => check(
            "releases.max_concurrent_pushes",
            Err(format!("{n}: must be 1 to {MAX_CONCURRENT_PUSHES}")),
        ),
        None => {}
    }
    match duration(raw.push_idle_timeout.as_deref(), limits.idle_timeout) {
        Ok(idle) => limits.idle_timeout = idle,
        Err(message) => check("releases.push_idle_timeout", Err(message)),
    }
    limits
}

/// `[metrics] listen`: an IP:port other than the gRPC `listen`.
fn metrics_listen(
    raw: &str,
    grpc: Option<&SocketAddr>,
    check: &mut impl FnMut(&str, Result<(), String>),
) -> Option<SocketAddr> {
    match raw.parse::<SocketAddr>() {
        Err(e) => check(
            "metrics.listen",
            Err(format!("{raw:?} is not an IP:port address ({e})")),
        ),
        Ok(addr) if Some(&addr) == grpc => check(
            "metrics.listen",
            Err(format!(
                "{addr} is also listen (gRPC): give metrics a port of its own, e.g. 9400"
            )),
        ),
        Ok(addr) => return Some(addr),
    }
    None
}

/// `[web] listen`: an IP:port of its own; with `[tls]`, loopback only.
/// The web view checks no client certificate, so under mTLS it may be
/// reached only from the coordinator's host (an SSH tunnel, or a proxy
/// that authenticates); it is read-only either way.
fn web_listen(
    raw: &str,
    taken: &[Option<SocketAddr>],
    tls: bool,
    check: &mut impl FnMut(&str, Result<(), String>),
) -> Option<SocketAddr> {
    match raw.parse::<SocketAddr>() {
        Err(e) => check(
            "web.listen",
            Err(format!("{raw:?} is not an IP:port address ({e})")),
        ),
        Ok(addr) if taken.contains(&Some(addr)) => check(
            "web.listen",
            Err(format!(
                "{addr} is already listen or metrics.listen: give the web view a port of its own, e.g. 9410"
            )),
        ),
        Ok(addr) if tls && !addr.ip().is_loopback() => check(
            "web.listen",
            Err(format!(
                "{addr} is not a loopback address: with [tls] the web view checks no client certificate, so it listens on 127.0.0.1 or ::1 only (reach it through an SSH tunnel or an authenticating proxy)"
            )),
        ),
        Ok(addr) => return Some(addr),
    }
    None
}

/// `[[checks]]`, checked: unique names, an absolute program, placeholders
/// only for declared params and every declared param used.
fn named_checks(
    raw: &[RawNamedCheck],
    default_timeout: Duration,
    check: &mut impl FnMut(&str, Result<(), String>),
) -> CheckCatalog {
    let mut seen = BTreeSet::new();
    let mut checks = Vec::new();
    for (i, entry) in raw.iter().enumerate() {
        let key = |k: &str| format!("checks[{i}].{k}");
        if !crate::checks::is_valid_name(&entry.name) {
            check(
                &key("name"),
                Err(format!(
                    "{:?}: use 1 to 64 letters, digits, '-' or '_'",
                    entry.name
                )),
            );
        } else if !seen.insert(entry.name.clone()) {
            check(
                &key("name"),
                Err(format!("{:?} is defined twice", entry.name)),
            );
        }
        let mut params = BTreeSet::new();
        for (j, param) in entry.params.iter().enumerate() {
            if !crate::checks::is_valid_name(param) || !params.insert(param.clone()) {
                check(
                    &format!("checks[{i}].params[{j}]"),
                    Err(format!(
                        "{param:?}: a parameter name is 1 to 64 letters, digits, '-' or '_', declared once"
                    )),
                );
            }
        }
        let (argv, used) = check_argv(i, &entry.argv, &params, check);
        for unused in params.difference(&used) {
            check(
                &key("params"),
                Err(format!(
                    "{unused:?} is declared but argv has no {{{unused}}} element"
                )),
            );
        }
        let timeout = duration(entry.timeout.as_deref(), default_timeout);
        check(
            &key("timeout"),
            timeout.as_ref().map(drop).map_err(Clone::clone),
        );
        checks.push(NamedCheck {
            name: entry.name.clone(),
            argv,
            timeout: timeout.unwrap_or(default_timeout),
            env: entry.env.clone(),
            params,
        });
    }
    CheckCatalog::new(checks)
}

/// A `[[checks]]` entry's argv: an absolute program, then literals and
/// `{param}` elements naming declared params; also the params it uses.
fn check_argv(
    i: usize,
    raw: &[String],
    params: &BTreeSet<String>,
    check: &mut impl FnMut(&str, Result<(), String>),
) -> (Vec<ArgvElement>, BTreeSet<String>) {
    let key = format!("checks[{i}].argv");
    let mut argv = Vec::new();
    let mut used = BTreeSet::new();
    for (j, element) in raw.iter().enumerate() {
        match crate::checks::placeholder(element) {
            Ok(Some(param)) if j == 0 => check(
                &key,
                Err(format!("the program cannot be a parameter ({{{param}}})")),
            ),
            Ok(Some(param)) if params.contains(param) => {
                used.insert(param.to_owned());
                argv.push(ArgvElement::Param(param.to_owned()));
            }
            Ok(Some(param)) => check(
                &format!("{key}[{j}]"),
                Err(format!("{{{param}}} is not in params: declare it there")),
            ),
            Ok(None) => argv.push(ArgvElement::Literal(element.clone())),
            Err(why) => check(&format!("{key}[{j}]"), Err(why)),
        }
    }
    match raw.first() {
        None => check(
            &key,
            Err("must name a program, e.g. [\"/usr/bin/curl\", \"-fsS\", \"{url}\"]".to_owned()),
        ),
        Some(program) if !Path::new(program).is_absolute() => check(
            &key,
            Err(format!("the program {program:?} must be an absolute path")),
        ),
        Some(_) => {}
    }
    (argv, used)
}

/// `[[roles]]`, checked: every role known, every pattern valid, and roles
/// given exactly when there is a `[tls]` table (identities come from
/// certificates).
fn role_rules(
    raw: &[RawRole],
    has_tls: bool,
    check: &mut impl FnMut(&str, Result<(), String>),
) -> Vec<RoleRule> {
    if has_tls && raw.is_empty() {
        check(
            "roles",
            Err("required with [tls]: map certificate names to roles, e.g. [[roles]] identities = [\"ops-*\"] role = \"operator\" (also viewer, agent; coordinators mirroring releases need agent)".to_owned()),
        );
    }
    if !has_tls && !raw.is_empty() {
        check(
            "roles",
            Err("roles name certificate identities, and there is no [tls] table: add [tls], or remove [[roles]] (without TLS, operator calls come from loopback, or anywhere with insecure_operators = true)".to_owned()),
        );
    }
    let mut rules = Vec::new();
    for (i, rule) in raw.iter().enumerate() {
        let role = Role::parse(&rule.role);
        if role.is_none() {
            check(
                &format!("roles[{i}].role"),
                Err(format!(
                    "{:?} is not a role: use \"operator\", \"viewer\" or \"agent\"",
                    rule.role
                )),
            );
        }
        if rule.identities.is_empty() {
            check(
                &format!("roles[{i}].identities"),
                Err("must name at least one identity or pattern".to_owned()),
            );
        }
        let mut identities = Vec::new();
        for (j, text) in rule.identities.iter().enumerate() {
            match tls::NamePattern::parse(text) {
                Ok(pattern) => identities.push(pattern),
                Err(e) => check(&format!("roles[{i}].identities[{j}]"), Err(e.to_string())),
            }
        }
        if let Some(role) = role {
            rules.push(RoleRule { identities, role });
        }
    }
    rules
}

/// `[[notify]]`: each table checked whole, every problem named.
fn webhooks(raw: &[RawNotify], check: &mut impl FnMut(&str, Result<(), String>)) -> Vec<Webhook> {
    use crate::notify::{DEFAULT_RETRY_FOR, DEFAULT_TIMEOUT, MAX_WEBHOOKS};
    if raw.len() > MAX_WEBHOOKS {
        check(
            "notify",
            Err(format!("{} webhooks; at most {MAX_WEBHOOKS}", raw.len())),
        );
    }
    let mut names = BTreeSet::new();
    let mut webhooks = Vec::new();
    for (i, n) in raw.iter().enumerate() {
        let key = |field: &str| format!("notify[{i}].{field}");
        let name_ok = !n.name.is_empty()
            && n.name.len() <= 63
            && n.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            check(
                &key("name"),
                Err(format!("{:?}: 1 to 63 of a-z, A-Z, 0-9, - and _", n.name)),
            );
        } else if !names.insert(n.name.as_str()) {
            check(&key("name"), Err(format!("{:?} is used twice", n.name)));
        }
        let url = WebhookUrl::parse(&n.url)
            .map_err(|e| check(&key("url"), Err(e)))
            .ok();
        let transport = url.as_ref().and_then(|url| {
            Transport::for_origin(url.origin(), n.ca_file.as_deref())
                .map_err(|e| check(&key("ca_file"), Err(chain(&e))))
                .ok()
        });
        let topics = webhook_topics(n.events.as_deref(), &key("events"), check);
        let secret = absolute(&n.secret_file)
            .and_then(|p| Secret::load(&p))
            .map_err(|e| check(&key("secret_file"), Err(e)))
            .ok();
        let format = match n.format.as_deref() {
            None | Some("json") => Some(BodyFormat::Json),
            Some("slack") => Some(BodyFormat::Slack),
            Some(other) => {
                check(&key("format"), Err(format!("{other:?}: json or slack")));
                None
            }
        };
        let timeout = duration(n.timeout.as_deref(), DEFAULT_TIMEOUT)
            .map_err(|e| check(&key("timeout"), Err(e)))
            .ok();
        let retry_for = duration(n.retry_for.as_deref(), DEFAULT_RETRY_FOR)
            .map_err(|e| check(&key("retry_for"), Err(e)))
            .ok();
        if let (
            true,
            Some(url),
            Some(transport),
            Some(topics),
            Some(secret),
            Some(format),
            Some(timeout),
            Some(retry_for),
        ) = (
            name_ok, url, transport, topics, secret, format, timeout, retry_for,
        ) {
            webhooks.push(Webhook {
                name: n.name.clone(),
                url,
                transport,
                topics,
                secret,
                format,
                timeout,
                retry_for,
            });
        }
    }
    webhooks
}

/// `events` of a `[[notify]]` table: the default when left out; each
/// name known, at least one.
fn webhook_topics(
    events: Option<&[String]>,
    key: &str,
    check: &mut impl FnMut(&str, Result<(), String>),
) -> Option<BTreeSet<Topic>> {
    let Some(events) = events else {
        return Some(Topic::DEFAULT.into_iter().collect());
    };
    let mut topics = BTreeSet::new();
    for e in events {
        match Topic::parse(e) {
            Some(t) => drop(topics.insert(t)),
            None => check(
                key,
                Err(format!(
                    "unknown event {e:?}; known: {}",
                    Topic::ALL.map(Topic::label).join(", ")
                )),
            ),
        }
    }
    if events.is_empty() {
        check(
            key,
            Err("empty: name at least one event, or leave it out for the default".to_owned()),
        );
    }
    (topics.len() == events.len()).then_some(topics)
}

fn http_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} must start with http:// or https://"))?;
    if rest.trim_end_matches('/').is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf, String> {
    if path.is_absolute() {
        Ok(path.to_owned())
    } else {
        Err(format!("{} must be an absolute path", path.display()))
    }
}

fn duration(value: Option<&str>, default: Duration) -> Result<Duration, String> {
    match value {
        None => Ok(default),
        Some(text) => match release::manifest::parse_duration(text) {
            Ok(d) if d.is_zero() => Err("must be more than zero".to_owned()),
            other => other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CoordinatorConfig, ConfigError> {
        CoordinatorConfig::parse(text, Path::new("coordinator.toml"))
    }

    #[test]
    fn a_minimal_config_takes_the_defaults() {
        let config =
            parse("store_dir = \"/var/lib/lc\"\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n")
                .unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.advertise_url, "http://127.0.0.1:7400");
        assert_eq!(config.lease_ttl.as_duration(), DEFAULT_LEASE_TTL);
        assert_eq!(
            config.journal_deadline,
            crate::journal::DEFAULT_WRITE_DEADLINE
        );
        assert_eq!(config.status_interval, DEFAULT_STATUS_INTERVAL);
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let err =
            parse("listen = \"0.0.0.0:7400\"\nstore_dir = \"rel\"\nstatus_interval = \"0s\"\n")
                .unwrap_err()
                .to_string();
        for key in ["advertise_url", "store_dir", "status_interval", "etcd:"] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
    }

    const MINIMAL: &str =
        "store_dir = \"/var/lib/lc\"\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n";

    #[test]
    fn the_prometheus_url_is_optional_and_checked() {
        assert_eq!(parse(MINIMAL).unwrap().prometheus, None);
        let config = parse(&format!(
            "{MINIMAL}[prometheus]\nurl = \"http://127.0.0.1:9090\"\n"
        ))
        .unwrap();
        assert_eq!(
            config.prometheus.map(|p| p.to_string()).as_deref(),
            Some("http://127.0.0.1:9090")
        );
        let err = parse(&format!("{MINIMAL}[prometheus]\nurl = \"prom:9090\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("prometheus.url: \"prom:9090\": must start with http:// or https://"),
            "{err}"
        );
    }

    /// #16: https to Prometheus, trusting a private CA (`ca_file`); a
    /// `ca_file` that is not PEM, or given for plain http, is named.
    #[test]
    fn the_prometheus_url_may_be_https_with_a_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        tls_table(dir.path(), "coordinator.pem");
        let ca = dir.path().join("ca.pem");
        let config = parse(&format!(
            "{MINIMAL}[prometheus]\nurl = \"https://prom.example:9090/p\"\nca_file = {ca:?}\n"
        ))
        .unwrap();
        assert_eq!(
            config.prometheus.map(|p| p.to_string()).as_deref(),
            Some("https://prom.example:9090/p")
        );
        let key = dir.path().join("coordinator.key");
        let err = parse(&format!(
            "{MINIMAL}[prometheus]\nurl = \"https://prom:9090\"\nca_file = {key:?}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(&format!("prometheus.ca_file: ca_file {}", key.display()))
                && err.contains("no PEM certificate"),
            "{err}"
        );
        let err = parse(&format!(
            "{MINIMAL}[prometheus]\nurl = \"http://prom:9090\"\nca_file = {ca:?}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("prometheus.ca_file: ca_file is only for https://"),
            "{err}"
        );
    }

    /// A CA and a coordinator certificate signed by it, as PEM files.
    fn tls_table(dir: &Path, cert_name: &str) -> String {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf = rcgen::CertificateParams::new(vec!["coordinator.lockstep".to_owned()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("coordinator.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("coordinator.key"), key.serialize_pem()).unwrap();
        format!(
            "[tls]\nca = \"{dir}/ca.pem\"\ncert = \"{dir}/{cert_name}\"\nkey = \"{dir}/coordinator.key\"\n",
            dir = dir.display()
        )
    }

    #[test]
    fn tls_loads_and_makes_the_default_advertise_url_https() {
        let dir = tempfile::tempdir().unwrap();
        let config = parse(&format!(
            "{MINIMAL}{}{ROLES}",
            tls_table(dir.path(), "coordinator.pem")
        ))
        .unwrap();
        assert_eq!(config.advertise_url, "https://127.0.0.1:7400");
        assert_eq!(
            config.tls.unwrap().identity().names(),
            ["coordinator.lockstep"]
        );
    }

    #[test]
    fn a_missing_tls_file_and_a_mismatched_scheme_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = parse(&format!(
            "advertise_url = \"http://10.0.0.1:7400\"\n{MINIMAL}{}",
            tls_table(dir.path(), "missing.pem")
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("tls.cert: cannot read "), "{err}");
        assert!(err.contains("missing.pem: No such file"), "{err}");
        assert!(
            err.contains("advertise_url: \"http://10.0.0.1:7400\" is plain http"),
            "{err}"
        );
        let err = parse(&format!("{MINIMAL}[tls]\nca = \"/ca.pem\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tls.cert: required") && err.contains("tls.key: required"),
            "{err}"
        );
        let err = parse(&format!("advertise_url = \"https://c:7400\"\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is https, but there is no [tls] table"),
            "{err}"
        );
    }

    const ROLES: &str = "[[roles]]\nidentities = [\"ops-*\", \"alice\"]\nrole = \"operator\"\n[[roles]]\nidentities = [\"*.agents.lockstep\"]\nrole = \"agent\"\n";

    #[test]
    fn roles_map_certificate_names() {
        let dir = tempfile::tempdir().unwrap();
        let config = parse(&format!(
            "insecure_operators = true\n{MINIMAL}{}{ROLES}",
            tls_table(dir.path(), "coordinator.pem")
        ))
        .unwrap();
        assert!(config.access.insecure_operators);
        assert_eq!(config.access.rules.len(), 2);
        assert_eq!(config.access.rules[0].role, Role::Operator);
        assert!(config.access.rules[0].identities[0].matches("ops-1"));
        assert!(!parse(MINIMAL).unwrap().access.insecure_operators);
    }

    #[test]
    fn roles_and_tls_go_together_and_bad_roles_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = parse(&format!(
            "{MINIMAL}{}",
            tls_table(dir.path(), "coordinator.pem")
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("roles: required with [tls]"), "{err}");
        let err = parse(&format!("{MINIMAL}{ROLES}")).unwrap_err().to_string();
        assert!(err.contains("there is no [tls] table"), "{err}");
        let err = parse(&format!(
            "{MINIMAL}{}[[roles]]\nidentities = [\"a b\"]\nrole = \"admin\"\n[[roles]]\nidentities = []\nrole = \"viewer\"\n",
            tls_table(dir.path(), "coordinator.pem")
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("roles[0].role: \"admin\" is not a role"),
            "{err}"
        );
        assert!(
            err.contains("roles[0].identities[0]: name pattern \"a b\""),
            "{err}"
        );
        assert!(
            err.contains("roles[1].identities: must name at least one"),
            "{err}"
        );
    }

    #[test]
    fn named_checks_are_parsed_with_their_params_and_the_default_timeout() {
        let config = parse(&format!(
            "check_timeout = \"9s\"\n{MINIMAL}[[checks]]\nname = \"http-smoke\"\nargv = [\"/usr/bin/curl\", \"-fsS\", \"{{url}}\"]\nparams = [\"url\"]\nenv = {{ NO_PROXY = \"*\" }}\n"
        ))
        .unwrap();
        let check = config.checks.get("http-smoke").unwrap();
        assert_eq!(check.timeout, Duration::from_secs(9));
        assert_eq!(check.argv[2], ArgvElement::Param("url".to_owned()));
        assert_eq!(check.env["NO_PROXY"], "*");
    }

    #[test]
    fn every_problem_of_a_named_check_is_named() {
        let err = parse(&format!(
            "{MINIMAL}[[checks]]\nname = \"a b\"\nargv = [\"curl\", \"--url={{url}}\", \"{{host}}\"]\nparams = [\"url\", \"port\"]\ntimeout = \"0s\"\n[[checks]]\nname = \"x\"\nargv = []\n[[checks]]\nname = \"x\"\nargv = [\"{{p}}\"]\nparams = [\"p\"]\n"
        ))
        .unwrap_err()
        .to_string();
        for expected in [
            "checks[0].name: \"a b\"",
            "checks[0].argv: the program \"curl\" must be an absolute path",
            "checks[0].argv[1]: \"--url={url}\": a parameter must be a whole argv element",
            "checks[0].argv[2]: {host} is not in params",
            "checks[0].params: \"port\" is declared but argv has no {port} element",
            "checks[0].timeout: must be more than zero",
            "checks[1].argv: must name a program",
            "checks[2].name: \"x\" is defined twice",
            "checks[2].argv: the program cannot be a parameter ({p})",
        ] {
            assert!(err.contains(expected), "{expected} missing from: {err}");
        }
    }

    #[test]
    fn metrics_are_off_unless_listen_is_set_and_a_bad_address_is_named() {
        assert_eq!(parse(MINIMAL).unwrap().metrics_listen, None);
        let config = parse(&format!(
            "{MINIMAL}[metrics]\nlisten = \"127.0.0.1:9400\"\n"
        ))
        .unwrap();
        assert_eq!(
            config.metrics_listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9400")
        );
        for (table, expected) in [
            (
                "listen = \"9400\"",
                "metrics.listen: \"9400\" is not an IP:port",
            ),
            (
                "listen = \"127.0.0.1:7400\"",
                "metrics.listen: 127.0.0.1:7400 is also listen",
            ),
            ("port = 9400", "port"),
        ] {
            let err = parse(&format!("{MINIMAL}[metrics]\n{table}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{expected} missing from: {err}");
        }
    }

    #[test]
    fn the_web_view_is_off_unless_listen_is_set_and_loopback_only_under_tls() {
        assert_eq!(parse(MINIMAL).unwrap().web_listen, None);
        let config = parse(&format!("{MINIMAL}[web]\nlisten = \"0.0.0.0:9410\"\n")).unwrap();
        assert_eq!(
            config.web_listen.map(|a| a.to_string()).as_deref(),
            Some("0.0.0.0:9410")
        );
        for (table, expected) in [
            (
                "listen = \"9410\"",
                "web.listen: \"9410\" is not an IP:port",
            ),
            (
                "listen = \"127.0.0.1:7400\"",
                "web.listen: 127.0.0.1:7400 is already listen or metrics.listen",
            ),
            ("port = 9410", "port"),
        ] {
            let err = parse(&format!("{MINIMAL}[web]\n{table}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{expected} missing from: {err}");
        }
        let err = parse(&format!(
            "{MINIMAL}[metrics]\nlisten = \"127.0.0.1:9400\"\n[web]\nlisten = \"127.0.0.1:9400\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("web.listen: 127.0.0.1:9400 is already"),
            "{err}"
        );
    }

    #[test]
    fn under_tls_the_web_view_listens_on_loopback_only() {
        let dir = tempfile::tempdir().unwrap();
        let tls = tls_table(dir.path(), "coordinator.pem");
        let roles = ROLES;
        let config = parse(&format!(
            "{MINIMAL}{tls}{roles}[web]\nlisten = \"127.0.0.1:9410\"\n"
        ))
        .unwrap();
        assert!(config.web_listen.is_some_and(|a| a.ip().is_loopback()));
        let err = parse(&format!(
            "{MINIMAL}{tls}{roles}[web]\nlisten = \"0.0.0.0:9410\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("web.listen: 0.0.0.0:9410 is not a loopback address: with [tls]"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_key_is_named() {
        let err = parse("store_dir = \"/x\"\nlisten_addr = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_addr"), "{err}");
    }

    fn secret(dir: &Path, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("notify.secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn notify_tables_take_every_key_and_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = secret(dir.path(), 0o600);
        let config = parse(&format!(
            "{MINIMAL}[[notify]]\nname = \"chat\"\nurl = \"http://127.0.0.1:8080/hook\"\nevents = [\"started\", \"instance_failed\"]\nsecret_file = {path:?}\nformat = \"slack\"\ntimeout = \"2s\"\nretry_for = \"30s\"\n\n[[notify]]\nname = \"audit\"\nurl = \"http://10.0.0.9:80\"\nsecret_file = {path:?}\n"
        ))
        .unwrap();
        let [chat, audit] = &config.notify[..] else {
            panic!("{:?}", config.notify)
        };
        assert_eq!(chat.url.to_string(), "http://127.0.0.1:8080/hook");
        assert_eq!(
            chat.topics,
            [Topic::Started, Topic::InstanceFailed]
                .into_iter()
                .collect()
        );
        assert_eq!(chat.format, BodyFormat::Slack);
        assert_eq!(chat.timeout, Duration::from_secs(2));
        assert_eq!(chat.retry_for, Duration::from_secs(30));
        assert_eq!(audit.topics, Topic::DEFAULT.into_iter().collect());
        assert_eq!(audit.format, BodyFormat::Json);
        assert_eq!(audit.timeout, crate::notify::DEFAULT_TIMEOUT);
        assert_eq!(audit.retry_for, crate::notify::DEFAULT_RETRY_FOR);
        assert_eq!(parse(MINIMAL).unwrap().notify, vec![]);
    }

    #[test]
    fn every_problem_of_a_notify_table_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let open = secret(dir.path(), 0o644);
        let err = parse(&format!(
            "{MINIMAL}[[notify]]\nname = \"a b\"\nurl = \"hooks.example:443/x\"\nevents = [\"finished\"]\nsecret_file = {open:?}\nformat = \"xml\"\ntimeout = \"0s\"\nretry_for = \"soon\"\n"
        ))
        .unwrap_err()
        .to_string();
        for expected in [
            "notify[0].name",
            "notify[0].url: \"hooks.example:443/x\": must start with http:// or https://",
            "notify[0].events: unknown event \"finished\"",
            "notify[0].secret_file",
            "readable by others",
            "notify[0].format: \"xml\"",
            "notify[0].timeout",
            "notify[0].retry_for",
        ] {
            assert!(err.contains(expected), "{expected:?} not in {err}");
        }
        let err = parse(&format!(
            "{MINIMAL}[[notify]]\nname = \"a\"\nurl = \"http://h:1\"\nsecret_file = \"/x\"\nheaders = {{}}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("headers"), "{err}");
    }

    /// #16: an https webhook with a private CA; a `ca_file` that is
    /// missing, relative or not PEM is named with its path and what is wrong.
    #[test]
    fn an_https_webhook_takes_a_ca_file_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        tls_table(dir.path(), "coordinator.pem");
        let path = secret(dir.path(), 0o600);
        let ca = dir.path().join("ca.pem");
        let table = |name: &str, url: &str, ca_file: &str| {
            format!(
                "[[notify]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret_file = {path:?}\n{ca_file}\n"
            )
        };
        let config = parse(&format!(
            "{MINIMAL}{}",
            table(
                "a",
                "https://127.0.0.1:8443/hook",
                &format!("ca_file = {ca:?}")
            )
        ))
        .unwrap();
        assert_eq!(
            config.notify[0].url.to_string(),
            "https://127.0.0.1:8443/hook"
        );
        let missing = dir.path().join("missing.pem");
        let not_pem = dir.path().join("coordinator.key");
        let err = parse(&format!(
            "{MINIMAL}{}{}{}{}",
            table("a", "https://h/a", &format!("ca_file = {missing:?}")),
            table("b", "https://h/b", "ca_file = \"ca.pem\""),
            table("c", "https://h/c", &format!("ca_file = {not_pem:?}")),
            table("d", "http://h/d", &format!("ca_file = {ca:?}")),
        ))
        .unwrap_err()
        .to_string();
        for expected in [
            format!(
                "ca_file {}: cannot read it: No such file",
                missing.display()
            ),
            "ca_file ca.pem: must be an absolute path".to_owned(),
            format!(
                "ca_file {}: the CA file {} holds no PEM certificate",
                not_pem.display(),
                not_pem.display()
            ),
            "ca_file is only for https:// URLs".to_owned(),
        ] {
            assert!(err.contains(&expected), "{expected:?} not in {err}");
        }
        assert_eq!(err.matches(".ca_file: ").count(), 4, "{err}");
    }
}
