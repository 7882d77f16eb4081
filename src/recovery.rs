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

use redis::aio::ConnectionManager;
use redis::Value;
use tokio_util::sync::CancellationToken;

use crate::keys::Lane;
use crate::metrics as m;
use crate::rdb::{self, RawEntry};
use crate::task::now_ms;
use crate::worker::runtime::QueueRuntime;

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

fn to_u64(v: &Value) -> u64 {
    match v {
        Value::Int(i) => *i as u64,
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0) as u64,
        Value::SimpleString(s) => s.parse::<f64>().unwrap_or(0.0) as u64,
        _ => 0,
    }
}

fn counts(v: Value) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    if let Value::Array(a) = v {
        let mut it = a.into_iter();
        while let (Some(id), Some(n)) = (it.next(), it.next()) {
            if let Ok(id) = redis::from_redis_value::<String>(id) {
                out.insert(id, to_u64(&n) as u32);
            }
        }
    }
    out
}

/// Longest time one recovery round waits for a slot to run a dead consumer's entries.
const SLOT_WAIT: Duration = Duration::from_secs(2);

/// True when `consumer` has at least one pending entry on `stream`.
async fn has_pending(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
    consumer: &str,
) -> crate::Result<bool> {
    let v: Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(1)
        .arg(consumer)
        .query_async(conn)
        .await?;
    Ok(matches!(v, Value::Array(a) if !a.is_empty()))
}

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
    slots: &mut Vec<crate::worker::runtime::Slot>,
) -> usize {
    let mut n = 0;
    for e in entries {
        let Some(slot) = slots.pop() else {
            // Cannot happen: we claim at most one entry per slot. Leave it pending.
            break;
        };
        let d = counts.get(&e.id).copied().unwrap_or(2);
        rt.dispatch(lane, e, d, slot);
        n += 1;
    }
    n
}

