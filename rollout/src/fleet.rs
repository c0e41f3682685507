//! Identifiers and the fleet as the engine sees it: clusters of instances,
//! each with the release it runs before the deployment touches it.
//!
//! Owns the engine's own newtypes (`InstanceId`, `TimerId`, `ApplyId`, ...)
//! and the plain-number time types; the identifiers shared with other crates
//! (`ClusterName`, `ReleaseDigest`, `FencingToken`, `Installed`) come from
//! `ids`. Must never read a clock: `Millis` is whatever the driver says "now" is.

use std::fmt;

pub use ids::{ClusterName, FencingToken, Installed, ReleaseDigest};
use serde::{Deserialize, Serialize};

/// Errors from building identifiers out of untrusted strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// An empty instance name.
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
    pub release: Installed,
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
