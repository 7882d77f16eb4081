//! The heartbeat: every `heartbeat_interval` the process records itself as alive in each
//! queue's heartbeat set, so recovery can tell a dead consumer from a slow one without
//! guessing from idle times. It also keeps the pending entries of running tasks fresh
//! (`touch.lua`: XCLAIM to itself with JUSTID) so the idle-time safety net never takes a
//! long task away from a live worker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::keys::Lane;
use crate::rdb::Broker;
use crate::task::now_ms;

use super::runtime::QueueRuntime;

/// When this process started (Unix ms), for the workers list.
static STARTED_AT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// What the control plane shows of this process for one queue (`ts:{Q}:workers`).
fn info(rt: &QueueRuntime, now: u64) -> String {
    serde_json::json!({
        "host": crate::rdb::hostname(),
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "group": rt.group,
        "pool": rt.keys.pool,
        "concurrency": rt.concurrency.load(std::sync::atomic::Ordering::Relaxed),
        "running": rt.tracked.running_count(),
        "started_at": *STARTED_AT.get_or_init(now_ms),
        "beat_at": now,
    })
    .to_string()
}

async fn beat(broker: &Broker, queues: &[Arc<QueueRuntime>], score: u64) -> crate::Result<()> {
    let members: Vec<(&str, &str)> = queues
        .iter()
        .map(|rt| (rt.heartbeats.as_str(), rt.consumer.as_str()))
        .collect();
    let keys: Vec<String> = queues
        .iter()
        .map(|rt| crate::keys::workers_info(&rt.keys.queue))
        .collect();
    let info: Vec<(&str, &str, String)> = queues
        .iter()
        .zip(&keys)
        .map(|(rt, k)| (k.as_str(), rt.consumer.as_str(), info(rt, score)))
        .collect();
    broker.beat(&members, &info, score).await
}

/// Refreshes the idle clock of every entry the process holds and has not finished, so the
/// idle safety net never takes it (a suspect waiting for isolation included).
async fn touch(rt: &QueueRuntime) -> crate::Result<u64> {
    let mut touched = 0;
    for lane in [Lane::Bulk, Lane::Express] {
        let ids = rt.tracked.unfinished(lane);
        for chunk in ids.chunks(200) {
            touched += rt
                .broker
                .touch(rt.keys.lane_stream(lane), &rt.group, &rt.consumer, chunk)
                .await?;
        }
    }
    Ok(touched)
}

/// Beats once at once (so the process is known before it reads), then every `interval`
/// until `stop` fires; then records the process as gone (score 0) so recovery takes over
/// whatever it leaves pending without waiting for the lapse.
pub(crate) async fn run(
    queues: Vec<Arc<QueueRuntime>>,
    broker: Broker,
    interval: Duration,
    touch_every: Duration,
    stop: CancellationToken,
) {
    let mut last_touch = Instant::now();
    let mut down = false;
    loop {
        match beat(&broker, &queues, now_ms()).await {
            Ok(()) => {
                if down {
                    tracing::info!("heartbeat: redis reachable again");
                    down = false;
                }
                crate::health::set_redis_up(true);
            }
            // A refusal is logged with its fix by the broker; Redis is not down.
            Err(e) if e.is_no_permission() => {}
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
                if let Err(e) = touch(rt).await {
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
pub(crate) async fn mark_alive(broker: &Broker, queues: &[Arc<QueueRuntime>]) {
    if let Err(e) = beat(broker, queues, now_ms()).await {
        tracing::warn!(error = %e, "first heartbeat failed; the heartbeat loop keeps trying");
    }
}

/// Removes this consumer from its groups when nothing of it is pending any more (checked
/// atomically by `remove_consumer.lua`), so a clean exit leaves no trace in `XINFO`.
async fn remove_self(rt: &QueueRuntime) -> crate::Result<bool> {
    // Our heartbeat is 0 now, so any cutoff above it lets the script judge us gone.
    rt.broker
        .remove_consumer(&rt.keys, &rt.group, &rt.heartbeats, &rt.consumer, 1)
        .await
}

/// Marks the process as gone (heartbeat 0) so others recover its leftovers at once.
pub(crate) async fn mark_gone(broker: &Broker, queues: &[Arc<QueueRuntime>]) {
    if let Err(e) = beat(broker, queues, 0).await {
        tracing::warn!(error = %e, "could not mark this consumer as gone; others will notice after the heartbeat lapse");
        return;
    }
    for rt in queues {
        if let Err(e) = remove_self(rt).await {
            tracing::debug!(queue = %rt.cfg.name, error = %e, "could not remove this consumer");
        }
    }
}
