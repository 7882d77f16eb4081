//! Orphan recovery: takes back the work of consumers that died, without ever taking work
//! from one that is alive.
//!
//! Two ways in, every `recovery_interval` (each worker process runs this loop; several at
//! once are harmless because every claim is one atomic script):
//!
//! 1. **Dead owners, fast.** Consumers whose heartbeat is older than `heartbeat_lapse` are
//!    dead. `claim_dead.lua` re-checks the heartbeat and claims that consumer's pending
//!    entries in one step, so two recoverers never take the same entry and a consumer that
//!    beat again in between keeps its work. With the defaults (beat every 500 ms, lapse
//!    1.5 s, loop every 250 ms) a SIGKILLed worker's tasks are re-delivered within about
//!    1.75 s of the kill, where BullMQ and asynq wait 30 s.
//! 2. **Idle entries, safety net.** Entries idle longer than `min_idle` (default 60 s) are
//!    claimed with XAUTOCLAIM whoever owns them; this covers owners that never heartbeat.
//!    Live workers refresh the entries they run (see `worker/heartbeat.rs`), so a long
//!    handler is never taken away.
//!
//! Right after Redis comes back from an outage (restart, pause, network cut) every heartbeat
//! looks stale; recovery then waits one full lapse, so live workers can beat again before
//! anyone is judged dead.
//!
//! Claimed entries run again with a higher attempt number. An entry executed
//! `max_deliveries` times without completing is poison (it keeps killing workers) and goes
//! to the dead-letter stream. Executions, not deliveries, are counted: a recovered entry
//! records a start in `ts:{q}:starts` before its handler runs, and an entry delivered three
//! times or more runs *isolated* (it waits until nothing else of the queue runs in the
//! process, and nothing else starts beside it). So the tasks that merely shared a worker
//! with a poison task are not blamed for its crashes: they either never started, or ran
//! alone and completed. A dead consumer is removed from its group only once its
//! pending list is empty, checked and deleted in one script (`XGROUP DELCONSUMER` drops
//! pending entries: redis#9745).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::dispatch::dispatch;
use super::runtime::{QueueRuntime, Slot};
use crate::keys::Lane;
use crate::metrics as m;
use crate::rdb::{ClaimScope, RawEntry};
use crate::task::now_ms;

/// Recovery timing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecoveryConfig {
    /// Loop period.
    pub interval: Duration,
    /// Heartbeat age after which a consumer is dead.
    pub lapse: Duration,
    /// Idle time after which any entry is claimed.
    pub min_idle: Duration,
}

/// Scopes with parked tasks one recovery round looks at (picked at random in Redis).
const SWEEP_SCOPES: u32 = 16;

/// Longest time one recovery round waits for a slot to run a dead consumer's entries.
const SLOT_WAIT: Duration = Duration::from_secs(2);

/// Counts one claim batch: orphans recovered (by `reason`) and poison dead letters.
fn count_claims(queue: &str, reason: &'static str, claimed: usize, poison: u64) {
    metrics::counter!(m::ORPHANS_RECOVERED_TOTAL, "queue" => queue.to_string(), "reason" => reason)
        .increment(claimed as u64);
    if poison > 0 {
        metrics::counter!(m::POISON_TOTAL, "queue" => queue.to_string()).increment(poison);
        metrics::counter!(m::DEAD_LETTERED_TOTAL, "queue" => queue.to_string(), "reason" => "poison")
            .increment(poison);
    }
}

fn dispatch_claimed(
    rt: &Arc<QueueRuntime>,
    lane: Lane,
    entries: Vec<RawEntry>,
    counts: &HashMap<String, u32>,
    slots: &mut Vec<Slot>,
) -> usize {
    let mut n = 0;
    for e in entries {
        let Some(slot) = slots.pop() else {
            // Cannot happen: we claim at most one entry per slot. Leave it pending.
            break;
        };
        let d = counts.get(&e.id).copied().unwrap_or(2);
        dispatch(rt, lane, e, d, slot);
        n += 1;
    }
    n
}

fn scope(rt: &QueueRuntime) -> ClaimScope<'_> {
    ClaimScope {
        keys: &rt.keys,
        group: &rt.group,
        heartbeats: &rt.heartbeats,
        consumer: &rt.consumer,
        max_deliveries: rt.max_deliveries,
        delete_on_ack: rt.delete_on_ack,
    }
}

