//! The claim loop: replies read by an orchestrator and left unacknowledged for
//! `claim_idle_ms` (it was killed, hangs, or hit a Redis error while applying them) are
//! claimed with `XAUTOCLAIM` by whichever instance looks next, and applied — or found
//! already applied (the saga's revision moved on) and just acknowledged. This is what
//! makes killing an orchestrator lose nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::replies::apply_replies;
use super::{sleep_or_stop, Ctx};

/// Every `claim_idle_ms / 2` (at least 50 ms), claims and applies every reply idle for
/// `claim_idle_ms` on each reply stream, page by page, until `stop` fires.
pub(super) async fn run(ctx: Arc<Ctx>, stop: CancellationToken) {
    let every = Duration::from_millis((ctx.cfg.claim_idle_ms / 2).max(50));
    while sleep_or_stop(&stop, every).await {
        for replies in ctx.reply_streams() {
            claim_all(&ctx, &replies, &stop).await;
        }
    }
}

/// Claims and applies the idle replies of one reply stream.
async fn claim_all(ctx: &Arc<Ctx>, replies: &str, stop: &CancellationToken) {
    let idle = Duration::from_millis(ctx.cfg.claim_idle_ms);
    let mut cursor = "0-0".to_string();
    loop {
        let page = ctx
            .broker
            .saga_claim_replies(replies, &ctx.consumer, idle, &cursor, ctx.cfg.read_count)
            .await;
        match page {
            Ok((next, entries)) => {
                if !entries.is_empty() {
                    tracing::info!(
                        replies = entries.len(),
                        stream = %replies,
                        idle_ms = ctx.cfg.claim_idle_ms,
                        "claimed saga replies left unacknowledged (an orchestrator stopped or is stuck)"
                    );
                    apply_replies(ctx, replies, entries).await;
                }
                if next == "0-0" || stop.is_cancelled() {
                    break;
                }
                cursor = next;
            }
            Err(e) => {
                tracing::warn!(error = %e, stream = %replies, "claiming idle saga replies failed");
                break;
            }
        }
    }
}
