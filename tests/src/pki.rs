//! `TestPki`: a throw-away certificate authority for mTLS tests. Every
//! key and certificate is generated at test time (rcgen) into a temporary
//! directory; none is ever committed.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::HarnessError;

/// The PEM files of one identity, as `[tls]` tables and the CLI's `--ca`,
/// `--cert`, `--key` name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA the peers of this identity must chain to.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// `ca = …`, `cert = …`, `key = …` lines for a `[tls]` table.
    pub fn toml_lines(&self) -> String {
        format!(
            "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            self.ca.display(),
            self.cert.display(),
            self.key.display()
        )
    }

    /// `--ca FILE --cert FILE --tls-key FILE` for the `lockstep` CLI.
    pub fn cli_args(&self) -> Vec<String> {
        [
            ("--ca", &self.ca),
            ("--cert", &self.cert),
            ("--tls-key", &self.key),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_owned(), path.display().to_string()])
        .collect()
    }
}

/// A CA whose certificates name `127.0.0.1` besides their DNS names, so
/// servers on loopback verify as the address they are dialled at.
pub struct TestPki {
    dir: tempfile::TempDir,
    ca: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl fmt::Debug for TestPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestPki")
            .field("dir", &self.dir.path())
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

fn pki_error(what: &str, err: impl fmt::Display) -> HarnessError {
    HarnessError::Fixture(format!("test PKI: {what}: {err}"))
}

impl TestPki {
    /// A fresh CA named `name`, in its own temporary directory.
    pub fn new(name: &str) -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("lockstep-pki-")
            .tempdir()
            .map_err(HarnessError::TempDir)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| pki_error("CA parameters", e))?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().map_err(|e| pki_error("CA key", e))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| pki_error("CA certificate", e))?;
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.pem()).map_err(|e| pki_error("write ca.pem", e))?;
        Ok(Self {
            dir,
            ca,
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// The CA certificate (PEM).
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// Issues a certificate for `dns_name` (also valid for `127.0.0.1` and
    /// `localhost`, usable as server and client) and writes
    /// `<dns_name>.pem` and `<dns_name>.key`.
    pub fn issue(&self, dns_name: &str) -> Result<TlsFiles, HarnessError> {
        let mut params = rcgen::CertificateParams::new(vec![
            dns_name.to_owned(),
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .map_err(|e| pki_error(dns_name, e))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, dns_name);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().map_err(|e| pki_error(dns_name, e))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| pki_error(dns_name, e))?;
        let files = TlsFiles {
            ca: self.ca.clone(),
            cert: self.dir.path().join(format!("{dns_name}.pem")),
            key: self.dir.path().join(format!("{dns_name}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).map_err(|e| pki_error("write cert", e))?;
        std::fs::write(&files.key, key.serialize_pem()).map_err(|e| pki_error("write key", e))?;
        Ok(files)
    }
}
