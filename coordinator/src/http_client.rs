//! The coordinator's small HTTP/1.1 client, shared by the webhooks
//! (`notify`) and the analysis gates' Prometheus queries (`analysis`):
//! reading an `http://` or `https://` base URL into an `Origin`, loading
//! which CAs an https server must chain to (`TlsTrust`: the system's
//! bundle, or the endpoint's own `ca_file`), and one exchange — connect,
//! TLS handshake (rustls on ring) with the URL's host as the server name,
//! request, response head — within a connect deadline.
//!
//! ```text
//! config load: Origin::split(url) ─► Transport::for_origin(origin, ca_file) ─► Plain | Tls{trust, server name}
//! delivery:    send(origin, transport, request, connect deadline) ─► TCP ─► [TLS] ─► HTTP/1.1 ─► Response
//! ```
//!
//! Must never: accept a server certificate that does not chain to the
//! configured roots or does not name the URL's host, fall back from
//! https to plain http, read an answer without a bound (`read_body`), or
//! connect without a deadline. What to send and what an answer means is
//! the caller's.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};

/// Debian's bundle of the system's trusted CAs (package ca-certificates);
/// `SSL_CERT_FILE` names another, as for OpenSSL and curl.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The environment variable that overrides `SYSTEM_CA_BUNDLE`.
pub const SSL_CERT_FILE: &str = "SSL_CERT_FILE";
/// Debian's bundle is about 220 KB; a CA file larger than this is not one.
const MAX_CA_FILE_BYTES: u64 = 8 << 20;

/// `http://` or `https://`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn prefix(self) -> &'static str {
        match self {
            Self::Http => "http://",
            Self::Https => "https://",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

/// The scheme, host and port of a URL, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: Scheme,
    /// Without the brackets of an IPv6 literal: what is dialled and what
    /// the server's certificate must name.
    host: String,
    port: u16,
    /// As written in the URL (`Host:` header and `Display`).
    authority: String,
}

impl Origin {
    /// Splits `url` into its origin and the rest (`""`, or from the first
    /// `/`, `?` or `#`). The port defaults to the scheme's (80, 443);
    /// credentials in the URL are refused (they would be sent in clear
    /// to logs); an https host must be a DNS name or an IP address.
    pub fn split(url: &str) -> Result<(Self, &str), String> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else {
            return Err(format!("{url:?}: must start with http:// or https://"));
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.contains('@') {
            return Err(format!(
                "{url:?}: no credentials in the URL (user@host is refused)"
            ));
        }
        let parsed = authority
            .parse::<hyper::http::uri::Authority>()
            .map_err(|e| format!("{url:?}: the host and port {authority:?}: {e}"))?;
        let host = parsed.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || authority.ends_with(':') {
            return Err(format!(
                "{url:?}: name the host (and a port, if not the default), as in {}127.0.0.1:8080",
                scheme.prefix()
            ));
        }
        if scheme == Scheme::Https {
            ServerName::try_from(host).map_err(|e| {
                format!("{url:?}: {host:?} is neither a DNS name nor an IP address a certificate can name: {e}")
            })?;
        }
        // `Authority::port` reads an out-of-range port as none at all.
        let port_text = authority
            .rsplit_once(':')
            .map(|(_, port)| port)
            .filter(|port| !port.contains(']'));
        let port = match port_text {
            None => scheme.default_port(),
            Some(port) => port
                .parse::<u16>()
                .map_err(|e| format!("{url:?}: the port {port:?}: {e}"))?,
        };
        let origin = Self {
            scheme,
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
        };
        Ok((origin, tail))
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// `host[:port]` as written: the `Host:` header.
    pub fn authority(&self) -> &str {
        &self.authority
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.scheme.prefix(), self.authority)
    }
}

