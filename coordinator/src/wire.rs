//! Conversions between the coordinator's types and `lockstep.v1` messages.
//!
//! Must never: hold logic beyond field mapping.

use proto::v1 as pb;

/// A plan as `PlanResponse`.
pub fn plan(plan: &rollout::Plan) -> pb::PlanResponse {
    let waves = plan
        .waves
        .iter()
        .enumerate()
        .map(|(index, wave)| {
            let (kind, cluster) = match wave.kind {
                rollout::WaveKind::Canary => (pb::WaveKind::Canary, String::new()),
                rollout::WaveKind::Cluster(c) => (
                    pb::WaveKind::Cluster,
                    plan.clusters
                        .get(c)
                        .map(|c| c.name.to_string())
                        .unwrap_or_default(),
                ),
            };
            pb::Wave {
                kind: kind.into(),
                cluster,
                batches: wave
                    .batches
                    .iter()
                    .map(|batch| pb::Batch {
                        instances: batch
                            .iter()
                            .filter_map(|&ix| plan.instances.get(ix))
                            .map(|i| pb::InstanceRef {
                                agent_id: i.id.to_string(),
                                service: String::new(),
                                slot: 0,
                            })
                            .collect(),
                    })
                    .collect(),
                needs_approval: plan.gates.pause_between_clusters && index > 0,
            }
        })
        .collect();
    pb::PlanResponse {
        waves,
        rendered: plan.render(),
        problems: Vec::new(),
    }
}

/// A lock as `LockInfo`.
pub fn lock(info: &leases::LockInfo, kind: pb::LockKind) -> pb::LockInfo {
    pb::LockInfo {
        kind: kind.into(),
        key: info.key.clone(),
        holder: Some(pb::LockHolder {
            host: info.holder.host.clone(),
            pid: info.holder.pid,
            user: info.holder.user.clone(),
        }),
        purpose: info.purpose.clone(),
        since_unix_ms: info.since_unix_ms,
        ttl_left_ms: info
            .ttl_left
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        fencing_token: info.token.0,
        leaseless: info.lease == 0,
    }
}

/// The kind of lock a key is.
pub fn lock_kind(key: &str) -> pb::LockKind {
    if key == leases::keys::LEADER {
        pb::LockKind::Leader
    } else if key.starts_with(&leases::keys::lock("deploy/")) {
        pb::LockKind::Deployment
    } else if key.contains("/budget/") {
        pb::LockKind::DisruptionSlot
    } else {
        pb::LockKind::Instance
    }
}

/// One bundle entry as `ReleaseFile`.
pub fn release_file(file: &release::contents::FileContent) -> pb::ReleaseFile {
    pb::ReleaseFile {
        path: file.path.clone(),
        kind: file.kind.to_owned(),
        size: file.size,
        mode: file.mode.clone(),
        digest: file.digest.clone(),
        link_target: file.link_target.clone().unwrap_or_default(),
    }
}

/// A release's index entry and contents as `ReleaseContents`.
pub fn release_contents(
    entry: &crate::depot::ReleaseEntry,
    contents: &release::contents::BundleContents,
) -> pb::ReleaseContents {
    pb::ReleaseContents {
        release: Some(pb::ReleaseRef {
            service: entry.service.clone(),
            digest: entry.digest.clone(),
            version: entry.version.clone(),
        }),
        manifest_toml: manifest_text(contents),
        files: contents.files.iter().map(release_file).collect(),
        files_truncated: contents.files_truncated,
    }
}

/// `release.toml` as the bundle carries it.
pub fn manifest_text(contents: &release::contents::BundleContents) -> String {
    contents
        .files
        .iter()
        .find(|f| f.path == release::manifest::MANIFEST_FILE)
        .and_then(|f| f.text.clone())
        .unwrap_or_default()
}

/// A comparison as `ReleaseDiff`.
pub fn release_diff(diff: &crate::release_diff::ReleaseDiff) -> pb::ReleaseDiff {
    use crate::release_diff::Change;
    let name = |n: &crate::release_diff::ReleaseName| pb::ReleaseRef {
        service: n.service.clone(),
        digest: n.digest.clone(),
        version: n.version.clone(),
    };
    pb::ReleaseDiff {
        from: Some(name(&diff.from)),
        to: Some(name(&diff.to)),
        files: diff
            .files
            .iter()
            .map(|f| pb::FileChange {
                path: f.path.clone(),
                change: match f.change {
                    Change::Added => pb::FileChangeKind::Added,
                    Change::Removed => pb::FileChangeKind::Removed,
                    Change::Changed => pb::FileChangeKind::Changed,
                }
                .into(),
                before: f.before.as_ref().map(release_file),
                after: f.after.as_ref().map(release_file),
            })
            .collect(),
        unchanged_files: u32::try_from(diff.unchanged_files).unwrap_or(u32::MAX),
        files_truncated: diff.files_truncated,
        config_diff: diff.config_diff.clone(),
        config_truncated: diff.config_truncated,
    }
}
