//! The `release.toml` manifest: schema, strict parsing and validated types.
//!
//! ```text
//! release.toml --toml+serde (unknown key = error, with line)--> Raw*
//!              --validate (every problem at once, key path + line)--> Manifest
//! ```
//!
//! A `Manifest` that exists is valid: it is only built by [`Manifest::parse`],
//! and its fields are types that cannot hold a bad value (durations, signals,
//! socket addresses, relative paths that cannot escape the root).
//!
//! Must never: accept a key it does not know, silently fix a bad value, or
//! read anything but the manifest text it is handed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use toml::Spanned;

pub use ids::ServiceName;

use crate::paths::RelativePath;

/// Name of the manifest file at the root of every release.
pub const MANIFEST_FILE: &str = "release.toml";
/// Largest manifest read (a manifest is a few hundred bytes; this stops a bundle
/// from making inspect/verify read a huge file into memory).
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// One process per host unless asked: the safe minimum that still serves.
pub const DEFAULT_INSTANCES: u32 = 1;
/// Upper bound on processes per host, to catch typos like `instances = 1000`.
pub const MAX_INSTANCES: u32 = 256;
/// Restart on any exit, like a daemon supervisor: a service is meant to
/// run, and one that ends "successfully" is as down as one that crashed
/// (the agent would hold its socket with nobody serving it).
pub const DEFAULT_RESTART: RestartPolicy = RestartPolicy::Always;
/// SIGTERM is what servers conventionally handle as "drain and exit".
pub const DEFAULT_STOP_SIGNAL: Signal = Signal::SIGTERM;
/// Time to drain before SIGKILL: long enough for in-flight requests, short
/// enough that a stuck process does not stall a rollout batch.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Probe once a second: quick readiness without hammering a starting app.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A probe answering slower than a second counts as failed.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// A new version that is not ready within a minute is declared failed, so a
/// version that cannot start never hangs a rollout.
pub const DEFAULT_HEALTHY_DEADLINE: Duration = Duration::from_secs(60);

/// Environment variables the agent sets itself; a manifest may not set them.
pub const RESERVED_ENV: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
];
/// Prefix reserved for variables the agent passes to the app.
pub const RESERVED_ENV_PREFIX: &str = "LOCKSTEP_";

/// Why a manifest is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest {path} is over the {limit}-byte limit for a manifest")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("release.toml line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("release.toml is invalid: {}", join_problems(.0))]
    Invalid(Vec<Problem>),
}

impl ManifestError {
    /// Every problem found (a syntax error is one problem).
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            Self::Read { .. } | Self::TooLarge { .. } => Vec::new(),
            Self::Syntax { line, message } => vec![Problem {
                key: String::new(),
                line: Some(*line),
                message: message.clone(),
            }],
            Self::Invalid(p) => p.clone(),
        }
    }
}

/// One semantic problem: the key path (e.g. `readiness.http`), its line, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

fn join_problems(p: &[Problem]) -> String {
    p.iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// `[release] version`: 1..=64 of `A-Z a-z 0-9 . _ + -`, starting alphanumeric.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Version(String);

impl Version {
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
            && s.as_bytes()[0].is_ascii_alphanumeric();
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "`{s}` is not a version (1-64 of A-Z, a-z, 0-9, `.`, `_`, `+`, `-`, starting with a letter or digit)"
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses `500ms`, `10s`, `2m`, `1h` (a whole number and one unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration (a whole number with ms, s, m or h, e.g. `10s`)");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.len() > 12 {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    n.checked_mul(ms_per)
        .map(Duration::from_millis)
        .ok_or_else(bad)
}

/// Prints a duration in the largest unit that keeps it exact (inverse of [`parse_duration`]).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms != 0 && ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms != 0 && ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1_000 == 0 {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

/// Parses `SIGTERM` or `TERM`; SIGSTOP and SIGCONT are refused (they never stop a process).
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let full = if s.starts_with("SIG") {
        s.to_owned()
    } else {
        format!("SIG{s}")
    };
    match Signal::from_str(&full) {
        Ok(Signal::SIGSTOP | Signal::SIGCONT) => {
            Err(format!("`{s}` cannot stop a process; use e.g. `SIGTERM`"))
        }
        Ok(sig) => Ok(sig),
        Err(_) => Err(format!(
            "`{s}` is not a signal name (e.g. `SIGTERM`, `SIGINT`)"
        )),
    }
}

/// A program (relative to the release root, no PATH lookup) and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub program: RelativePath,
    pub args: Vec<String>,
}