/// Why the CAs an https endpoint must chain to cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("ca_file is only for https:// URLs; this one is plain http")]
    CaFileWithoutTls,
    #[error("ca_file {path}: must be an absolute path")]
    Relative { path: PathBuf },
    #[error("ca_file {path}: cannot read it")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: larger than {MAX_CA_FILE_BYTES} bytes; not a CA bundle")]
    TooLarge { path: PathBuf },
    #[error("ca_file {path}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: tls::TlsError,
    },
    #[error("ca_file {path}: certificate {index} cannot be a trust anchor")]
    NotAnchor {
        path: PathBuf,
        index: usize,
        #[source]
        source: rustls::Error,
    },
    #[error(
        "the system's CA bundle {path} cannot be read (install ca-certificates, or give the endpoint a ca_file)"
    )]
    SystemBundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the system's CA bundle {path} holds no usable CA certificate (give the endpoint a ca_file)"
    )]
    EmptySystemBundle { path: PathBuf },
    #[error("{host:?} is neither a DNS name nor an IP address a certificate can name")]
    ServerName {
        host: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error("rustls refuses its own default protocol versions")]
    Protocols(#[source] rustls::Error),
}

/// The CAs an https server's certificate must chain to, and the rustls
/// client configuration built on them (ring, TLS 1.2 and 1.3).
#[derive(Clone)]
pub struct TlsTrust {
    /// The file the roots were read from: the `ca_file` or the system's
    /// bundle.
    roots_from: PathBuf,
    config: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for TlsTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsTrust")
            .field("roots_from", &self.roots_from)
            .finish_non_exhaustive()
    }
}

impl PartialEq for TlsTrust {
    fn eq(&self, other: &Self) -> bool {
        self.roots_from == other.roots_from
    }
}

impl Eq for TlsTrust {}

impl TlsTrust {
    /// `ca_file` (PEM, every certificate valid now and usable as a
    /// trust anchor) replaces the system's CAs for this endpoint; without
    /// it the system bundle (`SSL_CERT_FILE` or `SYSTEM_CA_BUNDLE`) is
    /// read, skipping certificates webpki cannot use. Blocking (file IO).
    pub fn load(ca_file: Option<&Path>) -> Result<Self, TrustError> {
        let (roots_from, roots) = match ca_file {
            Some(path) => (path.to_owned(), ca_file_roots(path)?),
            None => {
                let path = std::env::var_os(SSL_CERT_FILE)
                    .map_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE), PathBuf::from);
                let roots = system_roots(&path)?;
                (path, roots)
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TrustError::Protocols)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            roots_from,
            config: Arc::new(config),
        })
    }

    /// Where the roots came from (for logs and `check-config`).
    pub fn roots_from(&self) -> &Path {
        &self.roots_from
    }
}

