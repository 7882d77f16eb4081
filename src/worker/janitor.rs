//! The janitor of fan-out queues: a stream read by several groups cannot delete an entry
//! when one group acknowledges it, so it trims the stream behind the slowest group instead
//! (never past an entry some group has not read or still holds pending).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::keys::QueueKeys;
use crate::rdb;

/// Runs until `stop` fires.
pub(crate) async fn run(
    keys: Arc<QueueKeys>,
    groups: Vec<String>,
    conn: ConnectionManager,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut conn = conn;
    while !stop.is_cancelled() {
        for stream in [&keys.stream, &keys.express] {
            let mut p = redis::Pipeline::new();
            p.add_command(rdb::evalsha(
                rdb::ScriptId::TrimFanout,
                &[stream.as_str()],
                groups.iter().map(|g| g.as_bytes()),
            ));
            match rdb::query_pipe::<(i64,)>(&mut conn, &p).await {
                Ok((n,)) if n > 0 => {
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
