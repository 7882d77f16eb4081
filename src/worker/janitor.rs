//! The janitor of fan-out queues: a stream read by several groups cannot delete an entry
//! when one group acknowledges it, so it trims the stream behind the slowest group instead
//! (never past an entry some group has not read or still holds pending).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::keys::QueueKeys;
use crate::rdb::Broker;

/// Runs until `stop` fires.
pub(crate) async fn run(
    keys: Arc<QueueKeys>,
    groups: Vec<String>,
    broker: Broker,
    interval: Duration,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        for stream in [&keys.stream, &keys.express] {
            match broker.trim_fanout(stream, &groups).await {
                Ok(n) if n > 0 => {
                    tracing::debug!(queue = %keys.queue, trimmed = n, "fan-out stream trimmed")
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(queue = %keys.queue, error = %e, "janitor: redis error"),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
