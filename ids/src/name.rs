//! Names operators give things: services, agents, clusters.
//!
//! Each has a documented alphabet and a length limit, so a name can be a
//! path component, an etcd key segment, a metric label and a log field
//! without escaping, and a hostile caller cannot make one megabytes long.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest name of any kind, in bytes (a DNS label's limit).
pub const MAX_NAME_LEN: usize = 63;

/// How much of a rejected name an error repeats: enough to recognise it,
/// never the megabytes a hostile caller sent.
const ECHO_LEN: usize = 80;

/// Why a string is not a name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{shown} is not a valid {kind} ({rule})")]
pub struct NameError {
    /// Which kind of name was expected, e.g. "service name".
    pub kind: &'static str,
    /// The rule it broke, as an operator would read it.
    pub rule: &'static str,
    /// The rejected input, quoted and cut to a readable length.
    shown: String,
}

impl NameError {
    fn new(kind: &'static str, rule: &'static str, value: &str) -> Self {
        // Escaped: a name may hold control characters meant for a terminal.
        let shown = if value.len() <= ECHO_LEN {
            format!("`{}`", value.escape_debug())
        } else {
            let mut cut = ECHO_LEN;
            while !value.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("`{}…` ({} bytes)", value[..cut].escape_debug(), value.len())
        };
        Self { kind, rule, shown }
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $rule:literal, $valid:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates an untrusted string.
            pub fn parse(value: &str) -> Result<Self, NameError> {
                if $valid(value) {
                    Ok(Self(value.to_owned()))
                } else {
                    Err(NameError::new($kind, $rule, value))
                }
            }

            /// The name as given.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, NameError> {
                if $valid(&value) {
                    Ok(Self(value))
                } else {
                    Err(NameError::new($kind, $rule, &value))
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(value: &str) -> Result<Self, NameError> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
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

name_type!(
    /// `[release] service`: what a release is of, and the unit of deployment.
    ServiceName,
    "service name",
    "1-63 of a-z, 0-9, `-`, not starting with `-`",
    valid_service
);

name_type!(
    /// An agent's identity in the fleet (one per host).
    AgentId,
    "agent id",
    "1-63 of a-z, 0-9, `.`, `_`, `-`, starting with a letter or digit",
    valid_host_name
);

name_type!(
    /// A cluster: the unit of blast radius, capacity floor and disruption budget.
    ClusterName,
    "cluster name",
    "1-63 of a-z, 0-9, `.`, `_`, `-`, starting with a letter or digit",
    valid_host_name
);

fn valid_service(s: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
}

fn valid_host_name(s: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_follow_their_alphabet() {
        for ok in ["web", "a", "api-2", &"x".repeat(63)] {
            assert_eq!(ServiceName::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "-web", "Web", "web.1", "web_1", "wéb", &"x".repeat(64)] {
            assert!(ServiceName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn agent_and_cluster_names_allow_dots_and_underscores() {
        for ok in ["eu-1", "host_7.example", "0"] {
            assert!(AgentId::parse(ok).is_ok(), "{ok:?}");
            assert!(ClusterName::parse(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", ".eu", "_eu", "EU", "eu/1", "eu 1", &"x".repeat(64)] {
            assert!(AgentId::parse(bad).is_err(), "{bad:?}");
            assert!(ClusterName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_error_names_the_kind_and_rule_and_never_echoes_megabytes() {
        let huge = "A".repeat(2_500_000);
        let message = ServiceName::parse(&huge).unwrap_err().to_string();
        assert!(message.len() < 300, "{} bytes", message.len());
        assert!(message.contains("(2500000 bytes)"), "{message}");
        assert!(
            message.contains("is not a valid service name (1-63 of"),
            "{message}"
        );
        assert!(
            AgentId::parse("a\x1b[2J")
                .unwrap_err()
                .to_string()
                .starts_with("`a\\u{1b}[2J`")
        );
        let multibyte = "é".repeat(100);
        assert!(
            AgentId::parse(&multibyte)
                .unwrap_err()
                .to_string()
                .contains("bytes)")
        );
    }

    #[test]
    fn serde_refuses_what_parse_refuses() {
        let name: ClusterName = serde_json::from_str("\"eu\"").unwrap();
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"eu\"");
        assert!(serde_json::from_str::<ClusterName>("\"EU\"").is_err());
    }
}
