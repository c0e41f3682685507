//! Which etcd endpoints `Etcd::connect` takes: one rule, so a config that
//! `check-config` calls valid is one the daemon can connect with.
//!
//! Must never: accept an endpoint the client would reach differently than
//! it reads (`https://` while etcd TLS is not supported).

/// Why an etcd endpoint is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error(
        "`{endpoint}` is https://, but etcd TLS is not supported yet (#14 deliver 6): use http:// on a network only the fleet reaches"
    )]
    Tls { endpoint: String },
    #[error(
        "`{endpoint}` is not an http:// URL with a host and nothing else, e.g. \"http://10.0.0.5:2379\""
    )]
    NotHttp { endpoint: String },
}

/// Refuses an endpoint `Etcd::connect` would not use as written.
pub fn check_endpoint(endpoint: &str) -> Result<(), EndpointError> {
    if endpoint.starts_with("https://") {
        return Err(EndpointError::Tls {
            endpoint: endpoint.to_owned(),
        });
    }
    let not_http = || EndpointError::NotHttp {
        endpoint: endpoint.to_owned(),
    };
    if !endpoint.starts_with("http://") {
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
            assert_eq!(check_endpoint(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn https_is_refused_naming_the_missing_support() {
        let err = check_endpoint("https://10.0.0.5:2379").unwrap_err();
        assert!(matches!(err, EndpointError::Tls { .. }), "{err}");
        assert!(
            err.to_string().contains("etcd TLS is not supported"),
            "{err}"
        );
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
                matches!(check_endpoint(bad), Err(EndpointError::NotHttp { .. })),
                "{bad}"
            );
        }
    }
}
