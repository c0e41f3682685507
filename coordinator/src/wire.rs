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
