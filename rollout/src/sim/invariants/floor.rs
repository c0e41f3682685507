//! Invariant 1: a cluster's serving instances never drop below its floor
//! because of Lockstep.
//!
//! "Because of Lockstep" is what the simulated agents count as switch
//! outages: an instance that was serving when a switch stopped its old
//! process (overlap `none`), until the new one is ready. Outages the
//! release or the host cause by themselves (a flap, a crash) are not
//! Lockstep's doing; it must only never add its own on top beyond the floor.

use super::Violation;

/// Checks one cluster's count after each agent change.
#[derive(Debug, Default)]
pub struct Floor;

impl Floor {
    /// `down` instances of a cluster of `size` with floor `floor` are out
    /// because of a switch.
    pub fn check(
        &self,
        cluster: &str,
        size: usize,
        floor: usize,
        down: usize,
    ) -> Result<(), Violation> {
        if size.saturating_sub(down) < floor {
            return Err(Violation {
                invariant: "1 (capacity floor)",
                message: format!(
                    "cluster {cluster}: {down} of {size} instance(s) down for a switch, leaving {} serving, below its floor of {floor}",
                    size - down
                ),
            });
        }
        Ok(())
    }
}
