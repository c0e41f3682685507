//! `ReleaseDigest`: the identity of a release, `sha256:<64 lowercase hex>`.
//!
//! Owns parsing and printing of the digest and the hashing writer the build
//! and the store use. Must never accept a second spelling of the same digest
//! (upper-case hex, other algorithms): one release, one name.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// Prefix of every digest string; the only algorithm a release uses.
pub const DIGEST_PREFIX: &str = "sha256:";

/// The sha256 of a bundle's bytes (without its trailing signature frame).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReleaseDigest([u8; 32]);

/// Why a string is not a digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest `{0}` does not start with `sha256:`")]
    MissingPrefix(String),
    #[error("digest `{0}` must have exactly 64 lowercase hex digits after `sha256:`")]
    BadHex(String),
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

    /// Hashes a byte slice.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Hashes everything a reader yields.
    pub fn of_reader(mut reader: impl Read) -> io::Result<Self> {
        let mut hasher = HashingWriter::new(io::sink());
        io::copy(&mut reader, &mut hasher)?;
        Ok(hasher.finish().0)
    }

    /// Parses the 64 hex digits without the `sha256:` prefix (a store directory name).
    pub fn from_hex(hex_digits: &str) -> Result<Self, DigestError> {
        let bad = || DigestError::BadHex(format!("{DIGEST_PREFIX}{hex_digits}"));
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
}

impl FromStr for ReleaseDigest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_digits = s
            .strip_prefix(DIGEST_PREFIX)
            .ok_or_else(|| DigestError::MissingPrefix(s.to_owned()))?;
        Self::from_hex(hex_digits)
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

/// A writer that hashes and counts every byte it passes on.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// The digest of everything written, the byte count and the inner writer.
    pub fn finish(self) -> (ReleaseDigest, u64, W) {
        (
            ReleaseDigest(self.hasher.finalize().into()),
            self.written,
            self.inner,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
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
    fn hashing_writer_matches_one_shot_hash() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hel").unwrap();
        w.write_all(b"lo").unwrap();
        let (d, n, inner) = w.finish();
        assert_eq!(d, ReleaseDigest::of_bytes(b"hello"));
        assert_eq!(n, 5);
        assert_eq!(inner, b"hello");
    }
}
