//! Which etcd endpoints `Etcd::connect` takes: one rule, so a config that
//! `check-config` calls valid is one the daemon can connect with.
//!
//! Must never: accept an endpoint the client would reach differently than
//! it reads: `https://` without the `[etcd]` TLS files to speak it, or
//! `http://` (credentials in clear) when they are given.

/// Why an etcd endpoint is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error(
        "`{endpoint}` is https://, but [etcd] has no ca, cert and key to speak TLS with: add them, or use http:// on a network only the fleet reaches"
    )]
    Tls { endpoint: String },
    #[error(
        "`{endpoint}` is plain http://, but [etcd] has TLS files: use https:// so requests (and the password) are encrypted"
    )]
    Plain { endpoint: String },
    #[error(
        "`{endpoint}` is not an http:// URL with a host and nothing else, e.g. \"http://10.0.0.5:2379\""
    )]
    NotHttp { endpoint: String },
}

/// Refuses an endpoint `Etcd::connect_with` would not use as written;
/// `tls`: whether the client has TLS material for etcd.
pub fn check_endpoint(endpoint: &str, tls: bool) -> Result<(), EndpointError> {
    let owned = || endpoint.to_owned();
    match (endpoint.starts_with("https://"), tls) {
        (true, false) => return Err(EndpointError::Tls { endpoint: owned() }),
        (false, true) if endpoint.starts_with("http://") => {
            return Err(EndpointError::Plain { endpoint: owned() });
        }
        _ => {}
    }
    let not_http = || EndpointError::NotHttp { endpoint: owned() };
    if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
        return Err(not_http());
    }
    let uri: tonic::codegen::http::Uri = endpoint.parse().map_err(|_| not_http())?;
    let bare = matches!(uri.path(), "" | "/") && uri.query().is_none();
    match uri.host() {
        Some(host) if !host.is_empty() && bare => Ok(()),
        _ => Err(not_http()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_endpoints_with_a_host_are_taken() {
        for ok in [
            "http://127.0.0.1:2379",
            "http://etcd-1.example:2379/",
            "http://[::1]:2379",
        ] {
            assert_eq!(check_endpoint(ok, false), Ok(()), "{ok}");
            let tls = ok.replace("http://", "https://");
            assert_eq!(check_endpoint(&tls, true), Ok(()), "{tls}");
        }
    }

    #[test]
    fn the_scheme_must_match_whether_tls_files_are_given() {
        let err = check_endpoint("https://10.0.0.5:2379", false).unwrap_err();
        assert!(matches!(err, EndpointError::Tls { .. }), "{err}");
        assert!(err.to_string().contains("no ca, cert and key"), "{err}");
        let err = check_endpoint("http://10.0.0.5:2379", true).unwrap_err();
        assert!(matches!(err, EndpointError::Plain { .. }), "{err}");
    }

    #[test]
    fn anything_else_is_not_an_endpoint() {
        for bad in [
            "10.0.0.5:2379",
            "http://",
            "unix:///run/etcd.sock",
            "http://h:2379/v3?x=1",
        ] {
            assert!(
                matches!(
                    check_endpoint(bad, false),
                    Err(EndpointError::NotHttp { .. })
                ),
                "{bad}"
            );
        }
    }
}
