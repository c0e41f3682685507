//! The hashing writer the build and the store use to name what they write.
//!
//! `ReleaseDigest` itself lives in the `ids` crate (defined once for every
//! crate); this module re-exports it. Must never name a release any other way.

use std::io::{self, Write};

pub use ids::{DIGEST_PREFIX, DigestError, ReleaseDigest};
use sha2::{Digest as _, Sha256};

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
            ReleaseDigest::from_bytes(self.hasher.finalize().into()),
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