impl Command {
    fn parse(argv: &[String]) -> Result<Self, String> {
        let (first, rest) = argv
            .split_first()
            .ok_or_else(|| "must not be empty: give the program and its arguments".to_owned())?;
        let program = RelativePath::non_empty_from_bytes(first.as_bytes())
            .map_err(|e| format!("program: {e}"))?;
        if argv.iter().any(|a| a.contains('\0')) {
            return Err("arguments must not contain NUL".to_owned());
        }
        Ok(Self {
            program,
            args: rest.to_vec(),
        })
    }

    /// The argv as written in the manifest.
    pub fn argv(&self) -> Vec<String> {
        let mut v = vec![self.program.to_string()];
        v.extend(self.args.iter().cloned());
        v
    }
}

/// `[run] restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::OnFailure => "on-failure",
            Self::Never => "never",
        }
    }
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Self::Always),
            "on-failure" => Ok(Self::OnFailure),
            "never" => Ok(Self::Never),
            _ => Err(format!("`{s}` is not one of always, on-failure, never")),
        }
    }
}

/// `[run]`: how the agent runs the release's processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    pub command: Command,
    pub env: BTreeMap<String, String>,
    pub working_dir: RelativePath,
    pub user: Option<String>,
    pub group: Option<String>,
    pub instances: u32,
    pub restart: RestartPolicy,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
}

/// `[[listen]]`: a socket the agent binds and hands to the app (LISTEN_FDS, named by `name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub name: String,
    pub address: SocketAddr,
}

/// An `http://host[:port][/path]` probe URL (plain HTTP: probes hit localhost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    url: String,
    host: String,
    port: u16,
    path: String,
}

impl HttpUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("`{s}` is not an http URL: {why}");
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| bad("must start with http://"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("must not contain spaces or control characters"));
        }
        if authority.contains('@') {
            return Err(bad("must not carry credentials"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6.find(']').ok_or_else(|| bad("unclosed `[`"))?;
            let port = match &v6[end + 1..] {
                "" => 80,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| bad("bad port"))?,
            };
            (v6[..end].to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad("bad port"))?),
                None => (authority.to_owned(), 80),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if port == 0 {
            return Err(bad("port 0"));
        }
        Ok(Self {
            url: s.to_owned(),
            host,
            port,
            path: path.to_owned(),
        })
    }
    pub fn as_str(&self) -> &str {
        &self.url
    }
    pub fn host(&self) -> &str {
        &self.host
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    /// Path and query, starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The same path on another address (a host that moves the socket
    /// this URL points at).
    pub fn at(&self, addr: SocketAddr) -> Self {
        Self {
            url: format!("http://{addr}{}", self.path),
            host: addr.ip().to_string(),
            port: addr.port(),
            path: self.path.clone(),
        }
    }
}

/// `[readiness]`: how the agent knows a new process is ready (exactly one kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// GET returns 2xx.
    Http { url: HttpUrl },
    /// A TCP connect succeeds.
    Tcp { addr: SocketAddr },
    /// The command exits 0 (run from the release root).
    Exec { argv: Command },
    /// The app sends sd_notify `READY=1`.
    Notify,
}

/// `[readiness]` timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTiming {
    pub interval: Duration,
    pub timeout: Duration,
    /// A process not ready by then has failed to start.
    pub healthy_deadline: Duration,
}

/// `[readiness]` as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadinessSpec {
    pub probe: Readiness,
    pub timing: ProbeTiming,
}

/// `[overlap] mode`: how the old and new version run side by side on one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Overlap {
    /// The agent holds the `[[listen]]` sockets and hands the same ones to both.
    SocketHandover,
    /// Both processes bind the same address with SO_REUSEPORT.
    Reuseport,
    /// They cannot overlap: the old one stops before the new one starts.
    None,
}

