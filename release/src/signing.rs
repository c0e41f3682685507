//! ed25519 signing of releases: key files, the signature frame, trusted keys.
//!
//! Where the signature lives: in one zstd *skippable frame* appended after
//! the bundle's tar.zst stream. The digest is the sha256 of the bytes before
//! that frame, and the signature covers that digest, so signing never changes
//! a release's identity, and `zstd -d` / `tar --zstd -xf` still read a signed
//! bundle (zstd skips skippable frames).
//!
//! ```text
//! bundle.lsr = [ tar.zst frames ........ ][ skippable frame, 112 bytes ]
//!               \___ sha256 = digest ___/   magic 0x184D2A5E (LE u32)
//!                                           size  104        (LE u32)
//!                                           "LSTPSIG1"       (8 bytes)
//!                                           public key       (32 bytes)
//!                                           signature        (64 bytes)
//! signature = ed25519(secret, "lockstep release signature v1\n" || digest[32])
//! ```
//!
//! Key files are one line of text: `lockstep-ed25519-secret-v1 <64 hex>` for
//! the 32-byte secret seed, `lockstep-ed25519-public-v1 <64 hex>` for the
//! public key.
//!
//! Must never: accept a signature made for another digest, or read a secret
//! key file that others can read without saying so (the CLI warns).

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::digest::ReleaseDigest;

/// zstd skippable-frame magic we use (any of 0x184D2A50..=0x184D2A5F is skippable).
pub const SIGNATURE_FRAME_MAGIC: u32 = 0x184D_2A5E;
/// Tag that starts our frame's payload, so other skippable frames are not mistaken for ours.
pub const SIGNATURE_FRAME_TAG: &[u8; 8] = b"LSTPSIG1";
const PAYLOAD_LEN: usize = 8 + 32 + 64;
/// Total length of the trailing signature frame.
pub const SIGNATURE_FRAME_LEN: usize = 8 + PAYLOAD_LEN;
/// Domain separation: a release signature can never be replayed as another kind of signature.
const SIGNED_CONTEXT: &[u8] = b"lockstep release signature v1\n";

const SECRET_HEADER: &str = "lockstep-ed25519-secret-v1";
const PUBLIC_HEADER: &str = "lockstep-ed25519-public-v1";

/// Errors of key files and signatures.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("cannot read key file {path}")]
    ReadKey {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write key file {path}")]
    WriteKey {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "key file {path} already exists; refusing to overwrite it (choose another path or delete it first)"
    )]
    KeyExists { path: PathBuf },
    #[error(
        "key file {path} is not a `{expected}` key (expected one line `{expected} <64 hex digits>`)"
    )]
    BadKeyFile {
        path: PathBuf,
        expected: &'static str,
    },
    #[error("public key in {path} is not a valid ed25519 point")]
    BadPublicKey { path: PathBuf },
    #[error("cannot get random bytes for a new key: {0}")]
    Random(String),
    #[error("signature by key {key} does not match digest {digest}")]
    BadSignature {
        key: PublicKey,
        digest: ReleaseDigest,
    },
    #[error("signature frame carries an invalid public key")]
    BadFrameKey,
    #[error("bundle {digest} is not signed, but trusted keys are configured")]
    Unsigned { digest: ReleaseDigest },
    #[error("bundle {digest} is signed by {key}, which is not a trusted key")]
    UntrustedKey {
        key: PublicKey,
        digest: ReleaseDigest,
    },
}

/// An ed25519 public key, checked to be a valid curve point when made.
/// Kept as its 32 bytes so errors carrying it stay small.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Reads a `lockstep-ed25519-public-v1` key file.
    pub fn load(path: &Path) -> Result<Self, SigningError> {
        let bytes = read_key_line(path, PUBLIC_HEADER)?;
        VerifyingKey::from_bytes(&bytes)
            .map(|_| Self(bytes))
            .map_err(|_| SigningError::BadPublicKey {
                path: path.to_owned(),
            })
    }

    /// The key file text (one line).
    pub fn to_file_text(&self) -> String {
        format!("{PUBLIC_HEADER} {}\n", hex::encode(self.0))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Checks that `signature` signs `digest` under this key.
    pub fn verify(&self, digest: &ReleaseDigest, signature: &[u8; 64]) -> Result<(), SigningError> {
        let sig = Signature::from_bytes(signature);
        VerifyingKey::from_bytes(&self.0)
            .and_then(|k| k.verify_strict(&signed_message(digest), &sig))
            .map_err(|_| SigningError::BadSignature {
                key: *self,
                digest: *digest,
            })
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// An ed25519 secret key. Its Debug output never shows the secret.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public())
    }
}

