//! `FencingToken`: the order of commands for one service.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A deployment lock's create revision in etcd. Every command that changes a
/// host carries one; a host refuses a token older than the highest it has
/// admitted, so a deposed leader cannot undo its successor's work.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