impl Overlap {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SocketHandover => "socket-handover",
            Self::Reuseport => "reuseport",
            Self::None => "none",
        }
    }
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "socket-handover" => Ok(Self::SocketHandover),
            "reuseport" => Ok(Self::Reuseport),
            "none" => Ok(Self::None),
            _ => Err(format!(
                "`{s}` is not one of socket-handover, reuseport, none"
            )),
        }
    }
    /// Without `[overlap]`: hand sockets over when there are `[[listen]]`
    /// sockets (the start-before-stop path), otherwise `none`.
    pub fn default_for(listen: &[Listen]) -> Self {
        if listen.is_empty() {
            Self::None
        } else {
            Self::SocketHandover
        }
    }
}

/// A valid `release.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    service: ServiceName,
    version: Version,
    run: RunSpec,
    listen: Vec<Listen>,
    readiness: ReadinessSpec,
    overlap: Overlap,
}

impl Manifest {
    pub fn service(&self) -> &ServiceName {
        &self.service
    }
    pub fn version(&self) -> &Version {
        &self.version
    }
    pub fn run(&self) -> &RunSpec {
        &self.run
    }
    pub fn listen(&self) -> &[Listen] {
        &self.listen
    }
    pub fn readiness(&self) -> &ReadinessSpec {
        &self.readiness
    }
    pub fn overlap(&self) -> Overlap {
        self.overlap
    }

    /// Reads and parses a manifest file.
    /// Refuses a file over `MAX_MANIFEST_BYTES` without reading it.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        use std::io::Read as _;
        let read_err = |source| ManifestError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut text = String::new();
        file.take(MAX_MANIFEST_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        if text.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                path: path.to_owned(),
                limit: MAX_MANIFEST_BYTES,
            });
        }
        Self::parse(&text)
    }

    /// Parses and validates manifest text, reporting every semantic problem at once.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| ManifestError::Syntax {
            line: e.span().map_or(1, |s| line_of(text, s.start)),
            message: e.message().trim().to_owned(),
        })?;
        Validator {
            text,
            problems: Vec::new(),
        }
        .manifest(raw)
    }

    /// The manifest as `release.toml` text (parses back to an equal `Manifest`).
    pub fn to_toml(&self) -> String {
        // Serializing plain structs of strings/ints/tables cannot fail.
        toml::to_string(&self.document()).unwrap_or_default()
    }

    /// A serializable view with the same keys as `release.toml` (for JSON output).
    pub fn document(&self) -> ManifestDocument {
        let r = &self.run;
        let (http, tcp, exec, notify) = match &self.readiness.probe {
            Readiness::Http { url } => (Some(url.as_str().to_owned()), None, None, None),
            Readiness::Tcp { addr } => (None, Some(addr.to_string()), None, None),
            Readiness::Exec { argv } => (None, None, Some(argv.argv()), None),
            Readiness::Notify => (None, None, None, Some(true)),
        };
        let t = self.readiness.timing;
        ManifestDocument {
            release: DocRelease {
                service: self.service.to_string(),
                version: self.version.to_string(),
            },
            run: DocRun {
                command: r.command.argv(),
                env: r.env.clone(),
                working_dir: r.working_dir.to_string(),
                user: r.user.clone(),
                group: r.group.clone(),
                instances: r.instances,
                restart: r.restart.as_str().to_owned(),
                stop_signal: r.stop_signal.as_str().to_owned(),
                stop_timeout: format_duration(r.stop_timeout),
            },
            listen: self
                .listen
                .iter()
                .map(|l| DocListen {
                    name: l.name.clone(),
                    address: l.address.to_string(),
                })
                .collect(),
            readiness: DocReadiness {
                http,
                tcp,
                exec,
                notify,
                interval: format_duration(t.interval),
                timeout: format_duration(t.timeout),
                healthy_deadline: format_duration(t.healthy_deadline),
            },
            overlap: DocOverlap {
                mode: self.overlap.as_str().to_owned(),
            },
        }
    }
}