impl SecretKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Result<Self, SigningError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| SigningError::Random(e.to_string()))?;
        Ok(Self::from_seed(seed))
    }

    /// A key from its 32 secret bytes (tests use fixed seeds).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// Reads a `lockstep-ed25519-secret-v1` key file.
    pub fn load(path: &Path) -> Result<Self, SigningError> {
        read_key_line(path, SECRET_HEADER).map(Self::from_seed)
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Writes `path` (secret, mode 0600) and `path.pub`; refuses to overwrite either.
    pub fn write_pair(&self, path: &Path) -> Result<PathBuf, SigningError> {
        let pub_path = public_key_path(path);
        for p in [path, pub_path.as_path()] {
            if p.symlink_metadata().is_ok() {
                return Err(SigningError::KeyExists { path: p.to_owned() });
            }
        }
        let secret = format!("{SECRET_HEADER} {}\n", hex::encode(self.0.to_bytes()));
        write_new(path, secret.as_bytes(), 0o600)?;
        write_new(&pub_path, self.public().to_file_text().as_bytes(), 0o644)?;
        Ok(pub_path)
    }

    /// Signs a digest.
    pub fn sign(&self, digest: &ReleaseDigest) -> [u8; 64] {
        self.0.sign(&signed_message(digest)).to_bytes()
    }

    /// The 112-byte skippable frame carrying this key's signature over `digest`.
    pub fn signature_frame(&self, digest: &ReleaseDigest) -> [u8; SIGNATURE_FRAME_LEN] {
        let mut frame = [0u8; SIGNATURE_FRAME_LEN];
        frame[0..4].copy_from_slice(&SIGNATURE_FRAME_MAGIC.to_le_bytes());
        frame[4..8].copy_from_slice(&(PAYLOAD_LEN as u32).to_le_bytes());
        frame[8..16].copy_from_slice(SIGNATURE_FRAME_TAG);
        frame[16..48].copy_from_slice(self.public().as_bytes());
        frame[48..112].copy_from_slice(&self.sign(digest));
        frame
    }
}

/// `KEY` → `KEY.pub`.
pub fn public_key_path(secret: &Path) -> PathBuf {
    let mut s = secret.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// A signature found in a bundle's trailing frame (not yet checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedSignature {
    pub key: PublicKey,
    pub signature: [u8; 64],
}

/// If `tail` (the last [`SIGNATURE_FRAME_LEN`] bytes of a file) is our
/// signature frame, returns what it carries.
pub fn parse_signature_frame(tail: &[u8]) -> Option<Result<EmbeddedSignature, SigningError>> {
    if tail.len() != SIGNATURE_FRAME_LEN
        || tail[0..4] != SIGNATURE_FRAME_MAGIC.to_le_bytes()
        || tail[4..8] != (PAYLOAD_LEN as u32).to_le_bytes()
        || &tail[8..16] != SIGNATURE_FRAME_TAG
    {
        return None;
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&tail[16..48]);
    let mut signature = [0u8; 64];
    signature.copy_from_slice(&tail[48..112]);
    Some(match VerifyingKey::from_bytes(&key) {
        Ok(_) => Ok(EmbeddedSignature {
            key: PublicKey(key),
            signature,
        }),
        Err(_) => Err(SigningError::BadFrameKey),
    })
}

/// The keys a store or `verify --key` trusts. Empty means signatures are optional.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys(Vec<PublicKey>);

impl TrustedKeys {
    /// No trusted keys: unsigned bundles are accepted (a present signature must still be valid).
    pub fn none() -> Self {
        Self(Vec::new())
    }

