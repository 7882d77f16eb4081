//! The outbox sweep (Redis Cluster only): relays the dispatches a process wrote to a
//! bucket's outbox with a transition and did not get to relay (killed, or Redis failed
//! between the two steps).
//!
//! On a cluster a transition cannot add its tasks to their queue streams in the script
//! that writes the saga (other slots), so it adds them to its bucket's outbox and the
//! writer relays them right after (`saga_relay.lua`). An entry older than
//! [`OUTBOX_GRACE`] was not relayed by its writer; whichever orchestrator sweeps first
//! relays it. Relays are idempotent per dispatch (a marker on the destination's slot),
//! so a sweep racing the writer's own relay adds the task once.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{sleep_or_stop, Ctx};
use crate::task::now_ms;

/// How often the outboxes are swept.
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// How old an outbox entry must be before a sweep relays it (its writer relays it at
/// once; this leaves that relay time to finish).
const OUTBOX_GRACE: Duration = Duration::from_secs(1);
/// Entries relayed per bucket and round.
const SWEEP_BATCH: usize = 256;

/// Every [`SWEEP_EVERY`] until `stop` fires, relays the outbox entries of every bucket
/// older than [`OUTBOX_GRACE`].
pub(super) async fn run(ctx: Arc<Ctx>, stop: CancellationToken) {
    let buckets = ctx.broker.saga_buckets();
    while sleep_or_stop(&stop, SWEEP_EVERY).await {
        for b in &buckets {
            let Some(outbox) = &b.outbox else { continue };
            loop {
                let before = now_ms().saturating_sub(OUTBOX_GRACE.as_millis() as u64);
                let due = match ctx
                    .broker
                    .saga_outbox_due(outbox, before, SWEEP_BATCH)
                    .await
                {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(error = %e, outbox = %outbox, "reading a saga outbox failed");
                        break;
                    }
                };
                if due.is_empty() {
                    break;
                }
                let n = due.len();
                match ctx.broker.saga_relay(outbox, &due).await {
                    Ok(added) => tracing::info!(
                        outbox = %outbox,
                        dispatches = n,
                        added,
                        "relayed saga dispatches left in an outbox (their writer stopped before relaying them)"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, outbox = %outbox, "relaying saga dispatches failed; retrying");
                        break;
                    }
                }
                if n < SWEEP_BATCH || stop.is_cancelled() {
                    break;
                }
            }
        }
    }
}
