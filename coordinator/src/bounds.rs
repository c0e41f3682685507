//! What a caller may name: checked before a name reaches etcd, a log line
//! or the fleet view. Pure.
//!
//! Names are the `ids` types' (alphabet and 63-byte limit documented
//! there); the other fields of an agent's registration and a deployment id
//! get byte limits. Every refusal names the field and the limit.
//!
//! Must never: let an unbounded string through, or echo one back whole.

use ids::{AgentId, ClusterName, NameError, ServiceName};
use proto::v1 as pb;

/// The most services one agent may say it hosts.
pub const MAX_SERVICES_PER_AGENT: usize = 64;
/// The longest address, hostname or version an agent may report.
pub const MAX_FIELD_BYTES: usize = 255;
/// The longest deployment id a caller may name (the coordinator's own are
/// far shorter).
pub const MAX_DEPLOYMENT_ID_BYTES: usize = 128;

/// Why a request's names are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("`{field}`")]
    Name {
        field: &'static str,
        #[source]
        source: NameError,
    },
    #[error("`{field}` is {len} bytes; at most {limit} are accepted")]
    TooLong {
        field: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("`{field}` holds a control character")]
    Control { field: &'static str },
    #[error(
        "the registration names {count} services; at most {MAX_SERVICES_PER_AGENT} are accepted"
    )]
    TooManyServices { count: usize },
}

/// A Report stream's registration: every name valid, every field bounded.
pub fn registration(claimed: &pb::AgentIdentity) -> Result<(), Malformed> {
    AgentId::parse(&claimed.agent_id).map_err(name("agent_id"))?;
    ClusterName::parse(&claimed.cluster).map_err(name("cluster"))?;
    for (field, value) in [
        ("grpc_address", &claimed.grpc_address),
        ("hostname", &claimed.hostname),
        ("agent_version", &claimed.agent_version),
    ] {
        text(field, value, MAX_FIELD_BYTES)?;
    }
    if claimed.services.len() > MAX_SERVICES_PER_AGENT {
        return Err(Malformed::TooManyServices {
            count: claimed.services.len(),
        });
    }
    for service in &claimed.services {
        ServiceName::parse(service).map_err(name("services"))?;
    }
    Ok(())
}

/// A service an operator names.
pub fn service(value: &str) -> Result<(), Malformed> {
    ServiceName::parse(value).map(drop).map_err(name("service"))
}

/// A service filter: empty means every service.
pub fn service_filter(value: &str) -> Result<(), Malformed> {
    if value.is_empty() {
        Ok(())
    } else {
        service(value)
    }
}

/// A cluster filter: empty means every cluster.
pub fn cluster_filter(value: &str) -> Result<(), Malformed> {
    if value.is_empty() {
        return Ok(());
    }
    ClusterName::parse(value).map(drop).map_err(name("cluster"))
}

/// A deployment id an operator names.
pub fn deployment_id(value: &str) -> Result<(), Malformed> {
    text("deployment_id", value, MAX_DEPLOYMENT_ID_BYTES)
}

fn name(field: &'static str) -> impl FnOnce(NameError) -> Malformed {
    move |source| Malformed::Name { field, source }
}

fn text(field: &'static str, value: &str, limit: usize) -> Result<(), Malformed> {
    if value.len() > limit {
        return Err(Malformed::TooLong {
            field,
            len: value.len(),
            limit,
        });
    }
    if value.chars().any(char::is_control) {
        return Err(Malformed::Control { field });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> pb::AgentIdentity {
        pb::AgentIdentity {
            agent_id: "eu-1".to_owned(),
            cluster: "eu".to_owned(),
            hostname: "host".to_owned(),
            grpc_address: "10.0.0.1:7001".to_owned(),
            agent_version: "0.1.0".to_owned(),
            services: vec!["web".to_owned()],
        }
    }

    #[test]
    fn a_well_formed_registration_passes() {
        assert_eq!(registration(&identity()), Ok(()));
    }

    #[test]
    fn every_field_of_a_registration_is_bounded() {
        let huge = "a".repeat(3_000_000);
        let mut id = identity();
        id.agent_id = huge.clone();
        let e = registration(&id).unwrap_err();
        assert!(
            matches!(
                e,
                Malformed::Name {
                    field: "agent_id",
                    ..
                }
            ),
            "{e:?}"
        );
        let mut address = identity();
        address.grpc_address = huge.clone();
        assert_eq!(
            registration(&address),
            Err(Malformed::TooLong {
                field: "grpc_address",
                len: 3_000_000,
                limit: MAX_FIELD_BYTES
            })
        );
        let mut many = identity();
        many.services = (0..65).map(|n| format!("s{n}")).collect();
        assert_eq!(
            registration(&many),
            Err(Malformed::TooManyServices { count: 65 })
        );
        let mut bad = identity();
        bad.services.push("Web".to_owned());
        assert!(matches!(
            registration(&bad),
            Err(Malformed::Name {
                field: "services",
                ..
            })
        ));
        let mut control = identity();
        control.hostname = "a\u{1b}[2J".to_owned();
        assert_eq!(
            registration(&control),
            Err(Malformed::Control { field: "hostname" })
        );
    }

    #[test]
    fn filters_may_be_empty_and_names_may_not() {
        assert!(service("").is_err());
        assert!(service_filter("").is_ok());
        assert!(service_filter("web").is_ok());
        assert!(cluster_filter("").is_ok());
        assert!(cluster_filter("EU").is_err());
        assert!(deployment_id(&"d".repeat(129)).is_err());
        assert!(deployment_id("web-42").is_ok());
    }
}
