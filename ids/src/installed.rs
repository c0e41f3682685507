//! `Installed`: what a host runs of a service, "nothing" included.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::digest::{DigestError, ReleaseDigest};

/// The all-zero digest: how "not installed" is spelled in persisted records
/// and on the wire. It is the hash of no bundle, so it never names a release;
/// in memory it is always `Installed::Nothing`.
const NOTHING_SPELLING: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// The release a host runs of one service, or that it runs none (a first
/// install's rollback target).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Installed {
    /// The service is not installed on the host.
    Nothing,
    /// The host runs this release.
    Release(ReleaseDigest),
}

impl Installed {
    /// The release, if there is one.
    pub fn release(&self) -> Option<&ReleaseDigest> {
        match self {
            Installed::Nothing => None,
            Installed::Release(digest) => Some(digest),
        }
    }

    /// Whether this is exactly `release`.
    pub fn is(&self, release: &ReleaseDigest) -> bool {
        self.release() == Some(release)
    }

    /// For humans: the short digest, or "nothing".
    pub fn short(&self) -> String {
        match self {
            Installed::Nothing => "nothing".to_owned(),
            Installed::Release(digest) => digest.short(),
        }
    }

    /// Parses the persisted spelling (a digest, the all-zero one meaning nothing).
    pub fn parse(text: &str) -> Result<Self, DigestError> {
        if text == NOTHING_SPELLING {
            Ok(Installed::Nothing)
        } else {
            ReleaseDigest::parse(text).map(Installed::Release)
        }
    }
}

/// "Does the host run this release?"
impl PartialEq<ReleaseDigest> for Installed {
    fn eq(&self, release: &ReleaseDigest) -> bool {
        self.is(release)
    }
}

impl PartialEq<Installed> for ReleaseDigest {
    fn eq(&self, installed: &Installed) -> bool {
        installed.is(self)
    }
}

impl From<ReleaseDigest> for Installed {
    fn from(digest: ReleaseDigest) -> Self {
        Installed::Release(digest)
    }
}

impl From<Option<ReleaseDigest>> for Installed {
    fn from(digest: Option<ReleaseDigest>) -> Self {
        digest.map_or(Installed::Nothing, Installed::Release)
    }
}

impl TryFrom<String> for Installed {
    type Error = DigestError;
    fn try_from(text: String) -> Result<Self, DigestError> {
        Self::parse(&text)
    }
}

impl From<Installed> for String {
    fn from(installed: Installed) -> String {
        match installed {
            Installed::Nothing => NOTHING_SPELLING.to_owned(),
            Installed::Release(digest) => digest.to_string(),
        }
    }
}

/// Prints what an operator should read: a digest, or "nothing installed".
impl fmt::Display for Installed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Installed::Nothing => f.write_str("nothing installed"),
            Installed::Release(digest) => digest.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records written before `Installed` existed spell "not installed" as
    /// the zero digest; they must still load, and new records must be
    /// readable by coordinators that predate it.
    #[test]
    fn the_persisted_spelling_is_unchanged() {
        let nothing: Installed = serde_json::from_str(&format!("\"{NOTHING_SPELLING}\"")).unwrap();
        assert_eq!(nothing, Installed::Nothing);
        assert_eq!(
            serde_json::to_string(&Installed::Nothing).unwrap(),
            format!("\"{NOTHING_SPELLING}\"")
        );
        let release = ReleaseDigest::of_bytes(b"v1");
        let json = serde_json::to_string(&Installed::Release(release)).unwrap();
        assert_eq!(json, format!("\"{release}\""));
        assert!(
            serde_json::from_str::<Installed>(&json)
                .unwrap()
                .is(&release)
        );
    }
}
