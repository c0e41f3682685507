//! `--release NAME` and `--to NAME`: a version, a full digest or a unique
//! digest prefix, resolved to the full digest against the coordinator's
//! release index (`coordinator::release_choice::resolve` decides).
//!
//! Must never: guess: an ambiguous or unknown name fails, listing what it
//! could mean.

use coordinator::release_choice::{self, NamedRelease};
use proto::v1::ListReleasesRequest;

use crate::client::{Coordinators, Failure};

/// The full digest `name` stands for among `service`'s releases. A full
/// digest is sent as it is (the coordinator checks it against the index).
pub async fn resolve(c: &mut Coordinators, service: &str, name: &str) -> Result<String, Failure> {
    let name = name.trim();
    if let Ok(digest) = name.parse::<release::ReleaseDigest>() {
        return Ok(digest.to_string());
    }
    let request = ListReleasesRequest {
        service: service.to_owned(),
    };
    let listed = c
        .call(|mut client| {
            let request = request.clone();
            async move { client.list_releases(request).await }
        })
        .await?;
    let known: Vec<NamedRelease> = listed
        .releases
        .into_iter()
        .filter_map(|r| r.release)
        .filter(|r| r.service == service)
        .map(|r| NamedRelease {
            digest: r.digest,
            version: r.version,
        })
        .collect();
    release_choice::resolve(service, name, &known)
        .map(|r| r.digest.clone())
        .map_err(|e| Failure::Refused(e.to_string()))
}
