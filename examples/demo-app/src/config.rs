//! The app's configuration file: strict parse into a validated [`Config`].
//!
//! Owns: reading the file named by `--config`, its `sha256:` digest, the list
//! of known keys, and turning the TOML into a [`Config`] that cannot be
//! invalid. Like the app in the 2019-12-06 incident, a key this version does
//! not know is a fatal error, not something to ignore: that is the behaviour
//! Lockstep must survive (code and config ship together in one release).
//!
//! ```text
//! bytes ──sha256──▶ digest
//!   │
//!   ├─ TOML syntax ─────────────▶ Problem::Syntax
//!   ├─ walk keys (all of them) ─▶ Problem::UnknownKey   (every unknown key, with its line)
//!   ├─ typed serde parse ───────▶ Problem::WrongType
//!   └─ validate values ─────────▶ Problem::BadValue     (every bad value)
//!                                  │
//!                 no problems ─────┴──▶ Config
//! ```
//!
//! Must never: read the environment or the clock (callers pass the fallback
//! version in), touch sockets, or accept a file with a problem in it.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Where the config is looked for when `--config` is not given: relative to
/// the working directory, which the agent sets to the release root.
pub const DEFAULT_CONFIG_PATH: &str = "config.toml";

/// Loopback by default: a demo app should not be reachable from other hosts
/// unless its config says so.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    8080,
));

/// Reported by `/version` when neither the config nor the environment names
/// the release version.
pub const UNKNOWN_VERSION: &str = "unknown";

/// `crash_exit_code` unless the config says otherwise: EX_SOFTWARE.
pub const DEFAULT_CRASH_EXIT_CODE: u8 = 70;

/// Keys allowed at the top level of the file.
const TOP_LEVEL_KEYS: &[&str] = &["version", "message_prefix", "listen", "faults"];
/// Keys allowed in the `[faults]` table.
const FAULT_KEYS: &[&str] = &[
    "fail_at_start",
    "fail_at_start_while_exists",
    "ready_after_ms",
    "crash_after_ms",
    "crash_exit_code",
    "unhealthy_after_ms",
    "shutdown_delay_ms",
    "error_percent",
];

/// The file as written. `deny_unknown_fields` is a second guard behind the
/// key walk in [`parse`], which names every unknown key, not only the first.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    version: Option<String>,
    message_prefix: Option<String>,
    listen: Option<String>,
    #[serde(default)]
    faults: RawFaults,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFaults {
    fail_at_start: Option<bool>,
    fail_at_start_while_exists: Option<PathBuf>,
    ready_after_ms: Option<u64>,
    crash_after_ms: Option<u64>,
    crash_exit_code: Option<u8>,
    unhealthy_after_ms: Option<u64>,
    shutdown_delay_ms: Option<u64>,
    error_percent: Option<u8>,
}

/// Faults a test can inject, from the `[faults]` table or the mirroring CLI
/// flags. Every duration counts from the moment the app starts serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Faults {
    /// Exit 1 right after the config is loaded, before taking the socket.
    pub fail_at_start: bool,
    /// Like `fail_at_start`, while this file exists: a cause that goes
    /// away (a dependency down) for tests of what a failed start leaves.
    pub fail_at_start_while_exists: Option<PathBuf>,
    /// `/healthz` answers 503 until this much time has passed; READY=1 is
    /// sent to NOTIFY_SOCKET when it has.
    pub ready_after: Duration,
    /// The process exits by itself with `crash_exit_code` after this long.
    pub crash_after: Option<Duration>,
    /// The exit code of `crash_after` (default 70, EX_SOFTWARE; 0 is an
    /// app that ends "successfully" by itself).
    pub crash_exit_code: u8,
    /// `/healthz` and `/publish` answer 503 from this moment on.
    pub unhealthy_after: Option<Duration>,
    /// After SIGTERM/SIGINT, keep serving this long before the graceful stop.
    pub shutdown_delay: Duration,
    /// This percentage of `/publish` requests is answered 500, spread
    /// evenly: a release that starts and is ready but serves errors.
    pub error_percent: u8,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            fail_at_start: false,
            fail_at_start_while_exists: None,
            ready_after: Duration::ZERO,
            crash_after: None,
            crash_exit_code: DEFAULT_CRASH_EXIT_CODE,
            unhealthy_after: None,
            shutdown_delay: Duration::ZERO,
            error_percent: 0,
        }
    }
}

