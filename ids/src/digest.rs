//! `ReleaseDigest`: the identity of a release, `sha256:<64 lowercase hex>`.
//!
//! Owns parsing and printing of the digest. Must never accept a second
//! spelling of the same digest (upper-case hex, other algorithms): one
//! release, one name.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// Prefix of every digest string; the only algorithm a release uses.
pub const DIGEST_PREFIX: &str = "sha256:";

/// The sha256 of a bundle's bytes (without its trailing signature frame).
/// Code, config and run spec are one bundle behind one digest, so an
/// instance can never run half of a release.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReleaseDigest([u8; 32]);

/// Why a string is not a digest.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest `{0}` does not start with `sha256:`")]
    MissingPrefix(String),
    #[error("digest `{0}` must have exactly 64 lowercase hex digits after `sha256:`")]
    BadHex(String),
}

/// How much of a rejected digest an error repeats.
const ECHO_LEN: usize = 80;

fn echo(value: &str) -> String {
    let mut cut = value.len().min(ECHO_LEN);
    while !value.is_char_boundary(cut) {
        cut -= 1;
    }
    // Escaped: the text may hold control characters meant for a terminal.
    if cut == value.len() {
        value.escape_debug().to_string()
    } else {
        format!("{}… ({} bytes)", value[..cut].escape_debug(), value.len())
    }
}

impl ReleaseDigest {
    /// Wraps raw sha256 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes (what a signature covers).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits without the prefix (the store's directory name).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// `sha256:` and the first 12 hex digits, for humans.
    pub fn short(&self) -> String {
        let mut text = self.to_string();
        text.truncate(DIGEST_PREFIX.len() + 12);
        text
    }

    /// Hashes a byte slice.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Hashes everything a reader yields.
    pub fn of_reader(mut reader: impl Read) -> io::Result<Self> {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                return Ok(Self(hasher.finalize().into()));
            }
            hasher.update(&buf[..n]);
        }
    }

    /// Parses the 64 hex digits without the `sha256:` prefix (a store directory name).
    pub fn from_hex(hex_digits: &str) -> Result<Self, DigestError> {
        let bad = || DigestError::BadHex(echo(&format!("{DIGEST_PREFIX}{hex_digits}")));
        if hex_digits.len() != 64
            || !hex_digits
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut out).map_err(|_| bad())?;
        Ok(Self(out))
    }

    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(text: &str) -> Result<Self, DigestError> {
        let hex_digits = text
            .strip_prefix(DIGEST_PREFIX)
            .ok_or_else(|| DigestError::MissingPrefix(echo(text)))?;
        Self::from_hex(hex_digits)
    }
}

impl FromStr for ReleaseDigest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for ReleaseDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{DIGEST_PREFIX}{}", hex::encode(self.0))
    }
}

impl fmt::Debug for ReleaseDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReleaseDigest({self})")
    }
}

impl serde::Serialize for ReleaseDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ReleaseDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_same_string() {
        let d = ReleaseDigest::of_bytes(b"hello");
        let s = d.to_string();
        assert_eq!(
            s,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(s.parse::<ReleaseDigest>().unwrap(), d);
        assert_eq!(d.short(), "sha256:2cf24dba5fb0");
        assert_eq!(ReleaseDigest::of_reader(&b"hello"[..]).unwrap(), d);
    }

    #[test]
    fn rejects_other_spellings() {
        let upper = "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824";
        assert!(matches!(
            upper.parse::<ReleaseDigest>(),
            Err(DigestError::BadHex(_))
        ));
        assert!(matches!(
            "2cf24dba".parse::<ReleaseDigest>(),
            Err(DigestError::MissingPrefix(_))
        ));
        assert!(matches!(
            "sha256:abc".parse::<ReleaseDigest>(),
            Err(DigestError::BadHex(_))
        ));
    }

    #[test]
    fn an_error_never_echoes_megabytes() {
        let huge = format!("sha256:{}", "f".repeat(1_000_000));
        assert!(ReleaseDigest::parse(&huge).unwrap_err().to_string().len() < 300);
    }

    #[test]
    fn serde_uses_the_text_form() {
        let d = ReleaseDigest::of_bytes(b"x");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<ReleaseDigest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<ReleaseDigest>("\"sha256:00\"").is_err());
    }
}