fn ca_file_roots(path: &Path) -> Result<rustls::RootCertStore, TrustError> {
    if !path.is_absolute() {
        return Err(TrustError::Relative {
            path: path.to_owned(),
        });
    }
    let meta = std::fs::metadata(path).map_err(|source| TrustError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    if meta.len() > MAX_CA_FILE_BYTES {
        return Err(TrustError::TooLarge {
            path: path.to_owned(),
        });
    }
    let certs = tls::read_certificates("CA file", path).map_err(|source| TrustError::CaFile {
        path: path.to_owned(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for (index, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|source| TrustError::NotAnchor {
            path: path.to_owned(),
            index,
            source,
        })?;
    }
    Ok(roots)
}

/// The system bundle: a distribution's, with certificates of every age
/// and kind, so the ones webpki cannot use are skipped, not fatal.
fn system_roots(path: &Path) -> Result<rustls::RootCertStore, TrustError> {
    let unreadable = |source| TrustError::SystemBundle {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if meta.len() > MAX_CA_FILE_BYTES {
        return Err(TrustError::TooLarge {
            path: path.to_owned(),
        });
    }
    let pem = std::fs::read(path).map_err(unreadable)?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, skipped) = roots
        .add_parsable_certificates(CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok));
    if added == 0 {
        return Err(TrustError::EmptySystemBundle {
            path: path.to_owned(),
        });
    }
    if skipped > 0 {
        tracing::debug!(path = %path.display(), added, skipped, "system CA bundle: some certificates skipped");
    }
    Ok(roots)
}

/// How an origin is spoken to: plain TCP, or TLS checked against `trust`
/// with the URL's host as the server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Plain,
    Tls {
        trust: TlsTrust,
        server_name: ServerName<'static>,
    },
}

impl Transport {
    /// Plain for `http://` (a `ca_file` is then a mistake, refused), TLS
    /// for `https://` (roots from `ca_file` or the system). Blocking.
    pub fn for_origin(origin: &Origin, ca_file: Option<&Path>) -> Result<Self, TrustError> {
        match origin.scheme {
            Scheme::Http if ca_file.is_some() => Err(TrustError::CaFileWithoutTls),
            Scheme::Http => Ok(Self::Plain),
            Scheme::Https => {
                let trust = TlsTrust::load(ca_file)?;
                let server_name = ServerName::try_from(origin.host.clone()).map_err(|source| {
                    TrustError::ServerName {
                        host: origin.host.clone(),
                        source,
                    }
                })?;
                Ok(Self::Tls { trust, server_name })
            }
        }
    }
}

/// Why one exchange failed; the caller's error names the URL.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("no connection within {timeout:?}")]
    ConnectTimeout { timeout: Duration },
    #[error("cannot connect to {authority}")]
    Connect {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {server_name} failed")]
    Tls {
        server_name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange failed")]
    Http(#[source] hyper::Error),
    #[error("cannot build the request")]
    Request(#[source] hyper::http::Error),
    #[error("reading the answer failed (more than {limit} bytes?)")]
    Body {
        limit: usize,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A request to `origin`: `path_and_query` and its `Host:` header set;
/// the caller adds the rest.
pub fn request(
    origin: &Origin,
    method: hyper::Method,
    path_and_query: &str,
) -> hyper::http::request::Builder {
    hyper::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(hyper::header::HOST, origin.authority())
}

/// One request on a fresh connection: TCP connect and (https) the TLS
/// handshake within `connect_timeout`, then the request and the answer's
/// head. The caller bounds the whole exchange and reads the body with
/// `read_body`.
pub async fn send(
    origin: &Origin,
    transport: &Transport,
    request: hyper::Request<Full<Bytes>>,
    connect_timeout: Duration,
) -> Result<hyper::Response<Incoming>, HttpError> {
    let deadline = tokio::time::Instant::now() + connect_timeout;
    let timed_out = |_| HttpError::ConnectTimeout {
        timeout: connect_timeout,
    };
    let tcp = tokio::time::timeout_at(
        deadline,
        tokio::net::TcpStream::connect((origin.host.as_str(), origin.port)),
    )
    .await
    .map_err(timed_out)?
    .map_err(|source| HttpError::Connect {
        authority: origin.authority.clone(),
        source,
    })?;
    match transport {
        Transport::Plain => exchange(tcp, request).await,
        Transport::Tls { trust, server_name } => {
            let connector = tokio_rustls::TlsConnector::from(trust.config.clone());
            let stream =
                tokio::time::timeout_at(deadline, connector.connect(server_name.clone(), tcp))
                    .await
                    .map_err(timed_out)?
                    .map_err(|source| HttpError::Tls {
                        server_name: server_name.to_str().into_owned(),
                        source,
                    })?;
            exchange(stream, request).await
        }
    }
}

async fn exchange<S>(
    stream: S,
    request: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<Incoming>, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(HttpError::Http)?;
    // The connection ends when `sender` is dropped (or the peer closes).
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "http client connection ended with an error");
        }
    });
    sender.send_request(request).await.map_err(HttpError::Http)
}

/// The answer's body, at most `limit` bytes.
pub async fn read_body(
    response: hyper::Response<Incoming>,
    limit: usize,
) -> Result<Bytes, HttpError> {
    Ok(Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|source| HttpError::Body { limit, source })?
        .to_bytes())
}

/// An https server for tests: a fresh CA, a certificate from it for the
/// names given, one fixed answer to every request, and the request lines
/// it was sent.
#[cfg(test)]
pub(crate) mod test_server {
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};

    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A CA written as `ca.pem` in a temporary directory.
    pub(crate) struct TestCa {
        pub dir: tempfile::TempDir,
        pub ca: PathBuf,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    impl TestCa {
        pub(crate) fn new(name: &str) -> Self {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let ca = dir.path().join("ca.pem");
            std::fs::write(&ca, cert.pem()).unwrap();
            Self {
                dir,
                ca,
                issuer: rcgen::Issuer::new(params, key),
            }
        }

        fn leaf(&self, names: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
            let params = rcgen::CertificateParams::new(
                names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
            )
            .unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (
                cert.der().clone(),
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
        }
    }

    pub(crate) struct TlsServer {
        pub addr: SocketAddr,
        pub ca: TestCa,
        pub requests: Arc<Mutex<Vec<String>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for TlsServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl TlsServer {
        /// Serves on 127.0.0.1 (a port the listener holds from the start)
        /// with a certificate naming `names`, answering `200` and `body`.
        pub(crate) async fn start(names: &[&str], body: &'static str) -> Self {
            let ca = TestCa::new("the server's CA");
            let (cert, key) = ca.leaf(names);
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let seen = requests.clone();
            let task = tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        // A refused handshake is the client's doing: the test checks it.
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let mut head = Vec::new();
                        let mut chunk = [0u8; 4096];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 1 << 16 {
                            match tls.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let text = String::from_utf8_lossy(&head);
                        seen.lock()
                            .unwrap()
                            .push(text.lines().next().unwrap_or_default().to_owned());
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = tls.write_all(answer.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    });
                }
            });
            Self {
                addr,
                ca,
                requests,
                task,
            }
        }

        pub(crate) fn requests(&self) -> Vec<String> {
            self.requests.lock().unwrap().clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_server::{TestCa, TlsServer};
    use super::*;

    #[test]
    fn origins_take_both_schemes_default_ports_and_ipv6() {
        let (o, rest) = Origin::split("https://hooks.slack.com/services/T/B/x").unwrap();
        assert_eq!(
            (o.scheme, o.host.as_str(), o.port),
            (Scheme::Https, "hooks.slack.com", 443)
        );
        assert_eq!(
            (o.authority(), rest),
            ("hooks.slack.com", "/services/T/B/x")
        );
        let (o, rest) = Origin::split("http://127.0.0.1:9090?x").unwrap();
        assert_eq!(
            (o.port, rest, o.to_string().as_str()),
            (9090, "?x", "http://127.0.0.1:9090")
        );
        assert_eq!(Origin::split("http://h").unwrap().0.port, 80);
        let (o, _) = Origin::split("https://[::1]:8443/").unwrap();
        assert_eq!((o.host.as_str(), o.authority()), ("::1", "[::1]:8443"));
        for bad in [
            "ftp://h/",
            "h:80",
            "http://",
            "http://:80",
            "http://h:/",
            "http://u@h/",
            "http://h:99999/",
        ] {
            assert!(Origin::split(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn a_ca_file_is_for_https_only_and_must_be_absolute_and_pem() {
        let ca = TestCa::new("another CA");
        let (http, _) = Origin::split("http://h:1").unwrap();
        let (https, _) = Origin::split("https://h:1").unwrap();
        assert!(matches!(
            Transport::for_origin(&http, Some(&ca.ca)),
            Err(TrustError::CaFileWithoutTls)
        ));
        assert_eq!(
            Transport::for_origin(&http, None).unwrap(),
            Transport::Plain
        );
        assert!(matches!(
            Transport::for_origin(&https, Some(Path::new("ca.pem"))),
            Err(TrustError::Relative { .. })
        ));
        let garbage = ca.dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let err = Transport::for_origin(&https, Some(&garbage)).unwrap_err();
        let text = cli::chain(&err);
        assert!(
            text.contains(&format!("ca_file {}", garbage.display()))
                && text.contains("no PEM certificate"),
            "{text}"
        );
        let Transport::Tls { trust, .. } = Transport::for_origin(&https, Some(&ca.ca)).unwrap()
        else {
            panic!("https without TLS");
        };
        assert_eq!(trust.roots_from(), ca.ca);
    }

    #[test]
    fn the_system_bundle_skips_what_it_cannot_use_and_must_hold_one_ca() {
        let ca = TestCa::new("another CA");
        let bundle = ca.dir.path().join("bundle.crt");
        let pem = std::fs::read_to_string(&ca.ca).unwrap();
        std::fs::write(
            &bundle,
            format!(
                "# a comment\n{pem}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            ),
        )
        .unwrap();
        assert_eq!(system_roots(&bundle).unwrap().len(), 1);
        std::fs::write(&bundle, "").unwrap();
        assert!(matches!(
            system_roots(&bundle),
            Err(TrustError::EmptySystemBundle { .. })
        ));
        let missing = ca.dir.path().join("missing.crt");
        let text = cli::chain(&system_roots(&missing).unwrap_err());
        assert!(
            text.contains("missing.crt cannot be read") && text.contains("No such file"),
            "{text}"
        );
    }

    /// The machine's own bundle (Debian's ca-certificates) loads.
    #[test]
    fn the_debian_system_bundle_loads() {
        let roots = system_roots(Path::new(SYSTEM_CA_BUNDLE)).unwrap();
        assert!(!roots.is_empty());
    }

    async fn get(url: &str, ca_file: &Path) -> Result<(u16, Bytes), HttpError> {
        let (origin, path) = Origin::split(url).unwrap();
        let transport = Transport::for_origin(&origin, Some(ca_file)).unwrap();
        let request = request(&origin, hyper::Method::GET, path)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = send(&origin, &transport, request, Duration::from_secs(30)).await?;
        let status = response.status().as_u16();
        Ok((status, read_body(response, 1024).await?))
    }

    #[tokio::test]
    async fn an_https_server_from_the_ca_file_answers() {
        let server = TlsServer::start(&["localhost", "127.0.0.1"], "hello").await;
        let url = format!("https://127.0.0.1:{}/hook?x=1", server.addr.port());
        let (status, body) = get(&url, &server.ca.ca).await.unwrap();
        assert_eq!((status, body.as_ref()), (200, b"hello".as_ref()));
        let url = format!("https://localhost:{}/", server.addr.port());
        assert_eq!(get(&url, &server.ca.ca).await.unwrap().0, 200);
        assert_eq!(
            server.requests(),
            ["GET /hook?x=1 HTTP/1.1", "GET / HTTP/1.1"]
        );
    }

    #[tokio::test]
    async fn a_server_not_from_the_ca_file_or_not_named_so_is_refused_with_the_cause() {
        let server = TlsServer::start(&["localhost", "127.0.0.1"], "hello").await;
        let other = TestCa::new("another CA");
        let url = format!("https://127.0.0.1:{}/", server.addr.port());
        let err = get(&url, &other.ca).await.unwrap_err();
        let text = cli::chain(&err);
        assert!(
            text.starts_with(
                "TLS handshake with 127.0.0.1 failed: invalid peer certificate: UnknownIssuer"
            ),
            "{text}"
        );
        let misnamed = TlsServer::start(&["elsewhere.example"], "hello").await;
        let url = format!("https://127.0.0.1:{}/", misnamed.addr.port());
        let text = cli::chain(&get(&url, &misnamed.ca.ca).await.unwrap_err());
        assert!(text.contains("certificate not valid for name"), "{text}");
        assert!(server.requests().is_empty() && misnamed.requests().is_empty());
    }

    #[tokio::test]
    async fn plain_http_to_a_tls_server_does_not_pass_for_an_answer() {
        let server = TlsServer::start(&["127.0.0.1"], "hello").await;
        let (origin, _) =
            Origin::split(&format!("http://127.0.0.1:{}/", server.addr.port())).unwrap();
        let request = request(&origin, hyper::Method::GET, "/")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let result = tokio::time::timeout(
            Duration::from_secs(60),
            send(&origin, &Transport::Plain, request, Duration::from_secs(30)),
        )
        .await
        .unwrap();
        assert!(result.is_err(), "{result:?}");
    }
}
