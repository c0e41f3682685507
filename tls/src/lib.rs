//! Mutual TLS for every gRPC hop of Lockstep (coordinator ⇄ agent, the
//! operator CLI → coordinator).
//!
//! Owns loading a node's PEM material (the fleet CA, its certificate chain
//! and private key) with errors that name the file and what is wrong, turning
//! it into tonic's `ServerTlsConfig` (client certificate required, chained to
//! the CA) and `ClientTlsConfig` (server checked against the CA, our
//! certificate presented), and reading a peer's identity — the DNS names in
//! its certificate's subjectAltName, or its CN when it has none — from a
//! request.
//!
//! Must never: decide who may do what (callers compare identities against
//! their own lists), accept a private key that does not belong to the
//! certificate beside it, or print key material (`Debug` redacts it).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

mod pattern;

pub use pattern::{NamePattern, PatternError};

/// What is wrong with a node's TLS material; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} {path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("the {what} {path} is not valid PEM: {reason}")]
    NotPem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("certificate {index} in the {what} {path} is not a valid X.509 certificate: {reason}")]
    BadCertificate {
        what: &'static str,
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error(
        "the {what} {path} has expired or is not valid yet (valid {not_before} to {not_after})"
    )]
    NotValidNow {
        what: &'static str,
        path: PathBuf,
        not_before: String,
        not_after: String,
    },
    #[error(
        "the private key file {path} holds no PEM private key (expected PKCS#8, PKCS#1 or SEC1: -----BEGIN PRIVATE KEY-----): {reason}"
    )]
    NoKey { path: PathBuf, reason: String },
    #[error("the private key in {path} is of a kind rustls cannot sign with: {reason}")]
    UnsupportedKey { path: PathBuf, reason: String },
    #[error(
        "the private key in {key} does not belong to the certificate in {cert}; give the key the certificate was issued for"
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
}

/// Where a node's TLS material lives on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// The fleet CA (PEM): peers must present a certificate chained to it.
    pub ca: PathBuf,
    /// This node's certificate (PEM; leaf first, intermediates after it).
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
}

/// The `[tls]` file keys of an agent's or coordinator's config, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFileKeys {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsPaths {
    /// Checks a config's `[tls]` file keys: each given, absolute and
    /// readable. Every problem is handed to `problem(key, message)` (key as
    /// `tls.ca`), all of them, not just the first; `node` says whose
    /// certificate it is ("this agent") and `ca_signs` whose the CA signs.
    pub fn from_config(
        keys: TlsFileKeys,
        node: &str,
        ca_signs: &str,
        mut problem: impl FnMut(&str, String),
    ) -> Option<TlsPaths> {
        let mut file = |key: &str, value: Option<PathBuf>, what: String| {
            let path = value
                .ok_or_else(|| format!("required: the {what} (PEM)"))
                .and_then(|p| {
                    if p.is_absolute() {
                        Ok(p)
                    } else {
                        Err(format!("`{}` must be an absolute path", p.display()))
                    }
                })
                .and_then(|p| match std::fs::File::open(&p) {
                    Ok(_) => Ok(p),
                    Err(e) => Err(format!("cannot read {}: {e}", p.display())),
                });
            path.map_err(|message| problem(&format!("tls.{key}"), message))
                .ok()
        };
        let ca = file(
            "ca",
            keys.ca,
            format!("CA that signs {ca_signs} certificates"),
        );
        let cert = file("cert", keys.cert, format!("certificate of {node}"));
        let key = file(
            "key",
            keys.key,
            format!("private key of {node}'s certificate"),
        );
        Some(TlsPaths {
            ca: ca?,
            cert: cert?,
            key: key?,
        })
    }
}

