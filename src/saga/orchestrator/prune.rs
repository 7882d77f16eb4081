//! The prune loop: every orchestrator that ever ran leaves a consumer in the group
//! `orchestrator`; one that was killed never removes itself. Now and then, consumers idle
//! for an hour with nothing pending (their replies were claimed by others) are removed in
//! one atomic step (`saga_prune_consumers.lua`), so `XINFO CONSUMERS` and the claim scans
//! stay small.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{sleep_or_stop, Ctx};

/// How often dead orchestrator consumers are looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// A consumer idle this long with nothing pending is removed from the group.
const PRUNE_IDLE: Duration = Duration::from_secs(3600);

/// Every [`PRUNE_EVERY`] until `stop` fires, removes the idle consumers of other
/// instances.
pub(super) async fn run(ctx: Arc<Ctx>, stop: CancellationToken) {
    while sleep_or_stop(&stop, PRUNE_EVERY).await {
        for replies in ctx.reply_streams() {
            match ctx
                .broker
                .saga_prune_consumers(&replies, &ctx.consumer, PRUNE_IDLE)
                .await
            {
                Ok(n) if n > 0 => tracing::info!(
                    removed = n,
                    replies = %replies,
                    "removed idle orchestrator consumers with nothing pending"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, replies = %replies, "pruning orchestrator consumers failed")
                }
            }
        }
    }
}
