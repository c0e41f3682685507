//! `lockstep release list [--service S]`: the releases in the coordinator's
//! depot, with their full digests (what `deploy --release` takes).
//!
//! Must never: change anything.

use proto::v1::ListReleasesRequest;

use crate::client::{Coordinators, Failure};
use crate::{Output, fmt, json, print_json, render};

pub async fn run(
    c: &mut Coordinators,
    service: Option<String>,
    output: Output,
) -> Result<(), Failure> {
    let request = ListReleasesRequest {
        service: service.unwrap_or_default(),
    };
    let releases = c
        .call(|mut client| {
            let request = request.clone();
            async move { client.list_releases(request).await }
        })
        .await?
        .releases;
    match output {
        Output::Json => print_json(&serde_json::json!({
            "releases": releases.iter().map(json::release_summary).collect::<Vec<_>>(),
        })),
        Output::Text => {
            print!("{}", render::releases(&releases, fmt::now_unix_ms()));
            Ok(())
        }
    }
}