    pub fn new(keys: Vec<PublicKey>) -> Self {
        Self(keys)
    }

    /// Loads each public key file.
    pub fn load(paths: &[PathBuf]) -> Result<Self, SigningError> {
        paths
            .iter()
            .map(|p| PublicKey::load(p))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.0
    }

    /// The signature policy: a present signature must be valid; when keys are
    /// configured a signature is required and its key must be one of them.
    pub fn check(
        &self,
        digest: &ReleaseDigest,
        signature: Option<&EmbeddedSignature>,
    ) -> Result<(), SigningError> {
        match signature {
            None if self.is_empty() => Ok(()),
            None => Err(SigningError::Unsigned { digest: *digest }),
            Some(sig) => {
                if !self.is_empty() && !self.0.contains(&sig.key) {
                    return Err(SigningError::UntrustedKey {
                        key: sig.key,
                        digest: *digest,
                    });
                }
                sig.key.verify(digest, &sig.signature)
            }
        }
    }
}

fn signed_message(digest: &ReleaseDigest) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNED_CONTEXT.len() + 32);
    m.extend_from_slice(SIGNED_CONTEXT);
    m.extend_from_slice(digest.as_bytes());
    m
}

fn read_key_line(path: &Path, header: &'static str) -> Result<[u8; 32], SigningError> {
    let text = fs::read_to_string(path).map_err(|source| SigningError::ReadKey {
        path: path.to_owned(),
        source,
    })?;
    let bad = || SigningError::BadKeyFile {
        path: path.to_owned(),
        expected: header,
    };
    let mut parts = text.split_whitespace();
    let (Some(h), Some(hex_digits), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    if h != header {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut out).map_err(|_| bad())?;
    Ok(out)
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), SigningError> {
    let err = |source: io::Error| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            SigningError::KeyExists {
                path: path.to_owned(),
            }
        } else {
            SigningError::WriteKey {
                path: path.to_owned(),
                source,
            }
        }
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_pair_round_trips_through_files_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("release.key");
        let key = SecretKey::generate().unwrap();
        let pub_path = key.write_pair(&key_path).unwrap();
        assert_eq!(pub_path, dir.path().join("release.key.pub"));
        let mode = fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = SecretKey::load(&key_path).unwrap();
        assert_eq!(loaded.public(), key.public());
        assert_eq!(PublicKey::load(&pub_path).unwrap(), key.public());
        assert!(matches!(
            key.write_pair(&key_path),
            Err(SigningError::KeyExists { .. })
        ));
        // A public key file is not a secret key file.
        assert!(matches!(
            SecretKey::load(&pub_path),
            Err(SigningError::BadKeyFile { .. })
        ));
    }

    #[test]
    fn frame_round_trips_and_policy_holds() {
        let key = SecretKey::from_seed([7; 32]);
        let other = SecretKey::from_seed([8; 32]);
        let digest = ReleaseDigest::of_bytes(b"bundle");
        let frame = key.signature_frame(&digest);
        let sig = parse_signature_frame(&frame).unwrap().unwrap();
        assert_eq!(sig.key, key.public());

        TrustedKeys::none().check(&digest, Some(&sig)).unwrap();
        TrustedKeys::none().check(&digest, None).unwrap();
        let trusted = TrustedKeys::new(vec![key.public()]);
        trusted.check(&digest, Some(&sig)).unwrap();
        assert!(matches!(
            trusted.check(&digest, None),
            Err(SigningError::Unsigned { .. })
        ));
        let other_digest = ReleaseDigest::of_bytes(b"other");
        assert!(matches!(
            trusted.check(&other_digest, Some(&sig)),
            Err(SigningError::BadSignature { .. })
        ));
        let only_other = TrustedKeys::new(vec![other.public()]);
        assert!(matches!(
            only_other.check(&digest, Some(&sig)),
            Err(SigningError::UntrustedKey { .. })
        ));
        assert!(parse_signature_frame(&[0u8; SIGNATURE_FRAME_LEN]).is_none());
    }
}
