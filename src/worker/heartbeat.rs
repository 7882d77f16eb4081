//! The heartbeat: every `heartbeat_interval` the process records itself as alive in each
//! queue's heartbeat set, so recovery can tell a dead consumer from a slow one without
//! guessing from idle times. It also keeps the pending entries of running tasks fresh
//! (`touch.lua`: XCLAIM to itself with JUSTID) so the idle-time safety net never takes a
//! long task away from a live worker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::keys::Lane;
use crate::rdb;
use crate::task::now_ms;

use super::runtime::QueueRuntime;

async fn beat(
    conn: &mut ConnectionManager,
    queues: &[Arc<QueueRuntime>],
    score: u64,
) -> redis::RedisResult<()> {
    let mut p = redis::Pipeline::new();
    for rt in queues {
        p.cmd("ZADD")
            .arg(&rt.heartbeats)
            .arg(score)
            .arg(&rt.consumer)
            .ignore();
    }
    p.query_async(conn).await
}

async fn touch(conn: &mut ConnectionManager, rt: &QueueRuntime) -> crate::Result<u64> {
    let mut touched = 0;
    for lane in [Lane::Bulk, Lane::Express] {
        let ids = rt.inflight_ids(lane);
        for chunk in ids.chunks(200) {
            let mut args = vec![
                rt.group.clone().into_bytes(),
                rt.consumer.clone().into_bytes(),
            ];
            args.extend(chunk.iter().map(|i| i.clone().into_bytes()));
            let mut p = redis::Pipeline::new();
            p.add_command(rdb::evalsha(
                rdb::ScriptId::Touch,
                &[rt.keys.lane_stream(lane)],
                args,
            ));
            let (n,): (u64,) = rdb::query_pipe(conn, &p).await?;
            touched += n;
        }
    }
    Ok(touched)
}

/// Beats once at once (so the process is known before it reads), then every `interval`
/// until `stop` fires; then records the process as gone (score 0) so recovery takes over
/// whatever it leaves pending without waiting for the lapse.
pub(crate) async fn run(
    queues: Vec<Arc<QueueRuntime>>,
    conn: ConnectionManager,
    interval: Duration,
    touch_every: Duration,
    stop: CancellationToken,
) {
    let mut conn = conn;
    let mut last_touch = Instant::now();
    let mut down = false;
    loop {
        match beat(&mut conn, &queues, now_ms()).await {
            Ok(()) => {
                if down {
                    tracing::info!("heartbeat: redis reachable again");
                    down = false;
                }
                crate::health::set_redis_up(true);
            }
            Err(e) => {
                if !down {
                    tracing::warn!(error = %e, "heartbeat failed: redis unreachable");
                    down = true;
                }
                crate::health::set_redis_up(false);
            }
        }
        if last_touch.elapsed() >= touch_every {
            last_touch = Instant::now();
            for rt in &queues {
                if let Err(e) = touch(&mut conn, rt).await {
                    tracing::debug!(queue = %rt.cfg.name, error = %e, "touch failed");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval.min(touch_every)) => {}
        }
    }
}

/// Records the process as alive once, before it takes any work.
pub(crate) async fn mark_alive(conn: &mut ConnectionManager, queues: &[Arc<QueueRuntime>]) {
    if let Err(e) = beat(conn, queues, now_ms()).await {
        tracing::warn!(error = %e, "first heartbeat failed; the heartbeat loop keeps trying");
    }
}

/// Removes this consumer from its groups when nothing of it is pending any more (checked
/// atomically by `remove_consumer.lua`), so a clean exit leaves no trace in `XINFO`.
async fn remove_self(conn: &mut ConnectionManager, rt: &QueueRuntime) -> crate::Result<()> {
    // Our heartbeat is 0 now, so any cutoff above it lets the script judge us gone.
    crate::recovery::remove_consumer(rt, conn, &rt.consumer, 1).await?;
    Ok(())
}

/// Marks the process as gone (heartbeat 0) so others recover its leftovers at once.
pub(crate) async fn mark_gone(conn: &mut ConnectionManager, queues: &[Arc<QueueRuntime>]) {
    if let Err(e) = beat(conn, queues, 0).await {
        tracing::warn!(error = %e, "could not mark this consumer as gone; others will notice after the heartbeat lapse");
        return;
    }
    for rt in queues {
        if let Err(e) = remove_self(conn, rt).await {
            tracing::debug!(queue = %rt.cfg.name, error = %e, "could not remove this consumer");
        }
    }
}