/// Claims the work of dead consumers once. Returns the number of entries claimed.
async fn recover_dead(
    rt: &Arc<QueueRuntime>,
    conn: &mut ConnectionManager,
    cfg: RecoveryConfig,
    stop: &CancellationToken,
) -> crate::Result<usize> {
    let now = now_ms();
    let cutoff = now.saturating_sub(cfg.lapse.as_millis() as u64);
    let dead: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
        .arg(&rt.heartbeats)
        .arg("-inf")
        .arg(format!("({cutoff}"))
        .arg("WITHSCORES")
        .arg("LIMIT")
        .arg(0)
        .arg(50)
        .query_async(conn)
        .await?;
    let mut total = 0;
    for (consumer, _) in dead {
        if consumer == rt.consumer {
            continue;
        }
        for lane in [Lane::Bulk, Lane::Express] {
            loop {
                let mut slots = rt.acquire(lane, 100, false, stop).await;
                if slots.is_empty() {
                    if !has_pending(conn, rt.keys.lane_stream(lane), &rt.group, &consumer).await? {
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
                let mut p = redis::Pipeline::new();
                p.add_command(rdb::evalsha(
                    rdb::ScriptId::ClaimDead,
                    &[
                        rt.keys.lane_stream(lane),
                        &rt.heartbeats,
                        &rt.keys.dlq,
                        &rt.keys.starts,
                    ],
                    vec![
                        rt.group.clone().into_bytes(),
                        consumer.clone().into_bytes(),
                        rt.consumer.clone().into_bytes(),
                        cutoff.to_string().into_bytes(),
                        want.to_string().into_bytes(),
                        rt.max_deliveries.to_string().into_bytes(),
                        now_ms().to_string().into_bytes(),
                        if rt.delete_on_ack {
                            b"1".to_vec()
                        } else {
                            b"0".to_vec()
                        },
                    ],
                ));
                let (r,): (Vec<Value>,) = rdb::query_pipe(conn, &p).await?;
                let mut it = r.into_iter();
                let claimed = it.next().map(rdb::parse_entries).unwrap_or_default();
                let poison = it.next().map(|v| to_u64(&v)).unwrap_or(0);
                let gone = it.next().map(|v| to_u64(&v)).unwrap_or(0);
                let last_beat = it.next().map(|v| to_u64(&v)).unwrap_or(0);
                let cnt = it.next().map(counts).unwrap_or_default();
                let n = claimed.len();
                if n > 0 || poison > 0 || gone > 0 {
                    let q = rt.cfg.name.clone();
                    count_claims(&q, "dead_consumer", n, poison);
                    if last_beat > 0 {
                        let delay = now_ms().saturating_sub(last_beat) as f64 / 1000.0;
                        metrics::histogram!(m::RECOVERY_DELAY_SECONDS, "queue" => q.clone())
                            .record(delay);
                    }
                    tracing::info!(
                        queue = %q,
                        lane = lane.as_str(),
                        dead_consumer = %consumer,
                        claimed = n,
                        poison,
                        deleted_meanwhile = gone,
                        last_heartbeat_ms_ago = now_ms().saturating_sub(last_beat),
                        "recovered orphaned tasks of a dead consumer"
                    );
                }
                total += dispatch_claimed(rt, lane, claimed, &cnt, &mut slots);
                if (n as u64 + poison + gone) < want as u64 {
                    break;
                }
            }
        }
        // Remove the consumer once nothing of it is pending on any lane (one script).
        if remove_consumer(rt, conn, &consumer, cutoff).await? {
            metrics::counter!(m::CONSUMERS_REMOVED_TOTAL, "queue" => rt.cfg.name.clone())
                .increment(1);
            tracing::info!(queue = %rt.cfg.name, consumer = %consumer, "dead consumer removed from its group");
        }
    }
    Ok(total)
}

/// Removes `consumer` from the group on both lanes and forgets its heartbeat, only if
/// nothing of it is pending on either lane and its heartbeat is older than `cutoff`.
pub(crate) async fn remove_consumer(
    rt: &QueueRuntime,
    conn: &mut ConnectionManager,
    consumer: &str,
    cutoff: u64,
) -> crate::Result<bool> {
    let mut p = redis::Pipeline::new();
    p.add_command(rdb::evalsha(
        rdb::ScriptId::RemoveConsumer,
        &[&rt.keys.stream, &rt.keys.express, &rt.heartbeats],
        vec![
            rt.group.clone().into_bytes(),
            consumer.as_bytes().to_vec(),
            cutoff.to_string().into_bytes(),
        ],
    ));
    let (r,): (i64,) = rdb::query_pipe(conn, &p).await?;
    Ok(r == 1)
}

/// One page of the idle safety net per lane.
async fn recover_idle(
    rt: &Arc<QueueRuntime>,
    conn: &mut ConnectionManager,
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
        let mut p = redis::Pipeline::new();
        p.add_command(rdb::evalsha(
            rdb::ScriptId::ClaimIdle,
            &[rt.keys.lane_stream(lane), &rt.keys.dlq, &rt.keys.starts],
            vec![
                rt.group.clone().into_bytes(),
                rt.consumer.clone().into_bytes(),
                (cfg.min_idle.as_millis() as u64).to_string().into_bytes(),
                cursors[i].clone().into_bytes(),
                slots.len().to_string().into_bytes(),
                rt.max_deliveries.to_string().into_bytes(),
                now_ms().to_string().into_bytes(),
                if rt.delete_on_ack {
                    b"1".to_vec()
                } else {
                    b"0".to_vec()
                },
            ],
        ));
        let (r,): (Vec<Value>,) = rdb::query_pipe(conn, &p).await?;
        let mut it = r.into_iter();
        let cursor: String = it
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or_else(|| "0-0".into());
        let claimed = it.next().map(rdb::parse_entries).unwrap_or_default();
        let poison = it.next().map(|v| to_u64(&v)).unwrap_or(0);
        let gone = it.next().map(|v| to_u64(&v)).unwrap_or(0);
        let cnt = it.next().map(counts).unwrap_or_default();
        cursors[i] = cursor;
        let n = claimed.len();
        if n > 0 || poison > 0 {
            let q = rt.cfg.name.clone();
            count_claims(&q, "idle", n, poison);
            tracing::info!(queue = %q, lane = lane.as_str(), claimed = n, poison, deleted_meanwhile = gone, min_idle_ms = cfg.min_idle.as_millis() as u64, "claimed long-idle entries");
        }
        total += dispatch_claimed(rt, lane, claimed, &cnt, &mut slots);
    }
    Ok(total)
}

/// Runs the recovery loop of one queue until `stop` fires.
pub(crate) async fn run(
    rt: Arc<QueueRuntime>,
    conn: ConnectionManager,
    cfg: RecoveryConfig,
    stop: CancellationToken,
) {
    let mut conn = conn;
    let mut cursors = ["0-0".to_string(), "0-0".to_string()];
    let idle_every = (cfg.min_idle / 4).max(cfg.interval);
    let mut last_idle = std::time::Instant::now();
    let settle_ms = (cfg.lapse + cfg.interval).as_millis() as u64;
    while !stop.is_cancelled() {
        // After an outage, give live workers one full lapse to beat again first.
        if crate::health::redis_up_for_ms() >= settle_ms {
            if let Err(e) = recover_dead(&rt, &mut conn, cfg, &stop).await {
                crate::health::set_redis_up(false);
                tracing::debug!(queue = %rt.cfg.name, error = %e, "recovery: redis error");
            }
        }
        if last_idle.elapsed() >= idle_every {
            last_idle = std::time::Instant::now();
            if let Err(e) = recover_idle(&rt, &mut conn, cfg, &mut cursors, &stop).await {
                tracing::debug!(queue = %rt.cfg.name, error = %e, "idle recovery: redis error");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(cfg.interval) => {}
        }
    }
}