/// A node's TLS material, read and checked: the CA parses, the
/// certificate parses and is valid now, the key parses and belongs to the
/// certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    paths: TlsPaths,
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    identity: PeerIdentity,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("paths", &self.paths)
            .field("identity", &self.identity)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Reads and checks the three files. Blocking: call from
    /// `spawn_blocking` (or before the runtime starts) in async code.
    pub fn load(paths: &TlsPaths) -> Result<Self, TlsError> {
        const CA: &str = "CA certificate file";
        const CERT: &str = "certificate file";
        let ca_pem = read(CA, &paths.ca)?;
        parse_certificates(CA, &paths.ca, &ca_pem)?;
        let cert_pem = read(CERT, &paths.cert)?;
        let chain = parse_certificates(CERT, &paths.cert, &cert_pem)?;
        let key_pem = read("private key file", &paths.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
            path: paths.key.clone(),
            reason: e.to_string(),
        })?;
        let signing_key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
            TlsError::UnsupportedKey {
                path: paths.key.clone(),
                reason: e.to_string(),
            }
        })?;
        let leaf = chain
            .first()
            .cloned()
            .ok_or_else(|| TlsError::NoCertificate {
                what: CERT,
                path: paths.cert.clone(),
            })?;
        let certified = rustls::sign::CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            Ok(()) => {}
            // ring cannot derive the public key of every key kind; the
            // handshake still fails on a mismatch then, only later.
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => {
                return Err(TlsError::KeyMismatch {
                    cert: paths.cert.clone(),
                    key: paths.key.clone(),
                });
            }
        }
        let identity =
            PeerIdentity::of_certificate(&leaf).map_err(|reason| TlsError::BadCertificate {
                what: CERT,
                path: paths.cert.clone(),
                index: 0,
                reason,
            })?;
        Ok(Self {
            paths: paths.clone(),
            ca_pem,
            cert_pem,
            key_pem,
            identity,
        })
    }

    pub fn paths(&self) -> &TlsPaths {
        &self.paths
    }

    /// Who this node is to its peers (its certificate's names).
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    /// A server that requires every client to present a certificate
    /// chained to the CA, and presents ours.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.tonic_identity())
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(false)
    }

    /// A client that accepts only servers whose certificate chains to the
    /// CA and names the host it dials, and presents ours.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(self.tonic_identity())
    }

    fn tonic_identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }
}

/// The names a peer's certificate vouches for: its DNS subjectAltNames, or
/// its subject CN when it has none. IP addresses never name an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    names: Vec<String>,
}

impl PeerIdentity {
    /// Reads the names of one DER certificate.
    pub fn of_certificate(der: &CertificateDer<'_>) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("cannot parse it ({e})"))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                    names.push(dns.to_ascii_lowercase());
                }
            }
        }
        if names.is_empty() {
            names.extend(
                cert.subject()
                    .iter_common_name()
                    .filter_map(|cn| cn.as_str().ok())
                    .map(str::to_ascii_lowercase),
            );
        }
        Ok(Self { names })
    }

    /// The identity of whoever sent `request`: the leaf of the chain it
    /// presented in the TLS handshake. `None` when the connection is not
    /// TLS or the peer presented no certificate.
    pub fn of_request<T>(request: &tonic::Request<T>) -> Option<Result<Self, String>> {
        let certs: Arc<Vec<CertificateDer<'static>>> = request.peer_certs()?;
        let leaf = certs.first()?;
        Some(Self::of_certificate(leaf))
    }

    /// An identity of these names (lowercased), as a certificate would
    /// carry them: for pure decisions and their tests.
    pub fn from_names(names: impl IntoIterator<Item = String>) -> Self {
        Self {
            names: names.into_iter().map(|n| n.to_ascii_lowercase()).collect(),
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether any of the peer's names matches one of `patterns`.
    pub fn matches_any(&self, patterns: &[NamePattern]) -> bool {
        self.names
            .iter()
            .any(|name| patterns.iter().any(|p| p.matches(name)))
    }

    /// Whether any of the peer's names is in `trusted` (case-insensitive,
    /// as DNS names are).
    pub fn is_any_of(&self, trusted: &[String]) -> bool {
        self.names
            .iter()
            .any(|name| trusted.iter().any(|t| t.eq_ignore_ascii_case(name)))
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.names.is_empty() {
            f.write_str("<a certificate with no DNS name and no CN>")
        } else {
            f.write_str(&self.names.join(", "))
        }
    }
}

/// The TLS failure among `err`'s causes, described (e.g. "received fatal
/// alert: UnknownCA" when the server refused our certificate), so callers
/// can tell "your certificate was refused" from "the server is down".
pub fn tls_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(err);
    while let Some(current) = next {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        // tokio-rustls reports TLS errors as io::Errors wrapping them, and
        // io::Error::source skips the wrapped error itself.
        if let Some(tls) = current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls.to_string());
        }
        next = current.source();
    }
    None
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Reads the certificates of a PEM file (a CA bundle, a `ca_file`):
/// at least one, each parsable and valid now; `what` names the file in
/// errors ("CA file of notify[0]").
pub fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    parse_certificates(what, path, &pem)
}

