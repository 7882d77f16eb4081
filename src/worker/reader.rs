//! The reader: one loop per lane of a queue, each on its own exclusive connection (an
//! [`rdb::GroupReader`], which also reconnects, recreates a missing group and backs off),
//! moving entries from `XREADGROUP` to dispatch.
//!
//! The loop reads only as many entries as it has free slots. While its stream is empty it
//! blocks (`BLOCK block_ms`) holding a single slot, so an idle reader never hoards capacity
//! that recovery or the other lane could use; as soon as a read comes back full it switches
//! to non-blocking batch reads sized to every free slot, which is what keeps throughput
//! high on a backlog. Reads are also bounded by bytes ([`super::batch::ReadSizer`]):
//! after a read of large entries the next reads ask for fewer, down to one at a time,
//! and a read larger than the budget closes its connection (whose buffers grew with it).
//!
//! After every (re)connect the reader first re-reads this consumer's own pending history
//! (`XREADGROUP … STREAMS s 0`) and runs the entries the process does not hold: a reply
//! lost with a dropped connection leaves delivered entries in our pending list that no
//! one would otherwise run until the idle safety net fires. Entries the process holds
//! (running, or finished and waiting for their ACK) are skipped, so nothing runs twice.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::batch::ReadSizer;
use super::dispatch::dispatch;
use super::runtime::QueueRuntime;
use crate::keys::Lane;
use crate::metrics as m;
use crate::rdb::{GroupReader, ReaderPool};

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
    let mut reader = GroupReader::new(
        pool,
        rt.keys.lane_stream(lane),
        rt.group.clone(),
        rt.consumer.clone(),
        format!("queue {}, lane {}", rt.cfg.name, lane.as_str()),
        "xreadgroup",
    );
    let mut backlog = false;
    let mut sizer = ReadSizer::default();
    // Own pending history to re-check: at start and after every reconnect.
    let mut history = false;
    while !stop.is_cancelled() {
        if rt.pause.is_paused() {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            }
        }
        if !reader.connected(&stop).await {
            break;
        }
        history |= reader.take_fresh();
        if history {
            if own_history(&rt, lane, &mut reader, &mut sizer, &stop).await {
                history = false;
            }
            continue;
        }
        // Large settlements still on their way to Redis: read on once they are through.
        if !rt.settler.room(&stop).await {
            break;
        }
        let want = sizer.count(if backlog { read_count } else { 1 });
        let slots = rt.acquire(lane, want, true, &stop).await;
        if slots.is_empty() {
            continue;
        }
        let block_for = if backlog { None } else { Some(block) };
        match reader.read_new(slots.len(), block_for, &stop).await {
            Some(entries) => {
                if sizer.observe(&entries) {
                    reader.recycle();
                }
                backlog = !entries.is_empty() && entries.len() == slots.len();
                let mut slots = slots.into_iter();
                for e in entries {
                    let slot = slots.next().expect("read at most one entry per slot");
                    dispatch(&rt, lane, e, 1, slot);
                }
            }
            None => backlog = false,
        }
    }
}

/// Runs the entries of this consumer's pending list that the process does not hold. True
/// when the whole history was read (false: a read failed or `stop` fired; try again).
async fn own_history(
    rt: &Arc<QueueRuntime>,
    lane: Lane,
    reader: &mut GroupReader,
    sizer: &mut ReadSizer,
    stop: &CancellationToken,
) -> bool {
    let mut cursor = "0".to_string();
    let mut found = 0usize;
    loop {
        let Some(entries) = reader.read_history(&cursor, sizer.count(100), stop).await else {
            return false;
        };
        if sizer.observe(&entries) {
            reader.recycle();
        }
        let Some(last) = entries.last() else { break };
        cursor = last.id.clone();
        for e in entries {
            if rt.tracked.holds(&e.id) {
                continue;
            }
            let mut slots = rt.acquire(lane, 1, true, stop).await;
            let Some(slot) = slots.pop() else {
                return true;
            };
            found += 1;
            // A history entry has been delivered at least twice by now.
            dispatch(rt, lane, e, 2, slot);
        }
    }
    if found > 0 {
        tracing::info!(queue = %rt.cfg.name, lane = lane.as_str(), entries = found, "re-running own pending entries whose delivery was cut off");
        metrics::counter!(m::ORPHANS_RECOVERED_TOTAL, "queue" => rt.cfg.name.clone(), "reason" => "own_history").increment(found as u64);
    }
    true
}
