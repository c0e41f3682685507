//! Staging: agents fetch a deployment's target ahead of their batch, so
//! that their Apply is a switch, not a download. Best effort: the engine
//! never hears of it, and an Apply fetches whatever staging did not.
//!
//! Staging walks the plan in rollout order, [`STAGE_CONCURRENCY`] agents
//! at a time, and never more than [`STAGE_WINDOW`] instances ahead of the
//! furthest one sent an Apply. Unpaced, it ran through a 10,000-host plan
//! long before the batches did, and the dialer's least recently used
//! channels were the ones the next batches needed: every batch dialled
//! all its hosts again at its start (nodesim_rollout's batch timeline).
//! Paced, the channel a host was staged over is the one its Apply uses.
//!
//! Must never: hold a channel for an agent it is not fetching for, or
//! let staging decide anything (it is an optimisation).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proto::v1 as pb;
use rollout::InstanceId;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::driver::DriverContext;
use crate::effects::MAX_CHANNELS;

/// Agents fetching the target ahead of their batch at once, so staging
/// never starves the batch being applied of the coordinator's bandwidth.
const STAGE_CONCURRENCY: usize = 4;
/// Instances staged at most this far (in rollout order) beyond the
/// furthest one applied: a few batches' worth, and well within the
/// dialer's channels, so a staged host's channel is still there when its
/// batch comes.
pub const STAGE_WINDOW: usize = MAX_CHANNELS / 2;
/// A Stage may fetch a whole bundle.
const STAGE_TIMEOUT: Duration = Duration::from_secs(300);

const _: () = assert!(STAGE_WINDOW + STAGE_CONCURRENCY < MAX_CHANNELS);

/// Whether the instance at `position` (in rollout order) may be staged
/// when `frontier` instances, counted from the first, have been reached
/// by applies.
pub fn within_window(position: usize, frontier: usize) -> bool {
    position < frontier.saturating_add(STAGE_WINDOW)
}

/// One agent to stage: where it is in the rollout order and where to
/// reach it.
#[derive(Debug)]
pub struct StageTarget {
    pub position: usize,
    pub instance: InstanceId,
    pub address: String,
}

/// What a Stage request says, the same for every agent of a deployment.
#[derive(Debug, Clone)]
pub struct StageOrder {
    pub deployment: String,
    pub service: String,
    pub release_digest: String,
    pub fencing_token: u64,
}

/// A deployment's staging under way; dropping it stops it.
#[derive(Debug)]
pub struct Staging {
    /// Rollout position of every planned instance.
    positions: HashMap<InstanceId, usize>,
    /// One past the furthest position applied.
    frontier: watch::Sender<usize>,
    /// The pacer, and through its own set every Stage in flight: held
    /// only so that dropping this stops them.
    _pacer: JoinSet<()>,
}

impl Staging {
    /// Starts staging `targets` (in rollout order); `positions` holds
    /// every planned instance, `applied` those already sent an Apply.
    pub fn start<'a>(
        ctx: Arc<DriverContext>,
        order: StageOrder,
        positions: HashMap<InstanceId, usize>,
        targets: Vec<StageTarget>,
        applied: impl Iterator<Item = &'a InstanceId>,
    ) -> Self {
        let frontier = applied
            .filter_map(|i| positions.get(i))
            .map(|p| p + 1)
            .max()
            .unwrap_or(0);
        let (frontier, reached) = watch::channel(frontier);
        let mut pacer = JoinSet::new();
        pacer.spawn(pace(ctx, order, targets, reached));
        Self {
            positions,
            frontier,
            _pacer: pacer,
        }
    }

    /// `instance` was sent an Apply: staging may move on past it.
    pub fn applied(&self, instance: &InstanceId) {
        if let Some(&position) = self.positions.get(instance) {
            self.frontier.send_if_modified(|frontier| {
                let moved = position + 1 > *frontier;
                *frontier = (*frontier).max(position + 1);
                moved
            });
        }
    }
}

/// Stages the targets one by one within the window, a few at a time.
async fn pace(
    ctx: Arc<DriverContext>,
    order: StageOrder,
    targets: Vec<StageTarget>,
    mut reached: watch::Receiver<usize>,
) {
    let permits = Arc::new(Semaphore::new(STAGE_CONCURRENCY));
    let mut fetches = JoinSet::new();
    for target in targets {
        if reached
            .wait_for(|&frontier| within_window(target.position, frontier))
            .await
            .is_err()
        {
            return;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        while fetches.try_join_next().is_some() {}
        let order = order.clone();
        let ctx = ctx.clone();
        fetches.spawn(async move {
            let _permit = permit;
            stage(&ctx, &order, &target).await;
        });
    }
    while fetches.join_next().await.is_some() {}
}

async fn stage(ctx: &DriverContext, order: &StageOrder, target: &StageTarget) {
    let (deployment, instance) = (&order.deployment, &target.instance);
    // Dialled only now, within the window: the dialer keeps at most
    // MAX_CHANNELS, and dialling far ahead would evict the channels of the
    // batches about to be applied.
    let mut client = match ctx.agents.client(&target.address) {
        Ok(client) => client,
        Err(error) => {
            tracing::debug!(deployment, instance = %instance, error, "cannot stage the target");
            return;
        }
    };
    let mut request = tonic::Request::new(pb::StageRequest {
        service: order.service.clone(),
        release_digest: order.release_digest.clone(),
        fencing_token: order.fencing_token,
    });
    request.set_timeout(STAGE_TIMEOUT);
    let outcome = match client.stage(request).await {
        Ok(response) => response.into_inner().verdict.map(|v| v.message),
        Err(status) => Some(status.message().to_owned()),
    };
    tracing::debug!(deployment, instance = %instance, outcome, "staged the target");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_runs_at_most_a_window_ahead_of_the_furthest_apply() {
        assert!(within_window(0, 0));
        assert!(within_window(STAGE_WINDOW - 1, 0));
        assert!(!within_window(STAGE_WINDOW, 0));
        // The first batch (positions 0..250) sent its applies.
        assert!(within_window(250 + STAGE_WINDOW - 1, 250));
        assert!(!within_window(250 + STAGE_WINDOW, 250));
        assert!(within_window(usize::MAX - 1, usize::MAX));
    }

    #[test]
    fn the_frontier_moves_to_the_furthest_apply_and_never_back() {
        let id = |n: u32| InstanceId::new(format!("host-{n}")).unwrap();
        let positions = (0..10).map(|n| (id(n), n as usize)).collect();
        let (frontier, reached) = watch::channel(0);
        let staging = Staging {
            positions,
            frontier,
            _pacer: JoinSet::new(),
        };
        staging.applied(&id(3));
        assert_eq!(*reached.borrow(), 4);
        // A rollback applies earlier hosts again: staging stays where it is.
        staging.applied(&id(1));
        assert_eq!(*reached.borrow(), 4);
        // An instance outside the plan moves nothing.
        staging.applied(&id(42));
        assert_eq!(*reached.borrow(), 4);
        staging.applied(&id(9));
        assert_eq!(*reached.borrow(), 10);
    }
}
