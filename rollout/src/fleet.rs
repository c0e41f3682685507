//! Identifiers and the fleet as the engine sees it: clusters of instances,
//! each with the release it runs before the deployment touches it.
//!
//! Owns the newtypes that cross module lines (`InstanceId`, `ClusterName`,
//! `ReleaseDigest`, `FencingToken`, `TimerId`, ...) and the plain-number time
//! types. Must never read a clock: `Millis` is whatever the driver says "now" is.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Errors from building identifiers out of untrusted strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// A release digest that is not `sha256:` followed by 64 lowercase hex digits.
    #[error("release digest {value:?} is not \"sha256:\" followed by 64 lowercase hex digits")]
    BadDigest {
        /// The rejected input.
        value: String,
    },
    /// An empty instance or cluster name.
    #[error("{what} must not be empty")]
    Empty {
        /// Which identifier was empty.
        what: &'static str,
    },
}

/// One instance of the service: by convention `agent/service/slot`, but the
/// engine only needs it to be unique within the fleet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceId(String);

impl InstanceId {
    /// Wraps a non-empty name.
    pub fn new(name: impl Into<String>) -> Result<Self, IdError> {
        let name = name.into();
        if name.is_empty() {
            return Err(IdError::Empty {
                what: "instance id",
            });
        }
        Ok(Self(name))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A cluster: the unit of blast radius, capacity floor and disruption budget.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClusterName(String);

impl ClusterName {
    /// Wraps a non-empty name.
    pub fn new(name: impl Into<String>) -> Result<Self, IdError> {
        let name = name.into();
        if name.is_empty() {
            return Err(IdError::Empty {
                what: "cluster name",
            });
        }
        Ok(Self(name))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A release's identity: `sha256:<64 hex>`. Code, config and run spec are one
/// bundle behind one digest, so an instance can never run half of a release.
///
/// The `release` crate owns the real type; the coordinator converts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ReleaseDigest(String);

impl ReleaseDigest {
    /// Validates `sha256:` followed by 64 lowercase hex digits.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        let ok = value.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(IdError::BadDigest {
                value: value.to_owned(),
            })
        }
    }

    /// The full `sha256:...` text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `sha256:` and the first 12 hex digits, for humans.
    pub fn short(&self) -> &str {
        self.0.get(..19).unwrap_or(&self.0)
    }
}

impl TryFrom<String> for ReleaseDigest {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, IdError> {
        Self::parse(&value)
    }
}

impl From<ReleaseDigest> for String {
    fn from(d: ReleaseDigest) -> String {
        d.0
    }
}

impl fmt::Display for ReleaseDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The deployment lock's revision. Agents refuse commands carrying a token
/// older than one they have already seen.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token {}", self.0)
    }
}

/// A timer the engine asked for. Ids are never reused, so a timer that fires
/// after the engine stopped caring is recognised as stale and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TimerId(pub u64);

/// One `Apply` command. Agents echo it in their reports so the engine can tell
/// a report about the current command from a late or duplicated one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ApplyId(pub u64);

/// One run of a synthetic check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CheckRunId(pub u64);

/// The deployment this engine drives (the key of its record in etcd).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeploymentId(pub String);

impl fmt::Display for DeploymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A span of time in milliseconds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct DurationMs(pub u64);

impl DurationMs {
    /// `n` seconds.
    pub const fn secs(n: u64) -> Self {
        Self(n * 1000)
    }

    /// `n` minutes.
    pub const fn mins(n: u64) -> Self {
        Self(n * 60_000)
    }
}

impl fmt::Display for DurationMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms == 0 {
            f.write_str("0s")
        } else if ms % 3_600_000 == 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms % 60_000 == 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// A point in time, in milliseconds on the driver's clock. The engine only
/// compares and subtracts these; it never asks what time it is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    /// This instant plus `d`.
    pub fn plus(self, d: DurationMs) -> Millis {
        Millis(self.0.saturating_add(d.0))
    }

    /// Time left from `self` until `later` (zero if it has passed).
    pub fn until(self, later: Millis) -> DurationMs {
        DurationMs(later.0.saturating_sub(self.0))
    }
}

/// One instance and the release it runs now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Unique within the fleet.
    pub id: InstanceId,
    /// What it runs before this deployment. This is what a rollback returns
    /// it to: fleets are not always uniform.
    pub release: ReleaseDigest,
}

/// A cluster and its instances, in the order the operator listed them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// The cluster's name.
    pub name: ClusterName,
    /// Its instances of the service.
    pub instances: Vec<Instance>,
    /// How many of its hosts may be disrupted at once, as the hosts
    /// themselves enforce it (the cluster's disruption budget policy);
    /// `None`: no such limit. A batch never exceeds it: a larger one would
    /// be serialised by the hosts, and the plan would not say what happens.
    #[serde(default)]
    pub max_disruptions: Option<usize>,
}

/// The service's instances across all clusters.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Fleet {
    /// Clusters in any order; the strategy decides the rollout order.
    pub clusters: Vec<Cluster>,
}

impl Fleet {
    /// Total number of instances.
    pub fn len(&self) -> usize {
        self.clusters.iter().map(|c| c.instances.len()).sum()
    }

    /// True when no cluster has an instance.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How an instance switches release; decides whether a switch costs capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overlap {
    /// The agent hands the listening sockets to the new process, which starts
    /// beside the old one; the old one stops only once the new one is ready.
    SocketHandover,
    /// Both processes bind with SO_REUSEPORT; same start-before-stop guarantee.
    Reuseport,
    /// The old process stops before the new one starts: the instance is down
    /// for the whole switch, so every switch eats into the capacity floor.
    None,
}

impl Overlap {
    /// True when the old process keeps serving until the new one is ready.
    pub fn starts_before_stop(self) -> bool {
        !matches!(self, Overlap::None)
    }
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Overlap::SocketHandover => "socket-handover",
            Overlap::Reuseport => "reuseport",
            Overlap::None => "none",
        })
    }
}