/// Serializable form of a [`Manifest`], keyed like `release.toml`.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestDocument {
    pub release: DocRelease,
    pub run: DocRun,
    pub listen: Vec<DocListen>,
    pub readiness: DocReadiness,
    pub overlap: DocOverlap,
}

#[derive(Debug, Clone, Serialize)]
pub struct DocRelease {
    pub service: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DocRun {
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub instances: u32,
    pub restart: String,
    pub stop_signal: String,
    pub stop_timeout: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DocListen {
    pub name: String,
    pub address: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DocReadiness {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify: Option<bool>,
    pub interval: String,
    pub timeout: String,
    pub healthy_deadline: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DocOverlap {
    pub mode: String,
}

// ---- raw form: exactly the TOML, unknown keys refused by serde ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    release: RawRelease,
    run: Spanned<RawRun>,
    #[serde(default)]
    listen: Vec<Spanned<RawListen>>,
    readiness: Option<Spanned<RawReadiness>>,
    overlap: Option<RawOverlap>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelease {
    service: Spanned<String>,
    version: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    command: Spanned<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    working_dir: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    instances: Option<Spanned<i64>>,
    restart: Option<Spanned<String>>,
    stop_signal: Option<Spanned<String>>,
    stop_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    name: Spanned<String>,
    address: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReadiness {
    http: Option<Spanned<String>>,
    tcp: Option<Spanned<String>>,
    exec: Option<Spanned<Vec<String>>>,
    notify: Option<Spanned<bool>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    healthy_deadline: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverlap {
    mode: Spanned<String>,
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

struct Validator<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn problem(&mut self, key: &str, line: Option<usize>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.to_owned(),
            line,
            message: message.into(),
        });
    }

    /// Parses one spanned value, recording a problem (and returning None) if it is bad.
    fn check<T, R>(
        &mut self,
        key: &str,
        v: &Spanned<T>,
        f: impl FnOnce(&T) -> Result<R, String>,
    ) -> Option<R> {
        match f(v.get_ref()) {
            Ok(r) => Some(r),
            Err(m) => {
                let line = Some(line_of(self.text, v.span().start));
                self.problem(key, line, m);
                None
            }
        }
    }

    fn opt<T, R>(
        &mut self,
        key: &str,
        v: &Option<Spanned<T>>,
        default: R,
        f: impl FnOnce(&T) -> Result<R, String>,
    ) -> Option<R> {
        match v {
            None => Some(default),
            Some(v) => self.check(key, v, f),
        }
    }

    fn line(&self, span: std::ops::Range<usize>) -> Option<usize> {
        Some(line_of(self.text, span.start))
    }

    fn manifest(mut self, raw: RawManifest) -> Result<Manifest, ManifestError> {
        let service = self.check("release.service", &raw.release.service, |s| {
            ServiceName::parse(s).map_err(|e| e.to_string())
        });
        let version = self.check("release.version", &raw.release.version, |s| {
            Version::parse(s)
        });
        let run = self.run(&raw.run);
        let listen = self.listen(&raw.listen);
        let readiness = match &raw.readiness {
            Some(r) => self.readiness(r),
            None => {
                self.problem(
                    "readiness",
                    None,
                    "missing [readiness]: add exactly one of http, tcp, exec, notify",
                );
                None
            }
        };
        let overlap = match &raw.overlap {
            None => Some(Overlap::default_for(&listen)),
            Some(o) => self.check("overlap.mode", &o.mode, |s| Overlap::parse(s)),
        };
        if let (Some(Overlap::SocketHandover), Some(o)) = (overlap, &raw.overlap) {
            if listen.is_empty() {
                let line = self.line(o.mode.span());
                self.problem(
                    "overlap.mode",
                    line,
                    "socket-handover needs at least one [[listen]] socket",
                );
            }
        }
        match (service, version, run, readiness, overlap) {
            (Some(service), Some(version), Some(run), Some(readiness), Some(overlap))
                if self.problems.is_empty() =>
            {
                Ok(Manifest {
                    service,
                    version,
                    run,
                    listen,
                    readiness,
                    overlap,
                })
            }
            _ => Err(ManifestError::Invalid(self.problems)),
        }
    }

    fn run(&mut self, raw: &Spanned<RawRun>) -> Option<RunSpec> {
        let r = raw.get_ref();
        let command = self.check("run.command", &r.command, |v| Command::parse(v));
        let mut env = BTreeMap::new();
        for (k, v) in &r.env {
            let key = format!("run.env.{k}");
            if let Some(value) = self.check(&key, v, |v| check_env(k, v)) {
                env.insert(k.clone(), value);
            }
        }
        let working_dir = self.opt(
            "run.working_dir",
            &r.working_dir,
            RelativePath::root(),
            |s| RelativePath::from_bytes(s.as_bytes()).map_err(|e| e.to_string()),
        );
        let user = self.opt("run.user", &r.user, None, |s| check_account(s).map(Some));
        let group = self.opt("run.group", &r.group, None, |s| check_account(s).map(Some));
        let instances = self.opt("run.instances", &r.instances, DEFAULT_INSTANCES, |n| {
            u32::try_from(*n)
                .ok()
                .filter(|n| (1..=MAX_INSTANCES).contains(n))
                .ok_or_else(|| format!("{n} is not between 1 and {MAX_INSTANCES}"))
        });
        let restart = self.opt("run.restart", &r.restart, DEFAULT_RESTART, |s| {
            RestartPolicy::parse(s)
        });
        let stop_signal = self.opt(
            "run.stop_signal",
            &r.stop_signal,
            DEFAULT_STOP_SIGNAL,
            |s| parse_signal(s),
        );
        let stop_timeout = self.opt(
            "run.stop_timeout",
            &r.stop_timeout,
            DEFAULT_STOP_TIMEOUT,
            |s| positive_duration(s),
        );
        Some(RunSpec {
            command: command?,
            env,
            working_dir: working_dir?,
            user: user?,
            group: group?,
            instances: instances?,
            restart: restart?,
            stop_signal: stop_signal?,
            stop_timeout: stop_timeout?,
        })
    }

    fn listen(&mut self, raw: &[Spanned<RawListen>]) -> Vec<Listen> {
        let mut names = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        let mut out = Vec::new();
        for (i, l) in raw.iter().enumerate() {
            let l = l.get_ref();
            let name = self.check(&format!("listen[{i}].name"), &l.name, |s| {
                check_listen_name(s)
            });
            let address = self.check(&format!("listen[{i}].address"), &l.address, |s| {
                s.parse::<SocketAddr>()
                    .map_err(|_| format!("`{s}` is not a socket address like `0.0.0.0:8080`"))
            });
            if let Some(n) = &name {
                if !names.insert(n.clone()) {
                    let line = self.line(l.name.span());
                    self.problem(
                        &format!("listen[{i}].name"),
                        line,
                        format!("`{n}` is used by another [[listen]]"),
                    );
                }
            }
            if let Some(a) = address {
                if !addrs.insert(a) {
                    let line = self.line(l.address.span());
                    self.problem(
                        &format!("listen[{i}].address"),
                        line,
                        format!("`{a}` is used by another [[listen]]"),
                    );
                }
            }
            if let (Some(name), Some(address)) = (name, address) {
                out.push(Listen { name, address });
            }
        }
        out
    }

    fn readiness(&mut self, raw: &Spanned<RawReadiness>) -> Option<ReadinessSpec> {
        let r = raw.get_ref();
        let table_line = self.line(raw.span());
        let kinds = [
            r.http.is_some(),
            r.tcp.is_some(),
            r.exec.is_some(),
            r.notify.is_some(),
        ]
        .iter()
        .filter(|k| **k)
        .count();
        let probe = if kinds != 1 {
            self.problem(
                "readiness",
                table_line,
                format!("set exactly one of http, tcp, exec, notify (found {kinds})"),
            );
            None
        } else if let Some(u) = &r.http {
            self.check("readiness.http", u, |s| HttpUrl::parse(s))
                .map(|url| Readiness::Http { url })
        } else if let Some(a) = &r.tcp {
            self.check("readiness.tcp", a, |s| {
                s.parse::<SocketAddr>()
                    .map_err(|_| format!("`{s}` is not a socket address like `127.0.0.1:8080`"))
            })
            .map(|addr| Readiness::Tcp { addr })
        } else if let Some(e) = &r.exec {
            self.check("readiness.exec", e, |v| Command::parse(v))
                .map(|argv| Readiness::Exec { argv })
        } else if let Some(n) = &r.notify {
            self.check("readiness.notify", n, |b| {
                if *b {
                    Ok(Readiness::Notify)
                } else {
                    Err("must be `true` when set (remove it to use another probe)".to_owned())
                }
            })
        } else {
            None
        };
        let interval = self.opt(
            "readiness.interval",
            &r.interval,
            DEFAULT_PROBE_INTERVAL,
            |s| positive_duration(s),
        );
        let timeout = self.opt(
            "readiness.timeout",
            &r.timeout,
            DEFAULT_PROBE_TIMEOUT,
            |s| positive_duration(s),
        );
        let deadline = self.opt(
            "readiness.healthy_deadline",
            &r.healthy_deadline,
            DEFAULT_HEALTHY_DEADLINE,
            |s| positive_duration(s),
        );
        let timing = ProbeTiming {
            interval: interval?,
            timeout: timeout?,
            healthy_deadline: deadline?,
        };
        if timing.timeout > timing.healthy_deadline || timing.interval > timing.healthy_deadline {
            let line = r
                .healthy_deadline
                .as_ref()
                .map_or(table_line, |d| self.line(d.span()));
            self.problem(
                "readiness.healthy_deadline",
                line,
                format!(
                    "{} is shorter than the probe interval or timeout",
                    format_duration(timing.healthy_deadline)
                ),
            );
        }
        Some(ReadinessSpec {
            probe: probe?,
            timing,
        })
    }
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("`{s}` must be longer than zero"));
    }
    Ok(d)
}

fn check_env(key: &str, value: &str) -> Result<String, String> {
    if key.is_empty() || key.contains(['=', '\0']) {
        return Err(format!("`{key}` is not an environment variable name"));
    }
    if RESERVED_ENV.contains(&key) || key.starts_with(RESERVED_ENV_PREFIX) {
        return Err(format!("`{key}` is set by the agent; choose another name"));
    }
    if value.contains('\0') {
        return Err("value must not contain NUL".to_owned());
    }
    Ok(value.to_owned())
}

fn check_account(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b))
        && !s.as_bytes()[0].is_ascii_digit()
        && s.as_bytes()[0] != b'-';
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}` is not a user or group name (1-32 of a-z, 0-9, `_`, `-`, starting with a letter or `_`)"
        ))
    }
}

fn check_listen_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}` is not a socket name (1-255 of A-Z, a-z, 0-9, `_`, `-`, `.`)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
[release]
service = "demo"
version = "1.4.2"

