//! The reader: one loop per lane of a queue, each on its own exclusive connection, moving
//! entries from `XREADGROUP` to handlers.
//!
//! The loop reads only as many entries as it has free slots. While its stream is empty it
//! blocks (`BLOCK block_ms`) holding a single slot, so an idle reader never hoards capacity
//! that recovery or the other lane could use; as soon as a read comes back full it switches
//! to non-blocking batch reads sized to every free slot, which is what keeps throughput
//! high on a backlog.
//!
//! A dropped connection is discarded (never returned to the pool) and replaced with
//! exponential backoff and jitter; the loop never exits on a Redis error.
//!
//! After every (re)connect the reader first re-reads this consumer's own pending history
//! (`XREADGROUP … STREAMS s 0`) and runs the entries the process does not hold: a reply
//! lost with a dropped connection leaves delivered entries in our pending list that no
//! one would otherwise run until the idle safety net fires. Entries the process holds
//! (running, or finished and waiting for their ACK) are skipped, so nothing runs twice.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::keys::Lane;
use crate::metrics as m;
use crate::rdb::{self, ReaderPool};

use super::runtime::QueueRuntime;

/// Reads one lane of one queue until `stop` fires. A read already in flight when `stop`
/// fires is completed (at most `block` later) and its entries are run, so shutdown never
/// strands delivered entries in this consumer's pending list.
pub(crate) async fn run(
    rt: Arc<QueueRuntime>,
    lane: Lane,
    pool: ReaderPool,
    read_count: usize,
    block: Duration,
    stop: CancellationToken,
) {
    let stream = rt.keys.lane_stream(lane).to_string();
    let mut conn: Option<deadpool_redis::Connection> = None;
    let mut failures: u32 = 0;
    let mut backlog = false;
    // Own pending history to re-check: at start and after every reconnect.
    let mut history = true;
    while !stop.is_cancelled() {
        if rt.paused.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            }
        }
        if conn.is_none() {
            match pool.get().await {
                Ok(c) => {
                    if failures > 0 {
                        tracing::info!(queue = %rt.cfg.name, lane = lane.as_str(), "reader reconnected to redis");
                        metrics::counter!(m::RECONNECTS_TOTAL, "role" => "reader").increment(1);
                    }
                    conn = Some(c);
                    history = true;
                }
                Err(e) => {
                    failures += 1;
                    crate::health::set_redis_up(false);
                    let d = rdb::reconnect_delay(failures);
                    tracing::warn!(queue = %rt.cfg.name, lane = lane.as_str(), error = %e, retry_in_ms = d.as_millis() as u64, "reader cannot connect to redis, retrying");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(d) => continue,
                    }
                }
            }
        }
        if history {
            let c = conn.as_mut().expect("connected above");
            match own_history(&rt, lane, c, &stream, &stop).await {
                Ok(()) => history = false,
                Err(e) if e.code() == Some("NOGROUP") => {
                    // Redis came back without our group (restarted empty, or failed
                    // over to an empty replica): recreate it; there is no history.
                    tracing::warn!(queue = %rt.cfg.name, lane = lane.as_str(), "consumer group missing after reconnect, recreating it");
                    let r: redis::RedisResult<()> = redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(&stream)
                        .arg(&rt.group)
                        .arg("0")
                        .arg("MKSTREAM")
                        .query_async(&mut **c)
                        .await;
                    if let Err(e) = r.or_else(|e| {
                        if e.code() == Some("BUSYGROUP") {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    }) {
                        failures += 1;
                        tracing::warn!(queue = %rt.cfg.name, error = %e, "cannot recreate the consumer group");
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(rdb::reconnect_delay(failures)) => {}
                        }
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(queue = %rt.cfg.name, lane = lane.as_str(), error = %e, "reading own pending history failed, reconnecting");
                    if let Some(c) = conn.take() {
                        let _ = deadpool_redis::Connection::take(c);
                    }
                    failures += 1;
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(rdb::reconnect_delay(failures)) => {}
                    }
                    continue;
                }
            }
        }
        let want = if backlog { read_count } else { 1 };
        let slots = rt.acquire(lane, want, true, &stop).await;
        if slots.is_empty() {
            continue;
        }
        let c = conn.as_mut().expect("connected above");
        let block_for = if backlog { None } else { Some(block) };
        match rdb::read_group(
            &mut **c,
            &rt.group,
            &rt.consumer,
            &stream,
            slots.len(),
            block_for,
        )
        .await
        {
            Ok(entries) => {
                if failures > 0 {
                    failures = 0;
                }
                crate::health::set_redis_up(true);
                backlog = !entries.is_empty() && entries.len() == slots.len();
                let mut slots = slots.into_iter();
                for e in entries {
                    let slot = slots.next().expect("read at most one entry per slot");
                    rt.dispatch(lane, e, 1, slot);
                }
            }
            Err(e) => {
                failures += 1;
                backlog = false;
                drop(slots);
                // The connection may hold a half-read reply: never reuse it.
                if let Some(c) = conn.take() {
                    let _ = deadpool_redis::Connection::take(c);
                }
                if e.code() == Some("NOGROUP") {
                    tracing::warn!(queue = %rt.cfg.name, lane = lane.as_str(), "consumer group missing (stream deleted?), recreating it");
                    let mut p = pool.get().await.ok();
                    if let Some(p) = p.as_mut() {
                        let _: redis::RedisResult<()> = redis::cmd("XGROUP")
                            .arg("CREATE")
                            .arg(&stream)
                            .arg(&rt.group)
                            .arg("0")
                            .arg("MKSTREAM")
                            .query_async(&mut **p)
                            .await;
                    }
                    continue;
                }
                crate::health::set_redis_up(false);
                metrics::counter!(m::REDIS_ERRORS_TOTAL, "op" => "xreadgroup").increment(1);
                let d = rdb::reconnect_delay(failures);
                tracing::warn!(queue = %rt.cfg.name, lane = lane.as_str(), error = %e, retry_in_ms = d.as_millis() as u64, "read failed, reconnecting");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(d) => {}
                }
            }
        }
    }
}

/// Runs the entries of this consumer's pending list that the process does not hold.
async fn own_history(
    rt: &Arc<QueueRuntime>,
    lane: Lane,
    conn: &mut deadpool_redis::Connection,
    stream: &str,
    stop: &CancellationToken,
) -> redis::RedisResult<()> {
    let mut cursor = "0".to_string();
    let mut found = 0usize;
    loop {
        let mut c = redis::cmd("XREADGROUP");
        c.arg("GROUP")
            .arg(&rt.group)
            .arg(&rt.consumer)
            .arg("COUNT")
            .arg(100)
            .arg("STREAMS")
            .arg(stream)
            .arg(&cursor);
        let v: redis::Value = c.query_async(&mut **conn).await?;
        let entries = rdb::parse_read_reply(v);
        let Some(last) = entries.last() else { break };
        cursor = last.id.clone();
        for e in entries {
            if rt.holds(&e.id) {
                continue;
            }
            let mut slots = rt.acquire(lane, 1, true, stop).await;
            let Some(slot) = slots.pop() else {
                return Ok(());
            };
            found += 1;
            // A history entry has been delivered at least twice by now.
            rt.dispatch(lane, e, 2, slot);
        }
    }
    if found > 0 {
        tracing::info!(queue = %rt.cfg.name, lane = lane.as_str(), entries = found, "re-running own pending entries whose delivery was cut off");
        metrics::counter!(m::ORPHANS_RECOVERED_TOTAL, "queue" => rt.cfg.name.clone(), "reason" => "own_history").increment(found as u64);
    }
    Ok(())
}
