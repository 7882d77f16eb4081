//! The forwarder: moves due tasks (delayed enqueues and retries) from the queue's scheduled
//! set into their lane's stream with one atomic script (asynq's `forwarder.go`). Every
//! worker runs one per queue; the script makes concurrent runs harmless.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::keys::QueueKeys;
use crate::metrics as m;
use crate::rdb::Broker;
use crate::task::now_ms;

/// Most tasks moved per script run (bounds the time Redis spends in one script).
const PAGE: usize = 500;

/// Runs until `stop` fires.
pub(crate) async fn run(
    keys: Arc<QueueKeys>,
    broker: Broker,
    interval: Duration,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let sleep = match broker.forward_due(&keys, now_ms(), PAGE).await {
            Ok(f) if f.moved == PAGE => continue,
            Ok(f) => match f.next_due_ms {
                Some(n) => Duration::from_millis(n.saturating_sub(now_ms()).max(1)).min(interval),
                None => interval,
            },
            Err(e) => {
                metrics::counter!(m::REDIS_ERRORS_TOTAL, "op" => "forward").increment(1);
                tracing::debug!(queue = %keys.queue, error = %e, "forwarder: redis error");
                interval.max(Duration::from_millis(500))
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}
