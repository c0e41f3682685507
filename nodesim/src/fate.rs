//! Which virtual hosts misbehave, and how: a pure, seeded choice per
//! (host, release), so a run is repeatable and a given host fails the same
//! release every time it is applied.
//!
//! Must never: draw randomness or read a clock; choose by anything but the
//! seed, the host's index and the release.

use ids::ReleaseDigest;

/// Parts per million: rates are exact integers, 0..=1_000_000.
pub const PPM: u32 = 1_000_000;

/// How a failing host fails a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailMode {
    /// The switch ends failed after the start and ready delays (as an app
    /// that exits before READY=1).
    Fails,
    /// The switch never ends: its instances stay starting until a newer
    /// command supersedes it (the coordinator's healthy_deadline decides).
    NeverReady,
}

/// What happens to one host's switch to one release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ready,
    Fails,
    NeverReady,
    /// Ready, then its instances crash after the configured delay.
    CrashesAfterReady,
}

/// The simulation's failure plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fate {
    pub seed: u64,
    /// Releases the failure and crash rates apply to; empty: every release.
    pub releases: Vec<ReleaseDigest>,
    pub fail_ppm: u32,
    pub fail_mode: FailMode,
    pub crash_ppm: u32,
}

impl Fate {
    /// No host ever fails.
    pub fn healthy() -> Self {
        Self {
            seed: 0,
            releases: Vec::new(),
            fail_ppm: 0,
            fail_mode: FailMode::Fails,
            crash_ppm: 0,
        }
    }

    /// What host `index` does when switched to `release`.
    pub fn outcome(&self, index: usize, release: &ReleaseDigest) -> Outcome {
        if !self.releases.is_empty() && !self.releases.contains(release) {
            return Outcome::Ready;
        }
        if self.draw(index, release, 1) < self.fail_ppm {
            return match self.fail_mode {
                FailMode::Fails => Outcome::Fails,
                FailMode::NeverReady => Outcome::NeverReady,
            };
        }
        if self.draw(index, release, 2) < self.crash_ppm {
            return Outcome::CrashesAfterReady;
        }
        Outcome::Ready
    }

    /// A number in 0..PPM, fixed by (seed, host, release, purpose).
    fn draw(&self, index: usize, release: &ReleaseDigest, purpose: u64) -> u32 {
        let mut h = splitmix(self.seed ^ purpose.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        h = splitmix(h ^ u64::try_from(index).unwrap_or(u64::MAX));
        for byte in release.to_string().bytes() {
            h = splitmix(h ^ u64::from(byte));
        }
        u32::try_from(h % u64::from(PPM)).unwrap_or(0)
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> ReleaseDigest {
        ReleaseDigest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap()
    }

    fn fate(fail_ppm: u32, releases: Vec<ReleaseDigest>) -> Fate {
        Fate {
            fail_ppm,
            releases,
            ..Fate::healthy()
        }
    }

    #[test]
    fn a_full_rate_fails_every_host_on_the_named_release_only() {
        let f = fate(PPM, vec![digest(2)]);
        assert!((0..100).all(|i| f.outcome(i, &digest(2)) == Outcome::Fails));
        assert!((0..100).all(|i| f.outcome(i, &digest(1)) == Outcome::Ready));
    }

    #[test]
    fn a_rate_fails_about_that_share_of_hosts_and_the_same_ones_each_time() {
        let f = fate(PPM / 10, Vec::new());
        let failing: Vec<usize> = (0..10_000)
            .filter(|i| f.outcome(*i, &digest(3)) == Outcome::Fails)
            .collect();
        assert!((800..1200).contains(&failing.len()), "{}", failing.len());
        let again: Vec<usize> = (0..10_000)
            .filter(|i| f.outcome(*i, &digest(3)) == Outcome::Fails)
            .collect();
        assert_eq!(failing, again);
    }

    #[test]
    fn healthy_never_fails() {
        let f = Fate::healthy();
        assert!((0..1000).all(|i| f.outcome(i, &digest(9)) == Outcome::Ready));
    }
}