/// A configuration that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from (made absolute by [`load`]).
    pub path: PathBuf,
    /// `sha256:<hex>` of the file's bytes.
    pub digest: String,
    /// The release version `/version` reports.
    pub version: String,
    /// Prepended to every message `/publish` echoes.
    pub message_prefix: String,
    /// The address to bind when no socket is passed through LISTEN_FDS.
    pub listen: SocketAddr,
    pub faults: Faults,
}

/// One thing wrong with a config file. The line is 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    NotUtf8,
    Syntax {
        line: Option<usize>,
        message: String,
    },
    /// `key` is dotted for nested keys, e.g. `faults.explode`.
    UnknownKey {
        key: String,
        line: usize,
    },
    WrongType {
        line: Option<usize>,
        message: String,
    },
    BadValue {
        key: &'static str,
        value: String,
        line: Option<usize>,
        reason: &'static str,
    },
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NotUtf8 => write!(f, "not valid UTF-8"),
            Problem::Syntax { line, message } => {
                write!(f, "invalid TOML{}: {message}", line_suffix(*line))
            }
            Problem::UnknownKey { key, line } => write!(
                f,
                "unknown key `{key}` (line {line}): this version of demo-app does not know it and \
                 refuses to start (known keys: {}, [faults] {})",
                TOP_LEVEL_KEYS.join(", "),
                FAULT_KEYS.join(", ")
            ),
            Problem::WrongType { line, message } => {
                write!(f, "{}{}", message.trim_end(), line_suffix(*line))
            }
            Problem::BadValue {
                key,
                value,
                line,
                reason,
            } => write!(f, "`{key}` = {value}{}: {reason}", line_suffix(*line)),
        }
    }
}

/// Why the config could not be loaded. Every variant is fatal (exit 78).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {}: cannot read file", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// One line per problem, each naming the file.
    #[error("{}", render_problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("config {}: {p}", path.display()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `sha256:` followed by the lowercase hex digest of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in hash.iter() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Reads and parses the file at `path`. `env_version` is the fallback release
/// version (the agent's LOCKSTEP_RELEASE_VERSION) used when the file has no
/// `version` key.
pub fn load(path: &Path, env_version: Option<&str>) -> Result<Config, ConfigError> {
    // Messages and the startup log name the file absolutely: the working
    // directory (the release root) is not in the log line.
    let absolute = std::path::absolute(path);
    let path = absolute.as_deref().unwrap_or(path);
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &bytes, env_version).map_err(|problems| ConfigError::Invalid {
        path: path.to_path_buf(),
        problems,
    })
}

