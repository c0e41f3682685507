//! The `http` readiness probe: `GET url` answers with a 2xx status.
//!
//! Owns a deliberately tiny HTTP/1.1 client: one request with a `Host`
//! header and `Connection: close`, then only the status line is read (at
//! most [`MAX_STATUS_LINE`] bytes, across however many partial reads it
//! takes) and the connection is dropped.
//!
//! ```text
//! connect host:port ─> "GET path HTTP/1.1" ─> read until "\n" ─> parse "HTTP/1.x NNN reason"
//!                                                                  2xx = ready, else failure
//! ```
//!
//! Must never: follow a redirect (a 3xx is a failure naming the status),
//! read an unbounded amount of what the app sends, or wait on its own (the
//! caller bounds the attempt).

use std::fmt;

use release::manifest::HttpUrl;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ProbeFailure;

/// Longest status line read before giving up (real ones are ~20 bytes).
pub const MAX_STATUS_LINE: usize = 1024;
/// Longest reason phrase kept for the failure message.
const MAX_REASON: usize = 64;

/// Sends `GET url` and wants a 2xx.
#[derive(Debug, Clone)]
pub struct HttpProbe {
    url: HttpUrl,
}

/// A parsed HTTP/1.x status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLine {
    pub code: u16,
    pub reason: String,
}

/// Why bytes are not (yet) a status line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusLineError {
    #[error("answered something that is not an HTTP/1.x status line: {shown:?}")]
    Malformed { shown: String },
    #[error("status line longer than {MAX_STATUS_LINE} bytes")]
    TooLong,
}

impl HttpProbe {
    pub fn new(url: HttpUrl) -> HttpProbe {
        HttpProbe { url }
    }

    pub fn url(&self) -> &HttpUrl {
        &self.url
    }

    /// One GET (unbounded: the caller applies the timeout).
    pub async fn check(&self) -> Result<(), ProbeFailure> {
        let fail = |detail: String| ProbeFailure::Http {
            url: self.url.as_str().to_owned(),
            detail,
        };
        let host = self.url.host();
        let port = self.url.port();
        let mut stream = TcpStream::connect((host, port))
            .await
            .map_err(|e| fail(format!("cannot connect to {host}:{port}: {e}")))?;
        stream
            .write_all(request(&self.url).as_bytes())
            .await
            .map_err(|e| fail(format!("cannot send the request: {e}")))?;

        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        let line = loop {
            match parse_status_line(&buf) {
                Ok(Some(line)) => break line,
                Ok(None) => {}
                Err(e) => return Err(fail(e.to_string())),
            }
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| fail(format!("cannot read the answer: {e}")))?;
            if n == 0 {
                return Err(fail(if buf.is_empty() {
                    "connection closed without an answer".to_owned()
                } else {
                    format!(
                        "connection closed inside the status line: {:?}",
                        shown(&buf)
                    )
                }));
            }
            let room = (MAX_STATUS_LINE + 1).saturating_sub(buf.len());
            buf.extend_from_slice(&chunk[..n.min(room)]);
        };
        if (200..300).contains(&line.code) {
            Ok(())
        } else {
            Err(ProbeFailure::HttpStatus {
                url: self.url.as_str().to_owned(),
                code: line.code,
                reason: line.reason,
            })
        }
    }
}

impl fmt::Display for HttpProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http GET {}", self.url.as_str())
    }
}

/// The request bytes: `HttpUrl` already refuses spaces and control characters.
fn request(url: &HttpUrl) -> String {
    let host = if url.host().contains(':') {
        format!("[{}]", url.host())
    } else {
        url.host().to_owned()
    };
    let authority = if url.port() == 80 {
        host
    } else {
        format!("{host}:{}", url.port())
    };
    format!(
        "GET {} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: lockstep-agent-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        url.path()
    )
}

