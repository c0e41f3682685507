//! The invariants of DESIGN.md that the simulator checks, one file each.
//!
//! Owns the checks only: the world calls them at its hooks (an event about
//! to reach the engine, the actions it returned, an agent's change, the end
//! of the run). Must never change the world or the engine.

pub mod atomic_release;
pub mod canary_freeze;
pub mod floor;
pub mod healthy_on_success;
pub mod outcome_matches;
pub mod single_deployment;
pub mod terminal;

use std::fmt;

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant, as numbered in DESIGN.md.
    pub invariant: &'static str,
    /// What was seen.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invariant {}: {}", self.invariant, self.message)
    }
}

/// The per-step checkers together.
#[derive(Debug, Default)]
pub struct Checkers {
    /// Invariant 1.
    pub floor: floor::Floor,
    /// Invariant 2.
    pub single: single_deployment::SingleDeployment,
    /// Invariant 5.
    pub atomic: atomic_release::AtomicRelease,
    /// Invariant 6.
    pub canary: canary_freeze::CanaryFreeze,
    /// Invariant 8, health half.
    pub healthy: healthy_on_success::HealthyOnSuccess,
}