/// Claims the work of dead consumers once. Returns the number of entries claimed.
async fn recover_dead(
    rt: &Arc<QueueRuntime>,
    cfg: RecoveryConfig,
    stop: &CancellationToken,
) -> crate::Result<usize> {
    let b = &rt.broker;
    let cutoff = now_ms().saturating_sub(cfg.lapse.as_millis() as u64);
    let mut total = 0;
    for consumer in b.lapsed_consumers(&rt.heartbeats, cutoff).await? {
        if consumer == rt.consumer {
            continue;
        }
        for lane in [Lane::Bulk, Lane::Express] {
            loop {
                let mut slots = rt.acquire(lane, 100, false, stop).await;
                if slots.is_empty() {
                    if !b
                        .has_pending(rt.keys.lane_stream(lane), &rt.group, &consumer)
                        .await?
                    {
                        break;
                    }
                    // Orphans wait and no slot is free: queue for the next one. The semaphore
                    // is fair, so this gets it ahead of an idle reader that would otherwise
                    // take it straight back (with one slot, forever).
                    slots = tokio::time::timeout(SLOT_WAIT, rt.acquire(lane, 1, true, stop))
                        .await
                        .unwrap_or_default();
                    if slots.is_empty() {
                        break;
                    }
                }
                let want = slots.len();
                let c = b
                    .claim_dead(scope(rt), lane, &consumer, cutoff, want, now_ms())
                    .await?;
                let n = c.entries.len();
                if n > 0 || c.poison > 0 || c.gone > 0 {
                    let q = rt.cfg.name.clone();
                    count_claims(&q, "dead_consumer", n, c.poison);
                    if c.last_beat_ms > 0 {
                        let delay = now_ms().saturating_sub(c.last_beat_ms) as f64 / 1000.0;
                        metrics::histogram!(m::RECOVERY_DELAY_SECONDS, "queue" => q.clone())
                            .record(delay);
                    }
                    tracing::info!(
                        queue = %q,
                        lane = lane.as_str(),
                        dead_consumer = %consumer,
                        claimed = n,
                        poison = c.poison,
                        deleted_meanwhile = c.gone,
                        last_heartbeat_ms_ago = now_ms().saturating_sub(c.last_beat_ms),
                        "recovered orphaned tasks of a dead consumer"
                    );
                }
                let (poison, gone) = (c.poison, c.gone);
                total += dispatch_claimed(rt, lane, c.entries, &c.deliveries, &mut slots);
                if (n as u64 + poison + gone) < want as u64 {
                    break;
                }
            }
        }
        // Remove the consumer once nothing of it is pending on any lane (one script).
        if b.remove_consumer(&rt.keys, &rt.group, &rt.heartbeats, &consumer, cutoff)
            .await?
        {
            metrics::counter!(m::CONSUMERS_REMOVED_TOTAL, "queue" => rt.cfg.name.clone())
                .increment(1);
            tracing::info!(queue = %rt.cfg.name, consumer = %consumer, "dead consumer removed from its group");
        }
    }
    Ok(total)
}

/// One page of the idle safety net per lane.
async fn recover_idle(
    rt: &Arc<QueueRuntime>,
    cfg: RecoveryConfig,
    cursors: &mut [String; 2],
    stop: &CancellationToken,
) -> crate::Result<usize> {
    let mut total = 0;
    for (i, lane) in [Lane::Bulk, Lane::Express].into_iter().enumerate() {
        let mut slots = rt.acquire(lane, 100, false, stop).await;
        if slots.is_empty() {
            continue;
        }
        let min_idle = cfg.min_idle.as_millis() as u64;
        let c = rt
            .broker
            .claim_idle(
                scope(rt),
                lane,
                min_idle,
                &cursors[i],
                slots.len(),
                now_ms(),
            )
            .await?;
        cursors[i] = c.cursor.clone();
        let n = c.entries.len();
        if n > 0 || c.poison > 0 {
            let q = rt.cfg.name.clone();
            count_claims(&q, "idle", n, c.poison);
            tracing::info!(queue = %q, lane = lane.as_str(), claimed = n, poison = c.poison, deleted_meanwhile = c.gone, min_idle_ms = min_idle, "claimed long-idle entries");
        }
        total += dispatch_claimed(rt, lane, c.entries, &c.deliveries, &mut slots);
    }
    Ok(total)
}

/// Runs the recovery loop of one queue until `stop` fires.
pub(crate) async fn run(rt: Arc<QueueRuntime>, cfg: RecoveryConfig, stop: CancellationToken) {
    let mut cursors = ["0-0".to_string(), "0-0".to_string()];
    let idle_every = (cfg.min_idle / 4).max(cfg.interval);
    let mut last_idle = std::time::Instant::now();
    let settle_ms = (cfg.lapse + cfg.interval).as_millis() as u64;
    while !stop.is_cancelled() {
        // After an outage, give live workers one full lapse to beat again first.
        if crate::health::redis_up_for_ms() >= settle_ms {
            if let Err(e) = recover_dead(&rt, cfg, &stop).await {
                if !e.is_no_permission() {
                    crate::health::set_redis_up(false);
                }
                tracing::debug!(queue = %rt.cfg.name, error = %e, "recovery: redis error");
            }
        }
        if rt.limited {
            // Per-key limits: revive scopes whose leases were pruned rather than released
            // (see `crate::keylimit`); a claimed entry keeps its lease and runs under it.
            match rt.broker.sweep_keys(&rt.keys, SWEEP_SCOPES).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(queue = %rt.cfg.name, moved = n, "per-key sweep: parked tasks moved back to their streams")
                }
                Err(e) => {
                    tracing::debug!(queue = %rt.cfg.name, error = %e, "per-key sweep: redis error")
                }
            }
        }
        if last_idle.elapsed() >= idle_every {
            last_idle = std::time::Instant::now();
            if let Err(e) = recover_idle(&rt, cfg, &mut cursors, &stop).await {
                tracing::debug!(queue = %rt.cfg.name, error = %e, "idle recovery: redis error");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(cfg.interval) => {}
        }
    }
}
