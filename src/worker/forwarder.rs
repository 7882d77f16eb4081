//! The forwarder: moves due tasks (delayed enqueues and retries) from the queue's scheduled
//! set into their lane's stream with one atomic script (asynq's `forwarder.go`). Every
//! worker runs one per queue; the script makes concurrent runs harmless.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::keys::QueueKeys;
use crate::metrics as m;
use crate::rdb;
use crate::task::now_ms;

/// Most tasks moved per script run (bounds the time Redis spends in one script).
const PAGE: usize = 500;

/// Runs until `stop` fires.
pub(crate) async fn run(
    keys: Arc<QueueKeys>,
    conn: ConnectionManager,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut conn = conn;
    while !stop.is_cancelled() {
        let now = now_ms();
        let mut p = redis::Pipeline::new();
        p.add_command(rdb::evalsha(
            rdb::ScriptId::Forward,
            &[&keys.scheduled, &keys.stream, &keys.express, &keys.dlq],
            vec![
                now.to_string().into_bytes(),
                PAGE.to_string().into_bytes(),
                keys.pool_prefix().into_bytes(),
            ],
        ));
        let sleep = match rdb::query_pipe::<((usize, String),)>(&mut conn, &p).await {
            Ok(((moved, next),)) => {
                if moved == PAGE {
                    continue;
                }
                match next.parse::<f64>() {
                    Ok(n) if n >= 0.0 => {
                        let until = (n as u64).saturating_sub(now_ms());
                        Duration::from_millis(until.max(1)).min(interval)
                    }
                    _ => interval,
                }
            }
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