[run]
command = ["bin/demo", "--config", "config/demo.toml"]
env = { RUST_LOG = "info" }
working_dir = "."
user = "demo"
group = "demo"
instances = 2
restart = "always"
stop_signal = "SIGINT"
stop_timeout = "10s"

[[listen]]
name = "http"
address = "0.0.0.0:8080"

[readiness]
http = "http://127.0.0.1:8080/healthz"
interval = "500ms"
timeout = "2s"
healthy_deadline = "2m"

[overlap]
mode = "socket-handover"
"#;

    #[test]
    fn full_manifest_parses_into_typed_values() {
        let m = Manifest::parse(FULL).unwrap();
        assert_eq!(m.service().as_str(), "demo");
        assert_eq!(m.run().instances, 2);
        assert_eq!(m.run().stop_signal, Signal::SIGINT);
        assert_eq!(m.run().stop_timeout, Duration::from_secs(10));
        assert_eq!(m.run().restart, RestartPolicy::Always);
        assert_eq!(m.listen()[0].address, "0.0.0.0:8080".parse().unwrap());
        let Readiness::Http { url } = &m.readiness().probe else {
            panic!("expected http probe")
        };
        assert_eq!(
            (url.host(), url.port(), url.path()),
            ("127.0.0.1", 8080, "/healthz")
        );
        assert_eq!(
            m.readiness().timing.healthy_deadline,
            Duration::from_secs(120)
        );
        assert_eq!(m.overlap(), Overlap::SocketHandover);
        assert_eq!(Manifest::parse(&m.to_toml()).unwrap(), m);
    }

    #[test]
    fn defaults_apply_to_a_minimal_manifest() {
        let m = Manifest::parse(
            "[release]\nservice = \"a\"\nversion = \"1\"\n[run]\ncommand = [\"bin/a\"]\n[readiness]\nnotify = true\n",
        )
        .unwrap();
        assert_eq!(m.run().instances, DEFAULT_INSTANCES);
        assert_eq!(m.run().restart, DEFAULT_RESTART);
        // #12 item 4: a service that exits 0 is restarted unless it says not to.
        assert_eq!(DEFAULT_RESTART, RestartPolicy::Always);
        assert_eq!(m.run().stop_signal, DEFAULT_STOP_SIGNAL);
        assert_eq!(m.run().stop_timeout, DEFAULT_STOP_TIMEOUT);
        assert!(m.run().working_dir.is_root());
        assert_eq!(m.readiness().probe, Readiness::Notify);
        assert_eq!(m.readiness().timing.interval, DEFAULT_PROBE_INTERVAL);
        assert_eq!(m.overlap(), Overlap::None);
    }

    #[test]
    fn unknown_key_is_an_error_naming_key_and_line() {
        let text = FULL.replace("instances = 2", "instances = 2\ninstancez = 3");
        let err = Manifest::parse(&text).unwrap_err();
        let ManifestError::Syntax { line, message } = &err else {
            panic!("expected syntax error, got {err:?}")
        };
        assert!(message.contains("instancez"), "{message}");
        assert_eq!(*line, 13);
        assert!(err.to_string().contains("line 13"), "{err}");
    }

    #[test]
    fn every_semantic_problem_is_reported_at_once() {
        let text = FULL
            .replace("\"1.4.2\"", "\"\"")
            .replace("\"SIGINT\"", "\"SIGNOPE\"")
            .replace("\"10s\"", "\"10 parsecs\"")
            .replace("\"bin/demo\"", "\"../bin/demo\"")
            .replace("0.0.0.0:8080", "nowhere")
            .replace(
                "http = \"http://127.0.0.1:8080/healthz\"",
                "http = \"ftp://x\"\ntcp = \"127.0.0.1:1\"",
            );
        let err = Manifest::parse(&text).unwrap_err();
        let keys: Vec<String> = err.problems().into_iter().map(|p| p.key).collect();
        for k in [
            "release.version",
            "run.command",
            "run.stop_signal",
            "run.stop_timeout",
            "listen[0].address",
            "readiness",
        ] {
            assert!(keys.contains(&k.to_owned()), "missing {k} in {keys:?}");
        }
        assert!(err.problems().iter().all(|p| p.line.is_some()));
    }

    #[test]
    fn bad_value_names_its_key_path_and_line() {
        let text = FULL.replace("http://127.0.0.1:8080/healthz", "https://x");
        let err = Manifest::parse(&text).unwrap_err();
        let p = &err.problems()[0];
        assert_eq!(p.key, "readiness.http");
        assert_eq!(p.line, Some(22));
        assert!(err.to_string().contains("readiness.http"));
    }

    #[test]
    fn cross_field_rules() {
        let text = FULL.replace(
            "[[listen]]\nname = \"http\"\naddress = \"0.0.0.0:8080\"\n",
            "",
        );
        let err = Manifest::parse(&text).unwrap_err();
        assert_eq!(err.problems()[0].key, "overlap.mode");
        let text = FULL.replace("RUST_LOG", "LISTEN_FDS");
        assert_eq!(
            Manifest::parse(&text).unwrap_err().problems()[0].key,
            "run.env.LISTEN_FDS"
        );
        let text = FULL.replace("healthy_deadline = \"2m\"", "healthy_deadline = \"1s\"");
        assert_eq!(
            Manifest::parse(&text).unwrap_err().problems()[0].key,
            "readiness.healthy_deadline"
        );
    }

    #[test]
    fn durations_and_signals() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(parse_signal("TERM"), Ok(Signal::SIGTERM));
        assert!(parse_signal("SIGSTOP").is_err());
    }
}