/// Parses the status line at the start of `buf`: `Ok(None)` while no line
/// end has arrived yet, an error once it cannot become a status line.
pub fn parse_status_line(buf: &[u8]) -> Result<Option<StatusLine>, StatusLineError> {
    let Some(end) = buf.iter().position(|b| *b == b'\n') else {
        // Reject early what can never be a status line, and anything too long.
        let prefix = &buf[..buf.len().min(5)];
        if !b"HTTP/".starts_with(prefix) {
            return Err(malformed(buf));
        }
        if buf.len() > MAX_STATUS_LINE {
            return Err(StatusLineError::TooLong);
        }
        return Ok(None);
    };
    if end > MAX_STATUS_LINE {
        return Err(StatusLineError::TooLong);
    }
    let line = &buf[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let bad = || malformed(line);
    let rest = line.strip_prefix(b"HTTP/1.").ok_or_else(bad)?;
    let (minor, rest) = rest.split_first().ok_or_else(bad)?;
    if !minor.is_ascii_digit() {
        return Err(bad());
    }
    let rest = rest.strip_prefix(b" ").ok_or_else(bad)?;
    if rest.len() < 3 || !rest[..3].iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let code = rest[..3]
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    if !(100..=599).contains(&code) {
        return Err(bad());
    }
    let reason = match &rest[3..] {
        [] => String::new(),
        [b' ', reason @ ..] => shown(reason).chars().take(MAX_REASON).collect(),
        _ => return Err(bad()),
    };
    Ok(Some(StatusLine { code, reason }))
}

fn malformed(bytes: &[u8]) -> StatusLineError {
    StatusLineError::Malformed {
        shown: shown(&bytes[..bytes.len().min(MAX_REASON)]),
    }
}

/// Bytes from the app made safe to print on one log line.
fn shown(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(code: u16, reason: &str) -> Result<Option<StatusLine>, StatusLineError> {
        Ok(Some(StatusLine {
            code,
            reason: reason.to_owned(),
        }))
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), line(200, "OK"));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"),
            line(503, "Service Unavailable")
        );
        assert_eq!(parse_status_line(b"HTTP/1.1 204\r\n"), line(204, ""));
        assert_eq!(
            parse_status_line(b"HTTP/1.1 302 Found\n"),
            line(302, "Found")
        );
    }

    #[test]
    fn partial_status_lines_wait_for_more() {
        for partial in [
            &b""[..],
            b"H",
            b"HTTP/",
            b"HTTP/1.1 20",
            b"HTTP/1.1 200 OK\r",
        ] {
            assert_eq!(parse_status_line(partial), Ok(None), "{partial:?}");
        }
    }

    #[test]
    fn garbage_and_overlong_lines_are_refused() {
        assert!(matches!(
            parse_status_line(b"SSH-2.0-OpenSSH\r\n"),
            Err(StatusLineError::Malformed { .. })
        ));
        assert!(matches!(
            parse_status_line(b"SSH"),
            Err(StatusLineError::Malformed { .. })
        ));
        assert!(parse_status_line(b"HTTP/2 200\r\n").is_err());
        assert!(parse_status_line(b"HTTP/1.1 2000 OK\r\n").is_err());
        assert!(parse_status_line(b"HTTP/1.1 099 x\r\n").is_err());
        assert!(parse_status_line(b"HTTP/1.1 20x OK\r\n").is_err());
        let long = [b"HTTP/1.1 200 ".as_slice(), &[b'a'; MAX_STATUS_LINE]].concat();
        assert_eq!(parse_status_line(&long), Err(StatusLineError::TooLong));
    }

    #[test]
    fn request_names_host_and_closes() {
        let url = HttpUrl::parse("http://127.0.0.1:8080/healthz?x=1").unwrap();
        let r = request(&url);
        assert!(
            r.starts_with("GET /healthz?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"),
            "{r}"
        );
        assert!(
            r.contains("\r\nConnection: close\r\n") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        let v6 = HttpUrl::parse("http://[::1]/").unwrap();
        assert!(request(&v6).contains("\r\nHost: [::1]\r\n"));
    }

    proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_status_line(&bytes);
        }

        #[test]
        fn every_valid_code_round_trips(code in 100u16..=599, reason in "[ -~]{0,40}") {
            let text = format!("HTTP/1.1 {code} {reason}\r\n");
            let parsed = parse_status_line(text.as_bytes()).unwrap().unwrap();
            prop_assert_eq!(parsed.code, code);
            prop_assert_eq!(parsed.reason, reason.trim());
        }
    }
}