/// Parses `bytes` (the content of `path`), reporting every problem found.
pub fn parse(path: &Path, bytes: &[u8], env_version: Option<&str>) -> Result<Config, Vec<Problem>> {
    let text = std::str::from_utf8(bytes).map_err(|_| vec![Problem::NotUtf8])?;
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;

    let doc = toml::de::DeTable::parse(text).map_err(|e| {
        vec![Problem::Syntax {
            line: e.span().map(|s| line_of(s.start)),
            message: e.message().trim_end().to_owned(),
        }]
    })?;

    // Every unknown key, in file order, before any typed parsing stops at the first.
    let mut unknown = Vec::new();
    for (key, value) in doc.get_ref().iter() {
        let name: &str = key.get_ref();
        if !TOP_LEVEL_KEYS.contains(&name) {
            unknown.push((key.span().start, name.to_owned()));
        } else if name == "faults" {
            if let Some(faults) = value.get_ref().as_table() {
                for (fkey, _) in faults.iter() {
                    let fname: &str = fkey.get_ref();
                    if !FAULT_KEYS.contains(&fname) {
                        unknown.push((fkey.span().start, format!("faults.{fname}")));
                    }
                }
            }
        }
    }
    if !unknown.is_empty() {
        unknown.sort();
        return Err(unknown
            .into_iter()
            .map(|(offset, key)| Problem::UnknownKey {
                key,
                line: line_of(offset),
            })
            .collect());
    }

    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        vec![Problem::WrongType {
            line: e.span().map(|s| line_of(s.start)),
            message: e.message().to_owned(),
        }]
    })?;

    // Line of a value, for messages about it.
    let value_line = |table: Option<&str>, key: &str| -> Option<usize> {
        let root = doc.get_ref();
        let holder = match table {
            None => root,
            Some(t) => root.get(t)?.get_ref().as_table()?,
        };
        holder.get(key).map(|v| line_of(v.span().start))
    };

    let mut problems = Vec::new();

    let version = match raw.version {
        Some(v) if v.trim().is_empty() || v.chars().any(char::is_control) => {
            problems.push(Problem::BadValue {
                key: "version",
                value: format!("{v:?}"),
                line: value_line(None, "version"),
                reason: "must be a non-empty string without control characters",
            });
            String::new()
        }
        Some(v) => v,
        None => env_version
            .filter(|v| !v.trim().is_empty())
            .unwrap_or(UNKNOWN_VERSION)
            .to_owned(),
    };

    let listen = match raw.listen {
        None => DEFAULT_LISTEN,
        Some(l) => match l.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                problems.push(Problem::BadValue {
                    key: "listen",
                    value: format!("{l:?}"),
                    line: value_line(None, "listen"),
                    reason: "must be an IP:port socket address, e.g. \"127.0.0.1:8080\"",
                });
                DEFAULT_LISTEN
            }
        },
    };

    if raw.faults.error_percent.is_some_and(|p| p > 100) {
        problems.push(Problem::BadValue {
            key: "faults.error_percent",
            value: format!("{:?}", raw.faults.error_percent),
            line: value_line(Some("faults"), "error_percent"),
            reason: "must be a percentage from 0 to 100",
        });
    }

    if !problems.is_empty() {
        return Err(problems);
    }

    let f = raw.faults;
    Ok(Config {
        path: path.to_path_buf(),
        digest: digest_of(bytes),
        version,
        message_prefix: raw.message_prefix.unwrap_or_default(),
        listen,
        faults: Faults {
            fail_at_start: f.fail_at_start.unwrap_or(false),
            fail_at_start_while_exists: f.fail_at_start_while_exists,
            ready_after: Duration::from_millis(f.ready_after_ms.unwrap_or(0)),
            crash_after: f.crash_after_ms.map(Duration::from_millis),
            crash_exit_code: f.crash_exit_code.unwrap_or(DEFAULT_CRASH_EXIT_CODE),
            unhealthy_after: f.unhealthy_after_ms.map(Duration::from_millis),
            shutdown_delay: Duration::from_millis(f.shutdown_delay_ms.unwrap_or(0)),
            error_percent: f.error_percent.unwrap_or(0),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Config, Vec<Problem>> {
        parse(Path::new("/rel/config.toml"), text.as_bytes(), None)
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = p("").unwrap();
        assert_eq!(c.version, UNKNOWN_VERSION);
        assert_eq!(c.message_prefix, "");
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.faults, Faults::default());
        assert_eq!(c.digest, digest_of(b""));
    }

    #[test]
    fn full_file_parses() {
        let text = r#"
version = "1.4.2"
message_prefix = "v1: "
listen = "127.0.0.1:9000"

[faults]
fail_at_start = true
fail_at_start_while_exists = "/run/demo/down"
ready_after_ms = 100
crash_after_ms = 200
crash_exit_code = 0
unhealthy_after_ms = 300
shutdown_delay_ms = 400
error_percent = 20
"#;
        let c = p(text).unwrap();
        assert_eq!(c.version, "1.4.2");
        assert_eq!(c.message_prefix, "v1: ");
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(
            c.faults,
            Faults {
                fail_at_start: true,
                fail_at_start_while_exists: Some(PathBuf::from("/run/demo/down")),
                ready_after: Duration::from_millis(100),
                crash_after: Some(Duration::from_millis(200)),
                crash_exit_code: 0,
                unhealthy_after: Some(Duration::from_millis(300)),
                shutdown_delay: Duration::from_millis(400),
                error_percent: 20,
            }
        );
    }

    #[test]
    fn an_error_percent_over_100_is_refused() {
        let err = p("[faults]\nerror_percent = 101\n").unwrap_err();
        assert!(
            matches!(
                err.as_slice(),
                [Problem::BadValue {
                    key: "faults.error_percent",
                    line: Some(2),
                    ..
                }]
            ),
            "{err:?}"
        );
    }

    #[test]
    fn dotted_fault_keys_are_accepted() {
        let c = p("faults.ready_after_ms = 5\n").unwrap();
        assert_eq!(c.faults.ready_after, Duration::from_millis(5));
    }

    #[test]
    fn unknown_top_level_key_is_named_with_its_line() {
        let err =
            p("version = \"2\"\nlisten = \"127.0.0.1:1\"\nmetrics_endpoint = \"x\"\n").unwrap_err();
        assert_eq!(
            err,
            vec![Problem::UnknownKey {
                key: "metrics_endpoint".into(),
                line: 3
            }]
        );
        let shown = err[0].to_string();
        assert!(
            shown.starts_with("unknown key `metrics_endpoint` (line 3)"),
            "{shown}"
        );
    }

    #[test]
    fn every_unknown_key_is_reported_including_nested_ones() {
        let text = "a = 1\n[faults]\nexplode = true\nready_after_ms = 1\n[metrics]\nurl = \"x\"\n";
        let err = p(text).unwrap_err();
        assert_eq!(
            err,
            vec![
                Problem::UnknownKey {
                    key: "a".into(),
                    line: 1
                },
                Problem::UnknownKey {
                    key: "faults.explode".into(),
                    line: 3
                },
                Problem::UnknownKey {
                    key: "metrics".into(),
                    line: 5
                },
            ]
        );
    }

    #[test]
    fn wrong_type_is_reported_with_line() {
        let err = p("\n[faults]\nready_after_ms = \"soon\"\n").unwrap_err();
        match &err[..] {
            [Problem::WrongType { line, message }] => {
                assert_eq!(*line, Some(3));
                assert!(message.contains("invalid type"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn negative_duration_is_rejected() {
        let err = p("[faults]\ncrash_after_ms = -1\n").unwrap_err();
        assert!(
            matches!(&err[..], [Problem::WrongType { line: Some(2), .. }]),
            "{err:?}"
        );
    }

    #[test]
    fn syntax_error_is_reported_with_line() {
        let err = p("version = \"1\"\nlisten = \n").unwrap_err();
        assert!(
            matches!(&err[..], [Problem::Syntax { line: Some(2), .. }]),
            "{err:?}"
        );
    }

    #[test]
    fn every_bad_value_is_reported() {
        let err = p("version = \"\"\nlisten = \"localhost\"\n").unwrap_err();
        assert_eq!(err.len(), 2, "{err:?}");
        assert!(matches!(
            err[0],
            Problem::BadValue {
                key: "version",
                line: Some(1),
                ..
            }
        ));
        assert!(matches!(
            err[1],
            Problem::BadValue {
                key: "listen",
                line: Some(2),
                ..
            }
        ));
        assert!(err[1].to_string().contains("\"localhost\""));
    }

    #[test]
    fn not_utf8_is_reported() {
        let err = parse(Path::new("c.toml"), &[0xff, 0xfe], None).unwrap_err();
        assert_eq!(err, vec![Problem::NotUtf8]);
    }

    #[test]
    fn config_version_wins_over_environment() {
        let c = parse(
            Path::new("c.toml"),
            b"version = \"from-config\"",
            Some("from-env"),
        )
        .unwrap();
        assert_eq!(c.version, "from-config");
        let c = parse(Path::new("c.toml"), b"", Some("from-env")).unwrap();
        assert_eq!(c.version, "from-env");
        let c = parse(Path::new("c.toml"), b"", Some("  ")).unwrap();
        assert_eq!(c.version, UNKNOWN_VERSION);
    }

    #[test]
    fn shipped_example_config_loads() {
        let text = include_str!("../config.example.toml");
        let c = p(text).unwrap();
        assert_eq!(c.version, "1.0.0");
        assert_eq!(c.listen, DEFAULT_LISTEN);
    }

    #[test]
    fn digest_is_sha256_of_the_bytes() {
        assert_eq!(
            digest_of(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn error_message_names_the_file_on_every_line() {
        let err = ConfigError::Invalid {
            path: PathBuf::from("/rel/config.toml"),
            problems: p("x = 1\ny = 2\n").unwrap_err(),
        };
        let shown = err.to_string();
        let lines: Vec<_> = shown.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("config /rel/config.toml: unknown key `x` (line 1)"));
        assert!(lines[1].starts_with("config /rel/config.toml: unknown key `y` (line 2)"));
    }
}