/// Every certificate in a PEM file; at least one, each parsable and valid
/// now (an expired certificate would otherwise fail every handshake with a
/// message far from its cause).
fn parse_certificates(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NotPem {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    for (index, der) in certs.iter().enumerate() {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| {
            TlsError::BadCertificate {
                what,
                path: path.to_owned(),
                index,
                reason: e.to_string(),
            }
        })?;
        let validity = cert.validity();
        if !validity.is_valid() {
            return Err(TlsError::NotValidNow {
                what,
                path: path.to_owned(),
                not_before: validity.not_before.to_string(),
                not_after: validity.not_after.to_string(),
            });
        }
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    fn ca() -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test ca");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert, rcgen::Issuer::new(params, key))
    }

    fn leaf(
        issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
        names: &[&str],
        cn: &str,
    ) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn setup() -> (Files, TlsPaths) {
        let files = Files {
            dir: tempfile::tempdir().unwrap(),
        };
        let (ca_cert, issuer) = ca();
        let (cert, key) = leaf(&issuer, &["coordinator.lockstep", "127.0.0.1"], "coord");
        let paths = TlsPaths {
            ca: files.write("ca.pem", &ca_cert.pem()),
            cert: files.write("cert.pem", &cert),
            key: files.write("key.pem", &key),
        };
        (files, paths)
    }

    #[test]
    fn good_material_loads_and_names_its_dns_sans() {
        let (_files, paths) = setup();
        let material = TlsMaterial::load(&paths).unwrap();
        assert_eq!(material.identity().names(), ["coordinator.lockstep"]);
        assert!(
            material
                .identity()
                .is_any_of(&["Coordinator.Lockstep".to_owned()])
        );
        let debug = format!("{material:?}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    }

    #[test]
    fn the_cn_names_a_certificate_without_dns_sans() {
        let (_ca, issuer) = ca();
        let (cert, _) = leaf(&issuer, &[], "operator-alice");
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let identity = PeerIdentity::of_certificate(&der).unwrap();
        assert_eq!(identity.names(), ["operator-alice"]);
    }

    #[test]
    fn every_problem_names_the_file() {
        let (files, paths) = setup();
        let missing = TlsPaths {
            cert: files.dir.path().join("nope.pem"),
            ..paths.clone()
        };
        let err = TlsMaterial::load(&missing).unwrap_err().to_string();
        assert!(
            err.contains("certificate file") && err.contains("nope.pem"),
            "{err}"
        );

        let not_pem = TlsPaths {
            ca: files.write("junk.pem", "hello\n"),
            ..paths.clone()
        };
        let err = TlsMaterial::load(&not_pem).unwrap_err().to_string();
        assert!(err.contains("junk.pem") && err.contains("no PEM"), "{err}");

        let cert_as_key = TlsPaths {
            key: paths.cert.clone(),
            ..paths.clone()
        };
        let err = TlsMaterial::load(&cert_as_key).unwrap_err().to_string();
        assert!(err.contains("no PEM private key"), "{err}");

        let (_other_ca, other) = ca();
        let (_, other_key) = leaf(&other, &["x"], "x");
        let mismatched = TlsPaths {
            key: files.write("other-key.pem", &other_key),
            ..paths
        };
        let err = TlsMaterial::load(&mismatched).unwrap_err().to_string();
        assert!(
            err.contains("does not belong") && err.contains("other-key.pem"),
            "{err}"
        );
    }
}
