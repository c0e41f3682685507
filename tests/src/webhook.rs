//! `WebhookReceiver`: a small HTTP/1.1 server on a loopback port that
//! records every POST (headers and body) and answers 200, for the
//! coordinator's `[[notify]]` webhooks; plain, or https with a
//! certificate from a `TestPki` (`start_tls`).
//!
//! Must never: answer before the delivery is recorded (a 200 means the
//! test has it), or outlive its fixture (the task is aborted on drop).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::{HarnessError, TlsFiles};

/// A request head or body larger than this is not a webhook delivery.
const MAX_REQUEST_BYTES: usize = 1 << 20;

/// One request the receiver took.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub method: String,
    pub path: String,
    /// Header names in lowercase.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// Records deliveries until dropped.
#[derive(Debug)]
pub struct WebhookReceiver {
    pub addr: SocketAddr,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    task: JoinHandle<()>,
}

impl WebhookReceiver {
    /// Listens on 127.0.0.1:`port`, plain http.
    pub async fn start(port: u16) -> Result<Self, HarnessError> {
        Self::listen(port, None).await
    }

    /// Listens on 127.0.0.1:`port`, https with `files.cert` and
    /// `files.key` (no client certificate asked for). A client that
    /// refuses the certificate is logged and recorded nowhere.
    pub async fn start_tls(port: u16, files: &TlsFiles) -> Result<Self, HarnessError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            HarnessError::Fixture(format!("webhook receiver TLS: {what}: {e}"))
        };
        let chain = CertificateDer::pem_file_iter(&files.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| bad(&files.cert.display().to_string(), &e))?;
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| bad(&files.key.display().to_string(), &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("protocol versions", &e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| bad("certificate and key", &e))?;
        Self::listen(port, Some(TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn listen(port: u16, tls: Option<TlsAcceptor>) -> Result<Self, HarnessError> {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let listener = TcpListener::bind(addr).await.map_err(HarnessError::Port)?;
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let log = deliveries.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = log.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let served = match tls {
                        None => serve(stream, &log).await,
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(stream) => serve(stream, &log).await,
                            Err(e) => Err(format!("TLS handshake: {e}")),
                        },
                    };
                    if let Err(error) = served {
                        tracing::warn!(%error, "webhook receiver: bad request");
                    }
                });
            }
        });
        Ok(Self {
            addr,
            deliveries,
            task,
        })
    }

    /// Every delivery so far, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries
            .lock()
            .map(|d| d.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<S>(mut stream: S, log: &Mutex<Vec<Delivery>>) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Err("request head too large".to_owned());
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before the request head ended".to_owned());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or_default().to_owned();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .map(|v| v.parse().map_err(|e| format!("content-length {v:?}: {e}")))
        .transpose()?
        .unwrap_or(0);
    if length > MAX_REQUEST_BYTES {
        return Err(format!("body of {length} bytes"));
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed inside the body".to_owned());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    match log.lock() {
        Ok(mut d) => d.push(Delivery {
            method,
            path,
            headers,
            body,
        }),
        Err(poisoned) => poisoned.into_inner().push(Delivery {
            method,
            path,
            headers,
            body,
        }),
    }
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    stream.shutdown().await.map_err(|e| e.to_string())
}
